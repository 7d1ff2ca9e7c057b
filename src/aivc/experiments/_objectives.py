"""Objectives of virtual screens: what a perturbation should do to the cell.

An :class:`Objective` turns predicted mean profiles (conditions x genes,
log-expression) into one score per condition, **higher is better**, and,
given per-gene intervals, into a pessimistic score (the lowest score any
profile inside the interval box can have, or a stated stand-in for custom
objectives) used to rank with uncertainty taken into account.

Built-in objectives (:func:`make_objective` parses them from text):

``"up:GENE"`` / ``"up:GENE1,GENE2"``
    Raise the mean log-expression of a gene (or of a gene set, averaged).
``"down:GENE"``
    Lower it.
``"towards:STATE"``
    Move the cell towards a target state; the score is minus the
    root-mean-square distance over genes to the target profile. ``STATE`` is
    a context (cell type) whose control mean the model knows, or a target
    given as a vector or as the mean of reference cells (:meth:`Objective.towards`,
    :meth:`Objective.towards_cells`).
custom
    Any callable ``f(mean) -> scores`` on predicted mean profiles
    (:meth:`Objective.custom`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from aivc._labels import check_known

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["Objective", "make_objective", "reference_states"]


def _gene_index(genes: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    pos = {g: i for i, g in enumerate(genes)}
    check_known(
        wanted,
        pos,
        what="objective gene",
        known_as="genes the model measures",
        advice="Name measured genes.",
        error=ValueError,
    )
    return np.asarray([pos[g] for g in wanted], dtype=int)


@dataclass
class Objective:
    """A screen objective; build it with :meth:`up`, :meth:`down`, :meth:`towards`,
    :meth:`towards_cells`, :meth:`custom` or :func:`make_objective`.

    Attributes
    ----------
    name
        Readable description, e.g. ``"up:GATA1"``.
    kind
        ``"linear"`` (a weighted sum of genes), ``"towards"`` or ``"custom"``.
    weights
        Gene weights of a linear objective.
    target
        Target profile of a ``"towards"`` objective.
    func
        The callable of a custom objective.
    """

    name: str
    kind: str
    weights: np.ndarray | None = None
    target: np.ndarray | None = None
    func: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def up(cls, genes: str | Sequence[str], *, panel: Sequence[str]) -> Objective:
        """Raise the mean log-expression of ``genes`` (averaged over a gene set)."""
        names = [genes] if isinstance(genes, str) else list(genes)
        w = np.zeros(len(panel))
        w[_gene_index(panel, names)] = 1.0 / len(names)
        return cls(name="up:" + ",".join(names), kind="linear", weights=w)

    @classmethod
    def down(cls, genes: str | Sequence[str], *, panel: Sequence[str]) -> Objective:
        """Lower the mean log-expression of ``genes``."""
        obj = cls.up(genes, panel=panel)
        return cls(name="down:" + obj.name[3:], kind="linear", weights=-obj.weights)

    @classmethod
    def towards(cls, target: np.ndarray, *, name: str = "towards:target") -> Objective:
        """Move towards the profile ``target`` (one value per measured gene, log-expression)."""
        t = np.asarray(target, dtype=np.float64).ravel()
        if not np.isfinite(t).all():
            msg = "The target profile holds NaN or infinite values; pass finite log-expression values."
            raise ValueError(msg)
        return cls(name=name, kind="towards", target=t)

    @classmethod
    def towards_cells(
        cls,
        adata: AnnData,
        *,
        genes: Sequence[str],
        mask: np.ndarray | None = None,
        name: str = "towards:cells",
    ) -> Objective:
        """Move towards the mean of reference cells (log-normalised ``adata.X``, rows in ``mask``)."""
        from aivc.data import check_gene_panel

        idx = check_gene_panel(adata.var_names, list(genes))
        rows = np.ones(adata.n_obs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if rows.sum() == 0:
            msg = "No reference cells were selected for the target state; select at least one cell."
            raise ValueError(msg)
        x = adata.X[rows][:, idx]
        return cls.towards(np.asarray(x.mean(axis=0)).ravel(), name=name)

    @classmethod
    def custom(
        cls, func: Callable[[np.ndarray], np.ndarray], *, name: str | None = None
    ) -> Objective:
        """Any vectorised ``func(mean_profiles) -> scores`` (higher is better)."""
        if not callable(func):
            msg = f"A custom objective must be callable. Got {type(func).__name__} instead."
            raise TypeError(msg)
        return cls(
            name=name or f"custom:{getattr(func, '__qualname__', 'objective')}",
            kind="custom",
            func=func,
        )

    # ------------------------------------------------------------------ scoring
    def check(self, n_genes: int) -> None:
        """Check the objective fits a model with ``n_genes`` measured genes."""
        arr = self.weights if self.kind == "linear" else self.target
        if arr is not None and arr.shape != (n_genes,):
            msg = f"Objective {self.name!r} is defined on {arr.shape[0]} genes; the model measures {n_genes}."
            raise ValueError(msg)

    def score(self, mean: np.ndarray) -> np.ndarray:
        """One score per row of predicted mean profiles (higher is better)."""
        if self.kind == "linear":
            return mean @ self.weights
        if self.kind == "towards":
            return -np.sqrt(np.mean(np.square(mean - self.target), axis=1))
        out = np.asarray(self.func(mean), dtype=np.float64).ravel()
        if out.shape != (mean.shape[0],):
            msg = f"Objective {self.name!r} returned shape {out.shape}; expected one score per profile ({mean.shape[0]},)."
            raise ValueError(msg)
        return out

    def pessimistic(self, mean: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """The lowest score over the per-gene box ``[lower, upper]`` of each row.

        Exact for the built-in objectives: a linear objective takes each gene's
        bound on its unfavourable side; ``towards`` takes each gene's bound
        farthest from the target. For a custom objective it is the smallest of
        the scores of ``lower``, ``mean`` and ``upper`` (the box's corners in
        between are not searched).
        """
        if self.kind == "linear":
            w = self.weights
            return lower @ np.clip(w, 0, None) + upper @ np.clip(w, None, 0)
        if self.kind == "towards":
            far = np.maximum(np.abs(lower - self.target), np.abs(upper - self.target))
            return -np.sqrt(np.mean(np.square(far), axis=1))
        return np.minimum(np.minimum(self.score(lower), self.score(mean)), self.score(upper))

    def optimistic(self, mean: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """The highest score over the box (``-pessimistic`` of the reversed objective)."""
        if self.kind == "linear":
            w = self.weights
            return upper @ np.clip(w, 0, None) + lower @ np.clip(w, None, 0)
        if self.kind == "towards":
            near = np.where(
                (lower <= self.target) & (self.target <= upper),
                0.0,
                np.minimum(np.abs(lower - self.target), np.abs(upper - self.target)),
            )
            return -np.sqrt(np.mean(np.square(near), axis=1))
        return np.maximum(np.maximum(self.score(lower), self.score(mean)), self.score(upper))

    def bounds(
        self, mean: np.ndarray, lower: np.ndarray, upper: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(pessimistic, optimistic)`` scores, scoring each profile of a custom objective once."""
        if self.kind != "custom":
            return self.pessimistic(mean, lower, upper), self.optimistic(mean, lower, upper)
        scores = np.stack([self.score(lower), self.score(mean), self.score(upper)])
        return scores.min(axis=0), scores.max(axis=0)

    def fingerprint(self) -> str:
        """A digest that changes when the objective does (for checkpoints)."""
        h = hashlib.sha256(f"{self.name}|{self.kind}".encode())
        for arr in (self.weights, self.target):
            if arr is not None:
                h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "fingerprint": self.fingerprint()}


