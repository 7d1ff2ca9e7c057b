"""Learning curves: how many measured perturbations before a model beats the mean?

A simulated world with functional modules and a simulated knowledge base
(:func:`aivc.sim.write_world`) is written into the output folder. A fixed set
of knockouts is held out; every model is fit on nested random subsets of the
other knockouts (``n_train`` = 25, 50, 100, ...) and predicts the held-out
ones. Models that use prior knowledge read it from the world's knowledge base,
written at two qualities (``good`` and ``poor`` by default; see
:data:`aivc.sim.KNOWLEDGE_QUALITIES`), so the curves show how much knowledge
is worth and whether a model uses it better than the linear baseline. The
replicate ceiling (one half of each held-out knockout's cells predicting the
other half) is reported beside the curves.

``results.json`` holds, per model, ``"curve"``: a list of
``{"n_train", "knowledge", "pearson_delta_de20", "mse_de20", ...}`` (means
over seeds, with their sds).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc._io import json_safe
from aivc._progress import progress
from aivc.evaluate._memory import ResourceMeter
from aivc.evaluate._results import machine_info, write_results
from aivc.evaluate.tasks import Task, knowledge_from, register_task

__all__ = ["CURVE_MODELS", "run_learning_curve"]

logger = logging.getLogger(__name__)

#: Models run when none are named.
CURVE_MODELS = ("train-mean", "linear", "linear-knowledge", "nearest-neighbour", "aivc-perturb")
#: Metrics of every point of a curve.
CURVE_METRICS = ("pearson_delta_de20", "mse_de20", "pearson_delta")
_WORLD = "curve-world-"


@dataclass(frozen=True)
class CurveConfig:
    """The world and the curve's points."""

    preset: str = "medium"
    n_genes: int = 1000
    n_cell_types: int = 1
    n_cells: int = 50_000
    n_test: int = 100
    sizes: tuple[int, ...] = (25, 50, 100, 200, 350)
    qualities: tuple[str, ...] = ("good", "poor")


VARIANTS: dict[str | None, CurveConfig] = {
    None: CurveConfig(),
    "quick": CurveConfig(
        preset="small",
        n_genes=200,
        n_cells=4_000,
        n_test=10,
        sizes=(10, 20),
        qualities=("good", "useless"),
    ),
}


def _world_number(dataset: str | None) -> int:
    if dataset is None:
        return 0
    tail = dataset.removeprefix(_WORLD)
    if not dataset.startswith(_WORLD) or not tail.isdigit():
        msg = f"The learning curve runs on a simulated world named {_WORLD}<N>, e.g. '{_WORLD}0'; got {dataset!r}."
        raise ValueError(msg)
    return int(tail)


