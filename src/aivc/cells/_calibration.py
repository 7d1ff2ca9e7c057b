"""Calibration of class probabilities: expected calibration error and temperature scaling.

Pure numpy/scipy kernels used by the cell-type decoder and the label-transfer
benchmark.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "expected_calibration_error",
    "fit_temperature",
    "log_softmax",
    "softmax",
]


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise log-softmax of ``logits / temperature``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    return np.exp(log_softmax(logits, temperature))


def expected_calibration_error(
    proba: np.ndarray, correct_or_labels: np.ndarray, *, n_bins: int = 15
) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    The confidence of a cell is its highest probability; cells are put into
    ``n_bins`` equal-width bins on ``[0, 1]`` (a bin holds ``(lo, hi]``, the first
    also holds 0), and ECE is the cell-weighted mean over bins of
    ``|accuracy - mean confidence|`` (Guo et al. 2017; 15 bins is the usual choice).

    Parameters
    ----------
    proba
        Cells x classes probabilities (rows sum to 1), or a 1-d array of
        confidences when ``correct_or_labels`` is boolean.
    correct_or_labels
        Either the true class index of each cell (integers, columns of
        ``proba``; a negative index marks a class the model does not have and
        is always wrong), or a boolean array saying whether each top-label
        prediction was correct.
    n_bins
        Number of equal-width bins.

    Returns
    -------
    The ECE in ``[0, 1]``; NaN for zero cells.
    """
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        msg = f"The 'n_bins' parameter must be a positive integer. Got {n_bins!r} instead."
        raise ValueError(msg)
    proba = np.asarray(proba, dtype=np.float64)
    target = np.asarray(correct_or_labels)
    if proba.shape[0] != target.shape[0]:
        msg = f"Got {proba.shape[0]} probability rows but {target.shape[0]} labels."
        raise ValueError(msg)
    if target.dtype == bool:
        conf = proba.max(axis=1) if proba.ndim == 2 else proba
        correct = target
    else:
        if proba.ndim != 2:
            msg = f"proba must be cells x classes when class indices are given; got shape {proba.shape}."
            raise ValueError(msg)
        conf = proba.max(axis=1)
        correct = proba.argmax(axis=1) == target.astype(np.int64)
    n = conf.shape[0]
    if n == 0:
        return float("nan")
    if not np.isfinite(conf).all() or conf.min() < 0 or conf.max() > 1 + 1e-9:
        msg = "Confidences must be finite probabilities in [0, 1]."
        raise ValueError(msg)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.sum() / n * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """Temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``.

    Parameters
    ----------
    logits
        Cells x classes scores of held-out cells (not those the classifier was fit on).
    labels
        Their true class indices.
    bounds
        Search interval for ``T`` (searched on the log scale).
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.shape[0] == 0:
        return 1.0
    rows = np.arange(logits.shape[0])

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits, np.exp(log_t))[rows, labels].mean())

    res = minimize_scalar(
        nll,
        bounds=(np.log(bounds[0]), np.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(res.x))
