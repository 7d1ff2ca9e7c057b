"""The interface every virtual instrument follows, and the perturbation-model base class.

An instrument is an estimator: its constructor stores explicit keyword
hyperparameters only, :meth:`fit` learns state into attributes ending in
``_``, and :meth:`save` / :meth:`load` write and read a self-describing model
directory (``config.json`` with class, parameters, schema, genes and format
version; ``weights.safetensors`` with arrays). Nothing is ever pickled.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data._changes import observed_changes
from aivc.data._preprocess import CONDITION_SEP, dose_label, pseudobulk
from aivc.data._registry import schema_of
from aivc.data._schema import PerturbationSchema
from aivc.data._validate import DataValidationError, check_gene_panel, check_perturbation_labels

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "FORMAT_VERSION",
    "Instrument",
    "NotFittedError",
    "PerturbationModel",
    "PerturbationSummary",
    "PredictionInterval",
    "clip_interval",
    "floor_at_zero",
    "shift_cells",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class NotFittedError(RuntimeError):
    """The instrument was used before :meth:`fit`."""


# ----------------------------------------------------------------------------- intervals
def _condition_label(perturbation: str, context: str | None, dose: float | None) -> str:
    label = dose_label(perturbation, dose)
    return label if context is None else f"{label}{CONDITION_SEP}{context}"


class PredictionInterval(NamedTuple):
    """Predicted changes with their intervals, conditions x genes.

    Attributes
    ----------
    delta
        Predicted change of mean log-expression.
    lower, upper
        Interval bounds (clipped so that mean expression stays non-negative); the
        nominal level is in each frame's ``attrs["level"]``.

    It is a tuple: ``delta, lower, upper = model.predict_interval(...)``.
    """

    delta: pd.DataFrame
    lower: pd.DataFrame
    upper: pd.DataFrame

    @classmethod
    def from_arrays(
        cls,
        delta: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        *,
        conditions: Sequence[str],
        genes: Sequence[str],
        level: float,
    ) -> PredictionInterval:
        """Label three conditions x genes arrays."""
        index = pd.Index(list(conditions), name="condition")
        columns = pd.Index(list(genes), name="gene")
        frames = []
        for name, values in (("delta", delta), ("lower", lower), ("upper", upper)):
            values = np.asarray(values, dtype=np.float64)
            if values.shape != (len(index), len(columns)):
                msg = (
                    f"The interval's {name} has shape {values.shape}; expected "
                    f"{(len(index), len(columns))} (conditions x genes)."
                )
                raise RuntimeError(msg)
            frame = pd.DataFrame(values, index=index, columns=columns)
            frame.attrs["level"] = float(level)
            frames.append(frame)
        return cls(*frames)

    @property
    def level(self) -> float:
        """Nominal coverage of the intervals."""
        return float(self.delta.attrs["level"])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(delta, lower, upper)`` as plain float arrays, conditions x genes."""
        return self.delta.to_numpy(), self.lower.to_numpy(), self.upper.to_numpy()

    def long(self) -> pd.DataFrame:
        """One row per (condition, gene): ``condition, gene, delta, lower, upper``."""
        n_c, n_g = self.delta.shape
        return pd.DataFrame(
            {
                "condition": np.repeat(self.delta.index.to_numpy(), n_g),
                "gene": np.tile(self.delta.columns.to_numpy(), n_c),
                "delta": self.delta.to_numpy().ravel(),
                "lower": self.lower.to_numpy().ravel(),
                "upper": self.upper.to_numpy().ravel(),
            }
        )


