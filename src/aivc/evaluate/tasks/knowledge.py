"""The ``knowledge`` benchmark: how much does prior knowledge tell about unmeasured knockouts?

A simulated world with functional modules (complexes and pathways) has a
knowledge base written about it at a chosen quality
(:data:`aivc.sim.KNOWLEDGE_QUALITIES`, from ``perfect`` to ``useless``). Every
single knockout of the world's Perturb-seq-like design has a noise-free change
(the log-normalised true mean expression minus the controls', the knocked-out
gene's own entry left out, as in the lab loop). A ridge regression from the
target's knowledge embedding (:mod:`aivc.genes`: GO, STRING, HuRI and their
fusion, built from the simulated tables exactly as from the real ones)
predicts the change of knockouts it was not fitted on: five folds over the
knockouts, the ridge penalty chosen by an inner five-fold cross-validation on
the training knockouts only.

The numbers answer "is the structure learnable from knowledge, and how fast
does that fade as knowledge gets worse?", with no measurement noise and no
model choices in the way: the error relative to predicting no change
(``mse_rel``), the same on the knockouts that change something
(``mse_rel_effect``: regulators and module members; the rest are null
knockouts), and the mean Pearson correlation of predicted and true changes
over those knockouts (``pearson_delta``). ``train-mean`` (the training
knockouts' mean change) is the constant any regression can fall back on.
Each seed is a world (its number), so the spread is over worlds.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc._io import json_safe
from aivc._labels import check_known
from aivc._progress import progress
from aivc.evaluate._results import machine_info, write_results
from aivc.evaluate.tasks import Task, knowledge_from, register_task

__all__ = ["KNOWLEDGE_MODELS", "knowledge_markdown", "run_knowledge", "world_knockout_changes"]

logger = logging.getLogger(__name__)

#: The embeddings a ridge reads (``ridge-<name>``), and the two references.
EMBEDDINGS = ("go", "string", "huri", "fused")
KNOWLEDGE_MODELS = ("no-change", "train-mean", *(f"ridge-{e}" for e in EMBEDDINGS))
QUALITIES = ("perfect", "good", "typical", "poor", "useless")
METRICS = ("mse_rel", "mse_rel_effect", "pearson_delta", "coverage")
#: Ridge penalties the inner cross-validation chooses among.
RIDGE_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 1e4)
N_FOLDS = 5


@dataclass(frozen=True)
class WorldConfig:
    """The simulated world a knowledge benchmark reads (one per seed)."""

    n_genes: int = 1000
    n_cells: int = 50_000
    max_singles: int = 500
    module_fraction: float = 0.2
    qualities: tuple[str, ...] = QUALITIES


VARIANTS: dict[str | None, WorldConfig] = {
    None: WorldConfig(),
    "quick": WorldConfig(
        n_genes=200, n_cells=5_000, max_singles=60, qualities=("perfect", "useless")
    ),
}


@dataclass(frozen=True)
class KnockoutChanges:
    """The noise-free changes of a world's single knockouts, and the truth behind them."""

    targets: list[str]
    delta: np.ndarray  # knockouts x genes, each target's own entry set to zero
    effect: np.ndarray  # knockouts: does the knockout change anything beyond its own gene?
    network: Any
    modules: Any


def world_knockout_changes(world: int, cfg: WorldConfig = WorldConfig()) -> KnockoutChanges:
    """The single knockouts of world ``world``'s design and their noise-free changes.

    The changes are of log-normalised expression (per 10,000 of the true
    mean profile, :func:`aivc.data.log_normalize` with ``scaling="fraction"``),
    the knocked-out gene's own entry set to zero: what a knockout does to the
    rest of the cell.
    """
    from aivc.data import log_normalize
    from aivc.sim import CONTROL, VirtualCellSimulator, default_design

    sim = VirtualCellSimulator(
        n_genes=cfg.n_genes, seed=world, module_fraction=cfg.module_fraction
    ).build()
    design = default_design(
        sim,
        n_cells=cfg.n_cells,
        max_singles=cfg.max_singles,
        double_fraction=0.0,
        n_design_drugs=0,
        seed=world,
    )
    genes = [str(g) for g in sim.genes]
    known = set(genes)
    labels = design["perturbation"].astype(str)
    targets = sorted({p for p in labels if p != CONTROL and "+" not in p and p in known})
    means = sim.true_means([CONTROL, *targets]).to_numpy(dtype=np.float64)
    logm, _ = log_normalize(means, dtype=np.float64, dense=True, scaling="fraction")
    delta = logm[1:] - logm[0]
    col = {g: i for i, g in enumerate(genes)}
    own = (np.arange(len(targets)), [col[t] for t in targets])
    delta[own] = 0.0
    # an effect beyond its own gene on the unnormalised means (normalisation alone moves
    # every gene a little when one gene's expression is removed)
    raw = np.log1p(means[1:]) - np.log1p(means[0])
    raw[own] = 0.0
    effect = np.abs(raw).max(axis=1) > 1e-6
    return KnockoutChanges(targets, delta, effect, sim.network_, sim.modules_)


