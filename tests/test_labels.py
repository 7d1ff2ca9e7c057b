"""Label checks with suggestions: one helper, one cut-off, case-insensitive, used by every caller."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aivc._labels import SUGGESTION_CUTOFF, check_known, did_you_mean, suggest
from aivc.data import DataValidationError, PerturbationSchema


# ----------------------------------------------------------------------------- the helper
def test_a_case_mistake_is_suggested_first():
    # "STAT11" and "STAT2" are close too, but the case-insensitive equal comes first
    assert suggest("stat1", ["STAT11", "STAT2", "STAT1"])[0] == "STAT1"
    assert suggest("Stat1", ["STAT1"]) == ["STAT1"]
    assert suggest("stat1", ["Stat1", "STAT1"], n=3)[:2] == ["Stat1", "STAT1"]


def test_one_cutoff_on_case_folded_similarity():
    assert SUGGESTION_CUTOFF == 0.6
    # difflib ratios against "abcde": "ABCXY" 0.6 (kept), "abxyz" 0.4 (dropped)
    assert suggest("abcde", ["ABCXY", "abxyz"]) == ["ABCXY"]
    assert suggest("abcde", ["abxyz"]) == []
    # most similar first, ties alphabetical, at most n
    assert suggest("gene01", ["GENE02", "GENE01X", "GENE03", "OTHER"], n=2) == ["GENE01X", "GENE02"]
    assert did_you_mean("gene01", ["GENE01"]) == "Did you mean 'GENE01'?"
    assert did_you_mean("zzz", ["GENE01"]) == ""


def test_check_known_says_what_was_expected_and_what_was_received():
    check_known(["STAT1"], {"STAT1", "IRF1"})  # nothing unknown: no error

    class Missing(KeyError):
        pass

    with pytest.raises(Missing) as e:
        check_known(
            ["STAT1", "stat1"],
            ["STAT1", "IRF1"],
            what="gene",
            where=" in the panel",
            advice="Fix the panel.",
            error=Missing,
        )
    assert str(e.value.args[0]) == (
        "Unknown gene 'stat1' in the panel; expected one of the 2 genes: ['IRF1', 'STAT1']. "
        "Did you mean 'STAT1'? Fix the panel."
    )
    many = [f"G{i:03d}" for i in range(40)]
    with pytest.raises(ValueError, match=r"Unknown genes \['g001', 'xyz'\]; expected one of the 40 "
                       r"genes \(e\.g\. 'G000', 'G001', 'G002', \.\.\.\)\. Did you mean 'G001' for 'g001'\?"):  # fmt: skip
        check_known(["g001", "xyz"], many)


# ----------------------------------------------------------------------------- every caller
def test_benchmark_tasks():
    from aivc.evaluate.tasks import get_task

    with pytest.raises(
        ValueError, match=r"Unknown benchmark task 'Unseen-Single'.*Did you mean 'unseen-single'"
    ):
        get_task("Unseen-Single")


def test_datasets():
    from aivc.data import dataset_entry

    with pytest.raises(
        KeyError, match=r"Unknown dataset 'Papalexi2021'.*Did you mean 'papalexi2021'\?"
    ):
        dataset_entry("Papalexi2021")


def test_perturbation_labels():
    from aivc.data import check_perturbation_labels

    schema = PerturbationSchema(perturbation_key="p", control_label="ctrl")
    with pytest.raises(
        DataValidationError,
        match=r"Unknown gene 'stat1' in the combination 'stat1\+MYC'.*Did you mean 'STAT1'",
    ):
        check_perturbation_labels(["stat1+MYC"], schema, known_genes={"STAT1", "STAT2", "MYC"})


def test_obs_columns_and_control_label(synthetic):
    from aivc.data import validate

    adata, _ = synthetic
    schema = PerturbationSchema(perturbation_key="Perturbation", control_label="control")
    with pytest.raises(
        DataValidationError, match=r"Unknown obs column 'Perturbation'.*Did you mean 'perturbation'"
    ):
        validate(adata, schema)
    schema = PerturbationSchema(perturbation_key="perturbation", control_label="CONTROL")
    with pytest.raises(DataValidationError, match=r"Did you mean 'control'\? Fix control_label"):
        validate(adata, schema)


def _fake_model(genes):
    schema = PerturbationSchema(perturbation_key="perturbation", control_label="control")
    return SimpleNamespace(known_genes_=list(genes), schema_=schema)


def test_workspace_predictions():
    from aivc.interfaces.api._workspace import NotFoundError, Workspace

    model = _fake_model(["STAT1", "IRF1", "MYC"])
    with pytest.raises(
        NotFoundError, match=r"Unknown gene 'stat1' in 'stat1'.*Did you mean 'STAT1'"
    ):
        Workspace._check_labels(None, model, ["stat1"])  # type: ignore[arg-type]


def test_screen_panel():
    from aivc.experiments._screen import _check_targets

    model = _fake_model(["STAT1", "IRF1", "MYC"])
    with pytest.raises(
        ValueError, match=r"Unknown gene 'irf1' in the pair panel.*Did you mean 'IRF1'"
    ):
        _check_targets(model, ["STAT1", "irf1"], "pair panel")  # type: ignore[arg-type]


def test_loop_candidates():
    from aivc.experiments._loop import _check_candidates

    with pytest.raises(ValueError, match=r"Unknown candidate 'myc'.*Did you mean 'MYC'"):
        _check_candidates(["STAT1", "myc"], ["STAT1", "MYC"], "simulated cell")


def test_objective_genes():
    from aivc.experiments import make_objective

    with pytest.raises(ValueError, match=r"Unknown objective gene 'myc'.*Did you mean 'MYC'"):
        make_objective("up:myc", genes=["STAT1", "MYC"])


@pytest.fixture(scope="module")
def small_lab():
    from aivc.sim import VirtualCellSimulator, VirtualLab

    return VirtualLab(simulator=VirtualCellSimulator(n_genes=60, seed=2), seed=2)


def test_simulator_targets(small_lab):
    sim = small_lab.simulator
    gene = sim.genes[5]
    with pytest.raises(
        ValueError, match=rf"Unknown perturbation target '{gene.lower()}'.*Did you mean '{gene}'"
    ):
        sim.parse(gene.lower())


def test_lab_cell_types(small_lab):
    genes = small_lab.genes
    with pytest.raises(ValueError, match=r"Unknown cell type 'TYPE_A'.*Did you mean 'type_A'"):
        small_lab.run([genes[0]], n_cells=5, cell_type="TYPE_A")
