"""Ablation of the gene representation sources, on unseen single knockouts.

Runs the ``unseen-single`` benchmark (Papalexi 2021, 5-fold leave-perturbations-out, 3 seeds, no
cell-eval) with the knowledge-embedding linear model on:

- each single source (``go``, ``string``, ``huri``, ``text``),
- the fused embedding of all four (``fused``),
- the fused embedding without one source (``fused-minus-<source>``, leave-one-source-out),

next to ``train-mean`` from the same run (same splits), and prints one Markdown row per embedding.
With ``--with-nn`` the nearest-neighbour baseline is run on every embedding as well;
``--embeddings=a,b`` runs only those embeddings (the splits are seeded, so runs on
subsets share splits and the ``train-mean`` row).

Usage: AIVC_DATA_DIR=... python benchmarks/gene_embedding_ablation.py OUT_DIR [--with-nn] [--embeddings=go,fused]
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from aivc.evaluate.tasks import perturbation as _benchmark
from aivc.instruments import KnowledgeLinearModel, NearestNeighbourModel, register_instrument

SOURCES = ("go", "string", "huri", "text")


def _embeddings() -> dict[str, tuple[str, ...]]:
    out = {s: (s,) for s in SOURCES}
    out["fused"] = SOURCES
    for s in SOURCES:
        out[f"fused-minus-{s}"] = tuple(x for x in SOURCES if x != s)
    return out


def _with_sources(base: type, sources: tuple[str, ...]) -> type:
    """A subclass of ``base`` whose knowledge table is the fused embedding of ``sources``."""

    def _knowledge_table(self) -> pd.DataFrame:
        from aivc.genes import fused_embedding, gene_aliases

        table = fused_embedding(sources)[0]
        aliases = gene_aliases()
        extra = {a: s for a, s in aliases.items() if s in table.index and a not in table.index}
        if extra:
            rows = table.loc[list(extra.values())]
            rows.index = list(extra.keys())
            table = pd.concat([table, rows])
        return table

    name = f"Ablation_{base.__name__}_{'_'.join(sources)}"
    return type(name, (base,), {"_knowledge_table": _knowledge_table})


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    with_nn = "--with-nn" in sys.argv
    chosen = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--embeddings=")), None)
    embeddings = _embeddings()
    if chosen is not None:
        wanted = chosen.split(",")
        unknown = [e for e in wanted if e not in embeddings]
        if unknown:
            sys.stderr.write(f"unknown embeddings {unknown}; expected some of {list(embeddings)}\n")
            return 2
        embeddings = {e: embeddings[e] for e in wanted}
    out = Path(args[0] if args else "results/gene-embedding-ablation")
    bases = [("linear", KnowledgeLinearModel)]
    if with_nn:
        bases.append(("nn", NearestNeighbourModel))
    names = []
    for emb, sources in embeddings.items():
        for base_name, cls in bases:
            name = f"{base_name}-{emb}"
            register_instrument(name, description=f"{base_name} with {emb} gene embeddings")(
                _with_sources(cls, sources)
            )
            names.append(name)
    task = replace(_benchmark.PERTURBATION_SPECS["unseen-single"], model_params={})
    _benchmark.PERTURBATION_SPECS["unseen-single-ablation"] = replace(
        task, name="unseen-single-ablation"
    )
    result = _benchmark.run_benchmark(
        "unseen-single-ablation", out=out, models=["train-mean", *names], cell_eval=False
    )
    metrics = ("pearson_delta_de20", "mse_de20", "systema_pearson_delta")
    sys.stdout.write("| model | " + " | ".join(metrics) + " | wall s |\n|---|---|---|---|---|\n")
    for name, entry in result["models"].items():
        cells = [f"{entry[m]['mean']:.3f} ± {entry[m]['sd']:.3f}" for m in metrics]
        wall = result["wall_seconds"].get(name, 0.0)
        sys.stdout.write(f"| {name} | " + " | ".join(cells) + f" | {wall:.1f} |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