def run_learning_curve(
    out: str | Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    variant: str | None = None,
) -> dict[str, Any]:
    """Run the learning-curve benchmark into ``out`` (see the module docstring).

    ``dataset`` names the world (``curve-world-<N>``, default 0); each seed
    draws its own held-out knockouts and nested training subsets.
    """
    from aivc.data import schema_of
    from aivc.data._preprocess import prepare
    from aivc.data._validate import read_h5ad
    from aivc.data.splits import Split
    from aivc.evaluate.tasks.perturbation import (
        _controls_of,
        _observe,
        _pseudobulk_scores,
        _test_conditions,
        _training_view,
    )
    from aivc.instruments._registry import get_instrument_class
    from aivc.sim import GroundTruth, simulated_knowledge, write_knowledge, write_world

    if variant not in VARIANTS:
        msg = f"Unknown learning-curve variant {variant!r}; expected one of {list(VARIANTS)}."
        raise ValueError(msg)
    cfg = VARIANTS[variant]
    world = _world_number(dataset)
    model_names = list(models) if models else list(CURVE_MODELS)
    for m in model_names:
        get_instrument_class(m)
    seeds = [int(s) for s in seeds]
    if not seeds:
        msg = "Pass at least one seed."
        raise ValueError(msg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    (out / "world").mkdir(exist_ok=True)
    files = write_world(
        out / "world" / "world.h5ad",
        world,
        preset=cfg.preset,
        n_cells=cfg.n_cells,
        n_genes=cfg.n_genes,
        n_cell_types=cfg.n_cell_types,
        knowledge=cfg.qualities[0],
    )
    truth = GroundTruth.load(files.truth)
    knowledge_dirs = {}
    for q in cfg.qualities:
        folder = out / "world" / f"knowledge-{q}"
        write_knowledge(folder, simulated_knowledge(truth.network, truth.modules, q, seed=world))
        knowledge_dirs[q] = folder
    raw = read_h5ad(str(files.data))
    adata, schema = prepare(raw, schema_of(raw), known_genes=[str(g) for g in raw.var_names])
    known = [str(g) for g in adata.var_names]
    obs = _observe(adata, schema, seed=seeds[0])
    singles = sorted(
        p for p in set(obs.pert_of.values()) if schema.order(p) == 1 and p != schema.control_label
    )
    n_pool = len(singles) - cfg.n_test
    sizes = [n for n in cfg.sizes if n <= n_pool]
    if len(singles) <= cfg.n_test or not sizes:
        msg = f"The world has {len(singles)} knockouts; too few for {cfg.n_test} held out and sizes {cfg.sizes}."
        raise ValueError(msg)

    rows: list[dict[str, Any]] = []
    replicate: list[pd.DataFrame] = []
    wall = dict.fromkeys(model_names, 0.0)
    peak = dict.fromkeys(model_names, 0.0)
    for seed in progress(seeds, desc="learning curve: seeds", unit="seed"):
        rng = np.random.default_rng([seed, 41])
        order = [str(p) for p in rng.permutation(singles)]
        test, pool = order[: cfg.n_test], order[cfg.n_test :]
        replicate.append(_replicate_scores(obs, test, seed))
        for n in sizes:
            split = Split(f"seed{seed}-n{n}", "learning-curve", seed, tuple(test), tuple(pool[:n]))
            train = _training_view(obs, split)
            conds = _test_conditions(obs, split)
            perts = [obs.pert_of[c] for c in conds]
            ctxs = [obs.ctx_of[c] for c in conds]
            control = obs.adata[_controls_of(obs, ctxs)].copy()
            for q, folder in knowledge_dirs.items():
                with knowledge_from(folder):
                    for name in model_names:
                        cls = get_instrument_class(name)
                        params: dict[str, Any] = {}
                        if "seed" in inspect.signature(cls.__init__).parameters:
                            params["seed"] = seed
                        model = cls(**params)
                        with ResourceMeter() as meter:
                            model.fit(train, schema, known_genes=known)
                            delta = model.predict_delta(perts, contexts=ctxs, control=control)
                        wall[name] += meter.wall_seconds
                        peak[name] = max(peak[name], meter.peak_increase_mb)
                        table = _pseudobulk_scores(obs, conds, delta)
                        rows.append(
                            {
                                "model": name,
                                "knowledge": q,
                                "n_train": n,
                                "seed": seed,
                                **{m: float(np.nanmean(table[m])) for m in CURVE_METRICS},
                            }
                        )
    per_seed = pd.DataFrame(rows)
    per_seed.to_csv(out / "per_seed.csv", index=False)
    rep = pd.concat(replicate)
    result = _build(
        per_seed, rep, cfg, world, seeds, sizes, model_names, wall, peak, truth, t0, variant
    )
    write_results(out, result, learning_curve_markdown(result))
    return json_safe(result)


def _replicate_scores(obs: Any, test: list[str], seed: int) -> pd.DataFrame:
    """Half of each held-out knockout's cells predicting the other half (pseudobulk metrics)."""
    from aivc.evaluate.tasks.perturbation import _cells, _dense_rows, _pseudobulk_scores

    rng = np.random.default_rng([seed, 42])
    conds = [c for c in obs.conditions if obs.pert_of[c] in set(test)]
    a, b = [], []
    for c in conds:
        rows = rng.permutation(_cells(obs, c))
        h = len(rows) // 2
        base = obs.control_mean[obs.ctx_of[c]]
        a.append(_dense_rows(obs.adata.X, rows[:h]).mean(0) - base)
        b.append(_dense_rows(obs.adata.X, rows[h : 2 * h]).mean(0) - base)
    table = _pseudobulk_scores(obs, conds, np.asarray(a), observed=np.asarray(b))
    return table.assign(seed=seed)


def _build(
    per_seed: pd.DataFrame,
    rep: pd.DataFrame,
    cfg: CurveConfig,
    world: int,
    seeds: list[int],
    sizes: list[int],
    model_names: list[str],
    wall: dict[str, float],
    peak: dict[str, float],
    truth: Any,
    t0: float,
    variant: str | None,
) -> dict[str, Any]:
    from aivc._version import __version__

    models: dict[str, Any] = {}
    for name in model_names:
        curve = []
        sub = per_seed[per_seed["model"] == name]
        for (q, n), g in sub.groupby(["knowledge", "n_train"], sort=False):
            point: dict[str, Any] = {"n_train": int(n), "knowledge": str(q), "n_seeds": len(g)}
            for m in CURVE_METRICS:
                point[m] = float(g[m].mean())
                point[m + "_sd"] = float(g[m].std(ddof=1)) if len(g) > 1 else 0.0
            curve.append(point)
        models[name] = {"curve": curve}
    ceiling = {m: float(rep.groupby("seed")[m].mean().mean()) for m in CURVE_METRICS}
    return {
        "task": "learning-curve",
        "dataset": f"{_WORLD}{world}",
        "description": (
            "Unseen knockouts of a simulated world with functional modules, predicted by models "
            "fit on nested subsets of the other knockouts, with the world's knowledge base at "
            "two qualities"
        ),
        "complete": True,
        "variant": variant,
        "split": {
            "kind": "nested training subsets, fixed held-out knockouts per seed",
            "seeds": seeds,
            "n_test": cfg.n_test,
            "sizes": sizes,
            "knowledge": list(cfg.qualities),
        },
        "world": {
            "preset": cfg.preset,
            "number": world,
            "n_genes": cfg.n_genes,
            "n_cells": cfg.n_cells,
            "n_modules": int(truth.modules.n_modules),
            "module_fraction": truth.params.get("module_fraction"),
        },
        "metrics": {
            "pearson_delta_de20": {"higher_is_better": True},
            "mse_de20": {"higher_is_better": False},
            "pearson_delta": {"higher_is_better": True},
        },
        "models": models,
        "replicate": ceiling,
        "wall_seconds": wall,
        "peak_memory_mb": peak,
        "wall_note": "total seconds of fit+predict over all points, qualities and seeds",
        "total_seconds": time.perf_counter() - t0,
        "machine": machine_info(),
        "aivc": __version__,
    }


def learning_curve_markdown(result: dict[str, Any]) -> str:
    """Tables of the curves: one row per model and knowledge quality, one column per size."""
    sizes = result["split"]["sizes"]
    lines = [f"# learning-curve · {result['dataset']}", "", result["description"] + ".", ""]
    for metric in ("pearson_delta_de20", "mse_de20"):
        arrow = "↑" if result["metrics"][metric]["higher_is_better"] else "↓"
        lines += [
            f"## {metric} {arrow} (replicate ceiling {result['replicate'][metric]:.3f})",
            "",
            "| model | knowledge | " + " | ".join(f"n={n}" for n in sizes) + " |",
            "|---|---|" + "---|" * len(sizes),
        ]
        for name, entry in result["models"].items():
            for q in result["split"]["knowledge"]:
                pts = {p["n_train"]: p for p in entry["curve"] if p["knowledge"] == q}
                cells = [
                    f"{pts[n][metric]:.3f} ± {pts[n][metric + '_sd']:.3f}" if n in pts else "—"
                    for n in sizes
                ]
                lines.append(f"| {name} | {q} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


register_task(
    Task(
        name="learning-curve",
        description="Accuracy on unseen knockouts as the number of measured knockouts grows, with good and poor knowledge",
        datasets=(f"{_WORLD}0",),
        models=CURVE_MODELS,
        seeds=(0, 1, 2),
        run=run_learning_curve,
        variants=tuple(v for v in VARIANTS if v is not None),
    )
)
