"""The stages of ``aivc-perturb`` used alone, and the save/load derived from their declared state."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from aivc.data import DataValidationError, prepare
from aivc.data._synthetic import synthetic_perturbation_data
from aivc.instruments import PerturbModel
from aivc.instruments._base import PerturbationSummary
from aivc.instruments._conformal import ConformalCalibrator
from aivc.instruments._perturb import (
    Calibration,
    CellGeneration,
    ContextTransfer,
    EmbeddingTables,
    FittedState,
    InferredSingles,
    Interactions,
    KernelRegression,
    MeasuredSingles,
    NullShrinkage,
    TargetEffect,
    TrainingRows,
    additive_parts,
    dump_state,
    load_state,
)
from aivc.instruments._perturb._embeddings import data_tables
from aivc.instruments._perturb._state import state_fields

# no knowledge tables (quick and offline); the regression without the blend, whose stages these
# tests check (the blend has its own tests)
FAST = {"embeddings": "coexpression", "blend": False}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def singles():
    """Synthetic knockouts, all singles: prepared data, schema and pseudobulk summary."""
    raw, schema = synthetic_perturbation_data(
        n_genes=50, n_singles=12, n_doubles=0, cells_per_condition=20, n_control_cells=80, seed=5
    )
    adata, schema = prepare(raw, schema)
    return adata, schema, PerturbationSummary.from_adata(adata, schema)


@pytest.fixture(scope="module")
def combos():
    raw, schema = synthetic_perturbation_data(
        n_genes=50, n_singles=10, n_doubles=20, cells_per_condition=20, n_control_cells=80, seed=4
    )
    adata, schema = prepare(raw, schema)
    return adata, schema, PerturbationSummary.from_adata(adata, schema)


def _rows(summary):
    doses = summary.doses or [0.0] * len(summary.perturbations)
    orders = [summary.schema.order(p) for p in summary.perturbations]
    return TrainingRows.from_summary(summary, doses, orders), doses, orders


def _kernel(adata, summary):
    rows, _, _ = _rows(summary)
    frames = data_tables(
        ["coexpression", "response"], summary, adata, seed=0, n_coexpression_cells=200
    )
    context = ContextTransfer.from_controls(summary.control_mean, len(summary.genes))
    kernel, held = KernelRegression.fit(
        rows, EmbeddingTables.from_frames(frames), summary.schema, context, ridge=0.3
    )
    return rows, context, kernel, held


# ----------------------------------------------------------------------------- stages alone
def test_kernel_regression_alone(singles):
    adata, _, summary = singles
    rows, context, kernel, held = _kernel(adata, summary)
    st = kernel.state
    assert st.sources and set(st.tables) == set(st.sources) and st.ridge == 0.3
    n, g = rows.y.shape
    assert held.residuals.shape == (n, g) and held.variance.shape == (n,)
    mean, var, weights = kernel.predict(
        rows.targets, rows.log_doses, rows.states, context, weights=True
    )
    assert mean.shape == (n, g) and np.all(var > 0) and weights.shape == (n, n)
    # the mean is the prior mean plus the smoother weights times the centred training changes
    assert_allclose(mean, st.prior_mean + weights @ (rows.y - st.prior_mean), atol=1e-9)
    # a target without embedding gets the prior mean and the prior's variance
    new_mean, new_var = kernel.predict(["NOVEL"], np.zeros(1), rows.states[:1], context)
    assert_allclose(new_mean[0], st.prior_mean)
    assert new_var[0] > var.max()
    assert not kernel.embedded(["NOVEL"])[0] and kernel.embedded(rows.targets[:1])[0]


def test_context_transfer_alone():
    rng = np.random.default_rng(0)
    states = {f"c{i}": rng.normal(0, 1, 6) for i in range(3)}
    context = ContextTransfer.from_controls(states, 6)
    st = context.state
    assert st.scale is not None and st.scale > 0 and st.rho == 0.0
    z = np.stack(list(states.values()))
    k = np.ones((3, 3))
    combined = context.combine(k, z, z, st.tau)
    assert_allclose(
        np.diag(combined), 1.0 + 0.2
    )  # (k + bias) x context kernel of 1 on the diagonal
    assert np.all(combined <= 1.2 + 1e-12)
    # the same response in every context, plus an offset that follows the control state
    targets = ["A", "B", "C", "D"] * 3
    contexts = [c for c in states for _ in range(4)]
    rows_z = np.stack([states[c] for c in contexts])
    effect = rng.normal(0, 1, (4, 6))
    y = np.vstack([effect] * 3) - 0.35 * (rows_z - st.center)
    ident = np.equal.outer(np.array(targets), np.array(targets)).astype(float)

    def row_kernel(tau):
        return context.combine(ident, rows_z, rows_z, tau)

    ridge = context.choose(row_kernel, targets, contexts, rows_z, y, [0.01], 0.01)
    assert ridge == 0.01
    assert st.rho > 0 and any(k.startswith("context|") for k in st.selection)
    assert_allclose(context.shift(rows_z), st.rho * (rows_z - st.center))
    # one context: no context kernel, nothing to choose
    single = ContextTransfer.from_controls({None: np.zeros(6)}, 6)
    assert single.state.scale is None
    assert single.combine(k, z, z, 1.0) is k


def test_target_effect_alone(singles):
    _, _, summary = singles
    rows, _, _ = _rows(summary)
    target, own = TargetEffect.fit(summary, rows.index)
    st = target.state
    assert st.change is not None and st.change < 0  # knockouts lower their own gene
    assert st.form in {"shift", "fraction"} and st.sd > 0 and len(own) == len(rows.index)
    genes = {str(g): j for j, g in enumerate(summary.genes)}
    unseen = [g for g in genes if g not in set(rows.targets)][:2]
    mean, var = np.zeros((2, len(genes))), np.zeros((2, len(genes)))
    base = np.full((2, len(genes)), 2.0)
    target.apply(unseen, mean, var, base, genes, set(rows.targets))
    cols = [genes[t] for t in unseen]
    assert np.all(mean[[0, 1], cols] < 0) and np.all(var[[0, 1], cols] == st.sd**2)
    assert np.count_nonzero(mean) == 2
    # measured targets are left alone, and the model can be switched off
    assert target.own_gene(rows.targets[:1], genes, set(rows.targets)) == []
    off, none = TargetEffect.fit(summary, rows.index, enabled=False)
    assert off.state.change is None and none == []
    # held-out residuals take the own-gene errors
    res, scale = np.zeros((len(rows.index), len(genes))), np.ones((len(rows.index), len(genes)))
    target.correct_held_out(res, scale, own)
    r, j, e = own[0]
    assert res[r, j] == e and scale[r, j] == max(st.sd, 1e-6)


def test_null_shrinkage_alone(singles):
    adata, _, summary = singles
    rows, _, kernel, held = _kernel(adata, summary)
    st = kernel.state
    args = (rows.y, held.residuals, held.variance, held.kernel, held.groups, held.ridge)
    kw = {"inverse": st.inverse, "gene_sigma2": st.gene_sigma2, "embedded": True}
    none, res = NullShrinkage.fit("none", *args, **kw, keep_rows=False)
    assert none.state.kind == "none" and res is held.residuals
    for kind in ("condition", "dispersion", "uncertainty", "gene"):
        shrink, _ = NullShrinkage.fit(kind, *args, **kw, keep_rows=True)
        assert shrink.state.kind in {"none", kind}
        assert f"null-shrinkage|{kind}=0.01" in shrink.state.selection
    # applied alone: a condition's change is scaled by one factor in (0, 1], never turned
    mean = np.random.default_rng(1).normal(0, 1, (3, rows.y.shape[1]))
    forced = NullShrinkage.none(rows.y.shape[1])
    forced.state.kind, forced.state.strength = "condition", 1.0
    out = forced.apply(mean, np.ones(3), gene_sigma2=np.full(rows.y.shape[1], 0.5))
    factor = (out * mean).sum(axis=1) / (mean * mean).sum(axis=1)
    assert np.all((factor > 0) & (factor < 1))
    assert_allclose(out, factor[:, None] * mean)
    kept = forced.apply(
        mean,
        np.ones(3),
        gene_sigma2=np.ones(rows.y.shape[1]),
        embedded=np.array([True, False, True]),
    )
    assert_array_equal(kept[1], mean[1])
    assert forced.apply(mean, np.ones(3), gene_sigma2=np.ones(1)) is not mean
    assert none.apply(mean, np.ones(3), gene_sigma2=np.ones(1)) is mean


def test_measured_and_combinations_alone(combos):
    _, schema, summary = combos
    _, doses, orders = _rows(summary)
    measured = MeasuredSingles.fit(summary, doses, orders)
    assert len(measured) == sum(o == 1 for o in orders)
    single = next(p for p in summary.perturbations if schema.order(p) == 1)
    assert_array_equal(
        measured.profile(single, None, 0.0), summary.delta[summary.perturbations.index(single)]
    )
    g = len(summary.genes)
    inferred = InferredSingles.none(g)
    doubles = [p for p in summary.perturbations if schema.order(p) == 2]
    base = np.stack([summary.control_mean[None]] * len(doubles))
    calls = []

    def predict(targets, log_doses, states):
        calls.append(list(targets))
        return np.zeros((len(targets), g)), np.ones((len(targets), g))

    add, prod, var_add = additive_parts(
        [schema.targets(p) for p in doubles],
        [None] * len(doubles),
        [0.0] * len(doubles),
        base,
        measured=measured,
        inferred=inferred,
        predict=predict,
        noise=np.full(g, 0.01),
    )
    a, b = schema.targets(doubles[0])
    da, db = measured.profile(a, None, 0.0), measured.profile(b, None, 0.0)
    assert_allclose(add[0], da + db)
    assert_allclose(prod[0], da * db)
    assert_allclose(var_add[0], 0.02)
    assert calls == []  # every single was measured
    yobs = np.stack([summary.delta[summary.perturbations.index(p)] for p in doubles])
    full = np.ones(len(doubles), dtype=bool)
    inter, res, scale = Interactions.fit(add, prod, var_add, yobs, full)
    assert inter.state.theta.shape == (g, 2) and "combinations|additive" in inter.state.selection
    assert_allclose(res, yobs - inter.combine(add, prod), atol=1e-12)
    assert_allclose(scale**2, var_add + inter.state.interaction_var, rtol=1e-12)
    off, _, _ = Interactions.fit(add, prod, var_add, yobs, full, enabled=False)
    assert np.all(off.state.theta == 0)
    assert_allclose(off.combine(add, prod), add)


def test_inferred_singles_alone(combos):
    adata, schema, _ = combos
    labels = adata.obs[schema.perturbation_key].astype(str).to_numpy()
    doubles = sorted({p for p in labels if schema.order(p) == 2})
    counts = {}
    for d in doubles:
        for t in schema.targets(d):
            counts[t] = counts.get(t, 0) + 1
    hidden = max(sorted(counts), key=counts.get)
    summary = PerturbationSummary.from_adata(adata[labels != hidden].copy(), schema)
    _, doses, orders = _rows(summary)
    measured = MeasuredSingles.fit(summary, doses, orders)
    g = len(summary.genes)

    def predict(targets, log_doses, states):
        return np.zeros((len(targets), g)), np.ones((len(targets), g))

    loo = np.zeros_like(measured.state.delta)  # held-out predictions: no change
    inferred = InferredSingles.fit(summary, doses, loo, measured, predict)
    assert "combination-singles|gp" in inferred.state.selection
    if inferred.state.keys:  # the combinations beat predicting no change
        assert [k[0] for k in inferred.state.keys] == [hidden]
        assert inferred.lookup(hidden, None, 0.0) == 0
        assert inferred.state.delta.shape == (1, g) and np.all(inferred.state.var >= 0)
    off = InferredSingles.fit(summary, doses, loo, measured, predict, enabled=False)
    assert off.state.keys == [] and off.lookup(hidden, None, 0.0) is None


def test_calibration_alone():
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 2.0, (60, 8))
    residuals = rng.normal(0, 1, (60, 8)) * scale
    calibration = Calibration.fit(
        [residuals[:40], residuals[40:]],
        [scale[:40], scale[40:]],
        ["order1"] * 40 + ["order2"] * 20,
    )
    delta = np.zeros((2, 8))
    lower, upper = calibration.interval(delta, np.ones((2, 8)), [1, 3], level=0.9)
    assert np.all(lower < 0) and np.all(upper > 0)
    lo50, hi50 = calibration.interval(delta, np.ones((2, 8)), [1, 3], level=0.5)
    assert np.all(hi50 - lo50 < upper - lower)


def test_cell_generation_alone(singles):
    adata, _, summary = singles
    off = CellGeneration.fit(summary, adata, [], mode=False)
    on = CellGeneration.fit(summary, adata, [], mode=True)
    assert not off.uses_detection and on.state.detection_z == 1.96
    rng = np.random.default_rng(0)
    lam = np.linspace(0.05, 3.0, 20)
    cells = np.log1p(rng.poisson(lam, size=(300, 20)).astype(float))
    target = cells.mean(axis=0).copy()
    target[0] += 1.0
    moved = on.move(
        cells[:100],
        target,
        np.random.default_rng(1),
        cells,
        (target - cells.mean(0), np.full(20, 0.01)),
    )
    assert_allclose(moved.mean(axis=0), target, atol=1e-4)
    assert (moved[:, 0] > 0).mean() > (cells[:100, 0] > 0).mean()
    scaled = off.move(cells[:100], target, np.random.default_rng(1), cells)
    assert_array_equal(scaled > 0, cells[:100] > 0)
    # "auto" with held-out predictions of the training singles chooses among the thresholds
    rows, _, kernel, held = _kernel(adata, summary)
    sd = np.sqrt(kernel.state.gene_sigma2[None, :] * held.variance[:, None])
    auto = CellGeneration.fit(summary, adata, [(rows.index, rows.y - held.residuals, sd)], seed=0)
    assert auto.state.detection_z in {1.96, 3.0, np.inf}
    assert set(auto.state.selection["detection"]["overlap"]) == {"1.96", "3.0", "inf"}


# ----------------------------------------------------------------------------- derived persistence
@dataclass
class _Toy(FittedState):
    stage: ClassVar[str] = "toy"

    values: np.ndarray
    tables: dict[str, np.ndarray]
    level: float
    bound: float | None
    names: list[str | None]
    flag: bool
    notes: dict[str, Any]
    calibrator: ConformalCalibrator


def test_every_kind_of_declared_field_round_trips():
    rng = np.random.default_rng(0)
    cal = ConformalCalibrator(pooling="genes").fit(rng.normal(size=(12, 3)), np.ones((12, 3)))
    toy = _Toy(
        values=np.arange(6.0).reshape(2, 3),
        tables={"b": np.ones((2, 2), dtype=np.float32), "a": np.zeros((1, 2), dtype=np.float32)},
        level=float("inf"),
        bound=None,
        names=["x", None],
        flag=True,
        notes={"k": [1.0, 2.0]},
        calibrator=cal,
    )
    arrays, meta = dump_state(toy)
    assert set(arrays) == {"toy.values", "toy.tables.b", "toy.tables.a", "toy.calibrator.scores.0"}
    assert meta["level"] == "inf" and meta["tables"] == ["b", "a"]
    meta = json.loads(json.dumps({"toy": meta}))  # what config.json gives back
    back = load_state(_Toy, arrays, meta)
    assert_array_equal(back.values, toy.values)
    assert list(back.tables) == ["b", "a"] and back.level == np.inf and back.bound is None
    assert (back.names, back.flag, back.notes) == (toy.names, toy.flag, toy.notes)
    assert_allclose(back.calibrator.quantile(0.9), cal.quantile(0.9), rtol=1e-6)
    for name, *_ in state_fields(_Toy):
        broken = json.loads(json.dumps(meta))
        kept = dict(arrays)
        if name in broken["toy"]:
            del broken["toy"][name]
        kept = {k: v for k, v in kept.items() if not k.startswith(f"toy.{name}")}
        with pytest.raises(DataValidationError, match=repr(name)):
            load_state(_Toy, kept, broken)
    with pytest.raises(DataValidationError, match=r"no entry state\.toy"):
        load_state(_Toy, arrays, {})


@pytest.fixture(scope="module")
def fitted(combos):
    adata, schema, _ = combos
    labels = adata.obs[schema.perturbation_key].astype(str).to_numpy()
    doubles = sorted({p for p in labels if schema.order(p) == 2})
    train = adata[~np.isin(labels, doubles[:3])].copy()
    model = PerturbModel(embeddings="coexpression,response", cell_detection=True).fit(
        train, schema, known_genes=["NOVELGENE"]
    )
    control = adata[labels == schema.control_label].copy()
    singles = sorted({p for p in labels if schema.order(p) == 1})
    queries = [*doubles[:3], *singles[:3], "NOVELGENE", schema.join(singles[:3])]
    return model, queries, control


def test_save_writes_every_declared_field(fitted, tmp_path):
    from safetensors.numpy import load_file

    model, _, _ = fitted
    path = model.save(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    arrays = load_file(str(path / "weights.safetensors"))
    state = config["state"]
    assert state["perturb_format_version"] == 4
    assert set(model.stages_) == {
        "kernel", "context", "target", "shrinkage", "measured", "interactions", "inferred",
        "cells", "calibration", "blend",
    }  # fmt: skip
    for stage, component in model.stages_.items():
        for name, kind, _, _ in state_fields(type(component.state)):
            key = f"{stage}.{name}"
            if kind == "array":
                assert_array_equal(arrays[key], getattr(component.state, name))
            else:
                assert name in state[stage], key
                if kind == "arrays":
                    assert all(f"{key}.{part}" in arrays for part in state[stage][name])
    # nothing is stored outside the declared fields (besides the base model's own entries)
    stage_keys = {k for k in arrays if k.split(".")[0] in model.stages_}
    assert stage_keys == {k for k in arrays if k != "control_mean"}


def _remove(path, *, array=None, entry=None):
    from safetensors.numpy import load_file, save_file

    if array is not None:
        arrays = load_file(str(path / "weights.safetensors"))
        del arrays[array]
        save_file(arrays, str(path / "weights.safetensors"))
    if entry is not None:
        config = json.loads((path / "config.json").read_text())
        node = config["state"]
        for key in entry[:-1]:
            node = node[key]
        del node[entry[-1]]
        (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("array", "entry", "match"),
    [
        ("kernel.alpha", None, r"weights\.safetensors has no array 'kernel\.alpha'.*'alpha'"),
        ("measured.delta", None, r"weights\.safetensors.*'delta' of the 'measured' stage"),
        (None, ("target", "sd"), r"config\.json has no entry state\.target\.sd.*'sd'"),
        (None, ("cells", "detection_z"), r"config\.json.*'detection_z'"),
        (None, ("context",), r"config\.json has no entry state\.context"),
        (None, ("perturb_format_version",), r"format version 1.*Refit the model"),
    ],
)
def test_load_refuses_a_directory_missing_a_field(fitted, tmp_path, array, entry, match):
    model, _, _ = fitted
    path = model.save(tmp_path / "m")
    _remove(path, array=array, entry=entry)
    with pytest.raises(DataValidationError, match=match):
        PerturbModel.load(path)


def test_load_refuses_every_removed_field(fitted, tmp_path):
    model, _, _ = fitted
    for stage, component in model.stages_.items():
        for name, kind, _, _ in state_fields(type(component.state)):
            path = model.save(tmp_path / f"{stage}-{name}")
            if kind == "array":
                _remove(path, array=f"{stage}.{name}")
            else:
                _remove(path, entry=(stage, name))
            with pytest.raises(DataValidationError, match=repr(name)):
                PerturbModel.load(path)


def test_save_load_gives_identical_predictions(fitted, tmp_path):
    model, queries, control = fitted
    back = PerturbModel.load(model.save(tmp_path / "m"))
    assert_array_equal(back.predict_delta(queries), model.predict_delta(queries))
    assert_array_equal(back.predict_scale(queries), model.predict_scale(queries))
    a = model.predict(queries[:2], control=control, n_cells=30, seed=1)
    b = back.predict(queries[:2], control=control, n_cells=30, seed=1)
    assert_array_equal(a.X.toarray(), b.X.toarray())
    # the conformal scores are stored as float32: intervals agree to that precision, and a
    # second round trip changes nothing
    for x, y in zip(model.predict_interval(queries), back.predict_interval(queries), strict=True):
        assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    again = PerturbModel.load(back.save(tmp_path / "m2"))
    for x, y in zip(back.predict_interval(queries), again.predict_interval(queries), strict=True):
        assert_array_equal(x, y)
    assert back.selection_.keys() == model.selection_.keys()


def test_fitted_attributes_read_the_stages(fitted):
    model, _, _ = fitted
    assert model.alpha_ is model.stages_["kernel"].state.alpha
    assert model.shrinkage_ == model.stages_["shrinkage"].state.kind
    with pytest.raises(AttributeError, match=r"stages_\['interactions'\]\.state\.theta"):
        model.theta_ = np.zeros_like(model.theta_)
    with pytest.raises(AttributeError, match="before it is fitted"):
        _ = PerturbModel().alpha_
