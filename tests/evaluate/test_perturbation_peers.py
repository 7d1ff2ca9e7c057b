"""The perturbation peers (State, biolord, CellFlow) through their file protocol, with a stub peer.

No peer package is installed here: a "ready" environment is faked whose
python is the interpreter running the tests, and the shipped script is run
with a stub model in place of the peer's (it moves each control cell by the
perturbation's mean change in the training cells), so the adapter, the
script's input checks and its output files are exercised end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from aivc._settings import settings
from aivc.data import DataValidationError, prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.evaluate import _peer_envs as pe
from aivc.evaluate._perturbation_peers import BiolordPeer, CellFlowPeer, StatePeer
from aivc.instruments._registry import get_instrument_class

SHIPPED = Path(pe._script_path("perturbation_peer")).parent

STUB = f"""
import sys
sys.path.insert(0, {str(SHIPPED)!r})
import numpy as np
import perturbation_peer as pp


def stub(train, control, query, *, control_label, steps, seed):
    x = pp._dense(train.X)
    pert = train.obs["perturbation"].astype(str).to_numpy()
    shift = {{p: x[pert == p].mean(axis=0) - x[pert == control_label].mean(axis=0) for p in set(pert)}}
    blocks = [
        pp._dense(control.X[idx]) + shift[p]
        for idx, p in zip(pp._sources(control, query, seed), query["perturbation"], strict=True)
    ]
    return np.concatenate(blocks), {{"train_seconds": 0.0, "steps": steps, "config": {{"stub": True}}}}


for name in ("state", "biolord", "cellflow"):
    pp.PEERS[name] = (stub, "numpy")
