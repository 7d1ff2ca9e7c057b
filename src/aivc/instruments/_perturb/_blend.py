"""The blend: the knowledge-kernel regression stacked with the simple baselines.

A user who would otherwise predict an unmeasured perturbation with the mean
change of the training perturbations, the mean change in the same context,
the same perturbation's change in other contexts, the sum of the measured
singles, a linear model on the training changes or the change of the nearest
training target in Gene Ontology space (for a target measured in other
contexts, the nearest training condition by target and context) must not do worse with
``aivc-perturb``. So those baselines are candidates inside the model, beside
the regression's own prediction (``"kernel"``: the stages before this one),
and the model predicts a convex combination of them, weighted per block of
genes, with weights fitted on held-out predictions of the training data only.

Three kinds of query are blended, each with held-out predictions made the way
such a query is made at prediction time:

``target``
    A single target never measured (in any context): the training targets
    are split into folds (every condition of a held-out target, combinations
    included, leaves the inner training data).
``pair``
    A single target measured in other contexts but not in the query's: the
    (target, context) pairs of targets measured in at least two contexts are
    split into folds.
``combination``
    A combination of targets: the training combinations are split into folds.

In each fold every candidate is refitted on the rest (the regression without
its cell generation; see :func:`held_out_candidates`). Genes are grouped into
blocks by how much they vary across the training changes (``n_blocks``
quantile blocks); in each block and kind the weights are the non-negative,
sum-to-one least-squares fit of the held-out changes. A kind with too few
held-out conditions (fewer than ``MIN_HELD_OUT``) keeps the regression alone.
The own gene of a never-measured target keeps the regression's own-gene model
(the baselines know nothing of it) and is left out of the weight fit.

Intervals of blended predictions (of a kind with at least
``MIN_CALIBRATION_UNITS`` held-out conditions; otherwise the regression's
calibration) are conformal in each (kind, stratum) group
(Mondrian; strata are deciles of the genes' sd across the training changes): the held-out residuals of the blend divided by the regression's
raw predictive sd, whose quantile is taken per group, with the finite-sample
correction of the number of held-out conditions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy.optimize import minimize

from aivc.instruments._perturb._state import FittedState

if TYPE_CHECKING:
    from anndata import AnnData

    from aivc.instruments._base import PerturbationSummary
    from aivc.instruments._manipulator import PerturbModel

__all__ = [
    "BLEND_KINDS",
    "Blend",
    "BlendState",
    "SimpleCandidates",
    "held_out_candidates",
    "simplex_least_squares",
    "variability_blocks",
]

#: Candidates of each kind of query, the regression first.
BLEND_KINDS: dict[str, tuple[str, ...]] = {
    "target": ("kernel", "control", "train-mean", "context-mean", "linear", "nearest-neighbour"),
    "pair": (
        "kernel",
        "control",
        "train-mean",
        "context-mean",
        "perturbation-elsewhere",
        "perturbation-plus-context",
        "linear",
        "nearest-neighbour",
    ),
    "combination": ("kernel", "control", "train-mean", "additive", "linear"),
}

#: Fewest held-out conditions for a kind to be blended (otherwise the regression alone).
MIN_HELD_OUT = 4
#: Inner folds of the nested cross-validation.
N_FOLDS = 5
#: Gene blocks (quantiles of the genes' variability across the training changes).
N_BLOCKS = 10
#: Most changed genes of each held-out condition whose error the weights also minimise.
N_TOP = 20
#: Fewest held-out conditions for the blend's own (Mondrian) intervals: a finite conformal
#: quantile at level 0.95 needs 19; with fewer, the regression's calibration is used.
MIN_CALIBRATION_UNITS = 20
#: Quantiles kept of each calibration group's scores.
N_QUANTILES = 1001

_NONE = "\x00none"


def _ctx(c: str | None) -> str:
    return _NONE if c is None else str(c)


def variability_blocks(
    delta: np.ndarray, n_blocks: int | None = None, *, centre: bool = False
) -> np.ndarray:
    """Block of each gene: quantile bin (0 = least) of how much it changes across ``delta``'s rows.

    ``centre=False``: the root mean square of its changes (how far from no
    change it moves; with one perturbation measured in several contexts, its
    effect size). ``centre=True``: the sd of its changes (how much they vary
    between conditions; the strata of the calibration report).
    """
    g = delta.shape[1]
    n_blocks = N_BLOCKS if n_blocks is None else n_blocks
    n_blocks = max(1, min(n_blocks, g // 20 or 1))
    if not len(delta):
        return np.zeros(g, dtype=np.int64)
    spread = delta.std(axis=0) if centre else np.sqrt(np.mean(delta**2, axis=0))
    ranks = np.argsort(np.argsort(np.nan_to_num(spread), kind="stable"), kind="stable")
    return (ranks * n_blocks // g).astype(np.int64)


def _normalised_gram(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``|a w - y|^2 = w'Qw - 2c'w + k``, divided by the best single candidate's error."""
    q, c, k = a.T @ a, a.T @ y, float(y @ y)
    best = float(np.min(np.diag(q) - 2 * c + k))
    best = max(best, 1e-12 * max(k, 1e-300))
    return q / best, c / best, k / best


