"""The learning-curve benchmark on a small simulated world."""

from __future__ import annotations

import json

import pytest

from aivc._settings import settings
from aivc.evaluate.tasks import get_task, run_task


def test_learning_curve_reads_the_worlds_knowledge(tmp_path) -> None:
    before = settings.data_dir
    result = run_task(
        "learning-curve",
        tmp_path,
        models=["train-mean", "nearest-neighbour"],
        seeds=[0],
        variant="quick",
    )
    assert settings.data_dir == before  # the world's knowledge base was used only meanwhile
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["task"] == "learning-curve"
    sizes = saved["split"]["sizes"]
    for name in ("train-mean", "nearest-neighbour"):
        curve = saved["models"][name]["curve"]
        assert {(p["n_train"], p["knowledge"]) for p in curve} == {
            (n, q) for n in sizes for q in ("good", "useless")
        }
        for p in curve:
            assert {"n_train", "pearson_delta_de20", "mse_de20"} <= set(p)
    assert 0 < saved["replicate"]["pearson_delta_de20"] <= 1
    assert saved["world"]["n_modules"] > 0
    # the mean change does not read knowledge; the nearest neighbour in GO space does
    by = {
        (p["knowledge"], p["n_train"]): p["mse_de20"]
        for p in result["models"]["nearest-neighbour"]["curve"]
    }
    mean = {
        (p["knowledge"], p["n_train"]): p["mse_de20"]
        for p in result["models"]["train-mean"]["curve"]
    }
    assert mean[("good", sizes[0])] == mean[("useless", sizes[0])]
    assert by[("good", sizes[-1])] != by[("useless", sizes[-1])]
    assert (tmp_path / "world" / "knowledge-good" / "genes" / "go_terms.tsv.gz").exists()
    assert "n=" in (tmp_path / "results.md").read_text()


def test_learning_curve_names_its_world() -> None:
    assert get_task("learning-curve").default_dataset == "curve-world-0"
    with pytest.raises(ValueError, match="curve-world"):
        run_task("learning-curve", "unused", dataset="papalexi2021", variant="quick")
