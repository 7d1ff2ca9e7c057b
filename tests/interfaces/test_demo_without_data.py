"""``aivc demo`` on a machine without the data folder: papalexi2021 ships with aivc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_without_a_data_folder_and_says_the_gene_tables_were_not_found(tmp_path):
    from aivc import settings

    cache = Path(settings.cache_dir)
    if (cache / "data").exists():  # the default data folder (the cache's 'data') must be absent
        cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "AIVC_DATA_DIR"}
    env.update(
        HF_HUB_OFFLINE="1",
        AIVC_CACHE_DIR=str(cache),
        # one thread per library: on a busy machine threads waiting for each other slow it down
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "aivc.interfaces.cli", "demo", "--out", str(out), "-v", "warning"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = (out / "demo_results.md").read_text()
    note = "Gene-knowledge tables not found (the 'genes' folder of the data directory"
    assert note in text and note in r.stdout
    assert "- linear-knowledge: left out" in text
    assert "| aivc-perturb | " in text and "| linear-knowledge |" not in text
    assert (out / "demo.png").stat().st_size > 10_000
