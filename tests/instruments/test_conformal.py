from __future__ import annotations

import json
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from aivc.data import prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.instruments import PerturbationModel, check_instrument, make_instrument
from aivc.instruments._conformal import (
    ConformalCalibrator,
    ConformalModel,
    conformal_quantile,
    cross_fit_residuals,
    jackknife_gene_scale,
)


# ----------------------------------------------------------------------------- quantile
def test_finite_sample_quantile():
    scores = np.arange(1.0, 20.0)  # n = 19
    # k = ceil(20 * 0.9) = 18
    assert conformal_quantile(scores, 0.9) == 18.0
    # k = ceil(20 * 0.8) = 16
    assert conformal_quantile(scores[::-1], 0.8) == 16.0
    # n = 5 scores cannot support 90% (k = ceil(5.4) = 6 > 5)
    assert math.isinf(conformal_quantile(np.arange(5.0), 0.9))
    # NaN scores are ignored; per-column quantiles
    cols = np.column_stack([np.arange(1.0, 20.0), 2 * np.arange(1.0, 20.0)])
    cols[0, 0] = np.nan  # column 0 now has n = 18: k = ceil(19 * 0.9) = 18 -> 19.0
    assert_allclose(conformal_quantile(cols, 0.9, axis=0), [19.0, 36.0])
    with pytest.raises(ValueError, match=r"coverage in \(0, 1\)"):
        conformal_quantile(scores, 90)


def test_split_conformal_coverage_is_near_nominal():
    """Exchangeable heavy-tailed scores: coverage = k / (n + 1) >= level, averaged over repeats."""
    rng = np.random.default_rng(0)
    n, reps = 40, 4000
    hits = {0.8: 0, 0.9: 0}
    for _ in range(reps):
        s = np.abs(rng.standard_t(3, n + 1))
        for level in hits:
            hits[level] += s[-1] <= conformal_quantile(s[:-1], level)
    for level, h in hits.items():
        expected = math.ceil((n + 1) * level) / (n + 1)
        se = math.sqrt(expected * (1 - expected) / reps)
        assert abs(h / reps - expected) < 4 * se, (level, h / reps, expected)


def test_pooled_calibration_with_gene_scales_covers_every_gene():
    """Heteroscedastic genes: pooled scores with a per-gene scale give near-nominal coverage per gene,
    while the same width for every gene (no scale) over-covers quiet genes and under-covers noisy ones."""
    rng = np.random.default_rng(1)
    n_units, n_genes = 30, 200
    sigma = np.exp(rng.normal(0, 0.8, n_genes))
    train = rng.normal(0, 1, (n_units, n_genes)) * sigma
    test = rng.normal(0, 1, (3000, n_genes)) * sigma
    scale, loo = jackknife_gene_scale(train)
    cal = ConformalCalibrator(pooling="genes").fit(train, loo)
    lo, hi = cal.interval(np.zeros_like(test), scale, level=0.9)
    cover = ((test >= lo) & (test <= hi)).mean(axis=0)
    assert 0.86 < cover.mean() < 0.95
    flat = ConformalCalibrator(pooling="genes").fit(train)
    lo2, hi2 = flat.interval(np.zeros_like(test), level=0.9)
    cover2 = ((test >= lo2) & (test <= hi2)).mean(axis=0)
    assert np.abs(cover - 0.9).mean() < 0.5 * np.abs(cover2 - 0.9).mean()
    # per-gene quantiles: exact per gene, k = ceil(31 * 0.9) = 28 of 30
    per_gene = ConformalCalibrator(pooling="none").fit(train)
    lo3, hi3 = per_gene.interval(np.zeros_like(test), level=0.9)
    assert 0.86 < ((test >= lo3) & (test <= hi3)).mean() < 0.96


def test_calibrator_groups_and_validation():
    rng = np.random.default_rng(2)
    r = np.vstack([rng.normal(0, 1, (10, 5)), rng.normal(0, 5, (10, 5))])
    groups = ["a"] * 10 + ["b"] * 10
    cal = ConformalCalibrator(min_group_size=5).fit(r, groups=groups)
    assert cal.quantile(0.9, "b") > 2 * cal.quantile(0.9, "a")
    assert cal.quantile(0.9, "unseen") == cal.quantile(0.9)  # falls back to all units
    lo, hi = cal.interval(np.zeros((2, 5)), level=0.9, groups=["a", "b"])
    assert (hi[1] - lo[1] > hi[0] - lo[0]).all()
    with pytest.raises(ValueError, match=r"conditions x 5 genes"):
        cal.interval(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"'pooling' parameter"):
        ConformalCalibrator(pooling="per-gene")
    with pytest.raises(RuntimeError, match=r"not fitted yet"):
        ConformalCalibrator().quantile(0.9)
    arrays, meta = cal.state()
    json.dumps(meta)
    again = ConformalCalibrator.from_state(arrays, meta)
    assert_allclose(again.quantile(0.8, "b"), cal.quantile(0.8, "b"), rtol=1e-6)


