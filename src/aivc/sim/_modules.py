"""Functional modules: protein complexes and signalling pathways that feed regulators.

In real cells many knockouts share a phenotype because their genes act
together: the subunits of a complex are needed together, and the kinases of
a signalling cascade all have to work for the transcription factor at its end
to be active. The regulatory network alone does not give that structure (a
knockout there only removes one gene's own regulation), so modules are drawn
on top of it.

A module is a group of genes (its *members*) that a regulator (its *output*,
a transcription factor) needs in order to act. A member's relative level
``rho`` (1 in an unperturbed cell, 0 after a knockout, ``1 - efficiency``
after a knockdown, above 1 after activation) passes to the output's activity
through the saturating factor

.. math::

    s(\\rho) = \\frac{\\rho (1 + \\kappa)}{\\rho + \\kappa},

which is 1 at ``rho = 1``, 0 at ``rho = 0`` and at most ``1 + kappa``; the
output's activity is multiplied by the product of its members' factors.
Complexes have a small ``kappa`` (:data:`COMPLEX_KAPPA`: any member's loss
removes the complex, a knockdown barely matters, extra copies of one subunit
add nothing); pathways a large one (:data:`PATHWAY_KAPPA`: graded, so a
knockdown weakens the signal and an activated kinase strengthens it).

Members are drawn among genes that regulate nothing, and their own
transcription is made constitutive (their incoming edges are removed), so
their levels are set by the perturbation alone and the factor is exact at
steady state: a member's knockout gives its output's knockout phenotype
(besides its own expression), which is what knockouts of interaction partners
show in real screens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import expit

from aivc.sim._network import GeneNetwork

__all__ = ["COMPLEX_KAPPA", "PATHWAY_KAPPA", "FunctionalModules", "random_modules"]

#: Saturation of a complex: any member's loss removes it; one extra subunit adds at most 10 %.
COMPLEX_KAPPA = 0.1
#: Saturation of a pathway: graded; an activated member at most doubles the output's activity.
PATHWAY_KAPPA = 1.0
KINDS = ("complex", "pathway")


@dataclass(frozen=True, eq=False)
class FunctionalModules:
    """Complexes and pathways and the regulators they feed.

    Attributes
    ----------
    kind
        ``(n_modules,)`` ``"complex"`` or ``"pathway"``.
    output
        ``(n_modules,)`` gene index of the regulator each module feeds (each
        regulator feeds on at most one module).
    kappa
        ``(n_modules,)`` saturation of the module's factor.
    member_gene, member_module
        ``(n_members,)`` gene index and module of every membership; a
        pathway's members are in cascade order (most upstream first).
    """

    kind: np.ndarray
    output: np.ndarray
    kappa: np.ndarray
    member_gene: np.ndarray
    member_module: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.kind)
        if len(self.output) != n or len(self.kappa) != n:
            msg = "FunctionalModules.kind, output and kappa must have one entry per module."
            raise ValueError(msg)
        if len(self.member_gene) != len(self.member_module):
            msg = "FunctionalModules.member_gene and member_module must have the same length."
            raise ValueError(msg)
        if len(self.member_module) and (
            self.member_module.min() < 0 or self.member_module.max() >= n
        ):
            msg = "FunctionalModules.member_module must index its modules."
            raise ValueError(msg)

    @classmethod
    def empty(cls) -> FunctionalModules:
        """No modules."""
        return cls(
            kind=np.zeros(0, dtype="<U7"),
            output=np.zeros(0, dtype=np.int64),
            kappa=np.zeros(0),
            member_gene=np.zeros(0, dtype=np.int64),
            member_module=np.zeros(0, dtype=np.int64),
        )

    @property
    def n_modules(self) -> int:
        """Number of modules."""
        return len(self.kind)

    def members(self, module: int) -> np.ndarray:
        """Gene indices of one module's members (a pathway's in cascade order)."""
        return self.member_gene[self.member_module == module]

    def module_genes(self, module: int) -> np.ndarray:
        """The module's members and its output regulator."""
        return np.append(self.members(module), self.output[module])

    def activity_factor(
        self, scale: np.ndarray, add: np.ndarray, network: GeneNetwork
    ) -> np.ndarray:
        """``(B, n_regulators)`` multiplier on each regulator's activity from its module.

        ``scale`` and ``add`` are the conditions' transcription inputs
        (:class:`~aivc.sim.RateInputs`); members are constitutive, so their
        level relative to an unperturbed cell is
        ``(scale f + add) / f`` with ``f`` their promoter's constant activity.
        """
        out = np.ones((scale.shape[0], len(network.regulators)))
        if not self.n_modules:
            return out
        genes = self.member_gene
        basal = network.basal[genes]
        f = basal + (1.0 - basal) * expit(network.bias[genes])
        rho = (scale[:, genes] * f + add[:, genes]) / f
        kappa = self.kappa[self.member_module]
        s = rho * (1.0 + kappa) / (rho + kappa)
        factor = np.ones((scale.shape[0], self.n_modules))
        for j in range(len(genes)):
            factor[:, self.member_module[j]] *= s[:, j]
        out[:, network.regulator_index()[self.output]] = factor
        return out

    # ------------------------------------------------------------ persistence
    def to_arrays(self, prefix: str = "modules_") -> dict[str, np.ndarray]:
        """All attributes as plain arrays (for ``numpy.savez``), keys prefixed."""
        return {
            prefix + "kind": np.asarray(self.kind, dtype=str),
            prefix + "output": np.asarray(self.output, dtype=np.int64),
            prefix + "kappa": np.asarray(self.kappa, dtype=np.float64),
            prefix + "member_gene": np.asarray(self.member_gene, dtype=np.int64),
            prefix + "member_module": np.asarray(self.member_module, dtype=np.int64),
        }

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], prefix: str = "modules_"
    ) -> FunctionalModules:
        """Inverse of :meth:`to_arrays`; no modules when the arrays are absent."""
        if prefix + "kind" not in arrays:
            return cls.empty()
        return cls(
            kind=np.asarray(arrays[prefix + "kind"]).astype(str),
            output=np.asarray(arrays[prefix + "output"], dtype=np.int64),
            kappa=np.asarray(arrays[prefix + "kappa"], dtype=np.float64),
            member_gene=np.asarray(arrays[prefix + "member_gene"], dtype=np.int64),
            member_module=np.asarray(arrays[prefix + "member_module"], dtype=np.int64),
        )


