"""Random gene-regulatory networks with a biological shape.

A minority of genes are regulators (transcription factors). Regulators are
ordered in a hierarchy: master regulators at the top have no regulators of
their own, and every other regulator is regulated only by regulators above it,
so the backbone is acyclic. A few feedback edges are then added on top (mostly
negative), closing short loops. The number of targets of a regulator follows a
power law over regulator popularity (a few hubs regulate hundreds of genes),
while the number of regulators of a gene is bounded.

Each edge carries a signed strength in log-odds units (positive activates,
negative represses); each regulator carries a Hill coefficient and a
threshold; each gene a maximal transcription rate, a basal fraction, a bias
and a degradation rate. :mod:`aivc.sim._dynamics` turns these into kinetics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order

__all__ = ["GeneNetwork", "gene_names", "random_network"]

logger = logging.getLogger(__name__)


def gene_names(n_genes: int) -> np.ndarray:
    """Gene symbols ``G0001``, ``G0002``, ... (zero-padded to at least 4 digits)."""
    width = max(4, len(str(n_genes)))
    return np.asarray([f"G{i:0{width}d}" for i in range(1, n_genes + 1)])


@dataclass(frozen=True, eq=False)
class GeneNetwork:
    """A gene-regulatory network with its kinetic parameters.

    Attributes
    ----------
    gene_names
        ``(n_genes,)`` gene symbols.
    regulators
        ``(n_regulators,)`` indices of the regulator genes, in hierarchical order
        (masters first).
    master_regulators
        Indices of the master regulators (a prefix of ``regulators``); cell types
        are defined by their levels.
    source, target
        ``(n_edges,)`` gene indices of each edge's regulator and target.
    weight
        ``(n_edges,)`` signed edge strength in log-odds units: positive edges
        activate, negative edges repress.
    feedback
        ``(n_edges,)`` True for the edges that close a feedback loop.
    hill
        ``(n_regulators,)`` Hill coefficient of each regulator.
    threshold
        ``(n_regulators,)`` activity at which a regulator is half-bound.
    bias
        ``(n_genes,)`` log-odds of the promoter being active with all regulators unbound.
    basal
        ``(n_genes,)`` fraction of the maximal rate transcribed when the promoter is off.
    max_rate
        ``(n_genes,)`` maximal transcription rate (molecules per hour).
    degradation
        ``(n_genes,)`` degradation rate (per hour).
    """

    gene_names: np.ndarray
    regulators: np.ndarray
    master_regulators: np.ndarray
    source: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    feedback: np.ndarray
    hill: np.ndarray
    threshold: np.ndarray
    bias: np.ndarray
    basal: np.ndarray
    max_rate: np.ndarray
    degradation: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.gene_names)
        e = len(self.source)
        r = len(self.regulators)
        shapes = {
            "bias": n,
            "basal": n,
            "max_rate": n,
            "degradation": n,
            "target": e,
            "weight": e,
            "feedback": e,
            "hill": r,
            "threshold": r,
        }
        for name, size in shapes.items():
            if len(getattr(self, name)) != size:
                msg = (
                    f"GeneNetwork.{name} must have length {size}; got {len(getattr(self, name))}. "
                    "Build networks with aivc.sim.random_network()."
                )
                raise ValueError(msg)
        if e and not np.isin(self.source, self.regulators).all():
            msg = "Every edge source of a GeneNetwork must be one of its regulators."
            raise ValueError(msg)

    # ------------------------------------------------------------------ shape
    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return len(self.gene_names)

    @property
    def n_edges(self) -> int:
        """Number of regulatory edges."""
        return len(self.source)

    @property
    def sign(self) -> np.ndarray:
        """``+1`` for activating, ``-1`` for repressing edges."""
        return np.sign(self.weight).astype(np.int8)

    @property
    def is_regulator(self) -> np.ndarray:
        """Boolean mask of regulator genes."""
        mask = np.zeros(self.n_genes, dtype=bool)
        mask[self.regulators] = True
        return mask

    def out_degree(self) -> np.ndarray:
        """Number of targets of each gene."""
        return np.bincount(self.source, minlength=self.n_genes)

    def in_degree(self) -> np.ndarray:
        """Number of regulators of each gene."""
        return np.bincount(self.target, minlength=self.n_genes)

    def regulator_index(self) -> np.ndarray:
        """For each gene, its position in :attr:`regulators` (``-1`` if not a regulator)."""
        pos = np.full(self.n_genes, -1, dtype=np.int64)
        pos[self.regulators] = np.arange(len(self.regulators))
        return pos

    def weight_matrix(self) -> sp.csr_matrix:
        """Regulators x genes sparse matrix of signed edge strengths."""
        rows = self.regulator_index()[self.source]
        return sp.csr_matrix(
            (self.weight.astype(np.float64), (rows, self.target)),
            shape=(len(self.regulators), self.n_genes),
        )

    def adjacency(self) -> sp.csr_matrix:
        """Genes x genes sparse matrix of edge signs (row = regulator, column = target)."""
        return sp.csr_matrix(
            (self.sign.astype(np.float64), (self.source, self.target)),
            shape=(self.n_genes, self.n_genes),
        )

    def targets_of(self, gene: str | int) -> np.ndarray:
        """Indices of the direct targets of ``gene`` (symbol or index)."""
        i = self._index(gene)
        return self.target[self.source == i]

    def regulators_of(self, gene: str | int) -> np.ndarray:
        """Indices of the direct regulators of ``gene`` (symbol or index)."""
        i = self._index(gene)
        return self.source[self.target == i]

    def _index(self, gene: str | int) -> int:
        if isinstance(gene, int | np.integer):
            return int(gene)
        hits = np.flatnonzero(self.gene_names == gene)
        if not len(hits):
            msg = (
                f"Unknown gene {gene!r}; expected one of the network's {self.n_genes} gene symbols."
            )
            raise KeyError(msg)
        return int(hits[0])

    # ------------------------------------------------------------ persistence
    def to_arrays(self, prefix: str = "network_") -> dict[str, np.ndarray]:
        """All attributes as plain arrays (for ``numpy.savez``), keys prefixed."""
        return {prefix + f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "network_") -> GeneNetwork:
        """Inverse of :meth:`to_arrays`."""
        return cls(**{f.name: np.asarray(arrays[prefix + f.name]) for f in fields(cls)})

    def with_threshold(self, threshold: np.ndarray) -> GeneNetwork:
        """A copy with new regulator thresholds."""
        return replace(self, threshold=np.asarray(threshold, dtype=np.float64))


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        msg = f"The '{name}' parameter must be an integer >= {minimum}. Got {value!r} instead."
        raise ValueError(msg)
    return int(value)


def _check_fraction(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> float:
    if not (isinstance(value, int | float) and low <= float(value) <= high):
        msg = f"The '{name}' parameter must be a number in [{low}, {high}]. Got {value!r} instead."
        raise ValueError(msg)
    return float(value)


def random_network(
    *,
    n_genes: int = 1000,
    regulator_fraction: float = 0.08,
    n_master_regulators: int = 6,
    mean_in_degree: float = 2.5,
    max_in_degree: int = 8,
    unregulated_fraction: float = 0.1,
    hub_exponent: float = 1.0,
    activation_fraction: float = 0.6,
    n_feedback_loops: int | None = None,
    seed: int = 0,
) -> GeneNetwork:
    """Draw a random, biologically shaped gene-regulatory network.

    Parameters
    ----------
    n_genes
        Number of genes (at least 10).
    regulator_fraction
        Fraction of genes that are regulators (at least ``n_master_regulators + 2``
        regulators are drawn).
    n_master_regulators
        Regulators at the top of the hierarchy; cell types set their levels.
    mean_in_degree
        Mean number of regulators of a regulated gene.
    max_in_degree
        Largest number of regulators a gene may have.
    unregulated_fraction
        Fraction of non-master genes without any regulator (constitutive genes).
    hub_exponent
        Exponent of the power law of regulator popularity; larger values give
        bigger hubs.
    activation_fraction
        Probability that an edge activates (otherwise it represses).
    n_feedback_loops
        Number of feedback edges closing loops in the hierarchy; ``None`` uses
        about one per 25 regulators (at least 2).
    seed
        Random seed.

    Returns
    -------
    A :class:`GeneNetwork`. Thresholds are set to half of each regulator's
    maximal level; :class:`~aivc.sim.VirtualCellSimulator` recalibrates them to
    the regulators' levels in the simulated cell types.
    """
    n_genes = _check_positive_int("n_genes", n_genes, 10)
    n_master_regulators = _check_positive_int("n_master_regulators", n_master_regulators, 1)
    max_in_degree = _check_positive_int("max_in_degree", max_in_degree, 1)
    _check_fraction("regulator_fraction", regulator_fraction, low=1e-6)
    _check_fraction("unregulated_fraction", unregulated_fraction)
    _check_fraction("activation_fraction", activation_fraction)
    if not mean_in_degree >= 1:
        msg = f"The 'mean_in_degree' parameter must be >= 1. Got {mean_in_degree!r} instead."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)

    n_reg = max(round(regulator_fraction * n_genes), n_master_regulators + 2)
    if n_reg >= n_genes:
        msg = (
            f"The network would have {n_reg} regulators for {n_genes} genes; lower "
            "'regulator_fraction' or 'n_master_regulators', or use more genes."
        )
        raise ValueError(msg)
    # regulators in hierarchical order; masters first
    regulators = np.sort(rng.choice(n_genes, n_reg, replace=False))
    regulators = rng.permutation(regulators)
    masters = regulators[:n_master_regulators]
    level = np.full(n_genes, n_reg, dtype=np.int64)  # non-regulators sit below every regulator
    level[regulators] = np.arange(n_reg)

    # popularity: a power law over ranks; masters and early regulators tend to be hubs
    rank = np.empty(n_reg, dtype=np.int64)
    order = np.argsort(np.arange(n_reg) + rng.normal(0.0, n_reg / 4, n_reg))
    rank[order] = np.arange(n_reg)
    log_pop = -hub_exponent * np.log1p(rank)

    # in-degree per gene
    # (regulators are regulated by one more regulator on average and are never
    # constitutive: regulatory cascades are what spreads a perturbation's effect)
    k = 1 + rng.poisson(mean_in_degree - 1, n_genes)
    k[rng.random(n_genes) < unregulated_fraction] = 0
    k[regulators] = 1 + rng.poisson(mean_in_degree, n_reg)
    k = np.minimum(k, max_in_degree)
    k[masters] = 0
    allowed = level[:, None] > np.arange(n_reg)[None, :]  # regulator j may regulate gene i
    k = np.minimum(k, allowed.sum(axis=1))
    # weighted sampling without replacement via the Gumbel top-k trick
    scores = log_pop[None, :] + rng.gumbel(size=(n_genes, n_reg))
    scores[~allowed] = -np.inf
    scores[regulators, np.arange(n_reg)] = -np.inf  # no self-loops
    top = np.argsort(-scores, axis=1, kind="stable")
    take = np.arange(n_reg)[None, :] < k[:, None]
    tgt = np.broadcast_to(np.arange(n_genes)[:, None], top.shape)[take]
    src = regulators[top[take]]
    feedback = np.zeros(len(src), dtype=bool)

    # feedback loops: a regulator-to-regulator edge i -> j is closed by j -> i,
    # or a two-step path i -> j -> m by m -> i. Loops are kept apart: no regulator
    # is in two loops and no other path runs between a loop's members, so every
    # loop stays a small, separate motif.
    if n_feedback_loops is None:
        n_feedback_loops = max(2, n_reg // 25)
    is_reg = np.zeros(n_genes, dtype=bool)
    is_reg[regulators] = True
    pos = np.full(n_genes, -1, dtype=np.int64)
    pos[regulators] = np.arange(n_reg)
    rr_edges = is_reg[tgt]
    dag = sp.csr_matrix(
        (np.ones(int(rr_edges.sum())), (pos[src[rr_edges]], pos[tgt[rr_edges]])),
        shape=(n_reg, n_reg),
    )
    rr = np.flatnonzero(rr_edges & ~np.isin(src, masters))
    new_src: list[int] = []
    new_tgt: list[int] = []
    used: set[int] = set()
    for e in rng.permutation(rr)[: 20 * n_feedback_loops]:
        if len(new_src) >= n_feedback_loops:
            break
        i, j = int(src[e]), int(tgt[e])
        back_from = j
        onward = tgt[(src == j) & is_reg[tgt]]
        if len(onward) and rng.random() < 0.5:
            back_from = int(rng.choice(onward))
        members = {i, j, back_from}
        if back_from == i or members & used or np.count_nonzero(tgt == i) >= max_in_degree:
            continue
        # the loop's strongly connected set: regulators downstream of i and upstream of back_from
        down = breadth_first_order(dag, pos[i], directed=True, return_predecessors=False)
        up = breadth_first_order(
            dag.T.tocsr(), pos[back_from], directed=True, return_predecessors=False
        )
        if len(np.intersect1d(down, up)) != len(members):
            continue
        new_src.append(back_from)
        new_tgt.append(i)
        used |= members
        dag = dag + sp.csr_matrix(([1.0], ([pos[back_from]], [pos[i]])), shape=(n_reg, n_reg))
    n_fb = len(new_src)
    if n_fb:
        src = np.concatenate([src, np.asarray(new_src)])
        tgt = np.concatenate([tgt, np.asarray(new_tgt)])
        feedback = np.concatenate([feedback, np.ones(n_fb, dtype=bool)])
    order = np.lexsort((src, tgt))
    src, tgt, feedback = src[order].astype(np.int64), tgt[order].astype(np.int64), feedback[order]

    # edge strengths: log-normal magnitude, sign by activation_fraction
    # (feedback edges repress more often: negative feedback is the common motif)
    p_act = np.where(feedback, min(activation_fraction, 0.3), activation_fraction)
    sign = np.where(rng.random(len(src)) < p_act, 1.0, -1.0)
    magnitude = rng.lognormal(np.log(3.0), 0.35, len(src))
    weight = sign * magnitude

    # gene kinetics
    max_rate = rng.lognormal(np.log(20.0), 1.8, n_genes)
    max_rate[regulators] = rng.lognormal(
        np.log(40.0), 0.5, n_reg
    )  # regulators: moderate, less spread
    degradation = rng.lognormal(np.log(0.3), 0.4, n_genes)  # half-lives of about 2 h
    basal = rng.uniform(0.01, 0.08, n_genes)
    # centre each gene's promoter so that it sits in its sensitive range when its
    # regulators are half-bound
    half = np.bincount(tgt, weights=0.5 * weight, minlength=n_genes)
    bias = -half + rng.normal(0.0, 1.0, n_genes)
    bias[masters] = 2.0  # masters are on unless a cell type switches them off
    hill = rng.uniform(1.0, 3.0, n_reg)
    f_mid = basal + (1.0 - basal) * 0.5
    threshold = (max_rate * f_mid / degradation)[regulators]

    network = GeneNetwork(
        gene_names=gene_names(n_genes),
        regulators=regulators.astype(np.int64),
        master_regulators=masters.astype(np.int64),
        source=src,
        target=tgt,
        weight=weight,
        feedback=feedback,
        hill=hill,
        threshold=threshold,
        bias=bias,
        basal=basal,
        max_rate=max_rate,
        degradation=degradation,
    )
    logger.debug(
        "Drew a network of %d genes, %d regulators, %d edges (%d feedback); max out-degree %d.",
        n_genes,
        n_reg,
        network.n_edges,
        n_fb,
        int(network.out_degree().max()),
    )
    return network
