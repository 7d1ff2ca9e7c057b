"""A virtual laboratory: run perturbation experiments on a hidden virtual cell.

The lab answers requests such as "knock out these genes in 500 cells of
type_A each" with a measured :class:`~anndata.AnnData` (counts with technical
noise, a new batch per experiment) and keeps count of what was spent. The
network, the true means and the noise parameters stay inside; nothing in the
returned data reveals them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._labels import check_known
from aivc.sim._interventions import MODALITIES
from aivc.sim._simulator import CONTROL, NO_SIGNAL, VirtualCellSimulator, measured_uns

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["LabCost", "VirtualLab"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabCost:
    """What a lab has spent.

    Attributes
    ----------
    n_experiments
        Experiments run (each is one batch).
    n_cells
        Cells measured.
    n_conditions
        Perturbation conditions measured (a perturbation in one experiment).
    """

    n_experiments: int = 0
    n_cells: int = 0
    n_conditions: int = 0


class VirtualLab:
    """A stand-in laboratory backed by a :class:`VirtualCellSimulator`.

    Parameters
    ----------
    simulator
        The hidden virtual cell. ``None`` creates one from ``n_genes``,
        ``n_cell_types``, ``n_drugs`` and ``seed``; pass your own to keep access
        to its ground truth for evaluation.
    n_genes
        Genes of the created simulator.
    n_cell_types
        Cell types of the created simulator.
    n_drugs
        Drugs of the created simulator.
    max_cells_per_experiment
        Largest number of cells one experiment may measure.
    budget_cells
        Total cells the lab may measure over its lifetime (``None``: unlimited).
    seed
        Seed of the measurements (and of the created simulator). The same seed
        and the same sequence of requests give identical data.
    """

    def __init__(
        self,
        *,
        simulator: VirtualCellSimulator | None = None,
        n_genes: int = 1000,
        n_cell_types: int = 2,
        n_drugs: int = 10,
        max_cells_per_experiment: int = 500_000,
        budget_cells: int | None = None,
        seed: int = 0,
    ) -> None:
        self.simulator = simulator
        self.n_genes = n_genes
        self.n_cell_types = n_cell_types
        self.n_drugs = n_drugs
        self.max_cells_per_experiment = max_cells_per_experiment
        self.budget_cells = budget_cells
        self.seed = seed
        self._sim: VirtualCellSimulator | None = None
        self._cost = LabCost()
        self._log: list[dict[str, object]] = []

    # ---------------------------------------------------------------- catalogue
    def _simulator(self) -> VirtualCellSimulator:
        if self._sim is None:
            sim = self.simulator
            if sim is None:
                sim = VirtualCellSimulator(
                    n_genes=self.n_genes,
                    n_cell_types=self.n_cell_types,
                    n_drugs=self.n_drugs,
                    seed=self.seed,
                )
            sim._ensure_built()
            self._sim = sim
        return self._sim

    @property
    def genes(self) -> list[str]:
        """Gene symbols that can be perturbed (and are measured)."""
        return self._simulator().genes

    @property
    def drugs(self) -> list[str]:
        """Drug names."""
        return self._simulator().drugs

    @property
    def cell_types(self) -> list[str]:
        """Cell types the lab can culture."""
        return self._simulator().cell_types

    @property
    def modalities(self) -> tuple[str, ...]:
        """Genetic perturbation modalities."""
        return MODALITIES

    @property
    def dose_range(self) -> tuple[float, float]:
        """Smallest (exclusive) and largest (inclusive) drug concentration, µM."""
        return 0.0, float(self._simulator().max_dose)

    @property
    def drug_features(self) -> pd.DataFrame:
        """Numeric description of each drug (target fingerprint and descriptors), as a chemist would have it."""
        lib = self._simulator().drugs_
        return pd.DataFrame(
            lib.features, index=pd.Index(lib.names, name="drug"), columns=lib.feature_names
        )

    @property
    def cost(self) -> LabCost:
        """Experiments, cells and conditions measured so far."""
        return self._cost

    @property
    def history(self) -> pd.DataFrame:
        """One row per experiment run."""
        return pd.DataFrame(self._log)

    # --------------------------------------------------------------- validation
    def _check_request(
        self,
        perturbations: Sequence[str],
        n_cells: int | Sequence[int],
        cell_type: str,
        dose: float,
        time: float,
        modality: str,
        differentiate_to: str | None,
    ) -> tuple[list[str], np.ndarray]:
        sim = self._simulator()
        if isinstance(perturbations, str):
            perturbations = [perturbations]
        labels = [str(p) for p in perturbations]
        if not labels:
            msg = (
                "No perturbations requested; pass a list of perturbation labels, e.g. "
                f"[{CONTROL!r}, {self.genes[0]!r}, '{self.genes[0]}+{self.genes[1]}']."
            )
            raise ValueError(msg)
        dup = sorted({p for p in labels if labels.count(p) > 1})
        if dup:
            msg = f"Perturbations {dup} are requested more than once; list each once and set n_cells instead."
            raise ValueError(msg)
        # cells
        counts = [n_cells] * len(labels) if isinstance(n_cells, int | np.integer) else list(n_cells)
        if len(counts) != len(labels):
            msg = (
                f"n_cells has {len(counts)} entries for {len(labels)} perturbations; give one number for all "
                "or one per perturbation."
            )
            raise ValueError(msg)
        for n in counts:
            if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
                msg = (
                    f"n_cells must be a positive integer number of cells per perturbation; got {n!r}. "
                    "Ask for at least 1 cell."
                )
                raise ValueError(msg)
        total = int(sum(counts))
        if total > self.max_cells_per_experiment:
            msg = (
                f"This experiment asks for {total} cells; one experiment measures at most "
                f"{self.max_cells_per_experiment}. Split it into several experiments."
            )
            raise ValueError(msg)
        if self.budget_cells is not None and self._cost.n_cells + total > self.budget_cells:
            msg = (
                f"This experiment needs {total} cells but only {self.budget_cells - self._cost.n_cells} of the "
                f"budget of {self.budget_cells} are left. Ask for fewer cells."
            )
            raise ValueError(msg)
        # context
        check_known(
            [cell_type],
            list(sim.cell_types_),
            what="cell type",
            known_as="cell types of this lab",
            advice="Pick one of them.",
            error=ValueError,
        )
        if modality not in MODALITIES:
            msg = f"Unknown modality {modality!r}; expected one of {list(MODALITIES)}."
            raise ValueError(msg)
        # targets
        has_drug = False
        for label in labels:
            _genes, drugs = sim.parse(label)
            has_drug |= bool(drugs)
        # dose
        if (
            not isinstance(dose, int | float | np.integer | np.floating)
            or isinstance(dose, bool)
            or not math.isfinite(dose)
        ):
            msg = f"dose must be a finite number (µM); got {dose!r}."
            raise ValueError(msg)
        lo, hi = self.dose_range
        if has_drug and not lo < dose <= hi:
            msg = (
                f"dose {dose:g} µM is out of range for drug perturbations: expected {lo:g} < dose <= {hi:g} µM. "
                "Drugs need a dose; choose one within VirtualLab.dose_range."
            )
            raise ValueError(msg)
        if not has_drug and dose != 0:
            msg = (
                f"dose {dose:g} was given but no requested perturbation is a drug ({self.drugs[:3]}...); "
                "leave dose at 0 for genetic perturbations and controls."
            )
            raise ValueError(msg)
        # time
        if (
            not isinstance(time, int | float | np.integer | np.floating)
            or not math.isfinite(time)
            or time < 0
        ):
            msg = f"time must be a non-negative number of hours; got {time!r}."
            raise ValueError(msg)
        if differentiate_to is not None:
            if differentiate_to not in sim.cell_types_ or differentiate_to == cell_type:
                msg = (
                    f"differentiate_to must name another cell type of the lab ({[t for t in sim.cell_types_ if t != cell_type]}); "
                    f"got {differentiate_to!r}."
                )
                raise ValueError(msg)
            if time <= 0:
                msg = "A differentiation signal needs time > 0 (hours since the signal) at which cells are measured."
                raise ValueError(msg)
        elif time > 0:
            msg = (
                f"time {time:g} h was given without a differentiation signal; time counts hours after the signal "
                "set by differentiate_to=<cell type>. Use time=0 for cells at steady state."
            )
            raise ValueError(msg)
        return labels, np.asarray(counts, dtype=np.int64)

    # ---------------------------------------------------------------------- run
    def run(
        self,
        perturbations: Sequence[str],
        *,
        n_cells: int | Sequence[int],
        cell_type: str,
        dose: float = 0.0,
        time: float = 0.0,
        modality: str = "knockout",
        differentiate_to: str | None = None,
    ) -> AnnData:
        """Run one experiment and return its measurement.

        Parameters
        ----------
        perturbations
            Labels: a gene symbol, a drug name, ``"control"``, or targets joined
            by ``"+"`` for combinations (``"G0012+G0450"``, ``"G0012+D003"``).
            Include ``"control"`` to measure control cells in the same batch.
        n_cells
            Cells per perturbation (one number or one per perturbation).
        cell_type
            The cellular context (one of :attr:`cell_types`).
        dose
            Drug concentration (µM), required for drugs, within :attr:`dose_range`;
            0 for genetic perturbations.
        time
            Hours after the differentiation signal (0: steady state).
        modality
            ``"knockout"``, ``"knockdown"`` or ``"activation"`` for the genetic targets.
        differentiate_to
            Cell type the cells are sent towards at time 0 (with ``time > 0``).

        Returns
        -------
        AnnData with raw counts in ``X`` (CSR int32) and ``obs`` columns
        ``perturbation``, ``cell_type``, ``batch`` (one per experiment),
        ``dose``, ``time`` and ``perturbation_type``; ``uns["aivc"]["schema"]``
        holds the schema. No ground truth is included.

        Raises
        ------
        ValueError
            For unknown genes, drugs or cell types, non-positive cell numbers,
            doses out of range and exhausted budgets; the message says what to change.
        """
        import anndata as ad

        labels, counts = self._check_request(
            perturbations, n_cells, cell_type, dose, time, modality, differentiate_to
        )
        sim = self._simulator()
        exp = self._cost.n_experiments + 1
        batch = f"exp{exp:04d}"
        design = pd.DataFrame(
            {
                "perturbation": labels,
                "cell_type": cell_type,
                "dose": [float(dose) if sim.parse(lbl)[1] else 0.0 for lbl in labels],
                "time": float(time),
                "modality": modality,
                "signal": differentiate_to if differentiate_to is not None else NO_SIGNAL,
                "n_cells": counts,
                "batch": batch,
            }
        )
        rng = np.random.default_rng([self.seed, 31, exp])
        cond, cell_condition, cell_batch, names = sim.cell_plan(design, n_batches=1, rng=rng)
        solved = sim.solve(cond)
        effects = sim.batch_effects(names, key=[self.seed, 32, exp])
        chunks = list(
            sim.iter_counts(solved, cell_condition, cell_batch, effects, key=[self.seed, 33, exp])
        )
        x = sp.vstack(chunks, format="csr", dtype=np.int32)
        obs = sim.obs_frame(cond, cell_condition, cell_batch, names, cell_prefix=f"{batch}_cell_")
        adata = ad.AnnData(X=x, obs=obs, var=sim.var_frame())
        uns = measured_uns()
        uns["experiment"] = {"id": exp, "batch": batch}
        adata.uns["aivc"] = uns
        total = int(counts.sum())
        self._cost = LabCost(
            n_experiments=exp,
            n_cells=self._cost.n_cells + total,
            n_conditions=self._cost.n_conditions + len(labels),
        )
        self._log.append(
            {
                "experiment": exp,
                "batch": batch,
                "cell_type": cell_type,
                "modality": modality,
                "dose": float(dose),
                "time": float(time),
                "n_perturbations": len(labels),
                "n_cells": total,
            }
        )
        logger.info(
            "Ran experiment %s: %d perturbations, %d cells in %s.",
            batch,
            len(labels),
            total,
            cell_type,
        )
        return adata
