"""No saved object is ever unpickled: each kind is saved, then loaded with unpickling made to fail.

The kinds: every registered instrument (perturbation models, encoders, decoders; GEARS in
``tests/instruments/test_gears.py``, which needs the data folder and GEARS), model
directories, models a workspace serves, gene-embedding caches, simulations and their ground
truth, the experiment ledger, screen checkpoints and split files.
"""

from __future__ import annotations

import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from _no_pickle import no_unpickling
from aivc.data import prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.instruments import (
    Instrument,
    PerturbationModel,
    list_instruments,
    load_model_dir,
    make_instrument,
    save_model_dir,
)

#: Parameters of the perturbation models that need some.
PERTURBATION_PARAMS = {"conformal": {"base": "linear"}}
#: Perturbation models that read the gene-knowledge tables (skipped without the data folder).
NEEDS_KNOWLEDGE = frozenset({"linear-knowledge", "nearest-neighbour"})
#: Instruments checked elsewhere, and where.
ELSEWHERE = {
    "gears": "tests/instruments/test_gears.py::test_save_load_round_trip",
    # peers run in their own environments and are never saved by aivc (saving raises)
    **dict.fromkeys(
        ("state", "biolord", "cellflow"),
        "tests/evaluate/test_perturbation_peers.py::test_a_peer_refuses_what_it_cannot_do",
    ),
}