def random_modules(
    network: GeneNetwork,
    rng: np.random.Generator,
    *,
    module_fraction: float,
    complex_share: float = 0.5,
    mean_size: float = 4.0,
    max_size: int = 10,
) -> tuple[FunctionalModules, GeneNetwork]:
    """Draw complexes and pathways on ``network``; returns them and the network they need.

    Parameters
    ----------
    network
        The regulatory network.
    rng
        Random generator.
    module_fraction
        Fraction of all genes that are module members (besides the outputs).
    complex_share
        Fraction of modules that are complexes (the rest are pathways).
    mean_size
        Mean number of members of a module (at least 2; ``2 + Poisson(mean_size - 2)``,
        at most ``max_size``).
    max_size
        Largest module.

    Returns
    -------
    The modules, and ``network`` with the members' incoming edges removed
    (members are transcribed constitutively; see the module docstring).
    Modules feed distinct non-master regulators, drawn with probability
    proportional to their number of targets plus one; fewer modules are drawn
    when regulators or candidate genes run out.
    """
    if not 0.0 <= module_fraction < 1.0:
        msg = f"The 'module_fraction' parameter must be in [0, 1). Got {module_fraction!r} instead."
        raise ValueError(msg)
    if not 0.0 <= complex_share <= 1.0:
        msg = f"The 'complex_share' parameter must be in [0, 1]. Got {complex_share!r} instead."
        raise ValueError(msg)
    if not mean_size >= 2 or max_size < 2:
        msg = "The 'mean_size' and 'max_size' parameters must be at least 2."
        raise ValueError(msg)
    n_members = round(module_fraction * network.n_genes)
    if n_members < 2:
        return FunctionalModules.empty(), network
    # candidates: genes that regulate nothing (so no loop can pass through a member)
    candidates = rng.permutation(np.flatnonzero(~network.is_regulator))
    # outputs: regulators drawn in proportion to their number of targets (complexes and
    # pathways tend to feed the transcription factors that run large programs)
    pool = np.setdiff1d(network.regulators, network.master_regulators)
    weight = network.out_degree()[pool] + 1.0
    outputs = rng.choice(pool, size=len(pool), replace=False, p=weight / weight.sum())
    kinds: list[str] = []
    out_genes: list[int] = []
    member_gene: list[int] = []
    member_module: list[int] = []
    used = 0
    for output in outputs:
        size = int(min(max_size, 2 + rng.poisson(mean_size - 2.0)))
        size = min(size, n_members - used, len(candidates) - used)
        if size < 2:
            break
        m = len(kinds)
        kinds.append("complex" if rng.random() < complex_share else "pathway")
        out_genes.append(int(output))
        member_gene.extend(int(g) for g in candidates[used : used + size])
        member_module.extend([m] * size)
        used += size
    kind = np.asarray(kinds, dtype="<U7")
    modules = FunctionalModules(
        kind=kind,
        output=np.asarray(out_genes, dtype=np.int64),
        kappa=np.where(kind == "complex", COMPLEX_KAPPA, PATHWAY_KAPPA).astype(np.float64),
        member_gene=np.asarray(member_gene, dtype=np.int64),
        member_module=np.asarray(member_module, dtype=np.int64),
    )
    keep = ~np.isin(network.target, modules.member_gene)
    bias = network.bias.copy()  # the members' promoters, now unregulated: a spread of levels
    bias[modules.member_gene] = rng.normal(0.0, 1.0, len(modules.member_gene))
    network = replace(
        network,
        source=network.source[keep],
        target=network.target[keep],
        weight=network.weight[keep],
        feedback=network.feedback[keep],
        bias=bias,
    )
    return modules, network
