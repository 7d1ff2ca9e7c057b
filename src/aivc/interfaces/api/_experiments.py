"""Calls into :mod:`aivc.experiments` for the interfaces: screens, proposals, the ledger.

Each function turns a request into one call of the experiments API and its
result into JSON-ready records; the science lives in :mod:`aivc.experiments`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from aivc.instruments import PerturbationModel

__all__ = ["ledger_project", "ledger_projects", "propose", "screen"]


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
) -> dict[str, Any]:
    """A virtual screen with :func:`aivc.experiments._screen.screen`; the ``top_k`` best candidates.

    Without ``candidates`` or ``pairs_of``, every measured gene of the model is
    screened as a single perturbation.
    """
    from aivc.experiments._screen import screen as run_screen

    if candidates is None and pairs_of is None:
        candidates = [str(g) for g in model.genes_]
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
        "description": f"{len(res.table)} candidates ranked by {res.objective} "
        f"(higher is better); {res.uncertainty}",
        "ranking": _records(table),
    }


def propose(
    model: PerturbationModel,
    observed: pd.DataFrame,
    *,
    strategy: str,
    batch_size: int,
    candidates: Sequence[str] | None = None,
    context: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Next experiments with :func:`aivc.experiments._acquisition.propose`.

    As in the lab loop (:func:`aivc.experiments._loop.run_loop`), a strategy
    sees the model's predicted change of every candidate as features and the
    measured effect sizes (root-mean-square change of log-expression) of the
    candidates already measured (rows of ``observed``) as feedback; the
    predicted effect size is the prior of strategies that use one.
    """
    from aivc.experiments._acquisition import STRATEGIES
    from aivc.experiments._acquisition import propose as run_propose
    from aivc.experiments._loop import _effect

    if strategy not in STRATEGIES:
        msg = f"Unknown strategy {strategy!r}; expected one of {sorted(STRATEGIES)}."
        raise KeyError(msg)
    cands = list(dict.fromkeys(candidates if candidates is not None else map(str, model.genes_)))
    measured = [c for c in cands if c in observed.index]
    delta = model.predict_delta(cands, contexts=context)
    predicted_effect = _effect(delta)
    index = {c: i for i, c in enumerate(cands)}
    idx = np.asarray([index[c] for c in measured], dtype=int)
    y = _effect(observed.loc[measured].to_numpy(dtype=float)) if measured else np.zeros(0)
    n_open = len(cands) - len(measured)
    if n_open == 0:
        msg = "Every candidate has been measured already; pass other candidates."
        raise ValueError(msg)
    chosen = run_propose(
        strategy,
        features=delta,
        measured_idx=idx,
        measured_y=y,
        batch_size=min(batch_size, n_open),
        rng=np.random.default_rng(seed),
        prior=predicted_effect,
    )
    spec = STRATEGIES[strategy]
    rows = [
        {
            "perturbation": cands[int(i)],
            "predicted_effect": float(predicted_effect[int(i)]),
            "reason": f"{strategy}: predicted RMS change {predicted_effect[int(i)]:.3f}",
        }
        for i in chosen
    ]
    return {
        "strategy": strategy,
        "description": f"{spec.description} Learned from {len(measured)} measured of "
        f"{len(cands)} candidates.",
        "n_candidates": len(cands),
        "n_measured": len(measured),
        "proposals": rows,
    }


def ledger_projects(url: str) -> list[dict[str, Any]]:
    """Projects of the experiment ledger at ``url`` (see :class:`aivc.experiments._ledger.Ledger`)."""
    from aivc.experiments._ledger import Ledger

    led = Ledger(url)
    try:
        out = led.list_projects()
    finally:
        led.close()
    for p in out:
        if hasattr(p.get("created_at"), "isoformat"):
            p["created_at"] = p["created_at"].isoformat()
    return out


def ledger_project(url: str, name: str) -> dict[str, Any]:
    """One project of the ledger: state, rounds, proposals and measured results."""
    from aivc.experiments._ledger import Ledger

    led = Ledger(url)
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
