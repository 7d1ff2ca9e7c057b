"""One model-directory format: `aivc fit` and the workspace behind the REST API write and read the same."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from typer.testing import CliRunner

from aivc.data import DataValidationError
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.instruments._model_dir import (
    MANIFEST,
    fit_model_dir,
    load_model_dir,
    read_manifest,
    save_model_dir,
)
from aivc.interfaces.api import Workspace


def _synthetic():
    return synthetic_perturbation_data(
        n_genes=40, n_singles=10, n_doubles=3, cells_per_condition=20, n_control_cells=60, seed=0
    )


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    raw, _ = _synthetic()
    path = tmp_path / "tiny.h5ad"
    raw.write_h5ad(path)
    return path


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_workspace_reads_a_directory_written_by_aivc_fit(tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    fit_model_dir(
        root / "models" / "cli",
        model="conformal",
        data=tiny,
        params={"base": "additive", "n_folds": 3},
    )
    ws = Workspace(root)
    try:
        (listed,) = ws.list_models()
        assert listed["id"] == "cli" and listed["instrument"] == "conformal"
        assert listed["dataset"] == "" and listed["heldout_perturbations"] == []
        assert listed["seed"] == 0 and listed["fit_seconds"] >= 0
        assert listed["params"]["base"] == "additive" and "uncertainty" in listed["capabilities"]
        info = ws.model_info("cli")
        assert info["n_genes"] == 40 and len(info["train_perturbations"]) == 13
        out = ws.predict("cli", ["GENE001", "GENE003+GENE010"], top_k=5, all_genes=True)
        assert out["has_intervals"] and out["dataset"] == ""
        p0 = out["predictions"][0]
        # fitted on a file: no dataset here to compare with
        assert not p0["measured"] and p0["in_training"] and p0["embedding"] is None
        md = load_model_dir(root / "models" / "cli")
        _, lo, _ = md.model.predict_interval(["GENE001"], level=0.9).arrays()
        np.testing.assert_allclose(p0["lower"], np.round(lo[0], 5), atol=1e-6)
        assert {g["call"] for g in p0["de_genes"]} <= {"up", "down"}
    finally:
        ws.shutdown()


@pytest.mark.slow
def test_directory_of_a_registered_dataset_compares_with_it(data_dir: Path, tmp_path: Path) -> None:
    """A directory `aivc fit --dataset` wrote is set against that dataset's measurements."""
    root = tmp_path / "ws"
    fit_model_dir(root / "models" / "tm", model="train-mean", dataset="papalexi2021")
    ws = Workspace(root)
    try:
        (listed,) = ws.list_models()
        assert listed["dataset"] == "papalexi2021"
        measured = ws.model_info("tm")["train_perturbations"][0]
        p = ws.predict("tm", [measured], top_k=3)["predictions"][0]
        assert p["measured"] and p["observed_source"] == "dataset" and p["n_observed_cells"] > 0
    finally:
        ws.shutdown()


