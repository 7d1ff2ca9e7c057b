"""Deterministic, seeded train/test splits over perturbations and contexts.

A :class:`Split` names the conditions held out for testing; everything else
(controls always included) is training data. Splits are saved as JSON with
every result so a table can be reproduced exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aivc.data._schema import PerturbationSchema

__all__ = [
    "Split",
    "combination_splits",
    "kfold_perturbations",
    "leave_one_context_out",
    "leave_one_double_out",
    "load_splits",
    "save_splits",
]


@dataclass(frozen=True)
class Split:
    """One train/test split.

    Attributes
    ----------
    name
        E.g. ``"seed0-fold2"``.
    kind
        The split family (``"leave-perturbations-out"``...).
    seed
        Seed that produced it.
    test_perturbations
        Perturbation labels held out (in ``test_contexts`` when given, everywhere otherwise).
    train_perturbations
        Perturbation labels available for training (controls are always included).
    test_contexts
        Contexts whose perturbed cells are held out (``None``: not context-based).
    categories
        Optional label of each test perturbation (e.g. ``"seen 1/2"`` for doubles).
    test_conditions
        Held-out (perturbation, context) conditions, as condition labels, when the
        split holds out pairs rather than whole perturbations or contexts: only
        those conditions leave training (``None``: not pair-based).
    """

    name: str
    kind: str
    seed: int
    test_perturbations: tuple[str, ...]
    train_perturbations: tuple[str, ...]
    test_contexts: tuple[str, ...] | None = None
    categories: dict[str, str] = field(default_factory=dict)
    test_conditions: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["test_perturbations"] = list(self.test_perturbations)
        d["train_perturbations"] = list(self.train_perturbations)
        d["test_contexts"] = None if self.test_contexts is None else list(self.test_contexts)
        d["test_conditions"] = None if self.test_conditions is None else list(self.test_conditions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Split:
        tc = d.get("test_contexts")
        tcond = d.get("test_conditions")
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            seed=int(d["seed"]),  # type: ignore[arg-type]
            test_perturbations=tuple(d["test_perturbations"]),  # type: ignore[arg-type]
            train_perturbations=tuple(d["train_perturbations"]),  # type: ignore[arg-type]
            test_contexts=None if tc is None else tuple(tc),  # type: ignore[arg-type]
            categories=dict(d.get("categories") or {}),  # type: ignore[arg-type]
            test_conditions=None if tcond is None else tuple(tcond),  # type: ignore[arg-type]
        )


def _non_control(perturbations: Sequence[str], schema: PerturbationSchema) -> list[str]:
    return sorted({str(p) for p in perturbations} - {schema.control_label})


def kfold_perturbations(
    perturbations: Sequence[str],
    schema: PerturbationSchema,
    *,
    n_folds: int = 5,
    seeds: Sequence[int] = (0, 1, 2),
) -> list[Split]:
    """k-fold leave-perturbations-out: each perturbation is tested once per seed."""
    perts = _non_control(perturbations, schema)
    if len(perts) < n_folds:
        msg = f"k-fold needs at least n_folds={n_folds} perturbations; got {len(perts)}."
        raise ValueError(msg)
    out = []
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(perts))
        for f, idx in enumerate(np.array_split(order, n_folds)):
            test = sorted(perts[i] for i in idx)
            train = sorted(set(perts) - set(test))
            out.append(
                Split(
                    f"seed{seed}-fold{f}",
                    "leave-perturbations-out",
                    seed,
                    tuple(test),
                    tuple(train),
                )
            )
    return out


def leave_one_double_out(perturbations: Sequence[str], schema: PerturbationSchema) -> list[Split]:
    """Hold out one double at a time, over the doubles whose two singles are both measured.

    The other doubles and all singles stay in training.
    """
    perts = _non_control(perturbations, schema)
    singles = {p for p in perts if schema.order(p) == 1}
    doubles = [p for p in perts if schema.order(p) == 2 and set(schema.targets(p)) <= singles]
    if not doubles:
        msg = "No double perturbation has both of its singles measured; leave-one-double-out needs some."
        raise ValueError(msg)
    return [
        Split(f"double-{d}", "leave-one-double-out", 0, (d,), tuple(sorted(set(perts) - {d})))
        for d in sorted(doubles)
    ]


def combination_splits(
    perturbations: Sequence[str],
    schema: PerturbationSchema,
    *,
    test_single_fraction: float = 0.25,
    test_double_fraction: float = 0.5,
    seeds: Sequence[int] = (0, 1, 2),
) -> list[Split]:
    """GEARS-style combination splits.

    A fraction of singles is held out as unseen singles; a fraction of the
    doubles is held out and labelled by how many of their genes were seen as
    singles in training (``"seen 0/2"``, ``"seen 1/2"``, ``"seen 2/2"``).
    """
    perts = _non_control(perturbations, schema)
    singles = sorted(p for p in perts if schema.order(p) == 1)
    doubles = sorted(p for p in perts if schema.order(p) >= 2)
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        n_s = round(test_single_fraction * len(singles))
        test_singles = set(rng.choice(singles, n_s, replace=False)) if n_s else set()
        n_d = round(test_double_fraction * len(doubles))
        test_doubles = set(rng.choice(doubles, n_d, replace=False)) if n_d else set()
        train_singles = set(singles) - test_singles
        categories = {p: "unseen single" for p in test_singles}
        for d in test_doubles:
            seen = sum(t in train_singles for t in schema.targets(d))
            categories[d] = f"seen {seen}/{schema.order(d)}"
        test = sorted(test_singles | test_doubles)
        out.append(
            Split(
                f"seed{seed}",
                "combination",
                seed,
                tuple(test),
                tuple(sorted(set(perts) - set(test))),
                categories={k: categories[k] for k in sorted(categories)},
            )
        )
    return out


def leave_one_context_out(
    contexts: Sequence[str],
    perturbations: Sequence[str],
    schema: PerturbationSchema,
) -> list[Split]:
    """Hold out the perturbed cells of one context (cell type / line) at a time.

    The held-out context's control cells stay available: the task is to
    predict its perturbed state from them.
    """
    ctxs = sorted({str(c) for c in contexts})
    if len(ctxs) < 2:
        msg = f"leave-one-context-out needs at least 2 contexts; got {ctxs}."
        raise ValueError(msg)
    perts = tuple(_non_control(perturbations, schema))
    return [
        Split(f"context-{c}", "leave-one-context-out", 0, perts, perts, test_contexts=(c,))
        for c in ctxs
    ]


def save_splits(splits: Sequence[Split], path: str | Path) -> Path:
    """Write splits as JSON."""
    path = Path(path)
    path.write_text(json.dumps([s.to_dict() for s in splits], indent=2))
    return path


def load_splits(path: str | Path) -> list[Split]:
    """Read splits written by :func:`save_splits`."""
    return [Split.from_dict(d) for d in json.loads(Path(path).read_text())]
