"""Bad input gets a clear, specific error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose

from aivc.data import (
    DataValidationError,
    PerturbationSchema,
    check_gene_panel,
    read_h5ad,
    validate,
)


def test_valid_data_passes(synthetic):
    adata, schema = synthetic
    validate(adata, schema)


def test_missing_perturbation_column(synthetic):
    adata, _ = synthetic
    schema = PerturbationSchema(perturbation_key="guide_target", control_label="control")
    with pytest.raises(
        DataValidationError,
        match=r"Unknown obs column 'guide_target' \(the schema's perturbation column\)",
    ):
        validate(adata, schema)


def test_missing_optional_column_is_named(synthetic):
    adata, _ = synthetic
    schema = PerturbationSchema(
        perturbation_key="perturbation", control_label="control", dose_key="dose"
    )
    with pytest.raises(
        DataValidationError, match=r"Unknown obs column 'dose' \(the schema's dose column\)"
    ):
        validate(adata, schema)


def test_no_control_cells(synthetic):
    adata, schema = synthetic
    adata = adata[adata.obs["perturbation"] != "control"].copy()
    with pytest.raises(
        DataValidationError, match=r"No control cells: no cell has the label 'control'"
    ):
        validate(adata, schema)


def test_control_label_misspelled_suggests_match(synthetic):
    adata, _ = synthetic
    schema = PerturbationSchema(perturbation_key="perturbation", control_label="contrl")
    with pytest.raises(DataValidationError, match=r"Did you mean 'control'\?"):
        validate(adata, schema)


def test_negative_counts(synthetic):
    adata, schema = synthetic
    x = adata.X.toarray()
    x[0, 0] = -3
    adata.X = sp.csr_matrix(x)
    with pytest.raises(DataValidationError, match=r"must hold raw counts .* 1 values are negative"):
        validate(adata, schema)


def test_non_integer_counts(synthetic):
    adata, schema = synthetic
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    with pytest.raises(
        DataValidationError, match=r"values are not integers .* looks normalised or log-transformed"
    ):
        validate(adata, schema)


def test_counts_layer_missing(synthetic):
    adata, _ = synthetic
    schema = PerturbationSchema(
        perturbation_key="perturbation", control_label="control", counts_layer="counts"
    )
    with pytest.raises(
        DataValidationError,
        match=r"raw counts are in layers\['counts'\], but the AnnData has layers \[\]",
    ):
        validate(adata, schema)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf(synthetic, bad):
    adata, schema = synthetic
    x = adata.X.toarray()
    x[1, 2] = bad
    adata.X = sp.csr_matrix(x)
    with pytest.raises(
        DataValidationError, match=r"adata.X contains \d+ NaN and \d+ infinite values"
    ):
        validate(adata, schema)


def test_duplicate_gene_names(synthetic):
    adata, schema = synthetic
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names
    with pytest.raises(
        DataValidationError,
        match=r"Duplicate gene \(var\) names: \['GENE000'\].*var_names_make_unique",
    ):
        validate(adata, schema)


def test_duplicate_cell_names(synthetic):
    adata, schema = synthetic
    names = list(adata.obs_names)
    names[1] = names[0]
    adata.obs_names = names
    with pytest.raises(
        DataValidationError,
        match=r"Duplicate cell \(obs\) names: \['cell0'\].*obs_names_make_unique",
    ):
        validate(adata, schema)


def test_empty_perturbation_group(synthetic):
    adata, schema = synthetic
    adata.obs["perturbation"] = adata.obs["perturbation"].cat.add_categories(["GENE999"])
    with pytest.raises(
        DataValidationError,
        match=r"Perturbation groups \['GENE999'\] .* have no cells.*remove_unused_categories",
    ):
        validate(adata, schema)


def test_blank_perturbation_label(synthetic):
    adata, schema = synthetic
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    labels[3] = "  "
    adata.obs["perturbation"] = labels
    with pytest.raises(DataValidationError, match=r"1 cells have an empty perturbation label"):
        validate(adata, schema)


def test_missing_perturbation_label(synthetic):
    adata, schema = synthetic
    labels = adata.obs["perturbation"].astype(object).to_numpy()
    labels[3] = None
    adata.obs["perturbation"] = pd.Series(labels, index=adata.obs_names)
    with pytest.raises(
        DataValidationError, match=r"1 cells have no value in obs\['perturbation'\]"
    ):
        validate(adata, schema)


def test_combination_with_unknown_gene(synthetic):
    adata, schema = synthetic
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    labels[labels == labels[-1]] = "GENE001+NOTAGENE"
    adata.obs["perturbation"] = pd.Categorical(labels)
    known = set(adata.var_names)
    with pytest.raises(
        DataValidationError,
        match=r"Unknown gene 'NOTAGENE' in the combination 'GENE001\+NOTAGENE'",
    ):
        validate(adata, schema, known_genes=known)


def test_combination_with_empty_target(synthetic):
    adata, schema = synthetic
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    labels[labels == labels[-1]] = "GENE001+"
    adata.obs["perturbation"] = pd.Categorical(labels)
    with pytest.raises(DataValidationError, match=r"has an empty target"):
        validate(adata, schema)


def test_unknown_gene_suggests_close_symbol():
    from aivc.data import check_perturbation_labels

    schema = PerturbationSchema(perturbation_key="p", control_label="ctrl")
    with pytest.raises(DataValidationError, match=r"Unknown gene 'STAT11'.* Did you mean 'STAT1'"):
        check_perturbation_labels(["STAT11"], schema, known_genes={"STAT1", "STAT2", "MYC"})


def test_gene_panel_mismatch():
    with pytest.raises(
        DataValidationError,
        match=r"The gene panel does not match the trained model: 2 of its 3 genes are missing",
    ):
        check_gene_panel(["A", "X", "Y"], ["A", "B", "C"])
    idx = check_gene_panel(["C", "B", "A", "Z"], ["A", "B", "C"])
    assert list(idx) == [2, 1, 0]


def test_gene_panel_mismatch_at_prediction(prepared):
    from aivc.instruments import TrainMeanModel

    adata, schema = prepared
    model = TrainMeanModel().fit(adata, schema)
    ctrl = adata[adata.obs["perturbation"] == "control", :30].copy()
    with pytest.raises(DataValidationError, match=r"gene panel does not match the trained model"):
        model.predict_delta(["GENE001"], control=ctrl)


def test_not_h5ad(tmp_path):
    path = tmp_path / "table.h5ad"
    path.write_text("gene,count\nA,1\n")
    with pytest.raises(
        DataValidationError,
        match=r"is not a valid h5ad file: it does not start with the HDF5 signature",
    ):
        read_h5ad(path)


def test_truncated_h5ad(tmp_path, synthetic):
    adata, _ = synthetic
    path = tmp_path / "full.h5ad"
    adata.write_h5ad(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DataValidationError, match=r"could not be read as h5ad; the file is truncated or corrupted"
    ):
        read_h5ad(cut)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No such file"):
        read_h5ad(tmp_path / "nope.h5ad")


def test_dose_must_be_numeric(synthetic):
    adata, _ = synthetic
    adata.obs["dose"] = ["high"] * adata.n_obs
    schema = PerturbationSchema(
        perturbation_key="perturbation", control_label="control", dose_key="dose"
    )
    with pytest.raises(
        DataValidationError,
        match=r"obs\['dose'\] \(the schema's dose column\) must be finite numbers",
    ):
        validate(adata, schema)


def test_validation_does_not_modify_input(synthetic):
    adata, schema = synthetic
    before = adata.X.copy()
    validate(adata, schema)
    assert (adata.X != before).nnz == 0


def test_counts_with_float_noise_are_accepted_and_rounded(synthetic, caplog):
    from aivc.data import prepare

    adata, schema = synthetic
    clean, _ = prepare(adata, schema)
    noisy = adata.copy()
    x = noisy.X.toarray().astype(np.float64)
    rng = np.random.default_rng(0)
    nz = x > 0
    # counts that went through float maths (float32 steps are 2e-6 from 16 to 32)
    x[nz] += rng.choice([-1, 1], nz.sum()) * rng.uniform(1e-6, 5e-6, nz.sum())
    noisy.X = sp.csr_matrix(x)
    validate(noisy, schema)
    caplog.set_level("INFO", logger="aivc.data")
    out, _ = prepare(noisy, schema)
    assert_allclose(out.layers["counts"].toarray(), clean.layers["counts"].toarray(), atol=0)
    assert_allclose(out.X.toarray(), clean.X.toarray(), atol=0)
    said = [r.getMessage() for r in caplog.records if r.name == "aivc.data._validate"]
    assert len(said) == 1
    assert f"adata.X holds counts with float noise: {int(nz.sum())} values" in said[0]
    assert "rounded" in said[0]
    assert np.abs(noisy.X.data - np.round(noisy.X.data)).max() > 0  # the input is not modified


def test_values_far_from_integers_are_still_refused(synthetic):
    adata, schema = synthetic
    x = adata.X.toarray().astype(np.float64)
    x[x > 0] += 1e-3  # beyond float noise
    adata.X = sp.csr_matrix(x)
    with pytest.raises(DataValidationError, match=r"values are not integers .* log-transformed"):
        validate(adata, schema)