# ----------------------------------------------------------------------------- summary
@dataclass
class PerturbationSummary:
    """Pseudobulk view of a perturbation dataset that baselines fit on.

    Attributes
    ----------
    schema
        The dataset schema.
    genes
        Measured genes (columns of every matrix).
    perturbations
        Perturbation label of each non-control condition.
    contexts
        Context of each condition (``None`` when the schema has no context).
    mean
        Conditions x genes mean log-expression (with batch-matched controls,
        the context's control mean plus ``delta``).
    delta
        ``mean`` minus the control mean of the same context; where the schema
        names a batch column and the condition's cells sit in the batches in
        other proportions than the controls, enough to bias that comparison,
        the change against the controls of its own batches instead (see
        :func:`aivc.data.observed_changes` with ``control="auto"``).
    n_cells
        Cells per condition.
    control_mean
        Context -> control mean log-expression (key ``None`` without contexts).
    doses
        Dose of each condition (0 for perturbations without a dose).
    features
        Optional numeric description of perturbation targets (e.g. drug
        fingerprints), indexed by target name; models may use it in place of
        gene embeddings.
    """

    schema: PerturbationSchema
    genes: pd.Index
    perturbations: list[str]
    contexts: list[str | None]
    mean: np.ndarray
    delta: np.ndarray
    n_cells: np.ndarray
    control_mean: dict[str | None, np.ndarray]
    doses: list[float] = field(default_factory=list)
    features: pd.DataFrame | None = None

    @classmethod
    def from_adata(cls, adata: AnnData, schema: PerturbationSchema) -> PerturbationSummary:
        means, info = pseudobulk(adata, schema)
        ctrl = info["perturbation"].to_numpy() == schema.control_label
        if not ctrl.any():
            msg = (
                f"The training data have no control cells (label {schema.control_label!r}); "
                "a perturbation model needs them to measure effects."
            )
            raise DataValidationError(msg)
        control_mean = {
            (None if c is None else str(c)): means.to_numpy()[i]
            for i, c in zip(np.flatnonzero(ctrl), info["context"].to_numpy()[ctrl], strict=True)
        }
        pert_rows = np.flatnonzero(~ctrl)
        contexts = [None if c is None else str(c) for c in info["context"].to_numpy()[pert_rows]]
        # the same rows as ``pert_rows``; raises for a context with perturbed cells and no controls
        changes, changes_info = observed_changes(adata, schema, control="auto")
        delta = changes.to_numpy()
        mean = means.to_numpy()[pert_rows]
        if (changes_info["reference"] == "batch").any():
            # changes against batch-matched controls; ``mean`` stays the control mean plus them
            mean = np.stack([control_mean[c] for c in contexts]) + delta
        return cls(
            schema=schema,
            genes=means.columns,
            perturbations=[str(p) for p in info["perturbation"].to_numpy()[pert_rows]],
            contexts=contexts,
            mean=mean,
            delta=delta,
            n_cells=info["n_cells"].to_numpy()[pert_rows],
            control_mean=control_mean,
            doses=[float(d) for d in info["dose"].to_numpy()[pert_rows]],
        )

    def subset(self, rows: Sequence[int] | np.ndarray) -> PerturbationSummary:
        """The same summary restricted to the conditions at ``rows`` (controls kept)."""
        idx = np.asarray(rows, dtype=int)
        doses = self.doses or [0.0] * len(self.perturbations)
        return dataclasses.replace(
            self,
            perturbations=[self.perturbations[i] for i in idx],
            contexts=[self.contexts[i] for i in idx],
            mean=self.mean[idx],
            delta=self.delta[idx],
            n_cells=np.asarray(self.n_cells)[idx],
            doses=[float(doses[i]) for i in idx],
        )


