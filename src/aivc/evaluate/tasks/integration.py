"""Integration benchmark: do embeddings mix donors (or species) while keeping cell types apart?

Every model embeds the same cells over the same highly variable genes; the
embeddings are scored with the scIB-style metrics of :mod:`aivc.evaluate._scib`.
Cell types are used only for scoring. Models:

- ``pca``: log-normalised, scaled, 30 principal components (no integration);
- ``harmony``: Harmony (harmonypy) on those components, batch as covariate;
- ``scvi``: scvi-tools SCVI on raw counts with the batch key (``SCVI_EPOCHS`` epochs);
- ``aivc``: :func:`aivc.cells.integrate`, aivc's integration path (Harmony on scaled
  components, the engine that measured best; it reads the same genes as the others);
- ``aivc-encoder``: :class:`aivc.cells.CellEncoder` on raw counts with the batch key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aivc.evaluate._results import machine_info, summarize, write_results
from aivc.evaluate._scib import BATCH_METRICS, BIO_METRICS, integration_scores
from aivc.evaluate.tasks import Task, register_task

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["DATASETS", "MODELS", "integration_data", "run_integration"]

logger = logging.getLogger(__name__)

#: Datasets of the benchmark: name -> description.
DATASETS = {
    "baron_human": "Baron 2016 human pancreas, 4 donors as batches",
    "baron_mouse": "Baron 2016 mouse pancreas, 2 mice as batches",
    "baron_human_mouse": "Baron 2016 human + mouse pancreas (mouse genes as human orthologs), 6 donors as batches",
}
MODELS = ("aivc", "aivc-encoder", "pca", "harmony", "scvi")
N_TOP_GENES = 2000
N_PCS = 30
SCVI_EPOCHS = 100
ENCODER_EPOCHS = 60
LABEL_KEY = "cell_type"
BATCH_KEY = "donor"

_DESCRIPTIONS = {
    "nmi": "NMI of k-means clusters (k = number of cell types) vs cell type",
    "ari": "ARI of the same clusters",
    "label_asw": "cell-type silhouette, (asw + 1) / 2",
    "isolated_label_asw": "silhouette of the cell types present in the fewest batches",
    "clisi": "cell-type LISI, scaled so 1 = neighbourhoods of one cell type",
    "batch_asw": "1 - |batch silhouette| within each cell type",
    "ilisi": "batch LISI, scaled so 1 = neighbourhoods as mixed as the batches allow",
    "graph_connectivity": "fraction of each cell type in its largest kNN-graph component",
    "bio": "mean of the bio-conservation scores",
    "batch": "mean of the batch-mixing scores",
    "overall": "0.6 bio + 0.4 batch (scIB weighting)",
}


def integration_data(dataset: str) -> AnnData:
    """Cells with raw counts in ``X``, ``obs[cell_type]`` and ``obs[donor]``; human gene symbols.

    Cell-type names are lower-cased so human and mouse labels agree (``T_cell`` / ``t_cell``).
    """
    import anndata as ad

    from aivc.cells._encoder import map_species_genes
    from aivc.data import load

    if dataset not in DATASETS:
        msg = f"Unknown integration dataset {dataset!r}; expected one of {sorted(DATASETS)}."
        raise ValueError(msg)
    parts = []
    for name, species in (("baron_human", "human"), ("baron_mouse", "mouse")):
        if dataset not in (name, "baron_human_mouse"):
            continue
        a = load(name)
        keep, names = map_species_genes(a.var_names, species)
        a = a[:, keep].copy()
        a.var_names = names
        a.obs = pd.DataFrame(
            {
                LABEL_KEY: a.obs[LABEL_KEY].astype(str).str.lower().to_numpy(),
                BATCH_KEY: a.obs[BATCH_KEY].astype(str).to_numpy(),
                "species": species,
            },
            index=a.obs_names,
        )
        parts.append(a)
    adata = parts[0] if len(parts) == 1 else ad.concat(parts, join="inner")
    adata.obs[LABEL_KEY] = adata.obs[LABEL_KEY].astype("category")
    adata.obs[BATCH_KEY] = adata.obs[BATCH_KEY].astype("category")
    return adata


def _select_genes(adata: AnnData) -> AnnData:
    """Genes detected in >= 3 cells, then the top ``N_TOP_GENES`` highly variable ones (batch-aware)."""
    import scanpy as sc

    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel() >= 3
    adata = adata[:, detected].copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(
        adata, n_top_genes=N_TOP_GENES, flavor="seurat", batch_key=BATCH_KEY
    )
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    return adata


def _pca(adata: AnnData, seed: int) -> np.ndarray:
    import scanpy as sc

    x = adata.copy()
    x.X = np.asarray(x.X.toarray() if hasattr(x.X, "toarray") else x.X, dtype=np.float32)
    sc.pp.scale(x, max_value=10)
    sc.pp.pca(x, n_comps=N_PCS, random_state=seed, svd_solver="arpack")
    return np.asarray(x.obsm["X_pca"])


def _harmony(adata: AnnData, seed: int) -> np.ndarray:
    import harmonypy

    pcs = _pca(adata, seed)
    ho = harmonypy.run_harmony(
        pcs, adata.obs[[BATCH_KEY]], BATCH_KEY, random_state=seed, verbose=False
    )
    z = np.asarray(ho.Z_corr)
    return z if z.shape[0] == adata.n_obs else z.T


def _scvi(adata: AnnData, seed: int) -> np.ndarray:
    import scvi
    import torch

    scvi.settings.seed = seed
    scvi.settings.dl_num_workers = 0
    x = adata.copy()
    scvi.model.SCVI.setup_anndata(x, layer="counts", batch_key=BATCH_KEY)
    model = scvi.model.SCVI(x, n_latent=10)
    from aivc._settings import settings

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, settings.n_jobs, threads)))
    try:
        model.train(
            max_epochs=SCVI_EPOCHS,
            accelerator="cpu",
            enable_progress_bar=False,
            logger=False,
            enable_checkpointing=False,
        )
    finally:
        torch.set_num_threads(threads)
    return np.asarray(model.get_latent_representation())


def _aivc(adata: AnnData, seed: int) -> np.ndarray:
    from aivc.cells._encoder import CellEncoder

    x = adata.copy()
    enc = CellEncoder(
        n_input_genes=None, n_decoder_genes=N_TOP_GENES, max_epochs=ENCODER_EPOCHS, seed=seed
    )
    enc.fit(x, batch_key=BATCH_KEY, layer="counts")
    return enc.transform(x, layer="counts")


def _aivc_integrate(adata: AnnData, seed: int) -> np.ndarray:
    from aivc.cells import integrate

    out = integrate(
        adata,
        batch_key=BATCH_KEY,
        input="log-normalized",
        n_top_genes=N_TOP_GENES,
        n_pcs=N_PCS,
        seed=seed,
    )
    return out.embedding


_RUNNERS: dict[str, Callable[[AnnData, int], np.ndarray]] = {
    "aivc": _aivc_integrate,
    "aivc-encoder": _aivc,
    "pca": _pca,
    "harmony": _harmony,
    "scvi": _scvi,
}


def run_integration(
    out: Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    variant: str | None = None,
) -> dict[str, Any]:
    """Run the integration benchmark and write ``results.json`` and ``results.md`` into ``out``.

    Parameters
    ----------
    out
        Output folder (created).
    dataset
        One of :data:`DATASETS` (default ``"baron_human"``).
    models
        Subset of :data:`MODELS` (default all).
    seeds
        Seeds; each model is trained and scored once per seed.
    variant
        Not used (this task has no variants).

    Returns
    -------
    The result dictionary written to ``results.json``.
    """
    from aivc._version import __version__
    from aivc.evaluate._memory import ResourceMeter

    if variant is not None:
        msg = f"The integration task has no variants. Got variant={variant!r}."
        raise ValueError(msg)
    dataset = dataset or "baron_human"
    models = list(models) if models else list(MODELS)
    unknown = [m for m in models if m not in _RUNNERS]
    if unknown:
        msg = f"Unknown integration models {unknown}; expected a subset of {list(MODELS)}."
        raise ValueError(msg)
    seeds = [int(s) for s in seeds]
    if not seeds:
        msg = "Pass at least one seed."
        raise ValueError(msg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adata = _select_genes(integration_data(dataset))
    labels = adata.obs[LABEL_KEY].to_numpy()
    batches = adata.obs[BATCH_KEY].to_numpy()
    logger.info("integration on %s: %d cells x %d genes", dataset, adata.n_obs, adata.n_vars)

    per_model: dict[str, dict[str, Any]] = {}
    wall: dict[str, float] = {}
    peak: dict[str, float] = {}
    for name in models:
        scores: dict[str, list[float]] = {}
        times, mems = [], []
        for seed in seeds:
            with ResourceMeter() as meter:
                z = _RUNNERS[name](adata, seed)
            times.append(meter.wall_seconds)
            mems.append(meter.peak_mb)
            s = integration_scores(z, labels, batches, seed=seed)
            for k, v in s.items():
                scores.setdefault(k, []).append(v)
            logger.info("%s seed %d: overall %.3f (%.1f s)", name, seed, s["overall"], times[-1])
        per_model[name] = {k: summarize(v, keep_values=True) for k, v in scores.items()}
        per_model[name]["embedding_dim"] = int(z.shape[1])
        wall[name] = float(np.mean(times))
        peak[name] = float(np.max(mems))

    result: dict[str, Any] = {
        "task": "integration",
        "dataset": dataset,
        "description": DATASETS[dataset],
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "label_key": LABEL_KEY,
        "batch_key": BATCH_KEY,
        "batches": sorted(map(str, np.unique(batches))),
        "n_cell_types": len(np.unique(labels)),
        "seeds": seeds,
        "split": {"kind": "none (unsupervised; cell types used only for scoring)", "seeds": seeds},
        "models": per_model,
        "metrics": {
            k: {"higher_is_better": True, "description": d, "group": _group(k)}
            for k, d in _DESCRIPTIONS.items()
        },
        "settings": {
            "n_top_genes": N_TOP_GENES,
            "hvg": "scanpy seurat flavour on log-normalised counts, batch-aware",
            "n_pcs": N_PCS,
            "scvi_epochs": SCVI_EPOCHS,
            "scvi_n_latent": 10,
            "aivc_encoder_epochs": ENCODER_EPOCHS,
        },
        "wall_seconds": wall,
        "peak_memory_mb": peak,
        "wall_note": "mean wall time per seed (training + embedding); peak RSS of the process",
        "aivc_version": __version__,
        "machine": machine_info(),
    }
    write_results(out, result, integration_markdown(result))
    return result


def _group(metric: str) -> str:
    if metric in BIO_METRICS:
        return "bio"
    if metric in BATCH_METRICS:
        return "batch"
    return "aggregate"


def integration_markdown(result: dict[str, Any]) -> str:
    """A readable table of an integration ``results.json``."""

    def fmt(s: dict[str, Any]) -> str:
        m, sd = s.get("mean"), s.get("sd")
        if m is None or not np.isfinite(m):
            return "n/a"
        return f"{m:.3f} ± {sd:.3f}"

    cols = [*BIO_METRICS, *BATCH_METRICS, "bio", "batch", "overall"]
    lines = [
        f"# integration on {result['dataset']}",
        "",
        f"{result['description']}: {result['n_cells']} cells x {result['n_genes']} genes, "
        f"{len(result['batches'])} batches, {result['n_cell_types']} cell types; seeds {result['seeds']} "
        "(mean ± sd). All scores in [0, 1], higher is better.",
        "",
        "| model | " + " | ".join(cols) + " | wall s | peak MB |",
        "|---|" + "---|" * (len(cols) + 2),
    ]
    ranked = sorted(result["models"].items(), key=lambda kv: -(kv[1]["overall"]["mean"] or -np.inf))
    for name, entry in ranked:
        lines.append(
            f"| {name} | "
            + " | ".join(fmt(entry[c]) for c in cols)
            + f" | {result['wall_seconds'][name]:.1f} | {result['peak_memory_mb'][name]:.0f} |"
        )
    st = result["settings"]
    ran = set(result["models"])
    parts = [f"{st['n_top_genes']} HVGs ({st['hvg']})"]
    if ran & {"pca", "harmony"}:
        parts.append(f"{st['n_pcs']} PCs")
    if "scvi" in ran:
        parts.append(f"scVI {st['scvi_epochs']} epochs (n_latent {st['scvi_n_latent']})")
    if "aivc-encoder" in ran:
        parts.append(f"aivc-encoder {st['aivc_encoder_epochs']} epochs")
    lines += [
        "",
        f"Settings: {', '.join(parts)}. "
        f"Machine: {result['machine']['cpus']} CPUs, aivc {result['aivc_version']}.",
        "",
    ]
    return "\n".join(lines)


register_task(
    Task(
        name="integration",
        description="Remove batch effects while keeping cell types apart (scIB-style scores)",
        datasets=tuple(DATASETS),
        models=MODELS,
        seeds=(0, 1, 2),
        run=run_integration,
    )
)
