"""Acquisition strategies: which candidates to measure next.

Every strategy answers the same question through :func:`propose`: given the
features of all candidates, the indices already measured and their measured
values (larger = more wanted, e.g. ``|log-fold-change|`` for hit finding),
return ``batch_size`` new indices, never repeating measured ones.

Registered strategies (:data:`STRATEGIES`):

``random``
    Uniform draw from the unmeasured candidates.
``uncertainty``
    Highest posterior standard deviation of an RBF Gaussian process on the
    features (pure exploration); random before anything is measured.
``gp-ucb``
    Top-``batch_size`` upper confidence bound ``mean + beta * std`` of the
    same RBF GP (the classical GeneDisco-style anchor); random before
    anything is measured.
``degree-prior``
    Rank by ``prior`` (e.g. network degree), highest first, no feedback.
``aivc-design``
    aivc's strategy: a linear-kernel ("knowledge-kernel") GP (Bayesian
    linear regression) on the features, e.g. a reduced knowledge feature
    map, whose prior mean is an affine function of ``prior`` fitted to the
    revealed values, with batch UCB (``beta``, default 1) and hallucinated
    variances (GP-BUCB) for diversity (``diverse=False``: plain top-k UCB).
    Before anything is measured it ranks by ``prior``. Options, off by
    default: ``random_start`` draws that fraction of the first batch at
    random; ``prior_corr`` / ``prior_strength`` shrink the fitted slope of
    the prior towards that of a prior correlating ``prior_corr`` with the
    values, with the weight of ``prior_strength`` candidates; ``prior_share``
    takes that fraction of every later batch from the top of the prior
    ranking (a hedge against a model fitted on few measurements) and the
    rest by GP-BUCB.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from aivc.experiments._surrogates import GPRegressor, batch_ucb

__all__ = ["STRATEGIES", "Strategy", "propose", "register_strategy"]

Features = np.ndarray | sp.spmatrix


@dataclass(frozen=True)
class Strategy:
    """A registered acquisition strategy.

    ``func(features, measured_idx, measured_y, candidates, batch_size, rng, prior, **params)``
    returns indices drawn from ``candidates``.
    """

    name: str
    description: str
    func: Callable[..., np.ndarray]
    uses_feedback: bool
    needs_prior: bool
    params: tuple[str, ...] = ()


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Add a strategy to :data:`STRATEGIES`; a duplicate name raises."""
    if strategy.name in STRATEGIES:
        msg = f"a strategy named {strategy.name!r} is already registered."
        raise ValueError(msg)
    STRATEGIES[strategy.name] = strategy
    return strategy


