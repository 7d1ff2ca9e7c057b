"""Time benchmark: a cell population at a time point the models never saw.

``aivc benchmark time --dataset NAME_OR_PATH --variant interpolate|forecast --out DIR``:

- ``interpolate``: each intermediate time point is held out in turn and
  predicted from all the others.
- ``forecast``: the last time point is predicted from the earlier ones.
- ``perturbation`` (``--dataset sim-perturbed-timecourse-N``): the simulator's
  cells sent from one type towards another, unperturbed and under knockouts
  of its most connected regulators (up to 30), at 0, 6, 12, 24 and 48 h. A held-out
  knockout (5 folds) is measured at 6 h only; its change from the control at
  12, 24 and 48 h is predicted (:class:`~aivc.instruments._temporal.EffectCourse`,
  reported as ``aivc-time``) and compared with ``effect-as-first-measured``
  (the 6 h change persists) and ``control-course`` (no effect).
- ``fates`` (``--dataset sim-branching-N``): one starting type sent towards
  two others, half the cells each; each cell at 1 h gets fate probabilities
  towards the two branches at 24 h from the entropic optimal transport
  coupling (:func:`~aivc.instruments._temporal.fate_probabilities`, reported
  as ``aivc-time``; ``ot-exact`` is the unregularised coupling), against ``nearest-late`` (the branches of its 15 nearest
  24 h cells) and ``random`` (the branch proportions); scored by
  ``fate_accuracy`` and ``fate_log_loss`` against the branch the simulator
  sent it on.

Peers: PRESCIENT (``prescient``) runs beside them, from scratch on CPU in
its own environment, when ``aivc peers install prescient`` has made it
(:mod:`aivc.evaluate._time_peers`); otherwise ``peers_not_run`` in the
results says so.

Every model fits the same representation on the same training cells (log
expression of the most variable genes, principal components; see
:mod:`aivc.instruments._temporal`) and predicts cells at the held-out time;
they are compared there with the measured cells of that time. Metrics, per
held-out time point, then averaged over them; mean ± sd over seeds (each
seed keeps a seeded 90% of every training time point's cells):
``energy_distance`` and ``w2`` (Wasserstein-2, exact OT) between predicted
and measured cells in the representation; ``energy_distance_rel``, the
energy distance divided by that of ``nearest-time`` (the nearest measured
time point's cells) on the same split; ``pearson_delta``, the Pearson
correlation over genes of the predicted and measured change of mean log
expression from the nearest earlier training time point.

Datasets: ``schiebinger2019`` (reprogramming, days 10/10.5/11, counts),
``hsmm_timecourse`` (myoblast differentiation, 0/24/48/72 h, FPKM: log1p,
no library-size normalisation), ``sim-timecourse-N`` (the simulator: cells
of one type sent towards another, measured at 0, 3, 6, 12, 24 and 48 h; N is
the world's seed), or the path of an ``.h5ad`` with ``--time-key`` (counts
in ``layers["counts"]`` or ``X`` are detected; otherwise ``X`` is taken as
log expression).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data._validate import DataValidationError
from aivc.evaluate._memory import ResourceMeter
from aivc.evaluate._results import fmt_summary, machine_info, summarize, write_results
from aivc.evaluate.tasks import Task, register_task
from aivc.instruments._temporal import (
    TEMPORAL_MODELS,
    _log_expression,
    check_time_course,
    energy_distance,
    w2_distance,
)

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["TIME_COURSES", "TIME_MODELS", "load_time_course", "run_time", "simulated_time_course"]

logger = logging.getLogger(__name__)

TIME_MODELS = ("nearest-time", "linear-time", "ot-interpolation", "aivc-time")
VARIANTS = ("interpolate", "forecast", "perturbation", "fates")
SUBSAMPLE = 0.9
SIM_TIMES = (0.0, 3.0, 6.0, 12.0, 24.0, 48.0)

#: How the registered time courses are read: time column, expression kind, layer.
TIME_COURSES = {
    "schiebinger2019": ("day", "counts", "counts"),
    "hsmm_timecourse": ("time_hours", "fpkm", None),
}


def simulated_time_course(world: int, *, n_cells: int = 250, n_genes: int = 400) -> AnnData:
    """Cells of the simulator's first cell type sent towards its second, at :data:`SIM_TIMES` hours."""
    from aivc.sim import CONTROL, VirtualCellSimulator

    sim = VirtualCellSimulator(n_genes=n_genes, n_cell_types=2, seed=world).build()
    start, target = sim.cell_types[:2]
    design = pd.DataFrame(
        {
            "perturbation": CONTROL,
            "cell_type": start,
            "signal": target,
            "time": list(SIM_TIMES),
            "n_cells": n_cells,
        }
    )
    adata, _ = sim.simulate(design, seed=world)
    return adata


