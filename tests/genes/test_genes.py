"""Knowledge-based gene representations."""

from __future__ import annotations

import numpy as np
import pytest

from aivc.genes import fused_embedding, gene_aliases, gene_symbols, go_embedding, network_embedding


def _cos(e, a, b):
    return float(e.loc[a] @ e.loc[b])


def test_go_embedding_is_cached_and_meaningful(data_dir, tmp_path, monkeypatch):
    from aivc import settings

    monkeypatch.setattr(settings, "cache_dir", tmp_path)
    e = go_embedding()
    assert e.shape[1] == 64 and e.shape[0] > 20_000
    assert np.allclose(np.linalg.norm(e.to_numpy(), axis=1), 1.0, atol=1e-5)
    assert list((tmp_path / "genes").glob("go_embedding_*.npz"))
    again = go_embedding()
    assert np.array_equal(e.to_numpy(), again.to_numpy())
    assert _cos(e, "STAT1", "STAT2") > _cos(e, "STAT1", "HBB")


@pytest.mark.parametrize("source", ["string", "huri"])
def test_network_embeddings(data_dir, source):
    e = network_embedding(source)
    assert e.shape[1] == 64 and np.isfinite(e.to_numpy()).all()
    assert _cos(e, "IFNGR1", "IFNGR2") > 0.3
    with pytest.raises(ValueError, match=r"Unknown network 'biogrid'"):
        network_embedding("biogrid")


def test_fused_embedding_reports_coverage_and_ablates(data_dir):
    full, coverage = fused_embedding()
    assert list(coverage.columns) == ["go", "string", "huri"]
    assert full.shape[1] == 3 * 64
    # a gene only some sources know keeps zeros (not a silent drop) in the others
    partial = coverage.index[coverage.sum(axis=1) == 1][0]
    missing = [s for s in coverage.columns if not coverage.loc[partial, s]]
    block = full.loc[partial, [c for c in full.columns if c.startswith(missing[0] + "_")]]
    assert np.allclose(block.to_numpy(), 0.0)
    ablated, cov2 = fused_embedding(("go", "string"))
    assert ablated.shape[1] == 2 * 64 and list(cov2.columns) == ["go", "string"]


def test_aliases_resolve_old_symbols(data_dir):
    assert gene_aliases()["MARCH8"] == "MARCHF8"
    assert "MARCH8" in gene_symbols() and "MARCH8" not in gene_symbols(include_aliases=False)


@pytest.mark.parametrize("embedding", ["string", "fused"])
def test_linear_model_with_network_embeddings(data_dir, embedding):
    from aivc.instruments import LinearModel, NearestNeighbourModel, check_instrument

    assert "save-load" in check_instrument(
        LinearModel, params={"perturbation_embedding": embedding}
    )
    assert "fit" in check_instrument(
        NearestNeighbourModel, params={"perturbation_embedding": embedding}
    )


def test_aliases_with_spaces_after_separators(tmp_path):
    """Gene tables write aliases as "A; B" as well as "A;B"; both name the alias "B"."""
    import pandas as pd

    from aivc.genes._knowledge import KNOWLEDGE_FOLDER

    folder = tmp_path / KNOWLEDGE_FOLDER
    folder.mkdir(parents=True)
    pd.DataFrame(
        {
            "symbol": ["MARCHF8", "DARS1", "TP53"],
            "aliases": ["MARCH8; MIR; ", "DARS;  AspRS", "P53"],
        }
    ).to_csv(folder / "human_gene_info.tsv.gz", sep="\t", index=False)
    aliases = gene_aliases(tmp_path)
    assert aliases == {
        "MARCH8": "MARCHF8",
        "MIR": "MARCHF8",
        "DARS": "DARS1",
        "AspRS": "DARS1",
        "P53": "TP53",
    }
    assert gene_symbols(tmp_path) >= {"MIR", "AspRS", "TP53"}