def simplex_least_squares(
    a: np.ndarray, y: np.ndarray, a_top: np.ndarray | None = None, y_top: np.ndarray | None = None
) -> np.ndarray:
    """Weights ``w >= 0``, ``sum(w) = 1`` minimising ``|a w - y|^2`` (``a``: samples x candidates).

    With ``a_top`` / ``y_top`` (a subset of samples, e.g. each held-out
    condition's most changed genes), the sum of the two squared errors, each
    relative to the best single candidate's on the same samples, is minimised:
    a blend that wins on all genes by shrinking the strong changes is not
    preferred to one that also predicts them.
    """
    m = a.shape[1]
    if m == 1:
        return np.ones(1)
    q, c, _ = _normalised_gram(a, y)
    if a_top is not None and y_top is not None and len(y_top):
        q_top, c_top, _ = _normalised_gram(a_top, y_top)
        q, c = q + q_top, c + c_top
    scale = max(float(np.trace(q)) / m, 1e-300)
    q = q / scale + 1e-9 * np.eye(m)
    c = c / scale
    # start from the best single candidate, so the optimum is never worse than it
    errors = np.diag(q) - 2 * c
    w0 = np.zeros(m)
    w0[int(np.argmin(errors))] = 1.0
    res = minimize(
        lambda w: w @ q @ w - 2 * c @ w,
        w0,
        jac=lambda w: 2 * (q @ w - c),
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)}],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 200},
    )
    w = np.clip(res.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else w0
    if w @ q @ w - 2 * c @ w > w0 @ q @ w0 - 2 * c @ w0:
        return w0
    return w


@dataclass
class SimpleCandidates:
    """The simple baselines of a set of training conditions, as look-up tables.

    Attributes
    ----------
    train_mean
        Mean change of all conditions.
    single_mean
        Mean change of the single perturbations (the additive fallback).
    context_names, context_deltas
        Mean change of the conditions of each context.
    pair_names, pair_deltas
        Mean change of each single (target, context), over doses.
    """

    train_mean: np.ndarray
    single_mean: np.ndarray
    context_names: list[str]
    context_deltas: np.ndarray
    pair_names: list[list[str]]
    pair_deltas: np.ndarray
    _pairs: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    _contexts: dict[str, int] = field(default_factory=dict, repr=False)
    _targets: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._contexts = {c: i for i, c in enumerate(self.context_names)}
        self._pairs = {(t, c): i for i, (t, c) in enumerate(self.pair_names)}
        self._targets = {}
        for i, (t, _) in enumerate(self.pair_names):
            self._targets.setdefault(t, []).append(i)

    @classmethod
    def fit(cls, summary: PerturbationSummary) -> SimpleCandidates:
        schema = summary.schema
        delta = summary.delta
        orders = np.array([schema.order(p) for p in summary.perturbations])
        single = np.flatnonzero(orders == 1)
        ctx = [_ctx(c) for c in summary.contexts]
        names = sorted(set(ctx))
        context_deltas = np.stack(
            [delta[[i for i, c in enumerate(ctx) if c == n]].mean(0) for n in names]
        )
        pairs = sorted({(summary.perturbations[i], ctx[i]) for i in single})
        pos = {p: k for k, p in enumerate(pairs)}
        sums = np.zeros((len(pairs), delta.shape[1]))
        counts = np.zeros(len(pairs))
        for i in single:
            k = pos[(summary.perturbations[i], ctx[i])]
            sums[k] += delta[i]
            counts[k] += 1
        return cls(
            train_mean=delta.mean(axis=0),
            single_mean=delta[single].mean(axis=0) if len(single) else delta.mean(axis=0),
            context_names=names,
            context_deltas=context_deltas,
            pair_names=[list(p) for p in pairs],
            pair_deltas=sums / np.maximum(counts, 1)[:, None],
        )

    def _context_mean(self, context: str | None) -> np.ndarray:
        i = self._contexts.get(_ctx(context))
        return self.train_mean if i is None else self.context_deltas[i]

    def _elsewhere(self, target: str, context: str | None) -> np.ndarray | None:
        """The target's mean single change over the contexts other than ``context``."""
        rows = [i for i in self._targets.get(target, []) if self.pair_names[i][1] != _ctx(context)]
        return self.pair_deltas[rows].mean(axis=0) if rows else None

    def _plus_context(self, target: str, context: str | None) -> np.ndarray:
        """Two-way additive: the target's mean change in the other contexts where it was
        measured, plus how much the query's context mean differs from theirs."""
        rows = [i for i in self._targets.get(target, []) if self.pair_names[i][1] != _ctx(context)]
        if not rows:
            return self._context_mean(context)
        others = np.stack([self._context_mean(self.pair_names[i][1]) for i in rows])
        return (
            self.pair_deltas[rows].mean(axis=0) + self._context_mean(context) - others.mean(axis=0)
        )

    def _single(self, target: str, context: str | None) -> np.ndarray:
        """The target's single change in ``context``, else over other contexts, else the mean single."""
        i = self._pairs.get((target, _ctx(context)))
        if i is not None:
            return self.pair_deltas[i]
        other = self._elsewhere(target, context)
        return self.single_mean if other is None else other

    def predict(
        self, name: str, targets: Sequence[Sequence[str]], contexts: Sequence[str | None]
    ) -> np.ndarray:
        """Candidate ``name``'s predicted changes of conditions with these targets and contexts."""
        g = len(self.train_mean)
        out = np.zeros((len(targets), g))
        for i, (ts, c) in enumerate(zip(targets, contexts, strict=True)):
            if name == "control":
                continue
            if name == "train-mean":
                out[i] = self.train_mean
            elif name == "context-mean":
                out[i] = self._context_mean(c)
            elif name == "perturbation-elsewhere":
                other = self._elsewhere(ts[0], c) if len(ts) == 1 else None
                out[i] = self._context_mean(c) if other is None else other
            elif name == "perturbation-plus-context":
                out[i] = self._plus_context(ts[0], c) if len(ts) == 1 else self._context_mean(c)
            elif name == "additive":
                out[i] = sum(self._single(t, c) for t in ts)
            else:
                msg = f"Unknown simple candidate {name!r}."
                raise ValueError(msg)
        return out

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "train_mean": self.train_mean,
            "single_mean": self.single_mean,
            "context_deltas": self.context_deltas,
            "pair_deltas": self.pair_deltas,
        }
        return arrays, {"context_names": self.context_names, "pair_names": self.pair_names}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> SimpleCandidates:
        return cls(
            train_mean=arrays["train_mean"],
            single_mean=arrays["single_mean"],
            context_names=[str(c) for c in meta["context_names"]],
            context_deltas=arrays["context_deltas"],
            pair_names=[[str(t), str(c)] for t, c in meta["pair_names"]],
            pair_deltas=arrays["pair_deltas"],
        )


