"""Tangram's imputation of unmeasured genes for every spatial cell, trained from scratch on CPU.

Standalone: run with the python of the ``tangram`` peer environment
(``aivc peers install tangram``); it imports numpy, anndata, scanpy, torch
and tangram, never aivc.

The workflow is Tangram's documented one: the reference's counts are
normalised to equal totals (``sc.pp.normalize_total``, as Tangram's tutorial
does; the spatial counts stay raw), ``tg.pp_adatas`` on the genes the two data
sets share, ``tg.map_cells_to_space`` in ``"cells"`` mode with the
``"rna_count_based"`` density prior on CPU, then ``tg.project_genes``. The
output is the projected expression of the target genes on the scale of the
normalised reference (each reference cell's total is the reference's median
total): cells x targets, float32, in the order of the targets file. A target
that no reference cell expresses is predicted as 0.

Usage::

    python tangram_impute.py --spatial SP.h5ad --reference REF.h5ad \
        --targets targets.txt --genes-out OUT.npy [--epochs 500] [--seed 0]

Both inputs hold raw counts in ``X``; targets.txt holds one gene per line,
each a gene of the reference.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
import tangram as tg
import torch


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _csr(x: object) -> sp.csr_matrix:
    # Tangram's mapper accepts only scipy's csr/csc matrices or numpy arrays for X
    return sp.csr_matrix(x, dtype=np.float32)


def impute(
    spatial: ad.AnnData, reference: ad.AnnData, targets: list[str], *, epochs: int, seed: int
) -> np.ndarray:
    """Projected expression of ``targets`` for every cell of ``spatial`` (cells x targets)."""
    missing = [g for g in targets if g not in set(reference.var_names)]
    if missing:
        _fail(f"{len(missing)} target genes are not in the reference, e.g. {missing[:5]}.")
    if not reference.var_names.is_unique or not spatial.var_names.is_unique:
        _fail("gene names must be unique in both inputs; run var_names_make_unique first.")
    # Tangram lower-cases gene names and makes them unique; stable ids keep genes that
    # differ only in case apart and let every target be found again afterwards.
    ids = {
        g: f"g{i}" for i, g in enumerate(dict.fromkeys([*reference.var_names, *spatial.var_names]))
    }
    ad_sc = ad.AnnData(X=_csr(reference.X))
    ad_sc.obs_names = [f"r{i}" for i in range(reference.n_obs)]
    ad_sc.var_names = [ids[g] for g in reference.var_names]
    ad_sp = ad.AnnData(X=_csr(spatial.X))
    ad_sp.obs_names = [f"s{i}" for i in range(spatial.n_obs)]
    ad_sp.var_names = [ids[g] for g in spatial.var_names]
    shared = sorted(set(ad_sc.var_names) & set(ad_sp.var_names))
    if not shared:
        _fail("the spatial data and the reference share no gene to train on.")

    sc.pp.normalize_total(ad_sc)
    ad_sc.X = _csr(ad_sc.X)
    tg.pp_adatas(ad_sc, ad_sp, genes=shared)
    print(
        f"tangram: {ad_sc.n_obs} reference cells, {ad_sp.n_obs} spatial cells, "
        f"{len(ad_sc.uns['training_genes'])} training genes, {epochs} epochs",
        file=sys.stderr,
    )
    # Tangram seeds only a truthy random_state (seed 0 would be ignored): seed here
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (Tangram draws its initial map from the global state)
    torch.manual_seed(seed)
    ad_map = tg.map_cells_to_space(
        ad_sc,
        ad_sp,
        mode="cells",
        density_prior="rna_count_based",
        num_epochs=epochs,
        device="cpu",
        random_state=seed,
        verbose=False,
    )
    # project only the targets: the cells x genes product of every gene is not needed
    target_ids = [ids[g] for g in targets]
    present = [g for g in dict.fromkeys(target_ids) if g in set(ad_sc.var_names)]
    ad_ge = tg.project_genes(adata_map=ad_map, adata_sc=ad_sc[:, present].copy())
    col = {g: i for i, g in enumerate(ad_ge.var_names)}
    projected = np.asarray(ad_ge.X, dtype=np.float32)
    out = np.zeros((spatial.n_obs, len(targets)), dtype=np.float32)
    for j, g in enumerate(target_ids):
        if g in col:
            out[:, j] = projected[:, col[g]]
    return out


def main(argv: list[str] | None = None) -> None:
    """Read the inputs, run Tangram and write the projected targets as .npy."""
    parser = argparse.ArgumentParser(description="Tangram's imputation of unmeasured genes.")
    parser.add_argument("--spatial", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--targets", type=Path, required=True)
    parser.add_argument("--genes-out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    targets = [line.strip() for line in args.targets.read_text().splitlines() if line.strip()]
    if not targets:
        _fail(f"{args.targets} names no target gene.")
    spatial = ad.read_h5ad(args.spatial)
    reference = ad.read_h5ad(args.reference)
    out = impute(spatial, reference, targets, epochs=args.epochs, seed=args.seed)
    with args.genes_out.open("wb") as fh:
        np.save(fh, out, allow_pickle=False)


if __name__ == "__main__":
    main()
