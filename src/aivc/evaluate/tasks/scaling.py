"""Scaling: time and peak memory against the number of cells, Dask workers and training processes.

``aivc benchmark scaling --out DIR`` measures, on simulated screens written to
disk by the simulator (``aivc.sim.write_simulation``, 1,000 genes):

1. **cells**: the out-of-core pipeline (pseudobulk read from disk in blocks,
   then the simple baselines fitted on the training perturbations of 5
   folds and scored on the held-out ones) at 100k, 300k, 1M and 3M cells,
   each in a fresh process whose peak resident memory (``VmHWM``) is read at
   the end; the slope of log time against log cells;
2. **Dask workers**: the same pseudobulk of the 1M-cell screen on a
   ``LocalCluster`` of 1 and 2 worker processes (the result must be
   identical; the cluster's start-up is not timed);
3. **training processes**: the cell encoder trained on 20,000 cells of the
   smallest screen with 1 and 2 DistributedDataParallel processes (time and
   final training loss).

The simulated screens are cached in ``<aivc cache>/scaling/`` (their writing
is timed separately and not part of the curve). ``--variant quick`` runs
small sizes (20k, 60k, 200k cells) for a smoke test.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aivc._io import json_safe
from aivc.evaluate._memory import peak_rss_mb
from aivc.evaluate._results import fmt, machine_info, write_results
from aivc.evaluate.tasks import Task, register_task

__all__ = ["SIZES", "pipeline_on_file", "run_scaling"]

logger = logging.getLogger(__name__)

#: Cells of the scaling curve (the issue's sizes), and of the quick variant.
SIZES = (100_000, 300_000, 1_000_000, 3_000_000)
QUICK_SIZES = (20_000, 60_000, 200_000)
N_GENES = 1000
CHUNK = 50_000
#: Cells and epochs of the training-process comparison.
DDP_CELLS = 20_000
DDP_EPOCHS = 10


def _screen(folder: Path, n_cells: int, seed: int) -> tuple[Path, float]:
    """The simulated screen of ``n_cells`` cells (written once; seconds spent writing it now)."""
    from aivc.sim import write_simulation

    path = folder / f"sim-{n_cells}-{N_GENES}-seed{seed}.zarr"
    if path.exists():
        return path, 0.0
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_simulation(path, n_cells=int(n_cells), n_genes=N_GENES, seed=seed)
    return path, time.perf_counter() - t0


def pipeline_on_file(
    path: str | Path, *, chunk_size: int = CHUNK, n_folds: int = 5
) -> dict[str, Any]:
    """Pseudobulk from disk, then ``control`` and ``train-mean`` on 5 folds of perturbations.

    ``train-mean`` predicts each held-out perturbation's change in a context as
    the mean change of the training perturbations of that context; ``control``
    predicts no change. Returns the mean squared error of each over held-out
    (perturbation, context) pairs, the seconds of each step and the peak
    memory of the calling process.
    """
    from aivc.data._ooc import pseudobulk_from_file, stored_schema

    path = Path(path)
    schema = stored_schema(path)
    t0 = time.perf_counter()
    bulk = pseudobulk_from_file(path, schema, chunk_size=chunk_size)
    t1 = time.perf_counter()
    info = bulk.info
    means = bulk.means.to_numpy()
    is_ctrl = info["perturbation"].to_numpy() == schema.control_label
    ctx = info["context"].astype(str).to_numpy()
    control = {c: means[is_ctrl & (ctx == c)].mean(axis=0) for c in np.unique(ctx[is_ctrl])}
    rows = np.flatnonzero(~is_ctrl & np.isin(ctx, list(control)))
    delta = means[rows] - np.stack([control[c] for c in ctx[rows]])
    perts = info["perturbation"].to_numpy()[rows]
    names = np.unique(perts)
    rng = np.random.default_rng(0)
    fold_of = dict(zip(rng.permutation(names), np.arange(len(names)) % n_folds, strict=True))
    folds = np.array([fold_of[p] for p in perts])
    errors: dict[str, list[float]] = {"control": [], "train-mean": []}
    for k in range(n_folds):
        test, train = folds == k, folds != k
        for c in np.unique(ctx[rows][test]):
            tc = test & (ctx[rows] == c)
            trc = train & (ctx[rows] == c)
            mean_change = delta[trc].mean(axis=0) if trc.any() else np.zeros(delta.shape[1])
            errors["control"] += list((delta[tc] ** 2).mean(axis=1))
            errors["train-mean"] += list(((delta[tc] - mean_change) ** 2).mean(axis=1))
    t2 = time.perf_counter()
    return {
        "n_cells": bulk.n_cells,
        "n_conditions": len(info),
        "n_blocks": bulk.n_blocks,
        "pseudobulk_seconds": t1 - t0,
        "fit_evaluate_seconds": t2 - t1,
        "seconds": t2 - t0,
        "mse": {k: float(np.mean(v)) for k, v in errors.items()},
        "peak_memory_mb": peak_rss_mb(),
    }


def _in_fresh_process(path: Path, chunk_size: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(pipeline_on_file, (str(path),), {"chunk_size": chunk_size})


def _dask_curve(path: Path, workers: Sequence[int], chunk_size: int) -> dict[str, Any]:
    from aivc.data._ooc import dask_client, pseudobulk_from_file, stored_schema

    schema = stored_schema(path)
    reference = pseudobulk_from_file(path, schema, chunk_size=chunk_size)
    seconds, identical = [], []
    for w in workers:
        with dask_client("local", n_workers=int(w)) as client:
            t0 = time.perf_counter()
            res = pseudobulk_from_file(path, schema, chunk_size=chunk_size, client=client)
            seconds.append(time.perf_counter() - t0)
        identical.append(
            bool(
                np.array_equal(res.count_sums.to_numpy(), reference.count_sums.to_numpy())
                and np.array_equal(res.means.to_numpy(), reference.means.to_numpy())
            )
        )
    return {
        "cells": reference.n_cells,
        "workers": [int(w) for w in workers],
        "seconds": seconds,
        "identical_to_one_process": identical,
        "speedup": seconds[0] / seconds[-1] if len(seconds) > 1 else 1.0,
    }


def _ddp_curve(path: Path, processes: Sequence[int]) -> dict[str, Any]:
    import anndata as ad

    from aivc.cells import CellEncoder

    cells = ad.read_zarr(path)[:DDP_CELLS].copy()
    seconds, train_seconds, losses = [], [], []
    for n in processes:
        enc = CellEncoder(gene_embedding="none", max_epochs=DDP_EPOCHS, seed=0, n_processes=int(n))
        t0 = time.perf_counter()
        enc.fit(cells)
        seconds.append(time.perf_counter() - t0)
        train_seconds.append(float(enc.train_seconds_))
        losses.append(float(enc.history_[-1]))
    return {
        "cells": int(cells.n_obs),
        "epochs": DDP_EPOCHS,
        "processes": [int(n) for n in processes],
        "seconds": seconds,
        "train_seconds": train_seconds,
        "final_loss": losses,
        "speedup": seconds[0] / seconds[-1] if len(seconds) > 1 else 1.0,
        "train_speedup": train_seconds[0] / train_seconds[-1] if len(seconds) > 1 else 1.0,
    }


def run_scaling(
    out: str | Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """Run the scaling measurements (see the module docstring) and write ``results.json``."""
    from aivc._settings import settings

    if dataset is not None or models:
        msg = "The scaling task simulates its own screens; it takes no --dataset or --models."
        raise ValueError(msg)
    seed = int(seeds[0]) if seeds else 0
    sizes = QUICK_SIZES if variant == "quick" else SIZES
    folder = Path(settings.cache_dir) / "scaling"
    out = Path(out)
    simulated: dict[int, float] = {}
    paths: dict[int, Path] = {}
    for n in sizes:
        paths[n], simulated[n] = _screen(folder, n, seed)
    runs = []
    for n in sizes:
        logger.info("scaling: pipeline on %d cells", n)
        runs.append(_in_fresh_process(paths[n], CHUNK))
    cells = [r["n_cells"] for r in runs]
    seconds = [r["seconds"] for r in runs]
    slope = float(np.polyfit(np.log(cells), np.log(seconds), 1)[0])
    dask_size = max(n for n in sizes if n <= 1_000_000)
    dask = _dask_curve(paths[dask_size], (1, 2), CHUNK)
    ddp = _ddp_curve(paths[sizes[0]], (1, 2))
    result = {
        "task": "scaling",
        "variant": variant or "default",
        "genes": N_GENES,
        "chunk_size": CHUNK,
        "cells": cells,
        "seconds": seconds,
        "peak_memory_mb": [r["peak_memory_mb"] for r in runs],
        "pseudobulk_seconds": [r["pseudobulk_seconds"] for r in runs],
        "fit_evaluate_seconds": [r["fit_evaluate_seconds"] for r in runs],
        "n_conditions": [r["n_conditions"] for r in runs],
        "mse": [r["mse"] for r in runs],
        "slope": slope,
        "slope_target": [0.85, 1.15],
        # peak memory added per cell from the smallest to the largest screen (0: flat)
        "memory_bytes_per_cell": (
            (runs[-1]["peak_memory_mb"] - runs[0]["peak_memory_mb"])
            * 2**20
            / max(runs[-1]["n_cells"] - runs[0]["n_cells"], 1)
        ),
        "simulate_seconds": {str(k): v for k, v in simulated.items()},
        "dask": dask,
        "ddp": ddp,
        "machine": machine_info(),
    }
    write_results(out, json_safe(result), scaling_markdown(result))
    return json_safe(result)


def scaling_markdown(result: dict[str, Any]) -> str:
    """The scaling tables as Markdown."""
    lines = [
        "# Scaling",
        "",
        f"Simulated screens of {result['genes']:,} genes read from zarr in blocks of "
        f"{result['chunk_size']:,} cells; each size in a fresh process.",
        "",
        "| cells | conditions | seconds | pseudobulk s | fit + evaluate s | peak memory (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for i, n in enumerate(result["cells"]):
        lines.append(
            f"| {n:,} | {result['n_conditions'][i]:,} | {fmt(result['seconds'][i], 1)} | "
            f"{fmt(result['pseudobulk_seconds'][i], 1)} | {fmt(result['fit_evaluate_seconds'][i], 2)} | "
            f"{result['peak_memory_mb'][i]:,.0f} |"
        )
    lo, hi = result["slope_target"]
    lines += [
        "",
        f"Slope of log time on log cells: {fmt(result['slope'], 2)} (target {lo}–{hi}). "
        f"Peak memory grew {fmt(result['memory_bytes_per_cell'], 0)} bytes per cell from the "
        "smallest to the largest screen.",
        "",
    ]
    d, t = result["dask"], result["ddp"]
    lines += [
        f"Dask, {d['cells']:,} cells: "
        + ", ".join(
            f"{w} worker(s) {fmt(s, 1)} s" for w, s in zip(d["workers"], d["seconds"], strict=True)
        )
        + f"; speed-up {fmt(d['speedup'], 2)}×; identical to one process: "
        + f"{all(d['identical_to_one_process'])}.",
        "",
        f"DistributedDataParallel, cell encoder on {t['cells']:,} cells, {t['epochs']} epochs: "
        + ", ".join(
            f"{p} process(es) {fmt(s, 1)} s, of which training loop {fmt(ts, 1)} s (final loss "
            f"{fmt(loss, 2)})"
            for p, s, ts, loss in zip(
                t["processes"], t["seconds"], t["train_seconds"], t["final_loss"], strict=True
            )
        )
        + f"; speed-up {fmt(t['speedup'], 2)}× in all, {fmt(t['train_speedup'], 2)}× in the "
        "training loop (the rest is starting the processes).",
        "",
    ]
    return "\n".join(lines)


register_task(
    Task(
        name="scaling",
        description=(
            "Time and peak memory of the out-of-core pipeline against cells (100k-3M), "
            "Dask workers (1, 2) and training processes (1, 2)"
        ),
        datasets=("simulated",),
        models=(),
        seeds=(0,),
        run=run_scaling,
        variants=("quick",),
    )
)
