"""Conformance check that every perturbation instrument must pass.

Third-party instruments run it the same way::

    from aivc.instruments import check_instrument
    check_instrument(MyModel, params={"hidden": 8})
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
from aivc.instruments._base import NotFittedError, PerturbationModel

__all__ = ["check_instrument"]


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
    ``predict`` returns the schema's columns.

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
    return passed
