"""Ablation of the knowledge sources behind the gene embeddings, on unseen single knockouts.

Runs the ``unseen-single`` benchmark (Papalexi 2021, 5-fold leave-perturbations-out, 3 seeds, no
cell-eval) with the linear and nearest-neighbour baselines on each gene embedding, and prints one
Markdown row per (model, embedding), next to ``train-mean`` from the same run.

Usage: AIVC_DATA_DIR=... python benchmarks/gene_embedding_ablation.py OUT_DIR
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from aivc.evaluate import _benchmark
from aivc.instruments import KnowledgeLinearModel, NearestNeighbourModel, register_instrument

EMBEDDINGS = ("go", "string", "huri", "fused")


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "results/gene-embedding-ablation")
    names = []
    for emb in EMBEDDINGS:
        for base, cls in (("linear", KnowledgeLinearModel), ("nn", NearestNeighbourModel)):
            name = f"{base}-{emb}"
            sub = type(f"Ablation_{base}_{emb}", (cls,), {})
            register_instrument(name, description=f"{base} with {emb} gene embeddings")(sub)
            names.append(name)
    params = {n: {"perturbation_embedding": n.split("-", 1)[1]} for n in names}
    task = replace(_benchmark.TASKS["unseen-single"], model_params=params)
    _benchmark.TASKS["unseen-single-ablation"] = replace(task, name="unseen-single-ablation")
    result = _benchmark.run_benchmark(
        "unseen-single-ablation", out=out, models=["train-mean", *names], cell_eval=False
    )
    sys.stdout.write(
        "| model | pearson_delta_de20 | mse_de20 | systema_pearson_delta |\n|---|---|---|---|\n"
    )
    for name, entry in result["models"].items():
        cells = [
            f"{entry[m]['mean']:.3f} ± {entry[m]['sd']:.3f}"
            for m in ("pearson_delta_de20", "mse_de20", "systema_pearson_delta")
        ]
        sys.stdout.write(f"| {name} | " + " | ".join(cells) + " |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
