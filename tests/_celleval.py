"""Run the ``cell-eval run`` command on a prediction, as users do (shared by tests)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run_cell_eval(pred: Path, real: Path, out: Path) -> None:
    """``cell-eval run`` with the Virtual Cell Challenge profile; fails the test on an error."""
    exe = shutil.which("cell-eval", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("cell-eval is not installed")
    result = subprocess.run(
        [
            exe,
            "run",
            "-ap",
            str(pred),
            "-ar",
            str(real),
            "--pert-col",
            "perturbation",
            "--control-pert",
            "control",
            "--profile",
            "vcc",
            "--num-threads",
            "1",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "agg_results.csv").exists()
