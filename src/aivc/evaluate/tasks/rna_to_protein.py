"""RNA -> protein benchmark: train on one CITE-seq dataset, predict another's proteins.

``run_rna_to_protein(out)`` (task ``rna-to-protein``; ``aivc benchmark
rna-to-protein --out DIR``) fits every model on the reference dataset of each
ordered pair and predicts the query's proteins from its RNA alone. Proteins
are matched across panels by their canonical target
(:func:`aivc.cells._protein.canonical_protein`: ``"CD8a"`` = ``"CD8"``,
``"PD-1 (CD279)"`` = ``"PD-1"``); only proteins both datasets measured are scored.

Models, all fit on the same reference cells in the same run:

- ``aivc-protein``: :class:`~aivc.cells._protein.ProteinDecoder` with its defaults.
- ``aivc-protein-noalign``: the same with ``align_query=False`` (shows what
  centring the query's features contributes).
- ``mrna``: each protein's own-gene mRNA (``log1p`` of counts per 10,000 of
  its encoding gene(s)) rescaled by a least-squares line ``a * mRNA + b`` fit
  per protein on the reference; a protein without its gene in either
  dataset is predicted as the reference mean (a constant, scored as Pearson 0).
- ``ridge-pca``: ridge regression (penalty per protein by leave-one-out on
  the reference) on 30 principal components of the standardised log
  expression of the 2,000 most variable reference genes among the genes
  both datasets share (PCA fit on the reference). Unlike the decoder it is
  built for the query's gene panel.

Metrics on the normalised protein scale (:func:`~aivc.cells._protein.normalize_proteins`):
``pearson`` (per protein across query cells, then averaged over proteins;
a constant prediction counts as 0) and ``rmse`` (per protein, averaged).
Each seed trains on a seeded random 90% of the reference cells and seeds the
randomised PCA solvers; results are mean ± sd over seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import permutations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aivc._io import write_csv_atomic
from aivc.cells._protein import (
    ANTIBODY_GENES,
    ProteinDecoder,
    canonical_protein,
    normalize_proteins,
    protein_matrix,
    rna_lognorm,
)
from aivc.data._validate import DataValidationError
from aivc.evaluate._results import fmt_summary, machine_info, summarize, write_results
from aivc.evaluate.tasks import Task, register_task

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["PROTEIN_DATASETS", "PROTEIN_MODELS", "run_rna_to_protein"]

logger = logging.getLogger(__name__)

#: Registered CITE-seq datasets of the task (all ordered pairs are run by default).
PROTEIN_DATASETS = ("pbmc10k_cite_small", "pbmc5k_cite_small", "mimitou2019_cite_small")

#: Models of the task.
PROTEIN_MODELS = ("aivc-protein", "aivc-protein-noalign", "mrna", "ridge-pca")

#: Variants: which pairs to run.
VARIANTS = ("all-pairs", "10x")

SUBSAMPLE = 0.9


# ----------------------------------------------------------------------------- data
def _canonical_proteins(adata: AnnData) -> pd.DataFrame:
    """Normalised protein table with canonical names; duplicate targets keep the deepest antibody."""
    counts = protein_matrix(adata)
    names = [canonical_protein(c) for c in counts.columns]
    totals = counts.sum(axis=0).to_numpy()
    order = np.argsort(-totals, kind="stable")
    keep: dict[str, int] = {}
    for j in order:
        keep.setdefault(names[j], int(j))
    cols = sorted(keep.values())
    dropped = [counts.columns[j] for j in range(counts.shape[1]) if j not in cols]
    if dropped:
        logger.info("rna-to-protein: duplicate antibodies for one target left out: %s", dropped)
    table = counts.iloc[:, cols]
    table.columns = [names[j] for j in cols]
    return table


def _pairs(dataset: str | None, variant: str | None) -> list[tuple[str, str]]:
    if variant is not None and variant not in VARIANTS:
        msg = f"rna-to-protein variants are {list(VARIANTS)}. Got {variant!r} instead."
        raise ValueError(msg)
    if dataset is not None and "->" in dataset:
        a, _, b = dataset.partition("->")
        return [(a.strip(), b.strip())]
    if dataset is not None:
        names = [d.strip() for d in dataset.split(",") if d.strip()]
    elif variant == "10x":
        names = list(PROTEIN_DATASETS[:2])
    else:
        names = list(PROTEIN_DATASETS)
    if len(names) < 2:
        msg = (
            "rna-to-protein needs two datasets: pass --dataset 'A->B' for one pair or "
            f"'A,B,...' for all ordered pairs. Got {dataset!r} instead."
        )
        raise ValueError(msg)
    return list(permutations(names, 2))


# ----------------------------------------------------------------------------- baselines
def _own_mrna(adata: AnnData, proteins: Sequence[str]) -> np.ndarray:
    """log1p(counts per 10k) of each protein's own gene(s); NaN column where none is present."""
    lognorm, genes = rna_lognorm(adata)
    pos = {g: i for i, g in enumerate(genes)}
    lin = lognorm.copy()
    lin.data = np.expm1(lin.data)
    out = np.full((adata.n_obs, len(proteins)), np.nan)
    for j, p in enumerate(proteins):
        cols = [pos[g] for g in ANTIBODY_GENES.get(canonical_protein(p), ()) if g in pos]
        if cols:
            out[:, j] = np.log1p(np.asarray(lin[:, cols].sum(axis=1)).ravel())
    return out


