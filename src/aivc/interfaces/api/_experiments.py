"""Calls into :mod:`aivc.experiments` for the interfaces: screens, proposals, the ledger.

Each function turns a request into one call of the experiments API, or its
result into JSON-ready records; the science lives in :mod:`aivc.experiments`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from aivc.experiments import CalibrationCurve, CellEmbedding, PredictedChanges, Proposals
    from aivc.instruments import PerturbationModel

__all__ = [
    "calibration",
    "embedding",
    "ledger_project",
    "ledger_projects",
    "prediction",
    "proposals",
    "screen",
]


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if np.isfinite(f) else None


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = df.astype(object).where(pd.notna(df), None).to_dict(orient="records")
    for row in out:
        for k, v in row.items():
            if isinstance(v, np.generic):
                row[k] = v.item()
            elif isinstance(v, float) and not np.isfinite(v):
                row[k] = None
            elif hasattr(v, "isoformat"):
                row[k] = v.isoformat()
    return out


def screen(
    model: PerturbationModel,
    *,
    objective: str,
    candidates: Sequence[str] | None = None,
    pairs_of: Sequence[str] | None = None,
    context: str | None = None,
    level: float = 0.9,
    top_k: int = 20,
    measured: Sequence[str] = (),
) -> dict[str, Any]:
    """A virtual screen with :func:`aivc.experiments._screen.screen`; the ``top_k`` best candidates.

    Without ``candidates`` or ``pairs_of``, the default candidates are screened
    as single perturbations (:func:`aivc.experiments.default_candidates`: the
    model's measured targets, those of ``measured`` included, and the genes of
    its panel with prior knowledge).
    """
    from aivc.experiments import default_candidates
    from aivc.experiments._screen import screen as run_screen

    if candidates is None and pairs_of is None:
        chosen = default_candidates(model, measured=measured)
        candidates, described = list(chosen.labels), chosen.description
    elif pairs_of is not None:
        described = f"candidates: every pair of {len(pairs_of)} given genes"
    else:
        described = f"candidates: {len(candidates or [])} given"
    res = run_screen(
        model,
        candidates=None if pairs_of is not None else list(candidates or []),
        pairs_of=None if pairs_of is None else list(pairs_of),
        objective=objective,
        context=context,
        level=level,
    )
    table = res.table.head(top_k).rename(columns={"candidate": "perturbation"})
    return {
        "objective": res.objective,
        "uncertainty": res.uncertainty,
        "pair_method": res.pair_method,
        "n_candidates": len(res.table),
        "seconds": round(res.seconds, 3),
        "candidates": described,
        "description": f"{len(res.table)} candidates ranked by {res.objective} "
        f"(higher is better); {res.uncertainty}; {described}",
        "ranking": _records(table),
    }


def prediction(
    res: PredictedChanges,
    i: int,
    *,
    model: PerturbationModel,
    heldout: bool,
    top_k: int,
    all_genes: bool,
    embedding: tuple[tuple[int, int], CellEmbedding] | None = None,
) -> dict[str, Any]:
    """Perturbation ``i`` of :func:`aivc.experiments.predict_with_observed` as a JSON record.

    The ``top_k`` genes of largest change (with interval, DE call and observed
    change where there are some), the genes called DE, the agreement with the
    observed change; with ``all_genes`` every gene's values and the states
    placed in ``embedding`` (its ``(n_cells, seed)`` and the embedding).
    """
    p = res.perturbations[i]
    row = res.summary.iloc[i]
    measured = bool(row["measured"])
    top = []
    for g in res.top_genes(i, top_k).itertuples(index=False):
        gene = {"gene": g.gene, "delta": float(g.delta)}
        if res.has_intervals:
            gene["lower"], gene["upper"], gene["de"] = float(g.lower), float(g.upper), g.call
        if measured:
            gene["observed"] = _finite(g.observed)
        top.append(gene)
    de = res.de_genes(i)
    item: dict[str, Any] = {
        "perturbation": p,
        "context": res.context,
        "measured": measured,
        "observed_source": row["observed_source"],
        "n_observed_cells": int(row["n_observed_cells"]),
        "in_training": bool(row["in_training"]),
        "heldout": heldout,
        "top_genes": top,
        # A gene is called differentially expressed when its interval excludes no change.
        "de_genes": (
            None
            if de is None
            else [
                {"gene": g.gene, "delta": float(g.delta), "call": g.call}
                for g in de.itertuples(index=False)
            ]
        ),
    }
    if measured:
        item["pearson_observed"] = _finite(row["pearson_observed"])
        if res.has_intervals:
            item["interval_coverage"] = _finite(row["interval_coverage"])
    if all_genes:
        obs_row = res.observed[i] if measured else None
        item["genes"] = res.genes
        item["delta"] = np.round(res.delta[i], 5).tolist()
        if res.lower is not None and res.upper is not None:
            item["lower"] = np.round(res.lower[i], 5).tolist()
            item["upper"] = np.round(res.upper[i], 5).tolist()
        if obs_row is not None:
            item["observed"] = [_finite(v) for v in np.round(obs_row, 5)]
        placed = None
        if embedding is not None:
            (n_cells, seed), emb = embedding
            states = emb.place(model, res.delta[i], context=res.context, observed=obs_row)
            if states is not None:
                placed = {
                    "n_cells": n_cells,
                    "seed": seed,
                    **{
                        k: None if v is None else np.round(v, 4).tolist() for k, v in states.items()
                    },
                }
        item["embedding"] = placed
    return item


def embedding(emb: CellEmbedding, *, dataset: str) -> dict[str, Any]:
    """A :func:`aivc.experiments.cell_embedding` as JSON (coordinates rounded to 4 digits)."""
    return {
        "dataset": dataset,
        "method": emb.method,
        "n_cells": emb.n_cells,
        "seed": emb.seed,
        "explained_variance_ratio": emb.explained_variance_ratio.tolist(),
        "x": np.round(emb.xy[:, 0], 4).tolist(),
        "y": np.round(emb.xy[:, 1], 4).tolist(),
        "perturbation": emb.perturbation.tolist(),
        "context": None if emb.context is None else emb.context.tolist(),
    }


def calibration(curve: CalibrationCurve, *, model_id: str) -> dict[str, Any]:
    """A :func:`aivc.experiments.calibration_curve` as JSON."""
    return {
        "model": model_id,
        "levels": curve.levels,
        "coverage": curve.coverage,
        "n_perturbations": len(curve.conditions),
        "perturbations": curve.perturbations,
    }


def proposals(result: Proposals) -> dict[str, Any]:
    """The proposals of :func:`aivc.experiments.propose_next` as JSON-ready records."""
    return {
        "strategy": result.strategy,
        "description": f"{result.description} {result.candidates[:1].upper()}{result.candidates[1:]}."
        if result.candidates
        else result.description,
        "n_candidates": result.n_candidates,
        "n_measured": result.n_measured,
        "candidates": result.candidates,
        "proposals": _records(result.table),
    }


def ledger_projects(url: str) -> list[dict[str, Any]]:
    """Projects of the experiment ledger at ``url`` (see :class:`aivc.experiments._ledger.Ledger`).

    The ledger is only read (``upgrade=False``): a missing or older ledger
    raises :class:`aivc.experiments._ledger.LedgerSchemaError`.
    """
    from aivc.experiments._ledger import Ledger

    led = Ledger(url, upgrade=False)
    try:
        out = led.list_projects()
    finally:
        led.close()
    for p in out:
        if hasattr(p.get("created_at"), "isoformat"):
            p["created_at"] = p["created_at"].isoformat()
    return out


def ledger_project(url: str, name: str) -> dict[str, Any]:
    """One project of the ledger: state, rounds, proposals and measured results (read only)."""
    from aivc.experiments._ledger import Ledger

    led = Ledger(url, upgrade=False)
    try:
        return {
            "name": name,
            "state": led.state(name),
            "rounds": _records(led.rounds(name)),
            "proposals": _records(led.proposals(name)),
            "results": _records(led.results(name)),
        }
    finally:
        led.close()
