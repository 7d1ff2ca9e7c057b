"""The generalization suite: every perturbation task on every dataset it applies to.

``aivc benchmark suite --out DIR`` runs each entry of :data:`SUITE` (a task on
one dataset, with the baselines that apply there and aivc's model) into
``DIR/<task>/<dataset>/``, then compares aivc's model with the best baseline
of every dataset x metric:

- ``best_baseline``: the baseline with the best mean on that metric (chosen
  on the held-out results, which favours the baseline, never the model);
- ``wins``: the model's mean is better than that baseline's;
- ``within_sd``: the model is no worse than that baseline beyond one sd of the
  baseline over seeds (or folds);
- ``sign_p``: two-sided sign test over the held-out conditions (each
  condition's value averaged over seeds), model against that baseline.

The matrix is ``DIR/suite.json`` (``{"cells": [...]}``) and ``DIR/results.md``.
Simulated worlds (``sim-world-<seed>``) are separate regulatory networks, so
a choice tuned to one world shows on the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc._io import json_safe, write_json_atomic
from aivc.evaluate._results import fmt, machine_info, write_results
from aivc.evaluate.tasks import Task, register_task, run_task

__all__ = ["SUITE", "SuiteEntry", "run_suite", "suite_matrix"]

logger = logging.getLogger(__name__)

OUR_MODEL = "aivc-perturb"
#: Simple baselines a practitioner would use instead (peers are not baselines).
BASELINES = (
    "control",
    "train-mean",
    "additive",
    "linear",
    "linear-knowledge",
    "nearest-neighbour",
    "context-mean",
    "perturbation-elsewhere",
)
#: Published models run with ``--peers``.
PEERS = ("gears",)
#: Metrics of the matrix and whether higher is better.
SUITE_METRICS = {"pearson_delta_de20": True, "mse_de20": False, "mae": False}

_KNOWLEDGE = ("control", "train-mean", "linear", "linear-knowledge", "nearest-neighbour")
_WORLD_MODELS = ("control", "train-mean", "linear", "nearest-neighbour")
_WORLD_PARAMS = {"nearest-neighbour": {"perturbation_embedding": "data"}}


@dataclass(frozen=True)
class SuiteEntry:
    """One task on one dataset, with the models that apply there."""

    task: str
    dataset: str
    models: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    cell_eval: bool = True
    model_params: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    peers: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return f"{self.task}/{self.dataset}"

    def params(self) -> dict[str, dict[str, Any]]:
        return {name: dict(p) for name, p in self.model_params}


def _world_entries(seeds: Sequence[int]) -> list[SuiteEntry]:
    params = tuple((k, tuple(v.items())) for k, v in _WORLD_PARAMS.items())
    out = []
    for w in seeds:
        out.append(
            SuiteEntry(
                "unseen-single",
                f"sim-world-{w}",
                (*_WORLD_MODELS, "context-mean", OUR_MODEL),
                seeds=(0,),
                cell_eval=False,
                model_params=params,
            )
        )
        out.append(
            SuiteEntry(
                "unseen-context",
                f"sim-world-{w}",
                (*_WORLD_MODELS, "context-mean", "perturbation-elsewhere", OUR_MODEL),
                seeds=(0,),
                cell_eval=False,
                model_params=params,
            )
        )
    return out


#: The suite: real datasets first, then five simulated worlds.
SUITE: tuple[SuiteEntry, ...] = (
    SuiteEntry("unseen-single", "papalexi2021", (*_KNOWLEDGE, OUR_MODEL), peers=("gears",)),
    SuiteEntry("unseen-single", "norman2019_subset", (*_KNOWLEDGE, OUR_MODEL)),
    SuiteEntry(
        "combinations", "norman2019_subset", (*_KNOWLEDGE, "additive", OUR_MODEL), peers=("gears",)
    ),
    SuiteEntry(
        "unseen-cell-type",
        "kang2018",
        (
            "control",
            "train-mean",
            "perturbation-elsewhere",
            "linear",
            "nearest-neighbour",
            OUR_MODEL,
        ),
    ),
    SuiteEntry(
        "unseen-context",
        "kang2018",
        (
            "control",
            "train-mean",
            "context-mean",
            "perturbation-elsewhere",
            "linear",
            "nearest-neighbour",
            OUR_MODEL,
        ),
    ),
    *_world_entries(range(5)),
)


def _sign_test(diff: np.ndarray) -> float:
    """Two-sided exact sign test of the non-zero differences (1.0 when there are none)."""
    from scipy.stats import binomtest

    d = diff[np.isfinite(diff) & (diff != 0)]
    if d.size == 0:
        return 1.0
    return float(binomtest(int((d > 0).sum()), int(d.size), 0.5).pvalue)


def suite_matrix(
    result: dict[str, Any], per_condition: pd.DataFrame, *, task: str, dataset: str
) -> list[dict[str, Any]]:
    """The matrix cells of one task's results: our model against its best baseline, per metric."""
    models = result["models"]
    cells = []
    if OUR_MODEL not in models:
        return cells
    for metric, higher in SUITE_METRICS.items():
        ours = models[OUR_MODEL].get(metric, {})
        if ours.get("mean") is None or not np.isfinite(ours["mean"]):
            continue
        candidates = [
            (name, models[name][metric])
            for name in models
            if name in BASELINES
            and models[name].get(metric, {}).get("mean") is not None
            and np.isfinite(models[name][metric]["mean"])
        ]
        if not candidates:
            continue
        best, base = (max if higher else min)(candidates, key=lambda kv: kv[1]["mean"])
        sign = 1.0 if higher else -1.0
        margin = sign * (ours["mean"] - base["mean"])
        sd = float(base.get("sd") or 0.0)
        by_cond = per_condition.groupby(["model", "condition"])[metric].mean()
        diff = (by_cond.loc[OUR_MODEL] - by_cond.loc[best]).dropna().to_numpy(dtype=float)
        cells.append(
            {
                "task": task,
                "dataset": dataset,
                "metric": metric,
                "higher_is_better": higher,
                "model": OUR_MODEL,
                "best_baseline": best,
                "model_mean": float(ours["mean"]),
                "model_sd": float(ours.get("sd") or 0.0),
                "baseline_mean": float(base["mean"]),
                "baseline_sd": sd,
                "wins": bool(margin > 0),
                "within_sd": bool(margin >= -sd),
                "sign_p": _sign_test(sign * diff),
                "n_conditions": int(diff.size),
                "aggregated_over": models[OUR_MODEL].get("aggregated_over", "seeds"),
            }
        )
    return cells


