"""Integration metrics in the style of scIB (Luecken et al., Nature Methods 2022).

Bio-conservation: NMI and ARI of k-means clusters against cell types,
cell-type silhouette, isolated-label silhouette and cLISI. Batch mixing:
batch silhouette within cell types, iLISI and graph connectivity. The overall
score weights the bio-conservation mean 0.6 and the batch-mixing mean 0.4.
All scores lie in [0, 1], higher is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "BATCH_METRICS",
    "BIO_METRICS",
    "batch_silhouette",
    "graph_connectivity",
    "integration_scores",
    "isolated_label_silhouette",
    "label_silhouette",
    "lisi",
    "nmi_ari_kmeans",
]

BIO_METRICS = ("nmi", "ari", "label_asw", "isolated_label_asw", "clisi")
BATCH_METRICS = ("batch_asw", "ilisi", "graph_connectivity")


def _codes(labels: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, int]:
    cat = pd.Categorical(np.asarray(labels).astype(str))
    return cat.codes.astype(np.int64), len(cat.categories)


def _check(x: np.ndarray, *columns: Sequence[Any]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        msg = f"The embedding must be a cells x dimensions matrix. Got shape {x.shape}."
        raise ValueError(msg)
    for c in columns:
        if len(c) != x.shape[0]:
            msg = (
                f"Every label array needs one entry per cell: expected {x.shape[0]}, got {len(c)}."
            )
            raise ValueError(msg)
    if not np.isfinite(x).all():
        msg = "The embedding contains NaN or infinite values."
        raise ValueError(msg)
    return x


def nmi_ari_kmeans(x: np.ndarray, labels: Sequence[Any], *, seed: int = 0) -> tuple[float, float]:
    """NMI and ARI of k-means clusters (k = number of labels) against ``labels``."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    x = _check(x, labels)
    codes, k = _codes(labels)
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    return (
        float(normalized_mutual_info_score(codes, pred, average_method="arithmetic")),
        float(adjusted_rand_score(codes, pred)),
    )


def label_silhouette(x: np.ndarray, labels: Sequence[Any]) -> float:
    """Cell-type silhouette rescaled to [0, 1]: ``(asw + 1) / 2``."""
    from sklearn.metrics import silhouette_score

    x = _check(x, labels)
    return float((silhouette_score(x, np.asarray(labels).astype(str)) + 1.0) / 2.0)


def isolated_label_silhouette(
    x: np.ndarray, labels: Sequence[Any], batches: Sequence[Any]
) -> float:
    """Silhouette of the labels present in the fewest batches, rescaled to [0, 1].

    For each isolated label, the mean cell-type silhouette of its cells; the
    score is the mean over isolated labels.
    """
    from sklearn.metrics import silhouette_samples

    x = _check(x, labels, batches)
    lab = np.asarray(labels).astype(str)
    bat = np.asarray(batches).astype(str)
    per_label = pd.Series(bat).groupby(lab).nunique()
    isolated = per_label.index[per_label == per_label.min()]
    sil = silhouette_samples(x, lab)
    return float(np.mean([(sil[lab == lb].mean() + 1.0) / 2.0 for lb in isolated]))


def batch_silhouette(x: np.ndarray, labels: Sequence[Any], batches: Sequence[Any]) -> float:
    """Batch mixing within cell types: mean over labels of ``1 - |silhouette by batch|``.

    Labels with fewer than two batches (or fewer than three cells) are skipped.
    """
    from sklearn.metrics import silhouette_samples

    x = _check(x, labels, batches)
    lab = np.asarray(labels).astype(str)
    bat = np.asarray(batches).astype(str)
    scores = []
    for lb in np.unique(lab):
        rows = lab == lb
        b = bat[rows]
        n_b = len(np.unique(b))
        if n_b < 2 or rows.sum() <= n_b:
            continue
        scores.append(float(np.mean(1.0 - np.abs(silhouette_samples(x[rows], b)))))
    return float(np.mean(scores)) if scores else float("nan")


def _knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.neighbors import NearestNeighbors

    k = min(k, x.shape[0] - 1)
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return dist[:, 1:], idx[:, 1:]


