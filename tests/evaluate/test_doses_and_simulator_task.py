"""Doses and non-gene targets in the model interface, and the simulator benchmark task."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from aivc.data import dose_label, prepare, pseudobulk, treatment_labels
from aivc.instruments import AdditiveModel, LinearModel, NearestNeighbourModel, PerturbationModel


@pytest.fixture(scope="module")
def drug_data():
    """A small simulation with drugs at four doses (counts in X, schema with a dose column)."""
    from aivc.sim import VirtualCellSimulator, default_design

    sim = VirtualCellSimulator(n_genes=120, n_cell_types=2, n_drugs=4, seed=1).build()
    design = default_design(
        sim,
        n_cells=6000,
        max_singles=20,
        double_fraction=0.3,
        n_design_drugs=3,
        min_cells_per_condition=20,
    )
    raw, _ = sim.simulate(design, n_batches=1, seed=1)
    from aivc.data import schema_of

    adata, schema = prepare(raw, schema_of(raw))
    features = pd.DataFrame(sim.drugs_.features, index=[str(n) for n in sim.drugs_.names])
    return adata, schema, features


def test_treatment_labels_carry_doses(drug_data):
    adata, schema, _ = drug_data
    labels = treatment_labels(adata, schema)
    drug_cells = adata.obs[schema.dose_key].to_numpy() > 0
    assert all(" @ " in t for t in labels[drug_cells])
    assert not any(" @ " in t for t in labels[~drug_cells])
    _, info = pseudobulk(adata, schema)
    assert (info["dose"] > 0).sum() == len(
        {
            (p, d, c)
            for p, d, c in zip(
                adata.obs["perturbation"][drug_cells],
                adata.obs["dose"][drug_cells],
                adata.obs["cell_type"][drug_cells],
                strict=True,
            )
        }
    )
    assert dose_label("D001", 0.0) == "D001" and dose_label("D001", 10) == "D001 @ 10"


def test_additive_uses_nearest_measured_dose(drug_data):
    adata, schema, _ = drug_data
    drug = sorted(set(adata.obs["perturbation"][adata.obs["dose"] > 0].astype(str)))[0]
    doses = sorted(set(adata.obs["dose"][adata.obs["perturbation"] == drug]))
    held = doses[1]
    keep = ~((adata.obs["perturbation"] == drug) & (adata.obs["dose"] == held)).to_numpy()
    model = AdditiveModel().fit(adata[keep].copy(), schema)
    pred = model.predict_delta([drug, drug], contexts="type_A", doses=[held, doses[0]])
    assert np.isfinite(pred).all()
    # the unmeasured dose is predicted from a measured neighbour in log-dose
    neighbours = [
        model.predict_delta([drug], contexts="type_A", doses=[d])[0] for d in (doses[0], doses[2])
    ]
    assert any(np.allclose(pred[0], n) for n in neighbours)


def test_models_with_drug_features_round_trip(drug_data, tmp_path):
    adata, schema, features = drug_data
    drug = sorted(set(adata.obs["perturbation"][adata.obs["dose"] > 0].astype(str)))[0]
    train = adata[(adata.obs["perturbation"] != drug).to_numpy()].copy()
    for cls, params in (
        (LinearModel, {}),
        (NearestNeighbourModel, {"perturbation_embedding": "data"}),
    ):
        model = cls(**params).fit(train, schema, perturbation_features=features)
        pred = model.predict_delta([drug, drug], contexts="type_B", doses=[0.1, 10.0])
        assert np.isfinite(pred).all()
        loaded = PerturbationModel.load(model.save(tmp_path / cls.__name__))
        assert_allclose(
            loaded.predict_delta([drug, drug], contexts="type_B", doses=[0.1, 10.0]), pred
        )
    with pytest.raises(ValueError, match=r"Doses must be finite and non-negative"):
        model.predict_delta([drug], contexts="type_B", doses=[-1.0])


def test_simulator_splits_cover_gears_categories(drug_data):
    from aivc.evaluate.tasks.perturbation import _simulator_splits

    adata, schema, _ = drug_data
    splits = _simulator_splits(adata, schema, [0, 1])
    assert splits[0].test_perturbations != splits[1].test_perturbations
    cats = set(splits[0].categories.values())
    assert {"unseen single", "unseen drug", "unseen dose"} <= cats
    assert any(c.startswith("seen ") for c in cats)
    for label, cat in splits[0].categories.items():
        if cat == "unseen dose":
            assert " @ " in label and label.split(" @ ")[0] in splits[0].train_perturbations


@pytest.mark.slow
def test_simulator_benchmark_runs_small(tmp_path, monkeypatch):
    from aivc.evaluate.tasks import perturbation as _benchmark
    from aivc.evaluate.tasks.perturbation import run_benchmark

    monkeypatch.setitem(_benchmark.SIMULATOR_SETTINGS, "n_genes", 150)
    monkeypatch.setitem(_benchmark.SIMULATOR_SETTINGS, "n_cells", 8000)
    monkeypatch.setitem(_benchmark.SIMULATOR_SETTINGS, "max_singles", 30)
    result = run_benchmark(
        "simulator",
        out=tmp_path,
        models=["control", "train-mean", "additive", "linear"],
        seeds=[0, 1, 2],
    )
    assert set(result["models"]) == {"control", "train-mean", "additive", "linear"}
    cats = set(result["models"]["additive"]["by_category"])
    assert {"unseen single", "unseen drug", "unseen dose"} <= cats
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["task"] == "simulator" and on_disk["n_genes"] == 150


def test_training_view_for_context_and_dose_splits(drug_data):
    """Context splits keep the perturbation in other contexts; dose splits drop only the held-out dose."""
    from aivc.data.splits import Split
    from aivc.evaluate.tasks.perturbation import _observe, _test_conditions, _training_view

    adata, schema, _ = drug_data
    obs = _observe(adata, schema, seed=0)
    perts = tuple(sorted(set(adata.obs["perturbation"].astype(str)) - {"control"}))
    ctx_split = Split("ctx", "leave-one-context-out", 0, perts, perts, test_contexts=("type_B",))
    train = _training_view(obs, ctx_split)
    perturbed = train.obs["perturbation"].astype(str) != "control"
    assert set(train.obs["cell_type"][perturbed]) == {"type_A"}
    assert (train.obs["cell_type"][~perturbed] == "type_B").any()
    assert {obs.ctx_of[c] for c in _test_conditions(obs, ctx_split)} == {"type_B"}

    drug = sorted(set(adata.obs["perturbation"][adata.obs["dose"] > 0].astype(str)))[0]
    level = sorted(set(adata.obs["dose"][adata.obs["perturbation"] == drug]))[1]
    label = dose_label(drug, level)
    dose_split = Split("dose", "simulator-gears", 0, (label,), perts)
    train = _training_view(obs, dose_split)
    is_drug = (train.obs["perturbation"] == drug).to_numpy()
    assert is_drug.any() and level not in set(train.obs["dose"][is_drug])
    assert {obs.treatment_of[c] for c in _test_conditions(obs, dose_split)} == {label}


def test_a_drug_genetic_world_pairs_every_knockout_with_every_drug():
    from aivc.evaluate.tasks.perturbation import DRUG_GENETIC_DOSE, task_data

    data = task_data("combinations", "sim-drug-genetic-0", [0])
    labels = set(data.adata.obs[data.schema.perturbation_key].astype(str))
    pairs = sorted(p for p in labels if "+" in p)
    drugs = sorted({p.split("+")[1] for p in pairs})
    knockouts = sorted({p.split("+")[0] for p in pairs})
    assert len(drugs) == 3 and len(knockouts) == 8 and len(pairs) == 24
    assert set(drugs) | set(knockouts) <= labels  # both singles measured
    dose = data.adata.obs.groupby(data.schema.perturbation_key, observed=True)["dose"].first()
    assert (dose[pairs + drugs] == DRUG_GENETIC_DOSE).all() and (dose[knockouts] == 0).all()
    # each pair is held out once, with its two singles in training
    assert sorted(t for s in data.splits for t in s.test_perturbations) == pairs
    for split in data.splits:
        (pair,) = split.test_perturbations
        assert set(pair.split("+")) <= set(split.train_perturbations)
    with pytest.raises(ValueError, match="sim-drug-genetic-<seed>"):
        task_data("combinations", "sim-drug-genetic-x", [0])
