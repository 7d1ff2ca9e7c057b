"""Numerical kernels of the ``aivc-perturb`` manipulator (numpy only, no AnnData).

Kernel ridge regression / Gaussian-process posterior with closed-form
grouped leave-out residuals, used to choose hyperparameters on the training
conditions only and to calibrate predictive standard deviations.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "KernelFit",
    "combination_singles",
    "context_kernel",
    "dose_kernel",
    "fit_kernel_ridge",
    "grouped_loo",
    "grouped_loo_top",
    "linear_kernel",
    "quiet_de_output",
    "top_gene_error",
    "top_gene_index",
    "top_right_singular",
    "unit_rows",
]


def top_right_singular(x: np.ndarray, k: int) -> np.ndarray:
    """Columns x ``k``: top right singular vectors of ``x`` times their singular values.

    Uses the eigendecomposition of the smaller Gram matrix (fast for tall or
    wide matrices); returns fewer columns when the rank is lower.
    """
    x = np.asarray(x, dtype=np.float64)
    small_rows = x.shape[0] <= x.shape[1]
    gram = x @ x.T if small_rows else x.T @ x
    evals, evecs = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1][:k]
    s = np.sqrt(np.clip(evals[order], 0.0, None))
    keep = s > 1e-8 * max(float(s[0]) if s.size else 0.0, 1e-300)
    if small_rows:
        # right vectors V = X^T U / s, scaled by s: X^T U
        return x.T @ evecs[:, order[keep]]
    return evecs[:, order[keep]] * s[keep]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 1e-12)


def linear_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine-similarity kernel of unit-row embeddings (rows of zeros: no similarity)."""
    return unit_rows(a) @ unit_rows(b).T


def dose_kernel(log_a: np.ndarray, log_b: np.ndarray, *, width: float = 0.5) -> np.ndarray:
    """Gaussian similarity of log10 doses (genetic perturbations: log-dose 0)."""
    d = np.asarray(log_a, dtype=np.float64)[:, None] - np.asarray(log_b, dtype=np.float64)[None, :]
    return np.exp(-(d**2) / (2 * width**2))


def context_kernel(za: np.ndarray, zb: np.ndarray, *, scale: float, tau: float) -> np.ndarray:
    """``exp(-||za - zb||^2 / (tau * scale))`` between context states (rows)."""
    d2 = ((za**2).sum(axis=1)[:, None] + (zb**2).sum(axis=1)[None, :] - 2 * za @ zb.T).clip(min=0.0)
    return np.exp(-d2 / max(tau * scale, 1e-12))


def top_gene_index(observed: np.ndarray, *, n_top: int = 20) -> np.ndarray:
    """Per row, the columns of its ``n_top`` largest absolute observed changes (unordered)."""
    k = min(n_top, observed.shape[1])
    return np.argpartition(-np.abs(observed), k - 1, axis=1)[:, :k]


def top_gene_error(
    residual: np.ndarray,
    observed: np.ndarray | None,
    *,
    n_top: int = 20,
    top: np.ndarray | None = None,
) -> np.ndarray:
    """Per row: mean squared residual over that row's ``n_top`` largest observed changes.

    A training-data stand-in for the benchmark's ``mse_de20`` (which uses the
    top differentially expressed genes of each held-out condition). ``top``
    passes :func:`top_gene_index` of ``observed`` when many residuals are
    scored against the same changes.
    """
    if top is None:
        if observed is None:
            msg = "top_gene_error needs the observed changes or their top-gene index."
            raise ValueError(msg)
        top = top_gene_index(observed, n_top=n_top)
    return np.take_along_axis(residual, top, axis=1).__pow__(2).mean(axis=1)


@dataclass
class KernelFit:
    """A fitted kernel ridge regression (GP posterior mean) of centred targets."""

    alpha: np.ndarray  # n x genes, (K + lam I)^-1 (Y - mean)
    inverse: np.ndarray  # n x n, (K + lam I)^-1
    lam: float


def fit_kernel_ridge(k: np.ndarray, y: np.ndarray, lam: float) -> KernelFit:
    """Solve ``(K + lam I) alpha = y`` (``y`` already centred)."""
    n = k.shape[0]
    inv = np.linalg.inv(k + lam * np.eye(n))
    return KernelFit(alpha=inv @ y, inverse=inv, lam=lam)