# ----------------------------------------------------------------------------- cross-fitting
@pytest.fixture(scope="module")
def data():
    raw, schema = synthetic_perturbation_data(
        n_genes=60, n_singles=14, n_doubles=6, cells_per_condition=25, n_control_cells=60, seed=3
    )
    return prepare(raw, schema)


def test_cross_fit_residuals_hold_out_each_unit(data):
    """train-mean refitted without a fold predicts the mean change of the other folds' conditions."""
    adata, schema = data
    cf = cross_fit_residuals(
        lambda: make_instrument("train-mean"), adata, schema, n_folds=4, seed=0
    )
    assert cf.holdout == "perturbation"
    assert cf.residuals.shape == (20, adata.n_vars) and cf.scales is None
    assert sorted(set(cf.folds)) == [0, 1, 2, 3]
    observed = cf.residuals + cf.predicted
    for f in range(4):
        out = cf.folds != f
        assert_allclose(cf.predicted[cf.folds == f][0], observed[out].mean(axis=0), atol=1e-10)
    # the same seed gives the same folds; another seed other folds
    again = cross_fit_residuals(lambda: make_instrument("train-mean"), adata, schema, n_folds=4)
    assert_allclose(again.residuals, cf.residuals)
    other = cross_fit_residuals(
        lambda: make_instrument("train-mean"), adata, schema, n_folds=4, seed=1
    )
    assert not np.array_equal(other.folds, cf.folds)


def test_cross_fit_accepts_held_out_targets_that_are_not_measured(data):
    """A target absent from the gene panel (as most CRISPR targets are) can be held out."""
    adata, schema = data
    adata = adata.copy()
    labels = adata.obs[schema.perturbation_key].astype(str)
    single = next(p for p in labels.unique() if p != schema.control_label and "+" not in p)
    adata.obs[schema.perturbation_key] = labels.replace(single, "UNMEASURED1").to_numpy()
    model = make_instrument("conformal", base="train-mean", n_folds=4).fit(adata, schema)
    delta, low, high = model.predict_interval(["UNMEASURED1"], level=0.9).arrays()
    assert delta.shape == (1, adata.n_vars) and (low <= high).all()


def test_cross_fit_by_context():
    raw, schema = synthetic_perturbation_data(
        n_genes=40, n_singles=2, n_doubles=0, n_contexts=4, cells_per_condition=15, seed=4
    )
    adata, schema = prepare(raw, schema)
    cf = cross_fit_residuals(lambda: make_instrument("linear"), adata, schema, n_folds=5)
    assert cf.holdout == "context"
    assert sorted(set(cf.units)) == ["type0", "type1", "type2", "type3"]
    with pytest.raises(ValueError, match=r"'holdout' parameter"):
        cross_fit_residuals(lambda: make_instrument("linear"), adata, schema, holdout="cells")


class _ScaledTrainMean(PerturbationModel):
    """train-mean with a per-gene raw scale, to exercise the model-scale path."""

    capabilities = frozenset({"single", "combination"})

    def __init__(self) -> None:
        pass

    def _fit(self, summary, adata):
        self.mean_ = summary.delta.mean(axis=0)
        self.sd_ = summary.delta.std(axis=0) + 1e-3

    def _predict_delta(self, perturbations, contexts, control_mean):
        return np.tile(self.mean_, (len(perturbations), 1))

    def predict_scale(self, perturbations, *, contexts=None, doses=None, control=None):
        return np.tile(self.sd_, (len(perturbations), 1))


def test_cross_fit_collects_model_scales(data):
    adata, schema = data
    cf = cross_fit_residuals(_ScaledTrainMean, adata, schema, n_folds=3)
    assert cf.scales is not None and cf.scales.shape == cf.residuals.shape
    assert (cf.scales > 0).all()


