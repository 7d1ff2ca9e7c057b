"""The papalexi2021 copy that ships inside the package, and the demo's plan without gene knowledge."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import aivc
from aivc.data import load, schema_of
from aivc.data._registry import dataset_entry, embedded_path


@pytest.fixture
def no_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data directory in the settings, as on a machine without the data folder."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.delenv("AIVC_DATA_DIR", raising=False)
    monkeypatch.setattr(aivc.settings, "data_dir", empty)
    return empty


def _assert_same(a, b) -> None:
    assert a.shape == b.shape
    assert list(a.obs_names) == list(b.obs_names)
    assert list(a.var_names) == list(b.var_names)
    assert a.obs.equals(b.obs)
    assert (a.X != b.X).nnz == 0 if sp.issparse(a.X) else np.array_equal(a.X, b.X)
    assert (a.obsm["grna_counts"] != b.obsm["grna_counts"]).nnz == 0
    assert a.uns["aivc"] == b.uns["aivc"]


def test_embedded_file_ships_with_its_provenance():
    path = embedded_path("papalexi2021")
    assert path is not None and path.name == "papalexi2021.h5ad"
    notes = (path.parent / "README.md").read_text()
    assert "10.1038/s41588-021-00778-2" in notes and "MIT" in notes
    assert hashlib.sha256(path.read_bytes()).hexdigest() in notes
    assert embedded_path("kang2018") is None


def test_load_without_a_data_directory_reads_the_embedded_copy(no_data_dir, caplog):
    with caplog.at_level(logging.INFO, logger="aivc.data._registry"):
        adata = load("papalexi2021")
    assert "from the copy embedded in aivc" in caplog.text
    assert adata.shape == (20_729, 299)
    schema = schema_of(adata)
    labels = adata.obs[schema.perturbation_key].astype(str)
    assert (labels == schema.control_label).sum() == 2_386
    assert labels.nunique() == 26  # 25 targets and the controls
    assert adata.uns["aivc"]["dataset"] == "papalexi2021"


def test_an_explicit_data_dir_is_read_only_from_there(no_data_dir):
    with pytest.raises(FileNotFoundError, match="is not in the data directory"):
        load("papalexi2021", data_dir=no_data_dir)
    with pytest.raises(FileNotFoundError, match="is not in the data directory"):
        load("kang2018")  # not embedded: the usual error


def test_the_data_directory_copy_comes_first(no_data_dir, monkeypatch, caplog):
    entry = dataset_entry("papalexi2021")
    copy = entry.path(no_data_dir)
    copy.parent.mkdir(parents=True)
    copy.write_bytes(embedded_path("papalexi2021").read_bytes())
    with caplog.at_level(logging.INFO, logger="aivc.data._registry"):
        load("papalexi2021")
    assert "from the data directory" in caplog.text and "embedded" not in caplog.text


def test_embedded_and_data_directory_copies_are_identical(data_dir, tmp_path, monkeypatch, caplog):
    assert dataset_entry("papalexi2021").path(data_dir).exists()
    with caplog.at_level(logging.INFO, logger="aivc.data._registry"):
        from_dir = load("papalexi2021")
        assert "from the data directory" in caplog.text
        caplog.clear()
        monkeypatch.setattr(aivc.settings, "data_dir", tmp_path)
        embedded = load("papalexi2021")
        assert "from the copy embedded in aivc" in caplog.text
    _assert_same(from_dir, embedded)
    assert from_dir.var.equals(embedded.var)
    assert from_dir.uns["grna_names"].tolist() == embedded.uns["grna_names"].tolist()


def test_papalexi_fixture_works_without_data(no_data_dir, papalexi2021):
    assert papalexi2021.n_obs == 20_729


def test_demo_plan_without_gene_knowledge(no_data_dir):
    from aivc.interfaces._demo import DEMO_MODELS, demo_plan

    plan = demo_plan()
    assert plan.missing_sources == ("go", "string", "huri")
    assert "linear-knowledge" not in plan.models
    assert set(plan.models) == set(DEMO_MODELS) - {"linear-knowledge"}
    assert plan.model_params == {"nearest-neighbour": {"perturbation_embedding": "data"}}
    text = "\n".join(plan.notes)
    for model in ("linear-knowledge", "nearest-neighbour", "aivc-perturb"):
        assert f"{model}: " in text


def test_demo_notes_say_when_aivc_perturb_fell_back_to_train_mean(no_data_dir):
    import pandas as pd

    from aivc.interfaces._demo import _knowledge_lines, demo_plan

    plan = demo_plan()
    same = pd.DataFrame(
        {"m_mean": [0.2, 0.2, np.nan], "m_sd": [0.1, 0.1, np.nan]},
        index=["train-mean", "aivc-perturb", "control"],
    )
    lines = _knowledge_lines(plan, same)
    assert lines[0].startswith("Gene-knowledge tables not found")
    assert len(lines) == 1 + len(plan.notes) + 1
    assert "scored exactly as train-mean" in lines[-1]
    better = same.copy()
    better.loc["aivc-perturb", "m_mean"] = 0.3
    assert len(_knowledge_lines(plan, better)) == 1 + len(plan.notes)


def test_demo_plan_with_gene_knowledge_is_unchanged(data_dir):
    from aivc.interfaces._demo import DEMO_MODELS, demo_plan

    plan = demo_plan()
    assert plan.models == DEMO_MODELS
    assert plan.model_params == {} and plan.notes == () and plan.missing_sources == ()


def test_model_params_of_a_run_leave_the_task_unchanged(monkeypatch, tmp_path):
    from aivc.evaluate import run_task
    from aivc.evaluate.tasks import perturbation
    from aivc.interfaces._demo import DEMO_TASK

    before = perturbation.PERTURBATION_SPECS[DEMO_TASK]
    seen = {}

    def stop(task, dataset, seeds, **kwargs):
        seen["task"] = task
        raise RuntimeError("stop before loading data")

    monkeypatch.setattr(perturbation, "task_data", stop)
    params = {"nearest-neighbour": {"perturbation_embedding": "data"}}
    with pytest.raises(RuntimeError, match="stop before"):
        run_task(DEMO_TASK, tmp_path, models=["train-mean"], model_params=params, notes="a note")
    assert seen["task"] == DEMO_TASK
    assert perturbation.PERTURBATION_SPECS[DEMO_TASK] is before
    with pytest.raises(ValueError, match="accepts the options"):
        run_task("integration", tmp_path, model_params=params)
