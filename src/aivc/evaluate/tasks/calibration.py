"""The ``calibration`` benchmark: are the predicted intervals honest?

For each perturbation task of :data:`aivc.evaluate.tasks.perturbation.PERTURBATION_SPECS` (same data
preparation and seeded splits as the perturbation benchmark), every model with
the ``"uncertainty"`` capability is fitted on the training perturbations and
predicts the held-out ones with intervals at 80% and 90%. Baselines get their
intervals from the ``conformal`` wrapper (:class:`aivc.instruments._conformal.ConformalModel`),
calibrated by cross-fitting on the training perturbations only.

Metrics, per model and task (mean ± sd over seeds):

- ``coverage_90`` / ``coverage_80``: fraction of held-out (condition, gene)
  measured changes inside the interval; ``*_de20`` on the top-20 DE genes of
  each condition (targets excluded).
- ``interval_width_90``: mean width of the 90% interval.
- ``spearman_uncertainty_error``: Spearman correlation between the interval
  width and the absolute error over condition x gene pairs (does the model
  know where it is wrong?).
- ``truth_noise_ratio``: mean standard error of the measured change
  (cell-to-cell sd / sqrt(cells)) divided by the mean 90% half-width: how
  large the sampling noise of the "truth" is next to the intervals.

The measured change of a held-out condition (mean of its cells minus the
control mean) is itself noisy. The intervals are calibrated against the same
kind of measured changes (held-out training perturbations), so they are
prediction intervals for what an experiment would measure, and coverage is
scored against the measured change without correction; ``truth_noise_ratio``
reports how large that noise is next to the intervals.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._io import json_safe
from aivc._progress import progress
from aivc.data._preprocess import condition_labels
from aivc.evaluate._memory import ResourceMeter
from aivc.evaluate._results import fmt, fmt_summary, machine_info, summarize, write_results
from aivc.evaluate.tasks import Task, register_task
from aivc.evaluate.tasks.perturbation import (
    PERTURBATION_SPECS,
    _observe,
    _Observed,
    _test_conditions,
    _training_view,
    task_data,
)

if TYPE_CHECKING:
    pass

__all__ = ["CALIBRATION_METRICS", "CALIBRATION_STRATA", "CALIBRATION_TASKS", "run_calibration"]

logger = logging.getLogger(__name__)

#: Perturbation tasks scored by default, in order.
CALIBRATION_TASKS = (
    "unseen-single",
    "combinations",
    "unseen-cell-type",
    "unseen-context",
    "simulator",
)
LEVELS = (0.8, 0.9)
WRAPPER = "conformal"
OUR_MODEL = "aivc-perturb"

CALIBRATION_METRICS: dict[str, str] = {
    "coverage_90": "fraction of held-out (condition, gene) measured changes inside the 90% interval (target 0.90)",
    "coverage_80": "fraction inside the 80% interval (target 0.80)",
    "coverage_90_de20": "coverage of the 90% interval on each condition's top-20 DE genes",
    "coverage_80_de20": "coverage of the 80% interval on each condition's top-20 DE genes",
    "interval_width_90": "mean width of the 90% interval (log-expression units; lower is better at equal coverage)",
    "spearman_uncertainty_error": "Spearman correlation of the 90% width with the absolute error over condition x gene (higher is better)",
    "truth_noise_ratio": "mean standard error of the measured change / mean 90% half-width",
}

#: Strata reported beside the pooled metrics (lists, pooled over seeds).
CALIBRATION_STRATA: dict[str, str] = {
    "coverage_90_by_variability_decile": "coverage of the 90% interval in each decile (1 = least "
    "variable) of the genes' sd across the training changes of the split: a predictor-side stratum",
    "interval_width_90_by_variability_decile": "mean 90% width in the same deciles",
    "coverage_90_by_condition": "quantiles (min, 25%, median, 75%, max) of each held-out "
    "condition's 90% coverage over its genes",
}
N_DECILES = 10


def _variability_deciles(train_delta: np.ndarray) -> np.ndarray:
    """Decile (0-9) of each gene's sd across the training changes (ties broken by gene order)."""
    sd = np.nan_to_num(np.std(train_delta, axis=0)) if len(train_delta) else np.zeros(0)
    order = np.argsort(sd, kind="stable")
    decile = np.empty(sd.size, dtype=int)
    decile[order] = (np.arange(sd.size) * N_DECILES) // max(sd.size, 1)
    return decile


