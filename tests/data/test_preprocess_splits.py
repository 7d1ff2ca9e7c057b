from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose

from aivc.data import (
    differential_expression,
    highly_variable_genes,
    log_normalize,
    prepare,
    pseudobulk,
)
from aivc.data.splits import (
    combination_splits,
    kfold_perturbations,
    leave_one_context_out,
    leave_one_double_out,
    load_splits,
    save_splits,
)


@pytest.mark.parametrize("dense", [True, False])
def test_log_normalize(dense):
    counts = np.array([[1, 3, 0], [2, 2, 4]], dtype=np.float32)
    x, ts = log_normalize(counts if dense else sp.csr_matrix(counts), target_sum=100.0)
    assert ts == 100.0
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 100)
    assert_allclose(x.toarray(), expected, rtol=1e-6)


def test_prepare_keeps_input_and_records(synthetic):
    adata, schema = synthetic
    before = adata.X.copy()
    out, new_schema = prepare(adata, schema)
    assert (adata.X != before).nnz == 0
    assert new_schema.counts_layer == "counts"
    assert out.uns["aivc"]["preprocessing"]["target_sum"] == 1e4
    assert_allclose(out.layers["counts"].toarray(), before.toarray())


def test_hvg_keeps_targets(prepared):
    adata, schema = prepared
    mask = highly_variable_genes(adata, schema, n_top_genes=10)
    targets = {t for p in adata.obs["perturbation"].astype(str).unique() for t in schema.targets(p)}
    kept = set(adata.var_names[mask])
    assert targets <= kept
    assert mask.sum() >= 10


def test_pseudobulk_matches_manual(prepared):
    adata, schema = prepared
    means, info = pseudobulk(adata, schema)
    sel = (adata.obs["perturbation"] == "control").to_numpy()
    assert_allclose(
        means.loc["control"].to_numpy(), np.asarray(adata.X[sel].mean(0)).ravel(), rtol=1e-5
    )
    assert info.loc["control", "n_cells"] == sel.sum()


def test_differential_expression_finds_knockdown(prepared):
    adata, schema = prepared
    de = differential_expression(adata, schema)
    singles = [p for p in de if "+" not in p]
    hits = sum(p in list(de[p].index[:5]) for p in singles)
    assert hits >= len(singles) - 1
    assert set(de[singles[0]].columns) == {"score", "logfoldchange", "pvals_adj"}


def test_kfold_is_deterministic_and_partitions(prepared):
    adata, schema = prepared
    perts = adata.obs["perturbation"].astype(str)
    a = kfold_perturbations(perts, schema, n_folds=3, seeds=[0, 1])
    b = kfold_perturbations(perts, schema, n_folds=3, seeds=[0, 1])
    assert a == b
    for seed in (0, 1):
        tests = [p for s in a if s.seed == seed for p in s.test_perturbations]
        assert sorted(tests) == sorted(set(perts) - {"control"})
    assert a[0].test_perturbations != a[3].test_perturbations
    for s in a:
        assert not set(s.test_perturbations) & set(s.train_perturbations)


def test_combination_splits_categories(prepared):
    adata, schema = prepared
    splits = combination_splits(adata.obs["perturbation"].astype(str), schema, seeds=[0, 1, 2])
    for s in splits:
        for p, cat in s.categories.items():
            if "+" in p:
                seen = sum(t in s.train_perturbations for t in p.split("+"))
                assert cat == f"seen {seen}/2"
            else:
                assert cat == "unseen single"


def test_leave_one_double_out(prepared):
    adata, schema = prepared
    perts = adata.obs["perturbation"].astype(str)
    splits = leave_one_double_out(perts, schema)
    for s in splits:
        (d,) = s.test_perturbations
        assert set(d.split("+")) <= set(s.train_perturbations)


def test_leave_one_context_out_and_json(tmp_path):
    from aivc.data import PerturbationSchema

    schema = PerturbationSchema(perturbation_key="p", control_label="ctrl", context_key="ct")
    splits = leave_one_context_out(["a", "b", "c"], ["ctrl", "IFN"], schema)
    assert [s.test_contexts for s in splits] == [("a",), ("b",), ("c",)]
    save_splits(splits, tmp_path / "s.json")
    assert load_splits(tmp_path / "s.json") == splits


def test_prepare_says_x_is_rebuilt_from_the_counts_layer(synthetic, caplog):
    from dataclasses import replace

    adata, schema = synthetic
    expected, _ = prepare(adata, schema)
    shipped = adata.copy()
    shipped.layers["counts"] = shipped.X.copy()
    shipped.X = sp.csr_matrix(np.log1p(shipped.X.toarray()))  # log1p without library sizes
    caplog.set_level("INFO", logger="aivc.data")
    out, _ = prepare(shipped, replace(schema, counts_layer="counts"))
    # the numbers are those of the counts, as before
    assert_allclose(out.X.toarray(), expected.X.toarray())
    diff = float(np.abs(shipped.X.toarray() - expected.X.toarray()).max())  # < 1000 cells: all
    assert diff > 1
    said = [r for r in caplog.records if r.name == "aivc.data._preprocess"]
    assert len(said) == 1 and said[0].levelname == "INFO"
    assert "X is rebuilt from layers['counts']" in said[0].getMessage()
    assert f"differs from it by up to {diff:.3g}" in said[0].getMessage()
    record = out.uns["aivc"]["preprocessing"]
    assert record["x_rebuilt_from"] == "layers['counts']"
    assert record["shipped_x_cells_compared"] == adata.n_obs
    assert_allclose(record["shipped_x_max_abs_diff"], diff, rtol=1e-6)
    # counts in X: nothing is replaced, nothing said
    caplog.clear()
    plain, _ = prepare(adata, schema)
    assert "x_rebuilt_from" not in plain.uns["aivc"]["preprocessing"]
    assert not [r for r in caplog.records if r.name == "aivc.data._preprocess"]
