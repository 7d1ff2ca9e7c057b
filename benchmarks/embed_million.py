"""Embed one million cells from disk, chunk by chunk, with bounded memory.

1. Simulates 1,000,000 cells x 2,000 genes with :func:`aivc.sim.write_simulation`
   into a Zarr store (skipped with ``--reuse`` when the store exists).
2. Trains a small :class:`aivc.cells.CellEncoder` on a subset of the simulated
   cells (rows read from the store in evenly spaced blocks). Simulated genes
   have no knowledge embedding, so the encoder reads them through its learned
   per-gene vectors (``gene_embedding="none"``).
3. Embeds every cell in a fresh process (:func:`aivc.cells.embed_file`, as
   ``aivc embed`` does: chunked reading, embeddings written incrementally to a
   ``.npy`` memory map) and records the wall time of the embedding (inside the
   child, :class:`aivc.evaluate.ResourceMeter`; the process total including
   imports is kept too) and peak resident memory: ResourceMeter's, the parent's
   poll of the child (every 50 ms) and the kernel's high-water mark
   (``getrusage`` of the finished child).
4. Checks the embeddings of the first cells against an in-memory transform.

Results go to ``<out>/results.json`` and ``<out>/results.md``.

Run: ``python benchmarks/embed_million.py --out results/embed-million``
(``--n-cells 100000`` for a quicker run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _train_subset(path: Path, n_train: int, n_blocks: int = 10):
    import anndata as ad
    import pandas as pd
    from anndata.io import read_elem

    from aivc.cells import open_cells

    cells = open_cells(path)
    try:
        batch = np.asarray(read_elem(cells._handle["obs"]["batch"])).astype(str)
        cell_type = np.asarray(read_elem(cells._handle["obs"]["cell_type"])).astype(str)
        per = max(1, n_train // n_blocks)
        starts = np.linspace(0, cells.n_obs - per, n_blocks).astype(int)
        rows = np.concatenate([np.arange(s, s + per) for s in starts])
        import scipy.sparse as sp

        x = sp.vstack([cells.read(s, s + per) for s in starts]).tocsr()
        var = pd.DataFrame(index=cells.var_names)
    finally:
        cells.close()
    obs = pd.DataFrame(
        {"batch": batch[rows], "cell_type": cell_type[rows]}, index=[f"c{i}" for i in rows]
    )
    return ad.AnnData(x.astype(np.float32), obs=obs, var=var), batch, cell_type


_CHILD = """
import json, sys
import aivc
from aivc.cells import CellEncoder, embed_file
from aivc.evaluate import ResourceMeter
aivc.settings.progress = False
model, store, out, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
enc = CellEncoder.load(model)
with ResourceMeter() as meter:
    embed_file(enc, store, out, chunk_size=chunk)
