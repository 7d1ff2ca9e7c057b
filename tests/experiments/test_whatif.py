"""A fitted model set against the measurements: hold-out fits, predictions with observed values,
calibration curves, proposals, embeddings and label checks (aivc.experiments._whatif)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from aivc.data import observed_changes, prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.experiments import (
    ObservedChanges,
    calibration_curve,
    cell_embedding,
    check_perturbations,
    fit_holdout,
    measured_changes,
    merge_observed,
    predict_with_observed,
    propose_next,
    resolve_context,
    suggest_perturbations,
)


@pytest.fixture(scope="module")
def raw():
    return synthetic_perturbation_data(
        n_genes=60, n_singles=10, n_doubles=3, cells_per_condition=25, n_control_cells=60, seed=0
    )


@pytest.fixture(scope="module")
def data(raw):
    adata, schema = raw
    return prepare(adata, schema)


@pytest.fixture(scope="module")
def conformal(data):
    adata, schema = data
    return fit_holdout(
        adata, schema, "conformal", params={"base": "additive", "n_folds": 3}, seed=0
    )


def _labels(adata, schema) -> list[str]:
    return sorted(set(adata.obs[schema.perturbation_key].astype(str)) - {schema.control_label})


def test_holdout_fit_never_trains_on_heldout(data) -> None:
    from aivc.data.splits import kfold_perturbations

    adata, schema = data
    perts = _labels(adata, schema)
    fit = fit_holdout(adata, schema, "additive", seed=3)
    assert len(perts) == 13 and len(fit.heldout) == 3  # the first of five folds
    assert fit.heldout == sorted(fit.heldout)
    assert fit.heldout == list(
        kfold_perturbations(perts, schema, n_folds=5, seeds=[3])[0].test_perturbations
    )
    # no held-out cell in the training data, nor any held-out label in the model
    assert not set(fit.heldout) & set(_labels(fit.train, schema))
    assert not set(fit.heldout) & set(fit.model.train_perturbations_)
    assert set(fit.model.train_perturbations_) | set(fit.heldout) == set(perts)
    assert fit.train.n_obs == adata.n_obs - int(
        adata.obs[schema.perturbation_key].astype(str).isin(fit.heldout).sum()
    )
    assert fit.seed == 3 and fit.fit_seconds >= 0
    # seeded: the same seed holds out the same perturbations
    assert fit_holdout(adata, schema, "additive", seed=3).heldout == fit.heldout
    # without a hold-out, every perturbation is trained on
    full = fit_holdout(adata, schema, "additive", holdout=False)
    assert full.heldout == [] and set(full.model.train_perturbations_) == set(perts)
    # progress is reported from 0 to 1
    steps: list[float] = []
    fit_holdout(adata, schema, "train-mean", progress=lambda f, m: steps.append(f))
    assert steps[0] == 0.0 and steps[-1] == 1.0 and steps == sorted(steps)


def test_holdout_fit_checks_the_instrument(data) -> None:
    adata, schema = data
    with pytest.raises(KeyError, match=r"Unknown instrument 'nope'"):
        fit_holdout(adata, schema, "nope")
    with pytest.raises(ValueError, match=r"Invalid parameters for 'linear'"):
        fit_holdout(adata, schema, "linear", params={"depth": 3})
    with pytest.raises(ValueError, match=r"is not a perturbation model"):
        fit_holdout(adata, schema, "cell-type")
    # an unfitted model is cloned, not fitted in place
    from aivc.instruments import make_instrument

    given = make_instrument("additive")
    fit = fit_holdout(adata, schema, given)
    assert fit.model is not given and not hasattr(given, "genes_")


def test_prediction_with_observed_values(data, conformal) -> None:
    adata, schema = data
    model, heldout = conformal.model, conformal.heldout
    measured = next(p for p in heldout if "+" not in p)
    singles = [p for p in _labels(adata, schema) if "+" not in p]
    unmeasured = next(
        f"{a}+{b}"
        for a in singles
        for b in singles
        if a < b and f"{a}+{b}" not in _labels(adata, schema)
    )
    res = predict_with_observed(model, [f" {measured} ", unmeasured], observed=adata, level=0.8)
    assert res.perturbations == [measured, unmeasured] and res.context is None
    assert res.has_intervals and res.level == 0.8
    assert res.delta.shape == res.lower.shape == res.upper.shape == (2, adata.n_vars)
    # the observed change of the measured condition is the one aivc.data measures
    delta, _ = observed_changes(adata, schema)
    assert_allclose(res.observed[0], delta.loc[measured].to_numpy(), atol=1e-10)
    assert np.isnan(res.observed[1]).all()
    s = res.summary
    assert s["measured"].tolist() == [True, False]
    assert s["observed_source"].tolist() == ["dataset", None]
    assert s["n_observed_cells"].tolist() == [25, 0]
    assert s["in_training"].tolist() == [False, False]
    r = np.corrcoef(res.delta[0], res.observed[0])[0, 1]
    assert s["pearson_observed"].iloc[0] == pytest.approx(r)
    inside = (res.lower[0] <= res.observed[0]) & (res.observed[0] <= res.upper[0])
    assert s["interval_coverage"].iloc[0] == pytest.approx(inside.mean())
    assert np.isnan(s["pearson_observed"].iloc[1]) and np.isnan(s["interval_coverage"].iloc[1])
    # DE calls: up where the interval lies above zero, down below, none where it holds zero
    up, down = res.lower > 0, res.upper < 0
    assert (res.calls == np.where(up, "up", np.where(down, "down", "none"))).all()
    assert (res.delta[up] > 0).all() and (res.delta[down] < 0).all()
    de = res.de_genes(0)
    assert len(de) == int((up[0] | down[0]).sum()) and set(de["call"]) <= {"up", "down"}
    mags = de["delta"].abs().to_numpy()
    assert (np.diff(mags) <= 0).all()
    top = res.top_genes(0, 5)
    assert list(top.columns) == ["gene", "delta", "lower", "upper", "call", "observed"]
    assert len(top) == 5 and top["delta"].abs().is_monotonic_decreasing
    assert "observed" not in res.top_genes(1, 5).columns
    # measured changes given directly give the same answer
    again = predict_with_observed(
        model, [measured, unmeasured], observed=measured_changes(adata, schema), level=0.8
    )
    assert_allclose(again.observed[0], res.observed[0])
    pd.testing.assert_frame_equal(again.summary, res.summary)


def test_prediction_without_intervals_or_measurements(data) -> None:
    adata, schema = data
    fit = fit_holdout(adata, schema, "additive")
    trained = fit.model.train_perturbations_[0]
    res = predict_with_observed(fit.model, [trained])
    assert not res.has_intervals and res.calls is None and res.level is None
    assert res.de_genes(0) is None
    assert list(res.top_genes(0, 3).columns) == ["gene", "delta"]
    assert res.summary["in_training"].tolist() == [True]
    assert res.summary["measured"].tolist() == [False]
    with pytest.raises(ValueError, match=r"level must be between 0 and 1"):
        predict_with_observed(fit.model, [trained], level=1.5)


def test_calibration_curve_on_heldout(data, conformal) -> None:
    adata, schema = data
    curve = calibration_curve(conformal.model, adata, heldout=conformal.heldout)
    assert curve.perturbations == conformal.heldout  # measured, without contexts
    assert curve.coverage == sorted(curve.coverage)  # wider intervals cover more
    assert all(0 <= c <= 1 for c in curve.coverage) and curve.coverage[-1] > curve.coverage[0]
    assert curve.to_frame()["level"].tolist() == list(curve.levels)
    # coverage at one level, computed independently
    delta, _ = observed_changes(adata, schema)
    obs = delta.loc[conformal.heldout].to_numpy()
    _, lo, hi = conformal.model.predict_interval(conformal.heldout, level=0.9).arrays()
    expected = ((lo <= obs) & (obs <= hi)).mean()
    assert curve.coverage[curve.levels.index(0.9)] == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"None of the held-out perturbations was measured"):
        calibration_curve(conformal.model, adata, heldout=["GENE999"])
    additive = fit_holdout(adata, schema, "additive")
    with pytest.raises(ValueError, match=r"gives no intervals"):
        calibration_curve(additive.model, adata, heldout=additive.heldout)


def test_measured_changes_from_counts_and_merge(raw, data) -> None:
    counts, schema = raw
    adata, pschema = data
    from_counts = measured_changes(counts, schema, counts=True, source="upload:x")
    prepared = measured_changes(adata, pschema)
    pd.testing.assert_frame_equal(from_counts.delta, prepared.delta)
    assert set(from_counts.info["source"]) == {"upload:x"}
    one = next(iter(prepared.delta.index))
    newer = ObservedChanges(
        delta=prepared.delta.loc[[one]] + 1.0, info=prepared.info.loc[[one]].assign(source="new")
    )
    merged = merge_observed(newer, prepared, genes=["GENE001", "GENE000", "NOPE"])
    assert list(merged.delta.columns) == ["GENE001", "GENE000", "NOPE"]
    assert merged.delta["NOPE"].isna().all() and len(merged.delta) == len(prepared.delta)
    assert merged.info.loc[one, "source"] == "new"  # the first measurement wins
    assert merged.delta.loc[one, "GENE000"] == pytest.approx(prepared.delta.loc[one, "GENE000"] + 1)


def test_labels_contexts_and_suggestions(data, conformal) -> None:
    model = conformal.model
    assert check_perturbations(model, [" GENE001 "]) == ["GENE001"]
    with pytest.raises(KeyError, match=r"Unknown gene 'gene001'.*Did you mean 'GENE001'"):
        check_perturbations(model, ["gene001"])
    with pytest.raises(ValueError, match=r"is the control label"):
        check_perturbations(model, ["control"])
    with pytest.raises(ValueError, match=r"names the same target twice"):
        check_perturbations(model, ["GENE001+GENE001"])
    assert resolve_context(model, None) is None
    items = suggest_perturbations(model, "gene00", measured=conformal.heldout)
    assert items and all(i.upper().startswith("GENE00") for i in items)
    combo = suggest_perturbations(model, "GENE001+GENE00", limit=5)
    assert 0 < len(combo) <= 5 and all(i.startswith("GENE001+GENE00") for i in combo)


def test_contexts_are_resolved() -> None:
    adata, schema = synthetic_perturbation_data(
        n_genes=30, n_singles=4, n_doubles=0, n_contexts=2, cells_per_condition=15, seed=1
    )
    adata, schema = prepare(adata, schema)
    model = fit_holdout(adata, schema, "train-mean", holdout=False).model
    with pytest.raises(ValueError, match=r"several contexts"):
        resolve_context(model, None)
    with pytest.raises(KeyError, match=r"Unknown context 'nope'"):
        resolve_context(model, "nope")
    target = model.train_perturbations_[0]
    res = predict_with_observed(model, [target], observed=adata, context="type1")
    assert res.summary["condition"].iloc[0].endswith("type1") and res.measured(0)


def test_propose_next_learns_from_measurements(data, conformal) -> None:
    adata, schema = data
    model = conformal.model
    genes = list(model.genes_)  # the synthetic genes have no knowledge: name the candidates
    props = propose_next(model, adata, strategy="gp-ucb", batch_size=4, seed=0, candidates=genes)
    measured = set(_labels(adata, schema))
    chosen = props.table["perturbation"].tolist()
    assert len(chosen) == 4 and not set(chosen) & measured
    assert props.n_candidates == adata.n_vars
    assert props.n_measured == len([p for p in measured if "+" not in p])
    again = propose_next(model, adata, strategy="gp-ucb", batch_size=4, seed=0, candidates=genes)
    assert again.table["perturbation"].tolist() == chosen
    with pytest.raises(KeyError, match=r"Unknown strategy"):
        propose_next(model, adata, strategy="nope")
    singles = [p for p in measured if "+" not in p]
    with pytest.raises(ValueError, match=r"measured already"):
        propose_next(model, adata, candidates=singles)


def test_cell_embedding_places_predictions(data, conformal) -> None:
    adata, schema = data
    emb = cell_embedding(adata, schema, n_cells=100, seed=1)
    assert emb.xy.shape == (100, 2) and len(emb.perturbation) == 100 and emb.context is None
    assert emb.explained_variance_ratio[0] >= emb.explained_variance_ratio[1] > 0
    model = conformal.model
    delta = model.predict_delta(["GENE001"])[0]
    placed = emb.place(model, delta)
    base = model.control_mean_[None]
    assert_allclose(placed["control"], emb.pca.transform(base[None])[0])
    assert_allclose(placed["predicted"], emb.pca.transform((base + delta)[None])[0])
    assert placed["observed"] is None
    fewer = cell_embedding(adata[:, :30].copy(), schema, n_cells=50)
    assert fewer.place(model, delta) is None  # other genes: nothing to place
