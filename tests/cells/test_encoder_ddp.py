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


def test_the_number_of_processes_is_checked(cells) -> None:
    with pytest.raises(ValueError, match="n_processes"):
        CellEncoder(n_processes=0, gene_embedding="none").fit(cells)