pp.main()
"""


@pytest.fixture
def stub_peers(tmp_path, monkeypatch) -> Path:
    """Ready environments for the three peers whose script is the stub."""
    monkeypatch.setattr(settings, "cache_dir", tmp_path / "cache")
    for name in ("state", "biolord", "cellflow"):
        env = tmp_path / "cache" / "peers" / name
        (env / "bin").mkdir(parents=True)
        python = env / "bin" / "python"
        python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        python.chmod(0o755)
        (env / pe.READY_FILE).write_text(json.dumps({"format": 1, "versions": {}}))
    stub = tmp_path / "stub_peer.py"
    stub.write_text(STUB)
    shipped = pe._script_path
    monkeypatch.setattr(
        pe, "_script_path", lambda s: stub if s == "perturbation_peer" else shipped(s)
    )
    return stub


@pytest.fixture(scope="module")
def data():
    raw, schema = synthetic_perturbation_data(n_singles=4, n_doubles=0, n_contexts=2, seed=3)
    return prepare(raw, schema)


def test_the_peers_are_registered_instruments_of_their_own_kind() -> None:
    for name, cls in (("state", StatePeer), ("biolord", BiolordPeer), ("cellflow", CellFlowPeer)):
        assert get_instrument_class(name) is cls
        assert cls.peer == name and name in pe.PEERS
        assert pe.PEERS[name].licence


def test_a_stub_peer_predicts_through_the_file_protocol(stub_peers, data) -> None:
    adata, schema = data
    ctx = adata.obs[schema.context_key].astype(str).to_numpy()
    pert = adata.obs[schema.perturbation_key].astype(str).to_numpy()
    held = ctx[0]
    other = sorted(set(ctx) - {held})[0]
    target = sorted(set(pert) - {schema.control_label})[0]
    # the target is measured in one context and predicted in the other
    train = adata[~((ctx == held) & (pert == target))].copy()
    model = StatePeer(n_cells=40, seed=1).fit(train, schema)

    delta = model.predict_delta([target], contexts=[held])
    x = np.asarray(train.X.toarray() if hasattr(train.X, "toarray") else train.X)
    tp = train.obs[schema.perturbation_key].astype(str).to_numpy()
    shift = x[tp == target].mean(axis=0) - x[tp == schema.control_label].mean(axis=0)
    assert delta.shape == (1, adata.n_vars)
    # the stub moves 40 sampled controls of the held context by the shift: the change is the
    # shift plus the sampling difference of those controls from all controls of the context
    generated = model._cells[(target, held)]
    base = model.control_mean_[held]
    assert_allclose(delta[0], np.maximum(generated.mean(axis=0) - base, -base), atol=1e-5)
    assert np.corrcoef(delta[0], shift)[0, 1] > 0.8
    assert model.peer_info_["config"] == {"stub": True}
    assert model.peer_info_["n_train_cells"] == train.n_obs

    # predict() returns the peer's own cells (non-negative), without training again
    calls = []
    original = model._generate
    model._generate = lambda *a: (calls.append(a), original(*a))
    control = adata[pert == schema.control_label].copy()
    cells = model.predict(
        [target], contexts=[held], control=control, n_cells=25, include_control=False
    )
    assert cells.shape == (25, adata.n_vars)
    assert (cells.X.toarray() >= 0).all()
    assert len(model._cells) == 1  # the cached cells served both calls
    # a second context is one more peer run
    model.predict_delta([target], contexts=[other])
    assert set(model._cells) == {(target, held), (target, other)}


def test_a_peer_refuses_what_it_cannot_do(stub_peers, data, tmp_path) -> None:
    adata, schema = data
    pert = adata.obs[schema.perturbation_key].astype(str).to_numpy()
    target = sorted(set(pert) - {schema.control_label})[0]
    model = BiolordPeer().fit(adata[pert != target].copy(), schema)
    with pytest.raises(DataValidationError, match="one-hot"):
        model.predict_delta([target], contexts=[adata.obs[schema.context_key].iloc[0]])
    with pytest.raises(NotImplementedError, match="not saved by aivc"):
        model.save(tmp_path / "biolord")
    with pytest.raises(ValueError, match="steps must be a positive"):
        CellFlowPeer(steps=0).fit(adata, schema)


def test_a_peer_that_is_not_installed_names_the_install_command(
    tmp_path, monkeypatch, data
) -> None:
    monkeypatch.setattr(settings, "cache_dir", tmp_path / "empty")
    adata, schema = data
    model = CellFlowPeer().fit(adata, schema)
    p = sorted(set(adata.obs[schema.perturbation_key].astype(str)) - {schema.control_label})[0]
    with pytest.raises(pe.PeerNotInstalledError, match="aivc peers install cellflow"):
        model.predict_delta([p], contexts=[adata.obs[schema.context_key].iloc[0]])


def test_the_peer_script_checks_its_inputs(tmp_path, data) -> None:
    sys.path.insert(0, str(SHIPPED))
    try:
        import perturbation_peer as pp
    finally:
        sys.path.remove(str(SHIPPED))
    adata, schema = data
    cells = adata[:50].copy()
    cells.obs["perturbation"] = cells.obs[schema.perturbation_key].astype(str)
    cells.write_h5ad(tmp_path / "train.h5ad")  # no "context" column
    (tmp_path / "query.csv").write_text("perturbation,context,n_cells\nX,a,5\n")
    args = [
        "--peer", "biolord",
        "--train", str(tmp_path / "train.h5ad"),
        "--control", str(tmp_path / "train.h5ad"),
        "--query", str(tmp_path / "query.csv"),
        "--control-label", schema.control_label,
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        pp.main(args)
    assert e.value.code == 2


def test_peers_are_not_fitted_as_model_directories_or_workspace_models(tmp_path) -> None:
    from aivc.experiments import perturbation_model
    from aivc.instruments._model_dir import fit_model_dir

    with pytest.raises(ValueError, match="published peer"):
        perturbation_model("state")
    with pytest.raises(ValueError, match="published peer"):
        fit_model_dir(tmp_path / "m", model="biolord", data=tmp_path / "x.h5ad")
