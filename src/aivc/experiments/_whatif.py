"""A fitted perturbation model set against the measurements: hold-out fits, predictions, calibration.

These are the questions a user asks of a model and a dataset, in a notebook
or through the web page, the REST API and the MCP server (which call these
functions):

- :func:`fit_holdout` fits a registered perturbation model on a dataset
  with a seeded fifth of its measured perturbations held out, so its
  predictions can be checked on measurements it never saw.
- :func:`measured_changes` measures the observed change of every condition
  (:func:`aivc.data.observed_changes`); :func:`merge_observed` combines
  several measurements, the first one winning where they overlap.
- :func:`predict_with_observed` predicts the change of perturbations, with
  intervals and DE calls when the model gives intervals, and sets each
  prediction against the observed change where it was measured (Pearson r,
  interval coverage).
- :func:`calibration_curve` is the coverage of the model's intervals against
  their nominal level on held-out measured perturbations.
- :func:`propose_next` picks the perturbations to measure next, learning from
  the measured ones (an acquisition strategy over the model's predictions).
- :func:`cell_embedding` is a 2-D PCA of a dataset's cells, in which
  :meth:`CellEmbedding.place` puts predicted and observed mean states.
- :func:`check_perturbations`, :func:`resolve_context` and
  :func:`suggest_perturbations` check and complete perturbation labels.

Errors follow one convention: an unknown name (gene, context, instrument,
strategy) raises :class:`KeyError`, a request that cannot be carried out as
given raises :class:`ValueError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aivc._labels import check_known
from aivc.instruments._base import PerturbationModel
from aivc.instruments._model_dir import interval_calls

if TYPE_CHECKING:
    from anndata import AnnData
    from sklearn.decomposition import PCA

    from aivc.data import PerturbationSchema

__all__ = [
    "CalibrationCurve",
    "CellEmbedding",
    "HoldoutFit",
    "ObservedChanges",
    "PredictedChanges",
    "Proposals",
    "calibration_curve",
    "cell_embedding",
    "check_context_declared",
    "check_perturbations",
    "counts_schema",
    "fit_holdout",
    "measured_changes",
    "merge_observed",
    "perturbation_model",
    "predict_with_observed",
    "propose_next",
    "resolve_context",
    "suggest_perturbations",
]

logger = logging.getLogger(__name__)

#: Nominal levels of :func:`calibration_curve` by default.
CALIBRATION_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)

#: The call of a gene whose interval holds zero, in :class:`PredictedChanges`.
NOT_CALLED = "none"


# ----------------------------------------------------------------------------- labels
def check_perturbations(model: PerturbationModel, perturbations: Sequence[str]) -> list[str]:
    """Check perturbation labels against a fitted model; returns them stripped of spaces.

    Parameters
    ----------
    model
        A fitted perturbation model.
    perturbations
        Labels such as ``"STAT1"`` or ``"IRF1+STAT1"`` (the schema's separator).

    Returns
    -------
    The labels, stripped, in the order given.

    Raises
    ------
    ValueError
        A label is the control label, is malformed, or names a target twice.
    KeyError
        A target is not a gene the model knows (with close names suggested).
    """
    s = model.schema_
    known = frozenset(map(str, model.known_genes_))
    out = [str(p).strip() for p in perturbations]
    for p in out:
        if p == s.control_label:
            msg = f"{p!r} is the control label; ask for a perturbation (a gene or 'A{s.combination_separator}B')."
            raise ValueError(msg)
        targets = s.targets(p)  # raises ValueError for a malformed label
        if len(set(targets)) != len(targets):
            msg = f"The perturbation {p!r} names the same target twice."
            raise ValueError(msg)
        if len(targets) > 1 and "combination" not in type(model).capabilities:
            logger.info("%s has no 'combination' capability; predicting %s anyway", model, p)
        check_known(
            targets,
            known,
            what="gene",
            known_as="target genes the model knows",
            where=f" in {p!r}",
            error=KeyError,
        )
    return out


def check_context_declared(schema: PerturbationSchema, context: str | None) -> None:
    """Refuse a context for a model whose data declared none (it would be ignored).

    Raises
    ------
    KeyError
        ``context`` is given but ``schema`` has no context column.
    """
    if context is not None and schema.context_key is None:
        msg = (
            f"Unknown context {context!r}: the model was trained without contexts (its data "
            "declare no context column), so it predicts in one state only; leave the context out."
        )
        raise KeyError(msg)


def resolve_context(model: PerturbationModel, context: str | None = None) -> str | None:
    """The context to predict in: ``context`` checked, or the model's only one.

    Parameters
    ----------
    model
        A fitted perturbation model.
    context
        A context the model was trained on, or ``None``.

    Returns
    -------
    ``None`` for a model without contexts; otherwise ``context``, or the only
    context of a model trained on one.

    Raises
    ------
    ValueError
        The model knows several contexts and none was given.
    KeyError
        ``context`` is not one the model knows (a model trained without
        contexts knows none).
    """
    if model.schema_.context_key is None:
        check_context_declared(model.schema_, context)
        return None
    contexts = sorted(str(c) for c in model.control_mean_ if c is not None)
    if context is None:
        if len(contexts) == 1:
            return contexts[0]
        msg = f"This model was trained on several contexts; pass one of {contexts}."
        raise ValueError(msg)
    if context not in contexts:
        msg = f"Unknown context {context!r}; the model knows {contexts}."
        raise KeyError(msg)
    return context


def suggest_perturbations(
    model: PerturbationModel,
    query: str = "",
    *,
    measured: Sequence[str] = (),
    limit: int = 20,
) -> list[str]:
    """Perturbation labels starting with ``query`` (case-insensitive), for completion.

    Measured labels come first (the model's training perturbations and
    ``measured``), then target genes the model knows: an exact match first,
    then measured genes before the others, shorter names before longer. After
    a separator (``"A+B"``), the part after it is completed.

    Parameters
    ----------
    model
        A fitted perturbation model.
    query
        The beginning of a label.
    measured
        Further measured labels to offer (e.g. the held-out perturbations).
    limit
        Most labels returned.

    Returns
    -------
    Up to ``limit`` labels, without repeats.
    """
    sep = model.schema_.combination_separator
    head, _, tail = query.rpartition(sep)
    prefix = (tail if head else query).strip().upper()
    labels = sorted(set(map(str, model.train_perturbations_)) | set(map(str, measured)))
    out: list[str] = []
    if not head:
        out += [p for p in labels if p.upper().startswith(prefix)]
    in_panel = set(map(str, model.genes_))
    genes = [str(g) for g in model.known_genes_ if str(g).upper().startswith(prefix)]
    genes.sort(key=lambda g: (g.upper() != prefix, g not in in_panel, len(g), g))
    out += [f"{head}{sep}{g}" if head else g for g in genes]
    return list(dict.fromkeys(out))[:limit]


# ----------------------------------------------------------------------------- fitting
def perturbation_model(instrument: str, params: dict[str, Any] | None = None) -> PerturbationModel:
    """An unfitted registered perturbation model, its name and parameters checked.

    Parameters
    ----------
    instrument
        Registry name (:func:`aivc.instruments.list_instruments`).
    params
        Keyword parameters of its constructor.

    Raises
    ------
    KeyError
        No instrument of that name is registered.
    ValueError
        The instrument is no perturbation model, or the parameters are invalid.
    """
    from aivc.instruments._registry import get_instrument_class

    cls = get_instrument_class(instrument)
    if not issubclass(cls, PerturbationModel):
        msg = f"Instrument {instrument!r} is not a perturbation model; it cannot be fitted here."
        raise ValueError(msg)
    if getattr(cls, "peer", ""):
        msg = (
            f"Instrument {instrument!r} is a published peer: it runs in its own environment "
            "inside benchmarks (`aivc benchmark ... --models`), not as a workspace model."
        )
        raise ValueError(msg)
    try:
        return cls(**dict(params or {}))
    except (TypeError, ValueError) as e:
        msg = f"Invalid parameters for {instrument!r}: {e}"
        raise ValueError(msg) from None


@dataclass
class HoldoutFit:
    """A model fitted with some measured perturbations held out (see :func:`fit_holdout`).

    Attributes
    ----------
    model
        The fitted model.
    heldout
        Measured perturbations kept out of training, sorted (empty when none were).
    train
        The training cells (the dataset without the held-out perturbations).
    seed
        Seed of the held-out choice.
    fit_seconds
        Seconds the fit took.
    """

    model: PerturbationModel
    heldout: list[str]
    train: AnnData
    seed: int
    fit_seconds: float


def fit_holdout(
    adata: AnnData,
    schema: PerturbationSchema,
    instrument: str | PerturbationModel,
    *,
    params: dict[str, Any] | None = None,
    holdout: bool = True,
    n_folds: int = 5,
    seed: int = 0,
    known_genes: Sequence[str] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> HoldoutFit:
    """Fit a perturbation model with a seeded share of the measured perturbations held out.

    The held-out perturbations are one fold of
    :func:`aivc.data.splits.kfold_perturbations` (``n_folds`` folds, the
    first fold of ``seed``): a fifth of the measured perturbations by
    default. Their cells are removed before fitting, so the model never sees
    them, and its predictions for them can be set against their measurement
    (:func:`predict_with_observed`, :func:`calibration_curve`).

    Parameters
    ----------
    adata
        Log-normalised cells, controls included (e.g. from :func:`aivc.data.prepare`).
    schema
        The dataset schema.
    instrument
        A registered perturbation model's name, or an unfitted model (a clone of
        it is fitted).
    params
        Keyword parameters of the named instrument.
    holdout
        Hold perturbations out; with ``False``, or with fewer measured
        perturbations than ``n_folds``, the model is fitted on every cell.
    n_folds
        One perturbation in ``n_folds`` is held out.
    seed
        Seed of the held-out choice.
    known_genes
        Gene symbols the model accepts as targets (:meth:`PerturbationModel.fit`);
        the targets of the held-out perturbations are added, so they can be predicted.
    progress
        Called with the fraction done (0 to 1) and the current step.

    Returns
    -------
    The fitted model, the held-out perturbations and the training cells.

    Raises
    ------
    KeyError
        An unknown instrument name.
    ValueError
        Not a perturbation model, or invalid parameters.
    """
    from aivc.data.splits import kfold_perturbations

    if isinstance(instrument, PerturbationModel):
        if params:
            msg = "params are for an instrument given by name; set them on the model instead."
            raise ValueError(msg)
        model = instrument.clone()
    else:
        model = perturbation_model(instrument, params)
    report = progress or (lambda fraction, message: None)
    report(0.0, "choosing held-out perturbations")
    labels = adata.obs[schema.perturbation_key].astype(str)
    perts = sorted(set(labels) - {schema.control_label})
    heldout: list[str] = []
    train = adata
    if holdout and len(perts) >= n_folds:
        fold = kfold_perturbations(perts, schema, n_folds=n_folds, seeds=[seed])[0]
        heldout = sorted(fold.test_perturbations)
        train = adata[~labels.isin(heldout).to_numpy()].copy()
    if heldout:  # the held-out targets stay valid labels, to predict them
        targets = {t for p in heldout for t in schema.targets(p)}
        known_genes = sorted(set(map(str, known_genes or ())) | targets)
    name = type(model).name or type(model).__name__
    report(0.15, f"fitting {name} on {train.n_obs} cells")
    start = time.perf_counter()
    model.fit(train, schema, known_genes=known_genes)
    seconds = time.perf_counter() - start
    report(1.0, "fitted")
    return HoldoutFit(model=model, heldout=heldout, train=train, seed=seed, fit_seconds=seconds)


# ----------------------------------------------------------------------------- measurements
def counts_schema(schema: PerturbationSchema, adata: AnnData) -> PerturbationSchema:
    """``schema``, reading counts from ``X`` when ``adata`` lacks the schema's counts layer.

    Measurements sent by someone else (an upload, a file to compare with)
    often hold their counts in ``X`` even where the training data had a
    counts layer.
    """
    layer = schema.counts_layer
    if layer is not None and layer not in adata.layers:
        layer = None
    return replace(schema, counts_layer=layer)


@dataclass(frozen=True)
class ObservedChanges:
    """The observed change of measured conditions (see :func:`measured_changes`).

    Attributes
    ----------
    delta
        Conditions x genes change of mean log-expression against the
        condition's control cells, indexed by condition label
        (:func:`aivc.data.condition_labels`).
    info
        One row per condition, as :func:`aivc.data.observed_changes` gives it
        (``perturbation``, ``context``, ``dose``, ``n_cells``, ...), with
        ``source``: where the measurement came from.
    """

    delta: pd.DataFrame
    info: pd.DataFrame


def measured_changes(
    adata: AnnData,
    schema: PerturbationSchema | None = None,
    *,
    counts: bool = False,
    source: str = "dataset",
) -> ObservedChanges:
    """Observed change of every measured condition of ``adata``.

    Conditions of a context without control cells are left out (there is
    nothing to compare them with).

    Parameters
    ----------
    adata
        Measured cells with control cells: log-normalised (as from
        :func:`aivc.data.prepare`), or raw counts with ``counts=True``.
    schema
        The schema of ``adata``; default the one stored in it.
    counts
        ``adata`` holds raw counts (in the schema's counts layer, or in ``X``
        when it has no such layer); they are prepared first.
    source
        Written to ``info["source"]``.
    """
    from aivc.data import observed_changes, prepare, schema_of

    schema = schema if schema is not None else schema_of(adata)
    if counts:
        adata, schema = prepare(adata, counts_schema(schema, adata), known_genes=None)
    delta, info = observed_changes(adata, schema, missing_controls="drop")
    info = info.assign(source=source)
    return ObservedChanges(delta=delta, info=info)


def merge_observed(
    *changes: ObservedChanges, genes: Sequence[str] | None = None
) -> ObservedChanges:
    """Several measurements in one; where a condition was measured more than once, the first wins.

    Parameters
    ----------
    *changes
        Measurements in order of precedence (e.g. the newest first).
    genes
        Columns of the result (missing genes are NaN); default every gene of any.
    """
    if not changes:
        msg = "merge_observed needs at least one measurement."
        raise ValueError(msg)
    delta = pd.concat([c.delta for c in changes])
    info = pd.concat([c.info for c in changes])
    keep = ~delta.index.duplicated(keep="first")
    delta, info = delta[keep], info[keep]
    if genes is not None:
        delta = delta.reindex(columns=pd.Index(list(genes)))
    return ObservedChanges(delta=delta, info=info)


def _observed_of(
    observed: AnnData | ObservedChanges | None, schema: PerturbationSchema
) -> ObservedChanges | None:
    if observed is None or isinstance(observed, ObservedChanges):
        return observed
    return measured_changes(observed, schema)


# ----------------------------------------------------------------------------- prediction
@dataclass
class PredictedChanges:
    """Predicted changes of perturbations set against their measurement (see :func:`predict_with_observed`).

    Rows of every array follow ``perturbations``; columns follow ``genes``.

    Attributes
    ----------
    perturbations
        The predicted perturbations.
    context
        The context they were predicted in (``None`` without contexts).
    genes
        The model's genes.
    delta
        Predicted change of mean log-expression.
    lower, upper
        The interval of each change at ``level`` (``None`` for models without
        the ``"uncertainty"`` capability).
    level
        Nominal coverage of the intervals (``None`` without intervals).
    calls
        ``"up"`` / ``"down"`` where the interval excludes zero, ``"none"``
        where it holds it (``None`` without intervals).
    observed
        Observed change where the condition was measured; rows of conditions
        that were not, and genes the measurement lacks, are NaN.
    summary
        One row per perturbation: ``perturbation``, ``context``, ``condition``
        (its label in the measurements), ``measured``, ``observed_source``,
        ``n_observed_cells``, ``in_training`` (among the model's training
        perturbations), ``pearson_observed`` (Pearson r of predicted and
        observed change over the measured genes; NaN when unmeasured or
        undefined) and ``interval_coverage`` (share of measured genes whose
        observed change lies in the interval; NaN when unmeasured or without
        intervals).
    """

    perturbations: list[str]
    context: str | None
    genes: list[str]
    delta: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    level: float | None
    calls: np.ndarray | None
    observed: np.ndarray
    summary: pd.DataFrame = field(repr=False)

    @property
    def has_intervals(self) -> bool:
        """Whether the model gave intervals (and DE calls)."""
        return self.lower is not None

    def measured(self, i: int) -> bool:
        """Whether perturbation ``i`` (its position) was measured."""
        return bool(self.summary["measured"].iloc[i])

    def top_genes(self, i: int, k: int = 20) -> pd.DataFrame:
        """The ``k`` genes of largest predicted change of perturbation ``i`` (its position).

        Columns ``gene`` and ``delta``; ``lower``, ``upper`` and ``call`` with
        intervals; ``observed`` (NaN where not measured) when the perturbation
        was measured. Ordered by decreasing ``|delta|``.
        """
        d = self.delta[i]
        order = np.argsort(-np.abs(d), kind="stable")[:k]
        return self._genes_table(i, order)

    def de_genes(self, i: int) -> pd.DataFrame | None:
        """Genes of perturbation ``i`` whose interval excludes zero, by decreasing ``|delta|``.

        The :meth:`top_genes` columns; ``None`` for a model without intervals.
        """
        if self.calls is None:
            return None
        d = self.delta[i]
        order = np.argsort(-np.abs(d), kind="stable")
        order = order[self.calls[i, order] != NOT_CALLED]
        return self._genes_table(i, order)

    def _genes_table(self, i: int, order: np.ndarray) -> pd.DataFrame:
        table = pd.DataFrame(
            {"gene": [self.genes[j] for j in order], "delta": self.delta[i, order]}
        )
        if self.lower is not None and self.upper is not None and self.calls is not None:
            table["lower"] = self.lower[i, order]
            table["upper"] = self.upper[i, order]
            table["call"] = self.calls[i, order]
        if self.measured(i):
            table["observed"] = self.observed[i, order]
        return table


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) <= 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def predict_with_observed(
    model: PerturbationModel,
    perturbations: Sequence[str],
    *,
    observed: AnnData | ObservedChanges | None = None,
    context: str | None = None,
    level: float = 0.9,
) -> PredictedChanges:
    """Predict perturbations and set each prediction against its measurement, where there is one.

    Parameters
    ----------
    model
        A fitted perturbation model.
    perturbations
        Labels such as ``"STAT1"`` or ``"IRF1+STAT1"``; checked with
        :func:`check_perturbations`.
    observed
        Measurements to compare with: log-normalised cells with the model's
        schema (their changes are measured with :func:`measured_changes`), or
        changes measured already; ``None`` compares with nothing.
    context
        Context to predict in (:func:`resolve_context`).
    level
        Nominal coverage of the intervals (models with the ``"uncertainty"``
        capability).

    Returns
    -------
    The predicted changes with intervals and DE calls, the observed changes and
    a per-perturbation summary (Pearson r with the observed change, interval
    coverage).

    Raises
    ------
    KeyError
        An unknown target gene or context.
    ValueError
        A malformed label, the control label, or a missing context.
    """
    from aivc.data import CONDITION_SEP

    if not 0 < level < 1:
        msg = f"level must be between 0 and 1. Got {level} instead."
        raise ValueError(msg)
    perts = check_perturbations(model, perturbations)
    context = resolve_context(model, context)
    has_interval = "uncertainty" in type(model).capabilities
    if has_interval:
        delta, lower, upper = model.predict_interval(perts, contexts=context, level=level).arrays()
        calls = interval_calls(lower, upper, not_called=NOT_CALLED)
    else:
        delta = model.predict_delta(perts, contexts=context)
        lower = upper = calls = None
    genes = [str(g) for g in model.genes_]
    changes = _observed_of(observed, model.schema_)
    obs = np.full(delta.shape, np.nan)
    train = set(map(str, model.train_perturbations_))
    rows = []
    for i, p in enumerate(perts):
        cond = p if context is None else f"{p}{CONDITION_SEP}{context}"
        row: dict[str, Any] = {
            "perturbation": p,
            "context": context,
            "condition": cond,
            "measured": False,
            "observed_source": None,
            "n_observed_cells": 0,
            "in_training": p in train,
            "pearson_observed": np.nan,
            "interval_coverage": np.nan,
        }
        if changes is not None and cond in changes.delta.index:
            o = changes.delta.loc[cond].reindex(genes).to_numpy(dtype=float)
            obs[i] = o
            ok = np.isfinite(o)
            row["measured"] = True
            row["n_observed_cells"] = int(changes.info.loc[cond, "n_cells"])
            if "source" in changes.info.columns:
                row["observed_source"] = str(changes.info.loc[cond, "source"])
            row["pearson_observed"] = _pearson(delta[i][ok], o[ok])
            if lower is not None and upper is not None and ok.any():
                inside = (lower[i][ok] <= o[ok]) & (o[ok] <= upper[i][ok])
                row["interval_coverage"] = float(inside.mean())
        rows.append(row)
    return PredictedChanges(
        perturbations=perts,
        context=context,
        genes=genes,
        delta=delta,
        lower=lower,
        upper=upper,
        level=float(level) if has_interval else None,
        calls=calls,
        observed=obs,
        summary=pd.DataFrame(rows, columns=list(rows[0]) if rows else None),
    )


# ----------------------------------------------------------------------------- calibration
@dataclass
class CalibrationCurve:
    """Coverage of a model's intervals against their nominal level (see :func:`calibration_curve`).

    Attributes
    ----------
    levels
        Nominal levels.
    coverage
        Observed coverage at each level: the share of measured (condition,
        gene) changes inside the interval.
    conditions
        The held-out measured conditions it was computed on.
    perturbations, contexts
        Perturbation and context of each condition.
    """

    levels: list[float]
    coverage: list[float]
    conditions: list[str]
    perturbations: list[str]
    contexts: list[str | None]

    def to_frame(self) -> pd.DataFrame:
        """One row per level: ``level``, ``coverage``."""
        return pd.DataFrame({"level": self.levels, "coverage": self.coverage})


def calibration_curve(
    model: PerturbationModel,
    observed: AnnData | ObservedChanges,
    *,
    heldout: Sequence[str],
    levels: Sequence[float] = CALIBRATION_LEVELS,
) -> CalibrationCurve:
    """Coverage of the model's intervals on held-out measured perturbations, level by level.

    For each nominal level, the share of (condition, gene) pairs whose
    measured change lies inside the predicted interval. Only the held-out
    perturbations count (in every context where they were measured), so the
    curve is not flattered by training data.

    Parameters
    ----------
    model
        A fitted model with the ``"uncertainty"`` capability.
    observed
        The measurements (cells with the model's schema, or measured changes).
    heldout
        Perturbations kept out of the model's training (e.g.
        :attr:`HoldoutFit.heldout`).
    levels
        Nominal levels, each between 0 and 1.

    Raises
    ------
    ValueError
        The model gives no intervals, a level is out of range, or none of the
        held-out perturbations was measured.
    """
    if "uncertainty" not in type(model).capabilities:
        name = type(model).name or type(model).__name__
        msg = f"{name!r} gives no intervals, so it has no calibration curve."
        raise ValueError(msg)
    levels = [float(lv) for lv in levels]
    if not levels or not all(0 < lv < 1 for lv in levels):
        msg = f"levels must be between 0 and 1. Got {levels} instead."
        raise ValueError(msg)
    changes = (
        observed
        if isinstance(observed, ObservedChanges)
        else measured_changes(observed, model.schema_)
    )
    wanted = set(map(str, heldout))
    info = changes.info
    conds = [c for c in changes.delta.index if str(info.loc[c, "perturbation"]) in wanted]
    if not conds:
        msg = (
            "None of the held-out perturbations was measured, so there is nothing to calibrate on; "
            "fit with some measured perturbations held out (fit_holdout)."
        )
        raise ValueError(msg)
    perts = [str(info.loc[c, "perturbation"]) for c in conds]
    ctxs = [None if pd.isna(info.loc[c, "context"]) else str(info.loc[c, "context"]) for c in conds]
    obs = changes.delta.loc[conds].reindex(columns=list(model.genes_)).to_numpy(dtype=float)
    ok = np.isfinite(obs)
    coverage = []
    for lv in levels:
        _, lo, hi = model.predict_interval(perts, contexts=ctxs, level=lv).arrays()
        coverage.append(float(((lo <= obs) & (obs <= hi))[ok].mean()))
    return CalibrationCurve(
        levels=levels,
        coverage=coverage,
        conditions=[str(c) for c in conds],
        perturbations=perts,
        contexts=ctxs,
    )


# ----------------------------------------------------------------------------- proposals
@dataclass
class Proposals:
    """The perturbations to measure next (see :func:`propose_next`).

    Attributes
    ----------
    strategy
        The acquisition strategy.
    description
        What the strategy does and what it learned from.
    n_candidates, n_measured
        Candidates, and how many of them were measured already.
    table
        One row per proposal, in the strategy's order: ``perturbation``,
        ``predicted_effect`` (root-mean-square predicted change) and ``reason``.
    candidates
        What the candidates were, in words (e.g. ``"candidates: 25 measured
        targets + 240 genes with knowledge"``).
    """

    strategy: str
    description: str
    n_candidates: int
    n_measured: int
    table: pd.DataFrame
    candidates: str = ""


def propose_next(
    model: PerturbationModel,
    observed: AnnData | ObservedChanges | None = None,
    *,
    strategy: str = "gp-ucb",
    batch_size: int = 10,
    candidates: Sequence[str] | None = None,
    context: str | None = None,
    seed: int = 0,
) -> Proposals:
    """The next perturbations to measure, learning from the measured ones.

    As in the lab loop (:func:`aivc.experiments.run_loop`), the strategy sees
    the model's predicted change of every candidate as features and the
    measured effect sizes (root-mean-square change of log-expression) of the
    candidates already measured as feedback; the predicted effect size is the
    prior of strategies that use one. Measured candidates are not proposed.

    Parameters
    ----------
    model
        A fitted perturbation model.
    observed
        The measurements so far (cells with the model's schema, or measured
        changes); only conditions of ``context`` count.
    strategy
        A registered acquisition strategy (:data:`aivc.experiments.STRATEGIES`).
    batch_size
        Perturbations to propose (fewer when fewer candidates are left).
    candidates
        Perturbations to choose from; default
        :func:`~aivc.experiments.default_candidates` (the model's measured
        targets, those measured in ``observed`` included, and the genes of its
        panel with prior knowledge).
    context
        Context of the experiments (:func:`resolve_context`).
    seed
        Seed of the strategy.

    Raises
    ------
    KeyError
        An unknown strategy, candidate gene or context.
    ValueError
        Every candidate was measured already, or a malformed candidate.
    """
    from aivc.experiments._acquisition import STRATEGIES
    from aivc.experiments._acquisition import propose as run_propose
    from aivc.experiments._loop import _effect

    if strategy not in STRATEGIES:
        msg = f"Unknown strategy {strategy!r}; expected one of {sorted(STRATEGIES)}."
        raise KeyError(msg)
    if batch_size < 1:
        msg = f"batch_size must be a positive integer. Got {batch_size} instead."
        raise ValueError(msg)
    if candidates is not None:
        candidates = check_perturbations(model, candidates)
    context = resolve_context(model, context)
    genes = [str(g) for g in model.genes_]
    changes = _observed_of(observed, model.schema_)
    if changes is None:
        by_label = pd.DataFrame(columns=pd.Index(genes), dtype=float)
    else:
        info = changes.info
        rows = info.index if context is None else info.index[info["context"].astype(str) == context]
        by_label = changes.delta.loc[rows].reindex(columns=genes)
        by_label.index = pd.Index(info.loc[rows, "perturbation"].astype(str).to_numpy())
        by_label = by_label[~by_label.index.duplicated()].fillna(0.0)
    if candidates is None:
        from aivc.experiments._candidates import default_candidates

        chosen = default_candidates(
            model,
            measured=[p for p in by_label.index if model.schema_.order(str(p)) == 1],
        )
        cands, described = list(chosen.labels), chosen.description
    else:
        cands = list(dict.fromkeys(candidates))
        described = f"candidates: {len(cands)} given"
    measured = [c for c in cands if c in by_label.index]
    n_open = len(cands) - len(measured)
    if n_open == 0:
        msg = f"Every candidate has been measured already ({described}); pass other candidates."
        raise ValueError(msg)
    delta = model.predict_delta(cands, contexts=context)
    predicted_effect = _effect(delta)
    index = {c: i for i, c in enumerate(cands)}
    idx = np.asarray([index[c] for c in measured], dtype=int)
    y = _effect(by_label.loc[measured].to_numpy(dtype=float)) if measured else np.zeros(0)
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
    table = pd.DataFrame(
        {
            "perturbation": [cands[int(i)] for i in chosen],
            "predicted_effect": [float(predicted_effect[int(i)]) for i in chosen],
            "reason": [
                f"{strategy}: predicted RMS change {predicted_effect[int(i)]:.3f}" for i in chosen
            ],
        }
    )
    return Proposals(
        strategy=strategy,
        description=f"{spec.description} Learned from {len(measured)} measured of "
        f"{len(cands)} candidates.",
        n_candidates=len(cands),
        n_measured=len(measured),
        table=table,
        candidates=described,
    )


# ----------------------------------------------------------------------------- embedding
@dataclass
class CellEmbedding:
    """A 2-D PCA of a seeded sample of a dataset's cells (see :func:`cell_embedding`).

    Attributes
    ----------
    xy
        Cells x 2 coordinates.
    perturbation
        Perturbation label of each cell.
    context
        Context of each cell (``None`` without contexts).
    explained_variance_ratio
        Share of variance of each of the two components.
    genes
        The genes the PCA was fitted on, in order.
    n_cells, seed
        Size and seed of the sample.
    pca
        The fitted :class:`sklearn.decomposition.PCA`.
    method
        How the embedding was made, in words.
    """

    xy: np.ndarray
    perturbation: np.ndarray
    context: np.ndarray | None
    explained_variance_ratio: np.ndarray
    genes: list[str]
    n_cells: int
    seed: int
    pca: PCA = field(repr=False)
    method: str = "PCA of log-normalised expression"

    def place(
        self,
        model: PerturbationModel,
        delta: np.ndarray,
        *,
        context: str | None = None,
        observed: np.ndarray | None = None,
    ) -> dict[str, np.ndarray | None] | None:
        """The control, predicted and observed mean states of a perturbation in this embedding.

        Parameters
        ----------
        model
            The model that predicted ``delta``; its control mean in ``context``
            is the control state.
        delta
            Predicted change (one value per model gene).
        context
            Context of the prediction (``None`` without contexts).
        observed
            Observed change, when measured (NaN genes count as no change).

        Returns
        -------
        ``{"control": xy, "predicted": xy, "observed": xy or None}``, or
        ``None`` when the model's genes are not the embedding's.
        """
        if [str(g) for g in model.genes_] != self.genes:
            return None
        base = np.asarray(model.control_mean_[context], dtype=float)
        states = [base, base + np.asarray(delta, dtype=float)]
        if observed is not None:
            states.append(base + np.nan_to_num(np.asarray(observed, dtype=float)))
        xy = self.pca.transform(np.stack(states))
        return {
            "control": xy[0],
            "predicted": xy[1],
            "observed": xy[2] if observed is not None else None,
        }


def cell_embedding(
    adata: AnnData,
    schema: PerturbationSchema | None = None,
    *,
    n_cells: int = 2000,
    seed: int = 0,
) -> CellEmbedding:
    """2-D PCA of a seeded sample of cells, with each cell's perturbation and context.

    Parameters
    ----------
    adata
        Log-normalised cells (as from :func:`aivc.data.prepare`).
    schema
        Its schema; default the one stored in ``adata``.
    n_cells
        Cells sampled (all of them when there are fewer).
    seed
        Seed of the sample and of the PCA.
    """
    from sklearn.decomposition import PCA

    from aivc.data import schema_of

    if n_cells < 3:
        msg = f"n_cells must be at least 3 for a 2-D PCA. Got {n_cells} instead."
        raise ValueError(msg)
    schema = schema if schema is not None else schema_of(adata)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(adata.n_obs, min(n_cells, adata.n_obs), replace=False))
    x = adata.X[take]
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    pca = PCA(n_components=2, random_state=seed)
    xy = pca.fit_transform(x)
    obs = adata.obs
    return CellEmbedding(
        xy=xy,
        perturbation=obs[schema.perturbation_key].astype(str).to_numpy()[take],
        context=(
            obs[schema.context_key].astype(str).to_numpy()[take]
            if schema.context_key is not None
            else None
        ),
        explained_variance_ratio=np.asarray(pca.explained_variance_ratio_),
        genes=[str(g) for g in adata.var_names],
        n_cells=len(take),
        seed=seed,
        pca=pca,
    )
