"""Does the blend help on data it was not developed on? aivc-perturb with and without it.

Runs ``unseen-single`` and ``unseen-context`` on simulator worlds that were never looked at
while the blend was developed (``sim-world-5`` to ``sim-world-7`` by default), with the
baselines, once with ``aivc-perturb``'s defaults and once with ``blend=False``, on the same
splits (seed 0, 5 folds), and writes one results folder per run and a summary table::

    python benchmarks/blend_check.py OUT [--worlds sim-world-5,sim-world-6,sim-world-7]

``OUT/summary.md`` holds the table (mean over folds, and the fold sd).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aivc._io import write_text_atomic
from aivc.evaluate.tasks.perturbation import run_benchmark

METRICS = ("pearson_delta_de20", "mse_de20")
TASKS = {
    "unseen-single": ["train-mean", "context-mean", "linear", "aivc-perturb"],
    "unseen-context": [
        "train-mean",
        "context-mean",
        "perturbation-elsewhere",
        "linear",
        "aivc-perturb",
    ],
}
VARIANTS = {"blend": {}, "no-blend": {"aivc-perturb": {"blend": False}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--worlds", default="sim-world-5,sim-world-6,sim-world-7")
    args = parser.parse_args()
    rows = [
        "| task | world | metric | aivc-perturb | without the blend | best baseline |",
        "|---|---|---|---|---|---|",
    ]
    for world in args.worlds.split(","):
        for task, models in TASKS.items():
            results = {}
            for variant, params in VARIANTS.items():
                folder = args.out / task / world / variant
                if not (folder / "results.json").exists():
                    run_benchmark(
                        task,
                        out=folder,
                        dataset=world,
                        seeds=(0,),
                        models=models,
                        model_params=params,
                        cell_eval=False,
                    )
                results[variant] = json.loads((folder / "results.json").read_text())["models"]
            for metric in METRICS:
                higher = metric.startswith("pearson")
                base = {
                    m: v[metric]
                    for m, v in results["blend"].items()
                    if m != "aivc-perturb" and metric in v
                }
                best = (max if higher else min)(base, key=lambda m: base[m]["mean"])

                def cell(entry: dict) -> str:
                    sd = entry.get("sd_folds", entry.get("sd"))
                    return f"{entry['mean']:.3f}" + ("" if sd is None else f" ± {sd:.3f}")

                rows.append(
                    f"| {task} | {world} | {metric} | {cell(results['blend']['aivc-perturb'][metric])} "
                    f"| {cell(results['no-blend']['aivc-perturb'][metric])} "
                    f"| {best} {cell(base[best])} |"
                )
    text = "\n".join(rows) + "\n"
    write_text_atomic(args.out / "summary.md", text)
    print(text)


if __name__ == "__main__":
    main()
