"""Stratified coverage of the calibration task, on hand-made intervals."""

from __future__ import annotations

import numpy as np
import pytest

from aivc.evaluate.tasks.calibration import N_DECILES, _strata, _variability_deciles


def test_deciles_follow_the_training_variability() -> None:
    rng = np.random.default_rng(0)
    sd = np.arange(20, dtype=float)  # gene j varies with sd j across the training changes
    train = rng.standard_normal((200, 20)) * sd
    decile = _variability_deciles(train)
    assert decile.min() == 0 and decile.max() == N_DECILES - 1
    assert np.all(np.bincount(decile) == 2)  # 20 genes, two per decile
    assert np.all(np.diff(decile[np.argsort(train.std(axis=0))]) >= 0)


def test_coverage_by_decile_and_condition_on_a_hand_made_example() -> None:
    n_genes = 10
    decile = np.arange(n_genes)  # one gene per decile
    observed = np.zeros((2, n_genes))
    lo = np.full((2, n_genes), -1.0)
    hi = np.full((2, n_genes), 1.0)
    observed[0, 9] = 5.0  # the most variable gene missed in condition 0
    observed[1, 8:] = 5.0  # the two most variable genes missed in condition 1
    hi[:, 0] = 3.0  # a wider interval on the least variable gene
    acc = {
        "obs": [observed],
        "lo0.9": [lo],
        "hi0.9": [hi],
        "decile": [np.broadcast_to(decile, observed.shape)],
    }
    out = _strata([acc])
    cov = out["coverage_90_by_variability_decile"]
    assert cov[:8] == [1.0] * 8 and cov[8] == pytest.approx(0.5) and cov[9] == 0.0
    width = out["interval_width_90_by_variability_decile"]
    assert width[0] == pytest.approx(4.0) and width[1:] == [2.0] * 9
    assert out["coverage_90_by_condition"] == pytest.approx([0.8, 0.825, 0.85, 0.875, 0.9])
    assert _strata([]) == {}