def test_the_guard_catches_a_pickle(tmp_path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    data = pickle.dumps(np.arange(3))
    loads = pickle.loads  # bound before the guard: only the audit hook sees it
    (tmp_path / "x.pkl").write_bytes(data)
    pd.DataFrame({"a": [1]}).to_pickle(tmp_path / "x.pd")
    with no_unpickling(), (tmp_path / "x.pkl").open("rb") as pkl:
        for load in (
            lambda: np.load(path, allow_pickle=True),
            lambda: pickle.loads(data),
            lambda: pickle.load(pkl),
            lambda: loads(data),
            lambda: pd.read_pickle(tmp_path / "x.pd"),
        ):
            with pytest.raises(AssertionError, match="unpickled"):
                load()
    assert_array_equal(loads(data), np.arange(3))  # and nothing is refused after it


def _perturbation_names() -> list[str]:
    return sorted(
        e.name
        for e in list_instruments()
        if e.kind == "manipulator" and e.name not in ELSEWHERE and not e.name.startswith("test-")
    )


def _chemical():
    pytest.importorskip("rdkit")
    from _profiles import SCHEMA, plate
    from aivc.instruments._chemical import ChemicalManipulator

    model = ChemicalManipulator().fit(plate(n_features=8), SCHEMA)
    return model, lambda m: m.predict_interval(
        ["aspirin", "CCOC(=O)c1ccccc1O"], [1.0, 3.0]
    ).delta.to_numpy()


def _temporal():
    pytest.importorskip("ot")
    from _timecourses import drifting
    from aivc.instruments._temporal import TemporalManipulator

    model = TemporalManipulator(n_components=5).fit(
        drifting(n=30), time_key="time", expression="log"
    )
    return model, lambda m: m.predict_cells(2.5)


def _effects():
    from aivc.instruments._temporal import EffectCourse

    rng = np.random.default_rng(0)
    early = rng.normal(0, 1, (8, 6))
    model = EffectCourse().fit(early, {12.0: 0.5 * early}, [f"g{j}" for j in range(6)])
    return model, lambda m: m.predict_interval(early[:2], 12.0)[2]


def _niche():
    from aivc.tissues import NicheModel

    rng = np.random.default_rng(0)
    tissue = ad.AnnData(X=rng.poisson(5.0, (60, 6)).astype(np.float32))
    tissue.var_names = [f"g{j}" for j in range(6)]
    tissue.obsm["spatial"] = rng.uniform(0, 10, (60, 2))
    model = NicheModel(n_components=3, n_latent=2, steps=3).fit(tissue)
    return model, lambda m: m.transform(tissue)


#: Chemical, temporal and tissue instruments: a fitted one and the answer compared after loading.
OTHER_FITS = {
    "aivc-chem": _chemical,
    "aivc-time": _temporal,
    "aivc-time-effect": _effects,
    "aivc-niche": _niche,
}


@pytest.mark.parametrize("name", sorted(OTHER_FITS))
def test_saved_chemical_temporal_and_tissue_instruments_load_without_unpickling(
    name, tmp_path
) -> None:
    model, answer = OTHER_FITS[name]()
    path = model.save(tmp_path / name)
    with no_unpickling():
        again = Instrument.load(path)
    assert type(again) is type(model)
    assert_allclose(answer(again), answer(model))


def test_every_registered_instrument_is_checked() -> None:
    checked = {*_perturbation_names(), *CELL_FITS, *ELSEWHERE, *OTHER_FITS}
    # instruments that other test modules register for themselves ("test-...") are not aivc's
    shipped = {e.name for e in list_instruments() if not e.name.startswith("test-")}
    assert checked == shipped


@pytest.fixture(scope="module")
def perturbation_data():
    raw, schema = synthetic_perturbation_data(n_singles=8, n_doubles=2, n_contexts=2, seed=2)
    return prepare(raw, schema)


@pytest.mark.parametrize("name", _perturbation_names())
def test_saved_perturbation_models_load_without_unpickling(
    name, perturbation_data, tmp_path, request
) -> None:
    if name in NEEDS_KNOWLEDGE:
        request.getfixturevalue("data_dir")  # the gene-knowledge tables live in the data folder
    adata, schema = perturbation_data
    model = make_instrument(name, **PERTURBATION_PARAMS.get(name, {})).fit(adata, schema)
    labels = adata.obs[schema.perturbation_key].astype(str)
    single = next(p for p in labels if p != schema.control_label and "+" not in p)
    double = next(p for p in labels if "+" in p)
    ctx = str(adata.obs[schema.context_key].iloc[0])
    expected = model.predict_delta([single, double], contexts=ctx)
    model.save(tmp_path / "model")
    save_model_dir(model, tmp_path / "dir", controls=adata)

    with no_unpickling():
        loaded = [
            type(model).load(tmp_path / "model"),
            PerturbationModel.load(tmp_path / "model"),
            Instrument.load(tmp_path / "model"),
            load_model_dir(tmp_path / "dir").model,
        ]
    for again in loaded:
        assert type(again) is type(model)
        assert_array_equal(again.predict_delta([single, double], contexts=ctx), expected)


# ----------------------------------------------------------------------------- cells
def _cells(n_genes: int = 60, seed: int = 0) -> ad.AnnData:
    """Raw counts of three cell types in three donors, and antibody counts of four proteins."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.0, n_genes)
    rows, types, donors = [], [], []
    for donor in ("d1", "d2", "d3"):
        scale = rng.lognormal(0.0, 0.3, n_genes)
        for t in range(3):
            mu = base.copy()
            mu[t * 10 : (t + 1) * 10] *= 6.0
            rows.append(rng.poisson(mu * scale * rng.lognormal(0.0, 0.3, (40, 1))))
            types += [f"type{t}"] * 40
            donors += [donor] * 40
    x = np.vstack(rows).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": types, "donor": donors}, index=[f"c{i}" for i in range(len(types))]
    )
    cells = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    protein = x[:, [0, 10, 20, 30]] * 3 + rng.poisson(2.0, (len(x), 4))
    cells.obsm["protein_counts"] = pd.DataFrame(
        protein, index=cells.obs_names, columns=["CD3", "CD14", "CD19", "CD4"]
    )
    return cells


def _fit_annotator(cells):
    from aivc.cells import CellAnnotator

    model = CellAnnotator(label_key="cell_type", batch_key="donor", n_pcs=8, n_top_genes=50)
    return model.fit(cells), lambda m: m.predict_proba(cells)


def _fit_encoder(cells):
    from aivc.cells import CellEncoder

    params = {"n_latent": 4, "n_hidden": 16, "gene_embedding": "none", "n_input_genes": None}
    model = CellEncoder(**params, max_epochs=2, batch_size=64, seed=0)
    return model.fit(cells, batch_key="donor"), lambda m: m.transform(cells)


def _fit_cell_type(cells):
    from aivc.cells import CellTypeDecoder

    rep = cells.copy()
    rep.obsm["X_emb"] = np.log1p(rep.X[:, :30])
    return CellTypeDecoder(use_rep="X_emb", seed=0).fit(rep), lambda m: m.predict_proba(rep)


def _fit_protein(cells):
    from aivc.cells import ProteinDecoder

    return ProteinDecoder(n_genes=40, n_components=5).fit(cells), lambda m: m.predict(cells)


#: How to fit each registered cell instrument on ``_cells``, and what to compare after loading.
CELL_FITS = {
    "aivc-annotator": _fit_annotator,
    "cell-encoder": _fit_encoder,
    "cell-type": _fit_cell_type,
    "rna-to-protein": _fit_protein,
}


@pytest.mark.parametrize("name", sorted(CELL_FITS))
def test_saved_cell_instruments_load_without_unpickling(name, tmp_path) -> None:
    model, answer = CELL_FITS[name](_cells())
    expected = np.asarray(answer(model))
    model.save(tmp_path / "model")
    with no_unpickling():
        loaded = [type(model).load(tmp_path / "model"), Instrument.load(tmp_path / "model")]
    for again in loaded:
        assert type(again) is type(model)
        assert_allclose(np.asarray(answer(again)), expected, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- other files
def test_workspace_models_load_without_unpickling(tmp_path) -> None:
    from aivc.interfaces.api import Workspace

    raw, schema = synthetic_perturbation_data(n_genes=30, n_singles=5, n_doubles=0, seed=1)
    ws = Workspace(tmp_path / "ws")
    ws.add_dataset("synth", raw, schema)
    job = ws.submit_fit(dataset="synth", instrument="linear", name="lin", holdout=False)
    assert ws.jobs.wait(job["id"], timeout=120).state == "succeeded"
    target = next(p for p in raw.obs[schema.perturbation_key].astype(str) if p != "control")
    expected = [
        (g["gene"], g["delta"]) for g in ws.predict("lin", [target])["predictions"][0]["top_genes"]
    ]
    ws.shutdown()
    with no_unpickling():
        again = Workspace(tmp_path / "ws")  # reads the models it finds
        assert [m["id"] for m in again.list_models()] == ["lin"]
        got = again.predict("lin", [target])["predictions"][0]["top_genes"]
    again.shutdown()
    assert [(g["gene"], g["delta"]) for g in got] == expected


def test_gene_embedding_cache_loads_without_unpickling(tmp_path, monkeypatch) -> None:
    from aivc import settings
    from aivc.genes import coexpression_embedding

    monkeypatch.setattr(settings, "cache_dir", tmp_path)
    cells = _cells()
    cells.X = np.log1p(cells.X)
    first = coexpression_embedding(cells, n_components=8, seed=0)
    assert list((tmp_path / "genes").glob("*.npz"))
    with no_unpickling():
        cached = coexpression_embedding(cells, n_components=8, seed=0)
    pd.testing.assert_frame_equal(cached, first, check_dtype=False)


def test_simulation_and_its_ground_truth_load_without_unpickling(tmp_path) -> None:
    from aivc.data import read_h5ad
    from aivc.sim import GroundTruth, write_simulation

    files = write_simulation(tmp_path / "sim.h5ad", n_cells=300, n_genes=60, seed=3, n_jobs=1)
    with no_unpickling():
        data = read_h5ad(files.data)
        truth = GroundTruth.load(files.truth)
    assert data.shape == (300, 60)
    assert truth.mean.shape == (len(truth.conditions), 60)


def test_ledger_and_screen_checkpoints_load_without_unpickling(tmp_path) -> None:
    from aivc.experiments._ledger import Ledger
    from aivc.experiments._loop import SimulatorLab, run_loop
    from aivc.experiments._screen import screen
    from aivc.instruments import AdditiveModel

    url = f"sqlite:///{tmp_path / 'lab.db'}"
    sim = {"n_genes": 60, "n_cells": 15, "n_control_cells": 30}
    loop = {"model": "additive", "strategy": "random", "batch_size": 4, "n_rounds": 2}
    run_loop(url, "p", lab=SimulatorLab(seed=1, **sim), **loop)
    with no_unpickling(), Ledger(url) as led:
        results = led.results("p", profiles=True)
        predictions = led.predictions("p", payload=True)
        assert len(led.model_versions("p")) == 2
    assert len(results) == 2 * (4 + 1) and all(isinstance(p, np.ndarray) for p in results.profile)
    assert predictions["payload"].notna().all()

    raw, schema = synthetic_perturbation_data(n_genes=20, n_singles=6, n_doubles=0, seed=0)
    adata, schema = prepare(raw, schema)
    model = AdditiveModel().fit(adata, schema)
    panel = [str(g) for g in model.genes_[:8]]
    args = {"pairs_of": panel, "objective": f"down:{panel[0]}", "chunk_size": 8}
    first = screen(model, checkpoint=tmp_path / "ckpt", **args)
    with no_unpickling():
        again = screen(model, checkpoint=tmp_path / "ckpt", **args)
    assert again.chunks_resumed == again.chunks_total > 1
    pd.testing.assert_frame_equal(again.table, first.table)


def test_split_files_load_without_unpickling(tmp_path) -> None:
    from aivc.data.splits import Split, load_splits, save_splits

    splits = [Split("s0", "loo", 0, ("A",), ("B", "C"))]
    save_splits(splits, tmp_path / "splits.json")
    with no_unpickling():
        assert load_splits(tmp_path / "splits.json") == splits
