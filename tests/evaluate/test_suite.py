"""The generalization suite's win/loss matrix."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from aivc.evaluate.tasks.suite import SUITE, _sign_test, peer_matrix, suite_matrix


def _result(means: dict[str, dict[str, float]], sd: float = 0.01) -> dict:
    return {
        "models": {
            name: {m: {"mean": v, "sd": sd} for m, v in metrics.items()}
            for name, metrics in means.items()
        }
    }


def _per_condition(values: dict[str, list[float]], metric: str) -> pd.DataFrame:
    rows = [
        {"model": name, "condition": f"c{i}", "seed": 0, metric: v}
        for name, vs in values.items()
        for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def test_the_best_baseline_is_chosen_per_metric_and_direction() -> None:
    result = _result(
        {
            "train-mean": {"pearson_delta_de20": 0.40, "mse_de20": 0.20},
            "linear": {"pearson_delta_de20": 0.45, "mse_de20": 0.25},
            "gears": {"pearson_delta_de20": 0.90, "mse_de20": 0.01},  # a peer, not a baseline
            "aivc-perturb": {"pearson_delta_de20": 0.43, "mse_de20": 0.19},
        }
    )
    pc = _per_condition(
        {"aivc-perturb": [0.1, 0.2], "linear": [0.2, 0.3], "train-mean": [0.2, 0.2]},
        "pearson_delta_de20",
    )
    pc["mse_de20"] = [0.1, 0.2, 0.2, 0.3, 0.2, 0.2]
    cells = {c["metric"]: c for c in suite_matrix(result, pc, task="t", dataset="d")}
    pearson, mse = cells["pearson_delta_de20"], cells["mse_de20"]
    assert pearson["best_baseline"] == "linear" and not pearson["wins"]
    assert not pearson["within_sd"]  # 0.02 behind the best baseline, whose sd is 0.01
    assert mse["best_baseline"] == "train-mean" and mse["wins"] and mse["within_sd"]
    assert "mae" not in cells  # no model reports it


def test_within_one_sd_is_not_a_loss() -> None:
    result = _result(
        {"train-mean": {"mse_de20": 0.200}, "aivc-perturb": {"mse_de20": 0.205}}, sd=0.01
    )
    pc = _per_condition({"aivc-perturb": [0.2], "train-mean": [0.2]}, "mse_de20")
    (cell,) = suite_matrix(result, pc, task="t", dataset="d")
    assert not cell["wins"] and cell["within_sd"]
    json.dumps(cell)  # plain JSON types


def test_sign_test() -> None:
    assert _sign_test(np.array([1.0] * 10)) == pytest.approx(2 * 0.5**10)
    assert _sign_test(np.array([0.0, np.nan])) == 1.0
    assert _sign_test(np.array([1.0, -1.0])) == pytest.approx(1.0)


def test_every_entry_names_our_model_and_a_baseline() -> None:
    worlds = {e.dataset for e in SUITE if e.dataset.startswith("sim-world-")}
    assert len(worlds) >= 5
    assert len({e.dataset for e in SUITE if e.dataset.startswith("sim-module-world-")}) >= 10
    for entry in SUITE:
        assert "aivc-perturb" in entry.models
        assert {"train-mean", "control"} <= set(entry.models)
        if entry.task in {"unseen-context", "unseen-cell-type"}:
            assert "perturbation-elsewhere" in entry.models


def test_peers_are_compared_on_the_splits_they_ran() -> None:
    # our model ran on two seeds; the peer on seed 0 only, where our model scored 0.5 on average
    rows = [
        {"model": "aivc-perturb", "seed": 0, "split": "s0", "condition": "a", "mse_de20": 0.4},
        {"model": "aivc-perturb", "seed": 0, "split": "s0", "condition": "b", "mse_de20": 0.6},
        {"model": "aivc-perturb", "seed": 1, "split": "s1", "condition": "a", "mse_de20": 0.0},
        {"model": "aivc-perturb", "seed": 1, "split": "s1", "condition": "b", "mse_de20": 0.0},
        {"model": "state", "seed": 0, "split": "s0", "condition": "a", "mse_de20": 0.3},
        {"model": "state", "seed": 0, "split": "s0", "condition": "b", "mse_de20": 0.5},
    ]
    result = {"wall_seconds": {"aivc-perturb": 20.0, "state": 100.0}}
    (cell,) = peer_matrix(
        result, pd.DataFrame(rows), task="t", dataset="d", peers=["state", "biolord"]
    )
    assert cell["peer"] == "state" and cell["metric"] == "mse_de20"
    assert cell["model_mean"] == pytest.approx(0.5)  # seed 0 only, not 0.25 over both seeds
    assert cell["peer_mean"] == pytest.approx(0.4)
    assert not cell["wins"]
    assert cell["wall_ratio"] == pytest.approx(100.0 / 10.0)  # our time per seed
    assert cell["n_conditions"] == 2
    json.dumps(cell)


def test_the_context_tasks_name_the_one_hot_peers() -> None:
    for entry in SUITE:
        if entry.task in {"unseen-context", "unseen-cell-type"} and entry.dataset == "kang2018":
            assert {"state", "biolord", "cellflow"} <= set(entry.peers)