def test_aivc_predict_reads_a_directory_written_by_the_workspace(tmp_path: Path) -> None:
    from aivc.interfaces.cli import app

    ws = Workspace(tmp_path / "ws")
    adata, schema = _synthetic()
    ws.add_dataset("synth", adata, schema)
    try:
        job = ws.submit_fit(
            dataset="synth", instrument="conformal", params={"base": "additive"}, name="web"
        )
        done = ws.jobs.wait(job["id"], timeout=120)
        assert done.state == "succeeded", done.error
        folder = ws.root / "models" / "web"
        assert _files(folder) == {
            MANIFEST,
            "config.json",
            "controls.safetensors",
            "genes.json",
            "schema.json",
            "weights.safetensors",
        }  # JSON and safetensors only: nothing to unpickle
        manifest = read_manifest(folder)
        assert manifest["model_dir_version"] == 2
        md = load_model_dir(folder)
        record = md.record
        heldout = ws.model_info("web")["heldout_perturbations"]
        assert record.dataset == "synth" and record.instrument == "conformal" and record.seed == 0
        assert list(record.heldout_perturbations) == heldout and len(heldout) == 3
        assert not set(heldout) & set(md.model.train_perturbations_)
        assert record.fit_seconds is not None and record.created is not None
        assert manifest["training"]["n_cells"] == md.controls.n_obs + (13 - 3) * 20

        out = tmp_path / "pred.h5ad"
        result = CliRunner().invoke(
            app,
            [
                "predict",
                str(folder),
                "--perturbations",
                heldout[0],
                "--n-cells",
                "10",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        uns = ad.read_h5ad(out).uns["aivc"]
        assert list(uns["conditions"]) == [heldout[0]] and "delta_lower" in uns
        assert uns["model_dir"]["dataset"] == "synth"
        # the workspace's DE calls are the CLI's interval calls ('none' for 'ns')
        pred = ws.predict("web", [heldout[0]], level=0.9)["predictions"][0]
        de = uns["de"]
        called = de[de["interval_call"] != "ns"]
        assert dict(zip(called["gene"], called["interval_call"], strict=True)) == {
            g["gene"]: g["call"] for g in pred["de_genes"]
        }
        # a new workspace on the same folder finds it with the same record
        again = Workspace(ws.root)
        assert [m["id"] for m in again.list_models()] == ["web"]
        assert again.list_models()[0]["created"] == ws.list_models()[0]["created"]
        again.shutdown()
    finally:
        ws.shutdown()


def test_models_of_an_earlier_workspace_are_rewritten(tmp_path: Path) -> None:
    from aivc.data import prepare
    from aivc.instruments import make_instrument

    adata, schema = _synthetic()
    prepared, schema = prepare(adata, schema)
    labels = prepared.obs["perturbation"].astype(str)
    model = make_instrument("additive").fit(prepared[labels != "GENE001"].copy(), schema)
    folder = tmp_path / "ws" / "models" / "old"
    model.save(folder / "model")
    record = {
        "id": "old",
        "dataset": "synth",
        "instrument": "additive",
        "params": {},
        "seed": 4,
        "heldout_perturbations": ["GENE001"],
        "created": 1_700_000_000.25,
        "fit_seconds": 0.5,
    }
    (folder / "record.json").write_text(json.dumps(record))
    ws = Workspace(tmp_path / "ws")
    try:
        (listed,) = ws.list_models()
        assert {k: listed[k] for k in record if k != "params"} == {
            k: v for k, v in record.items() if k != "params"
        }
        assert MANIFEST in _files(folder) and "record.json" not in _files(folder)
        out = ws.predict("old", ["GENE001"])["predictions"][0]
        assert out["heldout"] and not out["in_training"]
    finally:
        ws.shutdown()
    assert load_model_dir(folder).record.heldout_perturbations == ("GENE001",)


def test_unreadable_and_temporary_directories_are_skipped(
    tiny: Path, tmp_path: Path, caplog
) -> None:
    models = tmp_path / "ws" / "models"
    fit_model_dir(models / "good", model="train-mean", data=tiny)
    (models / "broken").mkdir()
    (models / "broken" / MANIFEST).write_text("{not json")
    (models / ".good.tmp123").mkdir()
    with caplog.at_level(logging.WARNING):
        ws = Workspace(tmp_path / "ws")
    assert [m["id"] for m in ws.list_models()] == ["good"]
    assert "broken" in caplog.text
    ws.shutdown()


def test_fit_record_fields_and_version_one(tiny: Path, tmp_path: Path) -> None:
    folder = fit_model_dir(tmp_path / "m", model="train-mean", data=tiny, seed=2)
    md = load_model_dir(folder)
    assert md.record.data_file == "tiny.h5ad" and md.record.seed == 2
    assert md.record.heldout_perturbations == () and md.record.fit_seconds is not None
    # a version-1 manifest (without the record of the fit) is still read
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["model_dir_version"] = 1
    manifest["created"] = "2025-01-01T00:00:00+00:00"
    for key in ("heldout_perturbations", "fit_seconds"):
        del manifest["training"][key]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    old = load_model_dir(folder).record
    assert old.heldout_perturbations == () and old.fit_seconds is None
    assert old.created is not None and old.created.year == 2025
    manifest["model_dir_version"] = 3
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataValidationError, match=r"version 3"):
        read_manifest(folder)


def test_save_refuses_heldout_perturbations_the_model_was_trained_on(tmp_path: Path) -> None:
    from aivc.data import prepare
    from aivc.instruments import make_instrument

    adata, schema = _synthetic()
    prepared, schema = prepare(adata, schema)
    model = make_instrument("train-mean").fit(prepared, schema)
    with pytest.raises(ValueError, match=r"declared held out but the model was trained on them"):
        save_model_dir(model, tmp_path / "m", heldout_perturbations=["GENE001"])
    assert not (tmp_path / "m").exists()
    # overwriting replaces the directory in one step
    save_model_dir(model, tmp_path / "m", fit_seconds=1.0)
    save_model_dir(model, tmp_path / "m", fit_seconds=2.0, overwrite=True)
    assert load_model_dir(tmp_path / "m").record.fit_seconds == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary directory left
