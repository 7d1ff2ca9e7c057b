from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from aivc.cells import CellEncoder, embed_file
from aivc.data import DataValidationError

TINY = {
    "n_latent": 4,
    "n_hidden": 16,
    "gene_embedding": "none",
    "n_input_genes": None,
    "max_epochs": 3,
    "batch_size": 64,
}


def _counts(n_cells: int = 160, n_genes: int = 50, seed: int = 0) -> ad.AnnData:
    """Two cell types with different programmes, two batches with a gene-wise scaling."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n_cells)
    batch = rng.integers(0, 2, n_cells)
    base = rng.gamma(2.0, 1.0, size=(2, n_genes))
    base[1, : n_genes // 3] *= 6.0
    scale = np.where(batch[:, None] == 1, rng.uniform(0.5, 2.0, n_genes)[None, :], 1.0)
    mu = base[kind] * scale * rng.uniform(0.5, 1.5, (n_cells, 1))
    x = sp.csr_matrix(rng.poisson(mu).astype(np.float32))
    obs = pd.DataFrame(
        {"cell_type": np.array(["a", "b"])[kind], "batch": np.array(["b0", "b1"])[batch]},
        index=[f"c{i}" for i in range(n_cells)],
    )
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"G{i:03d}" for i in range(n_genes)]))


@pytest.fixture(scope="module")
def tiny() -> ad.AnnData:
    return _counts()


@pytest.fixture(scope="module")
def fitted(tiny) -> CellEncoder:
    return CellEncoder(**TINY, seed=0).fit(tiny, batch_key="batch")


def test_transform_shape_and_obsm(fitted, tiny):
    z = fitted.transform(tiny)
    assert z.shape == (tiny.n_obs, 4)
    assert np.isfinite(z).all()
    a = tiny.copy()
    fitted.embed(a, key_added="X_test")
    np.testing.assert_allclose(a.obsm["X_test"], z, rtol=0, atol=0)
    assert a.uns["X_test"]["params"]["n_latent"] == 4
    assert len(fitted.history_) == 3


def test_panel_subset_and_unknown_genes(fitted, tiny, caplog):
    # a query measuring a subset of the genes, in another order, plus genes the model never saw
    sub = tiny[:, tiny.var_names[::-2]].copy()
    extra = ad.AnnData(
        sp.csr_matrix(np.ones((tiny.n_obs, 3), dtype=np.float32)),
        obs=tiny.obs,
        var=pd.DataFrame(index=["NOVEL1", "NOVEL2", "NOVEL3"]),
    )
    query = ad.concat([sub, extra], axis=1, merge="first")
    with caplog.at_level(logging.INFO, logger="aivc.cells._encoder"):
        z = fitted.transform(query)
    assert z.shape == (tiny.n_obs, 4)
    assert "25 reference genes, 0 genes through knowledge only, 3 genes dropped" in caplog.text
    # the novel genes carry no weight: dropping them changes nothing
    np.testing.assert_allclose(z, fitted.transform(sub), rtol=1e-5, atol=1e-6)


def test_query_sharing_no_genes_is_an_error(fitted):
    q = ad.AnnData(
        sp.csr_matrix(np.ones((5, 2), dtype=np.float32)), var=pd.DataFrame(index=["X1", "X2"])
    )
    with pytest.raises(DataValidationError, match="shares no genes"):
        fitted.transform(q)


def test_non_integer_counts_are_an_error(fitted, tiny):
    bad = tiny.copy()
    bad.X = bad.X.multiply(0.37).tocsr()
    with pytest.raises(DataValidationError, match="not integers"):
        CellEncoder(**TINY).fit(bad)
    with pytest.raises(DataValidationError, match="layer='counts'"):
        fitted.transform(bad)
    with pytest.raises(DataValidationError, match="layers"):
        fitted.transform(tiny, layer="counts")


def test_invalid_parameters_are_rejected(tiny):
    with pytest.raises(ValueError, match="gene_embedding"):
        CellEncoder(gene_embedding="word2vec").fit(tiny)
    with pytest.raises(ValueError, match="mask_rate"):
        CellEncoder(mask_rate=1.5).fit(tiny)
    with pytest.raises(DataValidationError, match="batch_key"):
        CellEncoder(**TINY).fit(tiny, batch_key="donor")


def test_save_load_round_trip(fitted, tiny, tmp_path):
    path = fitted.save(tmp_path / "enc")
    assert (path / "weights.safetensors").exists()
    loaded = CellEncoder.load(path)
    assert loaded.get_params() == fitted.get_params()
    assert list(loaded.genes_) == list(fitted.genes_)
    z = fitted.transform(tiny)
    np.testing.assert_array_equal(loaded.transform(tiny), z)
    genes = list(fitted.decoder_genes_[:7])
    np.testing.assert_array_equal(loaded.decode(z, genes), fitted.decode(z, genes))
    with pytest.raises(FileExistsError):
        fitted.save(path)


def test_determinism_by_seed(tiny):
    z0 = CellEncoder(**TINY, seed=3).fit(tiny).transform(tiny)
    z1 = CellEncoder(**TINY, seed=3).fit(tiny).transform(tiny)
    z2 = CellEncoder(**TINY, seed=4).fit(tiny).transform(tiny)
    np.testing.assert_array_equal(z0, z1)
    assert not np.allclose(z0, z2)


def test_decoder_distributes_library_over_any_gene_list(fitted, tiny):
    z = fitted.transform(tiny)
    genes = ["G010", "G001", "G020"]
    lib = np.asarray(tiny.X[:, [10, 1, 20]].sum(axis=1)).ravel() + 1
    mu = fitted.decode(z, genes, library_size=lib)
    assert mu.shape == (tiny.n_obs, 3)
    np.testing.assert_allclose(mu.sum(1), lib, rtol=1e-4)
    assert (mu > 0).all()
    one = fitted.decode(z, genes, batch="b1")
    assert not np.allclose(one, fitted.decode(z, genes, batch="b0"))
    with pytest.raises(DataValidationError, match="Cannot decode"):
        fitted.decode(z, ["NOT_A_GENE"])
    with pytest.raises(ValueError, match="n_latent"):
        fitted.decode(z[:, :2], genes)


def test_decoder_beats_mean_profile_on_masked_genes():
    from aivc.cells import heldout_reconstruction

    cells = _counts(n_cells=420, seed=1)
    train, test = cells[:300].copy(), cells[300:].copy()
    enc = CellEncoder(**{**TINY, "max_epochs": 30}, seed=0).fit(train)
    held = list(train.var_names[:12])
    ref_mean = np.asarray(train[:, held].X.sum(axis=0)).ravel()
    s = heldout_reconstruction(enc, test, held, reference_mean=ref_mean / ref_mean.sum())
    assert s["deviance_model"] < s["deviance_mean_baseline"]
    assert s["pearson_model"] > s["pearson_mean_baseline"]


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_chunked_file_matches_in_memory(fitted, tiny, tmp_path, fmt):
    path = tmp_path / f"cells.{fmt}"
    if fmt == "h5ad":
        tiny.write_h5ad(path)
    else:
        tiny.write_zarr(path)
    out = embed_file(fitted, path, tmp_path / "z.npy", chunk_size=37)
    z = np.load(out)
    np.testing.assert_allclose(z, fitted.transform(tiny), rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "z.npy.partial").exists()
    if fmt == "h5ad":
        backed = ad.read_h5ad(path, backed="r")
        try:
            zb = fitted.transform(backed, chunk_size=50)
        finally:
            backed.file.close()
        np.testing.assert_allclose(zb, z, rtol=1e-5, atol=1e-6)


def test_a_local_dask_cluster_embeds_the_same_file(fitted, tiny, tmp_path):
    pytest.importorskip("distributed")
    path = tmp_path / "cells.zarr"
    tiny.write_zarr(path)
    here = np.load(embed_file(fitted, path, tmp_path / "here.npy", chunk_size=41))
    dask = np.load(
        embed_file(fitted, path, tmp_path / "dask.npy", chunk_size=41, client="local", n_workers=2)
    )
    np.testing.assert_array_equal(dask, here)  # the same weights and threads: the same numbers
    assert not (tmp_path / "dask.npy.partial").exists()


@pytest.mark.slow
def test_reference_mapping_of_mouse_cells_through_orthologs(data_dir, caplog):
    from aivc.data import load

    human = load("baron_human")
    mouse = load("baron_mouse")
    rng = np.random.default_rng(0)
    h = human[np.sort(rng.choice(human.n_obs, 300, replace=False))].copy()
    m = mouse[:150].copy()
    enc = CellEncoder(
        n_latent=8, n_hidden=32, gene_embedding="go", n_input_genes=1500, max_epochs=2, seed=0
    ).fit(h, batch_key="donor")
    with caplog.at_level(logging.INFO, logger="aivc.cells._encoder"):
        z = enc.transform(m, species="mouse")
    assert z.shape == (150, 8)
    assert np.isfinite(z).all()
    assert "mouse genes to human orthologs" in caplog.text
    plan = enc._panel_plan(m.var_names, species="mouse")
    assert plan.n_reference > 500
    # mouse genes absent from the human reference enter through their GO embedding
    assert plan.n_knowledge_only > 0
    # unmapped mouse symbols read as human symbols share nothing usable
    assert enc._panel_plan(m.var_names[:200], species="mouse").n_reference > 0


def test_cli_train_encoder_and_embed(tiny, tmp_path):
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    data = tmp_path / "cells.h5ad"
    tiny.write_h5ad(data)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "train-encoder",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "enc"),
            "--batch-key",
            "batch",
            "--gene-embedding",
            "none",
            "--n-latent",
            "3",
            "--epochs",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        ["embed", str(data), "--model", str(tmp_path / "enc"), "--out", str(tmp_path / "z.npy")],
    )
    assert res.exit_code == 0, res.output
    z = np.load(tmp_path / "z.npy")
    np.testing.assert_allclose(
        z, CellEncoder.load(tmp_path / "enc").transform(tiny), rtol=1e-5, atol=1e-6
    )
    res = runner.invoke(
        app,
        [
            "embed",
            str(tmp_path / "missing.h5ad"),
            "--model",
            str(tmp_path / "enc"),
            "--out",
            "x.npy",
        ],
    )
    assert res.exit_code == 2
    assert "No such file" in res.output
