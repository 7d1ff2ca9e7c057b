"""The spatial benchmark: a declared file through the CLI, osmFISH, and the virtual tissue's niche effects."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from aivc.interfaces.cli import app
from aivc.sim import VirtualTissue


@pytest.fixture(autouse=True)
def no_peer_environments(tmp_path, monkeypatch):
    """Peers run in their own environments, never in the tests: point the cache at an empty folder."""
    from aivc import settings

    monkeypatch.setattr(settings, "cache_dir", tmp_path / "cache")


@pytest.fixture(scope="module")
def tissue_file(tmp_path_factory):
    tissue = VirtualTissue(n_genes=120, n_sections=2, seed=3).build()
    adata, _ = tissue.simulate(1500, seed=3)
    adata.obs = adata.obs.rename(
        columns={"cell_type": "kind", "section": "slide", "region": "layer"}
    )
    adata.uns.pop("aivc_spatial", None)
    path = tmp_path_factory.mktemp("tissue") / "tissue.h5ad"
    adata.write_h5ad(path)
    return path


def test_spatial_benchmark_reads_a_declared_file(tissue_file, tmp_path, monkeypatch) -> None:
    import aivc.evaluate.tasks.spatial as spatial

    monkeypatch.setattr(spatial, "NICHE_STEPS", 40)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "spatial",
            "--dataset",
            str(tissue_file),
            "--cell-type-key",
            "kind",
            "--section-key",
            "slide",
            "--region-key",
            "layer",
            "--seeds",
            "0",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert res["split"]["kind"] == "held-out sections"
    assert res["split"]["sections"] == 2
    models = res["models"]
    for name in ("expression-only", "neighbour-mean", "aivc-niche"):
        for metric in ("accuracy", "macro_f1", "domain_ari", "imputation_pearson_panel"):
            assert np.isfinite(models[name][metric]["mean"]), (name, metric)
    for name in ("neighbour-composition", "niche-gnn"):
        assert 0 < models[name]["accuracy"]["mean"] <= 1
    assert "cell_type" in res["aivc_choices"]
    assert res["peers"] == {
        "cellcharter": "not installed (aivc peers install cellcharter)",
        "novae": "not installed (aivc peers install novae)",
    }
    assert "| aivc-niche |" in (out / "results.md").read_text()


def test_spatial_benchmark_refuses_what_it_cannot_read(tissue_file, tmp_path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "benchmark",
            "spatial",
            "--dataset",
            str(tissue_file),
            "--seeds",
            "0",
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code != 0
    assert "--cell-type-key" in r.output
    r = runner.invoke(app, ["benchmark", "time", "--section-key", "slide", "--out", str(tmp_path)])
    assert r.exit_code != 0
    assert "--section-key" in r.output
    r = runner.invoke(
        app,
        [
            "benchmark",
            "spatial",
            "--dataset",
            str(tissue_file),
            "--variant",
            "niche-effect",
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code != 0
    assert "simulator" in r.output


def test_spatial_benchmark_on_osmfish(data_dir, tmp_path) -> None:
    from aivc.evaluate.tasks.spatial import run_spatial

    res = run_spatial(tmp_path, dataset="osmfish_cortex", seeds=(0,), models=["aivc-niche"])
    assert res["split"]["n_cells"] == 4530
    assert "domain_ari" not in res["models"]["aivc-niche"]  # no annotated regions
    only = res["models"]["expression-only"]["accuracy"]["mean"]
    assert res["models"]["aivc-niche"]["accuracy"]["mean"] >= only - 0.02


def test_niche_effects_on_the_virtual_tissue(tmp_path, monkeypatch) -> None:
    import aivc.evaluate.tasks.spatial as spatial

    monkeypatch.setattr(spatial, "SIM_CELLS", 2500)
    res = spatial.run_spatial(tmp_path, dataset="sim-tissue-1", seeds=(0,), variant="niche-effect")
    m = res["models"]
    assert set(m) == {"no-change", "mean-effect", "aivc-tissue"}
    assert m["no-change"]["effect_pearson"]["mean"] == 0
    assert np.isfinite(m["aivc-tissue"]["effect_mse"]["mean"])
    assert 0 <= m["aivc-tissue"]["edge_precision"]["mean"] <= 1
    assert (tmp_path / "per_pathway.csv").exists()
