"""Cell generation: how predicted cells are made from control cells.

Control cells are moved to the predicted mean. Genes whose predicted change
is at least ``detection_z`` raw predictive sds from zero also change how many
cells express them, by the change in detection rate that the control cells'
detection-vs-mean curve gives between the control and the predicted mean
(:func:`aivc.instruments._manipulator_module.detection_shift_cells`); other
genes are only scaled (:func:`aivc.instruments._base.shift_cells`). The
threshold is fixed (1.96), off (infinity) or chosen on the held-out
predictions of the training conditions: the one whose moved cells recover
most of the measured cells' differentially expressed genes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aivc.instruments import _manipulator_module as mm
from aivc.instruments._base import shift_cells
from aivc.instruments._perturb._state import FittedState

if TYPE_CHECKING:
    from anndata import AnnData

    from aivc.instruments._base import PerturbationSummary

__all__ = ["CellGeneration", "CellState"]

DETECTION_Z = 1.96  # a predicted change this many predictive sds from zero changes detection
DETECTION_CONDITIONS = 40  # training conditions (at most) on which the threshold is chosen


@dataclass
class CellState(FittedState):
    """Fitted state of the cell generation.

    Attributes
    ----------
    detection_z
        Threshold, in raw predictive sds, above which a predicted change also
        changes detection (infinity: expression is only scaled).
    selection
        The chosen threshold and the DE-gene overlap of each candidate.
    """

    stage: ClassVar[str] = "cells"

    detection_z: float
    selection: dict[str, Any]


class CellGeneration:
    """Moves sampled control cells to predicted means."""

    State = CellState

    def __init__(self, state: CellState) -> None:
        self.state = state

    @classmethod
    def fit(
        cls,
        summary: PerturbationSummary,
        adata: AnnData,
        held_out: list[tuple[list[int], np.ndarray, np.ndarray]],
        *,
        mode: bool | str = "auto",
        seed: int = 0,
    ) -> CellGeneration:
        """Set the detection threshold.

        ``mode="auto"`` chooses it on the held-out predictions of the training
        conditions (at most ``DETECTION_CONDITIONS``, sampled with ``seed``;
        :func:`aivc.instruments._manipulator_module.choose_detection_threshold`);
        ``True`` fixes it at ``DETECTION_Z`` and ``False`` at infinity.

        Parameters
        ----------
        summary
            The training pseudobulk.
        adata
            The training cells.
        held_out
            ``(rows of summary, held-out predicted changes, raw predictive sds)``
            per group of training conditions.
        mode
            The ``cell_detection`` parameter.
        seed
            Seed of the sampling of conditions and control cells.
        """
        selection: dict[str, Any] = {}
        if mode is False:
            return cls(CellState(detection_z=float("inf"), selection=selection))
        out = cls(CellState(detection_z=DETECTION_Z, selection=selection))
        if mode is True:
            return out
        import scipy.sparse as sp

        from aivc.data._preprocess import CONDITION_SEP, condition_labels, dose_label

        schema = summary.schema
        cond = condition_labels(adata, schema).to_numpy()

        def cells_of(perturbation: str, context: str | None, dose: float) -> np.ndarray:
            label = dose_label(perturbation, dose)
            return np.flatnonzero(
                cond == (label if context is None else label + CONDITION_SEP + context)
            )

        def dense(rows: np.ndarray) -> np.ndarray:
            block = adata.X[rows]
            return np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float64)

        doses = summary.doses or [0.0] * len(summary.perturbations)
        rng = np.random.default_rng([seed, 29])
        candidates = [(j, i, delta, sd) for rows, delta, sd in held_out for j, i in enumerate(rows)]
        if len(candidates) > DETECTION_CONDITIONS:
            pick = np.sort(rng.choice(len(candidates), DETECTION_CONDITIONS, replace=False))
            candidates = [candidates[k] for k in pick]
        real, contexts, pred, scale, controls = [], [], [], [], {}
        for j, i, delta, sd in candidates:
            c = summary.contexts[i]
            cells = cells_of(summary.perturbations[i], c, float(doses[i]))
            if len(cells) < 10:
                continue
            if c not in controls:
                pool = cells_of(schema.control_label, c, 0.0)
                if len(pool) < 10:
                    continue
                controls[c] = dense(np.sort(rng.choice(pool, min(len(pool), 2000), replace=False)))
            real.append(dense(cells))
            contexts.append(c)
            pred.append(delta[j])
            scale.append(sd[j])
        if not real:
            return out
        z, scores = mm.choose_detection_threshold(
            real, contexts, controls, np.asarray(pred), np.asarray(scale), rng
        )
        out.state.detection_z = z
        selection["detection"] = {"chosen": "inf" if np.isinf(z) else z, "overlap": scores}
        return out

    @property
    def uses_detection(self) -> bool:
        """Whether any predicted change can change detection (a finite threshold)."""
        return bool(np.isfinite(self.state.detection_z))

    def move(
        self,
        cells: np.ndarray,
        target: np.ndarray,
        rng: np.random.Generator,
        reference: Any,
        change: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Move sampled control ``cells`` to the predicted mean ``target``.

        ``reference`` holds all control cells of the context (sparse) and
        ``change`` the predicted change and raw predictive sd of the condition
        (``None``: scaling only).
        """
        if change is None:
            return shift_cells(cells, target, rng)
        delta, scale = change
        genes = mm.detection_genes(delta, scale, self.state.detection_z, target)
        return mm.detection_shift_cells(
            cells, target, rng, mm.detection_curve(reference), genes=genes
        )
