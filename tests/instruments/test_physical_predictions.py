"""Predicted mean expression is never negative, whatever the combination size."""

from __future__ import annotations

import numpy as np
import pytest

from aivc.data import prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.instruments import clip_interval, floor_at_zero, make_instrument
from aivc.instruments._base import CLIP_MARGIN


@pytest.fixture(scope="module")
def fitted():
    raw, schema = synthetic_perturbation_data(n_singles=12, n_doubles=4, seed=3)
    adata, schema = prepare(raw, schema)
    singles = sorted(
        p
        for p in set(adata.obs[schema.perturbation_key].astype(str))
        if p != schema.control_label and schema.order(p) == 1
    )
    models = {
        name: make_instrument(name).fit(adata, schema)
        for name in ("additive", "linear", "aivc-perturb")
    }
    models["conformal:additive"] = make_instrument("conformal", base="additive").fit(adata, schema)
    return models, singles, schema


@pytest.mark.parametrize("size", [1, 2, 4, 8])
@pytest.mark.parametrize("name", ["additive", "linear", "aivc-perturb", "conformal:additive"])
def test_predicted_means_are_never_negative(fitted, name, size) -> None:
    models, singles, schema = fitted
    model = models[name]
    combo = schema.combination_separator.join(singles[:size])
    base = np.asarray(model.control_mean_[None])
    delta = model.predict_delta([combo])
    assert (base + delta >= -1e-12).all()
    assert (model.predict_mean([combo]) >= -1e-12).all()
    if "uncertainty" in type(model).capabilities:
        d, lo, hi = model.predict_interval([combo], level=0.9).arrays()
        assert np.array_equal(d, delta)
        # the lower bound stays within the rounding margin below zero expression
        assert (base + lo >= -1e-4).all() and (lo <= hi).all()


def test_the_floor_only_raises_what_would_be_negative() -> None:
    base = np.array([[1.0, 0.5, 0.0]])
    delta = np.array([[-2.0, 0.3, -0.1]])
    assert np.array_equal(floor_at_zero(delta, base), [[-1.0, 0.3, 0.0]])
    lo, hi = clip_interval(np.array([[-3.0, -0.1, -1.0]]), np.array([[-1.5, 0.4, 0.2]]), base)
    margin = CLIP_MARGIN
    assert np.allclose(lo, [[-1.0 - margin, -0.1, -margin]], rtol=0, atol=1e-12)
    assert np.allclose(hi, [[-1.0, 0.4, 0.2]], rtol=0, atol=1e-12)
    # a value measured at exactly zero expression stays inside the clipped interval
    assert lo[0, 0] < -1.0 <= hi[0, 0]
