"""Batch integration of cells: the engine that measured best, behind aivc's input handling.

:func:`integrate` embeds cells so that batches (donors, technologies, species)
mix while cell types stay apart. It reads counts or log-normalised values (the
result says which, see :func:`aivc.data.log_expression`), keeps the genes
detected in at least three cells, selects highly variable genes within each
batch, scales them, takes principal components and corrects them with
Harmony (``harmonypy``) over the batches; with one batch it returns the
components uncorrected.

Why Harmony: on the integration benchmark (scIB-style scores, see
``docs/benchmarks/defaults.md``) Harmony on scaled principal components scored
higher than scVI and than aivc's own encoder on the Baron human donors, where
the comparison was made, and again on data it was not chosen on (Baron mouse,
Baron human + mouse). The learned encoder stays available as
:class:`aivc.cells.CellEncoder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from aivc.data._expression import ExpressionInput, log_expression
from aivc.data._validate import DataValidationError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["INTEGRATION_METHODS", "Integration", "integrate"]

#: Methods :func:`integrate` offers.
INTEGRATION_METHODS = ("harmony", "pca")

MIN_CELLS_PER_GENE = 3


@dataclass(frozen=True)
class Integration:
    """An integrated embedding and how it was made.

    Attributes
    ----------
    embedding
        Cells x components.
    genes
        The highly variable genes the components were computed on.
    method
        ``"harmony"`` or ``"pca"`` (one batch, or asked for).
    input
        Which input was read (counts or log-normalised values).
    n_batches
        Number of batches corrected for.
    """

    embedding: np.ndarray
    genes: list[str]
    method: str
    input: ExpressionInput
    n_batches: int

    def describe(self) -> str:
        """One line on what was done."""
        how = (
            f"Harmony over {self.n_batches} batches on {self.embedding.shape[1]} principal components"
            if self.method == "harmony"
            else f"{self.embedding.shape[1]} principal components, no batch correction"
        )
        return f"{how} of {len(self.genes)} highly variable genes ({self.input.describe()})"


def _highly_variable(x: np.ndarray, batches: np.ndarray | None, n_top_genes: int) -> np.ndarray:
    """Indices of the ``n_top_genes`` most variable genes, ranked within each batch (Seurat flavour)."""
    import anndata as ad
    import scanpy as sc

    if x.shape[1] <= n_top_genes:
        return np.arange(x.shape[1])
    view = ad.AnnData(X=x.astype(np.float32))
    kwargs = {}
    if batches is not None:
        view.obs["batch"] = pd.Categorical(batches)
        kwargs["batch_key"] = "batch"
    sc.pp.highly_variable_genes(view, n_top_genes=n_top_genes, flavor="seurat", **kwargs)
    return np.flatnonzero(view.var["highly_variable"].to_numpy())


def integrate(
    adata: AnnData,
    *,
    batch_key: str | None,
    method: Literal["harmony", "pca"] = "harmony",
    n_top_genes: int = 2000,
    n_pcs: int = 30,
    input: Literal["auto", "counts", "log-normalized"] = "auto",
    layer: str | None = None,
    library_size_key: str | None = None,
    seed: int = 0,
) -> Integration:
    """Embed cells so that batches mix and cell types stay apart.

    Parameters
    ----------
    adata
        Cells x genes, raw counts or log-normalised values.
    batch_key
        ``obs`` column naming each cell's batch (donor, technology, species);
        ``None`` or a single batch: no correction.
    method
        ``"harmony"`` (default) or ``"pca"`` (no correction).
    n_top_genes
        Highly variable genes kept (all genes when there are fewer).
    n_pcs
        Principal components.
    input, layer, library_size_key
        How to read expression, see :func:`aivc.data.log_expression`.
    seed
        Seed of the PCA and of Harmony.

    Returns
    -------
    Integration
        The embedding, the genes and what was done.
    """
    if method not in INTEGRATION_METHODS:
        msg = f"method must be one of {INTEGRATION_METHODS}. Got {method!r} instead."
        raise ValueError(msg)
    if n_top_genes < 2 or n_pcs < 2:
        msg = f"n_top_genes and n_pcs must be at least 2. Got {n_top_genes} and {n_pcs} instead."
        raise ValueError(msg)
    batches = None
    if batch_key is not None:
        if batch_key not in adata.obs:
            msg = f"No obs[{batch_key!r}] with batches (columns: {list(adata.obs.columns)})."
            raise DataValidationError(msg)
        batches = adata.obs[batch_key].astype(str).to_numpy()
    n_batches = 1 if batches is None else len(np.unique(batches))
    x, read = log_expression(adata, input=input, layer=layer, library_size_key=library_size_key)
    detected = (x > 0).sum(axis=0) >= MIN_CELLS_PER_GENE
    if detected.sum() < 2:
        msg = f"Fewer than 2 genes are detected in at least {MIN_CELLS_PER_GENE} cells; nothing to integrate."
        raise DataValidationError(msg)
    x = x[:, detected]
    names = np.asarray([str(g) for g in adata.var_names])[detected]
    keep = _highly_variable(x, batches if n_batches > 1 else None, n_top_genes)
    x, names = x[:, keep], names[keep]
    sd = x.std(axis=0, ddof=1)
    z = np.clip((x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0), -10.0, 10.0)
    from sklearn.decomposition import PCA

    k = min(n_pcs, z.shape[0] - 1, z.shape[1])
    pcs = PCA(n_components=k, svd_solver="arpack", random_state=seed).fit_transform(z)
    used = method
    if method == "harmony" and n_batches > 1:
        try:
            import harmonypy
        except ImportError as e:
            msg = "integrate(method='harmony') needs harmonypy: pip install 'aivc[cells]'."
            raise ImportError(msg) from e
        frame = pd.DataFrame({"batch": batches})
        ho = harmonypy.run_harmony(pcs, frame, "batch", random_state=seed, verbose=False)
        out = np.asarray(ho.Z_corr)
        pcs = out if out.shape[0] == adata.n_obs else out.T
    else:
        used = "pca"
    return Integration(
        embedding=np.asarray(pcs, dtype=np.float64),
        genes=[str(g) for g in names],
        method=used,
        input=read,
        n_batches=n_batches,
    )
