"""The chemical and segmentation benchmarks: retrieval metric, splits, and the real runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("copairs")

from aivc.evaluate.tasks import run_task
from aivc.evaluate.tasks.chemical import mechanism_ap


def _ap(ranked_positive: list[bool]) -> float:
    hits, total = 0, 0.0
    for i, pos in enumerate(ranked_positive, start=1):
        if pos:
            hits += 1
            total += hits / i
    return total / max(hits, 1)


def test_mechanism_ap_matches_a_hand_computed_average_precision():
    queries = np.array([[1.0, 0.0, 0.2], [0.0, 0.2, 1.0], [0.0, 0.0, 0.0]])
    refs = np.array([[0.9, 0.1, 0.0], [0.6, 0.8, 0.0], [0.5, 1.0, 0.0], [0.1, 0.1, 1.0]])
    ref_moa = ["a", "b", "a", "c"]
    got = mechanism_ap(
        queries, ["Q1", "Q2", "Q3"], ["a", "b|c", "a"], refs, ["R1", "R2", "R3", "R4"], ref_moa
    )
    sim = (queries[:2] / np.linalg.norm(queries[:2], axis=1, keepdims=True)) @ (
        refs / np.linalg.norm(refs, axis=1, keepdims=True)
    ).T
    order = np.argsort(-sim[0])
    assert got[0] == pytest.approx(_ap([ref_moa[j] == "a" for j in order]))
    # two mechanisms: one AP each, over the references that share neither or that one
    per_label = []
    for label in ("b", "c"):
        cand = [
            j for j in np.argsort(-sim[1]) if ref_moa[j] == label or ref_moa[j] not in ("b", "c")
        ]
        per_label.append(_ap([ref_moa[j] == label for j in cand]))
    assert got[1] == pytest.approx(np.mean(per_label))
    assert np.isnan(got[2])  # an all-zero profile has no direction


def test_chemical_benchmark_on_the_lincs_plate(data_dir, tmp_path):
    result = run_task("chemical", tmp_path, seeds=[0], split="unseen-dose")
    models = result["models"]
    assert set(models) >= {"vehicle", "dose-interpolation", "aivc-chem"}
    assert models["vehicle"]["pearson_delta"]["mean"] == 0.0
    assert models["dose-interpolation"]["pearson_delta_top20"]["mean"] > 0.5
    assert 0.7 < models["aivc-chem"]["coverage_90"]["mean"] < 1.0
    assert (
        json.loads((tmp_path / "results.json").read_text())["split"]["n_held_out_conditions"] == 56
    )
    assert (tmp_path / "per_condition.csv").is_file()


def test_chemical_benchmark_reads_a_declared_file(tmp_path):
    from _profiles import plate

    data = plate(n_features=12)
    data.obs = data.obs.rename(
        columns={"compound_name": "drug", "dose_um": "conc_nM", "smiles": "structure"}
    )
    data.obs["conc_nM"] *= 1000
    path = tmp_path / "screen.h5ad"
    data.write_h5ad(path)
    result = run_task(
        "chemical",
        tmp_path / "out",
        dataset=str(path),
        seeds=[0],
        split="unseen-compound",
        compound_key="drug",
        dose_key="conc_nM",
        dose_unit="nM",
        smiles_key="structure",
    )
    assert (
        result["split"]["n_held_out_conditions"] == 7 * 6
    )  # every compound with a structure, all doses
    assert result["schema"]["dose_unit"] == "nM"
    with pytest.raises(Exception, match="plate"):
        run_task(
            "chemical",
            tmp_path / "x",
            dataset=str(path),
            seeds=[0],
            compound_key="drug",
            plate_key="plate_id",
            dose_key="conc_nM",
            smiles_key="structure",
        )


def test_segmentation_benchmark(data_dir, tmp_path):
    result = run_task("segmentation", tmp_path)
    entry = result["models"]["classical"]
    assert 0.5 < entry["ap50"]["mean"] <= 1.0 and entry["n_true"] == 125
    assert "ap50" in (tmp_path / "results.md").read_text()
