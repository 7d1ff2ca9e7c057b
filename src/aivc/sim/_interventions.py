"""Interventions: CRISPR knockout, knockdown and activation, and drugs.

Genetic interventions act on transcription of their target gene: a knockout
removes it (the gene's product, and so its regulatory activity, is gone), a
knockdown scales it by ``1 - efficiency`` and an activation adds
regulator-independent transcription. Drugs act on the *activity* of the
regulators they bind (not on their mRNA), following a Hill dose-response with
a potency (EC50) per target; besides their primary targets most drugs hit a few
off-targets at higher concentrations. Every drug is described by a numeric
feature vector: a binary target fingerprint (bits set by the targets it binds)
followed by physico-chemical-like descriptors that partly determine its
potency, so that a model can learn to predict unseen drugs from features.

Effects of combined interventions meet in the nonlinear dynamics; nothing is
added up by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from aivc.sim._network import GeneNetwork

__all__ = ["MODALITIES", "DrugLibrary", "drug_names", "random_drugs"]

#: Genetic perturbation modalities.
MODALITIES = ("knockout", "knockdown", "activation")


def drug_names(n_drugs: int) -> np.ndarray:
    """Drug names ``D001``, ``D002``, ... (zero-padded to at least 3 digits)."""
    width = max(3, len(str(n_drugs)))
    return np.asarray([f"D{i:0{width}d}" for i in range(1, n_drugs + 1)])


@dataclass(frozen=True, eq=False)
class DrugLibrary:
    """Drugs as multi-target modulators of regulator activity.

    Each row of the interaction table (``drug``, ``gene``, ``effect``,
    ``ec50``, ``primary``) says that a drug changes the activity of a regulator
    by the factor ``1 + effect * c^n / (c^n + ec50^n)`` at concentration ``c``
    (µM), with the drug's Hill coefficient ``n``. ``effect`` lies in
    ``(-1, 0)`` for inhibition and is positive for agonists.

    Attributes
    ----------
    names
        ``(n_drugs,)`` drug names.
    drug, gene, effect, ec50, primary
        ``(n_interactions,)`` interaction table.
    hill
        ``(n_drugs,)`` Hill coefficient of each drug's dose-response.
    features
        ``(n_drugs, n_features)`` numeric description of each drug.
    feature_names
        ``(n_features,)`` names of the features.
    """

    names: np.ndarray
    drug: np.ndarray
    gene: np.ndarray
    effect: np.ndarray
    ec50: np.ndarray
    primary: np.ndarray
    hill: np.ndarray
    features: np.ndarray
    feature_names: np.ndarray

    def __post_init__(self) -> None:
        n_int = len(self.drug)
        for name in ("gene", "effect", "ec50", "primary"):
            if len(getattr(self, name)) != n_int:
                msg = f"DrugLibrary.{name} must have one entry per interaction ({n_int}); got {len(getattr(self, name))}."
                raise ValueError(msg)
        if len(self.hill) != len(self.names) or len(self.features) != len(self.names):
            msg = "DrugLibrary.hill and DrugLibrary.features need one row per drug."
            raise ValueError(msg)
        if n_int and (np.any(self.effect <= -1.0) or np.any(self.ec50 <= 0)):
            msg = "Drug effects must be > -1 (activity stays positive) and EC50s must be positive."
            raise ValueError(msg)

    @property
    def n_drugs(self) -> int:
        """Number of drugs."""
        return len(self.names)

    def targets_of(self, drug: str | int, *, primary_only: bool = False) -> np.ndarray:
        """Gene indices bound by ``drug`` (name or index)."""
        d = self._index(drug)
        keep = self.drug == d
        if primary_only:
            keep &= self.primary
        return self.gene[keep]

    def _index(self, drug: str | int) -> int:
        if isinstance(drug, int | np.integer):
            return int(drug)
        hits = np.flatnonzero(self.names == drug)
        if not len(hits):
            msg = f"Unknown drug {drug!r}; expected one of {list(self.names)}."
            raise KeyError(msg)
        return int(hits[0])

    def activity(
        self,
        drugs: Sequence[Sequence[int]],
        doses: np.ndarray,
        regulator_index: np.ndarray,
        n_regulators: int,
    ) -> np.ndarray:
        """Activity multipliers of the regulators in a batch of conditions.

        Parameters
        ----------
        drugs
            For each condition, the indices of the drugs given (possibly none).
        doses
            ``(B,)`` concentration (µM) of every drug in each condition.
        regulator_index
            Position of each gene among the regulators (``-1`` otherwise).
        n_regulators
            Number of regulators.

        Returns
        -------
        ``(B, n_regulators)`` multipliers (1 where no drug acts).
        """
        b = len(drugs)
        out = np.ones((b, n_regulators))
        cond = np.repeat(np.arange(b), [len(d) for d in drugs])
        given = np.fromiter((d for ds in drugs for d in ds), dtype=np.int64, count=len(cond))
        if not len(given):
            return out
        # all (condition, interaction) pairs of the drugs given
        order = np.argsort(self.drug, kind="stable")
        starts = np.searchsorted(self.drug[order], given, side="left")
        stops = np.searchsorted(self.drug[order], given, side="right")
        counts = stops - starts
        pair_cond = np.repeat(cond, counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        inter = order[np.repeat(starts, counts) + offsets]
        target_pos = regulator_index[self.gene[inter]]
        if np.any(target_pos < 0):
            bad = sorted({int(g) for g in self.gene[inter][target_pos < 0]})
            msg = f"Drugs may only bind regulators (they act on regulator activity); genes {bad} are not regulators."
            raise ValueError(msg)
        c = np.asarray(doses, dtype=np.float64)[pair_cond]
        n = self.hill[self.drug[inter]]
        with np.errstate(divide="ignore"):
            frac = 1.0 / (1.0 + np.exp(n * (np.log(self.ec50[inter]) - np.log(np.maximum(c, 0.0)))))
        factor = 1.0 + self.effect[inter] * frac
        np.multiply.at(out, (pair_cond, target_pos), factor)
        return out

    def to_arrays(self, prefix: str = "drugs_") -> dict[str, np.ndarray]:
        """All attributes as plain arrays (for ``numpy.savez``), keys prefixed."""
        return {prefix + f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "drugs_") -> DrugLibrary:
        """Inverse of :meth:`to_arrays`."""
        return cls(**{f.name: np.asarray(arrays[prefix + f.name]) for f in fields(cls)})


def random_drugs(
    network: GeneNetwork,
    rng: np.random.Generator,
    *,
    n_drugs: int = 10,
    n_fingerprint_bits: int = 64,
    n_descriptors: int = 8,
    agonist_fraction: float = 0.2,
) -> DrugLibrary:
    """Draw a library of drugs acting on a network's regulators.

    Each drug has 1-3 primary targets (more likely hubs) with EC50 between about
    0.01 and 10 µM, and 0-4 off-targets bound 10-300 times more weakly.
    Potency depends on the first descriptors, the fingerprint on the targets.

    Parameters
    ----------
    network
        The network whose regulators the drugs bind.
    rng
        Random generator.
    n_drugs
        Number of drugs.
    n_fingerprint_bits
        Length of the binary target fingerprint.
    n_descriptors
        Number of continuous descriptors.
    agonist_fraction
        Fraction of drugs that raise rather than inhibit their targets' activity.
    """
    regs = network.regulators
    n_reg = len(regs)
    out_deg = network.out_degree()[regs].astype(np.float64)
    p_target = np.sqrt(out_deg + 1.0)
    p_target /= p_target.sum()
    codes = np.zeros((n_reg, n_fingerprint_bits), dtype=bool)
    for j in range(n_reg):
        codes[j, rng.choice(n_fingerprint_bits, 3, replace=False)] = True
    desc = rng.standard_normal((n_drugs, n_descriptors))
    fp = np.zeros((n_drugs, n_fingerprint_bits), dtype=bool)
    rows: dict[str, list] = {k: [] for k in ("drug", "gene", "effect", "ec50", "primary")}
    hill = rng.uniform(0.8, 2.5, n_drugs)
    for d in range(n_drugs):
        n_primary = int(rng.integers(1, 4))
        n_off = int(rng.integers(0, 5))
        chosen = rng.choice(n_reg, min(n_primary + n_off, n_reg), replace=False, p=p_target)
        primary_targets, off_targets = chosen[:n_primary], chosen[n_primary:]
        agonist = rng.random() < agonist_fraction
        log10_ec50 = -0.5 + 0.6 * desc[d, 0] - 0.3 * desc[d, 1] + rng.normal(0.0, 0.3)
        log10_ec50 = float(np.clip(log10_ec50, -2.0, 1.0))
        for j in primary_targets:
            rows["drug"].append(d)
            rows["gene"].append(int(regs[j]))
            rows["effect"].append(rng.uniform(1.0, 3.0) if agonist else -rng.uniform(0.75, 0.98))
            rows["ec50"].append(10 ** (log10_ec50 + rng.normal(0.0, 0.2)))
            rows["primary"].append(True)
            fp[d] |= codes[j]
        for j in off_targets:
            rows["drug"].append(d)
            rows["gene"].append(int(regs[j]))
            rows["effect"].append(-rng.uniform(0.3, 0.9))
            rows["ec50"].append(10 ** (log10_ec50 + rng.uniform(1.0, 2.5)))
            rows["primary"].append(False)
            fp[d] |= codes[j] & (rng.random(n_fingerprint_bits) < 0.5)
        fp[d, rng.choice(n_fingerprint_bits, 4, replace=False)] = True  # scaffold bits
    names = [f"fp_{i:02d}" for i in range(n_fingerprint_bits)] + [
        f"desc_{i + 1}" for i in range(n_descriptors)
    ]
    return DrugLibrary(
        names=drug_names(n_drugs),
        drug=np.asarray(rows["drug"], dtype=np.int64),
        gene=np.asarray(rows["gene"], dtype=np.int64),
        effect=np.asarray(rows["effect"], dtype=np.float64),
        ec50=np.asarray(rows["ec50"], dtype=np.float64),
        primary=np.asarray(rows["primary"], dtype=bool),
        hill=hill,
        features=np.hstack([fp.astype(np.float64), desc]),
        feature_names=np.asarray(names),
    )
