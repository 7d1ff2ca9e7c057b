"""The scaling task's pipeline on a small simulated screen, and its report."""

from __future__ import annotations

import numpy as np
import pytest

from aivc.evaluate.tasks.scaling import pipeline_on_file, scaling_markdown


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    from aivc.sim import write_simulation

    path = tmp_path_factory.mktemp("scaling") / "screen.zarr"
    write_simulation(path, n_cells=3000, n_genes=60, seed=1)
    return path


def test_the_pipeline_reads_the_screen_in_blocks_and_scores_the_baselines(screen) -> None:
    out = pipeline_on_file(screen, chunk_size=700)
    assert out["n_cells"] == 3000 and out["n_blocks"] == 5
    assert out["n_conditions"] > 10
    assert set(out["mse"]) == {"control", "train-mean"}
    assert all(np.isfinite(v) and v >= 0 for v in out["mse"].values())
    assert out["seconds"] >= out["pseudobulk_seconds"] > 0
    assert out["peak_memory_mb"] > 0


def test_the_report_names_every_curve() -> None:
    result = {
        "genes": 1000,
        "chunk_size": 50000,
        "cells": [100, 1000],
        "n_conditions": [5, 5],
        "seconds": [1.0, 10.0],
        "pseudobulk_seconds": [0.9, 9.0],
        "fit_evaluate_seconds": [0.1, 1.0],
        "peak_memory_mb": [300.0, 310.0],
        "slope": 1.0,
        "slope_target": [0.85, 1.15],
        "memory_bytes_per_cell": 11650.8,
        "dask": {"cells": 1000, "workers": [1, 2], "seconds": [2.0, 1.1], "speedup": 1.8,
                 "identical_to_one_process": [True, True]},
        "ddp": {"cells": 200, "epochs": 3, "processes": [1, 2], "seconds": [4.0, 2.5],
                "train_seconds": [3.0, 1.6], "final_loss": [10.0, 10.2], "speedup": 1.6,
                "train_speedup": 1.875},
    }  # fmt: skip
    text = scaling_markdown(result)
    assert "| 1,000 | 5 | 10.0 |" in text
    assert "Slope of log time on log cells: 1.00" in text
    assert "Peak memory grew 11651 bytes per cell" in text
    assert "speed-up 1.80×" in text and "identical to one process: True" in text
    assert "2 process(es) 2.5 s, of which training loop 1.6 s (final loss 10.20)" in text
    assert "1.88× in the training loop" in text
