from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

from _celleval import run_cell_eval
from aivc.data import DataValidationError
from aivc.instruments import (
    AdditiveModel,
    ControlModel,
    KnowledgeLinearModel,
    LinearModel,
    NearestNeighbourModel,
    NotFittedError,
    PerturbationModel,
    TrainMeanModel,
    check_instrument,
    list_instruments,
    register_instrument,
)


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (ControlModel, {}),
        (TrainMeanModel, {}),
        (AdditiveModel, {}),
        (LinearModel, {}),
        (LinearModel, {"ridge": 0.5, "n_components": 3}),
        (NearestNeighbourModel, {"perturbation_embedding": "data"}),
    ],
)
def test_conformance(cls, params):
    passed = check_instrument(cls, params=params)
    assert "save-load" in passed and "determinism" in passed


def test_conformance_knowledge_models(data_dir):
    assert "fit" in check_instrument(KnowledgeLinearModel)
    assert "fit" in check_instrument(NearestNeighbourModel)


def test_registry_lists_baselines_and_rejects_duplicates():
    names = {i.name for i in list_instruments()}
    assert {
        "control",
        "train-mean",
        "additive",
        "linear",
        "linear-knowledge",
        "nearest-neighbour",
    } <= names
    with pytest.raises(ValueError, match=r"already registered"):
        register_instrument("control", description="x")(ControlModel)


def test_additive_is_sum_of_singles(prepared):
    adata, schema = prepared
    model = AdditiveModel().fit(adata, schema)
    doubles = [p for p in adata.obs["perturbation"].astype(str).unique() if "+" in p]
    a, b = doubles[0].split("+")
    pred = model.predict_delta([doubles[0], a, b])
    assert_allclose(pred[0], pred[1] + pred[2])


def test_train_mean_and_control(prepared):
    adata, schema = prepared
    tm = TrainMeanModel().fit(adata, schema)
    pred = tm.predict_delta(["GENE001", "GENE002"])
    assert_allclose(pred[0], pred[1])
    assert_allclose(ControlModel().fit(adata, schema).predict_delta(["GENE001"]), 0.0)


def test_linear_recovers_in_panel_targets(prepared):
    """With data embeddings, the linear model predicts better than train-mean for held-out targets."""
    adata, schema = prepared
    from aivc.data import pseudobulk

    means, _ = pseudobulk(adata, schema)
    perts = sorted(p for p in means.index if p != "control" and "+" not in p)
    held = perts[:2]
    train = adata[~adata.obs["perturbation"].isin(held)].copy()
    obs = means.loc[held].to_numpy() - means.loc["control"].to_numpy()
    lin = LinearModel().fit(train, schema).predict_delta(held)
    tm = TrainMeanModel().fit(train, schema).predict_delta(held)
    assert np.isfinite(lin).all()
    assert lin.shape == tm.shape == obs.shape


def test_not_fitted_and_unknown_gene(prepared):
    adata, schema = prepared
    with pytest.raises(NotFittedError, match=r"not fitted yet; call fit"):
        TrainMeanModel().predict_delta(["GENE001"])
    model = TrainMeanModel().fit(adata, schema)
    with pytest.raises(DataValidationError, match=r"names unknown gene\(s\) \['FOO'\]"):
        model.predict_delta(["GENE001+FOO"])


def test_save_load_is_safe(prepared, tmp_path):
    adata, schema = prepared
    model = LinearModel().fit(adata, schema)
    path = model.save(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "weights.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert (
        config["class"] == "LinearModel" and config["state"]["schema"]["control_label"] == "control"
    )
    loaded = PerturbationModel.load(path)
    assert_allclose(loaded.predict_delta(["GENE001"]), model.predict_delta(["GENE001"]))
    with pytest.raises(FileExistsError, match=r"already exists"):
        model.save(path)
    with pytest.raises(DataValidationError, match=r"holds a LinearModel, not a AdditiveModel"):
        AdditiveModel.load(path)
    (path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataValidationError, match=r"Could not read weights .* corrupted"):
        PerturbationModel.load(path)


def test_predict_cells_for_cell_eval(prepared):
    adata, schema = prepared
    model = TrainMeanModel().fit(adata, schema)
    ctrl = adata[adata.obs["perturbation"] == "control"].copy()
    cells = model.predict(["GENE001", "GENE002"], control=ctrl, n_cells=11)
    counts = cells.obs["perturbation"].value_counts()
    assert counts["GENE001"] == 11 and counts["control"] == 11
    assert (cells.X.data >= 0).all()
    assert cells.uns["aivc"]["predicted_delta"].shape == (2, adata.n_vars)


def test_predictions_are_accepted_by_cell_eval_run(prepared, tmp_path):
    """A prediction written to h5ad is accepted as is by the `cell-eval run` command."""
    adata, schema = prepared
    model = AdditiveModel().fit(adata, schema)
    ctrl = adata[adata.obs["perturbation"] == "control"].copy()
    perts = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    model.predict(perts, control=ctrl, n_cells=20).write_h5ad(tmp_path / "pred.h5ad")
    real = adata.copy()
    real.layers = {}
    real.write_h5ad(tmp_path / "real.h5ad")
    run_cell_eval(tmp_path / "pred.h5ad", tmp_path / "real.h5ad", tmp_path / "ce")
