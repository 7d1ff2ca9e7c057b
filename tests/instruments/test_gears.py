"""GEARS as a peer model: fit/predict on real data, persistence, targets outside its GO graph."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import aivc
from _no_pickle import no_unpickling
from aivc import data
from aivc.instruments import PerturbationModel, floor_at_zero

pytestmark = [
    pytest.mark.peers,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gears") is None,
        reason="GEARS is not installed (pip install cell-gears)",
    ),
]

N_TRAIN = 6
FAST = {
    "epochs": 1,
    "hidden_size": 16,
    "batch_size": 32,
    "max_cells_per_condition": 60,
    "max_control_cells": 120,
    "seed": 0,
}


def _data_dir() -> Path | None:
    for base in (aivc.settings.data_dir,):
        if (base / "genes" / "human_go_annotations.tsv.gz").exists() and (
            base / data.dataset_entry("papalexi2021").folder
        ).exists():
            return base
    return None


@pytest.fixture(scope="module")
def setup() -> Iterator[dict[str, object]]:
    """A small papalexi2021 training set (6 perturbations, <=100 cells each) and its fitted model."""
    from aivc.genes import gene_aliases
    from aivc.instruments._gears import GearsModel, go_gene_terms

    base = _data_dir()
    if base is None:
        pytest.skip(
            "papalexi2021 and the gene tables are not in the data directory (set AIVC_DATA_DIR)"
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aivc.settings, "data_dir", base)
        raw = data.load("papalexi2021")
        schema = data.schema_of(raw)
        adata, schema = data.prepare(raw, schema)
        labels = adata.obs[schema.perturbation_key].astype(str).to_numpy()
        targets = sorted(set(labels) - {schema.control_label})
        annotated = go_gene_terms()
        aliases = gene_aliases()
        no_go = next(
            g for g in adata.var_names if g not in annotated and aliases.get(g) not in annotated
        )
        train_perts = targets[:N_TRAIN]
        rng = np.random.default_rng(0)
        rows = [rng.permutation(np.flatnonzero(labels == schema.control_label))[:300]]
        rows += [rng.permutation(np.flatnonzero(labels == p))[:100] for p in train_perts]
        train = adata[np.sort(np.concatenate(rows))].copy()
        # one training perturbation relabelled to a measured gene without GO terms
        relabel = train_perts[-1]
        obs_labels = train.obs[schema.perturbation_key].astype(str).to_numpy()
        train.obs[schema.perturbation_key] = np.where(obs_labels == relabel, no_go, obs_labels)
        unseen = [t for t in targets[N_TRAIN:] if t in annotated][:2]
        model = GearsModel(**FAST).fit(train, schema, known_genes=unseen)
        yield {
            "model": model,
            "train": train,
            "schema": schema,
            "train_perts": train_perts[:-1],
            "no_go": no_go,
            "unseen": unseen,
            "cls": GearsModel,
        }


def test_fit_predict_shapes(setup: dict) -> None:
    model = setup["model"]
    seen, unseen = setup["train_perts"], setup["unseen"]
    queries = [*seen, *unseen, f"{seen[0]}+{unseen[0]}"]
    pred = model.predict_delta(queries)
    assert pred.shape == (len(queries), setup["train"].n_vars)
    assert np.isfinite(pred).all()
    # GEARS' predictions differ between targets, unlike the mean-change fallback
    assert np.abs(pred[0] - pred[1]).max() > 0
    assert all(model._gears_targets(q) is not None for q in queries)
    cells = model.predict(queries[:2], control=setup["train"], n_cells=5)
    assert cells.n_vars == setup["train"].n_vars


def test_save_load_round_trip(setup: dict, tmp_path: Path) -> None:
    model = setup["model"]
    queries = [*setup["train_perts"], *setup["unseen"], setup["no_go"]]
    expected = model.predict_delta(queries)
    path = model.save(tmp_path / "gears")
    assert sorted(f.name for f in path.iterdir()) == ["config.json", "weights.safetensors"]
    with no_unpickling():  # GEARS' own files are pickles; the saved model is not
        loaded = setup["cls"].load(path)
        generic = PerturbationModel.load(path)
    np.testing.assert_allclose(loaded.predict_delta(queries), expected, rtol=0, atol=1e-6)
    assert type(generic) is setup["cls"]
    assert generic.pert_list_ == model.pert_list_


def test_target_outside_go_graph_is_explicit(setup: dict, caplog: pytest.LogCaptureFixture) -> None:
    model, no_go = setup["model"], setup["no_go"]
    assert no_go not in model.pert_list_
    assert model.unrepresented_training_ == [no_go]
    assert f"{no_go}+ctrl" not in model.train_conditions_
    with caplog.at_level(logging.WARNING, logger="aivc.instruments._gears"):
        pred = model.predict_delta([no_go, setup["train_perts"][0]])
    assert no_go in caplog.text
    # the mean training change, floored where it would take a gene below zero expression
    expected = floor_at_zero(model.mean_delta_[None], model.control_mean_[None][None])[0]
    np.testing.assert_allclose(pred[0], expected, rtol=0, atol=1e-12)
    assert np.abs(pred[1] - model.mean_delta_).max() > 1e-6


def test_seeded_fit_is_reproducible_and_leaves_global_state(setup: dict) -> None:
    import torch

    np.random.seed(7)  # noqa: NPY002 - the global state the fit must leave alone
    torch.manual_seed(7)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()  # noqa: NPY002
    threads, filters = torch.get_num_threads(), list(warnings.filters)
    again = setup["cls"](**FAST).fit(setup["train"], setup["schema"], known_genes=setup["unseen"])
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert torch.get_num_threads() == threads
    assert not [f for f in warnings.filters if f not in filters and f[0] == "ignore"]
    queries = [*setup["train_perts"], *setup["unseen"]]
    np.testing.assert_allclose(
        again.predict_delta(queries), setup["model"].predict_delta(queries), rtol=0, atol=1e-6
    )


def test_invalid_parameters_are_refused(setup: dict) -> None:
    with pytest.raises(ValueError, match="go_terms"):
        setup["cls"](go_terms="kegg").fit(setup["train"], setup["schema"])
    with pytest.raises(ValueError, match="epochs"):
        setup["cls"](epochs=0).fit(setup["train"], setup["schema"])


def test_conformance(setup: dict) -> None:
    # synthetic genes have no GO terms: GEARS represents nothing and the model must say so
    # and still honour the instrument contract with its mean-change fallback
    from aivc.instruments import check_instrument

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(aivc.settings, "data_dir", _data_dir())
        passed = check_instrument(setup["cls"], params=FAST)
    assert "save-load" in passed
