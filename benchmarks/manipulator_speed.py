"""Speed of the ``aivc-perturb`` manipulator: fit on papalexi2021, predict 10,000 profiles with intervals.

Usage: AIVC_DATA_DIR=... .venv/bin/python benchmarks/manipulator_speed.py [--out FILE.json] [--n 10000]

Targets: fit under 2 minutes and 10,000 predicted profiles (means with 90%
intervals) under 10 seconds on 2 CPU cores. Prints one JSON object with the
measured wall times and peak memory (ResourceMeter).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the result to this JSON file"
    )
    parser.add_argument("--n", type=int, default=10_000, help="profiles to predict")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from aivc.data import load, prepare, schema_of
    from aivc.evaluate import ResourceMeter
    from aivc.genes import gene_symbols
    from aivc.instruments import PerturbModel

    raw = load("papalexi2021")
    adata, schema = prepare(raw, schema_of(raw), known_genes=sorted(gene_symbols()))
    known = sorted(gene_symbols())
    with ResourceMeter() as fit_meter:
        model = PerturbModel(seed=args.seed).fit(adata, schema, known_genes=known)
    rng = np.random.default_rng(args.seed)
    # single-gene queries over the whole known gene universe (most never measured)
    pool = [
        g
        for g in model.known_genes_
        if schema.combination_separator not in g and g == g.strip() and g
    ]
    queries = [str(g) for g in rng.choice(pool, args.n, replace=args.n > len(pool))]
    model.predict_interval(queries[:10])  # warm-up (first-call imports)
    with ResourceMeter() as pred_meter:
        delta, lower, upper = model.predict_interval(queries, level=0.9).arrays()
    if not (np.isfinite(delta).all() and (lower <= delta).all() and (delta <= upper).all()):
        sys.stderr.write("predictions or intervals are not finite/ordered\n")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / "model")
        size_mb = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    from aivc import __version__

    result = {
        "dataset": "papalexi2021",
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_training_perturbations": len(set(model.train_perturbations_)),
        "fit_seconds": round(fit_meter.wall_seconds, 2),
        "fit_peak_mb": round(fit_meter.peak_increase_mb, 1),
        "n_predicted": args.n,
        "predict_interval_seconds": round(pred_meter.wall_seconds, 3),
        "predict_peak_mb": round(pred_meter.peak_increase_mb, 1),
        "model_dir_mb": round(size_mb, 1),
        "sources": model.sources_,
        "targets": {"fit_seconds": 120, "predict_interval_seconds": 10},
        "met": {
            "fit": fit_meter.wall_seconds < 120,
            "predict": pred_meter.wall_seconds < 10,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "aivc": __version__,
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_file = args.out.with_suffix(".tmp")
        tmp_file.write_text(text + "\n")
        os.replace(tmp_file, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
