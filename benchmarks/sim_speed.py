"""Speed and memory of streaming simulations to disk.

Runs :func:`aivc.sim.write_simulation` in a fresh Python process for each
case and reports its wall time and peak resident memory. Peak memory is
measured twice: by polling the resident set of the process and all its
children (psutil, every 50 ms) and by the kernel's high-water mark
(``getrusage`` of the finished child, which covers its own children).

Run: ``python benchmarks/sim_speed.py`` (a few minutes); ``--quick`` runs
small cases only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

_CHILD = """
import json, resource, sys, time
import aivc
from aivc.sim import write_simulation
aivc.settings.progress = False
path, n_cells, n_genes, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
files = write_simulation(path, n_cells=n_cells, n_genes=n_genes, seed=seed)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "n_conditions": files.n_conditions}))
"""


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def run_case(path: Path, n_cells: int, n_genes: int, seed: int) -> dict[str, object]:
    """Run one simulation in a child process; return its timings and memory."""
    cmd = [sys.executable, "-c", _CHILD, str(path), str(n_cells), str(n_genes), str(seed)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        msg = f"simulation of {n_cells} cells failed:\n{err}"
        raise RuntimeError(msg)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    inner = json.loads(out.strip().splitlines()[-1])
    return {
        "cells": n_cells,
        "genes": n_genes,
        "format": "zarr" if path.name.endswith(".zarr") else "h5ad",
        "conditions": inner["n_conditions"],
        "write_simulation s": inner["seconds"],
        "process wall s": wall,
        "peak RSS GB (polled, with children)": peak / 1e9,
        "peak RSS GB (getrusage)": (after * 1024 / 1e9) if after > before else float("nan"),
        "output GB": _size(path) / 1e9,
    }


def markdown(rows: list[dict[str, object]]) -> str:
    """Rows of dicts as a markdown table."""
    cols = list(rows[0])

    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the outputs (default: a temporary one)"
    )
    args = parser.parse_args()
    cases = [(100_000, 2000, "h5ad"), (1_000_000, 2000, "zarr")]
    if args.quick:
        cases = [(10_000, 2000, "h5ad"), (50_000, 2000, "zarr")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        rows = []
        for n_cells, n_genes, fmt in cases:
            path = folder / f"sim_{n_cells}x{n_genes}.{fmt}"
            rows.append(run_case(path, n_cells, n_genes, args.seed))
            print(f"done: {n_cells} cells ({rows[-1]['process wall s']:.1f} s)", file=sys.stderr)
    cpu = f"{psutil.cpu_count(logical=True)} logical CPUs"
    print(
        f"## Streaming simulation ({platform.processor() or platform.machine()}, {cpu}, n_jobs={os.cpu_count()})\n"
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
