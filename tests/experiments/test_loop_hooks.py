"""run_loop's options (features, effect, rng, on_round, model=None) and the replay labs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aivc.experiments import (
    Ledger,
    ReplayLab,
    RoundOutcome,
    ScreenScoresLab,
    SimulatorLab,
    propose,
    run_loop,
)
from aivc.experiments._ledger import COMPLETE, FINISHED


class StopCampaign(Exception):
    """Raised by an on_round callback to end a campaign early."""


def _screen(n: int = 40, seed: int = 0) -> tuple[pd.Series, np.ndarray]:
    rng = np.random.default_rng(seed)
    genes = [f"G{i:02d}" for i in range(n)]
    features = rng.normal(size=(n, 3))
    scores = features @ np.array([1.5, -1.0, 0.5]) + rng.normal(scale=0.2, size=n)
    return pd.Series(scores, index=genes), features


def _by_hand(features, y_of, *, strategy, rounds, batch, rng, **params) -> list[list[int]]:
    """The proposals a campaign with one generator makes, from acquisition alone."""
    measured: list[int] = []
    out = []
    for r in range(rounds):
        name = strategy if r else "random"  # the loop's first batch of a feedback strategy
        batch_idx = propose(
            name,
            features=features,
            measured_idx=np.asarray(measured, dtype=int),
            measured_y=np.asarray([y_of[i] for i in measured], dtype=float),
            batch_size=batch,
            rng=rng,
            **(params if r else {}),
        )
        measured += batch_idx.tolist()
        out.append(batch_idx.tolist())
    return out


@pytest.mark.parametrize("signed", [False, True])
def test_features_rng_and_effect_drive_the_proposals(tmp_path, signed):
    scores, features = _screen()
    genes = list(scores.index)
    effect = (lambda readouts, proposed: readouts.loc[proposed].to_numpy()) if signed else None
    url = tmp_path / "ledger.db"
    report = run_loop(
        url,
        "screen",
        lab=ScreenScoresLab(scores, name="toy"),
        model=None,
        strategy="gp-ucb",
        strategy_params={"beta": 0.5},
        batch_size=4,
        n_rounds=3,
        features=features,
        effect=effect,
        rng=np.random.default_rng(7),
    )
    assert report.status == FINISHED
    # the default effect of a readout is its absolute value; a signed effect seeks large scores
    y = scores.to_numpy() if signed else np.abs(scores.to_numpy())
    expected = _by_hand(
        features, y, strategy="gp-ucb", rounds=3, batch=4, rng=np.random.default_rng(7), beta=0.5
    )
    with Ledger(url) as led:
        props = led.proposals("screen")
        got = [props.loc[props["round"] == r, "candidate"].tolist() for r in (1, 2, 3)]
        assert got == [[genes[i] for i in b] for b in expected]
        res = led.results("screen", profiles=True)
        assert not res["is_control"].any()
        np.testing.assert_array_equal(res["value"], y[[genes.index(c) for c in res["candidate"]]])
        # the readout itself is kept as a one-value profile
        np.testing.assert_array_equal(
            np.concatenate(res["profile"].to_list()),
            scores.loc[res["candidate"]].to_numpy(dtype=np.float32),
        )
        assert (res["n_cells"] == 0).all()
        # no model: no model versions and no predictions
        assert led.model_versions("screen").empty
        assert led.predictions("screen").empty
        config = led.project_config("screen")
        assert config["model"] is None
        assert config["rng"] == "given"
        assert len(config["features_sha256"]) == 64
        assert ("effect" in config) == signed


def test_default_rng_is_per_round_and_differs_from_one_stream(tmp_path):
    scores, features = _screen()
    kw = {
        "lab": ScreenScoresLab(scores),
        "model": None,
        "strategy": "random",
        "batch_size": 5,
        "n_rounds": 2,
        "features": features,
    }
    run_loop(tmp_path / "a.db", "p", seed=3, **kw)
    run_loop(tmp_path / "b.db", "p", rng=np.random.default_rng([3, 1]), **kw)
    with Ledger(tmp_path / "a.db") as a, Ledger(tmp_path / "b.db") as b:
        first_a = a.proposals("p", round=1)["candidate"].tolist()
        first_b = b.proposals("p", round=1)["candidate"].tolist()
        # round 1 of the default is drawn from default_rng([seed, 1]), as the given stream's start
        assert first_a == first_b
        # afterwards the default starts a fresh generator per round, the stream goes on
        assert (
            a.proposals("p", round=2)["candidate"].tolist()
            != b.proposals("p", round=2)["candidate"].tolist()
        )


def test_on_round_sees_each_committed_round_and_can_stop_the_loop(tmp_path):
    scores, features = _screen()
    url = tmp_path / "ledger.db"
    seen: list[RoundOutcome] = []

    def on_round(outcome: RoundOutcome) -> None:
        with Ledger(url) as led:
            # the round is in the ledger when the callback runs
            assert led.state("screen")["round"] == outcome.round
            assert led.rounds("screen")["status"].tolist() == [COMPLETE] * outcome.round
        seen.append(outcome)
        if outcome.round == 2 and len(seen) == 2:
            msg = "stop here"
            raise StopCampaign(msg)

    kw = {
        "lab": ScreenScoresLab(scores),
        "model": None,
        "strategy": "degree-prior",
        "prior": np.abs(scores.to_numpy()),
        "batch_size": 3,
        "n_rounds": 3,
        "features": features,
        "on_round": on_round,
    }
    with pytest.raises(StopCampaign, match="stop here"):
        run_loop(url, "screen", **kw)
    report = run_loop(url, "screen", resume=True, **kw)
    assert report.status == FINISHED
    assert [o.round for o in seen] == [1, 2, 3]
    order = list(scores.abs().sort_values(ascending=False).index)
    assert [o.proposed for o in seen] == [order[0:3], order[3:6], order[6:9]]
    assert seen[-1].measured == order[:9]
    for o in seen:
        assert isinstance(o.measurement, pd.Series)
        np.testing.assert_array_equal(o.values, np.abs(scores.loc[o.proposed].to_numpy()))


def test_option_errors(tmp_path):
    scores, features = _screen()
    lab = ScreenScoresLab(scores)
    url = tmp_path / "ledger.db"
    with pytest.raises(ValueError, match=r"without a model .* pass features="):
        run_loop(url, "a", lab=lab, model=None, strategy="gp-ucb")
    with pytest.raises(ValueError, match="run the loop with model=None"):
        run_loop(url, "a", lab=lab, features=features)
    with pytest.raises(ValueError, match="one row per candidate"):
        run_loop(url, "a", lab=lab, model=None, features=features[:5])
    with pytest.raises(ValueError, match="one finite value per proposed candidate"):
        run_loop(
            url,
            "b",
            lab=lab,
            model=None,
            features=features,
            batch_size=4,
            n_rounds=1,
            effect=lambda readouts, proposed: [1.0],
        )
    with pytest.raises(ValueError, match=r"Unknown candidate 'NOPE'.*genes of the screen"):
        run_loop(url, "c", lab=lab, model=None, features=None, candidates=["G00", "NOPE"])
    with Ledger(url) as led:
        # only the project whose effect failed was created, and nothing of its round is recorded
        assert [p["name"] for p in led.list_projects()] == ["b"]
        assert led.rounds("b").empty


def test_screen_scores_lab_checks_its_table():
    with pytest.raises(ValueError, match="more than one score"):
        ScreenScoresLab(pd.Series([1.0, 2.0], index=["A", "A"]))
    with pytest.raises(ValueError, match="not finite"):
        ScreenScoresLab(pd.Series([1.0, np.nan], index=["A", "B"]))
    with pytest.raises(TypeError, match="pandas Series"):
        ScreenScoresLab({"A": 1.0})
    lab = ScreenScoresLab(pd.Series([1.0, -2.0, 3.0], index=["A", "B", "C"]))
    assert lab.measure(["C", "B"], round=1).to_dict() == {"C": 3.0, "B": -2.0}
    with pytest.raises(ValueError, match="Unknown gene 'D'"):
        lab.measure(["D"], round=1)


def test_replay_lab_reveals_only_what_is_asked(tmp_path):
    from aivc.data._synthetic import synthetic_perturbation_data

    adata, schema = synthetic_perturbation_data(n_genes=40, n_singles=8, n_doubles=0, seed=1)
    lab = ReplayLab(adata, schema=schema, name="toy")
    targets = lab.perturbations
    assert len(targets) == 8 and schema.control_label not in targets
    cells = lab.measure(targets[:2], round=1)
    labels = cells.obs[schema.perturbation_key].astype(str)
    assert set(labels) == {schema.control_label, *targets[:2]}
    assert (labels == schema.control_label).sum() == (
        adata.obs[schema.perturbation_key].astype(str) == schema.control_label
    ).sum()
    with pytest.raises(ValueError, match="perturbations of the replayed screen"):
        lab.measure(["GENE999"], round=1)

    url = tmp_path / "ledger.db"
    features = np.random.default_rng(0).normal(size=(len(targets), 4))
    report = run_loop(
        url, "replay", lab=lab, strategy="gp-ucb", batch_size=3, n_rounds=2, features=features
    )
    assert report.status == FINISHED
    with Ledger(url) as led:
        rounds = led.rounds("replay")
        assert rounds["n_proposals"].tolist() == [3, 3]
        assert rounds["n_results"].tolist() == [3, 3]
        # the loop's own model is refitted on the revealed cells every round
        assert len(led.model_versions("replay")) == 2
        assert set(led.predictions("replay")["candidate"]) == set(targets)
        assert led.project_config("replay")["lab"]["kind"] == "replay"


def test_simulator_lab_can_continue_a_virtual_labs_series(tmp_path):
    from aivc.sim import CONTROL, VirtualLab

    def fresh() -> VirtualLab:
        lab = VirtualLab(n_genes=60, n_cell_types=1, n_drugs=1, seed=4)
        lab.run([CONTROL], n_cells=30, cell_type=lab.cell_types[0])  # a hand-run experiment first
        return lab

    lab = fresh()
    sim_lab = SimulatorLab.from_virtual_lab(
        lab, n_cells=10, n_control_cells=20, continue_series=True
    )
    seen: list[RoundOutcome] = []
    url = tmp_path / "ledger.db"
    kw = {"strategy": "random", "model": None, "batch_size": 3, "n_rounds": 3}

    def stop_after_two(outcome: RoundOutcome) -> None:
        seen.append(outcome)
        if outcome.round == 2:
            msg = "stop"
            raise StopCampaign(msg)

    with pytest.raises(StopCampaign):
        run_loop(url, "series", lab=sim_lab, on_round=stop_after_two, **kw)
    # the rounds were the lab's experiments 2 and 3, as if run by hand
    assert lab.cost.n_experiments == 3
    twin = fresh()
    for outcome in seen:
        by_hand = twin.run(
            [*outcome.proposed, CONTROL], n_cells=[10, 10, 10, 20], cell_type=twin.cell_types[0]
        )
        assert (outcome.measurement.X != by_hand.X).nnz == 0
        assert outcome.measurement.obs_names.equals(by_hand.obs_names)
    assert sim_lab.describe()["series"] == {"virtual_lab": True, "first_experiment": 2}
    # a loop in a lab's own series goes on in step with it, not from another lab
    other = SimulatorLab.from_virtual_lab(
        fresh(), n_cells=10, n_control_cells=20, continue_series=True
    )
    with pytest.raises(RuntimeError, match="cannot resume in another process"):
        run_loop(url, "series", lab=other, resume=True, **kw)
    run_loop(url, "series", lab=sim_lab, resume=True, **kw)
    assert lab.cost.n_experiments == 4