def _model_names(spec_models: Sequence[str], models: Sequence[str] | None) -> list[str]:
    """Models to run: uncertainty-capable instruments by name, others wrapped as ``conformal:<name>``."""
    from aivc.instruments._registry import get_instrument_class

    if models:
        names = []
        for m in models:
            if m == WRAPPER:
                msg = f"Name the wrapped baseline, e.g. '{WRAPPER}:linear' (or just 'linear')."
                raise ValueError(msg)
            if m.startswith(f"{WRAPPER}:"):
                get_instrument_class(m.split(":", 1)[1])
                names.append(m)
                continue
            cls = get_instrument_class(m)
            caps = getattr(cls, "capabilities", frozenset())
            names.append(m if "uncertainty" in caps and m != WRAPPER else f"{WRAPPER}:{m}")
        return list(dict.fromkeys(names))
    names = []
    try:
        get_instrument_class(OUR_MODEL)
        names.append(OUR_MODEL)
    except KeyError:
        logger.warning("%s is not registered; its rows are left out", OUR_MODEL)
    for base in ("train-mean", "linear", "additive"):
        if base in spec_models:
            names.append(f"{WRAPPER}:{base}")
    return names


def _make_model(name: str, spec_params: dict[str, dict[str, Any]], seed: int) -> Any:
    from aivc.instruments._conformal import ConformalModel
    from aivc.instruments._registry import get_instrument_class

    if name.startswith(f"{WRAPPER}:"):
        base = name.split(":", 1)[1]
        params = dict(spec_params.get(base, {})) or None
        return ConformalModel(base=base, base_params=params, seed=seed)
    cls = get_instrument_class(name)
    params = dict(spec_params.get(name, {}))
    if "seed" in inspect.signature(cls.__init__).parameters:
        params["seed"] = seed
    return cls(**params)


# ----------------------------------------------------------------------------- data
def _standard_errors(obs: _Observed) -> pd.DataFrame:
    """Standard error of each condition's mean log-expression (cell sd / sqrt(n)), conditions x genes."""
    x = sp.csr_matrix(obs.adata.X)
    cond = condition_labels(obs.adata, obs.schema).to_numpy()
    codes, uniques = pd.factorize(cond, sort=True)
    ind = sp.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(uniques), len(codes))
    )
    n = np.asarray(ind.sum(axis=1)).ravel()
    m1 = np.asarray((ind @ x).todense()) / n[:, None]
    m2 = np.asarray((ind @ x.multiply(x)).todense()) / n[:, None]
    var = np.clip(m2 - m1**2, 0, None) * n[:, None] / np.maximum(n[:, None] - 1, 1)
    se = pd.DataFrame(
        np.sqrt(var / n[:, None]), index=pd.Index(uniques), columns=obs.adata.var_names
    )
    return se.reindex(obs.conditions)


# ----------------------------------------------------------------------------- scoring
def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def _score(
    observed: np.ndarray,
    delta: np.ndarray,
    intervals: dict[float, tuple[np.ndarray, np.ndarray]],
    de20: np.ndarray,
    se: np.ndarray,
) -> dict[str, float]:
    out: dict[str, float] = {}
    for level, (lo, hi) in intervals.items():
        inside = (observed >= lo) & (observed <= hi)
        tag = f"{round(level * 100)}"
        out[f"coverage_{tag}"] = float(inside.mean())
        out[f"coverage_{tag}_de20"] = float(inside[de20].mean()) if de20.any() else float("nan")
    lo, hi = intervals[0.9]
    width = hi - lo
    out["interval_width_90"] = (
        float(np.mean(width[np.isfinite(width)])) if np.isfinite(width).any() else float("inf")
    )
    out["spearman_uncertainty_error"] = _spearman(width, np.abs(observed - delta))
    half = width[np.isfinite(width)] / 2
    out["truth_noise_ratio"] = (
        float(np.mean(se[np.isfinite(width)]) / np.mean(half))
        if half.size and np.mean(half) > 0
        else float("nan")
    )
    return out