# ----------------------------------------------------------------------------- instrument
class Instrument(ABC):
    """Base of all virtual instruments: parameters, fitted state, safe persistence."""

    #: Registry name; set by :func:`aivc.instruments.register_instrument`.
    name: ClassVar[str] = ""
    #: Set to ``True`` by :meth:`fit` and :meth:`load`.
    fitted_: bool

    if TYPE_CHECKING:
        # Every instrument has ``fit`` and ``predict``, each with its own signature (decoders
        # take cells, perturbation models a perturbation dataset); declared for type checkers
        # only, so that an instrument from the registry can be fit and used without casts.
        def fit(self, *args: Any, **kwargs: Any) -> Self: ...

        def predict(self, *args: Any, **kwargs: Any) -> Any: ...

    def get_params(self) -> dict[str, Any]:
        """The constructor's keyword parameters and their current values."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self"}

    def set_params(self, **params: Any) -> Self:
        """Set constructor parameters by name, as scikit-learn estimators do.

        Only the values change: an instrument that is already fitted keeps
        its fitted state until :meth:`fit` is called again. Names are checked
        before any value is set, so an invalid name changes nothing.

        Parameters
        ----------
        **params
            New values of parameters listed by :meth:`get_params`.

        Returns
        -------
        The instrument itself.

        Raises
        ------
        ValueError
            A name is not one of the constructor's parameters.
        """
        valid = self.get_params()
        for key in params:
            if key not in valid:
                msg = (
                    f"Invalid parameter {key!r} for estimator {type(self).__name__}. "
                    f"Valid parameters are: {sorted(valid)!r}."
                )
                raise ValueError(msg)
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def clone(self) -> Self:
        """A new, unfitted instrument with (deep copies of) the same constructor parameters.

        Nothing learned by :meth:`fit` (the attributes ending in ``_``) is
        carried over, as with :func:`sklearn.base.clone`.
        """
        return type(self)(**copy.deepcopy(self.get_params()))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "fitted_", False)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            msg = f"This {type(self).__name__} is not fitted yet; call fit(adata) first."
            raise NotFittedError(msg)

    # persistence ------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Fitted state as (arrays, JSON-serialisable metadata)."""
        return {}, {}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:  # noqa: B027
        """Restore fitted state written by :meth:`_state`."""

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the fitted instrument to the directory ``path``, atomically."""
        from safetensors.numpy import save_file

        self._check_fitted()
        path = Path(path)
        if path.exists() and not overwrite:
            msg = f"{str(path)!r} already exists; pass overwrite=True to replace it."
            raise FileExistsError(msg)
        arrays, meta = self._state()
        config = {
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "instrument": type(self).name,
            "params": self.get_params(),
            "state": meta,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            save_file(
                {k: np.ascontiguousarray(v) for k, v in arrays.items()},
                str(tmp / "weights.safetensors"),
            )
            (tmp / "config.json").write_text(
                json.dumps(config, indent=2, sort_keys=True, default=_json_default)
            )
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read an instrument written by :meth:`save`; checks the class and format version."""
        from safetensors.numpy import load_file

        path = Path(path)
        config_file = path / "config.json"
        if not config_file.exists():
            msg = f"{str(path)!r} is not an aivc model directory (no config.json)."
            raise FileNotFoundError(msg)
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as e:
            msg = f"{str(config_file)!r} is not valid JSON ({e}); the model directory is corrupted."
            raise DataValidationError(msg) from None
        if config.get("format_version") != FORMAT_VERSION:
            msg = (
                f"Model format version {config.get('format_version')!r} in {str(path)!r}; this aivc reads "
                f"version {FORMAT_VERSION}."
            )
            raise DataValidationError(msg)
        target = cls
        if cls in (Instrument, PerturbationModel) or config["class"] != cls.__name__:
            from aivc.instruments._registry import get_instrument_class

            found = get_instrument_class(config.get("instrument") or config["class"])
            if not issubclass(found, cls):
                msg = f"{str(path)!r} holds a {config['class']}, not a {cls.__name__}."
                raise DataValidationError(msg)
            target = found
        obj = target(**config["params"])
        try:
            arrays = load_file(str(path / "weights.safetensors"))
        except Exception as e:  # safetensors raises its own error types for damaged files
            msg = f"Could not read weights from {str(path)!r} ({e}); the model directory is corrupted."
            raise DataValidationError(msg) from None
        obj._set_state(arrays, config["state"])
        obj.fitted_ = True
        return obj


def _json_default(o: object) -> object:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    msg = f"Cannot store {type(o).__name__} in a model config."
    raise TypeError(msg)


def _check_log_normalised(adata: AnnData, what: str = "adata.X") -> None:
    """Refuse raw counts in ``X``: models fit, predict and generate cells on log-normalised values."""
    from aivc.data._expression import looks_like_counts

    x = adata.X
    if (isinstance(x, np.ndarray) or sp.issparse(x)) and looks_like_counts(x):
        msg = (
            f"{what} looks like raw counts (non-negative integers, some above 14), but perturbation "
            "models work on log-normalised values. Run aivc.data.prepare(adata, schema) (or "
            "aivc.data.log_normalize) first; the raw counts stay in the schema's counts layer."
        )
        raise DataValidationError(msg)


