"""Novae's spatial domains, a model trained from scratch on CPU.

Standalone: run with the python of the ``novae`` peer environment
(``aivc peers install novae``); it imports numpy, scipy, anndata, scanpy,
torch and novae, never aivc. No pretrained weights are downloaded.

Novae's documented workflow for a new model: Novae's Delaunay graph of the
cells of each section (``novae.spatial_neighbors`` with ``slide_key``; links
longer than the 99th percentile removed with its ``percentile``), a
model built from the data (``novae.Novae(adata)``: genes, PCA-initialised gene
embeddings, one slide queue per section), ``model.fit`` on CPU (with its early
stopping), ``model.compute_representations`` and ``model.assign_domains`` with
``n_domains=K`` (the level of the prototypes' hierarchical tree that gives K
domains). Counts are log-normalised first as Novae's own automatic
preprocessing does (``sc.pp.normalize_total``, ``sc.pp.log1p``). Seeded through
Python's, numpy's and torch's global generators, which Novae's sampling,
augmentations and initialisation draw from.

A cell with no neighbourhood Novae can use (it has no domain) takes the domain
of its nearest cell of the same section that has one.

Usage::

    python novae_domains.py --data X.h5ad --n-clusters K --labels-out OUT.npy \
        [--section-key section] [--seed 0] [--epochs 10]

X.h5ad holds raw counts in ``X`` and coordinates in ``obsm["spatial"]``; the
output is the domain of each cell, int64 from 0 to K - 1, in the order of the
input.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

import anndata as ad
import novae
import numpy as np
import scanpy as sc
import torch
from scipy.spatial import cKDTree

#: Default maximum of training epochs (Novae's ``fit`` stops earlier once its loss settles).
EPOCHS = 10
#: Fewest epochs: Novae's learning-rate schedule warms up for 2 epochs, then decays.
MIN_EPOCHS = 3
#: Links of the Delaunay graph longer than this percentile of all links are removed.
LINK_PERCENTILE = 99.0


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _fill_missing(labels: np.ndarray, coords: np.ndarray, sections: np.ndarray) -> np.ndarray:
    """Give each cell without a domain (-1) the domain of its nearest labelled cell of its section."""
    out = labels.copy()
    for s in np.unique(sections):
        in_s = sections == s
        have = in_s & (labels >= 0)
        miss = in_s & (labels < 0)
        if not miss.any():
            continue
        if not have.any():
            _fail(f"Novae assigned no cell of section {s!r} to a domain.")
        _, nearest = cKDTree(coords[have]).query(coords[miss])
        out[miss] = labels[have][nearest]
    return out


def domains(
    adata: ad.AnnData, n_clusters: int, *, section_key: str | None, seed: int, epochs: int
) -> np.ndarray:
    """Novae's domain of every cell of ``adata`` (int64, 0 .. n_clusters - 1)."""
    if "spatial" not in adata.obsm:
        _fail("the data need the cell coordinates in obsm['spatial'].")
    if section_key is not None and section_key not in adata.obs:
        _fail(f"no obs column {section_key!r}; found {list(adata.obs.columns)}.")
    if epochs < MIN_EPOCHS:
        _fail(
            f"--epochs must be at least {MIN_EPOCHS} (Novae warms up for 2 epochs); got {epochs}."
        )
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    novae.spatial_neighbors(adata, slide_key=section_key, percentile=LINK_PERCENTILE)
    model = novae.Novae(adata)
    print(
        f"novae: {adata.n_obs} cells, {adata.n_vars} genes, at most {epochs} epochs, "
        f"{n_clusters} domains",
        file=sys.stderr,
    )
    model.fit(
        adata,
        max_epochs=epochs,
        accelerator="cpu",
        num_workers=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model.compute_representations(adata, accelerator="cpu", num_workers=0)
    key = model.assign_domains(adata, n_domains=n_clusters)
    names = adata.obs[key].astype(object)
    known = names.notna().to_numpy()
    found, codes = np.unique(names[known].astype(str).to_numpy(), return_inverse=True)
    if len(found) != n_clusters:
        _fail(f"Novae assigned {len(found)} domains; {n_clusters} were asked for.")
    labels = np.full(adata.n_obs, -1, dtype=np.int64)
    labels[known] = codes
    if not known.all():
        print(
            f"novae: {int((~known).sum())} cells without a domain take their nearest's",
            file=sys.stderr,
        )
        sections = (
            adata.obs[section_key].astype(str).to_numpy()
            if section_key is not None
            else np.zeros(adata.n_obs, dtype=str)
        )
        labels = _fill_missing(labels, np.asarray(adata.obsm["spatial"], dtype=float), sections)
    return labels


def main(argv: list[str] | None = None) -> None:
    """Read the data, train Novae, find the domains and write them as .npy."""
    parser = argparse.ArgumentParser(description="Novae's spatial domains, trained from scratch.")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--n-clusters", type=int, required=True)
    parser.add_argument("--labels-out", type=Path, required=True)
    parser.add_argument("--section-key", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    adata = ad.read_h5ad(args.data)
    labels = domains(
        adata,
        args.n_clusters,
        section_key=args.section_key,
        seed=args.seed,
        epochs=args.epochs,
    )
    with args.labels_out.open("wb") as fh:
        np.save(fh, labels, allow_pickle=False)


if __name__ == "__main__":
    main()
