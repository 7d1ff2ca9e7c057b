"""Gene representations from co-expression within one dataset."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._settings import settings
from aivc.genes._knowledge import _load_cached, _save_npz_atomic

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["coexpression_embedding"]

logger = logging.getLogger(__name__)


def _matrix_digest(x: np.ndarray | sp.spmatrix, genes: pd.Index, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    h.update("\x1f".join(map(str, genes)).encode())
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        for part in (x.indptr, x.indices, x.data):
            h.update(np.ascontiguousarray(part).tobytes())
    else:
        h.update(np.ascontiguousarray(x).tobytes())
    h.update(str(x.shape).encode())
    return h.hexdigest()[:16]


def coexpression_embedding(
    adata: AnnData,
    *,
    n_components: int = 32,
    layer: str | None = None,
    max_cells: int = 20_000,
    seed: int | None = None,
    cache: bool = True,
) -> pd.DataFrame:
    """Gene embeddings from gene–gene correlation across the cells of one dataset.

    Each gene's log-normalised expression is standardised across cells
    (mean 0, variance 1), giving a cells x genes matrix ``Z`` whose
    ``Z.T @ Z / n`` is the gene–gene Pearson correlation. A seeded truncated
    SVD ``Z ~ U S V^T`` gives each gene the row of ``V S``; rows are
    L2-normalised, so the dot product of two genes approximates their
    correlation restricted to the main axes of co-expression (the cosine
    of their loadings).

    Genes that do not vary (constant across the cells, e.g. never detected)
    have no co-expression: they are absent from the result, and a log
    message gives their number. Use :func:`aivc.genes.embed_genes` for an
    explicit fallback.

    Parameters
    ----------
    adata
        Cells x genes; ``X`` (or ``layer``) must hold log-normalised
        expression (e.g. from :func:`aivc.data.prepare` or ``log1p`` of
        size-normalised counts), not raw counts.
    n_components
        Embedding dimensions (at most ``min(cells, varying genes) - 1``).
    layer
        Layer to read instead of ``X``.
    max_cells
        Cells used at most (a seeded random subset beyond that).
    seed
        Seed of the SVD and of the cell subset; ``None`` uses ``aivc.settings.seed``.
    cache
        Cache the result under ``aivc.settings.cache_dir``, keyed by a hash of
        the matrix, the gene names and the parameters.

    Returns
    -------
    Varying genes x ``n_components`` DataFrame indexed by ``adata.var_names``.
    """
    from sklearn.decomposition import TruncatedSVD

    if layer is not None and layer not in adata.layers:
        msg = f"Layer {layer!r} not found; available layers: {sorted(adata.layers)}."
        raise KeyError(msg)
    x = adata.layers[layer] if layer is not None else adata.X
    genes = pd.Index(adata.var_names.astype(str))
    if adata.n_obs < 3 or adata.n_vars < 2:
        msg = (
            "coexpression_embedding needs at least 3 cells and 2 genes. "
            f"Got {adata.n_obs} cells x {adata.n_vars} genes instead."
        )
        raise ValueError(msg)
    if n_components < 1:
        msg = f"n_components must be a positive integer. Got {n_components!r} instead."
        raise ValueError(msg)
    seed = settings.seed if seed is None else int(seed)
    key = _matrix_digest(x, genes, f"coexpr-v1-{n_components}-{max_cells}-{seed}")
    cache_file = settings.cache_dir / "genes" / f"coexpression_embedding_{key}.npz"
    cached = _load_cached(cache_file) if cache else None
    if cached is not None:
        return cached
    rows = np.arange(adata.n_obs)
    if adata.n_obs > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_cells, replace=False))
    dense = x[rows].toarray() if sp.issparse(x) else np.asarray(x)[rows]
    dense = np.asarray(dense, dtype=np.float64)
    if not np.isfinite(dense).all():
        msg = "The expression matrix holds NaN or infinite values; expected finite log-expression."
        raise ValueError(msg)
    if dense.max(initial=0.0) > 50:
        logger.warning(
            "coexpression_embedding: values up to %.0f look like raw counts; "
            "pass log-normalised expression.",
            dense.max(),
        )
    sd = dense.std(axis=0)
    varying = sd > 1e-8
    if (~varying).any():
        logger.info(
            "coexpression_embedding: %d of %d genes do not vary across cells and get no embedding",
            int((~varying).sum()),
            len(genes),
        )
    z = (dense[:, varying] - dense[:, varying].mean(axis=0)) / sd[varying]
    k = min(int(n_components), z.shape[0] - 1, z.shape[1] - 1)
    if k < 1:
        msg = "Too few varying genes or cells for a co-expression embedding."
        raise ValueError(msg)
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed)
    svd.fit(z)
    v = svd.components_.T * svd.singular_values_
    # fix the sign of each axis so results do not depend on the solver's sign choice
    v *= np.where(v[np.abs(v).argmax(axis=0), np.arange(k)] < 0, -1.0, 1.0)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    values = v.astype(np.float32)
    names = np.asarray(genes[varying], dtype=str)
    if cache:
        _save_npz_atomic(cache_file, values=values, genes=names)
    return pd.DataFrame(values, index=pd.Index(names))