def grouped_loo(
    k: np.ndarray, y: np.ndarray, groups: Sequence[int], lams: Sequence[float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Closed-form leave-one-group-out residuals of kernel ridge regression.

    For each penalty ``lam``: with ``A = (K + lam I)^-1`` and ``alpha = A y``,
    holding out group ``G`` leaves the residual ``A_GG^-1 alpha_G`` (exact for
    a GP posterior mean with fixed prior mean), and the held-out predictive
    variance (in kernel units) of each member is the diagonal of ``A_GG^-1``.

    Returns
    -------
    One ``(residuals, variances)`` pair per ``lam``: ``n x genes`` and ``n``.
    """
    n = k.shape[0]
    s, u = np.linalg.eigh((k + k.T) / 2)
    s = np.clip(s, 0.0, None)
    groups = np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    uty = u.T @ y
    # one-member groups (the usual case) in one vectorised step; only the diagonal of A is needed
    singles = np.array([idx[0] for idx in members if len(idx) == 1], dtype=np.int64)
    blocks = [idx for idx in members if len(idx) > 1]
    out = []
    for lam in lams:
        d = 1.0 / (s + lam)
        alpha = u @ (uty * d[:, None])
        res = np.empty_like(y)
        var = np.empty(n)
        if singles.size:
            diag = (u[singles] ** 2) @ d
            res[singles] = alpha[singles] / diag[:, None]
            var[singles] = 1.0 / diag
        for idx in blocks:
            block = np.linalg.inv((u[idx] * d) @ u[idx].T)
            res[idx] = block @ alpha[idx]
            var[idx] = np.diag(block)
        out.append((res, var))
    return out


def grouped_loo_top(
    k: np.ndarray,
    y: np.ndarray,
    groups: Sequence[int],
    lams: Sequence[float],
    top: np.ndarray,
    *,
    chunk: int = 256,
) -> list[np.ndarray]:
    """:func:`grouped_loo`'s residuals only at each row's columns ``top`` (rows x c), per ``lam``.

    What :func:`top_gene_error` reads of the residuals, without forming the
    rows x genes residuals for every penalty: with ``A = U diag(d) U'``, the
    residual of a one-member group ``i`` at gene ``g`` is
    ``sum_k U_ik d_k (U'y)_kg / A_ii``, so only the ``c`` genes of each row
    are summed (the genes x rows product ``U'y`` is formed once). Groups of
    several members take their full rows.
    """
    n = k.shape[0]
    s, u = np.linalg.eigh((k + k.T) / 2)
    s = np.clip(s, 0.0, None)
    groups = np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    uty_t = (u.T @ y).T  # genes x eigen-directions
    d = np.stack([1.0 / (s + lam) for lam in lams])  # lams x directions
    weights = u[None, :, :] * d[:, None, :]  # lams x rows x directions
    out = np.empty((len(lams), n, top.shape[1]))
    for a in range(0, n, chunk):
        rows = np.arange(a, min(a + chunk, n))
        gathered = uty_t[top[rows]]  # rows x c x directions
        out[:, rows] = np.einsum("rcj,lrj->lrc", gathered, weights[:, rows])
    diag = np.einsum("lrj,rj->lr", weights, u)  # the diagonal of A, per lam
    singles = np.array([idx[0] for idx in members if len(idx) == 1], dtype=np.int64)
    out[:, singles] /= diag[:, singles, None]
    for idx in (m for m in members if len(m) > 1):
        for li in range(len(lams)):
            block = np.linalg.inv((u[idx] * d[li]) @ u[idx].T)
            full = block @ ((u[idx] * d[li]) @ uty_t.T)
            out[li, idx] = np.take_along_axis(full, top[idx], axis=1)
    return list(out)


def combination_singles(
    rows: Sequence[Sequence[int]], residual: np.ndarray, prior: np.ndarray, lam: float
) -> np.ndarray:
    """Single-target changes inferred from combinations, shrunk towards a prior.

    Solves ``min_X sum_r ||residual_r - sum_{u in rows[r]} X_u||^2 + lam sum_u ||X_u - prior_u||^2``
    for every gene at once, i.e. ``X = (M'M + lam I)^-1 (M' residual + lam prior)``
    with ``M`` the combinations x unknown-targets incidence matrix.

    Parameters
    ----------
    rows
        For each combination, the indices (into ``prior``) of its targets whose
        single change is unknown; the known singles are already subtracted
        from ``residual``.
    residual
        Combinations x genes: measured change minus the known singles.
    prior
        Unknown targets x genes: prior change of each unknown target.
    lam
        Weight of the prior (relative to one combination).

    Returns
    -------
    Unknown targets x genes.
    """
    n_unknown = prior.shape[0]
    m = np.zeros((len(rows), n_unknown))
    for r, idx in enumerate(rows):
        for u in idx:
            m[r, u] += 1.0
    a = m.T @ m + lam * np.eye(n_unknown)
    return np.linalg.solve(a, m.T @ residual + lam * prior)


def detection_curve(reference: np.ndarray, *, n_bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of cells expressing a gene as a non-decreasing function of its mean.

    Genes of ``reference`` (cells x genes, log-normalised) are binned by mean
    log-expression (quantile bins); returns the bins' mean expression and
    their mean detection rate made non-decreasing, for :func:`numpy.interp`.
    """
    mu = np.asarray(reference.mean(axis=0), dtype=np.float64).ravel()
    det = np.asarray((reference > 0).mean(axis=0), dtype=np.float64).ravel()
    order = np.argsort(mu)
    bins = [b for b in np.array_split(order, min(n_bins, len(order))) if len(b)]
    x = np.array([mu[b].mean() for b in bins])
    y = np.maximum.accumulate(np.array([det[b].mean() for b in bins]))
    return np.concatenate([[0.0], x]), np.concatenate([[0.0], y])


def detection_shift_cells(
    cells: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    curve: tuple[np.ndarray, np.ndarray],
    genes: np.ndarray | None = None,
) -> np.ndarray:
    """Move cells to a target mean per gene, changing how many cells express each gene.

    Genes whose mean rises switch on more cells, genes whose mean falls switch
    off some, by the change in detection rate that ``curve`` (from
    :func:`detection_curve` on control cells) gives between the cells' mean
    and the target; switched-on cells start at the gene's median non-zero
    level (or the median over all genes). A gene whose target is zero is
    switched off in every cell. The expression is then scaled in linear
    space, gene by gene, so each gene's mean over cells is ``target`` exactly
    (as :func:`aivc.instruments._base.shift_cells`). ``genes`` (a boolean
    mask) limits the change of detection, switching off included, to those
    genes; the others are only scaled.
    """
    from aivc.instruments._base import shift_cells

    cells = np.array(cells, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n = cells.shape[0]
    on = cells > 0
    det = on.mean(axis=0)
    cx, cy = curve
    change = np.interp(target, cx, cy) - np.interp(cells.mean(axis=0), cx, cy)
    chosen = np.ones(target.shape, dtype=bool) if genes is None else np.asarray(genes, dtype=bool)
    off = chosen & (target <= 1e-9)
    want = np.clip(det + change, 0.0, 1.0)
    want = np.where(off, 0.0, want)
    want = np.where(chosen, want, det)
    k_on = np.clip(np.round((want - det) * n), 0, None).astype(int)
    k_off = np.clip(np.round((det - want) * n), 0, None).astype(int)
    # keep one expressing cell unless the gene is switched off entirely
    k_off = np.where(off, on.sum(axis=0), np.minimum(k_off, on.sum(axis=0) - 1))
    k_off = np.maximum(k_off, 0)
    if k_on.any() or k_off.any():
        priority = rng.random(cells.shape)
        rank_on = np.argsort(np.argsort(np.where(on, np.inf, priority), axis=0), axis=0)
        rank_off = np.argsort(np.argsort(np.where(on, priority, np.inf), axis=0), axis=0)
        positive = cells[on]
        overall = float(np.median(positive)) if positive.size else 1.0
        level = np.full(cells.shape[1], overall)
        some = on.any(axis=0)
        level[some] = np.nanmedian(np.where(on[:, some], cells[:, some], np.nan), axis=0)
        switch_on = (~on) & (rank_on < k_on[None, :])
        cells = np.where(switch_on, level[None, :], cells)
        switch_off = on & (rank_off < k_off[None, :])
        cells = np.where(switch_off, 0.0, cells)
    return shift_cells(cells, target, rng)


def detection_genes(
    delta: np.ndarray, scale: np.ndarray, z: float, target: np.ndarray
) -> np.ndarray:
    """Genes whose predicted change also changes detection: at least ``z`` predictive sds from zero.

    A predicted mean that falls below zero is clipped there (``target`` 0):
    the change outruns the gene's own level, an extrapolation the detection
    curve says nothing about, so such genes are only scaled.
    """
    return (np.abs(delta) >= z * scale) & (target > 1e-9)


@contextlib.contextmanager
def quiet_de_output() -> Iterator[None]:
    """Silence the progress bars and info logs of pdex and cell-eval for the duration.

    Standard error is captured, ``TQDM_DISABLE`` is set and the ``pdex`` and
    ``cell_eval`` loggers are raised to ``ERROR``; all three are restored on
    exit. Used around the differential expression of :func:`_top_de_genes`
    and by :mod:`aivc.evaluate` around cell-eval.
    """
    sink = io.StringIO()
    redirect = contextlib.redirect_stderr(sink)
    redirect.__enter__()
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    loggers = [logging.getLogger(n) for n in ("cell_eval", "pdex")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)
        redirect.__exit__(None, None, None)


def _top_de_genes(
    cells: list[np.ndarray], control: np.ndarray, *, fdr: float = 0.05
) -> list[np.ndarray]:
    """Significant genes of each block against ``control``, by decreasing |log2 fold change|.

    The same test and ranking as cell-eval's ``overlap_at_N``: pdex's
    Mann-Whitney U per gene with Benjamini-Hochberg FDR below ``fdr``, ranked
    by the fold change of the geometric-mean pseudobulks.
    """
    import anndata as ad
    import pandas as pd
    import pdex

    labels = np.concatenate([np.full(len(c), f"c{i}") for i, c in enumerate(cells)])
    x = np.vstack([*cells, control]).astype(np.float32)
    obs = pd.DataFrame({"group": [*labels, *["ref"] * len(control)]})
    obs.index = obs.index.astype(str)
    with quiet_de_output():
        table = pdex.pdex(
            ad.AnnData(X=x, obs=obs),
            groupby="group",
            mode="ref",
            reference="ref",
            threads=1,
            is_log1p=True,
            as_pandas=True,
        )
    out = []
    for i in range(len(cells)):
        t = table[(table["target"] == f"c{i}") & (table["fdr"] < fdr)]
        order = np.argsort(-np.abs(t["log2_fold_change"].to_numpy()), kind="stable")
        out.append(t["feature"].to_numpy()[order].astype(int))
    return out


def choose_detection_threshold(
    real: list[np.ndarray],
    contexts: Sequence[object],
    controls: dict[object, np.ndarray],
    predicted: np.ndarray,
    scale: np.ndarray,
    rng: np.random.Generator,
    *,
    thresholds: Sequence[float] = (1.96, 3.0, np.inf),
    n_cells: int = 300,
) -> tuple[float, dict[str, float]]:
    """Choose which predicted changes also change detection, on held-out training conditions.

    For each training condition, control cells of its context are moved to
    its held-out predicted mean, changing detection for genes whose predicted
    change is at least ``z`` predictive sds from zero (``inf``: scaling
    only), and the differentially expressed genes of the moved cells are
    compared with those of the measured cells, both against the same control
    cells: the share of the measured condition's top-N genes among the moved
    cells' top N, N being the number of significant measured genes
    (conditions without any are skipped). The threshold with the highest
    mean overlap wins; ties go to the larger threshold (fewer cells changed).

    Parameters
    ----------
    real
        Measured cells (log-normalised, cells x genes) of each condition.
    contexts
        Context key of each condition (keys of ``controls``).
    controls
        Context -> its control cells.
    predicted
        Conditions x genes held-out predicted change (relative to the
        context's control mean).
    scale
        Conditions x genes predictive sd of each change.
    rng
        Source of the sampled and switched cells.

    Returns
    -------
    The chosen threshold and the mean overlap of every candidate (keyed by
    its string form).
    """
    from aivc.instruments._base import shift_cells

    def sample(x: np.ndarray, n: int) -> np.ndarray:
        return x if len(x) <= n else x[rng.choice(len(x), n, replace=False)]

    sampled = [sample(c, n_cells) for c in real]
    refs = {c: sample(controls[c], 2 * n_cells) for c in dict.fromkeys(contexts)}
    groups = {c: [i for i, k in enumerate(contexts) if k == c] for c in refs}
    want: dict[int, np.ndarray] = {}
    for c, rows in groups.items():
        want.update(zip(rows, _top_de_genes([sampled[i] for i in rows], refs[c]), strict=True))
    # conditions without any significant measured gene cannot tell the candidates apart
    groups = {c: [i for i in rows if len(want[i])] for c, rows in groups.items()}
    groups = {c: rows for c, rows in groups.items() if rows}
    scores: dict[str, float] = {}
    best = (-np.inf, float(np.inf))
    if not groups:
        return best[1], scores
    seeds = rng.integers(0, 2**31 - 1, size=len(real))
    curves = {c: detection_curve(controls[c]) for c in groups}
    base = {c: controls[c].mean(axis=0) for c in groups}
    for z in sorted(thresholds, reverse=True):
        overlap = []
        for c, rows in groups.items():
            ctrl = controls[c]
            moved = []
            for i in rows:
                g = np.random.default_rng(int(seeds[i]))
                n = len(sampled[i])
                take = ctrl[g.choice(len(ctrl), n, replace=len(ctrl) < n)]
                target = np.clip(base[c] + predicted[i], 0.0, None)
                if np.isinf(z):
                    moved.append(shift_cells(take, target, g))
                else:
                    genes = detection_genes(predicted[i], scale[i], z, target)
                    moved.append(detection_shift_cells(take, target, g, curves[c], genes=genes))
            for i, top in zip(rows, _top_de_genes(moved, refs[c]), strict=True):
                n_top = len(want[i])
                overlap.append(len(np.intersect1d(want[i], top[:n_top])) / n_top)
        scores[str(z)] = float(np.mean(overlap))
        if scores[str(z)] > best[0] + 1e-12:
            best = (scores[str(z)], float(z))
    return best[1], scores