def _strata(accs: list[dict[str, list[np.ndarray]]]) -> dict[str, list[float]]:
    """Coverage and width by gene-variability decile, and per-condition coverage quantiles."""
    if not accs:
        return {}
    obs = np.vstack([a for acc in accs for a in acc["obs"]])
    lo = np.vstack([a for acc in accs for a in acc["lo0.9"]])
    hi = np.vstack([a for acc in accs for a in acc["hi0.9"]])
    decile = np.vstack([a for acc in accs for a in acc["decile"]])
    inside = (obs >= lo) & (obs <= hi)
    width = hi - lo
    cov, wid = [], []
    for d in range(N_DECILES):
        mask = decile == d
        cov.append(float(inside[mask].mean()) if mask.any() else float("nan"))
        w = width[mask]
        w = w[np.isfinite(w)]
        wid.append(float(w.mean()) if w.size else float("nan"))
    per_condition = inside.mean(axis=1)
    return {
        "coverage_90_by_variability_decile": cov,
        "interval_width_90_by_variability_decile": wid,
        "coverage_90_by_condition": [
            float(q) for q in np.quantile(per_condition, [0.0, 0.25, 0.5, 0.75, 1.0])
        ],
    }


def _run_task(
    task: str, dataset: str | None, models: Sequence[str] | None, seeds: Sequence[int]
) -> dict[str, Any]:
    spec = PERTURBATION_SPECS[task]
    data = task_data(task, dataset, seeds)
    names = _model_names(spec.models, models)
    adata, schema = data.adata, data.schema
    logger.info(
        "calibration/%s on %s: %d cells x %d genes, %d splits, models %s",
        task,
        data.dataset,
        adata.n_obs,
        adata.n_vars,
        len(data.splits),
        names,
    )
    obs = _observe(adata, schema, seed=seeds[0])
    se_all = _standard_errors(obs)
    # per (model, seed): stacked condition rows
    rows: dict[tuple[str, int], dict[str, list[np.ndarray]]] = {}
    cats: dict[tuple[str, str], list[np.ndarray]] = {}
    wall = dict.fromkeys(names, 0.0)
    peak = dict.fromkeys(names, 0.0)
    failed: dict[str, str] = {}
    n_conditions = set()
    control = adata[obs.labels == schema.control_label].copy()
    for split in progress(data.splits, desc=f"calibration/{task}", unit="split"):
        conds = _test_conditions(obs, split)
        if not conds:
            continue
        n_conditions.update(conds)
        train = _training_view(obs, split)
        perts = [obs.pert_of[c] for c in conds]
        ctxs = [obs.ctx_of[c] for c in conds]
        doses = [obs.dose_of[c] for c in conds]
        observed = obs.delta.loc[conds].to_numpy()
        de20 = obs.de20.loc[conds].to_numpy()
        se = se_all.loc[conds].to_numpy()
        for name in names:
            if name in failed:
                continue
            model = _make_model(name, spec.model_params, split.seed)
            try:
                with ResourceMeter() as meter:
                    model.fit(
                        train, schema, known_genes=data.known, perturbation_features=data.features
                    )
                    intervals = {}
                    for level in LEVELS:
                        delta, lo, hi = model.predict_interval(
                            perts, contexts=ctxs, doses=doses, control=control, level=level
                        ).arrays()
                        intervals[level] = (lo, hi)
            except (ValueError, RuntimeError) as e:
                # e.g. too few training perturbations to cross-fit: the model's row says why
                logger.warning("calibration/%s: %s failed on %s (%s)", task, name, split.name, e)
                failed[name] = f"{split.name}: {e}"
                continue
            wall[name] += meter.wall_seconds
            peak[name] = max(peak[name], meter.peak_increase_mb)
            train_conds = [c for c in obs.conditions if c not in set(conds)]
            decile = _variability_deciles(obs.delta.loc[train_conds].to_numpy())
            acc = rows.setdefault(
                (name, split.seed),
                {"obs": [], "delta": [], "de20": [], "se": [], "decile": []}
                | {f"lo{lv}": [] for lv in LEVELS}
                | {f"hi{lv}": [] for lv in LEVELS},
            )
            acc["obs"].append(observed)
            acc["delta"].append(delta)
            acc["de20"].append(de20)
            acc["se"].append(se)
            acc["decile"].append(np.broadcast_to(decile, observed.shape))
            for lv in LEVELS:
                acc[f"lo{lv}"].append(intervals[lv][0])
                acc[f"hi{lv}"].append(intervals[lv][1])
            for i, c in enumerate(conds):
                cat = split.categories.get(
                    obs.treatment_of[c], split.categories.get(obs.pert_of[c], "")
                )
                if cat:
                    lo, hi = intervals[0.9]
                    cats.setdefault((name, cat), []).append(
                        ((observed[i] >= lo[i]) & (observed[i] <= hi[i])).astype(float)
                    )
    models: dict[str, Any] = {}
    for name in names:
        per_seed: dict[str, list[float]] = {}
        for seed in seeds:
            acc = rows.get((name, seed))
            if acc is None:
                continue
            cat_ = {k: np.vstack(v) for k, v in acc.items()}
            ints = {lv: (cat_[f"lo{lv}"], cat_[f"hi{lv}"]) for lv in LEVELS}
            for m, v in _score(
                cat_["obs"], cat_["delta"], ints, cat_["de20"].astype(bool), cat_["se"]
            ).items():
                per_seed.setdefault(m, []).append(v)
        entry: dict[str, Any] = {m: summarize(per_seed.get(m, [])) for m in CALIBRATION_METRICS}
        entry |= _strata([rows[(name, seed)] for seed in seeds if (name, seed) in rows])
        by_cat = {c: float(np.mean(np.concatenate(v))) for (n, c), v in cats.items() if n == name}
        if by_cat:
            entry["coverage_90_by_category"] = dict(sorted(by_cat.items()))
        if name in failed:
            entry["failed"] = failed[name]
        models[name] = entry
    return {
        "dataset": data.dataset,
        "description": spec.description,
        "split": {"kind": spec.split_kind, "seeds": list(seeds), "n_splits": len(data.splits)},
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_conditions": len(n_conditions),
        "models": models,
        "wall_seconds": {k: round(v, 2) for k, v in wall.items()},
        "peak_memory_mb": {k: round(v, 1) for k, v in peak.items()},
        "example_split": data.splits[0].to_dict() if data.splits else None,
    }


