"""Conformal calibration of perturbation-effect intervals.

A model's interval for the change of gene ``g`` under a held-out perturbation
is ``delta ± q * scale``: ``delta`` is the prediction, ``scale`` a raw
per-gene spread (a model's own predictive standard deviation, or a constant
per-gene scale for models without one) and ``q`` a conformal quantile of
nonconformity scores ``|residual| / scale``. The residuals come from
cross-fitting on the TRAINING data only: the training perturbations are split
into K folds, the model is refitted without each fold, and the held-out
perturbations' measured changes are compared with its predictions
(:func:`cross_fit_residuals`). The calibrated intervals therefore cover the
*measured* change (which carries the sampling noise of a finite number of
cells), which is what a new experiment would observe.

Example
-------
>>> from aivc.instruments import make_instrument
>>> from aivc.instruments._conformal import ConformalCalibrator, cross_fit_residuals
>>> cf = cross_fit_residuals(lambda: make_instrument("linear"), adata, schema, n_folds=5, seed=0)
>>> cal = ConformalCalibrator(pooling="genes").fit(cf.residuals, cf.scales)
>>> delta = model.predict_delta(["STAT1"])
>>> lower, upper = cal.interval(delta, scale, level=0.9)  # scale: same shape as delta

:class:`ConformalModel` (registered as ``conformal``) wraps any registered
perturbation model this way, so every baseline has calibrated intervals.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import pandas as pd

from aivc.data._preprocess import dose_label, pseudobulk, treatment_labels
from aivc.data._registry import schema_of
from aivc.instruments._base import PerturbationModel, PerturbationSummary, clip_interval
from aivc.instruments._registry import get_instrument_class, register_instrument

if TYPE_CHECKING:
    from anndata import AnnData

    from aivc.data._schema import PerturbationSchema

__all__ = [
    "ConformalCalibrator",
    "ConformalModel",
    "CrossFitResult",
    "check_level",
    "conformal_quantile",
    "cross_fit_residuals",
    "jackknife_gene_scale",
]

logger = logging.getLogger(__name__)

#: Group key of the calibration over all held-out units.
ALL = "__all__"
_POOLINGS = ("genes", "none")
_HOLDOUTS = ("auto", "perturbation", "context")
_SCALES = ("auto", "gene", "model", "none")


# ----------------------------------------------------------------------------- quantile
def conformal_quantile(scores: np.ndarray, level: float, *, axis: int | None = None) -> Any:
    """The finite-sample conformal quantile of nonconformity ``scores``.

    With ``n`` scores and ``alpha = 1 - level`` this is the ``k``-th smallest
    score, ``k = ceil((n + 1) * (1 - alpha))``, i.e. the empirical quantile at
    ``ceil((n + 1)(1 - alpha)) / n``. If the scores of a new point are
    exchangeable with these, the new score is at most this quantile with
    probability at least ``level``. When ``k > n`` the quantile is infinite
    (too few scores for that level).

    Parameters
    ----------
    scores
        Nonconformity scores (NaN are ignored along ``axis``).
    level
        Nominal coverage in (0, 1).
    axis
        ``None``: one quantile of all scores; an integer: one quantile per slice along that axis.
    """
    check_level(level)
    s = np.asarray(scores, dtype=np.float64)
    if axis is None:
        s = np.sort(s[np.isfinite(s)].ravel())
        return _order_statistic(s, level)
    s = np.moveaxis(s, axis, 0)
    out = np.empty(s.shape[1:])
    flat = s.reshape(s.shape[0], -1)
    res = out.reshape(-1)
    for j in range(flat.shape[1]):
        col = np.sort(flat[:, j][np.isfinite(flat[:, j])])
        res[j] = _order_statistic(col, level)
    return out


def _order_statistic(sorted_scores: np.ndarray, level: float) -> float:
    n = sorted_scores.size
    if n == 0:
        return math.inf
    # the small tolerance keeps e.g. (19 + 1) * 0.9 = 18.000000000000004 at k = 18
    k = math.ceil((n + 1) * level - 1e-9)
    if k > n:
        return math.inf
    return float(sorted_scores[max(k, 1) - 1])


def check_level(level: float) -> None:
    """Raise ``ValueError`` unless ``level`` is a coverage in (0, 1)."""
    if not isinstance(level, int | float) or not 0.0 < float(level) < 1.0:
        msg = (
            f"The 'level' parameter must be a coverage in (0, 1), e.g. 0.9. Got {level!r} instead."
        )
        raise ValueError(msg)


# ----------------------------------------------------------------------------- calibrator
class ConformalCalibrator:
    """Conformal quantiles of ``|residual| / scale``, per group of held-out units.

    Parameters
    ----------
    pooling
        ``"genes"`` (default): the scores of all genes are pooled and one
        quantile per group is used for every gene; the per-gene ``scale``
        carries the differences between genes. This is the right choice when
        there are few held-out perturbations (tens), where a per-gene quantile
        would be unstable or infinite (``k > n``). The coverage is then
        marginal over (perturbation, gene) pairs; because the genes of one
        perturbation are not independent, the finite-sample correction is of
        order ``1 / n_units`` rather than ``1 / n_scores``.
        ``"none"``: one quantile per gene (exact split-conformal guarantee per
        gene, needs at least ``ceil(1 / (1 - level)) - 1`` held-out units).
    min_group_size
        Groups (e.g. perturbation order) with fewer held-out units than this
        use the quantile of all units instead of their own.

    Fitted attributes
    -----------------
    scores_
        Group -> sorted scores (``pooling="genes"``: 1-d) or units x genes
        scores sorted per gene (``pooling="none"``).
    n_units_
        Group -> number of held-out units (rows) it was fitted on.
    """

    def __init__(self, *, pooling: str = "genes", min_group_size: int = 5) -> None:
        if pooling not in _POOLINGS:
            msg = f"The 'pooling' parameter of ConformalCalibrator must be one of {list(_POOLINGS)}. Got {pooling!r} instead."
            raise ValueError(msg)
        if not isinstance(min_group_size, int) or min_group_size < 1:
            msg = f"The 'min_group_size' parameter of ConformalCalibrator must be a positive integer. Got {min_group_size!r} instead."
            raise ValueError(msg)
        self.pooling = pooling
        self.min_group_size = min_group_size

    def fit(
        self,
        residuals: np.ndarray,
        scales: np.ndarray | None = None,
        *,
        groups: Sequence[str] | None = None,
    ) -> Self:
        """Fit on held-out residuals (units x genes) and their raw scales.

        Parameters
        ----------
        residuals
            Measured minus predicted change, one row per held-out unit (condition).
        scales
            Raw positive scale of each residual (same shape), or ``None`` for 1.
        groups
            Group label of each row (e.g. the perturbation order ``"1"``/``"2"``);
            every row also counts towards the group of all rows.
        """
        r = np.asarray(residuals, dtype=np.float64)
        if r.ndim != 2 or r.shape[0] == 0:
            msg = (
                f"residuals must be a non-empty units x genes matrix. Got shape {r.shape} instead."
            )
            raise ValueError(msg)
        scores = nonconformity(r, scales)
        labels = [ALL] * r.shape[0] if groups is None else [str(g) for g in groups]
        if len(labels) != r.shape[0]:
            msg = (
                f"Got {r.shape[0]} residual rows but {len(labels)} group labels; pass one per row."
            )
            raise ValueError(msg)
        self.n_genes_ = r.shape[1]
        self.scores_: dict[str, np.ndarray] = {}
        self.n_units_: dict[str, int] = {}
        wanted = {ALL: np.ones(len(labels), dtype=bool)}
        for g in sorted(set(labels) - {ALL}):
            rows = np.asarray([lab == g for lab in labels])
            if rows.sum() >= self.min_group_size:
                wanted[g] = rows
        for g, rows in wanted.items():
            s = scores[rows]
            self.scores_[g] = (
                np.sort(s[np.isfinite(s)]) if self.pooling == "genes" else np.sort(s, axis=0)
            )
            self.n_units_[g] = int(rows.sum())
        return self

    def quantile(self, level: float, group: str | None = None) -> float | np.ndarray:
        """The score quantile at ``level`` for ``group`` (a float, or one per gene)."""
        self._check_fitted()
        key = group if group is not None and str(group) in self.scores_ else ALL
        s = self.scores_[str(key)]
        if self.pooling == "genes":
            return conformal_quantile(s, level)
        return conformal_quantile(s, level, axis=0)

    def interval(
        self,
        delta: np.ndarray,
        scale: np.ndarray | None = None,
        *,
        level: float = 0.9,
        groups: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` = ``delta ∓ quantile(level) * scale``, each like ``delta``.

        Rows whose group was not calibrated on its own use the quantile of all units.
        """
        self._check_fitted()
        check_level(level)
        d = np.asarray(delta, dtype=np.float64)
        if d.ndim != 2 or d.shape[1] != self.n_genes_:
            msg = f"delta must be conditions x {self.n_genes_} genes. Got shape {d.shape} instead."
            raise ValueError(msg)
        s = np.ones_like(d) if scale is None else np.broadcast_to(np.asarray(scale, float), d.shape)
        labels = [ALL] * d.shape[0] if groups is None else [str(g) for g in groups]
        q = np.empty_like(d)
        cache: dict[str, Any] = {}
        for i, g in enumerate(labels):
            if g not in cache:
                cache[g] = self.quantile(level, g)
            q[i] = cache[g]
        half = q * s
        return d - half, d + half

    def _check_fitted(self) -> None:
        if not hasattr(self, "scores_"):
            msg = "This ConformalCalibrator is not fitted yet; call fit(residuals, scales) first."
            raise RuntimeError(msg)

    # persistence --------------------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Fitted state as (arrays for safetensors, JSON metadata)."""
        self._check_fitted()
        groups = list(self.scores_)
        arrays = {f"scores.{i}": self.scores_[g].astype(np.float32) for i, g in enumerate(groups)}
        meta = {
            "pooling": self.pooling,
            "min_group_size": self.min_group_size,
            "groups": groups,
            "n_units": [self.n_units_[g] for g in groups],
            "n_genes": self.n_genes_,
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> ConformalCalibrator:
        """Rebuild a calibrator from :meth:`state`."""
        obj = cls(pooling=meta["pooling"], min_group_size=int(meta["min_group_size"]))
        obj.n_genes_ = int(meta["n_genes"])
        obj.scores_ = {
            g: np.asarray(arrays[f"scores.{i}"], dtype=np.float64)
            for i, g in enumerate(meta["groups"])
        }
        obj.n_units_ = dict(zip(meta["groups"], map(int, meta["n_units"]), strict=True))
        return obj


def nonconformity(residuals: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """``|residual| / scale``; zero scales are floored at a tiny positive value."""
    r = np.abs(np.asarray(residuals, dtype=np.float64))
    if scales is None:
        return r
    s = np.asarray(scales, dtype=np.float64)
    if s.shape != r.shape:
        msg = f"scales must have the residuals' shape {r.shape}. Got {s.shape} instead."
        raise ValueError(msg)
    if (s < 0).any() or not np.isfinite(s).all():
        msg = "scales must be finite and non-negative."
        raise ValueError(msg)
    return r / np.maximum(s, 1e-12)


def jackknife_gene_scale(
    residuals: np.ndarray, *, prior_units: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Constant per-gene scales from held-out residuals, for models without their own.

    The scale of gene ``g`` is its root-mean-square held-out residual, shrunk
    towards the median over genes with the weight of ``prior_units`` units
    (so a gene seen in few units is not given a tiny scale by chance).

    Returns
    -------
    scale
        Per-gene scale from all units (used at prediction time).
    loo_scale
        Units x genes: the same scale computed without each unit, used to
        score that unit, so calibration scores are not shrunk by having been
        used to fit their own scale (as a new perturbation's would not be).
    """
    r2 = np.asarray(residuals, dtype=np.float64) ** 2
    n = r2.shape[0]
    total = r2.sum(axis=0)

    def shrink(ms: np.ndarray, n_eff: float) -> np.ndarray:
        prior = float(np.median(ms, axis=-1).mean()) if ms.size else 1.0
        prior = prior if prior > 0 else 1.0
        return np.sqrt((n_eff * ms + prior_units * prior) / (n_eff + prior_units))

    full = shrink(total / n, n)
    if n < 2:
        return full, np.broadcast_to(full, r2.shape).copy()
    loo_ms = (total[None, :] - r2) / (n - 1)
    loo = np.stack([shrink(loo_ms[i], n - 1) for i in range(n)])
    return full, loo


# ----------------------------------------------------------------------------- cross-fitting
@dataclass
class CrossFitResult:
    """Held-out residuals of a model refitted without each fold of training units.

    Attributes
    ----------
    residuals
        Conditions x genes: measured change minus predicted change.
    scales
        Conditions x genes raw scales from the model's ``predict_scale`` (or
        ``None`` when the model has none).
    predicted
        Conditions x genes predicted changes.
    conditions, perturbations, contexts, doses
        The held-out conditions (one row each).
    orders
        Number of targets of each condition's perturbation.
    units
        The held-out unit of each row (a treatment, or a context).
    folds
        Fold index of each row.
    n_cells
        Cells measured for each row's condition.
    holdout
        ``"perturbation"`` or ``"context"``.
    """

    residuals: np.ndarray
    scales: np.ndarray | None
    predicted: np.ndarray
    conditions: list[str]
    perturbations: list[str]
    contexts: list[str | None]
    doses: list[float]
    orders: list[int]
    units: list[str]
    folds: np.ndarray
    n_cells: np.ndarray
    holdout: str


def _default_predict(
    model: PerturbationModel,
    perturbations: list[str],
    contexts: list[str | None],
    doses: list[float],
) -> tuple[np.ndarray, np.ndarray | None]:
    delta = model.predict_delta(perturbations, contexts=contexts, doses=doses)
    scale_fn = getattr(model, "predict_scale", None)
    scale = None
    if callable(scale_fn):
        scale = np.asarray(
            scale_fn(perturbations, contexts=contexts, doses=doses), dtype=np.float64
        )
    return delta, scale


def choose_holdout(n_treatments: int, n_contexts: int, n_folds: int) -> str:
    """``"perturbation"`` when there are enough treatments to hold out, else ``"context"``."""
    if n_treatments >= max(4, n_folds):
        return "perturbation"
    if n_contexts >= 3:
        return "context"
    if n_treatments >= 2:
        return "perturbation"
    msg = (
        f"Cannot cross-fit: {n_treatments} treatment(s) and {n_contexts} context(s); need at least "
        "2 perturbations or 3 contexts with perturbed cells to hold some out."
    )
    raise ValueError(msg)


def cross_fit_residuals(
    make_model: Callable[[], PerturbationModel],
    adata: AnnData,
    schema: PerturbationSchema | None = None,
    *,
    n_folds: int = 5,
    seed: int = 0,
    holdout: str = "auto",
    known_genes: Sequence[str] | None = None,
    perturbation_features: pd.DataFrame | None = None,
    predict: Callable[..., tuple[np.ndarray, np.ndarray | None]] | None = None,
) -> CrossFitResult:
    """Held-out residuals by K-fold over the training units, for conformal calibration.

    Every control cell stays in every fold's training data; the perturbed
    cells of the held-out units are removed, a fresh model from
    ``make_model()`` is fitted on the rest and predicts the held-out
    conditions. Call it on the TRAINING data only.

    Parameters
    ----------
    make_model
        Returns a new, unfitted model (e.g. ``lambda: LinearModel(ridge=1.0)``).
        A model that calibrates itself should return a copy that does not, to
        avoid recursion.
    adata
        Log-normalised training cells, controls included.
    schema
        Dataset schema; default: the one in ``adata.uns["aivc"]``.
    n_folds
        Number of folds (at most the number of units).
    seed
        Seed of the fold assignment.
    holdout
        What a fold holds out: ``"perturbation"`` (treatments: a perturbation
        at a dose, in all its contexts), ``"context"`` (all perturbed cells of
        a context; for data with one or two perturbations in many contexts) or
        ``"auto"`` (:func:`choose_holdout`).
    known_genes, perturbation_features
        Passed to each fold's ``fit``; the targets of every training condition are
        added to ``known_genes``, so a held-out target is a valid request.
    predict
        ``predict(model, perturbations, contexts, doses) -> (delta, scale or None)``;
        default: ``model.predict_delta`` and, when the model has it,
        ``model.predict_scale`` (a raw, uncalibrated per-gene spread with the
        same signature as ``predict_delta``).
    """
    schema = schema if schema is not None else schema_of(adata)
    if not isinstance(n_folds, int) or n_folds < 2:
        msg = f"The 'n_folds' parameter must be an integer >= 2. Got {n_folds!r} instead."
        raise ValueError(msg)
    if holdout not in _HOLDOUTS:
        msg = f"The 'holdout' parameter must be one of {list(_HOLDOUTS)}. Got {holdout!r} instead."
        raise ValueError(msg)
    predict = predict or _default_predict
    _, info = pseudobulk(adata, schema)
    is_ctrl = info["perturbation"].to_numpy() == schema.control_label
    rows = info[~is_ctrl]
    conds = list(rows.index)
    perts = [str(p) for p in rows["perturbation"]]
    ctxs = [None if c is None else str(c) for c in rows["context"]]
    doses = [float(d) for d in rows["dose"]]
    treatments = [dose_label(p, d) for p, d in zip(perts, doses, strict=True)]
    n_ctx_pert = len({c for c in ctxs if c is not None})
    if holdout == "auto":
        holdout = choose_holdout(len(set(treatments)), n_ctx_pert, n_folds)
    units = treatments if holdout == "perturbation" else [str(c) for c in ctxs]
    unique_units = sorted(set(units))
    if len(unique_units) < 2:
        msg = f"Cross-fitting by {holdout} needs at least 2 {holdout}s; the training data have {len(unique_units)}."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique_units))
    k = min(n_folds, len(unique_units))
    fold_of_unit = {
        unique_units[j]: f for f, part in enumerate(np.array_split(order, k)) for j in part
    }

    cell_treat = treatment_labels(adata, schema).to_numpy().astype(str)
    cell_pert = adata.obs[schema.perturbation_key].astype(str).to_numpy()
    cell_ctrl = cell_pert == schema.control_label
    cell_unit = (
        cell_treat
        if holdout == "perturbation"
        else adata.obs[schema.context_key].astype(str).to_numpy()
    )
    # the changes the models are fitted on (batch-matched controls where the design needs them)
    observed = PerturbationSummary.from_adata(adata, schema).delta
    predicted = np.zeros_like(observed)
    scales: np.ndarray | None = None
    folds = np.array([fold_of_unit[u] for u in units])
    # A fold's model must accept the names of its held-out targets (they are part of the
    # question, their measurements are not), as the benchmark runner does.
    fold_known = sorted(set(known_genes or ()) | {t for p in perts for t in schema.targets(p)})
    for f in range(k):
        held_units = [u for u in unique_units if fold_of_unit[u] == f]
        keep = cell_ctrl | ~np.isin(cell_unit, held_units)
        train = adata[keep].copy()
        model = make_model()
        model.fit(
            train, schema, known_genes=fold_known, perturbation_features=perturbation_features
        )
        idx = np.flatnonzero(folds == f)
        d, s = predict(
            model, [perts[i] for i in idx], [ctxs[i] for i in idx], [doses[i] for i in idx]
        )
        predicted[idx] = d
        if s is not None:
            if scales is None:
                scales = np.ones_like(observed)
            scales[idx] = s
        elif scales is not None:
            msg = "predict returned a scale for some folds but not others."
            raise RuntimeError(msg)
    return CrossFitResult(
        residuals=observed - predicted,
        scales=scales,
        predicted=predicted,
        conditions=[str(c) for c in conds],
        perturbations=perts,
        contexts=ctxs,
        doses=doses,
        orders=[schema.order(p) for p in perts],
        units=units,
        folds=folds,
        n_cells=rows["n_cells"].to_numpy(),
        holdout=holdout,
    )


# ----------------------------------------------------------------------------- wrapper
@register_instrument(
    "conformal",
    description="Wraps any perturbation model with conformal intervals calibrated by cross-fitting on the training perturbations.",
)
class ConformalModel(PerturbationModel):
    """A perturbation model with calibrated intervals from cross-fitted residuals.

    The base model is fitted on all training data and predicts the change; its
    intervals are ``delta ± q * scale``, where ``q`` is the conformal quantile
    (:class:`ConformalCalibrator`) of held-out scores from
    :func:`cross_fit_residuals` on the training data. Models evaluated on
    folds of the training data have seen slightly less data than the final
    one, so the intervals err on the wide side.

    Parameters
    ----------
    base
        Registered name of the base model (e.g. ``"linear"``, ``"train-mean"``).
    base_params
        Keyword parameters of the base model (checked against its signature).
    n_folds
        Folds of the cross-fitting.
    holdout
        Unit held out by each fold: ``"auto"``, ``"perturbation"`` or ``"context"``.
    scale
        Raw scale of the intervals: ``"gene"`` (a constant per-gene scale, the
        root-mean-square held-out residual of each gene: normalised split
        conformal), ``"model"`` (the base model's ``predict_scale``), ``"none"``
        (the same width for every gene) or ``"auto"`` (``"model"`` when the
        base has ``predict_scale``, else ``"gene"``).
    pooling
        ``"genes"`` or ``"none"``, see :class:`ConformalCalibrator`.
    by_order
        Calibrate single and combinatorial perturbations separately (when each
        has at least ``min_group_size`` held-out units), because a held-out
        double whose singles were seen is easier to predict than a new single.
    min_group_size
        Smallest group calibrated on its own.
    seed
        Seed of the folds (and of the base model, if it takes one and
        ``base_params`` does not set it).

    Fitted attributes
    -----------------
    base_
        The fitted base model.
    calibrator_
        The fitted :class:`ConformalCalibrator`.
    gene_scale_
        Per-gene scale (``scale="gene"``), else ``None``.
    scale_kind_
        The scale used (``"gene"``, ``"model"`` or ``"none"``).
    holdout_
        The unit held out in cross-fitting.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"single", "combination", "context", "dose", "uncertainty"}
    )

    def __init__(
        self,
        *,
        base: str = "linear",
        base_params: dict[str, Any] | None = None,
        n_folds: int = 5,
        holdout: str = "auto",
        scale: str = "auto",
        pooling: str = "genes",
        by_order: bool = True,
        min_group_size: int = 5,
        seed: int = 0,
    ) -> None:
        self.base = base
        self.base_params = base_params
        self.n_folds = n_folds
        self.holdout = holdout
        self.scale = scale
        self.pooling = pooling
        self.by_order = by_order
        self.min_group_size = min_group_size
        self.seed = seed

    # fitting ----------------------------------------------------------------------------
    def _check_params(self) -> type:
        cls = get_instrument_class(self.base)
        if cls is type(self):
            msg = "The 'base' parameter of ConformalModel cannot be 'conformal' itself."
            raise ValueError(msg)
        if not issubclass(cls, PerturbationModel):
            msg = f"The 'base' parameter of ConformalModel must name a perturbation model. Got {self.base!r} instead."
            raise ValueError(msg)
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(self.base_params or {}) - set(allowed))
        if unknown:
            msg = f"base_params {unknown} are not parameters of {self.base!r}; expected a subset of {allowed}."
            raise ValueError(msg)
        for name, value, options in (
            ("holdout", self.holdout, _HOLDOUTS),
            ("scale", self.scale, _SCALES),
            ("pooling", self.pooling, _POOLINGS),
        ):
            if value not in options:
                msg = f"The {name!r} parameter of ConformalModel must be one of {list(options)}. Got {value!r} instead."
                raise ValueError(msg)
        if not isinstance(self.n_folds, int) or self.n_folds < 2:
            msg = f"The 'n_folds' parameter of ConformalModel must be an integer >= 2. Got {self.n_folds!r} instead."
            raise ValueError(msg)
        return cls

    def _make_base(self) -> PerturbationModel:
        cls = self._check_params()
        params = dict(self.base_params or {})
        if "seed" in inspect.signature(cls.__init__).parameters and "seed" not in params:
            params["seed"] = self.seed
        return cls(**params)

    def fit(
        self,
        adata: AnnData,
        schema: PerturbationSchema | None = None,
        *,
        known_genes: Sequence[str] | None = None,
        perturbation_features: pd.DataFrame | None = None,
    ) -> Self:
        """Fit the base model on ``adata`` and calibrate it by cross-fitting on the same data."""
        self._fit_kwargs = {
            "known_genes": known_genes,
            "perturbation_features": perturbation_features,
        }
        try:
            return super().fit(
                adata, schema, known_genes=known_genes, perturbation_features=perturbation_features
            )
        finally:
            del self._fit_kwargs

    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        kwargs = getattr(self, "_fit_kwargs", {})
        self.base_ = self._make_base().fit(adata, summary.schema, **kwargs)
        has_scale = callable(getattr(self.base_, "predict_scale", None))
        kind = self.scale if self.scale != "auto" else ("model" if has_scale else "gene")
        if kind == "model" and not has_scale:
            msg = f"scale='model' needs a base model with predict_scale; {self.base!r} has none. Use scale='gene'."
            raise ValueError(msg)
        cf = cross_fit_residuals(
            self._make_base,
            adata,
            summary.schema,
            n_folds=self.n_folds,
            seed=self.seed,
            holdout=self.holdout,
            predict=None if kind == "model" else _delta_only,
            **kwargs,
        )
        self.scale_kind_ = kind
        self.holdout_ = cf.holdout
        self.gene_scale_ = None
        scales = cf.scales
        if kind == "gene":
            self.gene_scale_, scales = jackknife_gene_scale(cf.residuals)
        elif kind == "none":
            scales = None
        groups = self._groups(cf.perturbations) if self.by_order else None
        self.calibrator_ = ConformalCalibrator(
            pooling=self.pooling, min_group_size=self.min_group_size
        ).fit(cf.residuals, scales, groups=groups)
        self.n_calibration_units_ = len(set(cf.units))

    def _groups(self, perturbations: Sequence[str]) -> list[str]:
        return [f"order{min(self.schema_.order(p), 2)}" for p in perturbations]

    # prediction -------------------------------------------------------------------------
    def predict_delta(
        self,
        perturbations: Sequence[str],
        *,
        contexts: Sequence[str | None] | str | None = None,
        doses: Sequence[float] | float | None = None,
        control: AnnData | None = None,
    ) -> np.ndarray:
        """The base model's predicted change (see :meth:`PerturbationModel.predict_delta`)."""
        perts, ctxs, _ = self._resolve(perturbations, contexts, control)
        return self.base_.predict_delta(perts, contexts=ctxs, doses=doses, control=control)

    def _predict_delta(
        self,
        perturbations: list[str],
        contexts: list[str | None],
        control_mean: np.ndarray,
        doses: list[float] | None = None,
    ) -> np.ndarray:
        if "dose" in type(self.base_).capabilities:
            return self.base_._predict_delta(perturbations, contexts, control_mean, doses=doses)  # type: ignore[call-arg]
        return self.base_._predict_delta(perturbations, contexts, control_mean)

    def predict_scale(
        self,
        perturbations: Sequence[str],
        *,
        contexts: Sequence[str | None] | str | None = None,
        doses: Sequence[float] | float | None = None,
        control: AnnData | None = None,
    ) -> np.ndarray:
        """The raw (uncalibrated) scale of each predicted change, conditions x genes."""
        perts, ctxs, _ = self._resolve(perturbations, contexts, control)
        if self.scale_kind_ == "gene":
            return np.tile(self.gene_scale_, (len(perts), 1))
        if self.scale_kind_ == "model":
            return np.asarray(
                self.base_.predict_scale(perts, contexts=ctxs, doses=doses, control=control),  # type: ignore[attr-defined]
                dtype=np.float64,
            )
        return np.ones((len(perts), len(self.genes_)))

    def _predict_interval(
        self,
        perturbations: Sequence[str],
        *,
        contexts: Sequence[str | None] | str | None,
        doses: Sequence[float] | float | None,
        control: AnnData | None,
        level: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted change and its conformal interval at ``level``: ``(delta, lower, upper)``."""
        check_level(level)
        perts, ctxs, base = self._resolve(perturbations, contexts, control)
        delta = self.predict_delta(perts, contexts=ctxs, doses=doses, control=control)
        scale = self.predict_scale(perts, contexts=ctxs, doses=doses, control=control)
        groups = self._groups(perts) if self.by_order else None
        lower, upper = self.calibrator_.interval(delta, scale, level=level, groups=groups)
        lower, upper = clip_interval(lower, upper, base)
        return delta, lower, upper

    # persistence ------------------------------------------------------------------------
    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        base_arrays, base_meta = self.base_._state()
        # the base shares the wrapper's schema, genes and accepted targets: store them once
        base_meta = {k: v for k, v in base_meta.items() if k != "known_genes"}
        cal_arrays, cal_meta = self.calibrator_.state()
        arrays = {f"base.{k}": v for k, v in base_arrays.items()}
        arrays.update({f"calibrator.{k}": v for k, v in cal_arrays.items()})
        if self.gene_scale_ is not None:
            arrays["gene_scale"] = self.gene_scale_
        meta = {
            "base": {
                "class": type(self.base_).__name__,
                "instrument": type(self.base_).name,
                "params": self.base_.get_params(),
                "state": base_meta,
            },
            "calibrator": cal_meta,
            "scale_kind": self.scale_kind_,
            "holdout_unit": self.holdout_,
            "n_calibration_units": self.n_calibration_units_,
        }
        return arrays, meta

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        info = meta["base"]
        cls = get_instrument_class(info["instrument"] or info["class"])
        if not issubclass(cls, PerturbationModel):
            msg = f"The saved base model {cls.__name__} is not a perturbation model."
            raise TypeError(msg)
        base = cls(**info["params"])
        base._set_state(
            {k[len("base.") :]: v for k, v in arrays.items() if k.startswith("base.")},
            {"known_genes": meta["known_genes"], **info["state"]},
        )
        base.fitted_ = True
        self.base_ = base
        self.calibrator_ = ConformalCalibrator.from_state(
            {k[len("calibrator.") :]: v for k, v in arrays.items() if k.startswith("calibrator.")},
            meta["calibrator"],
        )
        self.gene_scale_ = arrays.get("gene_scale")
        self.scale_kind_ = meta["scale_kind"]
        self.holdout_ = meta["holdout_unit"]
        self.n_calibration_units_ = int(meta["n_calibration_units"])


def _delta_only(
    model: PerturbationModel,
    perturbations: list[str],
    contexts: list[str | None],
    doses: list[float],
) -> tuple[np.ndarray, None]:
    return model.predict_delta(perturbations, contexts=contexts, doses=doses), None