print(json.dumps({"seconds": meter.wall_seconds, "peak_mb": meter.peak_mb, "start_mb": meter.start_mb}))
"""


def _run_child(cmd: list[str]) -> dict[str, float]:
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    inner = json.loads(proc.stdout.read().strip().splitlines()[-1])
    if proc.returncode != 0:
        msg = f"{' '.join(cmd)} failed with exit code {proc.returncode}"
        raise RuntimeError(msg)
    maxrss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "process_seconds": seconds,
        "seconds": inner["seconds"],
        "start_rss_mb": inner["start_mb"],
        "peak_rss_meter_mb": inner["peak_mb"],
        "peak_rss_polled_mb": peak,
        "peak_rss_kernel_mb": maxrss_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("embed-million-results"))
    parser.add_argument("--n-cells", type=int, default=1_000_000)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=20_000)
    parser.add_argument("--train-cells", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--reuse", action="store_true", help="Reuse an existing simulated store.")
    args = parser.parse_args()

    import aivc
    from aivc.cells import CellEncoder, integration_scores
    from aivc.evaluate.tasks.perturbation import _write_json_atomic
    from aivc.sim import write_simulation

    aivc.settings.progress = False
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    store = out / f"sim_{args.n_cells}.zarr"
    if args.reuse and store.exists():
        sim_seconds = None
    else:
        sim_seconds = write_simulation(
            store, n_cells=args.n_cells, n_genes=args.n_genes, seed=0
        ).seconds
        print(f"simulated {args.n_cells} cells in {sim_seconds:.1f} s", flush=True)

    t0 = time.perf_counter()
    train, batch, cell_type = _train_subset(store, args.train_cells)
    enc = CellEncoder(
        n_latent=16,
        n_hidden=64,
        gene_embedding="none",
        n_input_genes=None,
        max_epochs=args.epochs,
        seed=0,
    ).fit(train, batch_key="batch")
    model_dir = out / "encoder"
    enc.save(model_dir, overwrite=True)
    train_seconds = time.perf_counter() - t0
    print(f"trained on {train.n_obs} cells in {train_seconds:.1f} s", flush=True)

    emb = out / "embedding.npy"
    cmd = [sys.executable, "-c", _CHILD, str(model_dir), str(store), str(emb), str(args.chunk_size)]
    run = _run_child(cmd)
    z = np.load(emb, mmap_mode="r")
    assert z.shape == (args.n_cells, enc.n_latent), z.shape
    cells_per_min = args.n_cells / run["seconds"] * 60
    print(
        f"embedded {args.n_cells} cells in {run['seconds']:.1f} s ({cells_per_min:,.0f} cells/min), "
        f"peak RSS {run['peak_rss_polled_mb']:.0f} MB (kernel {run['peak_rss_kernel_mb']:.0f} MB)",
        flush=True,
    )

    # the chunked file path equals the in-memory transform on the training rows
    check = enc.transform(train)
    rows = np.array([int(n[1:]) for n in train.obs_names])
    max_diff = float(np.abs(np.asarray(z[rows]) - check).max())
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(args.n_cells, min(5000, args.n_cells), replace=False))
    scores = integration_scores(np.asarray(z[sample]), cell_type[sample], batch[sample])

    result = {
        "task": "embed-million",
        "n_cells": args.n_cells,
        "n_genes": args.n_genes,
        "chunk_size": args.chunk_size,
        "store": "zarr (v2), CSR",
        "simulate_seconds": sim_seconds,
        "train_cells": int(train.n_obs),
        "train_epochs": args.epochs,
        "train_seconds": train_seconds,
        "embed_seconds": run["seconds"],
        "embed_process_seconds": run["process_seconds"],
        "embed_start_rss_mb": run["start_rss_mb"],
        "peak_rss_meter_mb": run["peak_rss_meter_mb"],
        "cells_per_minute": cells_per_min,
        "peak_rss_mb": run["peak_rss_polled_mb"],
        "peak_rss_kernel_mb": run["peak_rss_kernel_mb"],
        "max_abs_diff_vs_in_memory": max_diff,
        "sample_scores": {k: scores[k] for k in ("nmi", "ari", "label_asw", "batch_asw", "ilisi")},
        "command": "python benchmarks/embed_million.py --out " + str(out),
        "aivc_version": aivc.__version__,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "n_jobs": aivc.settings.n_jobs,
    }
    _write_json_atomic(out / "results.json", result)
    md = [
        "# embed-million",
        "",
        "| cells | genes | chunk | embed wall s (process incl. imports) | cells/min | peak RSS MB (polled / kernel) | train cells, s |",
        "|---|---|---|---|---|---|---|",
        f"| {args.n_cells:,} | {args.n_genes} | {args.chunk_size:,} | {run['seconds']:.1f} ({run['process_seconds']:.1f}) | "
        f"{cells_per_min:,.0f} | {run['peak_rss_polled_mb']:.0f} / {run['peak_rss_kernel_mb']:.0f} | "
        f"{train.n_obs}, {train_seconds:.1f} |",
        "",
        f"Max |difference| between chunked-file and in-memory embeddings of the training rows: {max_diff:.2e}. "
        f"Sample of 5,000 cells: cell-type NMI {scores['nmi']:.3f}, batch ASW {scores['batch_asw']:.3f}.",
        "",
    ]
    tmp = out / ".results.md.tmp"
    tmp.write_text("\n".join(md))
    os.replace(tmp, out / "results.md")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
