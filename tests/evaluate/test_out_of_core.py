"""Perturbation tasks read from disk in blocks: the same truth as in memory, and the same results format."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose

from aivc.data import observed_changes, prepare
from aivc.data._ooc import condition_statistics_from_file
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.evaluate.tasks import _out_of_core as ooc
from aivc.evaluate.tasks.perturbation import run_benchmark


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    raw, schema = synthetic_perturbation_data(n_singles=12, n_doubles=0, n_contexts=2, seed=5)
    raw.X = sp.csr_matrix(raw.X, dtype=np.float32)
    raw.uns["aivc"] = {"schema": schema.to_dict()}
    folder = tmp_path_factory.mktemp("ooc-task")
    raw.write_zarr(folder / "screen.zarr")
    raw.write_h5ad(folder / "screen.h5ad")
    return raw, schema, folder


def test_the_truth_is_the_in_memory_change_and_welch_t_ranks_the_de_genes(store) -> None:
    from scipy.stats import ttest_ind

    raw, schema, folder = store
    stats = condition_statistics_from_file(folder / "screen.zarr", schema, chunk_size=50)
    truth = ooc._truth(stats, schema)
    prepared, new_schema = prepare(raw, schema)
    expected, _ = observed_changes(prepared, new_schema, control="context")
    assert sorted(truth.conditions) == sorted(expected.index)
    assert_allclose(truth.delta.loc[expected.index].to_numpy(), expected.to_numpy(), atol=1e-10)
    # the top-20 genes of one condition are those of scipy's Welch test on its cells
    cond = truth.conditions[0]
    x = prepared.X.toarray() if sp.issparse(prepared.X) else np.asarray(prepared.X)
    pert = prepared.obs[schema.perturbation_key].astype(str).to_numpy()
    ctx = prepared.obs[schema.context_key].astype(str).to_numpy()
    mine = x[(pert == truth.pert_of[cond]) & (ctx == truth.ctx_of[cond])]
    ctrl = x[(pert == schema.control_label) & (ctx == truth.ctx_of[cond])]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.nan_to_num(ttest_ind(mine, ctrl, equal_var=False).statistic)
    excluded = truth.exclude[truth.row[cond]]
    order = [g for g in np.argsort(-np.abs(t), kind="stable") if not excluded[g]][:20]
    assert set(np.flatnonzero(truth.de20[truth.row[cond]])) == set(order)


def test_unseen_single_runs_out_of_core_with_the_results_format(store, tmp_path) -> None:
    raw, _, folder = store
    out = tmp_path / "res"
    result = run_benchmark(
        "unseen-single",
        out=out,
        dataset=str(folder / "screen.zarr"),
        models=["control", "linear"],
        seeds=[0],
    )
    assert list(result["models"]) == ["train-mean", "control", "linear"]
    assert result["n_cells"] == raw.n_obs and result["n_genes"] == raw.n_vars
    info = result["out_of_core"]
    assert info["de_test"] == "welch-t" and info["peak_memory_mb"] > 0
    assert info["total_wall_seconds"] >= info["statistics_seconds"] > 0
    assert set(result["wall_seconds"]) == {"train-mean", "control", "linear"}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["out_of_core"]["sampled_cells"] == info["sampled_cells"]
    per = pd.read_csv(out / "per_condition.csv")
    # every perturbed condition is tested once, by every model
    assert per.groupby("model")["condition"].nunique().eq(24).all()
    assert "energy_distance_rel" not in per and per["centroid_accuracy"].notna().all()
    # the replicate ceiling beats predicting no change
    assert result["replicate"]["mse_de20"]["mean"] < result["models"]["control"]["mse_de20"]["mean"]
    # the same splits as the in-memory runner
    splits = json.loads((out / "splits.json").read_text())
    memory = run_benchmark(
        "unseen-single",
        out=tmp_path / "mem",
        dataset=str(folder / "screen.h5ad"),
        models=["control"],
        seeds=[0],
        cell_eval=False,
        n_halvings=1,
    )
    assert json.loads((tmp_path / "mem" / "splits.json").read_text()) == splits
    assert "out_of_core" not in memory


def test_an_h5ad_file_runs_out_of_core_on_request_with_one_seed_by_default(store, tmp_path) -> None:
    _, _, folder = store
    result = run_benchmark(
        "unseen-single",
        out=tmp_path / "h5",
        dataset=str(folder / "screen.h5ad"),
        models=["control"],
        out_of_core=True,
    )
    assert result["out_of_core"]["store"] == "screen.h5ad"
    assert result["split"]["seeds"] == [0] and result["split"]["n_splits"] == 5


def test_a_registered_dataset_runs_out_of_core_with_the_registry_schema(tmp_path) -> None:
    # papalexi2021 ships inside the package, so this runs with or without a data directory
    result = run_benchmark(
        "unseen-single",
        out=tmp_path / "pap",
        dataset="papalexi2021",
        models=["control"],
        seeds=[0],
        out_of_core=True,
        cell_eval=False,  # the cell-level metrics are tested elsewhere; this is about the reading
    )
    assert result["dataset"] == "papalexi2021" and result["n_genes"] > 0
    assert result["out_of_core"]["store"].endswith(".h5ad")
    # every perturbation is tested once (25 targets), against the control of its context
    assert result["n_conditions"] == 25
    with pytest.raises(FileNotFoundError, match="registered dataset"):
        run_benchmark("unseen-single", out=tmp_path / "x", dataset="nowhere", out_of_core=True)


def test_models_that_need_every_cell_are_refused_and_bad_names_explained(store, tmp_path) -> None:
    _, _, folder = store
    with pytest.raises(ValueError, match="cannot run out of core"):
        run_benchmark(
            "unseen-single",
            out=tmp_path / "g",
            dataset=str(folder / "screen.zarr"),
            models=["gears"],
            seeds=[0],
        )
    with pytest.raises(ValueError, match="sim:<preset>"):
        ooc.world_store("sim:enormous")
    with pytest.raises(ValueError, match="sim:<preset>"):
        ooc.world_store("sim:small:three")
    with pytest.raises(FileNotFoundError, match="No such dataset"):
        run_benchmark("unseen-single", out=tmp_path / "m", dataset="missing.zarr", seeds=[0])
    assert ooc.is_out_of_core("sim:replogle") and ooc.is_out_of_core("a/b.zarr/")
    assert not ooc.is_out_of_core("papalexi2021") and not ooc.is_out_of_core(None)


def test_the_benchmark_command_takes_out_of_core(store, tmp_path) -> None:
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    _, _, folder = store
    out = tmp_path / "cli"
    args = [
        "benchmark", "unseen-single", "--dataset", str(folder / "screen.h5ad"), "--out-of-core",
        "--models", "control", "--seeds", "0", "--out", str(out), "--verbosity", "warning",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Run out of core" in (out / "results.md").read_text()
    wrong = CliRunner().invoke(app, ["benchmark", "scaling", "--out-of-core", "--out", str(out)])
    assert wrong.exit_code == 2 and "--out-of-core" in wrong.output


def test_a_store_without_a_schema_takes_declared_columns_and_a_counts_layer(
    store, tmp_path
) -> None:
    from typer.testing import CliRunner

    from aivc.data import log_normalize
    from aivc.interfaces.cli import app

    raw, schema, folder = store
    bare = raw.copy()
    bare.uns.pop("aivc", None)
    bare.layers["raw"] = bare.X.copy()
    bare.X, _ = log_normalize(bare.X)  # what many public files hold in X
    bare.write_zarr(tmp_path / "bare.zarr")
    columns = [
        "--perturbation-key", schema.perturbation_key, "--control-label", schema.control_label,
        "--context-key", schema.context_key,
    ]  # fmt: skip
    common = ["--models", "control", "--seeds", "0", "--verbosity", "warning"]
    dataset = ["benchmark", "unseen-single", "--dataset", str(tmp_path / "bare.zarr")]
    out = tmp_path / "declared"
    result = CliRunner().invoke(
        app, [*dataset, *columns, "--counts-layer", "raw", *common, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    declared = json.loads((out / "results.json").read_text())
    stored = run_benchmark(
        "unseen-single",
        out=tmp_path / "stored",
        dataset=str(folder / "screen.zarr"),
        models=["control"],
        seeds=[0],
    )
    # the counts layer gives what counts in X give
    assert declared["replicate"]["mse_de20"]["mean"] == pytest.approx(
        stored["replicate"]["mse_de20"]["mean"]
    )
    # without the layer, the log values in X are refused as counts, with the rows
    wrong = CliRunner().invoke(app, [*dataset, *columns, *common, "--out", str(tmp_path / "w")])
    assert wrong.exit_code == 2 and "non-integer" in wrong.output