def _mrna_baseline(train: AnnData, y_train: pd.DataFrame, test: AnnData) -> np.ndarray:
    proteins = list(y_train.columns)
    m_tr, m_te = _own_mrna(train, proteins), _own_mrna(test, proteins)
    y = y_train.to_numpy()
    pred = np.tile(y.mean(axis=0), (test.n_obs, 1))
    for j in range(len(proteins)):
        if np.isnan(m_tr[:, j]).any() or np.isnan(m_te[:, j]).any() or m_tr[:, j].std() == 0:
            continue
        a, b = np.polyfit(m_tr[:, j], y[:, j], 1)
        pred[:, j] = a * m_te[:, j] + b
    return pred


def _ridge_pca_baseline(
    train: AnnData, y_train: pd.DataFrame, test: AnnData, *, seed: int
) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV

    x_tr, g_tr = rna_lognorm(train)
    x_te, g_te = rna_lognorm(test)
    shared = g_tr.intersection(g_te)
    if len(shared) == 0:
        msg = "ridge-pca: the two datasets share no genes."
        raise DataValidationError(msg)
    x_tr = x_tr[:, g_tr.get_indexer(shared)].toarray()
    x_te = x_te[:, g_te.get_indexer(shared)].toarray()
    var = x_tr.var(axis=0)
    top = np.argsort(var)[::-1][: min(2000, int((var > 0).sum()))]
    mu, sd = x_tr[:, top].mean(axis=0), x_tr[:, top].std(axis=0) + 1e-3
    z_tr = np.clip((x_tr[:, top] - mu) / sd, -10, 10)
    z_te = np.clip((x_te[:, top] - mu) / sd, -10, 10)
    k = min(30, z_tr.shape[0] - 1, z_tr.shape[1] - 1)
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(z_tr)
    ridge = RidgeCV(alphas=ProteinDecoder.ALPHAS, alpha_per_target=True)
    ridge.fit(pca.transform(z_tr), y_train.to_numpy())
    return ridge.predict(pca.transform(z_te))


