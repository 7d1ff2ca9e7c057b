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


@pytest.fixture(scope="module")
def held_out_singles():
    """Synthetic knockouts (each lowers its own gene) with four targets held out of training.

    Returns ``(train, schema, held, observed)``: the training AnnData, its schema, the held-out
    targets and their observed changes against the control mean.
    """
    import numpy as np

    from aivc.data import prepare
    from aivc.data._synthetic import synthetic_perturbation_data

    raw, schema = synthetic_perturbation_data(
        n_genes=60, n_singles=14, n_doubles=0, cells_per_condition=20, n_control_cells=80, seed=5
    )
    adata, schema = prepare(raw, schema)
    labels = adata.obs[schema.perturbation_key].astype(str)
    singles = sorted(set(labels) - {schema.control_label})
    held = singles[:4]
    train = adata[~labels.isin(held).to_numpy()].copy()
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    ctrl = x[(labels == schema.control_label).to_numpy()].mean(axis=0)
    observed = np.stack([x[(labels == h).to_numpy()].mean(axis=0) - ctrl for h in held])
    return train, schema, held, observed
