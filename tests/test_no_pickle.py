"""No saved object is ever unpickled: loading works with every unpickling path made to fail."""

from __future__ import annotations

import contextlib
import pickle

import numpy as np
import pytest

from aivc.data import prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.instruments import load_model_dir, make_instrument, save_model_dir


@contextlib.contextmanager
def no_unpickling():
    """Within the block, pickle, torch.load without weights_only and np.load(allow_pickle=True) raise.

    Only the loads run inside it: fitting may use libraries (numba's cache) that unpickle
    their own compiled code, which is not a file a user was sent.
    """
    import torch

    with pytest.MonkeyPatch.context() as m:
        m.setattr(pickle, "load", _refuse)
        m.setattr(pickle, "loads", _refuse)
        m.setattr(pickle, "Unpickler", _refuse)
        m.setattr(torch, "load", _refuse_unsafe_torch(torch.load))
        m.setattr(np, "load", _refuse_pickled_numpy(np.load))
        yield


def test_the_guard_catches_a_pickle(tmp_path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    data = pickle.dumps(1)
    with no_unpickling():
        with pytest.raises(AssertionError, match="unpickled"):
            np.load(path, allow_pickle=True)
        with pytest.raises(AssertionError, match="unpickled"):
            pickle.loads(data)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("train-mean", {}),
        ("additive", {}),
        ("linear", {}),
        ("context-mean", {}),
        ("perturbation-elsewhere", {}),
        ("aivc-perturb", {}),
        ("conformal", {"base": "linear"}),
    ],
)
def test_saved_perturbation_models_load_without_unpickling(name, params, tmp_path) -> None:
    raw, schema = synthetic_perturbation_data(n_singles=8, n_doubles=2, n_contexts=2, seed=2)
    adata, schema = prepare(raw, schema)
    model = make_instrument(name, **params).fit(adata, schema)
    label = next(p for p in adata.obs[schema.perturbation_key].astype(str) if p != "control")
    ctx = str(adata.obs[schema.context_key].iloc[0])
    expected = model.predict_delta([label], contexts=ctx)
    model.save(tmp_path / "model")
    save_model_dir(model, tmp_path / "dir", controls=adata)

    with no_unpickling():
        again = type(model).load(tmp_path / "model")
        md = load_model_dir(tmp_path / "dir")
    assert np.array_equal(again.predict_delta([label], contexts=ctx), expected)
    assert np.array_equal(md.model.predict_delta([label], contexts=ctx), expected)


def test_a_decoder_loads_without_unpickling(tmp_path) -> None:
    import anndata as ad
    import pandas as pd

    from aivc.cells import CellTypeDecoder

    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(c, 0.3, size=(40, 4)) for c in (-2.0, 0.0, 2.0)])
    y = np.repeat(["a", "b", "c"], 40)
    a = ad.AnnData(
        X=np.zeros((len(y), 1), dtype=np.float32),
        obs=pd.DataFrame({"cell_type": pd.Categorical(y)}, index=[f"c{i}" for i in range(len(y))]),
    )
    a.obsm["X_emb"] = z
    dec = CellTypeDecoder(use_rep="X_emb", seed=0).fit(a)
    dec.save(tmp_path / "dec")
    with no_unpickling():
        again = CellTypeDecoder.load(tmp_path / "dec")
    assert list(again.predict(a)) == list(dec.predict(a))


def _refuse(*args, **kwargs):
    raise AssertionError("a saved object was unpickled")


def _refuse_unsafe_torch(real):
    def load(*args, weights_only=None, **kwargs):
        if weights_only is not True:
            _refuse()
        return real(*args, weights_only=True, **kwargs)

    return load


def _refuse_pickled_numpy(real):
    def load(*args, allow_pickle=False, **kwargs):
        if allow_pickle:
            _refuse()
        return real(*args, allow_pickle=False, **kwargs)

    return load
