"""aivc.cells.integrate: batches mix, cell types stay apart, any input is read once."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from aivc.cells import integrate
from aivc.data import DataValidationError, log_normalize
from aivc.evaluate._scib import integration_scores


def _two_batches(seed: int = 0) -> ad.AnnData:
    """Counts of three cell types in two batches; batch 2 scales a block of genes (a technology effect)."""
    rng = np.random.default_rng(seed)
    n_genes, per = 120, 60
    programs = rng.gamma(2.0, 1.0, size=(3, n_genes))
    programs[:, :30] *= rng.uniform(0.1, 8.0, size=(3, 30))  # cell-type marker genes
    batch_effect = np.ones(n_genes)
    batch_effect[30:90] = rng.uniform(0.33, 3.0, 60)
    rows, types, batches = [], [], []
    for b in ("b1", "b2"):
        for t in range(3):
            mu = programs[t] * (batch_effect if b == "b2" else 1.0)
            rows.append(rng.poisson(mu * rng.uniform(0.5, 1.5, (per, 1))))
            types += [f"type{t}"] * per
            batches += [b] * per
    adata = ad.AnnData(X=sp.csr_matrix(np.vstack(rows).astype(np.float32)))
    adata.var_names = [f"G{i}" for i in range(n_genes)]
    adata.obs["cell_type"] = types
    adata.obs["tech"] = batches
    return adata


def test_harmony_mixes_batches_that_pca_keeps_apart():
    adata = _two_batches()
    labels, batches = adata.obs["cell_type"].to_numpy(), adata.obs["tech"].to_numpy()
    mixed = integrate(adata, batch_key="tech", n_pcs=10)
    plain = integrate(adata, batch_key="tech", method="pca", n_pcs=10)
    assert mixed.method == "harmony" and plain.method == "pca" and mixed.n_batches == 2
    s_mixed = integration_scores(mixed.embedding, labels, batches)
    s_plain = integration_scores(plain.embedding, labels, batches)
    assert s_mixed["ilisi"] > 0.7 and s_plain["ilisi"] < 0.3
    assert s_mixed["ari"] > 0.9  # the cell types stay apart
    assert "Harmony over 2 batches" in mixed.describe() and "counts" in mixed.describe()


def test_log_normalised_input_gives_the_same_embedding_as_counts():
    adata = _two_batches()
    from_counts = integrate(adata, batch_key="tech", n_pcs=8)
    logged = adata.copy()
    logged.X, _ = log_normalize(adata.X, target_sum=1e4, dtype=np.float64)
    from_log = integrate(logged, batch_key="tech", n_pcs=8)
    assert from_log.input.kind != from_counts.input.kind
    np.testing.assert_allclose(np.abs(from_log.embedding), np.abs(from_counts.embedding), atol=1e-6)


def test_one_batch_or_no_batch_column_is_not_corrected():
    adata = _two_batches()
    one = adata[adata.obs["tech"] == "b1"].copy()
    assert integrate(one, batch_key="tech", n_pcs=5).method == "pca"
    assert integrate(adata, batch_key=None, n_pcs=5).method == "pca"
    with pytest.raises(DataValidationError, match="obs\\['donor'\\]"):
        integrate(adata, batch_key="donor")
    with pytest.raises(ValueError, match="method"):
        integrate(adata, batch_key="tech", method="scanorama")  # type: ignore[arg-type]


def test_highly_variable_genes_are_chosen_within_batches():
    adata = _two_batches()
    out = integrate(adata, batch_key="tech", n_top_genes=40, n_pcs=5)
    assert len(out.genes) == 40 and out.embedding.shape == (adata.n_obs, 5)
    assert set(out.genes) <= set(adata.var_names)
