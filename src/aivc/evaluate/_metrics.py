"""Metrics on predicted perturbation effects.

All pseudobulk metrics take conditions x genes arrays of predicted and
observed changes (perturbed pseudobulk minus control pseudobulk, in
log-normalised units) and a boolean mask of genes to exclude per condition
(the perturbation's own targets are always excluded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "METRICS",
    "MetricInfo",
    "centroid_accuracy",
    "direction_acc_de20",
    "energy_distance",
    "mse_de20",
    "pearson_delta",
    "pearson_delta_de20",
    "scaled_score",
    "systema_pearson_delta",
    "top_de_mask",
]


@dataclass(frozen=True)
class MetricInfo:
    """A metric's name, what it measures and which direction is better."""

    name: str
    description: str
    higher_is_better: bool
    source: str = "aivc"


METRICS: dict[str, MetricInfo] = {}


def _register(name: str, description: str, *, higher_is_better: bool, source: str = "aivc") -> None:
    if name in METRICS:
        msg = f"Metric {name!r} is already registered."
        raise ValueError(msg)
    METRICS[name] = MetricInfo(name, description, higher_is_better, source)


for _name, _desc, _hib, _src in [
    ("pearson_delta", "Pearson r of predicted vs observed change over all genes", True, "aivc"),
    (
        "pearson_delta_de20",
        "Pearson r of the change over the observed top-20 DE genes",
        True,
        "aivc",
    ),
    (
        "mse_de20",
        "Mean squared error of the change over the observed top-20 DE genes",
        False,
        "aivc",
    ),
    (
        "direction_acc_de20",
        "Fraction of top-20 DE genes whose change has the right sign",
        True,
        "aivc",
    ),
    (
        "systema_pearson_delta",
        "Pearson r after removing the mean perturbed centroid (Systema)",
        True,
        "aivc",
    ),
    (
        "centroid_accuracy",
        "Prediction nearest to its own observed centroid among test conditions",
        True,
        "aivc",
    ),
    (
        "energy_distance_rel",
        "Energy distance predicted vs observed cells / control vs observed",
        False,
        "aivc",
    ),
    (
        "overlap_at_N",
        "Overlap of predicted and observed DE genes at N = observed DE count",
        True,
        "cell-eval",
    ),
    (
        "discrimination_score_l1",
        "Perturbation discrimination (L1), normalised rank",
        True,
        "cell-eval",
    ),
    (
        "discrimination_score_cosine",
        "Perturbation discrimination (cosine), normalised rank",
        True,
        "cell-eval",
    ),
    ("mae", "Mean absolute error of pseudobulk expression", False, "cell-eval"),
]:
    _register(_name, _desc, higher_is_better=_hib, source=_src)


