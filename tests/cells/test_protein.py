"""RNA -> protein decoder and the rna-to-protein benchmark."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from aivc.cells._protein import (
    ProteinDecoder,
    canonical_protein,
    normalize_proteins,
    protein_matrix,
)
from aivc.data import DataValidationError


@pytest.fixture(scope="module")
def cite(data_dir):
    from aivc.data import load

    return load("pbmc10k_cite_small"), load("pbmc5k_cite_small")


@pytest.fixture(scope="module")
def fitted(cite):
    ref, _ = cite
    return ProteinDecoder(n_genes=500, n_components=15).fit(ref)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_canonical_protein_names():
    assert canonical_protein("CD8a") == "CD8" == canonical_protein("CD8")
    assert canonical_protein("PD-1 (CD279)") == "CD279" == canonical_protein("PD-1")
    assert canonical_protein("IL7Ralpha (CD127)") == "CD127"
    assert canonical_protein("MHCII (HLA-DR)") == "HLA-DR"
    assert canonical_protein("IgG1") == "IgG1"  # isotype control: unchanged


def test_normalize_proteins_is_centred_log(cite):
    ref, _ = cite
    y = normalize_proteins(protein_matrix(ref))
    assert y.shape == (ref.n_obs, 14)
    np.testing.assert_allclose(y.mean(axis=0).to_numpy(), 0.0, atol=1e-10)
    with pytest.raises(DataValidationError, match="No protein counts"):
        protein_matrix(ref, protein_key="adt")


def test_decoder_predicts_another_dataset(cite, fitted):
    _, query = cite
    pred = fitted.predict(query)
    assert list(pred.columns) == fitted.proteins_ and pred.shape == (query.n_obs, 14)
    truth = normalize_proteins(protein_matrix(query))
    # CD8a (10k) and CD8a (5k); CD14 and CD19 are clear lineage markers
    for p in ("CD8a", "CD14", "CD19", "CD4"):
        assert _pearson(pred[p].to_numpy(), truth[p].to_numpy()) > 0.5, p
    assert fitted.alpha_.shape == (14,)


def test_decoder_query_lacking_many_genes(cite, fitted, caplog):
    _, query = cite
    rng = np.random.default_rng(0)
    keep = rng.random(query.n_vars) < 0.3
    partial = query[:, keep].copy()
    with caplog.at_level(logging.WARNING, logger="aivc.cells._protein"):
        pred = fitted.predict(partial)
    assert "reference genes" in caplog.text  # the missing genes are reported
    assert pred.shape == (query.n_obs, 14) and np.isfinite(pred.to_numpy()).all()
    assert not fitted.gene_overlap(partial)["present"].all()
    truth = normalize_proteins(protein_matrix(query))
    # still informative without 70% of the genes
    assert _pearson(pred["CD14"].to_numpy(), truth["CD14"].to_numpy()) > 0.4


def test_decoder_query_without_any_gene_is_refused(cite, fitted):
    _, query = cite
    renamed = query.copy()
    renamed.var_names = [f"unknown_{i}" for i in range(renamed.n_vars)]
    with pytest.raises(DataValidationError, match="shares none of the decoder's"):
        fitted.predict(renamed)


def test_decoder_validates_reference(cite):
    ref, _ = cite
    no_protein = ref.copy()
    del no_protein.obsm["protein_counts"]
    with pytest.raises(DataValidationError, match="No protein counts"):
        ProteinDecoder().fit(no_protein)
    with pytest.raises(ValueError, match="'n_components' parameter"):
        ProteinDecoder(n_components=0).fit(ref)


def test_decoder_save_load_and_seed(cite, fitted, tmp_path):
    _, query = cite
    path = fitted.save(tmp_path / "protein")
    loaded = ProteinDecoder.load(path)
    np.testing.assert_allclose(loaded.predict(query).to_numpy(), fitted.predict(query).to_numpy())
    assert loaded.own_genes_["CD3"] == fitted.own_genes_["CD3"]
    ref, _ = cite
    again = ProteinDecoder(n_genes=500, n_components=15).fit(ref).predict(query)
    np.testing.assert_allclose(again.to_numpy(), fitted.predict(query).to_numpy(), atol=1e-8)


@pytest.mark.slow
def test_rna_to_protein_benchmark_tiny(data_dir, tmp_path):
    from aivc.evaluate import run_task

    out = tmp_path / "bench"
    result = run_task(
        "rna-to-protein",
        out,
        dataset="pbmc10k_cite_small->pbmc5k_cite_small",
        models=["aivc-protein", "mrna"],
        seeds=(0,),
    )
    stored = json.loads((out / "results.json").read_text())
    assert stored["task"] == "rna-to-protein" and stored["split"]["seeds"] == [0]
    assert set(stored["models"]) == {"aivc-protein", "mrna"}
    assert len(stored["pairs"]) == 1 and len(stored["pairs"][0]["proteins"]) == 14
    assert stored["models"]["aivc-protein"]["pearson"]["mean"] > 0.4
    assert stored["wall_seconds"]["aivc-protein"] > 0
    assert "| aivc-protein |" in (out / "results.md").read_text()
    assert (out / "per_protein.csv").exists()
    assert result["models"]["mrna"]["pearson"]["n"] == 1
    with pytest.raises(ValueError, match="Unknown rna-to-protein model"):
        run_task("rna-to-protein", tmp_path / "x", models=["linear"], seeds=(0,))
