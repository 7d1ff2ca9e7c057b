"""The context baselines: the same context's mean change, and the same perturbation elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from aivc.data import observed_changes, prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.instruments import (
    ContextMeanModel,
    PerturbationElsewhereModel,
    check_instrument,
    make_instrument,
)


@pytest.fixture(scope="module")
def contexts():
    raw, schema = synthetic_perturbation_data(n_singles=8, n_doubles=0, n_contexts=3, seed=4)
    adata, schema = prepare(raw, schema)
    delta, info = observed_changes(adata, schema, control="context")
    return adata, schema, delta, info


@pytest.mark.parametrize("cls", [ContextMeanModel, PerturbationElsewhereModel])
def test_conformance(cls) -> None:
    passed = check_instrument(cls)
    assert {"fit", "save-load"} <= set(passed), passed


def _without(adata, schema, pert: str, ctx: str):
    obs = adata.obs
    drop = (obs[schema.perturbation_key].astype(str) == pert) & (
        obs[schema.context_key].astype(str) == ctx
    )
    return adata[~drop.to_numpy()].copy()


def test_context_mean_is_the_mean_of_the_other_perturbations_of_that_context(contexts) -> None:
    adata, schema, delta, info = contexts
    ctx = str(info["context"].iloc[0])
    pert = str(info["perturbation"].iloc[0])
    train = _without(adata, schema, pert, ctx)
    model = ContextMeanModel().fit(train, schema)
    # the training changes as every model sees them (batch-matched where the design calls for it)
    delta, info = observed_changes(train, schema, control="auto")
    same = info[info["context"] == ctx].index
    expected = delta.loc[same].to_numpy().mean(axis=0)
    got = model.predict_delta([pert], contexts=ctx)[0]
    assert_allclose(got, expected, atol=1e-5)
    # another context gets its own mean, not this one's
    other = str(sorted(set(info["context"]) - {ctx})[0])
    own = delta.loc[info[info["context"] == other].index].to_numpy().mean(axis=0)
    assert_allclose(model.predict_delta([pert], contexts=other)[0], own, atol=1e-5)


def test_perturbation_elsewhere_averages_the_other_contexts(contexts) -> None:
    adata, schema, delta, info = contexts
    ctx = str(info["context"].iloc[0])
    pert = str(info["perturbation"].iloc[0])
    train = _without(adata, schema, pert, ctx)
    model = PerturbationElsewhereModel().fit(train, schema)
    delta, info = observed_changes(train, schema, control="auto")
    rows = info[info["perturbation"] == pert].index
    expected = delta.loc[rows].to_numpy().mean(axis=0)
    assert_allclose(model.predict_delta([pert], contexts=ctx)[0], expected, atol=1e-5)
    # where it was measured in the query's context, that measurement is returned
    measured = PerturbationElsewhereModel().fit(adata, schema)
    delta, info = observed_changes(adata, schema, control="auto")
    cond = info[(info["perturbation"] == pert) & (info["context"] == ctx)].index[0]
    assert_allclose(
        measured.predict_delta([pert], contexts=ctx)[0], delta.loc[cond].to_numpy(), atol=1e-5
    )


def test_never_measured_falls_back_to_the_training_mean(contexts, tmp_path) -> None:
    adata, schema, _delta, info = contexts
    pert = str(info["perturbation"].iloc[0])
    keep = adata.obs[schema.perturbation_key].astype(str) != pert
    train = adata[keep.to_numpy()].copy()
    mean = make_instrument("train-mean").fit(train, schema)
    ctx = str(info["context"].iloc[0])
    for name in ("perturbation-elsewhere", "context-mean"):
        model = make_instrument(name).fit(train, schema)
        got = model.predict_delta([pert], contexts=ctx)
        if name == "perturbation-elsewhere":
            assert_allclose(got, mean.predict_delta([pert], contexts=ctx), atol=1e-6)
        model.save(tmp_path / name)
        again = type(model).load(tmp_path / name)
        assert np.array_equal(again.predict_delta([pert], contexts=ctx), got)
