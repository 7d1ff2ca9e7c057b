"""The chemical peers (biolord, CellFlow) through their file protocol, with a stub peer.

No peer package is installed here: a "ready" environment is faked whose
python is the interpreter running the tests, and the shipped script is run
with a stub model in place of the peer's. The stub gives each queried
compound the mean training profile of the compounds with exactly its
structure features at the nearest dose (vehicle wells plus that change),
and the training mean for a structure it never saw, so the adapter's
neutral keys, the features file, the script's checks and its outputs are
exercised end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

pytest.importorskip("rdkit")

from tests._profiles import SCHEMA, STRUCTURES, plate

from aivc._settings import settings
from aivc.data import DataValidationError, response_table
from aivc.evaluate import _peer_envs as pe
from aivc.evaluate._chemical_peers import CHEMICAL_PEERS, BiolordChemical, CellFlowChemical
from aivc.evaluate.tasks.chemical import run_chemical

SHIPPED = Path(pe._script_path("chemical_peer")).parent

STUB = f"""
import sys
sys.path.insert(0, {str(SHIPPED)!r})
import numpy as np
import chemical_peer as cp


def stub(train, features, query, *, control_label, steps, seed):
    x = cp._dense(train.X)
    names = train.obs["compound"].astype(str).to_numpy()
    doses = train.obs["dose"].to_numpy(float)
    vehicle = x[names == control_label]
    treated = names != control_label
    blocks = []
    for idx, (c, d) in zip(
        cp._sources(len(vehicle), query, seed), zip(query["compound"], query["dose"]), strict=True
    ):
        same = treated & np.array(
            [np.array_equal(features.loc[n].to_numpy(), features.loc[c].to_numpy()) if n != control_label else False for n in names]
        )
        if same.any():
            rows = np.flatnonzero(same)
            best = rows[np.abs(np.log10(doses[rows]) - np.log10(d)) == np.abs(np.log10(doses[rows]) - np.log10(d)).min()]
            change = x[best].mean(0)
        else:
            change = x[treated].mean(0)
        blocks.append(vehicle[idx] + change)
    return np.concatenate(blocks), {{"train_seconds": 0.0, "steps": steps, "config": {{"stub": True}}}}


for name in ("biolord", "cellflow"):
    cp.PEERS[name] = (stub, "numpy")
