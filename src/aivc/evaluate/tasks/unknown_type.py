"""Unknown-type benchmark: does a label-transfer model flag a cell type its reference never had?

``run_unknown_type(out)`` (task ``unknown-type``; ``aivc benchmark
unknown-type --out DIR``) takes a reference -> query transfer, and for every
cell type with at least :data:`MIN_CELLS` cells on both sides removes that
type from the reference. Every model of the label-transfer task is trained on
the rest and answers the query; then

- ``unknown_auroc``: how well the model's unknown score separates the query
  cells of the removed type from those of the kept types (area under the ROC
  curve; models without their own score use 1 - the top probability);
- ``unknown_recall``: share of the removed type's query cells answered "unknown";
- ``accuracy_known``: accuracy on query cells of the kept types, "unknown" counted as wrong;
- ``accuracy_known_closed``: the same cells' accuracy when the model always
  names its most probable type (the closed-set decoder);
- ``known_accuracy_drop``: ``accuracy_known_closed - accuracy_known``, the
  price of the unknown answer on known cells.

Each metric is averaged over the removed types (equal weight), then
summarised over seeds. Built-in transfers (``--dataset``): ``baron`` (Baron
human pancreas: donors human1, human2 and human4 as reference, human3 as
query) and ``kang2018`` (control -> stimulated PBMCs), or a file with the
label-transfer columns (``--cell-type-key``, ``--query-key`` / ``--query-value``).
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from aivc._io import json_safe
from aivc.evaluate._results import fmt_summary, summarize, write_results
from aivc.evaluate.tasks import Task, register_task
from aivc.evaluate.tasks.label_transfer import (
    LABEL_OPTIONS,
    TRANSFERS,
    UNKNOWN,
    VARIANTS,
    TransferSpec,
    _load_pair,
    answer_query,
    resolve_transfers,
)

__all__ = ["MIN_CELLS", "UNKNOWN_TYPE_MODELS", "run_unknown_type", "unknown_type_metrics"]

logger = logging.getLogger(__name__)

#: A type is removed from the reference only when both sides have this many cells of it.
MIN_CELLS = 20
UNKNOWN_TYPE_MODELS = ("aivc", "logistic", "pca-knn", "harmony", "scanvi")
_METRICS = (
    "unknown_auroc",
    "unknown_recall",
    "accuracy_known",
    "accuracy_known_closed",
    "known_accuracy_drop",
)
_HIGHER = {
    "unknown_auroc": True,
    "unknown_recall": True,
    "accuracy_known": True,
    "accuracy_known_closed": True,
    "known_accuracy_drop": False,
}

_BARON_DONORS = TransferSpec(
    "baron_human:donor=human3",
    "baron_human",
    "human",
    "baron_human",
    "human",
    "cell_ontology_class",
    "donor",
    "donor",
    "human3",
    description="Baron human pancreas, donors human1, human2, human4 -> donor human3",
)
#: ``--dataset`` names of the task.
DATASETS: dict[str, TransferSpec] = {
    "baron": _BARON_DONORS,
    "kang2018": TRANSFERS["kang2018-control-to-stimulated"],
}


def unknown_type_metrics(
    truth: np.ndarray,
    answer: np.ndarray,
    forced: np.ndarray,
    score: np.ndarray,
    removed: str,
    known: Sequence[str],
) -> dict[str, float]:
    """The metrics of one model with one type removed (see the module docstring).

    Query cells of types in neither ``known`` nor ``removed`` are left out.
    """
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(truth).astype(str)
    keep = np.isin(truth, [*known, removed])
    t, a, f, s = (
        truth[keep],
        np.asarray(answer)[keep].astype(str),
        np.asarray(forced)[keep],
        score[keep],
    )
    is_new = t == removed
    acc = float((a[~is_new] == t[~is_new]).mean())
    closed = float((f[~is_new].astype(str) == t[~is_new]).mean())
    return {
        "unknown_auroc": float(roc_auc_score(is_new, s))
        if 0 < is_new.sum() < len(t)
        else float("nan"),
        "unknown_recall": float((a[is_new] == UNKNOWN).mean()),
        "accuracy_known": acc,
        "accuracy_known_closed": closed,
        "known_accuracy_drop": closed - acc,
    }


def _eligible_types(ref_labels: np.ndarray, query_labels: np.ndarray) -> list[str]:
    ref = dict(zip(*np.unique(ref_labels, return_counts=True), strict=True))
    qry = dict(zip(*np.unique(query_labels, return_counts=True), strict=True))
    return sorted(str(t) for t in ref if ref[t] >= MIN_CELLS and qry.get(t, 0) >= MIN_CELLS)


def _spec_for(dataset: str | None, options: dict[str, Any]) -> TransferSpec:
    if dataset is None or dataset in DATASETS:
        if any(options.get(k) is not None for k in ("cell_type_key", "query_key", "query_value")):
            msg = f"The built-in dataset {dataset or 'baron'!r} declares its own columns."
            raise ValueError(msg)
        return DATASETS[dataset or "baron"]
    if not (dataset.endswith((".h5ad", ".zarr")) or os.sep in dataset):
        msg = (
            f"Unknown unknown-type dataset {dataset!r}; expected one of {list(DATASETS)}, or the path "
            "of an .h5ad file with --cell-type-key and --query-key/--query-value."
        )
        raise ValueError(msg)
    return resolve_transfers(dataset, **options)[0]


def run_unknown_type(
    out: Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    variant: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run the unknown-type benchmark and write ``results.json`` / ``results.md``.

    ``options`` are the label-transfer columns of a dataset file
    (:data:`~aivc.evaluate.tasks.label_transfer.LABEL_OPTIONS`).
    """
    from aivc._version import __version__
    from aivc.evaluate._memory import ResourceMeter

    if variant not in VARIANTS:
        msg = f"Unknown unknown-type variant {variant!r}; expected one of {list(VARIANTS)}."
        raise ValueError(msg)
    cfg = VARIANTS[variant]
    names = list(models) if models else list(UNKNOWN_TYPE_MODELS)
    seeds = [int(s) for s in seeds]
    if not seeds:
        msg = "Pass at least one seed."
        raise ValueError(msg)
    spec = _spec_for(dataset, options)
    reference, query = _load_pair(spec)
    ref_labels = reference.obs[spec.label_key].astype(str).to_numpy()
    truth = query.obs[spec.label_key].astype(str).to_numpy()
    types = _eligible_types(ref_labels, truth)
    if not types:
        msg = f"No cell type has {MIN_CELLS} cells in both the reference and the query."
        raise ValueError(msg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # per[model][type] -> list over seeds of metric dicts
    per: dict[str, dict[str, list[dict[str, float]]]] = {m: {t: [] for t in types} for m in names}
    wall: dict[str, float] = dict.fromkeys(names, 0.0)
    peak: dict[str, float] = dict.fromkeys(names, 0.0)
    skipped: dict[str, str] = {}
    result: dict[str, Any] = {}
    with ResourceMeter() as whole:
        for seed in seeds:
            for removed in types:
                logger.info("unknown-type: %s removed, seed %d", removed, seed)
                keep = ref_labels != removed
                res = answer_query(
                    reference[keep].copy(), query, spec=spec, models=names, seed=seed, config=cfg
                )
                skipped.update(res.skipped)
                for m, ans in res.answers.items():
                    forced = np.asarray(ans.classes, dtype=object)[ans.proba.argmax(axis=1)]
                    per[m][removed].append(
                        unknown_type_metrics(
                            truth, ans.labels, forced, ans.novelty(), removed, res.classes
                        )
                    )
                    wall[m] += res.wall[m]
                    peak[m] = max(peak[m], res.peak[m])
            result = _build(per, types, seeds, spec, cfg, variant, wall, peak, skipped, __version__)
            write_results(out, result, unknown_type_markdown(result))
    result["wall_seconds_command"] = whole.wall_seconds
    write_results(out, result, unknown_type_markdown(result))
    return json_safe(result)


def _build(
    per: dict[str, dict[str, list[dict[str, float]]]],
    types: list[str],
    seeds: list[int],
    spec: TransferSpec,
    cfg: Any,
    variant: str | None,
    wall: dict[str, float],
    peak: dict[str, float],
    skipped: dict[str, str],
    version: str,
) -> dict[str, Any]:
    ran = [m for m in per if all(per[m][t] for t in types)]
    n_seeds = min(len(per[m][t]) for m in ran for t in types) if ran else 0
    models: dict[str, Any] = {}
    for m in ran:
        entry: dict[str, Any] = {}
        for k in _METRICS:
            # per seed: mean over removed types; then mean +- sd over seeds
            per_seed = [float(np.nanmean([per[m][t][i][k] for t in types])) for i in range(n_seeds)]
            entry[k] = summarize(per_seed)
        entry["by_type"] = {
            t: {k: summarize([r[k] for r in per[m][t][:n_seeds]]) for k in _METRICS} for t in types
        }
        models[m] = entry
    return {
        "task": "unknown-type",
        "dataset": spec.name,
        "description": (
            f"Leave one cell type out of the reference ({spec.description}) and flag its cells in the "
            f"query as unknown; every type with at least {MIN_CELLS} cells on both sides"
        ),
        "complete": n_seeds == len(seeds),
        "split": {
            "kind": "leave-one-type-out",
            "removed_types": types,
            "seeds": seeds[:n_seeds],
            "n_splits": len(types),
            "label_key": spec.label_key,
            "batch_key": spec.batch_key,
        },
        "variant": variant,
        "config": asdict(cfg),
        "models": models,
        "skipped": skipped,
        "metrics": {k: {"higher_is_better": _HIGHER[k], "source": "aivc"} for k in _METRICS},
        "wall_seconds": {m: wall[m] for m in ran},
        "peak_memory_mb": {m: peak[m] for m in ran},
        "wall_note": "total seconds of fit+predict over all removed types and seeds",
        "peak_memory_note": "peak resident memory of fit+predict above the process's memory before the model ran",
        "machine": {
            "cpus": os.cpu_count(),
            "threads": cfg.max_threads,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "aivc": version,
        },
    }


def unknown_type_markdown(result: dict[str, Any]) -> str:
    """A readable report of an unknown-type ``results.json``."""
    arrows = {k: "↑" if result["metrics"][k]["higher_is_better"] else "↓" for k in _METRICS}
    lines = [
        f"# unknown-type on {result['dataset']}",
        "",
        result["description"] + ".",
        "",
        f"Removed types: {', '.join(result['split']['removed_types'])}; seeds {result['split']['seeds']}.",
        "",
        "| model | " + " | ".join(f"{k} {arrows[k]}" for k in _METRICS) + " | wall s |",
        "|---|" + "---|" * (len(_METRICS) + 1),
    ]
    for m, entry in result["models"].items():
        lines.append(
            f"| {m} | "
            + " | ".join(fmt_summary(entry[k]) for k in _METRICS)
            + f" | {result['wall_seconds'][m]:.1f} |"
        )
    lines += ["", "Per removed type, unknown_auroc:", ""]
    types = result["split"]["removed_types"]
    lines += ["| model | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
    for m, entry in result["models"].items():
        lines.append(
            f"| {m} | "
            + " | ".join(fmt_summary(entry["by_type"][t]["unknown_auroc"], 2) for t in types)
            + " |"
        )
    for m, why in result.get("skipped", {}).items():
        lines += ["", f"Skipped: {m} ({why})."]
    lines.append("")
    return "\n".join(lines)


register_task(
    Task(
        name="unknown-type",
        description="Flag a cell type the reference never had (leave one type out; Baron donors, Kang control -> stimulated)",
        datasets=tuple(DATASETS),
        models=UNKNOWN_TYPE_MODELS,
        seeds=(0, 1, 2),
        run=run_unknown_type,
        variants=tuple(v for v in VARIANTS if v is not None),
        options=LABEL_OPTIONS,
    )
)
