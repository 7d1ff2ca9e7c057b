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
Simulated worlds (``sim-world-<seed>``, and ``sim-module-world-<seed>`` with
complexes, pathways and a simulated knowledge base) are separate regulatory
networks, so a choice tuned to one world shows on the others.
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

__all__ = ["SUITE", "SuiteEntry", "peer_matrix", "run_suite", "suite_matrix"]

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
#: Published models run with ``--peers`` (each where it applies; see the entries).
PEERS = ("gears", "state", "biolord", "cellflow")
#: Peers that encode perturbations one-hot: they apply where the perturbation is measured in
#: training and the context is new (unseen-cell-type, unseen-context).
_CONTEXT_PEERS = ("state", "biolord", "cellflow")
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


def _module_world_entries(seeds: Sequence[int]) -> list[SuiteEntry]:
    """Unseen singles on worlds with modules, every model reading the world's knowledge base."""
    return [
        SuiteEntry(
            "unseen-single",
            f"sim-module-world-{w}",
            (*_KNOWLEDGE, OUR_MODEL),
            seeds=(0,),
            cell_eval=False,
        )
        for w in seeds
    ]


#: The suite: real datasets first, then five simulated worlds, then ten worlds with modules
#: and a simulated knowledge base.
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
        peers=_CONTEXT_PEERS,
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
        peers=_CONTEXT_PEERS,
    ),
    *_world_entries(range(5)),
    *_module_world_entries(range(10)),
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


def peer_matrix(
    result: dict[str, Any],
    per_condition: pd.DataFrame,
    *,
    task: str,
    dataset: str,
    peers: Sequence[str],
) -> list[dict[str, Any]]:
    """Our model against each published peer, per metric, on the splits the peer ran.

    Peers run on the first seed's splits only, so our model's mean is taken
    over the same splits (``per_condition`` rows of that seed), and the
    wall-time ratio divides the peer's time by our model's time per seed.
    """
    cells: list[dict[str, Any]] = []
    models = set(per_condition["model"])
    if OUR_MODEL not in models:
        return cells
    n_seeds = max(1, per_condition.loc[per_condition["model"] == OUR_MODEL, "seed"].nunique())
    walls = result.get("wall_seconds", {})
    for peer in peers:
        if peer not in models:
            continue
        rows = per_condition[per_condition["model"] == peer]
        same = per_condition[
            per_condition["seed"].isin(set(rows["seed"]))
            & per_condition["split"].isin(set(rows["split"]))
        ]
        ours_rows = same[same["model"] == OUR_MODEL]
        for metric, higher in SUITE_METRICS.items():
            if metric not in per_condition:
                continue
            peer_by = rows.groupby("split")[metric].mean()
            ours_by = ours_rows.groupby("split")[metric].mean()
            if peer_by.empty or ours_by.empty:
                continue
            sign = 1.0 if higher else -1.0
            peer_mean, ours_mean = float(peer_by.mean()), float(ours_by.mean())
            diff = (
                ours_rows.set_index("condition")[metric] - rows.set_index("condition")[metric]
            ).dropna()
            ours_wall = float(walls.get(OUR_MODEL, np.nan)) / n_seeds
            cells.append(
                {
                    "task": task,
                    "dataset": dataset,
                    "metric": metric,
                    "higher_is_better": higher,
                    "model": OUR_MODEL,
                    "peer": peer,
                    "model_mean": ours_mean,
                    "peer_mean": peer_mean,
                    "peer_sd": float(peer_by.std(ddof=1)) if len(peer_by) > 1 else 0.0,
                    "wins": bool(sign * (ours_mean - peer_mean) > 0),
                    "sign_p": _sign_test(sign * diff.to_numpy(dtype=float)),
                    "n_conditions": int(diff.size),
                    "peer_wall_seconds": float(walls.get(peer, np.nan)),
                    "wall_ratio": float(walls.get(peer, np.nan)) / ours_wall
                    if ours_wall > 0
                    else float("nan"),
                }
            )
    return cells


def _installed_peers(names: Sequence[str]) -> list[str]:
    """The peers of ``names`` that can run here; the others are named in a warning."""
    from aivc.evaluate._peer_envs import PEERS as ENVS
    from aivc.evaluate._peer_envs import peer_status

    ready = []
    for name in names:
        if name in ENVS:
            ok = peer_status(name).installed
            how = f"aivc peers install {name}"
        else:  # GEARS runs in aivc's own environment when cell-gears is installed
            try:
                import gears  # noqa: F401

                ok = True
            except ImportError:
                ok = False
            how = "pip install cell-gears"
        if ok:
            ready.append(name)
        else:
            logger.warning("peer %s is not installed, so its rows are left out (%s)", name, how)
    return ready


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
        entries = [e for e in entries if not e.dataset.startswith("sim-")]
    out = Path(out)
    cells: list[dict[str, Any]] = []
    peer_cells: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for entry in entries:
        entry_peers = _installed_peers(entry.peers) if peers else []
        names = [*entry.models, *entry_peers]
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
        peer_cells += result.get("peer_comparison", [])  # written by the task's own run
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
        "peer_cells": peer_cells,
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
    if suite.get("peer_cells"):
        lines += [
            "## Against the published peers (on the splits each peer ran)",
            "",
            "| task | dataset | metric | aivc-perturb | peer | peer mean | wins | sign p | peer wall (s) | wall ratio |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in suite["peer_cells"]:
            arrow = "↑" if c["higher_is_better"] else "↓"
            lines.append(
                f"| {c['task']} | {c['dataset']} | {c['metric']} {arrow} | {fmt(c['model_mean'])} | "
                f"{c['peer']} | {fmt(c['peer_mean'])} ± {fmt(c['peer_sd'])} | "
                f"{'yes' if c['wins'] else 'no'} | {fmt(c['sign_p'], 3)} | "
                f"{fmt(c['peer_wall_seconds'], 0)} | {fmt(c['wall_ratio'], 1)} |"
            )
        lines.append("")
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
