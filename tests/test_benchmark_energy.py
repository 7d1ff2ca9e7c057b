"""The benchmark's energy distance scores every model against the same observed cells."""

from __future__ import annotations

import numpy as np

from aivc.data import prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.evaluate._benchmark import _EnergyScorer, _observe


def _scorer():
    raw, schema = synthetic_perturbation_data(
        n_genes=40, n_singles=4, n_doubles=0, cells_per_condition=60, n_control_cells=80, seed=2
    )
    adata, schema = prepare(raw, schema)
    obs = _observe(adata, schema, seed=0)
    # fewer cells per sample than a condition has, so the samples are random subsets
    return obs, _EnergyScorer(obs, max_cells=25, seed=0)


def test_energy_does_not_depend_on_what_was_scored_before():
    obs, scorer = _scorer()
    cond = obs.conditions[0]
    rng = np.random.default_rng(0)
    predicted = np.abs(rng.normal(1.0, 0.5, (25, obs.adata.n_vars)))
    first = scorer.relative(cond, predicted)
    # other models scored in between must not change the cells this one is compared with
    for other in obs.conditions[1:]:
        scorer.relative(other, np.abs(rng.normal(1.0, 0.5, (25, obs.adata.n_vars))))
    assert scorer.relative(cond, predicted) == first
    _, fresh = _scorer()
    assert fresh.relative(cond, predicted) == first


def test_replicate_half_is_scored_against_the_other_half():
    obs, scorer = _scorer()
    cond = obs.conditions[0]
    x = obs.adata.X.toarray() if hasattr(obs.adata.X, "toarray") else np.asarray(obs.adata.X)
    cells = x[
        obs.adata.obs[obs.schema.perturbation_key].astype(str).to_numpy() == obs.pert_of[cond]
    ]
    half_a, half_b = cells[:25], cells[25:50]
    # a half scored against itself is at distance zero; against the other half it is not
    assert scorer.relative(cond, half_a, observed_cells=half_a) == 0.0
    assert scorer.relative(cond, half_a, observed_cells=half_b) > 0.0
