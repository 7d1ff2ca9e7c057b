"""Out-of-core pseudobulk: blocks read from disk give the in-memory sums, on one process or Dask."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal

from aivc.data import DataValidationError, prepare, pseudobulk
from aivc.data._ooc import pseudobulk_from_file
from aivc.data._synthetic import synthetic_perturbation_data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    raw, schema = synthetic_perturbation_data(n_singles=5, n_doubles=2, n_contexts=2, seed=4)
    raw.X = sp.csr_matrix(raw.X, dtype=np.float32)
    folder = tmp_path_factory.mktemp("ooc")
    raw.write_h5ad(folder / "cells.h5ad")
    raw.write_zarr(folder / "cells.zarr")
    return raw, schema, folder


def _in_memory(raw, schema):
    prepared, new_schema = prepare(raw, schema)
    means, info = pseudobulk(prepared, new_schema)
    counts = sp.csr_matrix(raw.X, dtype=np.float64)
    cond = _labels(prepared, new_schema)
    sums = np.stack(
        [np.asarray(counts[np.flatnonzero(cond == c)].sum(axis=0)).ravel() for c in means.index]
    )
    return means, info, sums


def _labels(adata, schema):
    from aivc.data import condition_labels

    return condition_labels(adata, schema).to_numpy()


@pytest.mark.parametrize("store", ["cells.h5ad", "cells.zarr"])
def test_blocks_from_disk_give_the_in_memory_pseudobulk(dataset, store) -> None:
    raw, schema, folder = dataset
    means, info, sums = _in_memory(raw, schema)
    out = pseudobulk_from_file(folder / store, schema, chunk_size=37)
    assert out.n_cells == raw.n_obs and out.n_blocks == -(-raw.n_obs // 37)
    assert list(out.means.index) == list(means.index)
    assert list(out.means.columns) == list(raw.var_names)
    assert_array_equal(out.count_sums.to_numpy(), sums)  # integer sums: exact
    assert_allclose(out.means.to_numpy(), means.to_numpy(), rtol=0, atol=1e-12)
    assert_array_equal(out.info["n_cells"].to_numpy(), info["n_cells"].to_numpy())
    assert list(out.info["perturbation"]) == list(info["perturbation"])
    assert list(out.info["context"]) == list(info["context"])


def test_the_block_size_changes_nothing_but_rounding(dataset) -> None:
    raw, schema, folder = dataset
    one = pseudobulk_from_file(folder / "cells.h5ad", schema, chunk_size=raw.n_obs)
    many = pseudobulk_from_file(folder / "cells.h5ad", schema, chunk_size=11)
    assert one.n_blocks == 1 and many.n_blocks > 10
    assert_array_equal(one.count_sums.to_numpy(), many.count_sums.to_numpy())
    assert_allclose(one.means.to_numpy(), many.means.to_numpy(), rtol=0, atol=1e-12)


def test_a_local_dask_cluster_gives_the_same_result_bit_for_bit(dataset) -> None:
    pytest.importorskip("distributed")
    _, schema, folder = dataset
    here = pseudobulk_from_file(folder / "cells.h5ad", schema, chunk_size=50)
    dask = pseudobulk_from_file(
        folder / "cells.h5ad", schema, chunk_size=50, client="local", n_workers=2
    )
    assert_array_equal(dask.count_sums.to_numpy(), here.count_sums.to_numpy())
    assert_array_equal(dask.means.to_numpy(), here.means.to_numpy())


def test_bad_stores_and_values_get_clear_errors(dataset, tmp_path) -> None:
    raw, schema, folder = dataset
    with pytest.raises(FileNotFoundError, match="No such file"):
        pseudobulk_from_file(tmp_path / "missing.h5ad", schema)
    (tmp_path / "notes.h5ad").write_text("not hdf5")
    with pytest.raises(DataValidationError, match=r"not a readable \.h5ad"):
        pseudobulk_from_file(tmp_path / "notes.h5ad", schema)
    from dataclasses import replace

    with pytest.raises(DataValidationError, match="no column 'donor'"):
        pseudobulk_from_file(folder / "cells.h5ad", replace(schema, context_key="donor"))
    with pytest.raises(DataValidationError, match=r"layer='counts' is not in"):
        pseudobulk_from_file(folder / "cells.h5ad", replace(schema, counts_layer="counts"))
    logged = raw.copy()
    logged.X = sp.csr_matrix(np.log1p(raw.X.toarray()), dtype=np.float32)
    logged.write_h5ad(tmp_path / "logged.h5ad")
    with pytest.raises(DataValidationError, match="non-integer"):
        pseudobulk_from_file(tmp_path / "logged.h5ad", schema, chunk_size=100)
    with pytest.raises(ValueError, match="chunk_size"):
        pseudobulk_from_file(folder / "cells.h5ad", schema, chunk_size=0)


def test_the_pseudobulk_command_writes_one_row_per_condition(dataset, tmp_path) -> None:
    import anndata as ad
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    raw, schema, folder = dataset
    out = tmp_path / "bulk.h5ad"
    args = [
        "pseudobulk", str(folder / "cells.zarr"), "--out", str(out),
        "--perturbation-key", schema.perturbation_key,
        "--control-label", schema.control_label,
        "--context-key", schema.context_key,
        "--chunk-size", "64", "--verbosity", "warning",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    bulk = ad.read_h5ad(out)
    expected = pseudobulk_from_file(folder / "cells.h5ad", schema, chunk_size=64)
    assert list(bulk.obs_names) == list(expected.means.index)
    assert_array_equal(bulk.layers["counts_sum"], expected.count_sums.to_numpy())
    assert bulk.obs["n_cells"].sum() == raw.n_obs
    # an existing file is kept unless --overwrite
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_one_pass_gives_moments_halves_and_a_capped_cell_sample(dataset) -> None:
    from aivc.data._ooc import condition_statistics_from_file

    raw, schema, folder = dataset
    prepared, new_schema = prepare(raw, schema)
    cond = _labels(prepared, new_schema)
    x = prepared.X.toarray() if sp.issparse(prepared.X) else np.asarray(prepared.X)
    x = x.astype(np.float64)  # prepared values are float32; the sums are float64
    stats = condition_statistics_from_file(
        folder / "cells.zarr", schema, n_halvings=2, cells_per_condition=7, control_cells=30,
        chunk_size=41, seed=3,
    )  # fmt: skip
    bulk = pseudobulk_from_file(folder / "cells.zarr", schema, chunk_size=41)
    assert_array_equal(stats.pseudobulk.count_sums.to_numpy(), bulk.count_sums.to_numpy())
    assert_allclose(stats.pseudobulk.means.to_numpy(), bulk.means.to_numpy(), rtol=0, atol=1e-12)
    for label in stats.variances.index:
        cells = x[cond == label]
        assert_allclose(stats.variances.loc[label], cells.var(axis=0, ddof=1), atol=1e-9)
    # each halving's two halves are disjoint halves of every condition: their mean is the mean
    # of all its cells (exactly when the condition has an even number of cells)
    n = stats.pseudobulk.info["n_cells"].to_numpy()
    even = n % 2 == 0
    assert len(stats.halves) == 2
    for a, b in stats.halves:
        assert_allclose(
            (a[even] + b[even]) / 2, stats.pseudobulk.means.to_numpy()[even], atol=1e-12
        )
        assert not np.allclose(a, b)
    assert not np.allclose(stats.halves[0][0], stats.halves[1][0])  # independent halvings
    # the sample: at most 7 cells per perturbed condition, 30 per control, counts as on disk
    sampled = cond[stats.sample_rows]
    is_ctrl = prepared.obs[new_schema.perturbation_key].astype(str).to_numpy() == "control"
    for label in np.unique(cond):
        cap = 30 if is_ctrl[cond == label][0] else 7
        assert (sampled == label).sum() == min(cap, (cond == label).sum())
    counts = sp.csr_matrix(raw.X)[stats.sample_rows].toarray()
    assert_array_equal(stats.sample.toarray(), counts)
    assert list(stats.sample_obs[schema.perturbation_key]) == list(
        raw.obs[schema.perturbation_key].iloc[stats.sample_rows]
    )


def test_the_statistics_on_a_dask_cluster_are_identical(dataset) -> None:
    pytest.importorskip("distributed")
    from aivc.data._ooc import condition_statistics_from_file

    _, schema, folder = dataset
    here = condition_statistics_from_file(folder / "cells.h5ad", schema, chunk_size=60)
    dask = condition_statistics_from_file(
        folder / "cells.h5ad", schema, chunk_size=60, client="local", n_workers=2
    )
    assert_array_equal(dask.variances.to_numpy(), here.variances.to_numpy())
    assert_array_equal(dask.halves[0][1], here.halves[0][1])
    assert_array_equal(dask.sample.toarray(), here.sample.toarray())


def test_a_file_is_validated_without_loading_its_matrix(dataset, tmp_path) -> None:
    from dataclasses import replace

    from aivc.data import validate, validate_file

    raw, schema, folder = dataset
    validate(raw, schema)  # the in-memory check agrees
    assert validate_file(folder / "cells.zarr", schema, chunk_size=33) == raw.n_obs
    with pytest.raises(DataValidationError, match="No cell has the control label 'ctrl'"):
        validate_file(folder / "cells.h5ad", replace(schema, control_label="ctrl"))
    with pytest.raises(DataValidationError, match="fewer than 10000 cells"):
        validate_file(folder / "cells.h5ad", schema, min_cells=10_000)
    bad = raw.copy()
    x = bad.X.toarray()
    x[150, 3] = 2.5  # one non-integer value, in the block of rows 100-149 ... 150-199
    bad.X = sp.csr_matrix(x, dtype=np.float32)
    bad.write_zarr(tmp_path / "bad.zarr")
    with pytest.raises(DataValidationError, match="Rows 150-199 of X must hold raw counts"):
        validate_file(tmp_path / "bad.zarr", schema, chunk_size=50)
    pytest.importorskip("distributed")
    with pytest.raises(DataValidationError, match="Rows 150-199 of X"):
        validate_file(tmp_path / "bad.zarr", schema, chunk_size=50, client="local", n_workers=2)


def test_the_validate_command_reads_the_stored_schema_or_declared_columns(dataset, tmp_path):
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    raw, schema, folder = dataset
    declared = [
        "validate", str(folder / "cells.h5ad"), "--perturbation-key", schema.perturbation_key,
        "--control-label", schema.control_label, "--context-key", schema.context_key,
        "--chunk-size", "64", "--verbosity", "warning",
    ]  # fmt: skip
    ok = CliRunner().invoke(app, declared)
    assert ok.exit_code == 0 and f"valid ({raw.n_obs:,} cells)" in ok.output
    stored = CliRunner().invoke(app, ["validate", str(folder / "cells.zarr")])  # uns["aivc"]
    assert stored.exit_code == 0, stored.output
    bare = raw.copy()
    bare.uns.pop("aivc", None)
    bare.write_zarr(tmp_path / "bare.zarr")
    missing = CliRunner().invoke(app, ["validate", str(tmp_path / "bare.zarr")])
    assert missing.exit_code == 2 and "carries no aivc schema" in missing.output
    half = CliRunner().invoke(
        app, ["validate", str(tmp_path / "bare.zarr"), "--control-label", "x"]
    )
    assert half.exit_code == 2 and "both --perturbation-key and --control-label" in half.output


@pytest.mark.parametrize("store", ["h5ad", "zarr"])
def test_annotations_read_block_by_block_give_the_in_memory_conditions(tmp_path, store) -> None:
    from dataclasses import replace

    raw, schema = synthetic_perturbation_data(n_singles=4, n_doubles=1, n_contexts=2, seed=9)
    rng = np.random.default_rng(0)
    raw = raw[rng.permutation(raw.n_obs)].copy()  # conditions interleaved across blocks
    raw.obs["dose"] = rng.choice([0.1, 1.0, 10.0], raw.n_obs)
    raw.obs["dose"] = raw.obs["dose"].where(raw.obs["perturbation"] != "control", 0.0)
    raw.X = sp.csr_matrix(raw.X, dtype=np.float32)
    schema = replace(schema, dose_key="dose")
    path = tmp_path / f"dosed.{store}"
    raw.write_h5ad(path) if store == "h5ad" else raw.write_zarr(path)
    means, info, sums = _in_memory(raw, schema)
    out = pseudobulk_from_file(path, schema, chunk_size=29)
    assert list(out.means.index) == list(means.index)
    assert_array_equal(out.info["n_cells"].to_numpy(), info["n_cells"].to_numpy())
    assert_allclose(out.info["dose"].to_numpy(), info["dose"].to_numpy())
    assert_array_equal(out.count_sums.to_numpy(), sums)
    assert_allclose(out.means.to_numpy(), means.to_numpy(), rtol=0, atol=1e-12)