class LinearCandidate:
    """The ``linear`` baseline inside the blend, saved with the model (``None`` when unused)."""

    def __init__(self, model: Any = None) -> None:
        self.model = model

    @staticmethod
    def _model_class() -> type:
        from aivc.instruments._baselines import LinearModel

        return LinearModel

    @classmethod
    def fit(cls, summary: PerturbationSummary, adata: AnnData) -> Any:
        return cls(cls._model_class()()._fit_summary(summary, adata))

    def attach(self, schema: Any, genes: Any) -> None:
        """Give a loaded candidate the host model's schema and genes."""
        if self.model is not None:
            self.model.schema_, self.model.genes_ = schema, genes

    def predict(
        self,
        perturbations: list[str],
        doses: list[float],
        control_mean: np.ndarray,
        contexts: list[str | None],
    ) -> np.ndarray:
        return self.model._predict_raw(perturbations, doses, control_mean)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if self.model is None:
            return {}, {}
        arrays, meta = self.model._model_state()
        return arrays, {"params": self.model.get_params(), "state": meta}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
        if not meta:
            return cls()
        model = cls._model_class()(**meta["params"])
        model._set_model_state(arrays, meta["state"])
        model.fitted_ = True
        return cls(model)


class NeighbourCandidate(LinearCandidate):
    """The ``nearest-neighbour`` baseline (its default Gene Ontology embedding) inside the blend.

    Where no Gene Ontology tables are installed it uses the data embedding (the
    principal components of the training changes); the saved parameters say which.
    """

    @staticmethod
    def _model_class() -> type:
        from aivc.instruments._baselines import NearestNeighbourModel

        return NearestNeighbourModel

    @classmethod
    def fit(cls, summary: PerturbationSummary, adata: AnnData) -> Any:
        model_class = cls._model_class()
        try:
            return cls(model_class()._fit_summary(summary, adata))
        except FileNotFoundError:
            return cls(model_class(perturbation_embedding="data")._fit_summary(summary, adata))

    def predict(
        self,
        perturbations: list[str],
        doses: list[float],
        control_mean: np.ndarray,
        contexts: list[str | None],
    ) -> np.ndarray:
        return self.model._predict_delta(perturbations, contexts, control_mean, doses)


