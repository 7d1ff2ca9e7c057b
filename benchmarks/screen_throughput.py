"""Throughput of virtual screens: every pair of a 1,000-gene panel, scored with intervals.

Fits the linear model with Gene Ontology perturbation embeddings, wrapped in
conformal intervals (``conformal`` with base ``linear``, cross-fitted on the
training perturbations), on the real Norman et al. 2019 CRISPRa subset
(``norman2019_subset``), so it accepts any gene with a GO embedding as a
target. A seeded panel of 1,000 such genes gives 499,500 pairs, each scored
under an objective taken from the data (move towards the mean profile of the
KLF1-activated cells) and under a marker objective, with and without the
uncertainty-aware ranking (the plain ``linear`` model has no intervals).
Wall time and peak memory come from :class:`aivc.evaluate.ResourceMeter`.

Run: ``python benchmarks/screen_throughput.py --out results/screen-throughput``
(``--panel-size``, ``--chunk-size`` and ``--dask`` change the case).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("screen-throughput"))
    parser.add_argument("--panel-size", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dask", action="store_true", help="Also run on a 2-worker LocalCluster.")
    parser.add_argument(
        "--custom",
        action="store_true",
        help="Also time a custom objective (profiles are materialised chunk by chunk).",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    import aivc
    from aivc.data import load, prepare, schema_of
    from aivc.evaluate import ResourceMeter
    from aivc.evaluate.tasks.perturbation import _write_json_atomic
    from aivc.experiments._objectives import Objective
    from aivc.experiments._screen import screen
    from aivc.genes import go_embedding
    from aivc.instruments import make_instrument

    aivc.settings.progress = False
    args.out.mkdir(parents=True, exist_ok=True)
    raw = load("norman2019_subset")
    adata, schema = prepare(raw, schema_of(raw))
    embedded = list(go_embedding().index)
    targets = {
        t
        for p in adata.obs[schema.perturbation_key].astype(str).unique()
        for t in schema.targets(p)
    }
    targets.discard(schema.control_label)
    # the training targets must stay accepted when cross-fitting holds them out
    known = sorted(set(embedded) | targets)
    rng = np.random.default_rng(args.seed)
    panel = sorted(rng.choice(embedded, size=args.panel_size, replace=False).tolist())
    n_pairs = len(panel) * (len(panel) - 1) // 2

    models = {}
    fits = {}
    for name, ctor in (
        ("linear-go", lambda: make_instrument("linear", perturbation_embedding="go")),
        (
            "conformal(linear-go)",
            lambda: make_instrument(
                "conformal",
                base="linear",
                base_params={"perturbation_embedding": "go"},
                seed=args.seed,
            ),
        ),
    ):
        with ResourceMeter() as meter:
            models[name] = ctor().fit(adata, schema, known_genes=known)
        fits[name] = {"wall_seconds": meter.wall_seconds, "peak_mb": meter.peak_mb}

    genes = list(map(str, models["linear-go"].genes_))
    klf1 = adata.obs[schema.perturbation_key].astype(str).to_numpy() == "KLF1"
    objectives = {
        "towards:KLF1 cells": Objective.towards_cells(
            adata, genes=genes, mask=klf1, name="towards:KLF1 cells"
        ),
        f"up:{genes[0]}": Objective.up(genes[0], panel=genes),
    }
    if args.custom:
        target = objectives["towards:KLF1 cells"].target

        def mean_abs_distance(mean: np.ndarray) -> np.ndarray:
            return -np.abs(mean - target).mean(axis=1)

        objectives["custom: minus mean absolute distance to KLF1 cells"] = Objective.custom(
            mean_abs_distance, name="custom"
        )
    rows = []
    for model_name, model in models.items():
        for obj_name, obj in objectives.items():
            if obj_name.startswith("custom") and model_name == "linear-go":
                continue
            with ResourceMeter() as meter:
                res = screen(model, pairs_of=panel, objective=obj, chunk_size=args.chunk_size)
            rows.append(
                {
                    "model": model_name,
                    "objective": obj_name,
                    "n_pairs": len(res.table),
                    "pair_method": res.pair_method,
                    "intervals": not res.table["rank_uncertainty"].isna().all(),
                    "wall_seconds": meter.wall_seconds,
                    "pairs_per_second": len(res.table) / meter.wall_seconds,
                    "peak_mb": meter.peak_mb,
                    "peak_increase_mb": meter.peak_increase_mb,
                    "top_by_effect": res.table["candidate"].head(3).tolist(),
                    "top_by_uncertainty": res.table.sort_values("rank_uncertainty")["candidate"]
                    .head(3)
                    .tolist()
                    if not res.table["rank_uncertainty"].isna().all()
                    else None,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            del res
    if args.dask:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            name = "conformal(linear-go)"
            obj = objectives["towards:KLF1 cells"]
            with ResourceMeter() as meter:
                res = screen(
                    models[name],
                    pairs_of=panel,
                    objective=obj,
                    chunk_size=args.chunk_size,
                    client=client,
                )
            rows.append(
                {
                    "model": name + " [dask LocalCluster 2 processes]",
                    "objective": "towards:KLF1 cells",
                    "n_pairs": len(res.table),
                    "pair_method": res.pair_method,
                    "intervals": True,
                    "wall_seconds": meter.wall_seconds,
                    "pairs_per_second": len(res.table) / meter.wall_seconds,
                    "peak_mb": meter.peak_mb,
                    "peak_increase_mb": meter.peak_increase_mb,
                    "top_by_effect": res.table["candidate"].head(3).tolist(),
                    "top_by_uncertainty": None,
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    result = {
        "task": "screen-throughput",
        "dataset": "norman2019_subset",
        "panel_size": len(panel),
        "n_pairs": n_pairs,
        "chunk_size": args.chunk_size,
        "seed": args.seed,
        "fits": fits,
        "runs": rows,
        "aivc_version": aivc.__version__,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    _write_json_atomic(args.out / "results.json", result)
    lines = [
        f"Virtual screen of all {n_pairs:,} pairs of a {len(panel):,}-gene panel "
        f"(model fitted on norman2019_subset, chunk size {args.chunk_size}).",
        "",
        "| model | objective | pairs | intervals | wall (s) | pairs/s | peak RSS (MB) | peak increase (MB) |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['objective']} | {r['n_pairs']:,} | {'yes' if r['intervals'] else 'no'} | "
            f"{r['wall_seconds']:.1f} | {r['pairs_per_second']:,.0f} | {r['peak_mb']:.0f} | {r['peak_increase_mb']:.0f} |"
        )
    lines += ["", "Model fits (not part of the screen timings):", ""]
    for name, f in fits.items():
        lines.append(f"- {name}: {f['wall_seconds']:.1f} s, peak RSS {f['peak_mb']:.0f} MB")
    tmp = args.out / ".results.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, args.out / "results.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
