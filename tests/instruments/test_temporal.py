"""The temporal manipulator and its baselines: exact on a linear drift, clear errors, persistence."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ot")

from _timecourses import DRIFT, drifting
from aivc.data import DataValidationError
from aivc.instruments import Instrument
from aivc.instruments._temporal import TEMPORAL_MODELS, TemporalManipulator, check_time_course


@pytest.mark.parametrize("name", ["linear-time", "ot-interpolation", "aivc-time"])
def test_an_unseen_time_point_on_a_linear_drift_is_interpolated_exactly(name):
    full = drifting()
    train = full[full.obs["time"] != 2.0].copy()
    model = TEMPORAL_MODELS[name](n_components=10).fit(train, time_key="time", expression="log")
    mean = model.predict_mean(2.0).to_numpy()
    truth = full[full.obs["time"] == 2.0].X.mean(0)
    assert np.abs(mean - truth).max() < 0.05


def test_forecast_beyond_the_last_time_point_follows_the_drift():
    model = TemporalManipulator(n_components=10).fit(drifting(), time_key="time", expression="log")
    assert model.selection_["forecast"]["chosen"] in {
        "linear-time",
        "ot-interpolation",
        "ot-drift",
        "ot-sinkhorn",
    }
    mean = model.predict_mean(5.0).to_numpy()
    assert np.abs(mean - (5.0 + 5.0 * DRIFT + drifting().X[:120].mean(0) - 5.0)).max() < 0.1
    with pytest.raises(ValueError, match="before the first"):
        model.predict_cells(-1.0)


def test_times_as_text_are_read_or_refused():
    data = drifting(times=(24.0, 0.0, 48.0))  # unsorted is fine
    data.obs["time"] = data.obs["time"].map(lambda v: f"{v:g}h")
    assert sorted(set(check_time_course(data, "time"))) == [0.0, 24.0, 48.0]
    data.obs["time"] = "late"
    with pytest.raises(DataValidationError, match="hold no number"):
        check_time_course(data, "time")
    one = drifting(times=(0.0,))
    with pytest.raises(DataValidationError, match="at least two time points"):
        check_time_course(one, "time")
    few = drifting(times=(0.0, 1.0), n=3)
    with pytest.raises(DataValidationError, match="fewer than"):
        check_time_course(few, "time")
    with pytest.raises(DataValidationError, match="No time column"):
        check_time_course(drifting(), "hours")


def test_save_load_gives_identical_forecasts(tmp_path):
    model = TemporalManipulator(n_components=8, seed=3).fit(
        drifting(), time_key="time", expression="log"
    )
    again = Instrument.load(model.save(tmp_path / "t"))
    assert isinstance(again, TemporalManipulator)
    for t in (2.5, 6.0):
        assert np.array_equal(model.predict_cells(t), again.predict_cells(t))
    assert again.selection_ == model.selection_


def test_time_benchmark_reads_a_declared_file(tmp_path):
    from aivc.evaluate.tasks import run_task

    data = drifting(n=40)
    data.obs["hours"] = data.obs.pop("time")
    path = tmp_path / "course.h5ad"
    data.write_h5ad(path)
    result = run_task(
        "time",
        tmp_path / "out",
        dataset=str(path),
        seeds=[0],
        variant="interpolate",
        time_key="hours",
        expression="log",
        models=["nearest-time", "linear-time", "ot-interpolation", "aivc-time"],
    )
    assert result["split"]["held_out_times"] == [1.0, 2.0, 3.0]
    models = result["models"]
    assert models["nearest-time"]["energy_distance_rel"]["mean"] == 1.0
    assert models["ot-interpolation"]["energy_distance_rel"]["mean"] < 0.5
    assert models["linear-time"]["pearson_delta"]["mean"] > 0.9


def test_effect_course_learns_how_effects_unfold_and_covers_them(tmp_path):
    from aivc.instruments._temporal import EffectCourse

    rng = np.random.default_rng(0)
    n, g = 24, 40
    early = rng.normal(0, 1, (n, g))
    mix = rng.normal(0, 0.3, (g, g))  # late effects spread through a fixed "network"
    late = {
        12.0: early @ mix + rng.normal(0, 0.05, (n, g)),
        24.0: 0.2 * early + rng.normal(0, 0.05, (n, g)),
    }
    course = EffectCourse(level=0.9).fit(
        early[:20], {t: v[:20] for t, v in late.items()}, [f"g{j}" for j in range(g)]
    )
    assert course.selection_["24"]["chosen"] == "scaled-persistence"
    assert course.selection_["12"]["chosen"].startswith("kernel-ridge")
    pred, lo, hi = course.predict_interval(early[20:], 24.0)
    assert np.abs(pred - late[24.0][20:]).mean() < 0.1
    assert ((late[24.0][20:] >= lo) & (late[24.0][20:] <= hi)).mean() > 0.8
    with pytest.raises(ValueError, match="learned the times"):
        course.predict_effect(early[20:], 6.0)
    again = Instrument.load(course.save(tmp_path / "effects"))
    assert np.array_equal(
        again.predict_effect(early[20:], 12.0), course.predict_effect(early[20:], 12.0)
    )


def test_fate_probabilities_follow_the_coupling():
    from aivc.instruments._temporal import fate_probabilities

    rng = np.random.default_rng(1)
    late = np.vstack([rng.normal(-5, 0.3, (30, 2)), rng.normal(5, 0.3, (30, 2))])
    labels = ["left"] * 30 + ["right"] * 30
    early = np.vstack([rng.normal(-1, 0.3, (30, 2)), rng.normal(1, 0.3, (30, 2))])
    for entropic in (False, True):
        fates = fate_probabilities(early, late, labels, entropic=entropic)
        assert list(fates.columns) == ["left", "right"]
        assert np.allclose(fates.sum(1), 1.0)
        assert (fates["left"].to_numpy()[:30] > 0.5).all() and (
            fates["right"].to_numpy()[30:] > 0.5
        ).all()
    with pytest.raises(ValueError, match="one label per later cell"):
        fate_probabilities(early, late, labels[:-1])


def test_fates_of_real_reprogramming_cells_are_written_like_cellrank(data_dir):
    from aivc.data import load
    from aivc.instruments._temporal import add_fates

    adata = load("schiebinger2019")
    model = TemporalManipulator().fit(adata, time_key="day", expression="counts", layer="counts")
    fates = add_fates(
        model, adata, time_key="day", label_key="cell_type", from_time=10.0, to_time=11.0
    )
    assert len(fates) == int((adata.obs["day"] == 10.0).sum())
    assert np.allclose(fates.sum(1), 1.0)
    assert set(fates.columns) <= set(adata.obs["cell_type"].astype(str))
    assert adata.obsm["aivc_fates"].shape == (adata.n_obs, fates.shape[1])
    assert adata.uns["aivc_fates"]["to_time"] == 11.0
    with pytest.raises(DataValidationError, match="later"):
        add_fates(model, adata, time_key="day", label_key="cell_type", from_time=11.0, to_time=10.0)
