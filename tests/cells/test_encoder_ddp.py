"""The cell encoder trained with DistributedDataParallel on two CPU processes (gloo)."""

from __future__ import annotations

import numpy as np
import pytest

from aivc.cells import CellEncoder
from aivc.data._synthetic import synthetic_perturbation_data


@pytest.fixture(scope="module")
def cells():
    raw, _ = synthetic_perturbation_data(n_genes=60, n_singles=6, n_doubles=0, n_contexts=2, seed=1)
    raw.obs["b"] = raw.obs["cell_type"].astype(str)
    return raw


def _fit(cells, n_processes: int) -> CellEncoder:
    return CellEncoder(
        n_latent=4,
        n_hidden=16,
        gene_embedding="none",
        max_epochs=4,
        batch_size=32,
        seed=3,
        n_processes=n_processes,
    ).fit(cells, batch_key="b")


def test_two_processes_train_in_step_and_as_well_as_one(cells, tmp_path) -> None:
    one = _fit(cells, 1)
    two = _fit(cells, 2)
    # the two ranks ended with the same weights (checked after training), on gloo
    assert two.ddp_ == {"processes": 2, "backend": "gloo", "ranks_in_sync": True}
    assert not hasattr(one, "ddp_")
    assert two.train_seconds_ > 0 and one.train_seconds_ > 0
    # a different random stream per rank: not the same numbers, the same quality
    assert two.history_ != one.history_
    assert two.history_[-1] < two.history_[0]
    assert abs(two.history_[-1] - one.history_[-1]) < 0.1 * one.history_[-1]
    z1, z2 = one.transform(cells), two.transform(cells)
    assert z2.shape == z1.shape and np.isfinite(z2).all()
    # the trained model saves and loads like any other
    path = two.save(tmp_path / "enc")
    again = CellEncoder.load(path)
    np.testing.assert_allclose(again.transform(cells), z2, rtol=1e-5, atol=1e-6)
    # refitted on one process, the model keeps nothing of the process group
    two.n_processes = 1
    two.fit(cells, batch_key="b")
    assert not hasattr(two, "ddp_")


def test_the_number_of_processes_is_checked(cells) -> None:
    with pytest.raises(ValueError, match="n_processes"):
        CellEncoder(n_processes=0, gene_embedding="none").fit(cells)


SCRIPT = """
import hashlib, json, os, sys
from aivc.cells import CellEncoder
from aivc.data._synthetic import synthetic_perturbation_data

raw, _ = synthetic_perturbation_data(n_genes=60, n_singles=6, n_doubles=0, n_contexts=2, seed=1)
enc = CellEncoder(n_latent=4, n_hidden=16, gene_embedding="none", max_epochs=2, batch_size=32)
enc.fit(raw)
digest = hashlib.sha256()
for k, v in sorted(enc.module_.state_dict().items()):
    digest.update(v.numpy().tobytes())
out = {"ddp": enc.ddp_, "checksum": digest.hexdigest(), "loss": enc.history_[-1]}
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as fh:
    json.dump(out, fh)
"""


def test_a_torchrun_launch_trains_one_model_over_its_ranks(tmp_path) -> None:
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = Path(shutil.which("torchrun") or "torchrun")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # one model, trained over two ranks
    assert [r["ddp"]["rank"] for r in ranks] == [0, 1]
    assert all(r["ddp"]["launched_by"] == "torchrun" and r["ddp"]["processes"] == 2 for r in ranks)
