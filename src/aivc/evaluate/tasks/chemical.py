"""Chemical benchmark: a compound's profile change from its structure and dose.

``aivc benchmark chemical --dataset NAME_OR_PATH --split unseen-compound|unseen-dose --out DIR``
fits every model on the same training conditions and predicts the held-out ones:

- ``unseen-compound``: the compounds with a structure are split into 5 folds
  (seeded); each fold's compounds are held out at all their doses. Compounds
  without a structure always stay in training.
- ``unseen-dose``: for every compound measured at 3 or more doses, one dose
  (drawn per seed) is held out; all are predicted from one fit.

The readout is the change of each (compound, dose) from the vehicle wells of
its plate (:func:`aivc.data.response_table`), in the units of the profiles
given. Metrics per held-out condition, averaged over conditions, then mean ±
sd over seeds: ``pearson_delta`` (all features), ``pearson_delta_top20`` and
``mse_top20`` (the 20 features the condition changed most), ``mse``;
``map_moa``: mean average precision of mechanism-of-action retrieval, each
predicted held-out profile ranking the measured profiles of the fold's
training conditions (copairs, cosine similarity; positives are other
compounds sharing a mechanism, negatives other compounds sharing none),
with the same number for the measured held-out profiles as the ceiling
(``observed``: how well a real measurement retrieves its mechanism from
one well per dose); ``coverage_90``: share
of held-out (condition, feature) changes inside the 90% interval, for the
models that give intervals.

Datasets: ``lincs_cellpainting_a549`` (default) or the path of an ``.h5ad``
(or a CSV/Parquet profile table with ``Metadata_`` columns) with the columns
declared by ``--compound-key``, ``--dose-key``, ``--smiles-key`` (several
comma-separated: first non-empty wins), ``--control-label``,
``--plate-key``, ``--moa-key`` and ``--dose-unit``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc._io import write_csv_atomic
from aivc.data._profiles import ProfileSchema, ResponseTable, load_profiles, response_table
from aivc.data._validate import DataValidationError
from aivc.evaluate._chemical_peers import CHEMICAL_PEERS
from aivc.evaluate._memory import ResourceMeter
from aivc.evaluate._results import fmt_summary, machine_info, summarize, write_results
from aivc.evaluate.tasks import Task, register_task
from aivc.instruments._chemical import CHEMICAL_MODELS
from aivc.instruments._scores import condition_scores

__all__ = ["CHEMICAL_SPLITS", "mechanism_ap", "run_chemical"]

logger = logging.getLogger(__name__)

CHEMICAL_SPLITS = ("unseen-compound", "unseen-dose")
FOLDS = 5

_MODELS = {
    "unseen-compound": (
        "vehicle",
        "train-mean",
        "nearest-compound",
        "ridge-fingerprint",
        "aivc-chem",
    ),
    "unseen-dose": (
        "vehicle",
        "train-mean",
        "nearest-compound",
        "ridge-fingerprint",
        "dose-interpolation",
        "aivc-chem",
    ),
}
#: The unit of each peer's training length.
_PEER_STEPS = {"biolord": "epochs", "cellflow": "optimiser steps"}
_METRICS = ("pearson_delta", "pearson_delta_top20", "mse_top20", "mse")


# ----------------------------------------------------------------------------- data
def _load(dataset: str, options: dict[str, Any]) -> tuple[ResponseTable, ProfileSchema, str]:
    adata, schema, name = load_profiles(dataset, **options)
    return response_table(adata, schema), schema, name


# ----------------------------------------------------------------------------- splits
def _splits(table: ResponseTable, split: str, seed: int) -> list[np.ndarray]:
    """Boolean test masks over the conditions of ``table``."""
    rng = np.random.default_rng(seed)
    if split == "unseen-compound":
        names = sorted(
            c for c, s in table.smiles.items() if s is not None and c in set(table.compounds)
        )
        if len(names) < FOLDS:
            msg = f"unseen-compound needs at least {FOLDS} compounds with a structure; found {len(names)}."
            raise DataValidationError(msg)
        order = rng.permutation(len(names))
        return [np.isin(table.compounds, [names[i] for i in order[f::FOLDS]]) for f in range(FOLDS)]
    test = np.zeros(len(table.compounds), dtype=bool)
    for c in sorted(set(table.compounds)):
        rows = np.flatnonzero(table.compounds == c)
        if len(rows) >= 3:
            test[rng.choice(rows)] = True
    if not test.any():
        msg = "unseen-dose needs compounds measured at 3 or more doses; none is."
        raise DataValidationError(msg)
    return [test]


# ----------------------------------------------------------------------------- retrieval
def mechanism_ap(
    queries: np.ndarray,
    query_compounds: Sequence[str],
    query_moa: Sequence[str | None],
    references: np.ndarray,
    reference_compounds: Sequence[str],
    reference_moa: Sequence[str | None],
) -> np.ndarray:
    """Average precision of each query's mechanism-of-action retrieval from a reference library (copairs).

    Each query profile (e.g. the predicted change of a new compound) ranks the
    reference profiles (the measured changes of the training compounds) by
    cosine similarity; positives are references of other compounds sharing
    a mechanism with the query (mechanisms joined by ``|`` are several
    labels), negatives references of other compounds sharing none. Returns
    one value per query, NaN for a query without a mechanism, without a
    positive, or with a profile of all zeros (it has no direction).
    """
    queries = np.asarray(queries, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    out = np.full(len(queries), np.nan)

    def labels(moa: Sequence[str | None]) -> list[list[str] | None]:
        return [sorted(set(str(m).split("|"))) if isinstance(m, str) and m else None for m in moa]

    q_lab, r_lab = labels(query_moa), labels(reference_moa)
    q_ok = np.array([lab is not None for lab in q_lab]) & (np.linalg.norm(queries, axis=1) > 1e-12)
    r_ok = np.array([lab is not None for lab in r_lab]) & (
        np.linalg.norm(references, axis=1) > 1e-12
    )
    if not q_ok.any() or r_ok.sum() < 2:
        return out
    meta = pd.DataFrame(
        {
            "compound": [
                *np.asarray(query_compounds, dtype=object)[q_ok],
                *np.asarray(reference_compounds, dtype=object)[r_ok],
            ],
            "moa": [lab for lab, k in zip(q_lab, q_ok, strict=True) if k]
            + [lab for lab, k in zip(r_lab, r_ok, strict=True) if k],
            "role": ["query"] * int(q_ok.sum()) + ["reference"] * int(r_ok.sum()),
        }
    )
    meta["row"] = np.arange(len(meta))
    feats = np.vstack([queries[q_ok], references[r_ok]])
    from copairs.map import multilabel

    try:
        ap = multilabel.average_precision(
            meta,
            feats,
            pos_sameby=["moa"],
            pos_diffby=["compound", "role"],
            neg_sameby=[],
            neg_diffby=["moa", "compound", "role"],
            multilabel_col="moa",
            progress_bar=False,
        )
    except Exception as e:  # copairs raises when no pair qualifies
        logger.warning("mechanism retrieval could not be scored (%s)", e)
        return out
    # a query with several mechanisms gets one AP per mechanism: their mean is its AP
    ap = ap[ap["role"] == "query"]
    per_row = (
        pd.to_numeric(ap["average_precision"], errors="coerce").groupby(ap["row"].to_numpy()).mean()
    )
    values = np.full(int(q_ok.sum()), np.nan)
    values[per_row.index.to_numpy(dtype=int)] = per_row.to_numpy()
    out[q_ok] = values
    return out


# ----------------------------------------------------------------------------- run
def run_chemical(
    out: str | Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    variant: str | None = None,
    split: str | None = None,
    compound_key: str | None = None,
    dose_key: str | None = None,
    smiles_key: str | None = None,
    control_label: str | None = None,
    plate_key: str | None = None,
    moa_key: str | None = None,
    dose_unit: str | None = None,
) -> dict[str, Any]:
    """Run the chemical benchmark (see the module docstring); writes results into ``out``."""
    out = Path(out)
    split = split or variant or "unseen-compound"
    if split not in CHEMICAL_SPLITS:
        msg = f"chemical splits are {list(CHEMICAL_SPLITS)}; got {split!r}."
        raise ValueError(msg)
    dataset = dataset or "lincs_cellpainting_a549"
    options = {
        "compound_key": compound_key,
        "dose_key": dose_key,
        "smiles_key": smiles_key,
        "control_label": control_label,
        "plate_key": plate_key,
        "moa_key": moa_key,
        "dose_unit": dose_unit,
    }
    table, schema, name = _load(dataset, options)
    models = list(models or _MODELS[split])
    unknown = [m for m in models if m not in CHEMICAL_MODELS and m not in CHEMICAL_PEERS]
    if unknown:
        msg = f"Unknown chemical model(s) {unknown}; choose from {sorted(CHEMICAL_MODELS)} or the peers {sorted(CHEMICAL_PEERS)}."
        raise ValueError(msg)
    if split == "unseen-compound" and "dose-interpolation" in models:
        msg = "dose-interpolation predicts measured compounds only; it has no place in the unseen-compound split."
        raise ValueError(msg)
    per_seed: dict[str, dict[str, list[float]]] = {
        m: {k: [] for k in (*_METRICS, "map_moa", "coverage_90")} for m in models
    }
    ceiling: list[float] = []
    wall = dict.fromkeys(models, 0.0)
    peak = dict.fromkeys(models, 0.0)
    rows: list[dict[str, Any]] = []
    choices: list[dict[str, Any]] = []
    peer_runs: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        masks = _splits(table, split, int(seed))
        held = np.zeros(len(table.compounds), dtype=bool)
        for m in masks:
            held |= m
        preds = {m: np.zeros_like(table.delta) for m in models}
        covered = {m: [] for m in models}
        ap = {m: np.full(len(table.compounds), np.nan) for m in (*models, "observed")}
        for fold, test in enumerate(masks):
            train = table.subset(~test)
            test_t = table.subset(test)
            compounds = test_t.compounds.tolist()
            # held-out compounds are asked for by structure, as a user would ask for a new one
            query = compounds if split == "unseen-dose" else [table.smiles[c] for c in compounds]
            for m in models:
                with ResourceMeter() as meter:
                    if m in CHEMICAL_PEERS:
                        model = CHEMICAL_PEERS[m](seed=int(seed))
                    elif m == "aivc-chem":
                        model = CHEMICAL_MODELS[m](seed=int(seed))
                    else:
                        model = CHEMICAL_MODELS[m]()
                    model.fit(train)
                    if m == "aivc-chem":
                        interval = model.predict_interval(query, test_t.doses, level=0.9)
                        pred, lo, hi = interval.arrays()
                        covered[m].append(((test_t.delta >= lo) & (test_t.delta <= hi)).ravel())
                        choices.append(
                            {
                                "seed": int(seed),
                                "fold": fold,
                                **{f: v["chosen"] for f, v in model.selection_.items()},
                            }
                        )
                    else:
                        pred = model.predict_delta(query, test_t.doses).to_numpy()
                    if m in CHEMICAL_PEERS:
                        info = model.peer_info_
                        peer_runs.setdefault(
                            m, {k: info.get(k) for k in ("version", "torch", "steps", "config")}
                        )
                        peer_runs[m].setdefault("train_seconds", []).append(
                            info.get("train_seconds")
                        )
                wall[m] += meter.wall_seconds
                peak[m] = max(peak[m], meter.peak_increase_mb)
                preds[m][test] = pred
            # mechanism retrieval: each held-out profile queries the measured training profiles
            ref = (train.delta, train.compounds, [table.moa.get(c) for c in train.compounds])
            q_moa = [table.moa.get(c) for c in compounds]
            ap["observed"][test] = mechanism_ap(test_t.delta, test_t.compounds, q_moa, *ref)
            for m in models:
                ap[m][test] = mechanism_ap(preds[m][test], test_t.compounds, q_moa, *ref)
        obs = table.delta[held]
        ceiling.append(
            float(np.nanmean(ap["observed"][held]))
            if np.isfinite(ap["observed"][held]).any()
            else float("nan")
        )
        for m in models:
            scores = condition_scores(obs, preds[m][held])
            for k in _METRICS:
                per_seed[m][k].append(float(scores[k].mean()))
            per_seed[m]["map_moa"].append(
                float(np.nanmean(ap[m][held])) if np.isfinite(ap[m][held]).any() else float("nan")
            )
            per_seed[m]["coverage_90"].append(
                float(np.concatenate(covered[m]).mean()) if covered[m] else float("nan")
            )
            for i, (c, d) in enumerate(zip(table.compounds[held], table.doses[held], strict=True)):
                rows.append(
                    {
                        "seed": int(seed),
                        "model": m,
                        "compound": c,
                        "dose_um": float(d),
                        **{k: float(scores[k][i]) for k in _METRICS},
                    }
                )
    result_models = {m: {k: summarize(v) for k, v in per_seed[m].items()} for m in models}
    n_test = len({(r["compound"], r["dose_um"]) for r in rows})
    result = {
        "task": "chemical",
        "dataset": name,
        "variant": split,
        "description": (
            "Predict the profile change of a compound at a dose from its structure and dose "
            f"({split}: {'held-out compounds, all doses' if split == 'unseen-compound' else 'one held-out dose per compound'})"
        ),
        "split": {
            "kind": split,
            "seeds": [int(s) for s in seeds],
            "folds": FOLDS if split == "unseen-compound" else 1,
            "n_conditions": len(table.compounds),
            "n_compounds": len(set(table.compounds)),
            "n_held_out_conditions": n_test,
            "n_features": len(table.features),
        },
        "schema": schema.to_dict(),
        "models": result_models,
        "ceiling": {
            "map_moa": summarize(ceiling),
            "note": "map_moa of the measured profiles of the same held-out conditions against the same references",
        },
        "replicate": {"map_moa": summarize(ceiling)},
        "aivc_chem_choices": choices,
        "peers": peer_runs,
        "metrics": {
            "pearson_delta": {
                "higher_is_better": True,
                "description": "Pearson r of predicted and observed change over all features, per condition",
            },
            "pearson_delta_top20": {
                "higher_is_better": True,
                "description": "Pearson r on the 20 features with the largest observed |change| of the condition",
            },
            "mse_top20": {
                "higher_is_better": False,
                "description": "mean squared error on those 20 features",
            },
            "mse": {
                "higher_is_better": False,
                "description": "mean squared error over all features",
            },
            "map_moa": {
                "higher_is_better": True,
                "description": "mAP of mechanism-of-action retrieval: each predicted held-out profile ranks the measured training profiles of other compounds (copairs, cosine)",
            },
            "coverage_90": {
                "higher_is_better": None,
                "description": "share of held-out changes inside the 90% interval (target 0.85-0.95)",
            },
        },
        "wall_seconds": {k: round(v, 3) for k, v in wall.items()},
        "peak_memory_mb": {k: round(v, 1) for k, v in peak.items()},
        "peak_memory_note": "largest increase of resident memory during one fit+predict",
        "machine": machine_info(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(pd.DataFrame(rows), out / "per_condition.csv")
    write_results(out, result, chemical_markdown(result))
    return result


def chemical_markdown(result: dict[str, Any]) -> str:
    """A readable table of a ``chemical`` ``results.json``."""
    s = result["split"]
    lines = [
        f"# chemical on {result['dataset']} ({s['kind']})",
        "",
        result["description"] + ".",
        "",
        f"{s['n_held_out_conditions']} held-out conditions of {s['n_conditions']} ({s['n_compounds']} compounds, "
        f"{s['n_features']} features); seeds {s['seeds']}; mean ± sd over seeds.",
        "",
        "| model | pearson_delta ↑ | pearson_delta_top20 ↑ | mse_top20 ↓ | mse ↓ | map_moa ↑ | coverage_90 | wall s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in result["models"].items():
        cells = [
            fmt_summary(e[k])
            for k in (
                "pearson_delta",
                "pearson_delta_top20",
                "mse_top20",
                "mse",
                "map_moa",
                "coverage_90",
            )
        ]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {result['wall_seconds'].get(name, 0):.1f} | {result['peak_memory_mb'].get(name, 0):.0f} |"
        )
    lines.append(
        f"| observed (ceiling) | | | | | {fmt_summary(result['ceiling']['map_moa'])} | | | |"
    )
    picks = pd.DataFrame(result.get("aivc_chem_choices", []))
    if not picks.empty:
        lines += ["", "aivc-chem's choices on the training data (fits):", ""]
        for fam in ("seen", "unseen"):
            if fam in picks:
                counts = picks[fam].value_counts()
                lines.append(
                    f"- {'measured compound, new dose' if fam == 'seen' else 'new compound'}: "
                    + ", ".join(f"{k} ×{v}" for k, v in counts.items())
                )
    for peer, info in result.get("peers", {}).items():
        seconds = [v for v in info.get("train_seconds", []) if v is not None]
        unit = _PEER_STEPS.get(peer, "steps")
        torch = f", torch {info['torch']}" if info.get("torch") else ""
        lines += [
            "",
            f"{peer} {info.get('version') or ''}{torch}: trained from scratch in its own environment "
            f"for {info.get('steps')} {unit} per fit"
            + (f", {np.mean(seconds):.0f} s of training per fit" if seconds else "")
            + ".",
        ]
    m = result["machine"]
    lines += ["", f"Machine: {m['cpus']} CPUs, Python {m['python']}, aivc {m['aivc']}.", ""]
    return "\n".join(lines)


register_task(
    Task(
        name="chemical",
        description="Predict a compound's profile change at a dose from its structure (unseen compound or unseen dose)",
        datasets=("lincs_cellpainting_a549",),
        models=_MODELS["unseen-dose"],
        seeds=(0, 1, 2),
        run=run_chemical,
        variants=CHEMICAL_SPLITS,
        options=(
            "split",
            "compound_key",
            "dose_key",
            "smiles_key",
            "control_label",
            "plate_key",
            "moa_key",
            "dose_unit",
        ),
    )
)