def reference_states(adata: AnnData, key: str, *, genes: Sequence[str]) -> dict[str, np.ndarray]:
    """Mean profile of each group of reference cells (``adata.obs[key]``), over ``genes``.

    ``adata.X`` should be log-normalised like the model's training data; raw
    counts (all integers) are library-size normalised to 10,000 and ``log1p``-ed.
    The means are targets for ``"towards:<group>"`` objectives.
    """
    from aivc.data import check_gene_panel, log_normalize

    if key not in adata.obs:
        msg = (
            f"The reference cells have no obs column {key!r}; they have {list(adata.obs.columns)}."
        )
        raise ValueError(msg)
    idx = check_gene_panel(adata.var_names, list(genes))
    x = adata.X
    values = x.data if hasattr(x, "data") and not isinstance(x, np.ndarray) else np.asarray(x)
    if values.size and np.all(np.mod(values, 1) == 0) and float(values.max()) > 20:
        x, _ = log_normalize(x)
    x = x[:, idx]
    labels = adata.obs[key].astype(str).to_numpy()
    return {
        str(g): np.asarray(x[labels == g].mean(axis=0), dtype=np.float64).ravel()
        for g in sorted(set(labels))
    }


def make_objective(
    spec: str | Objective | Callable[[np.ndarray], np.ndarray],
    *,
    genes: Sequence[str],
    states: dict[str, np.ndarray] | None = None,
) -> Objective:
    """Parse an objective: ``"up:GENE[,GENE...]"``, ``"down:GENE"``, ``"towards:STATE"``, or pass a callable.

    Parameters
    ----------
    spec
        The objective text, an :class:`Objective`, or a callable on mean profiles.
    genes
        The model's measured genes (columns of the predicted profiles).
    states
        Named target states for ``"towards:NAME"`` (e.g. the control mean of each
        context the model was trained on).
    """
    if isinstance(spec, Objective):
        return spec
    if callable(spec):
        return Objective.custom(spec)
    if not isinstance(spec, str) or ":" not in spec:
        msg = f"An objective must look like 'up:GENE', 'down:GENE' or 'towards:STATE'. Got {spec!r} instead."
        raise ValueError(msg)
    kind, _, arg = spec.partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    if not arg:
        msg = f"The objective {spec!r} names no gene or state after ':'."
        raise ValueError(msg)
    if kind in ("up", "down"):
        names = [g.strip() for g in arg.split(",") if g.strip()]
        return (
            Objective.up(names, panel=genes) if kind == "up" else Objective.down(names, panel=genes)
        )
    if kind == "towards":
        states = states or {}
        if arg not in states:
            msg = (
                f"Unknown target state {arg!r}; the model knows the states {sorted(states)}. Name one of "
                "them, or build the objective from reference cells with Objective.towards_cells."
            )
            raise ValueError(msg)
        return Objective.towards(states[arg], name=spec)
    msg = f"Unknown objective kind {kind!r} in {spec!r}; expected 'up', 'down' or 'towards'."
    raise ValueError(msg)