cp.main()
"""


@pytest.fixture
def stub_peers(tmp_path, monkeypatch) -> Path:
    """Ready environments for the two peers whose script is the stub."""
    monkeypatch.setattr(settings, "cache_dir", tmp_path / "cache")
    for name in ("biolord", "cellflow"):
        env = tmp_path / "cache" / "peers" / name
        (env / "bin").mkdir(parents=True)
        python = env / "bin" / "python"
        python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        python.chmod(0o755)
        (env / pe.READY_FILE).write_text(json.dumps({"format": 1, "versions": {}}))
    stub = tmp_path / "stub_peer.py"
    stub.write_text(STUB)
    shipped = pe._script_path
    monkeypatch.setattr(pe, "_script_path", lambda s: stub if s == "chemical_peer" else shipped(s))
    return stub


@pytest.fixture(scope="module")
def table():
    return response_table(plate(seed=1), SCHEMA)


def test_a_stub_peer_predicts_measured_and_new_compounds_through_the_protocol(
    stub_peers, table
) -> None:
    train = table.subset(table.compounds != "caffeine")
    model = BiolordChemical(n_cells=5).fit(train)
    # a measured compound by name and by its SMILES is one input: the stub finds its own profile
    aspirin = STRUCTURES["aspirin"][0]
    by_name = model.predict_delta(["aspirin"], [1.1]).to_numpy()
    by_smiles = model.predict_delta([aspirin], [1.1]).to_numpy()
    measured = train.delta[(train.compounds == "aspirin") & np.isclose(train.doses, 1.1)][0]
    assert_allclose(by_name[0], by_smiles[0])
    assert np.corrcoef(by_name[0], measured)[0, 1] > 0.9
    # a compound measured by name only is encoded by identity: it is still found
    unnamed = model.predict_delta(["unnamed"], [3.3]).to_numpy()
    assert (
        np.corrcoef(
            unnamed[0],
            train.delta[(train.compounds == "unnamed") & np.isclose(train.doses, 3.3)][0],
        )[0, 1]
        > 0.9
    )
    # a new structure: the stub's fallback, the training mean (plus vehicle noise)
    new = model.predict_delta([STRUCTURES["caffeine"][0]], [1.1]).to_numpy()
    assert np.corrcoef(new[0], train.delta.mean(0))[0, 1] > 0.9
    assert model.peer_info_["peer"] == "biolord"
    assert model.peer_info_["config"] == {"stub": True}


def test_a_peer_is_refused_without_vehicle_wells_and_is_not_saved(stub_peers, table, tmp_path):
    from dataclasses import replace

    with pytest.raises(DataValidationError, match="vehicle wells"):
        BiolordChemical().fit(replace(table, vehicle=None))
    model = BiolordChemical().fit(table)
    with pytest.raises(NotImplementedError, match="not saved"):
        model.save(tmp_path / "m")


def test_the_chemical_benchmark_runs_the_peers_on_the_same_splits(stub_peers, tmp_path) -> None:
    path = tmp_path / "plate.h5ad"
    plate(seed=2).write_h5ad(path)
    result = run_chemical(
        tmp_path / "out",
        dataset=str(path),
        split="unseen-dose",
        models=["vehicle", "cellflow"],
        seeds=[0],
        smiles_key="smiles",
        moa_key="moa",
    )
    assert set(result["models"]) == {"vehicle", "cellflow"}
    assert result["peers"]["cellflow"]["config"] == {"stub": True}
    # the stub's prediction at a held-out dose is the nearest measured dose: it carries the signal
    scores = pd.read_csv(tmp_path / "out" / "per_condition.csv")
    mean = scores.groupby("model")["pearson_delta"].mean()
    assert mean["cellflow"] > 0.3
    assert mean["vehicle"] == 0.0
    assert "cellflow" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(ValueError, match="peers"):
        run_chemical(tmp_path / "x", dataset=str(path), models=["gears"], seeds=[0])


def test_the_peer_script_checks_its_inputs(tmp_path, table) -> None:
    import anndata as ad

    script = pe._script_path("chemical_peer")
    train = ad.AnnData(
        X=table.delta.astype(np.float32),
        obs=pd.DataFrame(
            {"compound": [f"s{i}" for i in range(len(table.delta))], "dose": table.doses},
            index=[f"p{i}" for i in range(len(table.delta))],
        ),
    )
    train.write_h5ad(tmp_path / "train.h5ad")
    pd.DataFrame({"f0": [1.0]}, index=["s0"]).to_csv(tmp_path / "features.csv")
    pd.DataFrame({"compound": ["s0"], "dose": [1.0], "n_cells": [3]}).to_csv(
        tmp_path / "query.csv", index=False
    )
    import subprocess

    args = [
        sys.executable, str(script), "--peer", "biolord",
        "--train", str(tmp_path / "train.h5ad"), "--features", str(tmp_path / "features.csv"),
        "--query", str(tmp_path / "query.csv"), "--control-label", "vehicle", "--out", str(tmp_path / "o"),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "no vehicle" in proc.stderr


def test_the_chemical_peers_are_named_as_the_benchmark_names_them() -> None:
    assert sorted(CHEMICAL_PEERS) == ["biolord", "cellflow"]


def test_bad_peer_settings_are_refused_before_any_run(table) -> None:
    with pytest.raises(ValueError, match="n_cells must be at least 2"):
        BiolordChemical(n_cells=1).fit(table)
    with pytest.raises(ValueError, match="steps must be a positive"):
        CellFlowChemical(steps=0).fit(table)
