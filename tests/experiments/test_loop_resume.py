from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aivc.data import DataValidationError
from aivc.experiments._ledger import COMPLETE, FINISHED, PROPOSED, Ledger
from aivc.experiments._loop import ResultsFileLab, SimulatorLab, run_loop

# small but real: a 60-gene virtual cell, 3 rounds of 6 proposals chosen by a GP
SIM = {"n_genes": 60, "n_cells": 20, "n_control_cells": 60}
LOOP = {"model": "linear", "strategy": "gp-ucb", "batch_size": 6, "n_rounds": 3, "seed": 3}
CLI_ARGS = [
    "--model", "linear", "--strategy", "gp-ucb", "--batch-size", "6", "--rounds", "3",
    "--seed", "3", "--sim-genes", "60", "--sim-cells", "20", "--sim-control-cells", "60",
    "--verbosity", "warning",
]  # fmt: skip


def _snapshot(url: str, project: str) -> dict[str, object]:
    """Everything a loop wrote, without database ids and timestamps."""
    with Ledger(url) as led:
        rounds = led.rounds(project)[["round", "strategy", "status", "n_proposals", "n_results"]]
        res = led.results(project, profiles=True)
        pred = led.predictions(project, payload=True)
        models = led.model_versions(project)
        return {
            "state": led.state(project),
            "rounds": rounds.to_dict("records"),
            "proposals": led.proposals(project).to_dict("records"),
            "results": [
                (r, c, bool(k), None if pd.isna(v) else float(v), n, p.tobytes())
                for r, c, k, v, n, p in res[
                    ["round", "candidate", "is_control", "value", "n_cells", "profile"]
                ].itertuples(index=False)
            ],
            "predictions": [
                (r, c, s, p.tobytes())
                for r, c, s, p in pred[["round", "candidate", "score", "payload"]].itertuples(
                    index=False
                )
            ],
            "models": models[["round", "instrument", "params", "content_hash"]].to_dict("records"),
        }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, object]:
    """The ledger of an uninterrupted run (in this process)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('ref') / 'ref.db'}"
    report = run_loop(url, "screen", lab=SimulatorLab(seed=3, **SIM), **LOOP)
    assert report.status == FINISHED
    assert report.rounds_done == 3
    return _snapshot(url, "screen")


def _loop_args(url: str, *extra: str) -> list[str]:
    return [
        "loop", "--ledger", url, "--project", "screen", "--lab", "simulator", *CLI_ARGS, *extra,
    ]  # fmt: skip


def _cli(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "aivc.interfaces.cli", *_loop_args(url, *extra)]


# The `aivc` command with a pause inside the open transaction of one round:
# `python script.py ROUND MARKER ARGS...` runs `aivc ARGS...`, and when that
# round is about to commit (every row already sent to the database) it writes
# its process id to MARKER and sleeps, so the test can kill it there.
_PAUSING_CLI = """
import os
import sys
import time
from pathlib import Path

from aivc.experiments._ledger import Ledger
from aivc.interfaces.cli import main

kill_round, marker = int(sys.argv[1]), Path(sys.argv[2])
commit_round = Ledger.commit_round


def pause():
    marker.write_text(str(os.getpid()))
    time.sleep(600)


def commit_round_pausing(self, record, **kw):
    if record.number == kill_round:
        kw["before_commit"] = pause
    return commit_round(self, record, **kw)


Ledger.commit_round = commit_round_pausing
sys.argv = ["aivc", *sys.argv[3:]]
main()
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra)
    return env