#: Blend candidates that are fitted baseline models: name -> their class in the blend.
MODEL_CANDIDATES: dict[str, type[LinearCandidate]] = {
    "linear": LinearCandidate,
    "nearest-neighbour": NeighbourCandidate,
}


@dataclass
class HeldOut:
    """Held-out predictions of one kind: the measured changes, each candidate's prediction,
    the regression's raw sd, the entries to fit on and the held-out condition of each row."""

    y: np.ndarray
    predictions: dict[str, np.ndarray]
    sd: np.ndarray
    fit_mask: np.ndarray
    top: np.ndarray
    fold: np.ndarray
    n_conditions: int


def candidates_of(
    kind: str, summary: PerturbationSummary, *, neighbour: bool = True
) -> tuple[str, ...]:
    """The candidates of ``kind`` that differ on this data (``context-mean`` is
    ``train-mean`` when there is one context; ``nearest-neighbour`` is left out
    when ``neighbour`` is false: its embedding knows too few training targets)."""
    names = BLEND_KINDS[kind]
    if len(set(summary.contexts)) < 2:
        names = tuple(n for n in names if n not in {"context-mean", "perturbation-plus-context"})
    if not neighbour:
        names = tuple(n for n in names if n != "nearest-neighbour")
    return names


def neighbour_usable(fitted: NeighbourCandidate, kind: str = "target") -> bool:
    """Whether a fitted nearest-neighbour candidate has neighbours for queries of ``kind``.

    A never-measured target needs at least two embedded training conditions
    (otherwise its "nearest" condition is arbitrary, not a neighbour); a target
    measured in other contexts also finds its neighbour by context, so there
    context features suffice.
    """
    if fitted.model is None:
        return False
    if kind == "pair" and np.asarray(fitted.model.train_context_features_).shape[1] > 0:
        return True
    norms = np.linalg.norm(np.asarray(fitted.model.train_pert_features_), axis=1)
    return int((norms > 1e-12).sum()) >= 2