def _select_tasks(dataset: str | None, variant: str | None) -> list[str]:
    if variant is not None:
        if variant not in CALIBRATION_TASKS:
            msg = f"calibration variant {variant!r} is not a task; expected one of {list(CALIBRATION_TASKS)}."
            raise ValueError(msg)
        return [variant]
    if dataset is not None:
        chosen = [t for t in CALIBRATION_TASKS if PERTURBATION_SPECS[t].dataset == dataset]
        if not chosen:
            msg = (
                f"No calibration task uses dataset {dataset!r} by default (tasks use "
                f"{ {t: PERTURBATION_SPECS[t].dataset for t in CALIBRATION_TASKS} }); pass --variant <task> to run a task on it."
            )
            raise ValueError(msg)
        return chosen
    return list(CALIBRATION_TASKS)


def run_calibration(
    out: Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    variant: str | None = None,
) -> dict[str, Any]:
    """Score the intervals of uncertainty-capable models on the perturbation tasks.

    Parameters
    ----------
    out
        Output directory; ``results.json`` and ``results.md`` are written atomically.
    dataset
        Restrict to the task(s) whose default dataset this is, or, with
        ``variant``, run that task on this dataset.
    models
        Instrument names. Names without the ``"uncertainty"`` capability are
        wrapped by the ``conformal`` instrument (also written ``conformal:<name>``).
        Default: ``aivc-perturb`` (when registered) and the conformal
        train-mean, linear and (where the task has it) additive baselines.
    seeds
        Seeds of the splits and of the calibration folds.
    variant
        One task of :data:`CALIBRATION_TASKS` (default: all).
    """
    from aivc._version import __version__

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    if not seeds:
        msg = "At least one seed is needed."
        raise ValueError(msg)
    tasks = _select_tasks(dataset, variant)
    results: dict[str, Any] = {}
    model_names: list[str] = []
    for task in tasks:
        ds = dataset if (variant is not None and dataset is not None) else None
        results[task] = _run_task(task, ds, models, seeds)
        model_names += [m for m in results[task]["models"] if m not in model_names]
    result = {
        "task": "calibration",
        "dataset": dataset or {t: results[t]["dataset"] for t in tasks},
        "tasks": tasks,
        "models": model_names,
        "levels": list(LEVELS),
        "seeds": seeds,
        "results": results,
        "metrics": CALIBRATION_METRICS,
        "strata": CALIBRATION_STRATA,
        "target": "coverage_90 between 0.85 and 0.95 on every task",
        "aggregation": "each seed pools every held-out condition x gene of its splits; mean and sd over seeds",
        "truth_noise": (
            "coverage is of the measured change of held-out conditions; intervals are calibrated "
            "against measured changes of held-out training perturbations, so they include sampling noise"
        ),
        "machine": {k: v for k, v in machine_info().items() if k != "aivc"},
        "aivc": __version__,
    }
    write_results(out, result, calibration_markdown(json_safe(result)))
    return json_safe(result)