# ----------------------------------------------------------------------------- metrics
def _pearson(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    p = pred - pred.mean(axis=0)
    t = truth - truth.mean(axis=0)
    den = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(axis=0) / den
    return np.where(den > 1e-12, r, 0.0)


def _rmse(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.sqrt(((pred - truth) ** 2).mean(axis=0))


# ----------------------------------------------------------------------------- runner
def _predict(
    model: str, train: AnnData, y_train: pd.DataFrame, test: AnnData, seed: int
) -> np.ndarray:
    if model in ("aivc-protein", "aivc-protein-noalign"):
        ref = train.copy()
        ref.obsm["protein_counts"] = ref.obsm["protein_counts_canonical"]
        dec = ProteinDecoder(random_state=seed, align_query=model == "aivc-protein")
        dec.fit(ref)
        return dec.predict(test)[list(y_train.columns)].to_numpy()
    if model == "mrna":
        return _mrna_baseline(train, y_train, test)
    if model == "ridge-pca":
        return _ridge_pca_baseline(train, y_train, test, seed=seed)
    msg = f"Unknown rna-to-protein model {model!r}; expected one of {list(PROTEIN_MODELS)}."
    raise ValueError(msg)


def run_rna_to_protein(
    out: Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    variant: str | None = None,
) -> dict[str, Any]:
    """Run the ``rna-to-protein`` benchmark and write ``results.json`` and ``results.md`` to ``out``.

    Parameters
    ----------
    out
        Output directory (created).
    dataset
        ``None``: every ordered pair of :data:`PROTEIN_DATASETS`; ``"A->B"``:
        one pair (train on A, predict B); ``"A,B,..."``: every ordered pair of
        these registered datasets.
    models
        Any of :data:`PROTEIN_MODELS` (default: all).
    seeds
        One run per seed (reference subsample and solver seeds).
    variant
        ``"all-pairs"`` (default) or ``"10x"`` (only the two 10x datasets).
    """
    from aivc.data._registry import load
    from aivc.evaluate._memory import ResourceMeter

    out = Path(out)
    pairs = _pairs(dataset, variant)
    models = list(models) if models else list(PROTEIN_MODELS)
    unknown = [m for m in models if m not in PROTEIN_MODELS]
    if unknown:
        msg = f"Unknown rna-to-protein model(s) {unknown}; expected some of {list(PROTEIN_MODELS)}."
        raise ValueError(msg)
    seeds = [int(s) for s in seeds]
    if not seeds:
        msg = "rna-to-protein needs at least one seed."
        raise ValueError(msg)
    names = sorted({d for p in pairs for d in p})
    data: dict[str, AnnData] = {}
    targets: dict[str, pd.DataFrame] = {}
    for name in names:
        adata = load(name)
        counts = _canonical_proteins(adata)
        adata.obsm["protein_counts_canonical"] = counts
        data[name] = adata
        targets[name] = normalize_proteins(counts)

    per_pair: dict[str, dict[str, dict[str, list[float]]]] = {}
    per_protein_rows = []
    wall: dict[str, float] = dict.fromkeys(models, 0.0)
    peak: dict[str, float] = dict.fromkeys(models, 0.0)
    pair_info = []
    for a, b in pairs:
        key = f"{a}->{b}"
        shared = [p for p in targets[a].columns if p in set(targets[b].columns)]
        if not shared:
            logger.warning("rna-to-protein: %s share no protein; pair skipped", key)
            continue
        pair_info.append(
            {
                "train": a,
                "test": b,
                "n_train_cells": int(data[a].n_obs),
                "n_test_cells": int(data[b].n_obs),
                "proteins": shared,
            }
        )
        truth = targets[b][shared].to_numpy()
        per_pair[key] = {m: {"pearson": [], "rmse": []} for m in models}
        for seed in seeds:
            rng = np.random.default_rng(seed)
            n_sub = max(10, round(SUBSAMPLE * data[a].n_obs))
            rows = np.sort(rng.choice(data[a].n_obs, n_sub, replace=False))
            train = data[a][rows].copy()
            # the target is normalised on the training cells actually used
            y_train = normalize_proteins(train.obsm["protein_counts_canonical"])
            for m in models:
                with ResourceMeter() as meter:
                    pred_all = _predict(m, train, y_train, data[b], seed)
                wall[m] += meter.wall_seconds
                peak[m] = max(peak[m], meter.peak_increase_mb)
                cols = [list(y_train.columns).index(p) for p in shared]
                pred = pred_all[:, cols]
                r, e = _pearson(pred, truth), _rmse(pred, truth)
                per_pair[key][m]["pearson"].append(float(r.mean()))
                per_pair[key][m]["rmse"].append(float(e.mean()))
                for p, rv, ev in zip(shared, r, e, strict=True):
                    per_protein_rows.append(
                        {
                            "pair": key,
                            "seed": seed,
                            "model": m,
                            "protein": p,
                            "pearson": float(rv),
                            "rmse": float(ev),
                        }
                    )
    if not per_pair:
        msg = "No dataset pair shares a protein; nothing to score."
        raise DataValidationError(msg)
    result_models: dict[str, Any] = {}
    for m in models:
        entry: dict[str, Any] = {}
        for metric in ("pearson", "rmse"):
            by_seed = [
                float(np.mean([per_pair[k][m][metric][i] for k in per_pair]))
                for i in range(len(seeds))
            ]
            entry[metric] = summarize(by_seed)
        entry["per_pair"] = {
            k: {metric: summarize(per_pair[k][m][metric]) for metric in ("pearson", "rmse")}
            for k in per_pair
        }
        result_models[m] = entry
    result = {
        "task": "rna-to-protein",
        "dataset": ",".join(names),
        "description": (
            "Train on one CITE-seq dataset, predict the proteins of another from its RNA alone "
            "(proteins matched by canonical target; only shared proteins scored)"
        ),
        "pairs": pair_info,
        "split": {
            "kind": "train-on-one-dataset-test-on-another",
            "seeds": seeds,
            "reference_subsample": SUBSAMPLE,
            "n_pairs": len(pair_info),
        },
        "models": result_models,
        "metrics": {
            "pearson": {
                "higher_is_better": True,
                "description": "per-protein Pearson r across query cells, averaged over proteins "
                "(constant prediction = 0); mean over pairs, then mean ± sd over seeds",
            },
            "rmse": {
                "higher_is_better": False,
                "description": "per-protein RMSE on centred log1p protein counts, averaged over proteins",
            },
        },
        "protein_normalisation": "log1p(count) centred per protein over the cells of each dataset",
        "wall_seconds": {k: round(v, 3) for k, v in wall.items()},
        "peak_memory_mb": {k: round(v, 1) for k, v in peak.items()},
        "peak_memory_note": "largest increase of resident memory during one fit+predict",
        "machine": machine_info(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(pd.DataFrame(per_protein_rows), out / "per_protein.csv")
    write_results(out, result, protein_results_markdown(result))
    return result


def protein_results_markdown(result: dict[str, Any]) -> str:
    """A readable table of an ``rna-to-protein`` ``results.json``."""
    models = result["models"]
    lines = [
        f"# {result['task']} on {result['dataset']}",
        "",
        result["description"] + ".",
        "",
        f"Seeds {result['split']['seeds']} (each trains on a seeded {int(100 * result['split']['reference_subsample'])}% "
        f"of the reference cells); {result['split']['n_pairs']} ordered pairs. Mean ± sd over seeds of the "
        "mean over pairs.",
        "",
        "| model | pearson ↑ | rmse ↓ | wall s (all fits) | peak MB |",
        "|---|---|---|---|---|",
    ]
    for name, entry in models.items():
        lines.append(
            f"| {name} | {fmt_summary(entry['pearson'])} | {fmt_summary(entry['rmse'])} | "
            f"{result['wall_seconds'].get(name, 0):.1f} | {result['peak_memory_mb'].get(name, 0):.0f} |"
        )
    lines += ["", "Per pair (train -> test, shared proteins):", ""]
    lines.append("| pair | proteins | " + " | ".join(f"{m} pearson" for m in models) + " |")
    lines.append("|---|---|" + "---|" * len(models))
    for info in result["pairs"]:
        key = f"{info['train']}->{info['test']}"
        cells = [fmt_summary(models[m]["per_pair"][key]["pearson"]) for m in models]
        lines.append(f"| {key} | {len(info['proteins'])} | " + " | ".join(cells) + " |")
    lines += ["", "| pair | " + " | ".join(f"{m} rmse" for m in models) + " |"]
    lines.append("|---|" + "---|" * len(models))
    for info in result["pairs"]:
        key = f"{info['train']}->{info['test']}"
        cells = [fmt_summary(models[m]["per_pair"][key]["rmse"]) for m in models]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    m = result["machine"]
    lines += [
        "",
        f"Protein scale: {result['protein_normalisation']}. Machine: {m['cpus']} CPUs, "
        f"Python {m['python']}, aivc {m['aivc']}.",
        "",
    ]
    return "\n".join(lines)


register_task(
    Task(
        name="rna-to-protein",
        description="Predict surface-protein abundance from RNA in a dataset the decoder was not trained on",
        datasets=(",".join(PROTEIN_DATASETS), *PROTEIN_DATASETS),
        models=PROTEIN_MODELS,
        seeds=(0, 1, 2),
        run=run_rna_to_protein,
        variants=VARIANTS,
    )
)
