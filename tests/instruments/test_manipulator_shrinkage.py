"""Shrinkage of ``aivc-perturb``'s predicted changes towards zero (``null_shrinkage``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from aivc.data import prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.instruments import PerturbModel

# no knowledge tables (quick and offline); the regression without the blend, whose stages these
# tests check (the blend has its own tests)
FAST = {"embeddings": "coexpression", "blend": False}


@pytest.fixture(scope="module")
def split(held_out_singles):
    return held_out_singles


@pytest.fixture(scope="module")
def plain(split):
    train, schema, _, _ = split
    return PerturbModel(**FAST, null_shrinkage="none").fit(train, schema)


# On ``split`` the regression has no informative embedding (co-expression of independent
# synthetic genes), so its held-out predictions are the mean training change and no shrinkage
# is ever chosen. Here each target's features are a noisy copy of its measured change: an
# informative but imperfect embedding whose held-out predictions overshoot, so every kind is
# chosen with a positive strength (and the prior scale below 1). The tests check that first.
INFORMED = {"embeddings": "features", "blend": False}


@pytest.fixture(scope="module")
def informed():
    """``(train, schema, held, features)``: 20 synthetic knockouts, four held out, with features."""
    raw, schema = synthetic_perturbation_data(
        n_genes=60, n_singles=20, n_doubles=0, cells_per_condition=20, n_control_cells=80, seed=1
    )
    adata, schema = prepare(raw, schema)
    labels = adata.obs[schema.perturbation_key].astype(str)
    singles = sorted(set(labels) - {schema.control_label})
    x = adata.X.toarray()
    ctrl = x[(labels == schema.control_label).to_numpy()].mean(axis=0)
    changes = np.stack([x[(labels == t).to_numpy()].mean(axis=0) - ctrl for t in singles])
    noise = np.random.default_rng(0).normal(size=changes.shape) * changes.std()
    features = pd.DataFrame(changes + 0.5 * noise, index=singles)
    held = singles[:4]
    train = adata[~labels.isin(held).to_numpy()].copy()
    return train, schema, held, features


def _fit_informed(informed, kind, **kwargs):
    train, schema, _, features = informed
    return PerturbModel(**INFORMED, null_shrinkage=kind).fit(
        train, schema, perturbation_features=features, **kwargs
    )


@pytest.fixture(scope="module")
def informed_plain(informed):
    return _fit_informed(informed, "none")


def _regression(model, held):
    """The regression's mean change and per-gene variance of held-out targets, before the
    shrinkage and the own-gene model."""
    states = np.stack([model.control_mean_[None]] * len(held))
    mean, v = model._gp_singles(held, np.zeros(len(held)), states)
    return mean, v[:, None] * model.gene_sigma2_[None, :]


def _shrunk_entries(model, held):
    """Entries the post-hoc shrinkage acts on: all but the held-out targets' own genes (set by
    the own-gene model afterwards)."""
    mask = np.ones((len(held), len(model.genes_)), dtype=bool)
    for i, j in model._own_gene(held):
        mask[i, j] = False
    return mask


def test_invalid_value_is_refused(split):
    train, schema, _, _ = split
    with pytest.raises(ValueError, match="'null_shrinkage' parameter"):
        PerturbModel(**FAST, null_shrinkage="zero").fit(train, schema)


def test_default_is_dispersion_and_none_keeps_the_gp_mean(plain):
    assert PerturbModel().get_params()["null_shrinkage"] == "dispersion"
    assert plain.shrinkage_ == "none"
    assert plain.shrinkage_strength_ == 0.0
    assert plain.prior_scale_ == 1.0
    assert np.all(plain.null_weight_ == 1)


def test_condition_scales_each_prediction_without_turning_it(informed, informed_plain):
    held = informed[2]
    model = _fit_informed(informed, "condition")
    assert model.shrinkage_ == "condition" and model.shrinkage_strength_ > 0
    ref = informed_plain.predict_delta(held)
    got, scale = model.predict_with_scale(held)
    on = _shrunk_entries(model, held)
    # one factor per condition, in (0, 1) and well away from 1: direction (hence pearson_delta)
    # is unchanged, the size is not
    r, g = np.where(on, ref, 0.0), np.where(on, got, 0.0)
    factor = (g * r).sum(axis=1) / (r * r).sum(axis=1)
    assert np.all((factor > 0) & (factor < 0.99)), factor
    assert_allclose(g, factor[:, None] * r, rtol=1e-9, atol=1e-12)
    # the factor is |f|^2 / (|f|^2 + c |s|^2) with the regression's mean f and predictive
    # variance s^2 over all genes (the own genes' before the own-gene model replaces them);
    # the sd is the same with and without the shrinkage, which moves only the mean
    assert_allclose(scale, informed_plain.predict_scale(held))
    f, s2 = _regression(model, held)
    assert_allclose(f[on], ref[on], rtol=1e-9, atol=1e-12)
    assert_allclose(scale[on], np.sqrt(s2[on]), rtol=1e-9)
    ff = (f**2).sum(axis=1)
    assert_allclose(factor, ff / (ff + model.shrinkage_strength_ * s2.sum(axis=1)), rtol=1e-9)


def test_uncertainty_shrinks_gene_by_gene_towards_zero(informed, informed_plain):
    held = informed[2]
    model = _fit_informed(informed, "uncertainty")
    assert model.shrinkage_ == "uncertainty" and model.shrinkage_strength_ > 0
    ref = informed_plain.predict_delta(held)
    got, scale = model.predict_with_scale(held)
    on = _shrunk_entries(model, held)
    assert np.all(np.abs(got) <= np.abs(ref) + 1e-12)
    assert np.all(got * ref >= -1e-15)  # never flips a sign
    # each gene by its own factor f^2 / (f^2 + c s^2): confident changes keep their size,
    # uncertain ones go to zero, so the factors differ between the genes of one condition
    c = model.shrinkage_strength_
    assert_allclose(got[on], (ref * ref**2 / (ref**2 + c * scale**2))[on], rtol=1e-9, atol=1e-12)
    factor = np.where(on & (np.abs(ref) > 1e-6), got / np.where(ref == 0, 1.0, ref), np.nan)
    assert np.all(np.nanmax(factor, axis=1) - np.nanmin(factor, axis=1) > 0.5)


@pytest.mark.parametrize("kind", ["condition", "uncertainty", "dispersion", "gene"])
def test_measured_singles_are_not_shrunk(informed, informed_plain, kind):
    train, schema, held, _ = informed
    model = _fit_informed(informed, kind)
    assert model.shrinkage_ == kind and model.shrinkage_strength_ > 0
    # the shrinkage is active: the unmeasured targets' changes are smaller ...
    shrunk = np.abs(model.predict_delta(held)).sum(axis=1)
    assert np.all(shrunk < 0.99 * np.abs(informed_plain.predict_delta(held)).sum(axis=1))
    # ... but the measured ones are their measured changes, untouched
    labels = train.obs[schema.perturbation_key].astype(str)
    seen = sorted(set(labels) - {schema.control_label})
    rows = [[k[0] for k in model.measured_keys_].index(t) for t in seen]
    assert_allclose(model.predict_delta(seen), informed_plain.predict_delta(seen), atol=1e-12)
    measured = np.maximum(model.measured_delta_[rows], -model.control_mean_[None])  # floored
    assert_allclose(model.predict_delta(seen), measured, atol=1e-12)


def test_neighbour_dispersion_weighs_disagreement_by_the_smoother_weights():
    from aivc.instruments._manipulator import _neighbour_dispersion

    y = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])  # three training changes
    f = np.array([[1.0, 0.0], [0.0, 0.0]])  # two predictions
    # the first leans on the agreeing row only; the second on two rows, one with a sign flip
    weights = np.array([[1.0, 0.0, 0.0], [0.5, 0.0, -1.5]])
    got = _neighbour_dispersion(weights, y, f)
    assert_allclose(got, [0.0, 0.25 * 1.0 + 0.75 * 25.0])


@pytest.mark.parametrize("kind", ["condition", "dispersion", "prior"])
def test_choice_is_the_lowest_training_objective(informed, kind):
    model = _fit_informed(informed, kind)
    prefix = "prior-scale|" if kind == "prior" else "null-shrinkage|"
    scored = {
        k[len(prefix) :]: v["objective"]
        for k, v in model.selection_.items()
        if k.startswith(prefix) and isinstance(v, dict) and "objective" in v
    }
    assert len(scored) > 1
    if kind == "prior":
        chosen = f"scale={model.prior_scale_}|ridge={model.ridge_}"
        assert 0.0 < model.prior_scale_ < 1.0
    else:
        assert model.shrinkage_ == kind
        chosen = f"{model.shrinkage_}={model.shrinkage_strength_}"
    # the chosen candidate beats the others, "none" (scale 1) among them
    assert scored[chosen] == min(scored.values())
    assert scored[chosen] < (
        scored["none"]
        if kind != "prior"
        else min(v for k, v in scored.items() if k.startswith("scale=1.0|"))
    )


def test_prior_scale_sets_what_unlike_targets_get(informed):
    """A known gene without any embedding gets the scaled mean training change."""
    model = _fit_informed(informed, "prior", known_genes=["NOVELGENE"])
    plain = _fit_informed(informed, "none", known_genes=["NOVELGENE"])
    assert 0.0 < model.prior_scale_ < 1.0
    assert plain.prior_scale_ == 1.0
    # the unscaled prior mean (the mean training change) is far from zero, so the scale shows
    assert np.abs(plain.prior_mean_).max() > 0.5
    assert_allclose(model.prior_mean_, model.prior_scale_ * plain.prior_mean_, atol=1e-9)
    assert_allclose(model.predict_delta(["NOVELGENE"])[0], model.prior_mean_, atol=1e-9)
    assert_allclose(plain.predict_delta(["NOVELGENE"])[0], plain.prior_mean_, atol=1e-9)


@pytest.mark.parametrize("kind", ["condition", "uncertainty", "dispersion", "gene", "prior"])
def test_save_load_keeps_the_shrinkage(informed, informed_plain, tmp_path, kind):
    held = informed[2]
    model = _fit_informed(informed, kind)
    if kind == "prior":
        assert 0.0 < model.prior_scale_ < 1.0
    else:
        assert model.shrinkage_ == kind and model.shrinkage_strength_ > 0
    # the shrinkage changes the predictions, so a model that lost it on load would differ
    assert np.abs(model.predict_delta(held) - informed_plain.predict_delta(held)).max() > 0.1
    path = model.save(tmp_path / "m")
    back = PerturbModel.load(path)
    assert back.get_params()["null_shrinkage"] == kind
    assert (back.shrinkage_, back.shrinkage_strength_, back.prior_scale_) == (
        model.shrinkage_,
        model.shrinkage_strength_,
        model.prior_scale_,
    )
    assert_allclose(back.predict_delta(held), model.predict_delta(held))
    _, lo, hi = model.predict_interval(held)
    _, lo2, hi2 = back.predict_interval(held)
    assert_allclose(lo, lo2, rtol=1e-6, atol=1e-7)  # conformal scores are stored as float32
    assert_allclose(hi, hi2, rtol=1e-6, atol=1e-7)


def test_an_unknown_stored_shrinkage_is_refused_on_load(plain, tmp_path):
    import json

    from aivc.data import DataValidationError

    path = plain.save(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["state"]["shrinkage"]["kind"] = "bogus"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataValidationError, match="corrupted"):
        PerturbModel.load(path)


def test_too_few_training_targets_are_not_shrunk():
    raw, schema = synthetic_perturbation_data(
        n_genes=40, n_singles=2, n_doubles=0, cells_per_condition=15, n_control_cells=40, seed=2
    )
    adata, schema = prepare(raw, schema)
    model = PerturbModel(**FAST, null_shrinkage="condition").fit(adata, schema)
    assert model.shrinkage_ == "none"


@pytest.mark.slow
def test_shrinkage_lowers_held_out_mae_on_papalexi(data_dir, tmp_path):
    """Real CRISPR knockouts (papalexi2021, the first two 5-fold splits of seed 0): the
    scaled prior mean and the neighbour-dispersion shrinkage (the default) lower the mean
    absolute error over all genes of the held-out knockouts, the intervals still cover
    their measured changes, and the dispersion shrinkage scales each knockout's change by
    |f|^2 / (|f|^2 + c D) with D its neighbours' disagreement."""
    from aivc.evaluate.tasks.perturbation import (
        _observe,
        _test_conditions,
        _training_view,
        task_data,
    )
    from aivc.instruments._manipulator import _neighbour_dispersion

    data = task_data("unseen-single", None, [0], data_dir=data_dir)
    obs = _observe(data.adata, data.schema, seed=0)
    errs: dict[str, list[float]] = {}
    widths: dict[str, list[float]] = {}
    for split in data.splits[:2]:
        train = _training_view(obs, split)
        conds = _test_conditions(obs, split)
        perts = [obs.pert_of[c] for c in conds]
        observed = obs.delta.loc[conds].to_numpy()
        models = {}
        for kind in ("none", "prior", "dispersion"):
            model = PerturbModel(null_shrinkage=kind, seed=0).fit(
                train, data.schema, known_genes=data.known
            )
            models[kind] = model
            pred = model.predict_delta(perts)
            errs.setdefault(kind, []).append(np.abs(pred - observed).mean())
            _, lo, hi = model.predict_interval(perts, level=0.9).arrays()
            coverage = float(((observed >= lo) & (observed <= hi)).mean())
            widths.setdefault(kind, []).append(float((hi - lo).mean()))
            if kind != "none":
                # shrinking keeps the intervals honest, and does not buy coverage by widening them
                assert coverage > 0.8, coverage
                assert widths[kind][-1] <= 1.25 * widths["none"][-1], widths
        # the dispersion factor, from the model's own smoother weights and training changes
        model, plain = models["dispersion"], models["none"]
        assert model.shrinkage_ == "dispersion" and model.shrinkage_strength_ > 0
        states = np.stack([model.row_states_[0]] * len(perts))
        f, _ = plain._gp_singles(perts, np.zeros(len(perts)), states)
        k = model.stages_["kernel"].kernel(
            model.stages_["context"], perts, np.zeros(len(perts)), states
        )
        d = _neighbour_dispersion(k @ model.inverse_, model._row_changes(), f)
        factor = (f**2).sum(axis=1) / ((f**2).sum(axis=1) + model.shrinkage_strength_ * d)
        assert np.all((factor > 0) & (factor < 1))
        got = model.predict_delta(perts)
        own = np.zeros_like(got, dtype=bool)
        for i, j in model._own_gene(perts):
            own[i, j] = True
        assert_allclose(got[~own], (factor[:, None] * f)[~own], rtol=1e-6, atol=1e-9)
        back = PerturbModel.load(model.save(tmp_path / split.name))
        assert_allclose(back.predict_delta(perts), got)
    assert np.mean(errs["prior"]) < np.mean(errs["none"]), errs
    assert np.mean(errs["dispersion"]) < np.mean(errs["none"]), errs