def lisi(
    x: np.ndarray, labels: Sequence[Any], *, perplexity: float = 30.0, n_iter: int = 50
) -> np.ndarray:
    """Local inverse Simpson's index of ``labels`` per cell (Korsunsky et al. 2019).

    Gaussian kernel weights over the ``3 * perplexity`` nearest neighbours,
    with each cell's bandwidth found by bisection so the weights have the
    given perplexity; LISI is 1 / Σ_label (weight of the label)².
    """
    x = _check(x, labels)
    codes, n_lab = _codes(labels)
    k = int(min(3 * perplexity, x.shape[0] - 1))
    dist, idx = _knn(x, k)
    d2 = dist**2
    target = np.log(perplexity)
    beta = np.ones(x.shape[0])
    lo = np.full(x.shape[0], -np.inf)
    hi = np.full(x.shape[0], np.inf)
    for _ in range(n_iter):
        p = np.exp(-(d2 - d2[:, :1]) * beta[:, None])
        s = p.sum(1)
        h = np.log(s) + beta * ((d2 - d2[:, :1]) * p).sum(1) / s
        up = h > target  # entropy too high: narrow the kernel
        lo = np.where(up, beta, lo)
        hi = np.where(up, hi, beta)
        beta = np.where(
            up,
            np.where(np.isinf(hi), beta * 2.0, (beta + hi) / 2.0),
            np.where(np.isinf(lo), beta / 2.0, (beta + lo) / 2.0),
        )
    p = np.exp(-(d2 - d2[:, :1]) * beta[:, None])
    p /= p.sum(1, keepdims=True)
    rows = np.repeat(np.arange(x.shape[0]), idx.shape[1])
    mass = sp.csr_matrix(
        (p.ravel(), (rows, codes[idx].ravel())), shape=(x.shape[0], n_lab)
    ).toarray()
    return 1.0 / (mass**2).sum(1)


def graph_connectivity(x: np.ndarray, labels: Sequence[Any], *, k: int = 15) -> float:
    """Mean over labels of the fraction of a label's cells in the largest connected
    component of the kNN graph restricted to that label."""
    from scipy.sparse.csgraph import connected_components

    x = _check(x, labels)
    lab = np.asarray(labels).astype(str)
    _, idx = _knn(x, k)
    n = x.shape[0]
    graph = sp.csr_matrix(
        (np.ones(idx.size), (np.repeat(np.arange(n), idx.shape[1]), idx.ravel())), shape=(n, n)
    )
    scores = []
    for lb in np.unique(lab):
        rows = np.flatnonzero(lab == lb)
        _, comp = connected_components(graph[rows][:, rows], directed=True, connection="weak")
        scores.append(np.bincount(comp).max() / len(rows))
    return float(np.mean(scores))


def integration_scores(
    x: np.ndarray,
    labels: Sequence[Any],
    batches: Sequence[Any],
    *,
    seed: int = 0,
) -> dict[str, float]:
    """All scIB-style scores of an embedding, their bio / batch means and the overall score.

    Parameters
    ----------
    x
        Cells x dimensions embedding.
    labels
        Cell type of each cell.
    batches
        Batch of each cell.
    seed
        Seed of k-means.

    Returns
    -------
    ``nmi``, ``ari``, ``label_asw``, ``isolated_label_asw``, ``clisi`` (bio
    conservation), ``batch_asw``, ``ilisi``, ``graph_connectivity`` (batch
    mixing), ``bio``, ``batch`` and ``overall = 0.6 bio + 0.4 batch``.
    """
    x = _check(x, labels, batches)
    _, n_lab = _codes(labels)
    _, n_bat = _codes(batches)
    nmi, ari = nmi_ari_kmeans(x, labels, seed=seed)
    cl = float(np.median(lisi(x, labels)))
    il = float(np.median(lisi(x, batches)))
    out = {
        "nmi": nmi,
        "ari": ari,
        "label_asw": label_silhouette(x, labels),
        "isolated_label_asw": isolated_label_silhouette(x, labels, batches),
        "clisi": (n_lab - cl) / (n_lab - 1) if n_lab > 1 else float("nan"),
        "batch_asw": batch_silhouette(x, labels, batches),
        "ilisi": (il - 1.0) / (n_bat - 1) if n_bat > 1 else float("nan"),
        "graph_connectivity": graph_connectivity(x, labels),
    }
    out["bio"] = float(np.nanmean([out[m] for m in BIO_METRICS]))
    out["batch"] = float(np.nanmean([out[m] for m in BATCH_METRICS]))
    out["overall"] = 0.6 * out["bio"] + 0.4 * out["batch"]
    return out
