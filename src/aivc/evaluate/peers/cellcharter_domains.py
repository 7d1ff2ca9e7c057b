"""CellCharter's spatial domains, run from scratch on CPU.

Standalone: run with the python of the ``cellcharter`` peer environment
(``aivc peers install cellcharter``); it imports numpy, anndata, scanpy,
squidpy and cellcharter, never aivc.

As CellCharter's documentation does: squidpy's Delaunay graph of the cells
of each section (``sq.gr.spatial_neighbors`` with ``coord_type="generic"``),
the links longer than the 99th percentile removed
(``cc.gr.remove_long_links``), each cell's features concatenated with the mean
features of its neighbours 1, 2 and 3 hops away (``cc.gr.aggregate_neighbors``
with ``n_layers=3``), then CellCharter's Gaussian mixture (``cc.tl.Cluster``)
with K components (seeded through torch's and numpy's global generators, which
its mixture draws from). The cell features are the first 50 principal components of
log-normalised expression (in place of scVI's latent space, slow on CPU).

Usage::

    python cellcharter_domains.py --data X.h5ad --n-clusters K --labels-out OUT.npy \
        [--section-key section] [--seed 0]

X.h5ad holds raw counts in ``X`` and coordinates in ``obsm["spatial"]``; the
output is the domain of each cell, int64 from 0 to K - 1.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

import anndata as ad
import cellcharter as cc
import numpy as np
import scanpy as sc
import squidpy as sq
import torch

#: Principal components used as cell features.
N_PCS = 50
#: Neighbourhood layers aggregated (CellCharter's tutorials use 3).
N_LAYERS = 3


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def domains(
    adata: ad.AnnData, n_clusters: int, *, section_key: str | None, seed: int
) -> np.ndarray:
    """CellCharter's domain of every cell of ``adata`` (int64, 0 .. n_clusters - 1)."""
    if "spatial" not in adata.obsm:
        _fail("the data need the cell coordinates in obsm['spatial'].")
    if section_key is not None and section_key not in adata.obs:
        _fail(f"no obs column {section_key!r}; found {list(adata.obs.columns)}.")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    n_comps = min(N_PCS, adata.n_vars - 1, adata.n_obs - 1)
    sc.pp.pca(adata, n_comps=n_comps, random_state=seed)
    if section_key is not None:
        adata.obs[section_key] = adata.obs[section_key].astype("category")
    sq.gr.spatial_neighbors(
        adata,
        library_key=section_key,
        coord_type="generic",
        delaunay=True,
        spatial_key="spatial",
    )
    cc.gr.remove_long_links(adata)
    cc.gr.aggregate_neighbors(
        adata,
        n_layers=N_LAYERS,
        use_rep="X_pca",
        out_key="X_cellcharter",
        sample_key=section_key,
    )
    print(
        f"cellcharter: {adata.n_obs} cells, {n_comps} PCs x {N_LAYERS + 1} layers, "
        f"{n_clusters} clusters",
        file=sys.stderr,
    )
    # CellCharter's Cluster stores random_state but its mixture (torchgmm) draws its
    # initialisation from the global generators: seed them
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)
    model = cc.tl.Cluster(
        n_clusters=n_clusters,
        random_state=seed,
        trainer_params={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    )
    model.fit(adata, use_rep="X_cellcharter")
    labels = model.predict(adata, use_rep="X_cellcharter")
    return np.asarray(labels, dtype=str).astype(np.int64)


def main(argv: list[str] | None = None) -> None:
    """Read the data, find the domains and write them as .npy."""
    parser = argparse.ArgumentParser(description="CellCharter's spatial domains.")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--n-clusters", type=int, required=True)
    parser.add_argument("--labels-out", type=Path, required=True)
    parser.add_argument("--section-key", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    adata = ad.read_h5ad(args.data)
    labels = domains(adata, args.n_clusters, section_key=args.section_key, seed=args.seed)
    with args.labels_out.open("wb") as fh:
        np.save(fh, labels, allow_pickle=False)


if __name__ == "__main__":
    main()