# ----------------------------------------------------------------------------- wrapper
def test_conformal_model_passes_conformance():
    passed = check_instrument(
        ConformalModel, params={"base": "linear", "base_params": {"ridge": 1.0}, "n_folds": 3}
    )
    assert {"save-load", "determinism", "unknown-gene", "gene-panel"} <= set(passed)


def test_conformal_model_intervals_save_load_and_seed(data, tmp_path):
    adata, schema = data
    perts = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    held = [p for p in perts if "+" not in p][:3] + [p for p in perts if "+" in p][:1]
    train = adata[~adata.obs["perturbation"].isin(held)].copy()
    model = ConformalModel(base="linear", n_folds=4, seed=0).fit(train, schema)
    assert model.scale_kind_ == "gene" and model.holdout_ == "perturbation"
    d90, lo90, hi90 = model.predict_interval(held, level=0.9).arrays()
    _, lo80, hi80 = model.predict_interval(held, level=0.8).arrays()
    assert_allclose(d90, model.predict_delta(held))
    assert (lo90 <= d90).all() and (d90 <= hi90).all()
    assert (hi80 - lo80 <= hi90 - lo90 + 1e-12).all() and (hi90 - lo90).mean() > (
        hi80 - lo80
    ).mean()
    path = model.save(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    assert config["class"] == "ConformalModel" and config["state"]["base"]["instrument"] == "linear"
    loaded = PerturbationModel.load(path)
    for a, b in zip(loaded.predict_interval(held, level=0.9), (d90, lo90, hi90), strict=True):
        assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # same seed, same intervals; the seed changes the folds and so the calibration
    again = ConformalModel(base="linear", n_folds=4, seed=0).fit(train, schema)
    assert_allclose(again.predict_interval(held)[1], lo90)
    other = ConformalModel(base="linear", n_folds=4, seed=5).fit(train, schema)
    assert not np.allclose(other.predict_interval(held)[1], lo90)


def test_conformal_model_uses_model_scale_and_checks_params(data):
    adata, schema = data
    from aivc.instruments import register_instrument
    from aivc.instruments._registry import _INSTRUMENTS

    register_instrument("test-scaled-train-mean", description="test")(_ScaledTrainMean)
    try:
        model = ConformalModel(base="test-scaled-train-mean", n_folds=3).fit(adata, schema)
        assert model.scale_kind_ == "model"
        _, lo, hi = model.predict_interval(["GENE000", "GENE001"]).arrays()
        # the width follows the model's own per-gene scale (where no floor at zero clipped it)
        free = lo[0] > -np.asarray(model.control_mean_[None]) + 1e-12
        assert free.sum() > 10
        ratio = (hi - lo)[0] / model.base_.sd_
        assert_allclose(ratio[free], ratio[free][0])
    finally:
        del _INSTRUMENTS["test-scaled-train-mean"]
    with pytest.raises(ValueError, match=r"base_params \['depth'\] are not parameters"):
        ConformalModel(base="linear", base_params={"depth": 3}).fit(adata, schema)
    with pytest.raises(ValueError, match=r"needs a base model with predict_scale"):
        ConformalModel(base="train-mean", scale="model").fit(adata, schema)
    fitted = ConformalModel(base="train-mean", n_folds=3).fit(adata, schema)
    with pytest.raises(ValueError, match=r"coverage in \(0, 1\)"):
        fitted.predict_interval(["GENE000"], level=1.5)


def test_conformal_coverage_on_held_out_synthetic_perturbations():
    """Held-out perturbations of the same kind as the training ones are covered near nominal."""
    raw, schema = synthetic_perturbation_data(
        n_genes=80, n_singles=40, n_doubles=0, cells_per_condition=20, n_control_cells=80, seed=7
    )
    adata, schema = prepare(raw, schema)
    perts = np.array(sorted(set(adata.obs["perturbation"].astype(str)) - {"control"}))
    covered = []
    for seed in range(3):
        held = list(np.random.default_rng(seed).choice(perts, 8, replace=False))
        train = adata[~adata.obs["perturbation"].isin(held)].copy()
        model = ConformalModel(base="train-mean", n_folds=5, seed=seed).fit(train, schema)
        _, lo, hi = model.predict_interval(held, level=0.9).arrays()
        sub = adata[adata.obs["perturbation"].isin([*held, "control"])]
        x = sub.X.toarray()
        lab = sub.obs["perturbation"].astype(str).to_numpy()
        obs = np.stack([x[lab == p].mean(0) for p in held]) - x[lab == "control"].mean(0)
        covered.append(((obs >= lo) & (obs <= hi)).mean())
    assert 0.8 < np.mean(covered) < 0.98, covered


# ----------------------------------------------------------------------------- benchmark task
def test_calibration_scores():
    from aivc.evaluate.tasks.calibration import _score

    rng = np.random.default_rng(0)
    obs = rng.normal(0, 1, (20, 30))
    delta = np.zeros_like(obs)
    width = np.where(np.arange(30) < 15, 1.0, 6.0)[None, :] * np.ones((20, 1))
    obs[:, 15:] *= 3  # the wide genes are also the ones with larger errors
    ints = {
        lv: (delta - width / 2 * f, delta + width / 2 * f) for lv, f in ((0.8, 0.8), (0.9, 1.0))
    }
    de20 = np.zeros_like(obs, dtype=bool)
    de20[:, :3] = True
    s = _score(obs, delta, ints, de20, np.full_like(obs, 0.1))
    inside = (np.abs(obs) <= width / 2).mean()
    assert_allclose(s["coverage_90"], inside)
    assert s["coverage_80"] <= s["coverage_90"]
    assert_allclose(s["coverage_90_de20"], (np.abs(obs[:, :3]) <= 0.5).mean())
    assert_allclose(s["interval_width_90"], 3.5)
    assert s["spearman_uncertainty_error"] > 0.3
    assert_allclose(s["truth_noise_ratio"], 0.1 / 1.75)


@pytest.mark.slow
def test_run_calibration_on_real_combinations(data_dir, tmp_path):
    """The calibration task end to end on Norman doubles (one seed, two baselines)."""
    from aivc.evaluate import run_task

    result = run_task(
        "calibration",
        tmp_path,
        models=["train-mean", "conformal:additive"],
        seeds=[0],
        variant="combinations",
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["task"] == "calibration" and saved["tasks"] == ["combinations"]
    assert saved["models"] == ["conformal:train-mean", "conformal:additive"]
    entry = result["results"]["combinations"]
    for name in saved["models"]:
        m = entry["models"][name]
        assert 0.7 < m["coverage_90"]["mean"] <= 1.0
        assert m["coverage_80"]["mean"] < m["coverage_90"]["mean"]
        assert m["interval_width_90"]["mean"] > 0
    assert entry["wall_seconds"]["conformal:additive"] > 0
    assert "| conformal:additive |" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match=r"has variants"):
        run_task("calibration", tmp_path, variant="nope")


def test_intervals_are_labelled_conditions_by_genes(data):
    """predict_interval answers frames: rows named like condition labels, columns the genes."""
    adata, schema = data
    model = ConformalModel(base="additive", n_folds=3).fit(adata, schema)
    queries = ["GENE000", "GENE001+GENE002", "GENE000"]
    out = model.predict_interval(queries, level=0.8)
    delta, lower, upper = out
    for frame in out:
        assert list(frame.index) == queries and frame.index.name == "condition"
        assert list(frame.columns) == list(model.genes_) and frame.columns.name == "gene"
    assert out.level == 0.8
    assert_allclose(delta.to_numpy(), model.predict_delta(queries))
    assert_allclose(out.arrays()[1], lower.to_numpy())
    long = out.long()
    assert list(long.columns) == ["condition", "gene", "delta", "lower", "upper"]
    row = long[(long.condition == "GENE001+GENE002") & (long.gene == model.genes_[5])].iloc[0]
    assert row.lower == lower.iloc[1, 5] and row.upper == upper.iloc[1, 5]


def test_intervals_with_contexts_and_doses_are_labelled_with_them():
    from aivc.data import CONDITION_SEP

    raw, schema = synthetic_perturbation_data(
        n_genes=30, n_singles=4, n_doubles=0, n_contexts=2, cells_per_condition=12, seed=2
    )
    adata, schema = prepare(raw, schema)
    model = ConformalModel(base="context-mean", n_folds=2).fit(adata, schema)
    ctxs = sorted(adata.obs[schema.context_key].astype(str).unique())
    out = model.predict_interval(["GENE000", "GENE001"], contexts=ctxs, level=0.9)
    assert list(out.delta.index) == [
        f"GENE000{CONDITION_SEP}{ctxs[0]}",
        f"GENE001{CONDITION_SEP}{ctxs[1]}",
    ]