def load_time_course(
    dataset: str, time_key: str | None, expression: str | None, layer: str | None
) -> tuple[AnnData, str, str, str | None]:
    """A time course, its time column, expression kind and layer, from a name or a file (see the module docstring)."""
    from aivc.data._registry import _REGISTRY, load

    if dataset.startswith("sim-timecourse-"):
        world = int(dataset.rsplit("-", 1)[1])
        return simulated_time_course(world), "time", "counts", None
    if dataset in _REGISTRY:
        if dataset not in TIME_COURSES:
            msg = f"Dataset {dataset!r} is not a time course; time courses are {sorted(TIME_COURSES)}, sim-timecourse-N or a file."
            raise ValueError(msg)
        key, kind, lay = TIME_COURSES[dataset]
        return (
            load(dataset),
            time_key or key,
            expression or kind,
            layer if layer is not None else lay,
        )
    path = Path(dataset)
    if not path.exists():
        msg = f"{dataset!r} is neither a registered time course nor a file."
        raise FileNotFoundError(msg)
    if time_key is None:
        msg = "A time course file needs --time-key (the obs column with each cell's time)."
        raise ValueError(msg)
    from aivc.data._validate import read_h5ad

    adata = read_h5ad(path)
    if layer is None and expression in (None, "counts") and "counts" in adata.layers:
        layer = "counts"
    if expression is None:
        X = adata.layers[layer] if layer else adata.X
        values = X.data if sp.issparse(X) else np.asarray(X).ravel()
        expression = "counts" if np.allclose(values[:10000], np.round(values[:10000])) else "log"
    return adata, time_key, expression, layer


def _splits(times: np.ndarray, variant: str) -> list[float]:
    if variant == "forecast":
        return [float(times[-1])]
    inner = [float(t) for t in times[1:-1]]
    if not inner:
        msg = f"Interpolation needs three or more time points; this course has {times.tolist()}."
        raise DataValidationError(msg)
    return inner


