"""The knowledge benchmark: is a simulated world learnable from its knowledge base?"""

from __future__ import annotations

import json

import numpy as np
import pytest

from aivc._settings import settings
from aivc.evaluate.tasks import run_task
from aivc.evaluate.tasks.knowledge import VARIANTS, world_knockout_changes


def test_knockout_changes_leave_the_target_out_and_flag_null_knockouts() -> None:
    ko = world_knockout_changes(0, VARIANTS["quick"])
    assert ko.delta.shape[0] == len(ko.targets) == ko.effect.size
    names = np.asarray(ko.network.gene_names).astype(str)
    own = [int(np.flatnonzero(names == t)[0]) for t in ko.targets]
    assert np.all(ko.delta[np.arange(len(own)), own] == 0.0)
    # regulators and module members move other genes; a gene that feeds nothing does not
    acting = set(names[ko.network.regulators]) | set(names[ko.modules.member_gene])
    expected = np.asarray([t in acting for t in ko.targets])
    assert 0 < ko.effect.sum() < ko.effect.size
    assert np.array_equal(ko.effect, expected)


def test_perfect_knowledge_predicts_better_than_useless(tmp_path) -> None:
    before = settings.data_dir
    result = run_task("knowledge", tmp_path, seeds=[0], variant="quick")
    assert settings.data_dir == before
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["task"] == "knowledge"
    fused = saved["models"]["ridge-fused"]["by_knowledge"]
    assert set(fused) == {"perfect", "useless"}
    assert fused["perfect"]["mse_rel"]["mean"] < fused["useless"]["mse_rel"]["mean"] - 0.02
    assert fused["perfect"]["pearson_delta"]["mean"] > fused["useless"]["pearson_delta"]["mean"]
    nochange = result["models"]["no-change"]["by_knowledge"]["perfect"]
    assert nochange["mse_rel"]["mean"] == pytest.approx(1.0)
    assert (tmp_path / "per_world.csv").exists()


def test_knowledge_rejects_a_real_dataset(tmp_path) -> None:
    with pytest.raises(ValueError, match="simulated worlds"):
        run_task("knowledge", tmp_path, dataset="papalexi2021", seeds=[0], variant="quick")


@pytest.mark.slow
def test_module_worlds_give_models_their_own_knowledge_base(tmp_path) -> None:
    from aivc.evaluate.tasks.perturbation import task_data

    data = task_data("unseen-single", "sim-module-world-0", [0])
    assert data.knowledge is not None
    assert (data.knowledge / "genes" / "human_go_annotations.tsv.gz").exists()
    before = settings.data_dir
    result = run_task(
        "unseen-single",
        tmp_path,
        dataset="sim-module-world-0",
        models=["linear-knowledge"],
        seeds=[0],
        cell_eval=False,
    )
    assert settings.data_dir == before
    # the simulated genes are known to the world's Gene Ontology, so the knowledge model
    # is not the training mean it would fall back to with the real tables
    models = result["models"]
    assert (
        models["linear-knowledge"]["pearson_delta_de20"]["mean"]
        != models["train-mean"]["pearson_delta_de20"]["mean"]
    )
    with pytest.raises(ValueError, match="sim-module-world-<seed>"):
        task_data("unseen-single", "sim-module-world-x", [0])
