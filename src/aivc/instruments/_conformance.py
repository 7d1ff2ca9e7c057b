"""Conformance checks that every instrument must pass.

:func:`check_instrument` checks perturbation models on synthetic data;
:func:`check_decoder` checks any other instrument (decoders) on data the
caller passes. Third-party instruments run them the same way::

    from aivc.instruments import check_decoder, check_instrument
    check_instrument(MyModel, params={"hidden": 8})
    check_decoder(MyDecoder, params={}, fit_args=(reference,), predict_args=(query,))
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aivc.data._preprocess import prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.data._validate import DataValidationError
from aivc.instruments._base import Instrument, NotFittedError, PerturbationModel

__all__ = ["check_decoder", "check_instrument"]


class ConformanceError(AssertionError):
    """An instrument broke the instrument contract."""


def _fail(check: str, detail: str) -> None:
    msg = f"Conformance check '{check}' failed: {detail}"
    raise ConformanceError(msg)


def check_instrument(
    cls: type[PerturbationModel],
    *,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    atol: float = 1e-6,
) -> list[str]:
    """Run the perturbation-instrument contract on small synthetic data.

    Checks: keyword-only explicit constructor parameters round-trip through
    ``get_params``; use before ``fit`` raises :class:`NotFittedError`; ``fit``
    on synthetic data; prediction shapes and finiteness for training, unseen
    single and (if supported) combination and unseen-context conditions;
    determinism (two fits with the same parameters agree); ``save``/``load``
    reproduces predictions and writes no pickle; unknown genes and mismatched
    gene panels are refused with :class:`DataValidationError`; cell-level
    ``predict`` returns the schema's columns; ``clone`` and ``set_params``
    follow :func:`check_decoder`'s ``get-params`` check.

    Returns
    -------
    Names of the checks that passed. Raises ``AssertionError`` on the first failure.
    """
    params = dict(params or {})
    passed: list[str] = []
    sig = inspect.signature(cls.__init__)
    for p in sig.parameters.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            _fail(
                "explicit-params",
                f"{cls.__name__}.__init__ takes *{p.name}; use explicit keyword parameters.",
            )
    model = cls(**params)
    got = model.get_params()
    for k, v in params.items():
        if got.get(k) != v:
            _fail("explicit-params", f"get_params()[{k!r}] = {got.get(k)!r}, expected {v!r}.")
    passed.append("explicit-params")

    caps = getattr(cls, "capabilities", frozenset({"single"}))
    n_contexts = 2 if "context" in caps else 1
    raw, schema = synthetic_perturbation_data(n_contexts=n_contexts, n_doubles=4, seed=seed)
    adata, schema = prepare(raw, schema)
    singles = sorted({p for p in adata.obs["perturbation"].astype(str) if schema.order(p) == 1})
    held_single = singles[0]
    doubles = sorted({p for p in adata.obs["perturbation"].astype(str) if schema.order(p) == 2})
    held_double = doubles[0]
    held_context = "type1" if n_contexts > 1 else None
    labels = adata.obs["perturbation"].astype(str)
    train_mask = (labels != held_single) & (labels != held_double)
    if held_context is not None:
        ctx = adata.obs[schema.context_key].astype(str)
        train_mask &= ~((ctx == held_context) & (labels != schema.control_label))
    train = adata[train_mask.to_numpy()].copy()

    try:
        model.predict_delta([held_single])
        _fail("not-fitted", "predict_delta before fit did not raise NotFittedError.")
    except NotFittedError:
        passed.append("not-fitted")

    model.fit(train, schema)
    if not model.is_fitted:
        _fail("fit", "fitted_ is not set after fit().")
    passed.append("fit")

    queries = [singles[-1], held_single]
    if "combination" in caps:
        queries.append(held_double)
    ctxs: list[str | None] = ["type0"] * len(queries) if held_context else [None] * len(queries)
    control = adata[(labels == schema.control_label).to_numpy()].copy()
    if held_context:
        queries.append(singles[-1])
        ctxs.append(held_context)
    pred = model.predict_delta(queries, contexts=ctxs, control=control)
    if pred.shape != (len(queries), adata.n_vars) or not np.isfinite(pred).all():
        _fail(
            "predict-shape",
            f"predict_delta gave shape {pred.shape} (finite={np.isfinite(pred).all()}).",
        )
    passed.append("predict-shape")

    again = cls(**params).fit(train, schema).predict_delta(queries, contexts=ctxs, control=control)
    if not np.allclose(pred, again, atol=atol):
        _fail("determinism", f"two fits differ by up to {np.abs(pred - again).max():g}.")
    passed.append("determinism")

    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / "model")
        files = sorted(f.name for f in path.iterdir())
        if any(f.endswith((".pkl", ".pickle", ".pt", ".joblib")) for f in files):
            _fail("save-load", f"model directory holds pickle-like files {files}.")
        loaded = type(model).load(path)
        again = loaded.predict_delta(queries, contexts=ctxs, control=control)
        if not np.allclose(pred, again, atol=atol):
            _fail(
                "save-load",
                f"loaded model predicts differently (max diff {np.abs(pred - again).max():g}).",
            )
        generic = PerturbationModel.load(path)
        if type(generic) is not type(model):
            _fail("save-load", f"PerturbationModel.load gave a {type(generic).__name__}.")
    passed.append("save-load")

    try:
        model.predict_delta(["NOT_A_GENE_XYZ"], contexts=ctxs[:1], control=control)
        _fail("unknown-gene", "an unknown target gene was accepted.")
    except DataValidationError:
        passed.append("unknown-gene")

    try:
        model.predict_delta(
            [held_single], contexts=ctxs[:1], control=control[:, : adata.n_vars // 2].copy()
        )
        _fail("gene-panel", "a control AnnData missing half the genes was accepted.")
    except DataValidationError:
        passed.append("gene-panel")

    cells = model.predict(queries[:2], contexts=ctxs[:2], control=control, n_cells=7)
    if schema.perturbation_key not in cells.obs or cells.n_vars != adata.n_vars:
        _fail("predict-cells", "predict() output lacks the perturbation column or genes.")
    n_pert = int((cells.obs[schema.perturbation_key].astype(str) != schema.control_label).sum())
    if n_pert != 14:
        _fail("predict-cells", f"expected 14 predicted perturbed cells, got {n_pert}.")
    passed.append("predict-cells")

    _check_params_api(cls, model)
    passed.append("get-params")
    return passed


# ----------------------------------------------------------------------------- decoders
_SEED_PARAMS = ("random_state", "seed")


def _output_array(out: object) -> np.ndarray:
    """The values of a prediction: array, DataFrame/Series, AnnData (X) or a sequence."""
    import pandas as pd

    if isinstance(out, pd.DataFrame | pd.Series):
        return out.to_numpy()
    x = getattr(out, "X", None)
    if x is not None and hasattr(out, "n_obs"):
        return x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return np.asarray(out)


def _same(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    if a.shape != b.shape:
        return False
    if np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number):
        return bool(np.allclose(a, b, atol=atol, equal_nan=True))
    return bool(np.array_equal(a.astype(str), b.astype(str)))


def check_decoder(
    cls: type[Instrument],
    *,
    params: dict[str, Any] | None = None,
    fit_args: tuple[Any, ...] = (),
    predict_args: tuple[Any, ...] = (),
    fit_kwargs: dict[str, Any] | None = None,
    predict_kwargs: dict[str, Any] | None = None,
    n_outputs: int | None = None,
    seed: int = 0,
    atol: float = 1e-6,
) -> list[str]:
    """Run the instrument contract on any non-perturbation instrument (a decoder).

    The instrument is built as ``cls(**params)``, fit with
    ``fit(*fit_args, **fit_kwargs)`` and used with
    ``predict(*predict_args, **predict_kwargs)``; the data are the caller's
    (e.g. a small real or synthetic AnnData). Predictions may be an array, a
    DataFrame/Series, an AnnData (its ``X``) or a list (e.g. labels).

    Checks, in order:

    ``explicit-params``
        The constructor takes explicit keyword parameters only and
        ``get_params()`` returns what was passed.
    ``not-fitted``
        ``predict`` before ``fit`` raises :class:`NotFittedError`.
    ``fit``
        ``fit`` returns the instrument itself and sets ``is_fitted``.
    ``predict-shape``
        One prediction row per cell of the first predict argument (when it
        has ``n_obs`` or a length), ``n_outputs`` columns when given, and
        finite numbers for numeric output.
    ``determinism``
        A second instrument with the same parameters (the seed parameter
        ``random_state`` or ``seed``, if the constructor has one and
        ``params`` does not set it, is set to ``seed``) predicts the same.
    ``save-load``
        ``save`` writes no pickle-like file; ``cls.load`` and
        :meth:`Instrument.load` give the same class and the same predictions.
    ``wrong-class``
        Loading a model directory that holds another instrument class is
        refused with :class:`DataValidationError`.
    ``get-params``
        ``cls(**fitted.get_params())`` and ``fitted.clone()`` are equivalent,
        unfitted instruments; ``set_params(**get_params())`` returns the
        instrument unchanged and an unknown name raises ``ValueError``.

    Returns
    -------
    Names of the checks that passed. Raises ``AssertionError`` on the first failure.
    """
    import json

    params = dict(params or {})
    fit_kwargs = dict(fit_kwargs or {})
    predict_kwargs = dict(predict_kwargs or {})
    passed: list[str] = []
    sig = inspect.signature(cls.__init__)
    for p in sig.parameters.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            _fail(
                "explicit-params",
                f"{cls.__name__}.__init__ takes *{p.name}; use explicit keyword parameters.",
            )
        if p.name != "self" and p.kind is not p.KEYWORD_ONLY:
            _fail(
                "explicit-params",
                f"{cls.__name__}.__init__ parameter {p.name!r} is not keyword-only.",
            )
    for name in _SEED_PARAMS:
        if name in sig.parameters and name not in params:
            params[name] = seed
            break
    model = cls(**params)
    got = model.get_params()
    for k, v in params.items():
        if got.get(k) != v:
            _fail("explicit-params", f"get_params()[{k!r}] = {got.get(k)!r}, expected {v!r}.")
    passed.append("explicit-params")

    try:
        model.predict(*predict_args, **predict_kwargs)
        _fail("not-fitted", "predict before fit did not raise NotFittedError.")
    except NotFittedError:
        passed.append("not-fitted")

    returned = model.fit(*fit_args, **fit_kwargs)
    if returned is not model:
        _fail("fit", f"fit() returned {type(returned).__name__}, not the instrument itself.")
    if not model.is_fitted:
        _fail("fit", "is_fitted is False after fit().")
    passed.append("fit")

    pred = _output_array(model.predict(*predict_args, **predict_kwargs))
    first = predict_args[0] if predict_args else None
    n_rows = getattr(first, "n_obs", None)
    if n_rows is None and first is not None and hasattr(first, "__len__"):
        n_rows = len(first)
    if n_rows is not None and (pred.ndim == 0 or pred.shape[0] != n_rows):
        _fail("predict-shape", f"predict gave shape {pred.shape}; expected {n_rows} rows.")
    if n_outputs is not None and (pred.ndim != 2 or pred.shape[1] != n_outputs):
        _fail("predict-shape", f"predict gave shape {pred.shape}; expected {n_outputs} columns.")
    if np.issubdtype(pred.dtype, np.number) and not np.isfinite(pred).all():
        _fail("predict-shape", "predict returned NaN or infinite values.")
    passed.append("predict-shape")

    again = _output_array(
        cls(**params).fit(*fit_args, **fit_kwargs).predict(*predict_args, **predict_kwargs)
    )
    if not _same(pred, again, atol):
        _fail("determinism", "two fits with the same parameters and seed predict differently.")
    passed.append("determinism")

    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / "model")
        files = sorted(f.name for f in path.rglob("*") if f.is_file())
        if any(f.endswith((".pkl", ".pickle", ".pt", ".joblib")) for f in files):
            _fail("save-load", f"model directory holds pickle-like files {files}.")
        for loader in (cls, Instrument):
            loaded = loader.load(path)
            if type(loaded) is not cls:
                _fail("save-load", f"{loader.__name__}.load gave a {type(loaded).__name__}.")
            again = _output_array(loaded.predict(*predict_args, **predict_kwargs))
            if not _same(pred, again, atol):
                _fail(
                    "save-load",
                    f"the model loaded with {loader.__name__}.load predicts differently.",
                )
        passed.append("save-load")

        config_file = path / "config.json"
        config = json.loads(config_file.read_text())
        other = "control" if type(model).name != "control" else "train-mean"
        from aivc.instruments._registry import get_instrument_class

        config["class"] = get_instrument_class(other).__name__
        config["instrument"] = other
        config_file.write_text(json.dumps(config))
        try:
            cls.load(path)
            _fail(
                "wrong-class",
                f"{cls.__name__}.load accepted a directory holding a {other!r} model.",
            )
        except DataValidationError:
            passed.append("wrong-class")

    _check_params_api(cls, model)
    passed.append("get-params")
    return passed


def _check_params_api(cls: type[Instrument], model: Instrument) -> None:
    """The ``get-params`` check on a fitted ``model``: rebuilding, ``clone`` and ``set_params``."""
    params = model.get_params()
    rebuilt = cls(**params)
    if rebuilt.is_fitted:
        _fail("get-params", "an instrument rebuilt from get_params() is already fitted.")
    if rebuilt.get_params() != params:
        _fail("get-params", "cls(**get_params()) has different parameters.")
    clone = model.clone()
    if type(clone) is not cls or clone is model:
        _fail("get-params", f"clone() gave {type(clone).__name__}, not a new {cls.__name__}.")
    if clone.is_fitted:
        _fail("get-params", "clone() of a fitted instrument is already fitted.")
    if clone.get_params() != params:
        _fail("get-params", "clone() has different parameters.")
    copied = sorted(k for k in vars(clone) if k.endswith("_") and not k.startswith("_"))
    if copied:
        _fail("get-params", f"clone() carries fitted attributes {copied}.")
    if clone.set_params(**params) is not clone or clone.get_params() != params:
        _fail("get-params", "set_params(**get_params()) did not return the instrument unchanged.")
    try:
        clone.set_params(not_a_parameter_xyz=0)
        _fail("get-params", "set_params accepted an unknown parameter name.")
    except ValueError:
        pass
