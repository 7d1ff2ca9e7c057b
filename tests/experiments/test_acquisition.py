"""Acquisition strategies: contract of ``propose`` and the GP surrogates."""

from __future__ import annotations

import numpy as np
import pytest

from aivc.experiments._acquisition import STRATEGIES, Strategy, propose, register_strategy
from aivc.experiments._surrogates import GPRegressor, batch_ucb

NAMES = ["random", "uncertainty", "gp-ucb", "degree-prior", "aivc-design"]


def _problem(n: int = 300, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    y = x @ w + 0.1 * rng.normal(size=n)
    prior = x @ w + rng.normal(size=n)
    return x, y, prior


def test_registry_has_the_named_strategies():
    assert set(NAMES) <= set(STRATEGIES)
    with pytest.raises(ValueError, match="already registered"):
        register_strategy(Strategy("random", "dup", lambda *a: a[3], False, False))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_measured", [0, 40])
def test_never_repeats_measured_and_respects_batch(name, n_measured):
    x, y, prior = _problem()
    measured = np.random.default_rng(1).choice(len(x), n_measured, replace=False)
    batch = propose(
        name,
        features=x,
        measured_idx=measured,
        measured_y=y[measured],
        batch_size=25,
        rng=np.random.default_rng(0),
        prior=prior,
    )
    assert batch.dtype.kind == "i"
    assert batch.size == 25
    assert np.unique(batch).size == 25
    assert not np.isin(batch, measured).any()
    assert ((batch >= 0) & (batch < len(x))).all()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_by_seed(name):
    x, y, prior = _problem()
    measured = np.arange(30)
    kw = {"features": x, "measured_idx": measured, "measured_y": y[measured], "batch_size": 10}
    a = propose(name, rng=np.random.default_rng(5), prior=prior, **kw)
    b = propose(name, rng=np.random.default_rng(5), prior=prior, **kw)
    np.testing.assert_array_equal(a, b)


def test_random_differs_between_seeds():
    x, _y, _ = _problem()
    kw = {"features": x, "measured_idx": np.arange(0), "measured_y": np.empty(0), "batch_size": 20}
    a = propose("random", rng=np.random.default_rng(0), **kw)
    b = propose("random", rng=np.random.default_rng(1), **kw)
    assert set(a) != set(b)


def test_batch_shrinks_when_pool_runs_out():
    x, y, prior = _problem(n=30)
    measured = np.arange(25)
    batch = propose(
        "aivc-design",
        features=x,
        measured_idx=measured,
        measured_y=y[measured],
        batch_size=10,
        rng=np.random.default_rng(0),
        prior=prior,
    )
    np.testing.assert_array_equal(np.sort(batch), np.arange(25, 30))
    none_left = propose(
        "random",
        features=x,
        measured_idx=np.arange(30),
        measured_y=y,
        batch_size=4,
        rng=np.random.default_rng(0),
    )
    assert none_left.size == 0


def test_degree_prior_ranks_by_prior_and_ignores_feedback():
    x, _y, prior = _problem()
    batch = propose(
        "degree-prior",
        features=x,
        measured_idx=np.array([int(np.argmax(prior))]),
        measured_y=np.array([0.0]),
        batch_size=5,
        rng=np.random.default_rng(0),
        prior=prior,
    )
    expected = np.argsort(-prior)[1:6]
    np.testing.assert_array_equal(batch, expected)


def test_feedback_strategies_exploit_what_they_learned():
    x, y, _prior = _problem(n=400)
    measured = np.random.default_rng(2).choice(400, 60, replace=False)
    top = set(np.argsort(-y)[:40])
    for name in ("gp-ucb", "aivc-design"):
        batch = propose(
            name,
            features=x,
            measured_idx=measured,
            measured_y=y[measured],
            batch_size=20,
            rng=np.random.default_rng(0),
        )
        rand = propose(
            "random",
            features=x,
            measured_idx=measured,
            measured_y=y[measured],
            batch_size=20,
            rng=np.random.default_rng(0),
        )
        assert len(top & set(batch)) >= 10 > len(top & set(rand))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"measured_idx": np.array([0, 0]), "measured_y": np.array([1.0, 1.0])}, "repeat"),
        ({"measured_idx": np.array([0]), "measured_y": np.array([1.0, 2.0])}, "same length"),
        ({"measured_idx": np.array([999]), "measured_y": np.array([1.0])}, "index"),
        ({"measured_idx": np.array([0]), "measured_y": np.array([np.nan])}, "finite"),
        ({"batch_size": 0}, "positive"),
        ({"beta": 1.0}, "takes parameters"),
    ],
)
def test_validation(kwargs, match):
    x, _, _ = _problem(n=50)
    args = {
        "features": x,
        "measured_idx": np.empty(0, dtype=int),
        "measured_y": np.empty(0),
        "batch_size": 5,
        "rng": np.random.default_rng(0),
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        propose("random", **args)


def test_unknown_strategy_and_missing_prior():
    x, _, _ = _problem(n=20)
    kw = {"features": x, "measured_idx": [], "measured_y": [], "batch_size": 2}
    with pytest.raises(ValueError, match="Unknown strategy"):
        propose("greedy", rng=np.random.default_rng(0), **kw)
    with pytest.raises(ValueError, match="needs a prior"):
        propose("degree-prior", rng=np.random.default_rng(0), **kw)
    with pytest.raises(ValueError, match="prior must hold 20"):
        propose("degree-prior", rng=np.random.default_rng(0), prior=np.ones(3), **kw)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_gp_fits_and_is_uncertain_away_from_data(kernel):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.05 * rng.normal(size=80)
    gp = GPRegressor(kernel=kernel).fit(x[:60], y[:60])
    pred = gp.predict(x[60:])
    assert np.corrcoef(pred, y[60:])[0, 1] > 0.9
    _, std_near = gp.predict(x[:5], return_std=True)
    _, std_far = gp.predict(10 * x[60:65], return_std=True)
    assert std_far.mean() > std_near.mean()


def test_gp_rejects_bad_input():
    with pytest.raises(ValueError, match="kernel"):
        GPRegressor(kernel="poly").fit(np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match="one row per target"):
        GPRegressor().fit(np.ones((3, 2)), np.ones(4))


def test_batch_ucb_spreads_a_batch_over_duplicates():
    # two groups of identical candidates; plain top-k takes one group, GP-BUCB both
    x = np.vstack([np.tile([1.0, 0.0], (10, 1)), np.tile([0.0, 1.0], (10, 1))])
    gp = GPRegressor(kernel="linear", noise=0.01, signal=1.0).fit(np.ones((1, 2)), np.zeros(1))
    mean, std = gp.predict(x, return_std=True)
    assert np.ptp(mean) < 1e-12 and np.ptp(std) < 1e-12  # a tie: top-k would take one group
    batch = batch_ucb(gp, x, np.arange(20), batch_size=4, beta=1.0)
    assert (batch < 10).sum() == 2 and (batch >= 10).sum() == 2


def test_aivc_design_first_batch_follows_prior_with_optional_random_share():
    x, _, prior = _problem()
    kw = {"features": x, "measured_idx": [], "measured_y": [], "batch_size": 20, "prior": prior}
    first = propose("aivc-design", rng=np.random.default_rng(0), **kw)
    np.testing.assert_array_equal(first, np.argsort(-prior)[:20])
    mixed = propose("aivc-design", rng=np.random.default_rng(0), random_start=0.5, **kw)
    assert np.unique(mixed).size == 20
    assert set(mixed[:10]) == set(np.argsort(-prior)[:10])
    assert len(set(mixed[10:]) & set(np.argsort(-prior)[:10])) == 0


def test_prior_slope_shrinkage_keeps_a_truncated_prior_informative():
    from aivc.experiments._acquisition import _prior_mean

    rng = np.random.default_rng(0)
    prior = rng.normal(size=1000)
    y = prior + rng.normal(scale=0.5, size=1000)
    top = np.argsort(-prior)[:30]  # a narrow band: only the top of the prior was measured
    flat = np.full(30, y[top].mean())  # and it looked flat there
    ols = _prior_mean(prior, top, flat)
    np.testing.assert_allclose(ols, flat.mean(), atol=1e-9)  # OLS discards the prior
    shrunk = _prior_mean(
        prior, top, flat + 0.01 * rng.normal(size=30), prior_corr=0.5, prior_strength=100
    )
    assert np.corrcoef(shrunk, prior)[0, 1] > 0.99
    # full-range data: OLS recovers the slope, shrinkage changes little
    every = np.arange(1000)
    a = _prior_mean(prior, every, y)
    b = _prior_mean(prior, every, y, prior_corr=0.5, prior_strength=100)
    assert abs(np.polyfit(prior, a, 1)[0] - 1.0) < 0.1
    assert abs(np.polyfit(prior, b, 1)[0] - np.polyfit(prior, a, 1)[0]) < 0.1
    assert _prior_mean(None, every, y) is None


def test_aivc_design_prior_share_hedges_every_later_batch():
    x, y, prior = _problem()
    measured = np.argsort(-prior)[:20]
    kw = {
        "features": x,
        "measured_idx": measured,
        "measured_y": y[measured],
        "batch_size": 10,
        "prior": prior,
        "rng": np.random.default_rng(0),
    }
    hedged = propose("aivc-design", prior_share=0.5, **kw)
    next_by_prior = [i for i in np.argsort(-prior) if i not in set(measured)][:5]
    assert list(hedged[:5]) == next_by_prior
    assert np.unique(hedged).size == 10
    assert not set(hedged) & set(measured)
    # the other half follows the model: other feedback moves it, not the prior half
    flipped = propose(
        "aivc-design",
        prior_share=0.5,
        **{**kw, "measured_y": -y[measured], "rng": np.random.default_rng(0)},
    )
    assert list(flipped[:5]) == next_by_prior
    assert set(flipped[5:]) != set(hedged[5:])
    # a share of 1 is the prior ranking itself
    only_prior = propose("aivc-design", prior_share=1.0, **kw)
    np.testing.assert_array_equal(
        only_prior, [i for i in np.argsort(-prior) if i not in set(measured)][:10]
    )