def test_detection_shift_matches_the_mean_and_switches_cells_on_and_off():
    from aivc.instruments import _manipulator_module as mm

    rng = np.random.default_rng(0)
    # counts-like log-normalised cells: 200 cells x 30 genes of increasing mean
    lam = np.linspace(0.02, 3.0, 30)
    cells = np.log1p(rng.poisson(lam, size=(200, 30)).astype(float))
    curve = mm.detection_curve(cells)
    assert np.all(np.diff(curve[1]) >= 0)
    target = cells.mean(axis=0).copy()
    target[0] += 1.0  # a rarely detected gene induced strongly
    target[-1] *= 0.3  # a common gene repressed
    target[10] = 0.0  # switched off entirely
    out = mm.detection_shift_cells(cells, target, np.random.default_rng(1), curve)
    assert_allclose(out.mean(axis=0), target, atol=1e-6)
    det_before, det_after = (cells > 0).mean(axis=0), (out > 0).mean(axis=0)
    assert det_after[0] > det_before[0] + 0.2
    assert det_after[-1] < det_before[-1]
    assert det_after[10] == 0.0
    unchanged = np.ones(30, dtype=bool)
    unchanged[[0, 10, 29]] = False
    assert_allclose(det_after[unchanged], det_before[unchanged], atol=0.02)
    # genes outside the mask keep their detection rate (only scaled)
    mask = np.zeros(30, dtype=bool)
    masked = mm.detection_shift_cells(cells, target, np.random.default_rng(1), curve, genes=mask)
    # (scaling alone cannot lift the rare gene 0 to its target: the problem solved above)
    # (a gene outside the mask is not switched off either: scaled towards zero instead)
    assert_allclose(masked.mean(axis=0)[1:], target[1:], atol=1e-4)
    assert masked[:, 0].mean() < target[0] - 0.5
    assert_allclose((masked > 0).mean(axis=0), det_before)
    # plain scaling keeps the detection rate: the induced gene stays rare
    plain = PerturbModel(cell_detection=False)._move_cells(
        cells, target, np.random.default_rng(1), None
    )
    assert (plain[:, 0] > 0).mean() == pytest.approx(det_before[0])