def run_time(
    out: str | Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    variant: str | None = None,
    time_key: str | None = None,
    expression: str | None = None,
    layer: str | None = None,
) -> dict[str, Any]:
    """Run the time benchmark (see the module docstring); writes results into ``out``."""
    out = Path(out)
    variant = variant or "interpolate"
    default = {"perturbation": "sim-perturbed-timecourse-0", "fates": "sim-branching-0"}
    dataset = dataset or default.get(variant, "schiebinger2019")
    if variant == "fates":
        if not dataset.startswith("sim-branching-"):
            msg = "The fates variant runs on the simulator: --dataset sim-branching-N."
            raise ValueError(msg)
        return run_time_fates(out, dataset, seeds, models)
    if variant == "perturbation":
        if not dataset.startswith("sim-perturbed-timecourse-"):
            msg = "The perturbation variant runs on the simulator: --dataset sim-perturbed-timecourse-N."
            raise ValueError(msg)
        return run_time_perturbation(out, dataset, seeds, models)
    from aivc.evaluate._time_peers import BENCHMARK_OPTIONS, TIME_PEERS, installed_time_peers

    known = {**TEMPORAL_MODELS, **TIME_PEERS}
    ready, peers_not_run = installed_time_peers()
    if models is None:
        models = [*TIME_MODELS, *ready]
    else:
        peers_not_run = {k: v for k, v in peers_not_run.items() if k in models}
    models = list(models)
    unknown = [m for m in models if m not in known]
    if unknown:
        msg = f"Unknown time model(s) {unknown}; choose from {sorted(known)}."
        raise ValueError(msg)
    missing = [m for m in models if m in peers_not_run]
    if missing:
        msg = f"Peer(s) {missing} are not installed: " + "; ".join(
            peers_not_run[m] for m in missing
        )
        raise ValueError(msg)
    if "nearest-time" not in models:
        models.insert(0, "nearest-time")  # the reference of energy_distance_rel
    adata, key, kind, lay = load_time_course(dataset, time_key, expression, layer)
    t = check_time_course(adata, key)
    times = np.unique(t)
    held = _splits(times, variant)
    metrics = ("energy_distance", "energy_distance_rel", "w2", "pearson_delta")
    per_seed = {m: {k: [] for k in metrics} for m in models}
    rows: list[dict[str, Any]] = []
    wall = dict.fromkeys(models, 0.0)
    peak = dict.fromkeys(models, 0.0)
    choices: list[str] = []
    for seed in seeds:
        rng = np.random.default_rng([int(seed), 7])
        unit: dict[str, dict[str, list[float]]] = {m: {k: [] for k in metrics} for m in models}
        for target in held:
            train_times = times[times < target] if variant == "forecast" else times[times != target]
            keep = np.zeros(adata.n_obs, dtype=bool)
            for tt in train_times:
                idx = np.flatnonzero(t == tt)
                keep[rng.choice(idx, size=max(2, round(SUBSAMPLE * len(idx))), replace=False)] = (
                    True
                )
            train, test = adata[keep].copy(), adata[t == target].copy()
            reference = float(train_times[train_times < target].max())
            ed_nearest = None
            for m in models:
                with ResourceMeter() as meter:
                    model = known[m](seed=int(seed), **BENCHMARK_OPTIONS.get(m, {})).fit(
                        train, time_key=key, expression=kind, layer=lay
                    )
                    observed = model.transform(test)
                    predicted = model.predict_cells(target, n_cells=len(observed))
                wall[m] += meter.wall_seconds
                peak[m] = max(peak[m], meter.peak_increase_mb)
                if m == "aivc-time":
                    choices.append(
                        model.selection_["forecast" if variant == "forecast" else "interpolate"][
                            "chosen"
                        ]
                    )
                ed = energy_distance(predicted, observed)
                if m == "nearest-time":
                    ed_nearest = ed
                X_test = test.layers[lay] if lay else test.X
                obs_mean = _log_expression(X_test, kind)[:, model.gene_index_].mean(0)
                ref_mean = model.center_ + model.populations_[reference].mean(0) @ model.components_
                pred_mean = model.center_ + predicted.mean(0) @ model.components_
                a, b = pred_mean - ref_mean, obs_mean - ref_mean
                pearson = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
                values = {
                    "energy_distance": ed,
                    "energy_distance_rel": ed / ed_nearest if ed_nearest else float("nan"),
                    "w2": w2_distance(predicted, observed),
                    "pearson_delta": pearson,
                }
                for k, v in values.items():
                    unit[m][k].append(v)
                rows.append({"seed": int(seed), "model": m, "held_out_time": target, **values})
        for m in models:
            for k in metrics:
                per_seed[m][k].append(float(np.mean(unit[m][k])))
    result = {
        "task": "time",
        "dataset": dataset if not Path(dataset).exists() else Path(dataset).name,
        "variant": variant,
        "description": (
            "Predict the cells of a held-out time point "
            + (
                "from all other time points"
                if variant == "interpolate"
                else "from the earlier time points (forecast)"
            )
        ),
        "split": {
            "kind": variant,
            "seeds": [int(s) for s in seeds],
            "times": [float(x) for x in times],
            "held_out_times": held,
            "time_key": key,
            "expression": kind,
            "training_subsample": SUBSAMPLE,
        },
        "models": {m: {k: summarize(v) for k, v in per_seed[m].items()} for m in models},
        "aivc_time_choices": pd.Series(choices).value_counts().to_dict() if choices else {},
        "peers_not_run": peers_not_run,
        "peer_options": {m: BENCHMARK_OPTIONS[m] for m in models if m in BENCHMARK_OPTIONS},
        "metrics": {
            "energy_distance": {
                "higher_is_better": False,
                "description": "energy distance between predicted and measured cells (representation)",
            },
            "energy_distance_rel": {
                "higher_is_better": False,
                "description": "energy distance / that of nearest-time on the same split",
            },
            "w2": {
                "higher_is_better": False,
                "description": "Wasserstein-2 distance (exact OT) between predicted and measured cells",
            },
            "pearson_delta": {
                "higher_is_better": True,
                "description": "Pearson r over genes of predicted vs measured change of mean log expression from the nearest earlier training time",
            },
        },
        "wall_seconds": {k: round(v, 3) for k, v in wall.items()},
        "peak_memory_mb": {k: round(v, 1) for k, v in peak.items()},
        "peak_memory_note": "largest increase of resident memory during one fit+predict",
        "machine": machine_info(),
    }
    from aivc._io import write_csv_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(pd.DataFrame(rows), out / "per_time_point.csv")
    write_results(out, result, time_markdown(result))
    return result