def run_suite(
    out: Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    variant: str | None = None,
    peers: bool = False,
) -> dict[str, Any]:
    """Run every entry of :data:`SUITE` (or those on ``dataset``) and write the win/loss matrix.

    ``models`` replaces our model (default ``aivc-perturb``) only in name
    lists; ``seeds`` replaces every entry's seeds; ``variant="quick"`` runs the
    real datasets only, on one seed, without cell-eval (a smoke run).
    """
    if models:
        msg = "The suite runs each entry's own models; run a task by name to choose models."
        raise ValueError(msg)
    entries = [e for e in SUITE if dataset is None or e.dataset == dataset]
    if not entries:
        msg = f"No suite entry uses dataset {dataset!r}; entries use {sorted({e.dataset for e in SUITE})}."
        raise ValueError(msg)
    if variant == "quick":
        entries = [e for e in entries if not e.dataset.startswith("sim-world-")]
    out = Path(out)
    cells: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for entry in entries:
        names = [*entry.models, *(entry.peers if peers else ())]
        entry_seeds = tuple(seeds) if seeds is not None else entry.seeds
        if variant == "quick":
            entry_seeds = entry_seeds[:1]
        folder = out / entry.folder
        logger.info("suite: %s on %s (%s)", entry.task, entry.dataset, ", ".join(names))
        result = run_task(
            entry.task,
            folder,
            dataset=entry.dataset,
            models=names,
            seeds=entry_seeds,
            cell_eval=entry.cell_eval and variant != "quick",
            model_params=entry.params() or None,
        )
        per_condition = pd.read_csv(folder / "per_condition.csv")
        cells += suite_matrix(result, per_condition, task=entry.task, dataset=entry.dataset)
        runs.append(
            {
                "task": entry.task,
                "dataset": entry.dataset,
                "folder": entry.folder,
                "models": names,
                "seeds": list(entry_seeds),
                "wall_seconds": result.get("wall_seconds", {}),
            }
        )
    suite = {
        "task": "suite",
        "model": OUR_MODEL,
        "baselines": list(BASELINES),
        "peers": list(PEERS) if peers else [],
        "metrics": {m: {"higher_is_better": h} for m, h in SUITE_METRICS.items()},
        "rule": (
            "best_baseline = the baseline with the best held-out mean on that dataset x metric; "
            "wins = model mean better; within_sd = no worse than one baseline sd; "
            "sign_p = two-sided sign test over held-out conditions"
        ),
        "cells": cells,
        "runs": runs,
        "machine": machine_info(),
    }
    write_json_atomic(out / "suite.json", suite)
    write_results(out, suite, suite_markdown(suite))
    return json_safe(suite)


def suite_markdown(suite: dict[str, Any]) -> str:
    """The win/loss matrix as a Markdown table."""
    lines = [
        f"# Generalization suite: {suite['model']} against the best baseline",
        "",
        suite["rule"] + ".",
        "",
        "| task | dataset | metric | aivc-perturb | best baseline | baseline | wins | within sd | sign p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in suite["cells"]:
        arrow = "↑" if c["higher_is_better"] else "↓"
        lines.append(
            f"| {c['task']} | {c['dataset']} | {c['metric']} {arrow} | "
            f"{fmt(c['model_mean'])} ± {fmt(c['model_sd'])} | {c['best_baseline']} | "
            f"{fmt(c['baseline_mean'])} ± {fmt(c['baseline_sd'])} | "
            f"{'yes' if c['wins'] else 'no'} | {'yes' if c['within_sd'] else 'no'} | "
            f"{fmt(c['sign_p'], 3)} |"
        )
    wins = sum(c["wins"] for c in suite["cells"])
    lines += ["", f"{wins} of {len(suite['cells'])} cells won.", ""]
    return "\n".join(lines)


register_task(
    Task(
        name="suite",
        description="Every perturbation task on every dataset it applies to (real data and five "
        "simulated worlds); win/loss matrix of aivc-perturb against the best baseline",
        datasets=tuple(dict.fromkeys(e.dataset for e in SUITE)),
        models=(OUR_MODEL, *BASELINES),
        seeds=(0, 1, 2),
        run=run_suite,
        variants=("quick",),
        options=("peers",),
    )
)
