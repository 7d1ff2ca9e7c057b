"""The PRESCIENT peer through its file protocol, with a stand-in for the prescient package.

PRESCIENT is not installed here: a "ready" environment is faked whose python
is the interpreter running the tests, and the shipped script runs against a
small stand-in package with PRESCIENT's interface (``train.run`` calling the
task's ``init_task``, ``commands.train_model``'s parser and config,
``train.model.AutoGenerator._step`` and ``simulate.simulate``) whose
"training" learns one constant velocity from the first to the last
population. The adapter's time scaling, population indexing, simulation and
file exchange are exercised end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ot")

from _timecourses import DRIFT, drifting
from aivc._settings import settings
from aivc.evaluate import _peer_envs as pe
from aivc.evaluate._time_peers import PrescientPeer, installed_time_peers

SHIPPED = Path(pe._script_path("prescient_course")).parent

FAKE = {
    "__init__.py": "",
    "commands/__init__.py": "",
    "commands/train_model.py": """
import argparse, os
from types import SimpleNamespace

def create_parser():
    p = argparse.ArgumentParser()
    p.add_argument("-i", "--data_path", required=True)
    p.add_argument("--out_dir", default="./experiments")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--train_epochs", type=int, default=2500)
    p.add_argument("--pretrain_epochs", type=int, default=500)
    return p

def init_config(args):
    os.makedirs(args.out_dir, exist_ok=True)
    return SimpleNamespace(
        train_epochs=args.train_epochs, pretrain_epochs=args.pretrain_epochs, train_dt=0.1,
        train_sd=0.0, out_dir=args.out_dir, config_pt=os.path.join(args.out_dir, "config.pt"),
    )
""",
    "train/__init__.py": """
import os, torch

def run(args, init_task):
    x, y, w, config = init_task(args)
    # PRESCIENT's loop indexes populations by position and times by the same position
    assert config.start_t == 0 and list(config.train_t) == list(range(1, len(x)))
    assert len(y) == len(x) and config.t == y[-1] - y[0]
    for s in y[1:]:
        assert w[(y[0], s)].shape == (len(x[0]),)
    velocity = (x[-1].mean(0) - x[0].mean(0)) / (y[-1] - y[0])
    torch.save(config.__dict__, config.config_pt)
    name = "train.epoch_{}.pt".format(str(config.train_epochs).rjust(6, "0"))
    torch.save({"model_state_dict": {"velocity": velocity}}, os.path.join(config.out_dir, name))
""",
    "train/model.py": """
import torch

class AutoGenerator(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.register_buffer("velocity", torch.zeros(config.x_dim))

    def _step(self, x, dt, z):
        return x + self.velocity * dt + z * dt ** 0.5
""",
    "simulate/__init__.py": """
import numpy as np, torch

def simulate(xp, tps, celltype, w, model, config, num_sims, num_cells, num_steps, device, tp_subset, celltype_subset):
    out = []
    for s in range(num_sims):
        x = torch.from_numpy(xp[tps == tp_subset][:num_cells]).float()
        steps = [x.numpy()]
        for _ in range(num_steps):
            x = model._step(x, config.train_dt, torch.zeros_like(x))
            steps.append(x.detach().numpy())
        out.append(np.stack(steps))
    return out
""",
}


@pytest.fixture
def fake_prescient(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(settings, "cache_dir", tmp_path / "cache")
    env = tmp_path / "cache" / "peers" / "prescient"
    (env / "bin").mkdir(parents=True)
    python = env / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (env / pe.READY_FILE).write_text(json.dumps({"format": 1, "versions": {}}))
    package = tmp_path / "fake" / "prescient"
    for name, text in FAKE.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    stub = tmp_path / "stub_prescient.py"
    stub.write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(tmp_path / 'fake')!r}, {str(SHIPPED)!r}]\n"
        "import prescient_course\n"
        "prescient_course.main()\n"
    )
    shipped = pe._script_path
    monkeypatch.setattr(
        pe, "_script_path", lambda s: stub if s == "prescient_course" else shipped(s)
    )


def test_the_prescient_peer_is_registered_with_its_licence() -> None:
    assert pe.PEERS["prescient"].licence == "MIT"
    assert (SHIPPED / "prescient_course.py").exists()


def test_prescient_predicts_through_the_file_protocol(fake_prescient) -> None:
    # unequal gaps: time goes to PRESCIENT in units of the mean gap (here 4/3 h)
    full = drifting(times=(0.0, 1.0, 2.0, 4.0))
    train = full[full.obs["time"] != 2.0].copy()
    assert installed_time_peers() == (["prescient"], {})
    model = PrescientPeer(n_components=20, seed=1).fit(train, time_key="time", expression="log")
    for query in (2.0, 6.0):
        cells = model.predict_cells(query, n_cells=240)  # two simulations of the first population
        assert cells.shape == (240, model.components_.shape[0])
        mean = model.center_ + cells.mean(0) @ model.components_
        truth = full[full.obs["time"] == 0.0].X.mean(0) + query * DRIFT
        np.testing.assert_allclose(mean, truth, atol=0.02)


def test_a_missing_prescient_environment_is_named(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(settings, "cache_dir", tmp_path / "empty")
    ready, missing = installed_time_peers()
    assert ready == [] and "aivc peers install prescient" in missing["prescient"]
    from aivc.evaluate.tasks.time import run_time

    with pytest.raises(ValueError, match="aivc peers install prescient"):
        run_time(tmp_path / "out", dataset="sim-timecourse-0", models=["aivc-time", "prescient"])