def calibration_markdown(result: dict[str, Any]) -> str:
    """A readable table of a calibration ``results.json``."""
    cols = [
        "coverage_90",
        "coverage_80",
        "coverage_90_de20",
        "coverage_80_de20",
        "interval_width_90",
        "spearman_uncertainty_error",
        "truth_noise_ratio",
    ]
    lines = [
        "# calibration",
        "",
        "Nominal 90% and 80% intervals for held-out perturbations; coverage of the measured change "
        f"(target for coverage_90: 0.85–0.95). Seeds {result['seeds']}; mean ± sd over seeds.",
        "",
    ]
    for task, r in result["results"].items():
        lines += [
            f"## {task} ({r['dataset']})",
            "",
            f"{r['split']['kind']}, {r['split']['n_splits']} splits, {r['n_conditions']} held-out conditions, "
            f"{r['n_cells']} cells x {r['n_genes']} genes.",
            "",
            "| model | " + " | ".join(cols) + " | wall s | peak MB |",
            "|---|" + "---|" * (len(cols) + 2),
        ]
        for name, entry in r["models"].items():
            lines.append(
                f"| {name} | "
                + " | ".join(fmt_summary(entry.get(c)) for c in cols)
                + f" | {r['wall_seconds'].get(name, 0):.1f} | {r['peak_memory_mb'].get(name, 0):.0f} |"
            )
        for name, entry in r["models"].items():
            if "coverage_90_by_category" in entry:
                lines += [
                    "",
                    f"coverage_90 by category, {name}: "
                    + ", ".join(
                        f"{k} {v:.3f}" for k, v in entry["coverage_90_by_category"].items()
                    ),
                ]
            if "failed" in entry:
                lines += ["", f"{name} failed: {entry['failed']}"]
        deciles = {
            n: e["coverage_90_by_variability_decile"]
            for n, e in r["models"].items()
            if "coverage_90_by_variability_decile" in e
        }
        if deciles:
            lines += [
                "",
                "coverage_90 by decile of the genes' variability across the training changes "
                "(1 = least variable; pooled over seeds):",
                "",
                "| model | " + " | ".join(str(d + 1) for d in range(N_DECILES)) + " |",
                "|---|" + "---|" * N_DECILES,
            ]
            lines += [
                f"| {n} | " + " | ".join(fmt(v) for v in cov) + " |" for n, cov in deciles.items()
            ]
        lines.append("")
    m = result["machine"]
    lines += [f"Machine: {m['cpus']} CPUs, Python {m['python']}, aivc {result['aivc']}.", ""]
    return "\n".join(lines)


register_task(
    Task(
        name="calibration",
        description="Coverage and width of 80% / 90% intervals on held-out perturbations of every perturbation task",
        datasets=tuple(dict.fromkeys(PERTURBATION_SPECS[t].dataset for t in CALIBRATION_TASKS)),
        models=(OUR_MODEL, *(f"{WRAPPER}:{b}" for b in ("train-mean", "linear", "additive"))),
        seeds=(0, 1, 2),
        run=run_calibration,
        variants=CALIBRATION_TASKS,
    )
)