def _folds(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    k = min(N_FOLDS, n)
    order = rng.permutation(n)
    return [np.sort(order[f::k]) for f in range(k)]


def _held_out_groups(summary: PerturbationSummary, kind: str) -> list[list[int]]:
    """The groups of rows held out together for ``kind`` (each group is one unit of the folds)."""
    schema = summary.schema
    perts = summary.perturbations
    orders = [schema.order(p) for p in perts]
    single = [i for i, o in enumerate(orders) if o == 1]
    if kind == "target":
        by_target: dict[str, list[int]] = {}
        for i in single:
            by_target.setdefault(perts[i], []).append(i)
        return [by_target[t] for t in sorted(by_target)]
    if kind == "pair":
        if schema.context_key is None:
            return []
        pairs: dict[tuple[str, str], list[int]] = {}
        for i in single:
            pairs.setdefault((perts[i], _ctx(summary.contexts[i])), []).append(i)
        n_ctx: dict[str, int] = {}
        for t, _ in pairs:
            n_ctx[t] = n_ctx.get(t, 0) + 1
        return [rows for (t, _), rows in sorted(pairs.items()) if n_ctx[t] >= 2]
    return [[i] for i, o in enumerate(orders) if o >= 2]


def held_out_candidates(
    model: PerturbModel,
    summary: PerturbationSummary,
    adata: AnnData,
    kind: str,
    *,
    knowledge: dict[str, Any],
    rng: np.random.Generator,
    neighbour: bool = True,
) -> HeldOut | None:
    """Held-out predictions of every candidate of ``kind`` on the training conditions.

    ``None`` when fewer than :data:`MIN_HELD_OUT` conditions can be held out
    that way. In each fold, the regression is a clone of ``model`` without the
    blend and without cell generation, fitted on the other conditions (the
    knowledge embedding tables, which do not depend on the conditions, are
    reused); for the ``target`` kind every condition containing a held-out
    target leaves the inner training data.
    """
    groups = _held_out_groups(summary, kind)
    if sum(len(g) for g in groups) < MIN_HELD_OUT or len(groups) < 2:
        return None
    schema = summary.schema
    perts = summary.perturbations
    doses = summary.doses or [0.0] * len(perts)
    names = candidates_of(kind, summary, neighbour=neighbour)
    ys, sds, masks, fold_ids = [], [], [], []
    preds: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for f, fold in enumerate(_folds(len(groups), rng)):
        held = sorted(i for j in fold for i in groups[j])
        drop = set(held)
        if kind == "target":
            gone = {perts[i] for i in held}
            drop |= {i for i, p in enumerate(perts) if set(schema.targets(p)) & gone}
        keep = [i for i in range(len(perts)) if i not in drop]
        if not keep:
            continue
        inner = summary.subset(keep)
        kernel = model.clone().set_params(blend=False, cell_detection=False)
        kernel._knowledge_frames = knowledge
        kernel._fit_summary(inner, adata, known_genes=model.known_genes_)
        hp = [perts[i] for i in held]
        hc = [summary.contexts[i] for i in held]
        hd = [float(doses[i]) for i in held]
        base = np.stack([summary.control_mean[c] for c in hc])
        mean, var = kernel._predict_with_var(hp, hc, base, hd)
        simple = SimpleCandidates.fit(inner)
        targets = [schema.targets(p) for p in hp]
        for n in names:
            if n == "kernel":
                preds[n].append(mean)
            elif n in MODEL_CANDIDATES:
                fitted = MODEL_CANDIDATES[n].fit(inner, adata)
                preds[n].append(fitted.predict(hp, hd, base, hc))
            else:
                preds[n].append(simple.predict(n, targets, hc))
        mask = np.ones_like(mean, dtype=bool)
        if kind == "target":
            for r, gene in kernel._own_gene(hp):
                mask[r, gene] = False
        ys.append(summary.delta[held])
        sds.append(np.sqrt(np.maximum(var, 1e-12)))
        masks.append(mask)
        fold_ids.append(np.full(len(held), f))
    if not ys:
        return None
    y = np.vstack(ys)
    fit_mask = np.vstack(masks)
    # each held-out condition's most changed genes (the evaluation's top-20 DE genes)
    top = np.zeros_like(fit_mask)
    k = min(N_TOP, y.shape[1])
    strongest = np.argpartition(-np.abs(np.where(fit_mask, y, 0.0)), k - 1, axis=1)[:, :k]
    np.put_along_axis(top, strongest, True, axis=1)
    return HeldOut(
        y=y,
        predictions={n: np.vstack(p) for n, p in preds.items()},
        sd=np.vstack(sds),
        fit_mask=fit_mask,
        top=top & fit_mask,
        fold=np.concatenate(fold_ids),
        n_conditions=len(y),
    )


@dataclass
class BlendState(FittedState):
    """Fitted state of the blend.

    Attributes
    ----------
    kinds
        The kinds of query that are blended (the others keep the regression).
    candidates
        Kind -> its candidates, in the order of the columns of its weights.
    blocks
        Gene block of every gene, for the weights (by the root mean square of its changes).
    strata
        Gene stratum of every gene, for the calibration (decile of the sd of its changes).
    weights
        Kind -> blocks x candidates weights (candidates in :data:`BLEND_KINDS` order).
    simple
        The simple baselines fitted on all training conditions.
    linear
        The linear baseline fitted on all training conditions.
    scores
        ``"<kind>/<block>"`` -> quantiles (:data:`N_QUANTILES`) of the held-out
        ``|residual| / sd`` of the blend.
    n_units
        Kind -> held-out conditions its calibration rests on.
    change_weight
        Kind -> weight ``lam`` of the predicted change in the interval scale
        ``sqrt(sd^2 + (lam * change)^2)`` (see :func:`interval_scale`).
    selection
        Held-out mean squared error of every candidate and of the blend, by kind.
    """

    stage: ClassVar[str] = "blend"

    kinds: list[str]
    candidates: dict[str, list[str]]
    blocks: np.ndarray
    strata: np.ndarray
    weights: dict[str, np.ndarray]
    simple: SimpleCandidates
    linear: LinearCandidate
    neighbour: NeighbourCandidate
    scores: dict[str, np.ndarray]
    n_units: dict[str, int]
    change_weight: dict[str, float]
    selection: dict[str, Any]


class Blend:
    """Convex per-block weights over the regression and the simple baselines."""

    State = BlendState

    def __init__(self, state: BlendState) -> None:
        self.state = state

    @classmethod
    def none(cls, summary: PerturbationSummary) -> Blend:
        """No blending: every query keeps the regression."""
        return cls(
            BlendState(
                kinds=[],
                candidates={},
                blocks=np.zeros(len(summary.genes), dtype=np.int64),
                strata=np.zeros(len(summary.genes), dtype=np.int64),
                weights={},
                simple=SimpleCandidates.fit(summary),
                linear=LinearCandidate(),
                neighbour=NeighbourCandidate(),
                scores={},
                n_units={},
                change_weight={},
                selection={},
            )
        )

    @classmethod
    def fit(
        cls,
        model: PerturbModel,
        summary: PerturbationSummary,
        adata: AnnData,
        *,
        knowledge: dict[str, Any],
        seed: int = 0,
    ) -> Blend:
        """Weights and calibration of every kind from nested held-out predictions."""
        blocks = variability_blocks(summary.delta)
        n_blocks = int(blocks.max()) + 1
        out = cls.none(summary)
        state = out.state
        state.blocks = blocks
        state.strata = strata = variability_blocks(summary.delta, 10, centre=True)
        state.linear = LinearCandidate.fit(summary, adata)
        state.neighbour = NeighbourCandidate.fit(summary, adata)
        usable = {kind: neighbour_usable(state.neighbour, kind) for kind in BLEND_KINDS}
        if not any(usable.values()):
            state.neighbour = NeighbourCandidate()
        for kind in BLEND_KINDS:
            held = held_out_candidates(
                model,
                summary,
                adata,
                kind,
                knowledge=knowledge,
                rng=np.random.default_rng(seed),
                neighbour=usable[kind],
            )
            if held is None:
                continue
            names = candidates_of(kind, summary, neighbour=usable[kind])
            choice, losses = _choose(held, names, blocks, n_blocks)
            if choice == "blend":
                weights = _fit_weights(held, names, blocks, n_blocks, np.ones(len(held.y), bool))
            else:
                weights = np.zeros((n_blocks, len(names)))
                weights[:, names.index(choice)] = 1.0
            blended = _combine(held.predictions, names, weights, blocks)
            # the own gene keeps the regression's model, as at prediction time
            blended = np.where(held.fit_mask, blended, held.predictions["kernel"])
            state.kinds.append(kind)
            state.candidates[kind] = list(names)
            state.weights[kind] = weights
            state.n_units[kind] = held.n_conditions
            lam, coverage = _choose_change_weight(held, blended, strata)
            state.change_weight[kind] = lam
            scores = np.abs(held.y - blended) / interval_scale(held.sd, blended, lam)
            levels = np.linspace(0.0, 1.0, N_QUANTILES)
            for b in np.unique(strata):
                state.scores[f"{kind}/{int(b)}"] = np.quantile(scores[:, strata == b], levels)
            mse = {n: float(np.mean((held.predictions[n] - held.y) ** 2)) for n in names}
            mse["blend"] = float(np.mean((blended - held.y) ** 2))
            state.selection[f"blend_{kind}"] = {
                "held_out_conditions": held.n_conditions,
                "chosen": choice,
                "interval_change_weight": lam,
                "held_out_top_coverage_90": coverage,
                "cross_fitted_loss": losses,
                "mse": mse,
                "mean_weights": dict(
                    zip(names, weights.mean(axis=0).round(4).tolist(), strict=True)
                ),
            }
        return out

    def attach(self, schema: Any, genes: Any) -> None:
        self.state.linear.attach(schema, genes)
        self.state.neighbour.attach(schema, genes)

    def calibrates(self, kind: str) -> bool:
        """Whether blended predictions of ``kind`` get the blend's own intervals (enough
        held-out conditions, :data:`MIN_CALIBRATION_UNITS`); otherwise the regression's."""
        return kind in self.state.kinds and self.state.n_units[kind] >= MIN_CALIBRATION_UNITS

    def apply(
        self,
        kernel: np.ndarray,
        rows: Sequence[int],
        kind: str,
        *,
        targets: Sequence[Sequence[str]],
        perturbations: list[str],
        contexts: list[str | None],
        doses: list[float],
        control_mean: np.ndarray,
        keep: np.ndarray | None = None,
    ) -> np.ndarray:
        """The blended changes of ``rows`` (all of one ``kind``), given the regression's.

        ``keep`` marks entries (rows x genes) that keep the regression's value.
        """
        state = self.state
        names = state.candidates[kind]
        rows = list(rows)
        preds = {}
        for n in names:
            if n == "kernel":
                preds[n] = kernel[rows]
            elif n in MODEL_CANDIDATES:
                fitted = state.linear if n == "linear" else state.neighbour
                preds[n] = fitted.predict(
                    [perturbations[i] for i in rows],
                    [doses[i] for i in rows],
                    control_mean[rows],
                    [contexts[i] for i in rows],
                )
            else:
                preds[n] = state.simple.predict(
                    n, [targets[i] for i in rows], [contexts[i] for i in rows]
                )
        out = _combine(preds, names, state.weights[kind], state.blocks)
        if keep is not None:
            out = np.where(keep, preds["kernel"], out)
        return out

    def half_width(
        self, scale: np.ndarray, kind: str, level: float, change: np.ndarray | None = None
    ) -> np.ndarray:
        """Conformal half-widths of blended predictions of ``kind`` (rows x genes).

        ``scale`` is the regression's raw sd and ``change`` the predicted change.
        """
        state = self.state
        if change is not None:
            scale = interval_scale(scale, change, state.change_weight.get(kind, 0.0))
        n = max(int(state.n_units[kind]), 1)
        adjusted = min(1.0, level * (n + 1) / n)
        levels = np.linspace(0.0, 1.0, N_QUANTILES)
        q = np.zeros(len(state.strata))
        for b in np.unique(state.strata):
            scores = state.scores[f"{kind}/{int(b)}"]
            q[state.strata == b] = np.interp(adjusted, levels, scores)
        return scale * q[None, :]


#: Candidate weights of the predicted change in the interval scale.
CHANGE_WEIGHTS = (0.0, 0.25, 0.5, 1.0)


def interval_scale(sd: np.ndarray, change: np.ndarray, weight: float) -> np.ndarray:
    """The scale of an interval: ``sqrt(sd^2 + (weight * change)^2)``.

    A gene predicted to change strongly is also the one whose change is most
    uncertain in size (a knockout predicted to halve a gene may remove it), so
    its interval widens with the predicted change.
    """
    return np.sqrt(sd**2 + (weight * change) ** 2)


def _choose_change_weight(
    held: HeldOut, blended: np.ndarray, strata: np.ndarray, level: float = 0.9
) -> tuple[float, float]:
    """The change weight whose conformal intervals cover most of each held-out condition's
    most changed genes (ties, within 0.005, go to the narrower intervals).

    Every weight keeps the coverage of each stratum at ``level`` (the quantiles
    are recalibrated for each); only how the width is shared between genes
    changes. Returns the weight and its held-out coverage of the top genes.
    """
    residual = np.abs(held.y - blended)
    n = len(held.y)
    adjusted = min(1.0, level * (n + 1) / n)
    best: tuple[float, float, float] | None = None
    for lam in CHANGE_WEIGHTS:
        scale = interval_scale(held.sd, blended, lam)
        scores = residual / scale
        half = np.zeros_like(scale)
        for b in np.unique(strata):
            cols = strata == b
            half[:, cols] = scale[:, cols] * np.quantile(scores[:, cols], adjusted)
        covered = residual <= half
        top = float(covered[held.top].mean()) if held.top.any() else 0.0
        width = float(half.mean())
        if (
            best is None
            or top > best[1] + 0.005
            or (abs(top - best[1]) <= 0.005 and width < best[2])
        ):
            best = (lam, top, width)
    assert best is not None
    return float(best[0]), round(best[1], 4)


def _fit_weights(
    held: HeldOut, names: Sequence[str], blocks: np.ndarray, n_blocks: int, rows: np.ndarray
) -> np.ndarray:
    """Blocks x candidates simplex weights fitted on the held-out ``rows``."""
    weights = np.zeros((n_blocks, len(names)))
    for b in range(n_blocks):
        entries = held.fit_mask[rows] & (blocks == b)[None, :]
        top = held.top[rows] & entries
        a = np.stack([held.predictions[n][rows][entries] for n in names], axis=1)
        a_top = np.stack([held.predictions[n][rows][top] for n in names], axis=1)
        y = held.y[rows]
        weights[b] = simplex_least_squares(a, y[entries], a_top, y[top])
    return weights


def _loss(pred: np.ndarray, held: HeldOut, reference: tuple[float, float]) -> np.ndarray:
    """Per held-out condition: squared error on all fitted entries plus on the top genes, each
    relative to ``reference`` (the best single candidate's totals)."""
    err = (pred - held.y) ** 2
    return (np.where(held.fit_mask, err, 0.0).sum(axis=1) / reference[0]) + (
        np.where(held.top, err, 0.0).sum(axis=1) / reference[1]
    )


def _choose(
    held: HeldOut, names: Sequence[str], blocks: np.ndarray, n_blocks: int
) -> tuple[str, dict[str, float]]:
    """The regression alone, another candidate alone, or the blend, by cross-fitted held-out loss.

    The blend's weights for the conditions of each inner fold are fitted on
    the other folds' held-out predictions, so a blend whose weights do not
    carry over (too few held-out conditions for the number of weights) loses
    to the single candidates. The regression (``"kernel"``) is kept unless
    another option beats it by more than one standard error of the mean
    paired difference over held-out conditions (the one-standard-error rule:
    with a handful of held-out conditions no choice is trusted over the
    model's own).
    """
    sse = {
        n: (
            float(((held.predictions[n] - held.y) ** 2)[held.fit_mask].sum()),
            float(((held.predictions[n] - held.y) ** 2)[held.top].sum()),
        )
        for n in names
    }
    reference = (
        max(min(v[0] for v in sse.values()), 1e-300),
        max(min(v[1] for v in sse.values()), 1e-300),
    )
    losses = {n: _loss(held.predictions[n], held, reference) for n in names}
    crossed = np.zeros_like(held.y)
    folds = np.unique(held.fold)
    if len(folds) >= 2:
        for f in folds:
            test = held.fold == f
            w = _fit_weights(held, names, blocks, n_blocks, ~test)
            crossed[test] = _combine(
                {n: p[test] for n, p in held.predictions.items()}, names, w, blocks
            )
        losses["blend"] = _loss(crossed, held, reference)
    n = len(held.y)
    best = "kernel"
    for option, loss in sorted(losses.items(), key=lambda kv: kv[1].sum()):
        diff = losses["kernel"] - loss
        if option == "kernel" or n < 2:
            break
        if diff.mean() > diff.std(ddof=1) / np.sqrt(n):
            best = option
            break
    return best, {k: round(float(v.sum()), 4) for k, v in losses.items()}


def _combine(
    predictions: dict[str, np.ndarray],
    names: Sequence[str],
    weights: np.ndarray,
    blocks: np.ndarray,
) -> np.ndarray:
    """``sum_c weights[block(g), c] * predictions[c][:, g]``."""
    w = weights[blocks]  # genes x candidates
    return sum(predictions[n] * w[None, :, k] for k, n in enumerate(names))
