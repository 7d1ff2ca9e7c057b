"""The blend of aivc-perturb's regression with the simple baselines."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from aivc.data import PerturbationSchema, prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.instruments import PerturbModel
from aivc.instruments._perturb._blend import (
    Blend,
    HeldOut,
    _choose,
    simplex_least_squares,
    variability_blocks,
)

FAST = {"embeddings": "coexpression", "cell_detection": False}


def test_simplex_least_squares_recovers_known_weights():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    y = a @ np.array([0.6, 0.4, 0.0, 0.0]) + rng.normal(0, 0.01, 2000)
    w = simplex_least_squares(a, y)
    assert_allclose(w, [0.6, 0.4, 0.0, 0.0], atol=0.01)
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)


def test_simplex_least_squares_is_never_worse_than_the_best_candidate():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 3))
    y = a[:, 2] * 3.0  # outside the simplex: the best convex fit is candidate 2 alone
    w = simplex_least_squares(a, y)
    best = min(np.sum((a[:, k] - y) ** 2) for k in range(3))
    assert np.sum((a @ w - y) ** 2) <= best + 1e-9


def _held_out(y, predictions, n_folds=5):
    n = len(y)
    mask = np.ones_like(y, dtype=bool)
    top = np.zeros_like(mask)
    strongest = np.argsort(-np.abs(y), axis=1)[:, :5]
    np.put_along_axis(top, strongest, True, axis=1)
    return HeldOut(
        y=y,
        predictions=predictions,
        sd=np.ones_like(y),
        fit_mask=mask,
        top=top,
        fold=np.arange(n) % n_folds,
        n_conditions=n,
    )


def test_a_baseline_is_chosen_when_the_changes_are_pure_noise_around_it():
    rng = np.random.default_rng(2)
    shift = rng.normal(0, 1.0, 80)
    y = shift + rng.normal(0, 0.3, (40, 80))  # every condition: the mean change plus noise
    predictions = {
        "kernel": shift + rng.normal(0, 0.6, (40, 80)),  # a regression that fits noise
        "control": np.zeros_like(y),
        "train-mean": np.tile(shift, (40, 1)),
    }
    held = _held_out(y, predictions)
    names = ("kernel", "control", "train-mean")
    blocks = variability_blocks(y, 4)
    choice, losses = _choose(held, names, blocks, 4)
    assert choice in {"train-mean", "blend"}, losses
    assert losses["train-mean"] < losses["kernel"]


def test_the_regression_is_kept_when_no_option_beats_it_beyond_one_standard_error():
    rng = np.random.default_rng(3)
    y = rng.normal(0, 1.0, (4, 60))
    noise = rng.normal(0, 0.5, y.shape)
    predictions = {
        "kernel": y + noise,
        "control": np.zeros_like(y),
        "train-mean": y + 1.05 * noise,  # no better than the regression
    }
    held = _held_out(y, predictions, n_folds=4)
    choice, _ = _choose(held, ("kernel", "control", "train-mean"), np.zeros(60, int), 1)
    assert choice == "kernel"


def test_variability_blocks_are_quantiles_of_spread():
    delta = np.zeros((5, 80))
    delta[:, :20] = np.arange(5)[:, None]  # varies across conditions
    delta[:, 20:40] = 3.0  # a constant large change: large root mean square, no sd
    rms = variability_blocks(delta, 4)
    sd = variability_blocks(delta, 4, centre=True)
    assert set(rms[20:40]) == {3}
    assert set(rms[:20]) == {2}
    assert set(sd[:20]) == {3}
    assert np.bincount(rms).tolist() == [20, 20, 20, 20]
    # at least 20 genes per block
    assert variability_blocks(delta[:, :40], 10).max() == 1


def _noise_around_context_means(seed=0, n_targets=16, n_genes=50, n_ctx=2):
    """Cells whose every perturbation changes expression by its context's shift plus noise."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i:02d}" for i in range(n_genes)]
    base = rng.uniform(1.0, 3.0, n_genes)
    shifts = rng.normal(0, 0.8, (n_ctx, n_genes))
    x, pert, ctx = [], [], []
    targets = [f"T{i:02d}" for i in range(n_targets)]
    for c in range(n_ctx):
        for label in ["control", *targets]:
            mean = base if label == "control" else base + shifts[c] + rng.normal(0, 0.4, n_genes)
            cells = np.clip(mean + rng.normal(0, 0.3, (40, n_genes)), 0, None)
            x.append(cells)
            pert += [label] * 40
            ctx += [f"ctx{c}"] * 40
    obs = pd.DataFrame({"perturbation": pert, "cell_type": ctx})
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(np.vstack(x).astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    schema = PerturbationSchema(
        perturbation_key="perturbation", control_label="control", context_key="cell_type"
    )
    adata.uns["aivc"] = {"schema": schema.to_dict(), "normalized": True}
    return adata, schema, targets


def test_on_noise_around_context_means_the_model_predicts_the_context_mean():
    adata, schema, targets = _noise_around_context_means()
    train = adata[~adata.obs["perturbation"].isin(targets[:3]).to_numpy()].copy()
    known = targets
    blended = PerturbModel(
        embeddings="coexpression", ridge=1e-4, null_shrinkage="none", cell_detection=False
    )
    blended.fit(train, schema, known_genes=known)
    kernel = blended.clone().set_params(blend=False).fit(train, schema, known_genes=known)
    assert blended.selection_["blend_target"]["chosen"] != "kernel"
    queries, contexts = targets[:3] * 2, ["ctx0"] * 3 + ["ctx1"] * 3
    truth_rows = []
    for t, c in zip(queries, contexts, strict=True):
        rows = (adata.obs["perturbation"] == t) & (adata.obs["cell_type"] == c)
        ctrl = (adata.obs["perturbation"] == "control") & (adata.obs["cell_type"] == c)
        truth_rows.append(adata.X[rows.to_numpy()].mean(0) - adata.X[ctrl.to_numpy()].mean(0))
    truth = np.stack(truth_rows)
    err_blend = np.mean((blended.predict_delta(queries, contexts=contexts) - truth) ** 2)
    err_kernel = np.mean((kernel.predict_delta(queries, contexts=contexts) - truth) ** 2)
    assert err_blend < err_kernel


@pytest.fixture(scope="module")
def contexts_data():
    raw, schema = synthetic_perturbation_data(
        n_genes=60, n_singles=10, n_doubles=6, n_contexts=2, cells_per_condition=20, seed=5
    )
    adata, schema = prepare(raw, schema)
    labels = adata.obs[schema.perturbation_key].astype(str)
    ctx = adata.obs[schema.context_key].astype(str)
    in_doubles = {t for p in labels.unique() if schema.order(p) >= 2 for t in schema.targets(p)}
    singles = sorted(
        {p for p in labels if p != schema.control_label and schema.order(p) == 1} - in_doubles
    )
    # one target never measured, one measured only in type0 (asked for in type1)
    unseen, pair = singles[0], singles[1]
    drop = (labels == unseen) | ((labels == pair) & (ctx == "type1"))
    return adata[~drop.to_numpy()].copy(), schema, unseen, pair


def test_save_load_keeps_the_blended_predictions_and_intervals(contexts_data, tmp_path):
    adata, schema, unseen, pair = contexts_data
    model = PerturbModel(**FAST).fit(adata, schema)
    labels = adata.obs[schema.perturbation_key].astype(str)
    double = next(p for p in labels.unique() if schema.order(p) == 2)
    queries = [unseen, pair, double]
    contexts = ["type1", "type1", "type0"]
    assert model.query_kinds(queries, contexts) == ["target", "pair", "combination"]
    before = model.predict_interval(queries, contexts=contexts)
    loaded = PerturbModel.load(model.save(tmp_path / "m"))
    after = loaded.predict_interval(queries, contexts=contexts)
    assert_array_equal(after[0], before[0])
    # the regression's calibration (used where the blend has few held-out conditions) keeps
    # float32 scales on disk
    for b, a in zip(before[1:], after[1:], strict=True):
        assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    blend_keys = [k for k in model.selection_ if k.startswith("blend_")]
    assert blend_keys
    assert {k: loaded.selection_[k] for k in blend_keys} == {
        k: model.selection_[k] for k in blend_keys
    }


def test_blended_intervals_use_the_quantile_of_their_stratum():
    blend = Blend(
        Blend.State(
            kinds=["target"],
            candidates={"target": ["kernel"]},
            blocks=np.zeros(3, dtype=np.int64),
            strata=np.array([0, 1, 1]),
            weights={"target": np.ones((1, 1))},
            simple=None,  # type: ignore[arg-type]
            linear=None,  # type: ignore[arg-type]
            neighbour=None,  # type: ignore[arg-type]
            scores={
                "target/0": np.linspace(0.0, 1.0, 1001),
                "target/1": np.linspace(0.0, 10.0, 1001),
            },
            n_units={"target": 999},
            change_weight={"target": 0.0},
            selection={},
        )
    )
    half = blend.half_width(np.ones((2, 3)), "target", 0.5)
    # level 0.5 with 999 units: the quantile at 0.5 * 1000 / 999
    q = 0.5 * 1000 / 999
    assert_allclose(half[0], [q, 10 * q, 10 * q], rtol=1e-6)


def test_intervals_widen_with_the_predicted_change_by_the_chosen_weight():
    blend = Blend(
        Blend.State(
            kinds=["target"],
            candidates={"target": ["kernel"]},
            blocks=np.zeros(2, dtype=np.int64),
            strata=np.zeros(2, dtype=np.int64),
            weights={"target": np.ones((1, 1))},
            simple=None,  # type: ignore[arg-type]
            linear=None,  # type: ignore[arg-type]
            neighbour=None,  # type: ignore[arg-type]
            scores={"target/0": np.full(1001, 2.0)},
            n_units={"target": 100},
            change_weight={"target": 0.5},
            selection={},
        )
    )
    half = blend.half_width(np.array([[0.3, 0.3]]), "target", 0.9, change=np.array([[0.0, 0.8]]))
    assert_allclose(half, [[0.6, 2.0 * np.sqrt(0.09 + 0.16)]])


def test_the_change_weight_is_chosen_to_cover_the_strongly_changed_genes():
    from aivc.instruments._perturb._blend import _choose_change_weight

    rng = np.random.default_rng(4)
    # errors proportional to the size of the change: strong changes are the uncertain ones
    change = rng.normal(0, 1.0, (60, 50)) * (rng.random((60, 50)) < 0.2)
    y = change * (1 + rng.normal(0, 0.5, change.shape)) + rng.normal(0, 0.05, change.shape)
    held = _held_out(y, {"kernel": change})
    held.sd[:] = 0.05
    lam, top_coverage = _choose_change_weight(held, change, np.zeros(50, int))
    assert lam > 0
    assert top_coverage > 0.8


def test_few_held_out_conditions_keep_the_regressions_intervals():
    from aivc.instruments._perturb._blend import MIN_CALIBRATION_UNITS

    state = Blend.State(
        kinds=["pair"],
        candidates={"pair": ["kernel"]},
        blocks=np.zeros(2, dtype=np.int64),
        strata=np.zeros(2, dtype=np.int64),
        weights={"pair": np.ones((1, 1))},
        simple=None,  # type: ignore[arg-type]
        linear=None,  # type: ignore[arg-type]
        neighbour=None,  # type: ignore[arg-type]
        scores={"pair/0": np.full(1001, 1e6)},
        n_units={"pair": MIN_CALIBRATION_UNITS - 1},
        change_weight={"pair": 0.0},
        selection={},
    )
    assert not Blend(state).calibrates("pair")
    state.n_units["pair"] = MIN_CALIBRATION_UNITS
    assert Blend(state).calibrates("pair")


def test_the_nearest_neighbour_baseline_is_a_candidate_and_is_saved(
    contexts_data, tmp_path, monkeypatch
):
    from aivc._settings import settings

    adata, schema, unseen, _ = contexts_data
    # the synthetic genes have no Gene Ontology record: the candidate is left out for
    # never-measured targets, and kept for targets measured in the other context, whose
    # nearest training condition is found by context too
    model = PerturbModel(**FAST).fit(adata, schema)
    candidates = model.stages_["blend"].state.candidates
    assert "nearest-neighbour" not in candidates["target"]
    assert "nearest-neighbour" in candidates["pair"]
    assert "nearest-neighbour" in model.selection_["blend_pair"]["mse"]
    assert model.stages_["blend"].state.neighbour.model is not None
    # without Gene Ontology tables it uses the data embedding, which knows every target
    monkeypatch.setattr(settings, "data_dir", tmp_path / "no-knowledge")
    model = PerturbModel(**FAST).fit(adata, schema)
    state = model.stages_["blend"].state
    assert "nearest-neighbour" in state.candidates["target"]
    assert state.neighbour.model.perturbation_embedding == "data"
    assert "nearest-neighbour" in model.selection_["blend_target"]["mse"]
    loaded = PerturbModel.load(model.save(tmp_path / "m"))
    kept = loaded.stages_["blend"].state.neighbour
    assert kept.model.get_params() == state.neighbour.model.get_params()
    base = np.stack([model.control_mean_["type1"]])
    assert_array_equal(
        kept.predict([unseen], [0.0], base, ["type1"]),
        state.neighbour.predict([unseen], [0.0], base, ["type1"]),
    )
