from __future__ import annotations

import json

import numpy as np
import pytest

from aivc.evaluate.tasks.unknown_type import run_unknown_type, unknown_type_metrics


def test_metrics_hand_made() -> None:
    truth = np.array(["a", "a", "b", "b", "new", "new", "other"])
    answer = np.array(["a", "unknown", "b", "a", "unknown", "b", "a"])
    forced = np.array(["a", "a", "b", "a", "b", "b", "a"])
    score = np.array([0.1, 0.8, 0.2, 0.3, 0.9, 0.25, 0.99])
    m = unknown_type_metrics(truth, answer, forced, score, "new", ["a", "b"])
    # "other" is in neither the reference nor the removed type: left out
    assert m["unknown_recall"] == pytest.approx(0.5)
    assert m["accuracy_known"] == pytest.approx(0.5)  # a, (unknown), b, (a for b)
    assert m["accuracy_known_closed"] == pytest.approx(0.75)
    assert m["known_accuracy_drop"] == pytest.approx(0.25)
    # new cells score 0.9 and 0.25 against known 0.1, 0.8, 0.2, 0.3: 4 + 2 of 8 pairs ranked right
    assert m["unknown_auroc"] == pytest.approx(6 / 8)


def test_runs_on_a_file_and_flags_the_removed_type(tmp_path, technology_file) -> None:
    path = technology_file
    out = tmp_path / "ut"
    run_unknown_type(
        out,
        dataset=str(path),
        models=["aivc", "logistic"],
        seeds=[0],
        cell_type_key="kind",
        batch_key="chemistry",
        query_key="chemistry",
        query_value="v3",
    )
    res = json.loads((out / "results.json").read_text())
    assert res["split"]["removed_types"] == ["t0", "t1", "t2", "t3"]
    for m in ("aivc", "logistic"):
        assert res["models"][m]["unknown_auroc"]["mean"] > 0.9
        assert res["models"][m]["accuracy_known_closed"]["mean"] > 0.9
    # only aivc answers "unknown"; on these well-separated types it costs the known cells little
    assert res["models"]["logistic"]["unknown_recall"]["mean"] == 0.0
    assert res["models"]["aivc"]["unknown_recall"]["mean"] > 0.5
    assert res["models"]["aivc"]["known_accuracy_drop"]["mean"] < 0.05
    assert "| aivc |" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match="unknown-type dataset"):
        run_unknown_type(tmp_path / "x", dataset="pbmc")