def time_markdown(result: dict[str, Any]) -> str:
    """A readable table of a ``time`` ``results.json``."""
    s = result["split"]
    lines = [
        f"# time on {result['dataset']} ({result['variant']})",
        "",
        result["description"] + ".",
        "",
        f"Times {s['times']} ({s['time_key']}, {s['expression']}); held out {s['held_out_times']}; seeds {s['seeds']}; "
        "mean ± sd over seeds of the mean over held-out time points.",
        "",
        "| model | energy_distance ↓ | energy_distance_rel ↓ | w2 ↓ | pearson_delta ↑ | wall s | peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in result["models"].items():
        cells = " | ".join(
            fmt_summary(e[k])
            for k in ("energy_distance", "energy_distance_rel", "w2", "pearson_delta")
        )
        lines.append(
            f"| {name} | {cells} | {result['wall_seconds'].get(name, 0):.1f} | {result['peak_memory_mb'].get(name, 0):.0f} |"
        )
    if result.get("aivc_time_choices"):
        lines += [
            "",
            "aivc-time's choices on its training time points: "
            + ", ".join(f"{k} ×{v}" for k, v in result["aivc_time_choices"].items()),
        ]
    m = result["machine"]
    lines += ["", f"Machine: {m['cpus']} CPUs, Python {m['python']}, aivc {m['aivc']}.", ""]
    return "\n".join(lines)


register_task(
    Task(
        name="time",
        description="Predict the cell population at a held-out or future time point",
        datasets=("schiebinger2019", "hsmm_timecourse", "sim-timecourse-0"),
        models=TIME_MODELS,
        seeds=(0, 1, 2),
        run=run_time,
        variants=VARIANTS,
        options=("time_key", "expression", "layer"),
    )
)


# ----------------------------------------------------------------------------- perturbation x time
PERTURBED_TIMES = (0.0, 6.0, 12.0, 24.0, 48.0)
EARLY_TIME = 6.0
N_KNOCKOUTS = 30
EFFECT_MODELS = ("control-course", "effect-as-first-measured", "aivc-time")


def simulated_perturbed_course(world: int, *, n_cells: int = 120, n_genes: int = 300) -> AnnData:
    """Control cells and knockouts of the most connected regulators, sent towards another type, at :data:`PERTURBED_TIMES`."""
    from aivc.sim import CONTROL, VirtualCellSimulator

    sim = VirtualCellSimulator(n_genes=n_genes, n_cell_types=2, seed=world).build()
    net = sim.network_
    regs = np.asarray(net.regulators)
    order = regs[np.argsort(-net.out_degree()[regs], kind="stable")][:N_KNOCKOUTS]
    labels = [CONTROL, *[str(net.gene_names[g]) for g in order]]
    start, target = sim.cell_types[:2]
    design = pd.DataFrame(
        [
            {"perturbation": p, "cell_type": start, "signal": target, "time": t, "n_cells": n_cells}
            for p in labels
            for t in PERTURBED_TIMES
        ]
    )
    adata, _ = sim.simulate(design, seed=world)
    return adata


def _pseudobulk(adata: AnnData) -> tuple[dict[tuple[str, float], np.ndarray], list[str]]:
    logx = _log_expression(adata.X, "counts")
    keys = list(
        zip(adata.obs["perturbation"].astype(str), adata.obs["time"].astype(float), strict=True)
    )
    frame = pd.DataFrame({"k": keys})
    groups = frame.groupby("k").indices
    return {k: logx[v].mean(0) for k, v in groups.items()}, [str(g) for g in adata.var_names]


def run_time_perturbation(
    out: Path, dataset: str, seeds: Sequence[int], models: Sequence[str] | None
) -> dict[str, Any]:
    """Perturbation x time on a simulated course (see :func:`run_time`)."""
    from aivc.instruments._temporal import EffectCourse, _de20_scores
    from aivc.sim import CONTROL

    world = int(dataset.rsplit("-", 1)[1])
    adata = simulated_perturbed_course(world)
    means, genes = _pseudobulk(adata)
    knockouts = sorted({p for p, _ in means if p != CONTROL})
    late_times = [t for t in PERTURBED_TIMES if t > EARLY_TIME]
    effect = {
        (p, t): means[(p, t)] - means[(CONTROL, t)] for p in knockouts for t in PERTURBED_TIMES
    }
    models = list(models or EFFECT_MODELS)
    metrics = ("pearson_delta", "pearson_delta_de20", "mse_de20", "coverage_90")
    per_seed = {m: {k: [] for k in metrics} for m in models}
    choices: list[str] = []
    with ResourceMeter() as meter:
        for seed in seeds:
            order = np.random.default_rng([int(seed), 11]).permutation(len(knockouts))
            pooled = {m: {k: [] for k in metrics} for m in models}
            for f in range(5):
                held = [knockouts[i] for i in order[f::5]]
                train = [p for p in knockouts if p not in held]
                early_tr = np.stack([effect[(p, EARLY_TIME)] for p in train])
                late_tr = {t: np.stack([effect[(p, t)] for p in train]) for t in late_times}
                course = EffectCourse().fit(early_tr, late_tr, genes)
                early_te = np.stack([effect[(p, EARLY_TIME)] for p in held])
                for t in late_times:
                    observed = np.stack([effect[(p, t)] for p in held])
                    choices.append(course.selection_[f"{t:g}"]["chosen"])
                    for m in models:
                        if m == "control-course":
                            pred = np.zeros_like(observed)
                        elif m == "effect-as-first-measured":
                            pred = early_te
                        else:
                            pred, lo, hi = course.predict_interval(early_te, t)
                            pooled[m]["coverage_90"].append(
                                float(((observed >= lo) & (observed <= hi)).mean())
                            )
                        for k, v in _de20_scores(observed, pred).items():
                            pooled[m][k] += v.tolist()
            for m in models:
                for k in metrics:
                    per_seed[m][k].append(
                        float(np.mean(pooled[m][k])) if pooled[m][k] else float("nan")
                    )
    result = {
        "task": "time",
        "dataset": dataset,
        "variant": "perturbation",
        "description": (
            f"Predict a held-out knockout's change at {[f'{t:g} h' for t in late_times]} from its change at "
            f"{EARLY_TIME:g} h and the knockouts measured throughout (5 folds over {len(knockouts)} knockouts)"
        ),
        "split": {
            "kind": "perturbation",
            "seeds": [int(s) for s in seeds],
            "times": list(PERTURBED_TIMES),
            "early_time": EARLY_TIME,
            "late_times": late_times,
            "n_knockouts": len(knockouts),
            "folds": 5,
        },
        "models": {m: {k: summarize(v) for k, v in per_seed[m].items()} for m in models},
        "aivc_time_choices": pd.Series(choices).value_counts().to_dict(),
        "metrics": {
            "pearson_delta": {
                "higher_is_better": True,
                "description": "Pearson r over all genes of predicted and measured change from the control at the same time",
            },
            "pearson_delta_de20": {
                "higher_is_better": True,
                "description": "the same on the 20 genes the knockout changed most at that time",
            },
            "mse_de20": {
                "higher_is_better": False,
                "description": "mean squared error on those 20 genes",
            },
            "coverage_90": {
                "higher_is_better": None,
                "description": "share of measured changes inside the 90% interval (target 0.85-0.95)",
            },
        },
        "wall_seconds": {"all models": round(meter.wall_seconds, 3)},
        "peak_memory_mb": {"all models": round(meter.peak_increase_mb, 1)},
        "machine": machine_info(),
    }
    choices = ", ".join(f"{k} ×{v}" for k, v in result["aivc_time_choices"].items())
    return _write_simulated(
        out, result, metrics, f"aivc-time's choices (per fold and late time): {choices}"
    )


# ----------------------------------------------------------------------------- fates
BRANCH_TIMES = (0.0, 1.0, 24.0)
FATE_MODELS = ("random", "nearest-late", "ot-exact", "aivc-time")


def simulated_branching_course(world: int, *, n_cells: int = 200, n_genes: int = 300) -> AnnData:
    """One starting type sent towards two others (half the cells each) at :data:`BRANCH_TIMES`; the
    branch a cell is on is in ``obs["signal"]``."""
    from aivc.sim import CONTROL, VirtualCellSimulator

    sim = VirtualCellSimulator(n_genes=n_genes, n_cell_types=3, seed=world).build()
    start, *targets = sim.cell_types[:3]
    design = pd.DataFrame(
        [
            {
                "perturbation": CONTROL,
                "cell_type": start,
                "signal": s,
                "time": t,
                "n_cells": n_cells,
            }
            for s in targets
            for t in BRANCH_TIMES
        ]
    )
    adata, _ = sim.simulate(design, seed=world)
    return adata


def run_time_fates(
    out: Path, dataset: str, seeds: Sequence[int], models: Sequence[str] | None
) -> dict[str, Any]:
    """Fates on a simulated branching course (see :func:`run_time`)."""
    from aivc.instruments._temporal import TemporalManipulator, fate_probabilities

    world = int(dataset.rsplit("-", 1)[1])
    adata = simulated_branching_course(world)
    early_t, late_t = BRANCH_TIMES[1], BRANCH_TIMES[-1]
    models = list(models or FATE_MODELS)
    per_seed: dict[str, dict[str, list[float]]] = {
        m: {"fate_accuracy": [], "fate_log_loss": []} for m in models
    }
    with ResourceMeter() as meter:
        for seed in seeds:
            rng = np.random.default_rng([int(seed), 13])
            t = adata.obs["time"].to_numpy(dtype=float)
            keep = np.zeros(adata.n_obs, dtype=bool)
            for tt in BRANCH_TIMES:
                idx = np.flatnonzero(t == tt)
                keep[rng.choice(idx, size=round(SUBSAMPLE * len(idx)), replace=False)] = True
            sub = adata[keep].copy()
            model = TemporalManipulator(seed=int(seed)).fit(
                sub, time_key="time", expression="counts"
            )
            z = model.transform(sub)
            ts = sub.obs["time"].to_numpy(dtype=float)
            branch = sub.obs["signal"].astype(str).to_numpy()
            early, late = z[ts == early_t], z[ts == late_t]
            truth, late_labels = branch[ts == early_t], branch[ts == late_t]
            names = sorted(set(late_labels))
            for m in models:
                if m == "random":
                    prior = (
                        pd.Series(late_labels)
                        .value_counts(normalize=True)
                        .reindex(names)
                        .to_numpy()
                    )
                    probs = np.tile(prior, (len(early), 1))
                elif m == "nearest-late":
                    d = ((early[:, None, :] - late[None, :, :]) ** 2).sum(-1)
                    nn = np.argsort(d, axis=1)[:, :15]
                    votes = np.stack([(late_labels[nn] == n).mean(1) for n in names], 1)
                    probs = votes
                else:  # aivc-time: entropic OT, as Waddington-OT and moscot compute fates
                    probs = fate_probabilities(early, late, late_labels, entropic=m == "aivc-time")
                    probs = probs[names].to_numpy()
                hit = np.array([names.index(x) for x in truth])
                picked = probs.argmax(1)
                if m == "random":  # a random guess by the prior: its expected accuracy
                    acc = float((probs[np.arange(len(hit)), hit]).mean())
                else:
                    acc = float((picked == hit).mean())
                loss = float(-np.log(np.clip(probs[np.arange(len(hit)), hit], 1e-6, 1.0)).mean())
                per_seed[m]["fate_accuracy"].append(acc)
                per_seed[m]["fate_log_loss"].append(loss)
    result = {
        "task": "time",
        "dataset": dataset,
        "variant": "fates",
        "description": (
            f"For each cell at {early_t:g} h, the branch it will be on at {late_t:g} h (one starting type sent "
            "towards two others), scored against the simulator's truth"
        ),
        "split": {
            "kind": "fates",
            "seeds": [int(s) for s in seeds],
            "times": list(BRANCH_TIMES),
            "early_time": early_t,
            "late_time": late_t,
        },
        "models": {m: {k: summarize(v) for k, v in per_seed[m].items()} for m in models},
        "metrics": {
            "fate_accuracy": {
                "higher_is_better": True,
                "description": "share of early cells whose most probable fate is their true branch (random: expected accuracy of a guess by the branch proportions)",
            },
            "fate_log_loss": {
                "higher_is_better": False,
                "description": "mean -log probability given to the true branch",
            },
        },
        "wall_seconds": {"all models": round(meter.wall_seconds, 3)},
        "peak_memory_mb": {"all models": round(meter.peak_increase_mb, 1)},
        "machine": machine_info(),
    }
    return _write_simulated(out, result, ("fate_accuracy", "fate_log_loss"))


def _write_simulated(
    out: Path, result: dict[str, Any], metrics: Sequence[str], note: str = ""
) -> dict[str, Any]:
    """Write a simulated-course result with a table of ``metrics`` (arrows from ``result["metrics"]``)."""
    arrow = {True: " ↑", False: " ↓", None: ""}
    head = " | ".join(f"{k}{arrow[result['metrics'][k]['higher_is_better']]}" for k in metrics)
    lines = [
        f"# time on {result['dataset']} ({result['variant']})",
        "",
        result["description"] + ".",
        "",
        f"| model | {head} |",
        "|---|" + "---|" * len(metrics),
    ]
    for m, e in result["models"].items():
        lines.append(f"| {m} | " + " | ".join(fmt_summary(e[k]) for k in metrics) + " |")
    lines += ["", note, ""] if note else [""]
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, result, "\n".join(lines))
    return result