def shift_cells(cells: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move log-normalised cells so that each gene's mean is ``target``.

    Each gene is scaled in linear space, ``log1p(f * expm1(x))``, with the
    factor ``f`` found by bisection so the mean over cells matches ``target``;
    zeros stay zeros. A gene with no expression in any cell but a positive
    target is switched on in a random fraction of cells at the level of one
    typical count.
    """
    cells = np.asarray(cells, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    lin = np.expm1(cells)
    lo = np.full(cells.shape[1], -12.0)
    hi = np.full(cells.shape[1], 12.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        too_high = np.log1p(lin * np.exp(mid)).mean(axis=0) > target
        hi = np.where(too_high, mid, hi)
        lo = np.where(too_high, lo, mid)
    out = np.log1p(lin * np.exp((lo + hi) / 2))
    silent = (lin.max(axis=0) <= 0) & (target > 1e-9)
    if silent.any():
        positive = cells[cells > 0]
        level = float(np.median(positive)) if positive.size else 1.0
        n = cells.shape[0]
        for g in np.flatnonzero(silent):
            k = int(min(n, max(1, round(n * target[g] / level))))
            on = rng.choice(n, k, replace=False)
            out[on, g] = target[g] * n / k
    return np.clip(out, 0.0, 14.0)


#: Relative margin left below ``-base`` by :func:`clip_interval` (float32 control means
#: differ from float64 ones by about 1e-7 relative).
CLIP_MARGIN = 1e-5


def floor_at_zero(delta: np.ndarray, base: np.ndarray, *, model: str = "model") -> np.ndarray:
    """``delta`` raised where ``base + delta`` would be negative, so predicted means stay physical.

    Log-normalised expression is never below zero; a change that would take a
    gene there (e.g. two strong knockdowns of one gene added up) is set to
    ``-base``. How many values were raised is logged at INFO.
    """
    floor = -np.asarray(base, dtype=np.float64)
    low = delta < floor
    if low.any():
        logger.info(
            "%s: %d predicted values (in %d of %d conditions) were below zero expression and "
            "were set to zero",
            model,
            int(low.sum()),
            int(low.any(axis=1).sum()),
            delta.shape[0],
        )
        return np.where(low, floor, delta)
    return delta


def clip_interval(
    lower: np.ndarray, upper: np.ndarray, base: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """An interval of changes clipped to what is physical: ``base + change >= 0``.

    The bound is left a rounding margin below ``-base`` (``CLIP_MARGIN``), so a
    gene measured at exactly zero, whose control mean was computed in another
    precision, is not put outside its interval by the clipping itself.
    """
    base = np.asarray(base, dtype=np.float64)
    floor = -base - CLIP_MARGIN * np.maximum(1.0, np.abs(base))
    return np.maximum(lower, floor), np.maximum(upper, -base)


def _broadcast_doses(doses: Sequence[float] | float | None, n: int) -> list[float]:
    if doses is None:
        return [0.0] * n
    if isinstance(doses, int | float | np.integer | np.floating):
        return [float(doses)] * n
    out = [0.0 if d is None else float(d) for d in doses]
    if len(out) != n:
        msg = f"Got {n} perturbations but {len(out)} doses; pass one dose per perturbation."
        raise ValueError(msg)
    if any(not np.isfinite(d) or d < 0 for d in out):
        msg = f"Doses must be finite and non-negative. Got {out} instead."
        raise ValueError(msg)
    return out


# ----------------------------------------------------------------------------- perturbation models
class PerturbationModel(Instrument):
    """Base class of manipulators that predict the effect of perturbations.

    Subclasses implement :meth:`_fit` (learn from a :class:`PerturbationSummary`
    and, if they want them, the cells) and :meth:`_predict_delta` (the change
    of mean log-expression for each requested condition). This class handles
    schemas, gene panels, control means per context, label validation,
    cell-level predictions and persistence.

    Fitted attributes
    -----------------
    schema_
        The training data's schema.
    genes_
        Measured genes, in order.
    control_mean_
        Context -> control mean log-expression.
    train_perturbations_, train_contexts_
        The training conditions.
    known_genes_
        Gene symbols the model accepts as targets.
    """

    #: What this model can do; read by the registry and the conformance check.
    capabilities: ClassVar[frozenset[str]] = frozenset({"single"})

    def fit(
        self,
        adata: AnnData,
        schema: PerturbationSchema | None = None,
        *,
        known_genes: Sequence[str] | None = None,
        perturbation_features: pd.DataFrame | None = None,
    ) -> Self:
        """Fit on log-normalised data (``X``), e.g. from :func:`aivc.data.prepare`.

        Parameters
        ----------
        adata
            Training cells, controls included.
        schema
            Dataset schema; defaults to the one stored in ``adata.uns["aivc"]``.
        known_genes
            Gene symbols accepted as perturbation targets at prediction time,
            in addition to the measured genes and the training targets (e.g.
            :func:`aivc.genes.gene_symbols`).
        perturbation_features
            Optional numeric features of perturbation targets that are not genes
            (e.g. drug descriptors), one row per target name. Their names are
            accepted as targets; models that use features read them from here.
        """
        schema = schema if schema is not None else schema_of(adata)
        _check_log_normalised(adata)
        summary = PerturbationSummary.from_adata(adata, schema)
        if perturbation_features is not None:
            values = np.asarray(perturbation_features, dtype=np.float64)
            if not np.isfinite(values).all():
                msg = "perturbation_features contains NaN or infinite values; expected finite numbers."
                raise DataValidationError(msg)
            summary.features = pd.DataFrame(values, index=perturbation_features.index.astype(str))
        return self._fit_summary(summary, adata, known_genes=known_genes)

    def _fit_summary(
        self,
        summary: PerturbationSummary,
        adata: AnnData,
        *,
        known_genes: Sequence[str] | None = None,
    ) -> Self:
        """Fit on a pseudobulk summary already built from ``adata`` (e.g. a subset of its
        conditions, for nested cross-validation); ``adata`` supplies the control cells."""
        schema = summary.schema
        if not summary.perturbations:
            msg = "The training data hold no perturbed cells; a perturbation model needs some."
            raise DataValidationError(msg)
        self.schema_ = schema
        self.genes_ = summary.genes
        self.control_mean_ = summary.control_mean
        self.train_perturbations_ = list(summary.perturbations)
        self.train_contexts_ = list(summary.contexts)
        targets = {t for p in summary.perturbations for t in schema.targets(p)}
        extra = set(summary.features.index) if summary.features is not None else set()
        self.known_genes_ = sorted(set(self.genes_) | targets | set(known_genes or ()) | extra)
        self._known_set = frozenset(self.known_genes_)
        self._fit(summary, adata)
        self.fitted_ = True
        return self

    @abstractmethod
    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None: ...

    @abstractmethod
    def _predict_delta(
        self, perturbations: list[str], contexts: list[str | None], control_mean: np.ndarray
    ) -> np.ndarray: ...

    # prediction -----------------------------------------------------------------
    def _request(
        self, perturbations: Sequence[str], contexts: Sequence[str | None] | str | None
    ) -> tuple[list[str], list[str | None]]:
        """The labels and one context per label (``None`` throughout without contexts)."""
        self._check_fitted()
        perts = [str(p) for p in perturbations]
        if isinstance(contexts, str) or contexts is None:
            ctxs: list[str | None] = [contexts] * len(perts)
        else:
            ctxs = [None if c is None else str(c) for c in contexts]
            if len(ctxs) != len(perts):
                msg = f"Got {len(perts)} perturbations but {len(ctxs)} contexts; pass one context per perturbation."
                raise ValueError(msg)
        if self.schema_.context_key is None:
            ctxs = [None] * len(perts)
        return perts, ctxs

    def _resolve(
        self,
        perturbations: Sequence[str],
        contexts: Sequence[str | None] | str | None,
        control: AnnData | None,
    ) -> tuple[list[str], list[str | None], np.ndarray]:
        perts, ctxs = self._request(perturbations, contexts)
        check_perturbation_labels(perts, self.schema_, known_genes=self._known_set)
        control_means = dict(self.control_mean_)
        if control is not None:
            control_means.update(self._control_means_from(control))
        missing = sorted({str(c) for c in ctxs if c not in control_means})
        if missing:
            msg = (
                f"No control cells for context(s) {missing}: the model was trained on contexts "
                f"{sorted(str(c) for c in self.control_mean_)}. Pass control=<AnnData with the control "
                "cells of those contexts> to predict there."
            )
            raise DataValidationError(msg)
        base = (
            np.stack([control_means[c] for c in ctxs]) if perts else np.zeros((0, len(self.genes_)))
        )
        return perts, ctxs, base

    def _control_means_from(self, control: AnnData) -> dict[str | None, np.ndarray]:
        schema = self.schema_
        _check_log_normalised(control, "the control AnnData's X")
        idx = check_gene_panel(control.var_names, list(self.genes_))
        labels = (
            control.obs[schema.perturbation_key].astype(str).to_numpy()
            if schema.perturbation_key in control.obs
            else None
        )
        is_ctrl = (
            np.ones(control.n_obs, dtype=bool) if labels is None else labels == schema.control_label
        )
        if not is_ctrl.any():
            msg = f"The control AnnData has no cells labelled {schema.control_label!r}."
            raise DataValidationError(msg)
        x = control.X[:, idx]
        ctx = (
            control.obs[schema.context_key].astype(str).to_numpy()
            if schema.context_key is not None and schema.context_key in control.obs
            else np.full(control.n_obs, None, dtype=object)
        )
        out: dict[str | None, np.ndarray] = {}
        for c in pd.unique(ctx[is_ctrl]):
            rows = is_ctrl & (ctx == c)
            out[c] = np.asarray(x[rows].mean(axis=0)).ravel()
        return out

    def predict_delta(
        self,
        perturbations: Sequence[str],
        *,
        contexts: Sequence[str | None] | str | None = None,
        doses: Sequence[float] | float | None = None,
        control: AnnData | None = None,
    ) -> np.ndarray:
        """Predicted change of mean log-expression, conditions x genes.

        A change is never below ``-control mean``: predicted mean expression
        stays non-negative (see :func:`floor_at_zero`).

        Parameters
        ----------
        perturbations
            Labels such as ``"STAT1"`` or ``"KLF1+MAP2K6"``.
        contexts
            One context per perturbation, or one for all (when the schema has contexts).
        doses
            One dose per perturbation, or one for all (0 or None: no dose). Models
            without the ``"dose"`` capability ignore doses.
        control
            Control cells for contexts the model was not trained on
            (log-normalised, same genes); their mean is the baseline state.
        """
        perts, ctxs, base = self._resolve(perturbations, contexts, control)
        if not perts:
            return np.zeros((0, len(self.genes_)))
        dose_list = _broadcast_doses(doses, len(perts))
        if "dose" in type(self).capabilities:
            raw = self._predict_delta(perts, ctxs, base, doses=dose_list)  # type: ignore[call-arg]
        else:
            raw = self._predict_delta(perts, ctxs, base)
        delta = np.asarray(raw, dtype=np.float64)
        expected = (len(perts), len(self.genes_))
        if delta.shape != expected:
            msg = f"{type(self).__name__}._predict_delta returned shape {delta.shape}; expected {expected}."
            raise RuntimeError(msg)
        return floor_at_zero(delta, base, model=type(self).__name__)

    def predict_interval(
        self,
        perturbations: Sequence[str],
        *,
        contexts: Sequence[str | None] | str | None = None,
        doses: Sequence[float] | float | None = None,
        control: AnnData | None = None,
        level: float = 0.9,
    ) -> PredictionInterval:
        """Predicted change with a per-gene interval at ``level``, as labelled frames.

        Only models with the ``"uncertainty"`` capability give intervals; the
        interval at ``level`` is meant to hold the measured change with that
        probability (models document how it was calibrated).

        Returns
        -------
        PredictionInterval
            ``delta``, ``lower`` and ``upper``, each a conditions x genes
            :class:`pandas.DataFrame` (rows labelled like
            :func:`aivc.data.condition_labels`: ``"STAT1"``, ``"STAT1+JAK2"``,
            ``"drug@1"`` with a dose, ``"<label>|<context>"`` with contexts; columns
            are the model's genes). It unpacks as ``delta, lower, upper = ...``;
            :meth:`PredictionInterval.arrays` gives the plain arrays.
        """
        perts, ctxs = self._request(perturbations, contexts)
        delta, lower, upper = self._predict_interval(
            perts, contexts=ctxs, doses=doses, control=control, level=level
        )
        dose_list = _broadcast_doses(doses, len(perts))
        labels = [_condition_label(p, c, d) for p, c, d in zip(perts, ctxs, dose_list, strict=True)]
        return PredictionInterval.from_arrays(
            delta, lower, upper, conditions=labels, genes=list(self.genes_), level=level
        )

    def _predict_interval(
        self,
        perturbations: Sequence[str],
        *,
        contexts: Sequence[str | None] | str | None,
        doses: Sequence[float] | float | None,
        control: AnnData | None,
        level: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(delta, lower, upper)`` arrays, conditions x genes (models with intervals override it)."""
        msg = f"{type(self).__name__} gives no intervals (it lacks the 'uncertainty' capability)."
        raise NotImplementedError(msg)

    def predict_mean(
        self,
        perturbations: Sequence[str],
        *,
        contexts: Sequence[str | None] | str | None = None,
        doses: Sequence[float] | float | None = None,
        control: AnnData | None = None,
    ) -> np.ndarray:
        """Predicted mean log-expression (control mean of the context + predicted change)."""
        perts, ctxs, base = self._resolve(perturbations, contexts, control)
        return base + self.predict_delta(perts, contexts=ctxs, doses=doses, control=control)

    def predict(
        self,
        perturbations: Sequence[str],
        *,
        control: AnnData,
        contexts: Sequence[str | None] | str | None = None,
        doses: Sequence[float] | float | None = None,
        n_cells: int = 100,
        include_control: bool = True,
        seed: int = 0,
    ) -> AnnData:
        """Predicted cells for each perturbation.

        Control cells of the matching context (sampled with a seed) are moved
        to the predicted mean log-expression by :func:`shift_cells`, which
        scales expression in linear space gene by gene (so zeros stay zeros
        and the spread across cells is kept, as in real perturbed cells). The
        result has the schema's perturbation (and context) columns, so it can
        be scored against observed cells, e.g. by ``cell-eval``.

        Writes ``uns["aivc"]`` with ``schema`` and ``predicted_delta``
        (conditions x genes, ordered as ``uns["aivc"]["conditions"]``).
        """
        import anndata as ad

        perts, ctxs, _ = self._resolve(perturbations, contexts, control)
        delta, extras = self._cell_changes(perts, ctxs, doses, control)
        schema = self.schema_
        idx = check_gene_panel(control.var_names, list(self.genes_))
        labels = control.obs[schema.perturbation_key].astype(str).to_numpy()
        is_ctrl = labels == schema.control_label
        ctx_col = (
            control.obs[schema.context_key].astype(str).to_numpy()
            if schema.context_key is not None
            else np.full(control.n_obs, None, dtype=object)
        )
        rng = np.random.default_rng(seed)
        x = sp.csr_matrix(control.X)[:, idx]
        dose_list = _broadcast_doses(doses, len(perts))
        blocks, obs_p, obs_c, obs_d = [], [], [], []
        for i, (p, c) in enumerate(zip(perts, ctxs, strict=True)):
            pool = (
                np.flatnonzero(is_ctrl & (ctx_col == c))
                if c is not None
                else np.flatnonzero(is_ctrl)
            )
            take = rng.choice(pool, n_cells, replace=len(pool) < n_cells)
            cells = x[take].toarray()
            target = np.clip(np.asarray(x[pool].mean(axis=0)).ravel() + delta[i], 0.0, None)
            extra = None if extras is None else extras[i]
            cells = self._move_cells(cells, target, rng, x[pool], extra)
            blocks.append(sp.csr_matrix(cells.astype(np.float32)))
            obs_p += [p] * n_cells
            obs_c += [c] * n_cells
            obs_d += [dose_list[i]] * n_cells
        if include_control:
            for c in dict.fromkeys(ctxs):
                pool = (
                    np.flatnonzero(is_ctrl & (ctx_col == c))
                    if c is not None
                    else np.flatnonzero(is_ctrl)
                )
                take = rng.choice(pool, min(n_cells, len(pool)), replace=False)
                blocks.append(sp.csr_matrix(x[take], dtype=np.float32))
                obs_p += [schema.control_label] * len(take)
                obs_c += [c] * len(take)
                obs_d += [0.0] * len(take)
        obs = pd.DataFrame({schema.perturbation_key: pd.Categorical(obs_p)})
        if schema.context_key is not None:
            obs[schema.context_key] = pd.Categorical(obs_c)
        if schema.dose_key is not None:
            obs[schema.dose_key] = np.asarray(obs_d, dtype=float)
        obs.index = [f"pred_{i}" for i in range(len(obs))]
        out = ad.AnnData(
            X=sp.vstack(blocks).tocsr()
            if blocks
            else sp.csr_matrix((0, len(self.genes_)), dtype=np.float32),
            obs=obs,
            var=pd.DataFrame(index=self.genes_.copy()),
        )
        out.uns["aivc"] = {
            "schema": schema.to_dict(),
            "model": type(self).name or type(self).__name__,
            "conditions": [
                p if c is None else p + CONDITION_SEP + c for p, c in zip(perts, ctxs, strict=True)
            ],
            "predicted_delta": delta.astype(np.float32),
        }
        return out

    def _cell_changes(
        self,
        perturbations: list[str],
        contexts: list[str | None],
        doses: Sequence[float] | float | None,
        control: AnnData,
    ) -> tuple[np.ndarray, Sequence[Any] | None]:
        """Predicted changes for :meth:`predict`, and per condition anything else its cells need.

        The second item (one entry per condition, or ``None``) is handed to
        :meth:`_move_cells`. The default is :meth:`predict_delta` and ``None``.
        """
        return self.predict_delta(
            perturbations, contexts=contexts, doses=doses, control=control
        ), None

    def _move_cells(
        self,
        cells: np.ndarray,
        target: np.ndarray,
        rng: np.random.Generator,
        reference: Any,
        extra: Any = None,
    ) -> np.ndarray:
        """Move sampled control cells to the predicted mean ``target`` (used by :meth:`predict`).

        ``reference`` holds all control cells of the context (sparse); ``extra``
        is the condition's entry from :meth:`_cell_changes`. The default is
        :func:`shift_cells`; subclasses may generate cells differently.
        """
        return shift_cells(cells, target, rng)

    # persistence -----------------------------------------------------------------
    def _base_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        keys = list(self.control_mean_)
        arrays = {
            "control_mean": np.stack([self.control_mean_[k] for k in keys]).astype(np.float64)
        }
        meta = {
            "schema": self.schema_.to_dict(),
            "genes": list(map(str, self.genes_)),
            "control_contexts": keys,
            "train_perturbations": self.train_perturbations_,
            "train_contexts": self.train_contexts_,
            "known_genes": self.known_genes_,
        }
        return arrays, meta

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = self._base_state()
        extra_arrays, extra_meta = self._model_state()
        clash = set(arrays) & set(extra_arrays) | set(meta) & set(extra_meta)
        if clash:
            msg = f"{type(self).__name__} state keys {sorted(clash)} clash with the base state."
            raise RuntimeError(msg)
        return {**arrays, **extra_arrays}, {**meta, **extra_meta}

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.schema_ = PerturbationSchema.from_dict(meta["schema"])
        self.genes_ = pd.Index(meta["genes"])
        self.control_mean_ = dict(
            zip(meta["control_contexts"], arrays["control_mean"], strict=True)
        )
        self.train_perturbations_ = list(meta["train_perturbations"])
        self.train_contexts_ = list(meta["train_contexts"])
        self.known_genes_ = list(meta["known_genes"])
        self._known_set = frozenset(self.known_genes_)
        self._set_model_state(arrays, meta)

    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Subclass state beyond the base (arrays, metadata)."""
        return {}, {}

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore subclass state written by :meth:`_model_state`."""