def _check(
    pred: np.ndarray, obs: np.ndarray, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.atleast_2d(np.asarray(pred, dtype=np.float64))
    obs = np.atleast_2d(np.asarray(obs, dtype=np.float64))
    if pred.shape != obs.shape:
        msg = f"Predicted and observed changes must have the same shape; got {pred.shape} and {obs.shape}."
        raise ValueError(msg)
    if exclude is None:
        exclude = np.zeros(obs.shape, dtype=bool)
    exclude = np.broadcast_to(np.asarray(exclude, dtype=bool), obs.shape)
    return pred, obs, exclude


def _rowwise_pearson(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pearson r per row over the genes where ``mask`` is True (nan if constant)."""
    n = mask.sum(axis=1)
    w = mask.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma = (a * w).sum(1) / n
        mb = (b * w).sum(1) / n
        da = (a - ma[:, None]) * w
        db = (b - mb[:, None]) * w
        num = (da * db).sum(1)
        den = np.sqrt((da**2).sum(1) * (db**2).sum(1))
        r = num / den
    r[(den <= 1e-12) | (n < 2)] = np.nan
    return r


def top_de_mask(
    de_rank: Sequence[Sequence[int]], n_genes: int, exclude: np.ndarray, k: int = 20
) -> np.ndarray:
    """Mask of each condition's top-``k`` DE genes, skipping excluded genes.

    ``de_rank[i]`` lists gene indices of condition ``i`` ordered by decreasing
    DE significance.
    """
    exclude = np.broadcast_to(np.asarray(exclude, dtype=bool), (len(de_rank), n_genes))
    mask = np.zeros((len(de_rank), n_genes), dtype=bool)
    for i, order in enumerate(de_rank):
        kept = [g for g in order if not exclude[i, g]][:k]
        mask[i, kept] = True
    return mask


def pearson_delta(
    pred: np.ndarray, obs: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Pearson r of predicted vs observed change over all non-excluded genes, per condition."""
    pred, obs, exclude = _check(pred, obs, exclude)
    return _rowwise_pearson(pred, obs, ~exclude)


def pearson_delta_de20(pred: np.ndarray, obs: np.ndarray, de20: np.ndarray) -> np.ndarray:
    """Pearson r over each condition's top-20 DE genes (mask from :func:`top_de_mask`)."""
    pred, obs, de20 = _check(pred, obs, de20)
    return _rowwise_pearson(pred, obs, de20)


def mse_de20(pred: np.ndarray, obs: np.ndarray, de20: np.ndarray) -> np.ndarray:
    """Mean squared error over each condition's top-20 DE genes."""
    pred, obs, de20 = _check(pred, obs, de20)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (((pred - obs) ** 2) * de20).sum(1) / de20.sum(1)


def direction_acc_de20(pred: np.ndarray, obs: np.ndarray, de20: np.ndarray) -> np.ndarray:
    """Fraction of top-20 DE genes whose predicted change has the observed sign."""
    pred, obs, de20 = _check(pred, obs, de20)
    agree = (np.sign(pred) == np.sign(obs)) & de20
    with np.errstate(invalid="ignore", divide="ignore"):
        return agree.sum(1) / de20.sum(1)


def systema_pearson_delta(
    pred: np.ndarray, obs: np.ndarray, reference: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Pearson r of (prediction - reference) vs (observation - reference).

    ``reference`` is the mean of all perturbed centroids (as a change from
    control); removing it leaves only what is specific to each perturbation,
    so predicting the shared response earns nothing.
    """
    pred, obs, exclude = _check(pred, obs, exclude)
    ref = np.asarray(reference, dtype=np.float64)
    return _rowwise_pearson(pred - ref, obs - ref, ~exclude)


def centroid_accuracy(
    pred: np.ndarray, obs: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """1 where a prediction is nearer its own observed centroid than any other condition's.

    Distances are Euclidean; to keep one gene set for all comparisons, genes
    excluded for any condition are dropped. Needs at least two conditions
    (returns nan otherwise).
    """
    pred, obs, exclude = _check(pred, obs, exclude)
    if len(obs) < 2:
        return np.full(len(obs), np.nan)
    keep = ~exclude.any(axis=0)
    p, o = pred[:, keep], obs[:, keep]
    d = (p**2).sum(1)[:, None] + (o**2).sum(1)[None, :] - 2 * p @ o.T
    own = np.diag(d)
    others = d + np.diag(np.full(len(d), np.inf))
    return (own < others.min(axis=1)).astype(float)


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance between two samples (rows are points): 2E|X-Y| - E|X-X'| - E|Y-Y'|."""

    def mean_dist(a: np.ndarray, b: np.ndarray) -> float:
        sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
        return float(np.sqrt(np.clip(sq, 0, None)).mean())

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def scaled_score(value: float, baseline: float, replicate: float) -> float:
    """(u - b) / (r - b): 0 = the train-mean baseline, 1 = a replicate of the experiment. Not clipped."""
    den = replicate - baseline
    if not np.isfinite(den) or abs(den) < 1e-12:
        return float("nan")
    return float((value - baseline) / den)