def _ranked(
    score: np.ndarray, candidates: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """The ``k`` candidates with the highest score; ties broken at random (seeded)."""
    tie = rng.random(candidates.size)
    order = np.lexsort((tie, -np.asarray(score, dtype=float)))
    return candidates[order[:k]]


def _random(features, measured_idx, measured_y, candidates, batch_size, rng, prior):
    return rng.choice(candidates, size=batch_size, replace=False)


def _dense(features: Features) -> np.ndarray:
    return features.toarray() if sp.issparse(features) else np.asarray(features, dtype=float)


def _rbf_gp(features: Features, measured_idx: np.ndarray, measured_y: np.ndarray) -> GPRegressor:
    x = _dense(features)
    return GPRegressor(kernel="rbf").fit(x[measured_idx], measured_y)


def _uncertainty(features, measured_idx, measured_y, candidates, batch_size, rng, prior):
    if measured_idx.size == 0:
        return _random(features, measured_idx, measured_y, candidates, batch_size, rng, prior)
    gp = _rbf_gp(features, measured_idx, measured_y)
    _, std = gp.predict(_dense(features)[candidates], return_std=True)
    return _ranked(std, candidates, batch_size, rng)


def _gp_ucb(features, measured_idx, measured_y, candidates, batch_size, rng, prior, *, beta=1.0):
    if measured_idx.size == 0:
        return _random(features, measured_idx, measured_y, candidates, batch_size, rng, prior)
    gp = _rbf_gp(features, measured_idx, measured_y)
    mean, std = gp.predict(_dense(features)[candidates], return_std=True)
    return _ranked(mean + beta * std, candidates, batch_size, rng)


def _degree_prior(features, measured_idx, measured_y, candidates, batch_size, rng, prior):
    return _ranked(prior[candidates], candidates, batch_size, rng)


def _prior_mean(
    prior: np.ndarray | None,
    measured_idx: np.ndarray,
    measured_y: np.ndarray,
    *,
    prior_corr: float = 0.0,
    prior_strength: float = 0.0,
) -> np.ndarray | None:
    """Affine map ``a + b * prior`` of the prior onto the revealed values (None without a prior).

    ``b`` is the least-squares slope shrunk towards ``b0 = prior_corr *
    std(y) / std(prior)`` (the slope of a prior that correlates ``prior_corr``
    with the values) with the weight of ``prior_strength`` genes spread over
    the prior's full range. With ``prior_strength=0`` this is ordinary least
    squares; shrinkage keeps the prior informative when the measured genes
    cover only a narrow band of it (e.g. after a first batch of its top genes).
    """
    if prior is None or measured_idx.size < 3:
        return None
    p = prior[measured_idx]
    y = measured_y
    sxx = float(np.sum((p - p.mean()) ** 2))
    sxy = float(np.sum((p - p.mean()) * (y - y.mean())))
    lam = prior_strength * float(prior.var())
    if sxx + lam == 0:
        return None
    b0 = prior_corr * float(y.std()) / float(prior.std() or 1.0)
    b = (sxy + lam * b0) / (sxx + lam)
    return float(y.mean()) + b * (prior - float(p.mean()))


def _aivc_design(
    features,
    measured_idx,
    measured_y,
    candidates,
    batch_size,
    rng,
    prior,
    *,
    beta=1.0,
    diverse=True,
    random_start=0.0,
    prior_corr=0.0,
    prior_strength=0.0,
    prior_share=0.0,
):
    if measured_idx.size == 0:
        if prior is None:
            return _random(features, measured_idx, measured_y, candidates, batch_size, rng, prior)
        n_random = round(random_start * batch_size)
        top = _ranked(prior[candidates], candidates, batch_size - n_random, rng)
        if n_random == 0:
            return top
        rest = np.setdiff1d(candidates, top)
        return np.concatenate([top, rng.choice(rest, size=n_random, replace=False)])
    offset = _prior_mean(
        prior, measured_idx, measured_y, prior_corr=prior_corr, prior_strength=prior_strength
    )
    resid = measured_y - (offset[measured_idx] if offset is not None else 0.0)
    x = _dense(features)
    gp = GPRegressor(kernel="linear").fit(x[measured_idx], resid)
    n_prior = round(prior_share * batch_size) if prior is not None else 0
    if n_prior > 0:
        # hedge: part of every batch follows the prior ranking, the rest the model
        top = _ranked(prior[candidates], candidates, n_prior, rng)
        rest = np.setdiff1d(candidates, top)
        picked = batch_ucb(
            gp, x, rest, batch_size=batch_size - n_prior, beta=beta, prior_mean=offset
        )
        return np.concatenate([top, picked])
    if diverse:
        return batch_ucb(gp, x, candidates, batch_size=batch_size, beta=beta, prior_mean=offset)
    mean, std = gp.predict(x[candidates], return_std=True)
    if offset is not None:
        mean = mean + offset[candidates]
    return _ranked(mean + beta * std, candidates, batch_size, rng)


register_strategy(
    Strategy("random", "uniform draw from the unmeasured candidates", _random, False, False)
)
register_strategy(
    Strategy(
        "uncertainty",
        "highest posterior std of an RBF GP on the features (exploration)",
        _uncertainty,
        True,
        False,
    )
)
register_strategy(
    Strategy(
        "gp-ucb",
        "top mean + beta*std of an RBF GP on the features (GP-UCB)",
        _gp_ucb,
        True,
        False,
        ("beta",),
    )
)
register_strategy(
    Strategy(
        "degree-prior",
        "rank by the prior score (e.g. network degree), no feedback",
        _degree_prior,
        False,
        True,
    )
)
register_strategy(
    Strategy(
        "aivc-design",
        "knowledge-kernel GP with a fitted prior mean and batch UCB (GP-BUCB)",
        _aivc_design,
        True,
        False,
        ("beta", "diverse", "random_start", "prior_corr", "prior_strength", "prior_share"),
    )
)


def propose(
    strategy: str,
    *,
    features: Features,
    measured_idx: np.ndarray,
    measured_y: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    prior: np.ndarray | None = None,
    **strategy_params: Any,
) -> np.ndarray:
    """Indices of the candidates to measure next.

    Parameters
    ----------
    strategy
        A name in :data:`STRATEGIES`.
    features
        Candidates x features (dense; a scipy sparse matrix is densified);
        row ``i`` describes candidate ``i``.
    measured_idx
        Indices of candidates already measured (no repeats).
    measured_y
        Their measured values, same order; strategies seek large values, so
        pass e.g. ``|score|`` to find strong hits in either direction.
    batch_size
        How many to propose; fewer only when fewer remain unmeasured.
    rng
        Source of randomness (random draws, tie breaking); same seed, same batch.
    prior
        Per-candidate prior score (higher = more promising), required by
        ``degree-prior`` and used by ``aivc-design``.
    **strategy_params
        Strategy options, e.g. ``beta`` for ``gp-ucb`` and ``aivc-design``.

    Returns
    -------
    Integer array of distinct candidate indices, none of them in ``measured_idx``.
    """
    if strategy not in STRATEGIES:
        msg = f"Unknown strategy {strategy!r}; expected one of {sorted(STRATEGIES)}."
        raise ValueError(msg)
    spec = STRATEGIES[strategy]
    n = features.shape[0]
    measured_idx = np.asarray(measured_idx, dtype=int).ravel()
    measured_y = np.asarray(measured_y, dtype=float).ravel()
    if measured_idx.size != measured_y.size:
        msg = (
            f"measured_idx and measured_y must have the same length; received "
            f"{measured_idx.size} and {measured_y.size}."
        )
        raise ValueError(msg)
    if measured_idx.size and (measured_idx.min() < 0 or measured_idx.max() >= n):
        msg = f"measured_idx must index the {n} candidates; received values outside [0, {n})."
        raise ValueError(msg)
    if np.unique(measured_idx).size != measured_idx.size:
        msg = "measured_idx must not repeat a candidate."
        raise ValueError(msg)
    if not np.isfinite(measured_y).all():
        msg = "measured_y must be finite; received NaN or infinite values."
        raise ValueError(msg)
    if int(batch_size) < 1:
        msg = f"batch_size must be a positive integer; received {batch_size}."
        raise ValueError(msg)
    if prior is not None:
        prior = np.asarray(prior, dtype=float).ravel()
        if prior.size != n or not np.isfinite(prior).all():
            msg = f"prior must hold {n} finite values (one per candidate); received {prior.size}."
            raise ValueError(msg)
    elif spec.needs_prior:
        msg = f"strategy {strategy!r} needs a prior score per candidate (prior=...)."
        raise ValueError(msg)
    unknown = set(strategy_params) - set(spec.params)
    if unknown:
        msg = f"strategy {strategy!r} takes parameters {list(spec.params)}; received {sorted(unknown)}."
        raise ValueError(msg)
    mask = np.ones(n, dtype=bool)
    mask[measured_idx] = False
    candidates = np.flatnonzero(mask)
    k = min(int(batch_size), candidates.size)
    if k == 0:
        return np.empty(0, dtype=int)
    chosen = spec.func(
        features, measured_idx, measured_y, candidates, k, rng, prior, **strategy_params
    )
    return np.asarray(chosen, dtype=int)
