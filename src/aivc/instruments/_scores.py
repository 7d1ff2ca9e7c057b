"""Scores of predicted changes per condition, shared by the chemical and temporal models.

:func:`condition_scores` compares predicted with observed changes (conditions
x features): Pearson over all features, mean squared error, and both again on
each condition's ``top`` most changed features (largest observed |change|).
The models use it to choose among their candidates on training data; the
benchmarks use it to score held-out conditions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TOP_N", "condition_scores"]

TOP_N = 20


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r; a constant row scores 0."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    num = (a * b).sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def condition_scores(
    observed: np.ndarray, predicted: np.ndarray, top: int = TOP_N
) -> dict[str, np.ndarray]:
    """Per-condition scores: ``pearson_delta``, ``mse``, and on the ``top`` most changed features
    (largest observed |change|) ``pearson_delta_top20`` and ``mse_top20``."""
    observed = np.atleast_2d(np.asarray(observed, float))
    predicted = np.atleast_2d(np.asarray(predicted, float))
    k = min(top, observed.shape[1])
    idx = np.argsort(-np.abs(observed), axis=1)[:, :k]
    o_top = np.take_along_axis(observed, idx, 1)
    p_top = np.take_along_axis(predicted, idx, 1)
    return {
        "pearson_delta": _pearson_rows(observed, predicted),
        "mse": ((observed - predicted) ** 2).mean(1),
        "pearson_delta_top20": _pearson_rows(o_top, p_top),
        "mse_top20": ((o_top - p_top) ** 2).mean(1),
    }
