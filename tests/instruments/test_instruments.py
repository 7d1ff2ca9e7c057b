from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose

from _celleval import run_cell_eval
from aivc.data import DataValidationError, PerturbationSchema
from aivc.instruments import (
    AdditiveModel,
    ControlModel,
    KnowledgeLinearModel,
    LinearModel,
    NearestNeighbourModel,
    NotFittedError,
    PerturbationModel,
    PerturbationSummary,
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
    # the targets are in the panel: their data embedding carries their own knockdown
    assert np.mean((lin - obs) ** 2) < np.mean((tm - obs) ** 2)
    own = [list(means.columns).index(t) for t in held]
    for i, j in enumerate(own):
        assert abs(lin[i, j] - obs[i, j]) < abs(tm[i, j] - obs[i, j])


def test_linear_answers_measured_targets_outside_the_panel_with_their_change(prepared, caplog):
    """Targets outside the gene panel have no data embedding; measured ones must not all get the mean."""
    import logging

    from aivc.data import pseudobulk
    from aivc.instruments import ConformalModel

    adata, schema = prepared
    means, _ = pseudobulk(adata, schema)
    perts = sorted(p for p in means.index if p != "control" and "+" not in p)[:3]
    # drop the targets' own genes from the panel, as with knockouts of genes that are not highly variable
    panel = adata[:, ~adata.var_names.isin(perts)].copy()
    obs = (
        means.loc[perts, panel.var_names].to_numpy()
        - means.loc["control", panel.var_names].to_numpy()
    )
    for model in (LinearModel(), ConformalModel(base="linear")):
        pred = model.fit(panel, schema).predict_delta(perts)
        assert_allclose(pred, obs, atol=1e-6)
        assert not np.allclose(pred[0], pred[1])
    # an unmeasured target without an embedding gets the mean change, and the log says so
    held = panel[panel.obs["perturbation"] != perts[0]].copy()
    with caplog.at_level(logging.WARNING):
        LinearModel().fit(held, schema).predict_delta([perts[0]])
    assert perts[0] in caplog.text and "not measured in training" in caplog.text


def test_not_fitted_and_unknown_gene(prepared):
    adata, schema = prepared
    with pytest.raises(NotFittedError, match=r"not fitted yet; call fit"):
        TrainMeanModel().predict_delta(["GENE001"])
    model = TrainMeanModel().fit(adata, schema)
    with pytest.raises(
        DataValidationError, match=r"Unknown gene 'FOO' in the combination 'GENE001\+FOO'"
    ):
        model.predict_delta(["GENE001+FOO"])


def test_raw_counts_are_refused_with_the_way_to_log_normalise(synthetic, prepared):
    counts, schema = synthetic
    with pytest.raises(DataValidationError, match=r"looks like raw counts.*aivc\.data\.prepare"):
        TrainMeanModel().fit(counts, schema)
    model = TrainMeanModel().fit(*prepared)  # the same cells log-normalised are accepted
    with pytest.raises(DataValidationError, match=r"control AnnData's X looks like raw counts"):
        model.predict_delta(
            ["GENE001"], control=counts[counts.obs[schema.perturbation_key] == schema.control_label]
        )


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


def _batched_data(offset: float, n_ctrl: tuple[int, int]):
    """Log-scale data with two batches; batch b1 adds ``offset`` to every gene of every cell."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(3)
    effect = {"control": 0.0, "GA": 1.0, "GB": -0.5}
    # GA only in b1, GB in both batches
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
        rows.append(level + 0.01 * rng.standard_normal((n, 4)))
        obs += [(pert, batch)] * n
    frame = pd.DataFrame(obs, columns=["perturbation", "batch"], dtype="category")
    frame.index = [f"c{i}" for i in range(len(frame))]
    adata = ad.AnnData(
        X=np.vstack(rows).astype(np.float32),
        obs=frame,
        var=pd.DataFrame(index=["GA", "GB", "GC", "GD"]),
    )
    schema = PerturbationSchema(
        perturbation_key="perturbation", control_label="control", batch_key="batch"
    )
    return adata, schema


def test_summary_compares_each_batch_with_its_own_controls():
    adata, schema = _batched_data(offset=0.8, n_ctrl=(200, 50))
    s = PerturbationSummary.from_adata(adata, schema)
    delta = dict(zip(s.perturbations, s.delta, strict=True))
    # the batch offset cancels: GA (only in b1) and GB (both batches) keep their own effects
    assert_allclose(delta["GA"], 1.0, atol=0.02)
    assert_allclose(delta["GB"], -0.5, atol=0.02)
    ctrl = s.control_mean[None]
    assert_allclose(s.mean - ctrl, s.delta)


def test_summary_uses_pooled_controls_for_a_batch_with_too_few():
    from aivc.data._changes import MIN_BATCH_CONTROLS

    adata, schema = _batched_data(offset=0.8, n_ctrl=(200, MIN_BATCH_CONTROLS - 1))
    s = PerturbationSummary.from_adata(adata, schema)
    delta = dict(zip(s.perturbations, s.delta, strict=True))
    pooled = (200 * 2.0 + (MIN_BATCH_CONTROLS - 1) * 2.8) / (200 + MIN_BATCH_CONTROLS - 1)
    # b1 cells fall back to the pooled controls; b0 cells of GB still use b0's
    assert_allclose(delta["GA"], 2.0 + 1.0 + 0.8 - pooled, atol=0.02)
    gb = (30 * -0.5 + 10 * (2.0 - 0.5 + 0.8 - pooled)) / 40
    assert_allclose(delta["GB"], gb, atol=0.02)
    # without a batch column in the schema, every cell is compared with the pooled controls
    plain = PerturbationSummary.from_adata(
        adata, PerturbationSchema(perturbation_key="perturbation", control_label="control")
    )
    assert_allclose(
        dict(zip(plain.perturbations, plain.delta, strict=True))["GB"],
        (30 * 1.5 + 10 * 2.3) / 40 - pooled,
        atol=0.02,
    )


def test_summary_keeps_pooled_controls_without_a_batch_offset():
    # no batch offset: the pooled controls are unbiased and less noisy, so they stay
    adata, schema = _batched_data(offset=0.0, n_ctrl=(200, 50))
    s = PerturbationSummary.from_adata(adata, schema)
    plain = PerturbationSummary.from_adata(
        adata, PerturbationSchema(perturbation_key="perturbation", control_label="control")
    )
    assert_allclose(s.delta, plain.delta)
