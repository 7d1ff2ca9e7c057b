"""Gene representation sources: text, co-expression, GO hierarchy, fusion, fallback, orthologs."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from aivc import settings
from aivc.genes import (
    coexpression_embedding,
    embed_genes,
    fused_embedding,
    go_ancestor_closure,
    map_orthologs,
    orthologs_to_adata,
    text_embedding,
)


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """One empty cache for this module (sources computed once, from scratch)."""
    return tmp_path_factory.mktemp("gene-cache")


@pytest.fixture
def tmp_cache(module_cache, monkeypatch):
    monkeypatch.setattr(settings, "cache_dir", module_cache)
    return module_cache


def _modules_adata(genes: list[str], n_cells: int = 300, seed: int = 0) -> ad.AnnData:
    """Log-expression with two co-regulated modules (first half, second half) and one constant gene."""
    rng = np.random.default_rng(seed)
    half = len(genes) // 2
    f = rng.normal(size=(n_cells, 2))
    x = rng.normal(scale=0.5, size=(n_cells, len(genes)))
    x[:, :half] += f[:, [0]] * 2
    x[:, half:] += f[:, [1]] * 2
    x = np.clip(x + 3, 0, None)
    x[:, -1] = 1.0  # constant: no co-expression
    return ad.AnnData(x.astype(np.float32), var=pd.DataFrame(index=genes))


# ----------------------------------------------------------------------------- co-expression
def test_coexpression_embedding_shape_determinism_and_modules(tmp_cache, caplog):
    genes = [f"G{i}" for i in range(20)]
    adata = _modules_adata(genes)
    with caplog.at_level(logging.INFO, logger="aivc.genes._coexpression"):
        e = coexpression_embedding(adata, n_components=5, seed=0)
    assert e.shape == (19, 5)
    assert (
        "G19" not in e.index and "do not vary" in caplog.text
    )  # constant gene reported, not embedded
    assert np.allclose(np.linalg.norm(e.to_numpy(), axis=1), 1.0, atol=1e-5)
    same_module = float(e.loc["G0"] @ e.loc["G1"])
    other_module = float(e.loc["G0"] @ e.loc["G15"])
    assert same_module > 0.8 > other_module
    assert list(tmp_cache.joinpath("genes").glob("coexpression_embedding_*.npz"))
    again = coexpression_embedding(adata, n_components=5, seed=0, cache=False)
    np.testing.assert_allclose(e.to_numpy(), again.to_numpy(), atol=1e-6)
    adata.X[0, 0] += 1.0  # new content -> new cache key
    changed = coexpression_embedding(adata, n_components=5, seed=0)
    assert not np.allclose(changed.to_numpy(), e.to_numpy())


def test_coexpression_embedding_validates_input(tmp_cache):
    adata = _modules_adata([f"G{i}" for i in range(6)], n_cells=20)
    with pytest.raises(KeyError, match="Layer 'counts' not found"):
        coexpression_embedding(adata, layer="counts")
    with pytest.raises(ValueError, match="at least 3 cells"):
        coexpression_embedding(adata[:2].copy())


# ----------------------------------------------------------------------------- fallback
def test_embed_genes_explicit_fallback_for_unknown_genes(caplog):
    table = pd.DataFrame(
        [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], index=["A", "B", "C"], columns=["d0", "d1"]
    )
    with caplog.at_level(logging.WARNING, logger="aivc.genes._fused"):
        values, report = embed_genes(["B", "NOPE", "A", "NOPE2"], embedding=table)
    assert list(values.index) == ["B", "NOPE", "A", "NOPE2"]
    assert report["known"].tolist() == [True, False, True, False]
    np.testing.assert_array_equal(values.loc["NOPE"].to_numpy(), [0.0, 0.0])
    assert "2 of 4 genes have no embedding" in caplog.text and "NOPE" in caplog.text
    mean_values, _ = embed_genes(["A", "B", "NOPE"], embedding=table, fallback="mean")
    np.testing.assert_allclose(mean_values.loc["NOPE"].to_numpy(), [0.5, 0.5])
    with pytest.raises(ValueError, match="'fallback' parameter must be one of"):
        embed_genes(["A"], embedding=table, fallback="drop")


def test_embed_genes_resolves_aliases_and_reports_coverage(data_dir, tmp_cache):
    adata = _modules_adata(["STAT1", "STAT2", "IRF9", "MARCHF8", "GAPDH", "ACTB"], n_cells=100)
    values, report = embed_genes(
        ["STAT1", "MARCH8", "NOT_A_GENE_XYZ"],
        sources=("huri", "coexpression"),
        n_components=4,
        adata=adata,
    )
    assert report.loc["MARCH8", "resolved"] == "MARCHF8" and report.loc["MARCH8", "via_alias"]
    assert not report.loc["NOT_A_GENE_XYZ", "known"]
    assert report["coexpression"].tolist() == [True, True, False]
    assert report["huri"].dtype == bool and not report.loc["NOT_A_GENE_XYZ", "huri"]
    assert values.shape == (3, 8)
    assert np.allclose(values.loc["NOT_A_GENE_XYZ"].to_numpy(), 0.0)


# ----------------------------------------------------------------------------- fusion
def test_fused_embedding_with_dataset_source(data_dir, tmp_cache):
    genes = ["STAT1", "STAT2", "IRF9", "NOT_IN_HURI_XYZ", "GAPDH", "ACTB"]
    adata = _modules_adata(genes, n_cells=100)
    emb, cov = fused_embedding(("huri", "coexpression"), n_components=4, adata=adata)
    assert list(cov.columns) == ["huri", "coexpression"]
    assert emb.shape[1] == 8
    assert cov.loc["NOT_IN_HURI_XYZ", "coexpression"] and not cov.loc["NOT_IN_HURI_XYZ", "huri"]
    block = emb.loc["NOT_IN_HURI_XYZ", [c for c in emb.columns if c.startswith("huri_")]]
    assert np.allclose(block.to_numpy(), 0.0)
    with pytest.raises(ValueError, match="needs a dataset"):
        fused_embedding(("coexpression",))
    with pytest.raises(ValueError, match="Unknown gene source 'biogrid'"):
        fused_embedding(("go", "biogrid"))
    with pytest.raises(ValueError, match="once"):
        fused_embedding(("huri", "huri"))


# ----------------------------------------------------------------------------- GO hierarchy
def test_go_closure_propagates_along_is_a_and_part_of(data_dir):
    closure, terms = go_ancestor_closure()
    pos = {t: i for i, t in enumerate(terms)}
    row = closure[pos["GO:0060337"]]  # type I interferon-mediated signaling pathway
    ancestors = {terms[j] for j in row.indices}
    assert "GO:0060337" in ancestors  # reflexive
    assert "GO:0019221" in ancestors  # cytokine-mediated signaling pathway (is_a chain)
    assert "GO:0008150" in ancestors  # biological_process root
    assert "GO:0003674" not in ancestors  # not across ontologies


# ----------------------------------------------------------------------------- text
@pytest.mark.slow
def test_text_embedding_on_a_few_genes(data_dir, tmp_cache):
    genes = ["STAT1", "STAT2", "HBB", "HBA1", "NOT_A_GENE_XYZ"]
    e = text_embedding(genes=genes)
    assert e.shape == (4, 384) and "NOT_A_GENE_XYZ" not in e.index
    assert np.allclose(np.linalg.norm(e.to_numpy(), axis=1), 1.0, atol=1e-5)
    assert float(e.loc["STAT1"] @ e.loc["STAT2"]) > float(e.loc["STAT1"] @ e.loc["HBB"])
    assert float(e.loc["HBB"] @ e.loc["HBA1"]) > float(e.loc["HBB"] @ e.loc["STAT2"])
    assert list(tmp_cache.joinpath("genes").glob("text_embedding_*.npz"))
    np.testing.assert_array_equal(text_embedding(genes=genes).to_numpy(), e.to_numpy())
    para = text_embedding(genes=genes[:3], mode="paragraph", n_components=2, cache=False)
    assert para.shape == (3, 2)
    with pytest.raises(ValueError, match="'mode' parameter"):
        text_embedding(genes=genes, mode="words")


# ----------------------------------------------------------------------------- orthologs
def test_map_orthologs_mouse_to_human(data_dir):
    result = map_orthologs(["Gcg", "Ins1", "Ins2", "Actb", "Xyz1", "Gcg"])
    status = dict(
        zip(result.table["source"].iloc[:5], result.table["status"].iloc[:5], strict=True)
    )
    assert result.mapping["Gcg"] == "GCG" and status["Gcg"] == "one2one"
    assert result.mapping["Actb"] == "ACTB"
    assert status["Xyz1"] == "not_in_table"
    # mouse Ins1 and Ins2 both map to human INS: exactly one keeps it, the other is reported
    ins = [s for s in ("Ins1", "Ins2") if result.mapping.get(s) == "INS"]
    assert len(ins) == 1
    other = "Ins1" if ins == ["Ins2"] else "Ins2"
    assert status[other] == "unmapped_duplicate"
    assert result.table["status"].iloc[5] == "unmapped_duplicate"  # repeated request
    assert len(set(result.mapping.values())) == len(result.mapping)  # injective
    assert set(result.unmapped) == {"Xyz1", other, "Gcg"}  # Gcg: its repeated request
    dropped = map_orthologs(["Ins1", "Ins2", "Gcg"], many="drop")
    assert dropped.mapping == {"Gcg": "GCG"}
    assert set(dropped.table["status"]) == {"unmapped_many", "one2one"}
    back = map_orthologs(["GCG", "INS"], from_species="human", to_species="mouse")
    assert back.mapping["GCG"] == "Gcg" and back.mapping["INS"] in {"Ins1", "Ins2"}
    with pytest.raises(ValueError, match="must differ"):
        map_orthologs(["Gcg"], from_species="mouse", to_species="mouse")
    with pytest.raises(ValueError, match="'many' parameter"):
        map_orthologs(["Gcg"], many="all")


def test_orthologs_to_adata_renames_and_reports(data_dir):
    adata = ad.AnnData(
        np.arange(12, dtype=np.float32).reshape(3, 4),
        var=pd.DataFrame(index=["Gcg", "Actb", "Xyz1", "Ins2"]),
    )
    human = orthologs_to_adata(adata)
    assert list(human.var_names) == ["GCG", "ACTB", "INS"]
    assert list(human.var["source_symbol"]) == ["Gcg", "Actb", "Ins2"]
    np.testing.assert_array_equal(np.asarray(human.X)[:, 1], np.asarray(adata.X)[:, 1])
    assert human.uns["aivc_orthologs"]["unmapped"] == ["Xyz1"]
    with pytest.raises(ValueError, match="None of the 1 genes"):
        orthologs_to_adata(adata[:, [2]].copy())


def test_orthologs_to_adata_renames_perturbation_labels_too(data_dir):
    adata = ad.AnnData(
        np.ones((4, 4), dtype=np.float32),
        obs=pd.DataFrame(
            {"guide": ["ctrl", "Gcg", "Actb+Gcg", "Stat1"]}, index=[f"c{i}" for i in range(4)]
        ),
        var=pd.DataFrame(index=["Gcg", "Actb", "Xyz1", "Ins2"]),
    )
    human = orthologs_to_adata(adata, perturbation_key="guide", control_label="ctrl")
    assert list(human.obs["guide"]) == ["ctrl", "GCG", "ACTB+GCG", "STAT1"]
    assert list(human.obs["guide_mouse"]) == ["ctrl", "Gcg", "Actb+Gcg", "Stat1"]
    assert human.uns["aivc_orthologs"]["targets"]["Stat1"] == "STAT1"  # not a measured gene
    assert human.uns["aivc_orthologs"]["unmapped"] == ["Xyz1"]
    adata.obs.loc["c3", "guide"] = "Xyz1"
    with pytest.raises(ValueError, match=r"1 perturbation targets have no human ortholog.*Xyz1"):
        orthologs_to_adata(adata, perturbation_key="guide", control_label="ctrl")
    with pytest.raises(ValueError, match=r"control label"):
        orthologs_to_adata(adata, perturbation_key="guide")


def test_mouse_style_share_tells_mouse_from_human_symbols():
    from aivc.genes import mouse_style_share

    assert mouse_style_share(["Stat1", "Jak2", "Irf1", "Gm12345"]) == 1.0
    assert mouse_style_share(["STAT1", "JAK2", "IRF1", "MT-ATP8"]) == 0.0
    # a human symbol with lower case does not count when the human symbols are given
    assert mouse_style_share(["C10orf11", "STAT1"]) == 0.5
    assert mouse_style_share(["C10orf11", "STAT1"], human_symbols={"C10orf11", "STAT1"}) == 0.0
    assert mouse_style_share([]) == 0.0


# ----------------------------------------------------------------------------- knowledge
def test_genes_with_knowledge_leaves_out_unannotated_transcripts(data_dir):
    from aivc.genes import genes_with_knowledge

    genes = ["STAT1", "RP11-228B15.4", "IFNGR1", "LINC00271", "DARS", "STAT1", "NOTAGENE1"]
    # DARS is an alias of DARS1; a repeated gene is listed once
    assert genes_with_knowledge(genes) == ["STAT1", "IFNGR1", "DARS"]
    assert genes_with_knowledge(["IFNGR1"], sources=("huri",)) in ([], ["IFNGR1"])
    with pytest.raises(ValueError, match=r"Unknown knowledge source 'kegg'"):
        genes_with_knowledge(genes, sources=("kegg",))


def test_genes_with_knowledge_without_tables_says_where_they_belong(tmp_path):
    from aivc.genes import genes_with_knowledge

    with pytest.raises(FileNotFoundError, match=r"AIVC_DATA_DIR"):
        genes_with_knowledge(["STAT1"], data_dir=tmp_path)