def test_cell_detection_is_validated_and_predict_uses_it(split):
    train, schema, held, _ = split
    with pytest.raises(ValueError, match="'cell_detection' parameter"):
        PerturbModel(**FAST, cell_detection="yes").fit(train, schema)
    assert PerturbModel().get_params()["cell_detection"] == "auto"
    model = PerturbModel(**FAST, cell_detection=True).fit(train, schema)
    labels = train.obs[schema.perturbation_key].astype(str)
    control = train[(labels == schema.control_label).to_numpy()].copy()
    cells = model.predict(held, control=control, n_cells=150, include_control=False)
    x = cells.X.toarray()
    delta = model.predict_delta(held)
    base = np.asarray(control.X.mean(axis=0)).ravel()
    for i in range(len(held)):
        block = x[i * 150 : (i + 1) * 150]
        want = np.clip(base + delta[i], 0, None)
        assert_allclose(block.mean(axis=0), want, atol=1e-3)


def test_conformance_with_the_options():
    from aivc.instruments import check_instrument

    params = {**FAST, "null_shrinkage": "prior", "cell_detection": True}
    passed = check_instrument(PerturbModel, params=params)
    assert {"save-load", "determinism", "predict-cells", "unknown-gene"} <= set(passed)


def test_detection_threshold_is_chosen_by_the_de_genes_it_recovers():
    from aivc.instruments import _manipulator_module as mm

    rng = np.random.default_rng(3)
    lam = np.linspace(0.05, 3.0, 40)
    control = np.log1p(rng.poisson(lam, size=(400, 40)).astype(float))
    real, pred = [], []
    for k in range(4):
        # rarely detected genes switched on in most cells, as in an induced response
        up = lam.copy()
        up[[k, k + 4]] = 2.0
        cells = np.log1p(rng.poisson(up, size=(200, 40)).astype(float))
        real.append(cells)
        pred.append(cells.mean(axis=0) - control.mean(axis=0))
    pred = np.asarray(pred)
    scale = np.full_like(pred, 0.01)
    z, scores = mm.choose_detection_threshold(
        real, [None] * 4, {None: control}, pred, scale, np.random.default_rng(0)
    )
    assert set(scores) == {"1.96", "3.0", "inf"}
    # scaling alone leaves the induced genes rare, so they are not called; detection recovers them
    assert scores["1.96"] > scores["inf"]
    assert np.isfinite(z)
    assert scores[str(z)] == max(scores.values())
    # predictions without any confident change leave only scaling (ties go to the larger threshold)
    z_none, scores_none = mm.choose_detection_threshold(
        real, [None] * 4, {None: control}, pred, np.full_like(pred, 1e3), np.random.default_rng(0)
    )
    assert np.isinf(z_none)
    assert len(set(scores_none.values())) == 1


def test_auto_detection_is_chosen_at_fit_and_kept_by_save_load(split, tmp_path):
    train, schema, held, _ = split
    model = PerturbModel(**FAST, cell_detection="auto").fit(train, schema)
    choice = model.selection_["detection"]
    assert set(choice["overlap"]) <= {"1.96", "3.0", "inf"}
    assert choice["chosen"] == ("inf" if np.isinf(model.detection_z_) else model.detection_z_)
    assert PerturbModel(**FAST, cell_detection=False).fit(train, schema).detection_z_ == np.inf
    model.save(tmp_path / "m")
    back = PerturbModel.load(tmp_path / "m")
    assert back.detection_z_ == model.detection_z_
    labels = train.obs[schema.perturbation_key].astype(str)
    control = train[(labels == schema.control_label).to_numpy()].copy()
    a = model.predict(held, control=control, n_cells=50, seed=2)
    b = back.predict(held, control=control, n_cells=50, seed=2)
    assert_allclose(a.X.toarray(), b.X.toarray())