def _kill_mid_round_and_resume(
    url: str, kill_round: int, tmp_path: Path, *, check_refusal: bool = False
) -> None:
    marker = tmp_path / f"paused-{kill_round}"
    log = tmp_path / f"killed-{kill_round}.log"
    script = tmp_path / "pausing_cli.py"
    script.write_text(_PAUSING_CLI)
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(kill_round), str(marker), *_loop_args(url)],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the loop ended before the kill point: {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the loop never reached the kill point")
        time.sleep(0.05)
    # the process is inside round `kill_round`'s open transaction, all its rows already sent
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with Ledger(url) as led:
        # nothing of the killed round survived; everything before it did
        assert led.state("screen") == {"round": kill_round - 1, "status": COMPLETE}
        assert led.rounds("screen")["round"].tolist() == list(range(1, kill_round))
        assert set(led.proposals("screen")["round"]) == set(range(1, kill_round))
        assert set(led.results("screen")["round"]) == set(range(1, kill_round))
    if check_refusal:
        # without --resume an existing project is refused
        r = subprocess.run(_cli(url), env=_env(), capture_output=True, text=True, timeout=240)
        assert r.returncode == 2
        assert "--resume" in r.stderr
    r = subprocess.run(
        _cli(url, "--resume"), env=_env(), capture_output=True, text=True, timeout=240
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "round 3, finished" in r.stdout


@pytest.mark.slow
def test_kill_and_resume_sqlite(tmp_path, reference):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    _kill_mid_round_and_resume(url, 2, tmp_path, check_refusal=True)
    got = _snapshot(url, "screen")
    assert got == reference
    # resuming a finished loop changes nothing
    run_loop(url, "screen", lab=SimulatorLab(seed=3, **SIM), resume=True, **LOOP)
    assert _snapshot(url, "screen") == reference


@pytest.mark.slow
def test_kill_and_resume_postgres(tmp_path, reference):
    from _postgres import fresh_database, postgres_server

    with postgres_server() as server:
        url = fresh_database(server, "loop_resume")
        _kill_mid_round_and_resume(url, 3, tmp_path)
        got = _snapshot(url, "screen")
    assert got == reference


def test_reference_has_no_duplicates(reference):
    """Every ledger entry is written (and read back) once, by its key: a candidate is proposed
    once over all rounds; a round has one row, one model version, and one result and one
    prediction per candidate."""

    def duplicated(keys):
        keys = list(keys)
        return sorted({k for k in keys if keys.count(k) > 1})

    n_rounds, batch = LOOP["n_rounds"], LOOP["batch_size"]
    assert [r["round"] for r in reference["rounds"]] == list(range(1, n_rounds + 1))
    assert [r["status"] for r in reference["rounds"]] == [COMPLETE] * n_rounds
    assert reference["state"] == {"round": n_rounds, "status": FINISHED}
    props = reference["proposals"]
    assert len(props) == n_rounds * batch
    assert duplicated(p["candidate"] for p in props) == []
    assert duplicated((p["round"], p["position"]) for p in props) == []
    assert [m["round"] for m in reference["models"]] == list(range(1, n_rounds + 1))
    # results: (round, candidate, is_control, ...); each round's proposals and its controls
    results = reference["results"]
    assert duplicated(r[:2] for r in results) == []
    assert len(results) == n_rounds * (batch + 1)
    measured = {(r, c) for r, c, is_control, *_ in results if not is_control}
    assert measured == {(p["round"], p["candidate"]) for p in props}
    # predictions: (round, candidate, ...); every candidate once per round
    predictions = reference["predictions"]
    assert duplicated(p[:2] for p in predictions) == []
    assert len(predictions) == n_rounds * SIM["n_genes"]


def test_gp_rounds_differ_from_a_random_draw(tmp_path, reference):
    """The first round is a random draw (nothing is measured yet); the GP chooses the later
    ones, differently from a random draw with the same seed."""
    url = f"sqlite:///{tmp_path / 'random.db'}"
    run_loop(url, "screen", lab=SimulatorLab(seed=3, **SIM), **{**LOOP, "strategy": "random"})
    random_draw = _snapshot(url, "screen")["proposals"]

    def by_round(props):
        return {r: {p["candidate"] for p in props if p["round"] == r} for r in (1, 2, 3)}

    gp, rnd = by_round(reference["proposals"]), by_round(random_draw)
    assert gp[1] == rnd[1]
    assert gp[2] != rnd[2] and gp[3] != rnd[3]


def test_same_seed_same_proposals_other_seed_differs(tmp_path, reference):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    run_loop(url, "screen", lab=SimulatorLab(seed=3, **SIM), **{**LOOP, "n_rounds": 1})
    first = [p for p in reference["proposals"] if p["round"] == 1]
    with Ledger(url) as led:
        assert led.proposals("screen").to_dict("records") == first
    url2 = f"sqlite:///{tmp_path / 'seed.db'}"
    run_loop(url2, "screen", lab=SimulatorLab(seed=3, **SIM), **{**LOOP, "n_rounds": 1, "seed": 4})
    with Ledger(url2) as led:
        assert led.proposals("screen")["candidate"].tolist() != [p["candidate"] for p in first]


def _measure_file(lab: SimulatorLab, perts: list[str], path: Path, *, round: int) -> Path:
    adata = lab.measure(perts, round=round)
    adata.write_h5ad(path)
    return path


def test_results_file_loop_and_bad_uploads(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    sim = SimulatorLab(seed=5, **SIM)
    cands = sim.genes[:30]
    results = tmp_path / "results.h5ad"
    kw = {
        "candidates": cands,
        "model": "linear",
        "strategy": "random",
        "batch_size": 5,
        "n_rounds": 2,
    }
    # unknown genes in the candidate list: a clear error, nothing written
    with pytest.raises(
        ValueError,
        match=r"Unknown candidate 'NOTAGENE'; expected one of the .* genes of the simulated cell",
    ):
        run_loop(url, "bad", lab=sim, candidates=[*cands[:3], "NOTAGENE"], n_rounds=1)
    with Ledger(url) as led:
        assert led.list_projects() == []
    # the first call proposes and waits for results
    report = run_loop(url, "file", lab=ResultsFileLab(results), **kw)
    assert report.status == PROPOSED
    assert len(report.proposed) == 5
    proposed = report.proposed
    before = _file_snapshot(url)
    # malformed uploads are refused with a clear message and write nothing
    results.write_text("candidate,value\nG0001,1.0\n")
    with pytest.raises(DataValidationError, match="not a valid h5ad"):
        run_loop(url, "file", lab=ResultsFileLab(tmp_path / "results.h5ad"), resume=True, **kw)
    partial = tmp_path / "partial.h5ad"
    _measure_file(sim, proposed[:3], partial, round=1)
    with pytest.raises(DataValidationError, match="lacks 2 of the 5"):
        run_loop(url, "file", lab=ResultsFileLab(partial), resume=True, **kw)
    broken = sim.measure(proposed, round=1)
    broken.obs = broken.obs.rename(columns={"perturbation": "guide"})
    broken.write_h5ad(tmp_path / "broken.h5ad")
    with pytest.raises(DataValidationError, match="perturbation"):
        run_loop(url, "file", lab=ResultsFileLab(tmp_path / "broken.h5ad"), resume=True, **kw)
    assert _file_snapshot(url) == before
    # proper results complete round 1 and the loop proposes round 2
    good = _measure_file(sim, proposed, tmp_path / "round1.h5ad", round=1)
    report = run_loop(url, "file", lab=ResultsFileLab(good), resume=True, **kw)
    assert (report.round, report.status) == (2, PROPOSED)
    assert not set(report.proposed) & set(proposed)
    with Ledger(url) as led:
        res = led.results("file", round=1)
        assert sorted(res["candidate"]) == sorted([*proposed, "control"])
        assert len(led.datasets("file")) == 1
        assert np.isfinite(led.predictions("file", round=1)["score"]).all()
    # the same file uploaded again for round 2 is refused
    with pytest.raises(DataValidationError, match="same content"):
        sim2 = sim.measure(report.proposed, round=2)
        sim2.write_h5ad(tmp_path / "round2.h5ad")
        run_loop(url, "file", lab=ResultsFileLab(good), resume=True, **kw)
    report = run_loop(url, "file", lab=ResultsFileLab(tmp_path / "round2.h5ad"), resume=True, **kw)
    assert report.status == FINISHED


def _file_snapshot(url: str) -> tuple:
    with Ledger(url) as led:
        return (
            led.state("file"),
            len(led.results("file")),
            len(led.predictions("file")),
            len(led.datasets("file")),
            len(led.model_versions("file")),
        )


def test_virtual_lab_is_accepted(tmp_path):
    from aivc.sim import VirtualLab

    url = f"sqlite:///{tmp_path / 'vl.db'}"
    lab = VirtualLab(n_genes=60, n_cell_types=2, n_drugs=2, seed=2)
    report = run_loop(url, "vl", lab=lab, model="additive", batch_size=4, n_rounds=2, seed=0)
    assert (report.round, report.status) == (2, FINISHED)
    with Ledger(url) as led:
        props = led.proposals("vl")
        assert len(props) == 8
        assert set(props["candidate"]) <= set(lab.genes)
        assert led.project_config("vl")["lab"]["simulator"] == "given"
    with pytest.raises(ValueError, match="Unknown cell type"):
        SimulatorLab.from_virtual_lab(lab, cell_type="liver")


def test_resume_extends_a_finished_project_to_more_rounds(tmp_path, reference):
    """`aivc loop --resume --rounds 3` could not extend a finished 2-round project."""
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    url = f"sqlite:///{tmp_path / 'grow.db'}"
    rounds = CLI_ARGS.index("--rounds")
    without = CLI_ARGS[:rounds] + CLI_ARGS[rounds + 2 :]  # every setting but --rounds
    base = ["loop", "--ledger", url, "--project", "screen", "--lab", "simulator", *without]
    runner = CliRunner()
    result = runner.invoke(app, [*base, "--rounds", "2"])
    assert result.exit_code == 0, result.output
    assert "round 2, finished" in result.output
    result = runner.invoke(app, [*base, "--rounds", "3", "--resume"])
    assert result.exit_code == 0, result.output
    assert "round 3, finished (1 round(s) run now)" in result.output
    # the same campaign as one run straight through three rounds
    assert _snapshot(url, "screen") == reference
    with Ledger(url) as led:
        assert led.project_config("screen")["n_rounds"] == 3
    # --resume without --rounds keeps the project's own number: nothing left to run
    result = runner.invoke(app, [*base, "--resume"])
    assert result.exit_code == 0, result.output
    assert "round 3, finished (0 round(s) run now)" in result.output
    # fewer rounds than were run are refused, and nothing changes
    with pytest.raises(ValueError, match=r"has run 3 rounds; it cannot have 2"):
        run_loop(
            url, "screen", lab=SimulatorLab(seed=3, **SIM), resume=True, **{**LOOP, "n_rounds": 2}
        )
    assert _snapshot(url, "screen") == reference
    # other settings still have to match the recorded ones
    with pytest.raises(ValueError, match=r"different settings .*batch_size"):
        run_loop(
            url,
            "screen",
            lab=SimulatorLab(seed=3, **SIM),
            resume=True,
            **{**LOOP, "n_rounds": 4, "batch_size": 5},
        )
    with Ledger(url) as led:
        assert led.project_config("screen")["n_rounds"] == 3


def test_each_round_logs_its_own_experiment_id(tmp_path, caplog):
    """Every round of a simulator loop logged 'exp0001'."""
    import logging

    url = f"sqlite:///{tmp_path / 'ids.db'}"
    with caplog.at_level(logging.INFO, logger="aivc.sim"):
        run_loop(
            url,
            "ids",
            lab=SimulatorLab(seed=3, **SIM),
            model="linear",
            strategy="random",
            batch_size=3,
            n_rounds=3,
        )
    ran = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Ran experiment")]
    assert [m.split()[2].rstrip(":") for m in ran] == ["exp0001", "exp0002", "exp0003"]
    cells = SimulatorLab(seed=3, **SIM).measure(["G0001"], round=2)
    assert cells.uns["aivc"]["experiment"] == {"id": 2, "batch": "exp0002"}
    assert cells.obs_names[0].startswith("exp0002_")
