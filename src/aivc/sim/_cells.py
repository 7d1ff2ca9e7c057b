"""Cell types and cell-to-cell variation.

A cell type is a setting of the master regulators (on or off); everything else
follows from the network. Within a condition, cells differ by extrinsic
factors that shift log transcription rates: a global transcriptional capacity,
a cell-cycle program (a phase angle driving a set of cycling genes) and a few
pathway modules that act on groups of regulators. Their effect on expression
is propagated through the network (see :meth:`Kinetics.propagate`), so
co-regulated genes co-vary from cell to cell.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
from scipy.special import i0e

from aivc.sim._network import GeneNetwork

__all__ = ["CellVariation", "cell_type_names", "random_cell_types"]

#: Transcription multiplier of a master regulator that a cell type switches off.
MASTER_OFF = 0.03


def cell_type_names(n: int) -> list[str]:
    """Names ``type_A``, ``type_B``, ... (``type_27`` and on beyond 26)."""
    letters = string.ascii_uppercase
    return [f"type_{letters[i]}" if i < len(letters) else f"type_{i + 1}" for i in range(n)]


def random_cell_types(
    network: GeneNetwork, n_cell_types: int, rng: np.random.Generator
) -> np.ndarray:
    """Master-regulator levels of ``n_cell_types`` distinct cell types.

    Returns
    -------
    ``(n_cell_types, n_master_regulators)`` multipliers on the masters'
    transcription: 1 (on) or :data:`MASTER_OFF`. Every type has at least one
    master on and no two types share a pattern.
    """
    m = len(network.master_regulators)
    if n_cell_types > 2**m - 1:
        msg = (
            f"{n_cell_types} cell types need more distinct master-regulator patterns than "
            f"{m} master regulators give ({2**m - 1}); raise n_master_regulators."
        )
        raise ValueError(msg)
    seen: set[tuple[bool, ...]] = set()
    patterns: list[np.ndarray] = []
    while len(patterns) < n_cell_types:
        on = rng.random(m) < 0.5
        key = tuple(bool(v) for v in on)
        if not on.any() or key in seen:
            continue
        # make types differ in at least two masters where possible
        if m >= 4 and any(int(np.sum(on != p)) < 2 for p in patterns):
            continue
        seen.add(key)
        patterns.append(on)
    return np.where(np.asarray(patterns), 1.0, MASTER_OFF)


@dataclass(frozen=True, eq=False)
class CellVariation:
    """Extrinsic factors that make cells of one condition differ.

    Attributes
    ----------
    loadings
        ``(k, n_genes)`` effect of each factor on log transcription rates.
    factor_names
        Name of each factor.
    cycle
        Indices of the two factors (cosine and sine of the cell-cycle phase)
        that are set by the phase rather than drawn from a normal distribution.
    """

    loadings: np.ndarray
    factor_names: tuple[str, ...]
    cycle: tuple[int, int]

    @property
    def n_factors(self) -> int:
        """Number of factors ``k``."""
        return self.loadings.shape[0]

    @classmethod
    def random(
        cls,
        network: GeneNetwork,
        rng: np.random.Generator,
        *,
        extrinsic_sd: float = 0.1,
        n_modules: int = 4,
        module_sd: float = 0.25,
        cycle_fraction: float = 0.05,
        cycle_amplitude: float = 0.7,
    ) -> CellVariation:
        """Draw factor loadings for a network.

        Parameters
        ----------
        network
            The network.
        rng
            Random generator.
        extrinsic_sd
            Standard deviation of the global capacity factor (log scale).
        n_modules
            Number of pathway modules.
        module_sd
            Typical effect of a module on the log rate of the regulators it acts on.
        cycle_fraction
            Fraction of genes driven by the cell cycle.
        cycle_amplitude
            Largest amplitude of a cycling gene's log rate over the cycle.
        """
        g = network.n_genes
        rows = [np.full(g, extrinsic_sd)]
        names = ["capacity"]
        cycling = rng.random(g) < cycle_fraction
        amplitude = np.where(cycling, rng.uniform(0.3, 1.0, g) * cycle_amplitude, 0.0)
        phase = rng.uniform(0.0, 2 * np.pi, g)
        rows += [amplitude * np.cos(phase), amplitude * np.sin(phase)]
        names += ["cycle_cos", "cycle_sin"]
        regs = network.regulators
        for i in range(n_modules):
            row = np.zeros(g)
            members = regs[rng.random(len(regs)) < 0.15]
            row[members] = (
                module_sd
                * rng.choice([-1.0, 1.0], len(members))
                * rng.uniform(0.5, 1.5, len(members))
            )
            rows.append(row)
            names.append(f"module_{i + 1}")
        return cls(loadings=np.vstack(rows), factor_names=tuple(names), cycle=(1, 2))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, k)`` factor values of ``n`` cells (phases uniform on the cycle)."""
        z = rng.standard_normal((n, self.n_factors))
        theta = rng.uniform(0.0, 2 * np.pi, n)
        z[:, self.cycle[0]] = np.cos(theta)
        z[:, self.cycle[1]] = np.sin(theta)
        return z

    def mean_log_factor(self, sensitivity: np.ndarray) -> np.ndarray:
        """``log E[exp(z @ S)]`` for each condition and gene.

        Parameters
        ----------
        sensitivity
            ``(B, k, n_genes)`` propagated sensitivities ``S``.

        Returns
        -------
        ``(B, n_genes)``; adding it to the log steady state gives the log of the
        population mean. Normal factors contribute ``S^2 / 2``; the cycle
        contributes ``log I0(r)`` (modified Bessel function), ``r`` the
        amplitude of the gene's cycle.
        """
        gauss = np.ones(self.n_factors, dtype=bool)
        gauss[list(self.cycle)] = False
        out = 0.5 * np.sum(sensitivity[:, gauss, :] ** 2, axis=1)
        r = np.hypot(sensitivity[:, self.cycle[0], :], sensitivity[:, self.cycle[1], :])
        return out + np.log(i0e(r)) + r