def _ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and intercept of a ridge regression with centred features and targets."""
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ (y - ym))
    return w, ym - xm @ w


def _inner_ridge(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> float:
    """The penalty of :data:`RIDGE_GRID` with the lowest inner cross-validated error."""
    folds = rng.permutation(len(x)) % N_FOLDS
    errors = np.zeros(len(RIDGE_GRID))
    for f in range(N_FOLDS):
        tr, te = folds != f, folds == f
        for k, lam in enumerate(RIDGE_GRID):
            w, b = _ridge_fit(x[tr], y[tr], lam)
            errors[k] += float(((x[te] @ w + b - y[te]) ** 2).sum())
    return float(RIDGE_GRID[int(np.argmin(errors))])


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((ac**2).sum(axis=1) * (bc**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ac * bc).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def _scores(pred: np.ndarray, ko: KnockoutChanges) -> dict[str, float]:
    y, eff = ko.delta, ko.effect
    base, base_eff = float((y**2).mean()), float((y[eff] ** 2).mean())
    r = _rowwise_pearson(pred[eff], y[eff])
    return {
        "mse_rel": float(((pred - y) ** 2).mean()) / base,
        "mse_rel_effect": float(((pred[eff] - y[eff]) ** 2).mean()) / base_eff,
        "pearson_delta": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
    }


def _embedding(name: str) -> pd.DataFrame:
    from aivc.genes import fused_embedding, go_embedding, network_embedding

    if name == "go":
        return go_embedding()
    if name == "fused":
        return fused_embedding()[0]
    return network_embedding(name)


def _world_rows(
    world: int, cfg: WorldConfig, model_names: list[str], wall: dict[str, float]
) -> list[dict[str, Any]]:
    """Cross-validated scores of every model and knowledge quality on one world."""
    from aivc.sim import simulated_knowledge, write_knowledge

    ko = world_knockout_changes(world, cfg)
    n = len(ko.targets)
    folds = np.random.default_rng([world, 43]).permutation(n) % N_FOLDS
    rows: list[dict[str, Any]] = []

    def cross_validated(features: np.ndarray | None) -> np.ndarray:
        pred = np.zeros_like(ko.delta)
        for f in range(N_FOLDS):
            tr, te = folds != f, folds == f
            if features is None:  # train-mean
                pred[te] = ko.delta[tr].mean(axis=0)
                continue
            lam = _inner_ridge(features[tr], ko.delta[tr], np.random.default_rng([world, 44, f]))
            w, b = _ridge_fit(features[tr], ko.delta[tr], lam)
            pred[te] = features[te] @ w + b
        return pred

    refs = {
        "no-change": lambda: np.zeros_like(ko.delta),
        "train-mean": lambda: cross_validated(None),
    }
    for q in cfg.qualities:
        with tempfile.TemporaryDirectory(prefix="aivc-knowledge-") as tmp:
            write_knowledge(tmp, simulated_knowledge(ko.network, ko.modules, q, seed=world))
            with knowledge_from(Path(tmp)):
                for name in model_names:
                    t0 = time.perf_counter()
                    if name in refs:
                        pred, coverage = refs[name](), float("nan")
                    else:
                        table = _embedding(name.removeprefix("ridge-"))
                        inside = np.asarray([t in table.index for t in ko.targets])
                        feats = np.zeros((n, table.shape[1]))
                        feats[inside] = table.loc[[t for t in ko.targets if t in table.index]]
                        pred, coverage = cross_validated(feats), float(inside.mean())
                    wall[name] += time.perf_counter() - t0
                    rows.append(
                        {
                            "model": name,
                            "knowledge": q,
                            "world": world,
                            **_scores(pred, ko),
                            "coverage": coverage,
                            "n_knockouts": n,
                            "n_effect": int(ko.effect.sum()),
                        }
                    )
    return rows


def run_knowledge(
    out: str | Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    variant: str | None = None,
) -> dict[str, Any]:
    """Run the knowledge benchmark into ``out``: one world per seed (see the module docstring)."""
    from aivc._version import __version__

    if dataset not in (None, "simulator"):
        msg = f"The knowledge benchmark runs on simulated worlds ('simulator'); got {dataset!r}."
        raise ValueError(msg)
    if variant not in VARIANTS:
        msg = f"Unknown knowledge variant {variant!r}; expected one of {list(VARIANTS)}."
        raise ValueError(msg)
    cfg = VARIANTS[variant]
    model_names = list(models) if models else list(KNOWLEDGE_MODELS)
    check_known(model_names, KNOWLEDGE_MODELS, what="knowledge model")
    worlds = [int(s) for s in seeds]
    if not worlds:
        msg = "Pass at least one seed (world)."
        raise ValueError(msg)
    t0 = time.perf_counter()
    wall = dict.fromkeys(model_names, 0.0)
    rows: list[dict[str, Any]] = []
    for world in progress(worlds, desc="knowledge: worlds", unit="world"):
        rows += _world_rows(world, cfg, model_names, wall)
    per_world = pd.DataFrame(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_world.to_csv(out / "per_world.csv", index=False)
    result = _build(per_world, cfg, worlds, model_names, wall, t0, variant, __version__)
    write_results(out, result, knowledge_markdown(result))
    return json_safe(result)


def _build(
    per_world: pd.DataFrame,
    cfg: WorldConfig,
    worlds: list[int],
    model_names: list[str],
    wall: dict[str, float],
    t0: float,
    variant: str | None,
    version: str,
) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for name in model_names:
        by_quality = {}
        for q, g in per_world[per_world["model"] == name].groupby("knowledge", sort=False):
            by_quality[str(q)] = {
                m: {
                    "mean": float(g[m].mean()),
                    "sd": float(g[m].std(ddof=1)) if len(g) > 1 else 0.0,
                }
                for m in METRICS
                if g[m].notna().any()
            }
        models[name] = {"by_knowledge": by_quality}
    first = per_world.drop_duplicates("world")
    return {
        "task": "knowledge",
        "dataset": "simulator",
        "description": (
            "Noise-free changes of a simulated world's single knockouts predicted from the "
            "target's knowledge embedding by ridge regression (five folds over knockouts, "
            "penalty by inner cross-validation), at five knowledge qualities"
        ),
        "complete": True,
        "variant": variant,
        "split": {
            "kind": "5-fold cross-validation over knockouts; one world per seed",
            "seeds": worlds,
            "knowledge": list(cfg.qualities),
            "n_knockouts": [int(v) for v in first["n_knockouts"]],
            "n_effect": [int(v) for v in first["n_effect"]],
        },
        "world": {
            "n_genes": cfg.n_genes,
            "max_singles": cfg.max_singles,
            "module_fraction": cfg.module_fraction,
        },
        "metrics": {
            "mse_rel": {"higher_is_better": False},
            "mse_rel_effect": {"higher_is_better": False},
            "pearson_delta": {"higher_is_better": True},
            "coverage": {"higher_is_better": True},
        },
        "models": models,
        "wall_seconds": wall,
        "wall_note": "seconds of embedding and cross-validation over all qualities and worlds",
        "total_seconds": time.perf_counter() - t0,
        "machine": machine_info(),
        "aivc": version,
    }


def knowledge_markdown(result: dict[str, Any]) -> str:
    """One table per metric: models as rows, knowledge qualities as columns."""
    qualities = result["split"]["knowledge"]
    lines = [f"# knowledge · {result['dataset']}", "", result["description"] + ".", ""]
    for metric, spec in result["metrics"].items():
        arrow = "↑" if spec["higher_is_better"] else "↓"
        lines += [
            f"## {metric} {arrow}",
            "",
            "| model | " + " | ".join(qualities) + " |",
            "|---|" + "---|" * len(qualities),
        ]
        for name, entry in result["models"].items():
            cells = []
            for q in qualities:
                s = entry["by_knowledge"].get(q, {}).get(metric)
                cells.append(f"{s['mean']:.3f} ± {s['sd']:.3f}" if s else "—")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


register_task(
    Task(
        name="knowledge",
        description="How well a simulated knowledge base predicts unmeasured knockouts, from perfect to useless knowledge",
        datasets=("simulator",),
        models=KNOWLEDGE_MODELS,
        seeds=(0, 1, 2),
        run=run_knowledge,
        variants=tuple(v for v in VARIANTS if v is not None),
    )
)
