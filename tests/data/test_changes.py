"""The observed change of a condition (one definition, three control references) and log-normalisation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose

from aivc.data import (
    DataValidationError,
    PerturbationSchema,
    log_normalize,
    observed_changes,
    prepare,
    pseudobulk,
)
from aivc.data._synthetic import synthetic_perturbation_data

SCHEMA = PerturbationSchema(
    perturbation_key="perturbation", control_label="control", batch_key="batch"
)


def _rounds(n_ctrl: tuple[int, int] = (200, 50), offset: float = 0.8, seed: int = 3) -> ad.AnnData:
    """Log-scale data in two batches (rounds); batch b1 adds ``offset`` to every gene.

    GA is measured only in b1, GB in both batches (30 cells in b0, 10 in b1).
    """
    rng = np.random.default_rng(seed)
    effect = {"control": 0.0, "GA": 1.0, "GB": -0.5}
    plan = [
        ("control", "b0", n_ctrl[0]),
        ("control", "b1", n_ctrl[1]),
        ("GA", "b1", 40),
        ("GB", "b0", 30),
        ("GB", "b1", 10),
    ]
    rows, obs = [], []
    for pert, batch, n in plan:
        level = 2.0 + effect[pert] + (offset if batch == "b1" else 0.0)
        rows.append(level + 0.05 * rng.standard_normal((n, 4)))
        obs += [(pert, batch)] * n
    frame = pd.DataFrame(obs, columns=["perturbation", "batch"], dtype="category")
    frame.index = [f"c{i}" for i in range(len(frame))]
    return ad.AnnData(
        X=np.vstack(rows), obs=frame, var=pd.DataFrame(index=["GA", "GB", "GC", "GD"])
    )


def test_context_is_the_mean_minus_the_pooled_controls_of_the_context():
    raw, schema = synthetic_perturbation_data(
        n_genes=40, n_singles=5, n_doubles=1, n_contexts=2, cells_per_condition=15, seed=1
    )
    adata, schema = prepare(raw, schema)
    delta, info = observed_changes(adata, schema)
    means, all_info = pseudobulk(adata, schema)
    ctrl = all_info[all_info["perturbation"] == "control"]
    assert list(delta.index) == list(all_info.index[all_info["perturbation"] != "control"])
    assert list(delta.columns) == list(adata.var_names)
    for cond, row in info.iterrows():
        control_row = ctrl.index[ctrl["context"] == row["context"]][0]
        expected = means.loc[cond].to_numpy() - means.loc[control_row].to_numpy()
        np.testing.assert_array_equal(delta.loc[cond].to_numpy(), expected)
    assert {"perturbation", "context", "dose", "n_cells", "n_controls", "reference"} <= set(info)
    assert (info["reference"] == "context").all()
    assert (
        info["n_controls"] == ctrl.set_index("context")["n_cells"].loc[info["context"]].to_numpy()
    ).all()


def test_batch_controls_remove_the_batch_offset_and_context_controls_do_not():
    adata = _rounds()
    by_batch, info = observed_changes(adata, SCHEMA, control="batch")
    assert (info["reference"] == "batch").all()
    assert_allclose(by_batch.loc["GA"].to_numpy(), 1.0, atol=0.03)
    assert_allclose(by_batch.loc["GB"].to_numpy(), -0.5, atol=0.03)
    pooled, _ = observed_changes(adata, SCHEMA, control="context")
    ctrl_mean = 2.0 + 0.8 * 50 / 250
    assert_allclose(pooled.loc["GA"].to_numpy(), 3.8 - ctrl_mean, atol=0.03)


def test_auto_matches_only_where_the_pooled_controls_are_biased():
    biased, info = observed_changes(_rounds(offset=0.8), SCHEMA, control="auto")
    assert (info["reference"] == "batch").all()
    assert_allclose(biased.loc["GA"].to_numpy(), 1.0, atol=0.03)
    # no batch offset: the pooled controls are unbiased and less noisy
    _, info = observed_changes(_rounds(offset=0.0), SCHEMA, control="auto")
    assert (info["reference"] == "context").all()
    # without a batch column "auto" is "context"
    plain = PerturbationSchema(perturbation_key="perturbation", control_label="control")
    a, _ = observed_changes(_rounds(), plain, control="auto")
    c, _ = observed_changes(_rounds(), plain, control="context")
    pd.testing.assert_frame_equal(a, c)


def test_auto_falls_back_on_pooled_controls_for_a_batch_with_too_few():
    from aivc.data._changes import MIN_BATCH_CONTROLS

    adata = _rounds(n_ctrl=(200, MIN_BATCH_CONTROLS - 1))
    auto, _ = observed_changes(adata, SCHEMA, control="auto")
    batch, _ = observed_changes(adata, SCHEMA, control="batch")
    pooled = (200 * 2.0 + (MIN_BATCH_CONTROLS - 1) * 2.8) / (200 + MIN_BATCH_CONTROLS - 1)
    # "auto" needs MIN_BATCH_CONTROLS controls in a batch; "batch" uses any
    assert_allclose(auto.loc["GA"].to_numpy(), 3.8 - pooled, atol=0.03)
    assert_allclose(batch.loc["GA"].to_numpy(), 1.0, atol=0.03)


def test_standard_errors_of_a_difference_of_means():
    adata = _rounds()
    x = np.asarray(adata.X)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    batches = adata.obs["batch"].astype(str).to_numpy()
    delta, _, se = observed_changes(adata, SCHEMA, control="context", standard_errors=True)
    ga, ctrl = labels == "GA", labels == "control"
    expected = np.sqrt(x[ga].var(axis=0) / ga.sum() + x[ctrl].var(axis=0) / ctrl.sum())
    np.testing.assert_array_equal(se.loc["GA"].to_numpy(), expected)
    assert se.shape == delta.shape and (se.to_numpy() > 0).all()
    # GA sits in b1 only: its batch-matched reference is b1's controls
    _, _, se_b = observed_changes(adata, SCHEMA, control="batch", standard_errors=True)
    ctrl_b1 = ctrl & (batches == "b1")
    expected = np.sqrt(x[ga].var(axis=0) / ga.sum() + x[ctrl_b1].var(axis=0) / ctrl_b1.sum())
    np.testing.assert_array_equal(se_b.loc["GA"].to_numpy(), expected)


def test_sparse_and_dense_data_give_the_same_changes():
    adata = _rounds()
    sparse = adata.copy()
    sparse.X = sp.csr_matrix(adata.X)
    for control in ("context", "batch", "auto"):
        d1, _, s1 = observed_changes(adata, SCHEMA, control=control, standard_errors=True)
        d2, _, s2 = observed_changes(sparse, SCHEMA, control=control, standard_errors=True)
        assert_allclose(d1.to_numpy(), d2.to_numpy(), rtol=0, atol=1e-12)
        assert_allclose(s1.to_numpy(), s2.to_numpy(), rtol=0, atol=1e-12)


def test_a_context_without_controls_raises_or_is_dropped():
    raw, schema = synthetic_perturbation_data(
        n_genes=30, n_singles=3, n_doubles=0, n_contexts=2, cells_per_condition=10, seed=2
    )
    adata, schema = prepare(raw, schema)
    drop = (adata.obs["perturbation"].astype(str) == "control") & (
        adata.obs["cell_type"].astype(str) == "type1"
    )
    adata = adata[~drop.to_numpy()].copy()
    with pytest.raises(
        DataValidationError, match=r"Context 'type1' has perturbed cells but no control"
    ):
        observed_changes(adata, schema)
    delta, info = observed_changes(adata, schema, missing_controls="drop")
    assert set(info["context"]) == {"type0"}
    assert len(delta) == 3


def test_bad_arguments():
    adata = _rounds()
    with pytest.raises(ValueError, match=r"control must be one of \['context', 'batch', 'auto'\]"):
        observed_changes(adata, SCHEMA, control="pooled")  # type: ignore[call-overload]
    plain = PerturbationSchema(perturbation_key="perturbation", control_label="control")
    with pytest.raises(DataValidationError, match=r"control='batch' needs the batch of each cell"):
        observed_changes(adata, plain, control="batch")


def test_the_model_summary_uses_the_auto_changes():
    from aivc.instruments import PerturbationSummary

    adata = _rounds()
    summary = PerturbationSummary.from_adata(adata, SCHEMA)
    delta, _ = observed_changes(adata, SCHEMA, control="auto")
    np.testing.assert_array_equal(summary.delta, delta.to_numpy())


# ----------------------------------------------------------------------------- log-normalisation
def _counts(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    c = rng.poisson(rng.gamma(0.5, 4.0, (50, 30))).astype(np.float32)
    c[3] = 0  # a cell without counts stays zero
    return sp.csr_matrix(c)


def test_log_normalize_defaults_are_float32_csr_per_10k():
    counts = _counts()
    x, used = log_normalize(counts)
    assert used == 1e4
    assert sp.issparse(x) and x.dtype == np.float32
    c = counts.toarray().astype(np.float64)
    lib = c.sum(axis=1, keepdims=True)
    expected = np.log1p(c * np.divide(1e4, lib, out=np.zeros_like(lib), where=lib > 0))
    assert_allclose(x.toarray(), expected, rtol=1e-6)
    assert (x.toarray()[3] == 0).all()


@pytest.mark.parametrize("as_dense_input", [False, True])
def test_log_normalize_fraction_arithmetic_is_exact(as_dense_input):
    counts = _counts(1)
    c = counts.toarray().astype(np.float64)
    lib = c.sum(axis=1, keepdims=True)
    expected = np.log1p(c / np.maximum(lib, 1.0) * 1e4)
    x, _ = log_normalize(
        c if as_dense_input else counts, dtype=np.float64, dense=True, scaling="fraction"
    )
    assert isinstance(x, np.ndarray) and x.dtype == np.float64
    np.testing.assert_array_equal(x, expected)
    factor, _ = log_normalize(counts, dtype=np.float64, dense=True)
    assert_allclose(factor, expected, rtol=1e-14, atol=0)


def test_log_normalize_median_target_and_bad_scaling():
    counts = _counts(2)
    lib = np.asarray(counts.sum(axis=1)).ravel()
    _, used = log_normalize(counts, target_sum=None)
    assert used == float(np.median(lib[lib > 0]))
    with pytest.raises(ValueError, match=r"scaling must be 'factor' or 'fraction'"):
        log_normalize(counts, scaling="ratio")  # type: ignore[call-overload]
