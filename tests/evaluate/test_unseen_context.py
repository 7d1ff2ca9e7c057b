"""The unseen-context task on a user's own file: pairs held out, schema declared on the command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from aivc.data._preprocess import CONDITION_SEP
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.interfaces.cli import app


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    adata, _ = synthetic_perturbation_data(n_singles=6, n_doubles=0, n_contexts=3, seed=1)
    adata.uns.pop("aivc", None)  # a user's file: no aivc schema inside
    path = tmp_path_factory.mktemp("data") / "screen.h5ad"
    adata.write_h5ad(path)
    return path


def _run(args, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["benchmark", *args, "--out", str(out), "--no-cell-eval"])
    return res, out


def test_a_file_without_schema_asks_for_its_columns(dataset, tmp_path) -> None:
    res, _ = _run(["unseen-context", "--dataset", str(dataset), "--seeds", "0"], tmp_path)
    assert res.exit_code == 2
    assert "--perturbation-key" in res.output and "--context-key" in res.output


def test_pairs_are_held_out_while_the_perturbation_stays_measured(dataset, tmp_path) -> None:
    models = "control,train-mean,context-mean,perturbation-elsewhere"
    args = [
        "unseen-context",
        "--dataset",
        str(dataset),
        "--perturbation-key",
        "perturbation",
        "--control-label",
        "control",
        "--context-key",
        "cell_type",
        "--models",
        models,
        "--seeds",
        "0",
    ]
    res, out = _run(args, tmp_path)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "results.json").read_text())
    assert result["dataset"] == "screen"
    assert result["baseline_for_scaling"] == "context-mean"
    assert result["models"]["context-mean"]["mse_de20_scaled"]["mean"] == pytest.approx(0.0)
    splits = json.loads((out / "splits.json").read_text())
    held = [c for s in splits for c in s["test_conditions"]]
    assert len(held) == len(set(held)) == 6 * 3  # every (perturbation, cell type) pair once
    for s in splits:
        # each held-out perturbation is still measured in another context of that split
        for cond in s["test_conditions"]:
            pert = cond.split(CONDITION_SEP)[0]
            assert pert in s["train_perturbations"]
    assert set(result["models"]) == set(models.split(","))


def test_a_schema_is_refused_by_a_task_that_reads_none(dataset, tmp_path) -> None:
    args = ["integration", "--perturbation-key", "perturbation", "--control-label", "control"]
    res, _ = _run(args, tmp_path)
    assert res.exit_code == 2 and "does not read a declared perturbation schema" in res.output
