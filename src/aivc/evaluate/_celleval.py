"""The Virtual Cell Challenge metrics, computed by the community's own ``cell-eval`` package."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from aivc.data._schema import PerturbationSchema
from aivc.instruments._manipulator_module import quiet_de_output as _quiet

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["CELL_EVAL_METRICS", "cell_eval_metrics"]

logger = logging.getLogger(__name__)

#: The ``vcc`` profile plus the cosine variant of perturbation discrimination.
CELL_EVAL_METRICS = (
    "overlap_at_N",
    "discrimination_score_l1",
    "discrimination_score_cosine",
    "mae",
)


def cell_eval_metrics(
    pred: AnnData,
    real: AnnData,
    schema: PerturbationSchema,
    *,
    metrics: Sequence[str] = CELL_EVAL_METRICS,
    de_real: Any | None = None,
    num_threads: int = 1,
) -> tuple[pd.DataFrame, Any]:
    """Score predicted cells against observed cells with ``cell-eval``.

    Parameters
    ----------
    pred, real
        Log-normalised cells with the schema's perturbation column, each
        holding control cells and the same perturbations (as written by
        :meth:`aivc.instruments.PerturbationModel.predict`).
    schema
        Names the perturbation column and control label.
    metrics
        cell-eval metric names.
    de_real
        Differential expression of ``real`` returned by an earlier call, to
        skip recomputing it for another model on the same data.
    num_threads
        Threads for cell-eval's differential expression.

    Returns
    -------
    A perturbation x metric DataFrame, and the real-data DE table for reuse.
    """
    from cell_eval import MetricsEvaluator
    from cell_eval._pipeline import MetricPipeline

    key = schema.perturbation_key
    pred = pred.copy()
    real = real.copy()
    for a in (pred, real):
        a.obs = a.obs[[key]].copy()
        a.obs[key] = a.obs[key].astype(str).astype("category")
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        ev = MetricsEvaluator(
            adata_pred=pred,
            adata_real=real,
            de_real=de_real,
            control_pert=schema.control_label,
            pert_col=key,
            num_threads=num_threads,
            outdir=os.path.join(tmp, "out"),
        )
        pipeline = MetricPipeline(profile=None)
        pipeline.add_metrics(list(metrics))
        pipeline.compute_de_metrics(ev.de_comparison)
        pipeline.compute_anndata_metrics(ev.anndata_pair)
        results = pipeline.get_results().to_pandas()
    table = results.set_index("perturbation")
    table.index = table.index.astype(str)
    return table, ev.de_comparison.real.data
