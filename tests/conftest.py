from __future__ import annotations

import os
from pathlib import Path

import pytest

from aivc import settings


def _data_dir() -> Path | None:
    env = os.environ.get("AIVC_DATA_DIR")
    if env and Path(env).is_dir():
        return Path(env)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if d is None:
        pytest.skip("AIVC_DATA_DIR is not set to a folder with the datasets")
    settings.data_dir = d
    return d


@pytest.fixture
def synthetic():
    from aivc.data._synthetic import synthetic_perturbation_data

    return synthetic_perturbation_data(
        n_genes=60, n_singles=8, n_doubles=3, cells_per_condition=20, n_control_cells=40
    )


@pytest.fixture
def prepared(synthetic):
    from aivc.data import prepare

    adata, schema = synthetic
    return prepare(adata, schema)
