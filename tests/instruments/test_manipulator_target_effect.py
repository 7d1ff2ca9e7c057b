"""The change a perturbation makes on its own target gene (``target_effect``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

from aivc.data import DataValidationError
from aivc.instruments import PerturbModel

# no knowledge tables (quick and offline); the regression without the blend, whose stages these
# tests check (the blend has its own tests)
FAST = {"embeddings": "coexpression", "blend": False}


@pytest.fixture(scope="module")
def split(held_out_singles):
    """The held-out synthetic singles, with each held-out target's own gene and the control mean."""
    train, schema, held, observed = held_out_singles
    labels = train.obs[schema.perturbation_key].astype(str)
    x = train.X.toarray() if hasattr(train.X, "toarray") else np.asarray(train.X)
    ctrl = x[(labels == schema.control_label).to_numpy()].mean(axis=0)
    own = [list(train.var_names).index(h) for h in held]
    return train, schema, held, observed, own, ctrl


@pytest.fixture(scope="module")
def models(split):
    train, schema, *_ = split
    on = PerturbModel(**FAST).fit(train, schema)
    off = PerturbModel(**FAST, target_effect=False).fit(train, schema)
    return on, off


def test_unmeasured_targets_get_the_median_own_gene_change(split, models):
    train, schema, held, observed, own, ctrl = split
    on, off = models
    genes = list(train.var_names)
    labels = train.obs[schema.perturbation_key].astype(str)
    x = train.X.toarray() if hasattr(train.X, "toarray") else np.asarray(train.X)
    trained = sorted(set(labels) - {schema.control_label})
    measured = [
        x[(labels == t).to_numpy(), genes.index(t)].mean() - ctrl[genes.index(t)] for t in trained
    ]
    assert on.target_change_ == pytest.approx(float(np.median(measured)))
    assert off.target_change_ is None
    # the kept form is the one with the lower held-out error
    rms = on.selection_["target-effect|held-out rms"]
    assert on.target_form_ == min(rms, key=rms.get)
    assert on.target_sd_ == pytest.approx(rms[on.target_form_])
    got = on.predict_delta(held)
    rows = np.arange(len(held))
    if on.target_form_ == "shift":
        expected = np.maximum(on.target_change_, -ctrl[own])
    else:
        expected = np.log1p(on.target_fraction_ * np.expm1(ctrl[own])) - ctrl[own]
    assert_allclose(got[rows, own], expected, rtol=1e-6)
    # the own-gene error falls well below the GP's, which knows nothing of the target's own gene
    err_on = np.abs(got[rows, own] - observed[rows, own]).mean()
    err_off = np.abs(off.predict_delta(held)[rows, own] - observed[rows, own]).mean()
    assert err_on < 0.5 * err_off
    # and the own-gene predictive sd is the spread of the held-out own-gene errors
    _, scale = on.predict_with_scale(held)
    assert_allclose(scale[rows, own], on.target_sd_)
    assert on.target_sd_ > 0


def test_every_other_gene_keeps_the_gp_prediction(split, models):
    _, _, held, _, own, _ = split
    on, off = models
    got, ref = on.predict_delta(held), off.predict_delta(held)
    mask = np.ones_like(got, dtype=bool)
    mask[np.arange(len(held)), own] = False
    assert_allclose(got[mask], ref[mask])
    # a combination of unmeasured targets adds their own-gene changes too
    combo = on.predict_delta([f"{held[0]}+{held[1]}"])[0]
    assert combo[own[0]] < ref[0, own[0]] and combo[own[1]] < ref[1, own[1]]


def test_measured_targets_keep_their_measured_change(split, models):
    train, schema, *_ = split
    on, _ = models
    labels = train.obs[schema.perturbation_key].astype(str)
    trained = sorted(set(labels) - {schema.control_label})[:3]
    for t, got in zip(trained, on.predict_delta(trained), strict=True):
        j = on.measured_keys_.index([t, None, 0.0])
        assert_allclose(got, on.measured_delta_[j])


def _own_gene_world(train, schema, change):
    """``train`` with every perturbed cell's own-gene value set by ``change(control level)``."""
    out = train.copy()
    x = out.X.toarray() if hasattr(out.X, "toarray") else np.array(out.X, dtype=float)
    labels = out.obs[schema.perturbation_key].astype(str).to_numpy()
    genes = list(out.var_names)
    level = x[labels == schema.control_label].mean(axis=0)
    for t in set(labels) - {schema.control_label}:
        j = genes.index(t)
        x[labels == t, j] = level[j] + change(level[j])
    out.X = x
    return out


@pytest.mark.parametrize(
    ("form", "change"),
    [
        # the same share of the expression removed, whatever the level
        ("fraction", lambda lv: np.log1p(0.1 * np.expm1(lv)) - lv),
        # the same step down on the log scale
        ("shift", lambda lv: -min(0.4, lv)),
    ],
)
def test_the_form_that_fits_the_knockouts_is_kept(split, form, change):
    train, schema, held, _, own, ctrl = split
    world = _own_gene_world(train, schema, change)
    model = PerturbModel(**FAST).fit(world, schema)
    assert model.target_form_ == form
    if form == "fraction":
        assert model.target_fraction_ == pytest.approx(0.1, abs=0.02)
    got = model.predict_delta(held)[np.arange(len(held)), own]
    assert_allclose(got, [change(lv) for lv in ctrl[own]], atol=0.03)


def test_few_targets_in_the_panel_turn_it_off(split):
    train, schema, *_ = split
    labels = train.obs[schema.perturbation_key].astype(str)
    keep = sorted(set(labels) - {schema.control_label})[:2]
    small = train[labels.isin([*keep, schema.control_label]).to_numpy()].copy()
    model = PerturbModel(**FAST).fit(small, schema)
    assert model.target_change_ is None


def test_survives_save_and_load(split, models, tmp_path):
    _, _, held, *_ = split
    on, _ = models
    on.save(tmp_path / "m")
    back = PerturbModel.load(tmp_path / "m")
    assert back.target_change_ == on.target_change_
    assert back.target_sd_ == on.target_sd_
    assert (back.target_form_, back.target_fraction_) == (on.target_form_, on.target_fraction_)
    assert_allclose(back.predict_delta(held), on.predict_delta(held))


@pytest.mark.parametrize(
    ("key", "value"),
    [("form", "bogus"), ("fraction", -0.5), ("fraction", "nan")],
)
def test_a_corrupted_own_gene_model_is_refused_on_load(models, tmp_path, key, value):
    on, _ = models
    path = on.save(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["state"]["target"][key] = float(value) if value == "nan" else value
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataValidationError, match="own-gene model"):
        PerturbModel.load(path)


def test_invalid_value_is_refused(split):
    train, schema, *_ = split
    with pytest.raises(ValueError, match="'target_effect' parameter"):
        PerturbModel(**FAST, target_effect="yes").fit(train, schema)
