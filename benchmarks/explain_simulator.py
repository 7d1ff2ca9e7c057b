"""Explanations against the truth: recovered regulator -> target edges on the simulator.

For held-out perturbed regulators (never measured by the model), the genes a
model predicts to respond most are read as claimed edges and compared with the
simulator's true network, next to random edges and to the measured (observed)
responses of the same perturbations as a ceiling.

    AIVC_DATA_DIR=../shared/data .venv/bin/python benchmarks/explain_simulator.py --out results/explain

Writes ``explain_edges.json`` and ``explain_edges.md``.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd


def run(out: Path, seeds: list[int], models: list[str], k: int) -> pd.DataFrame:
    from aivc.data import prepare
    from aivc.data.splits import kfold_perturbations
    from aivc.evaluate import ResourceMeter
    from aivc.experiments._explain import edge_precision
    from aivc.instruments import get_instrument_class
    from aivc.sim import VirtualCellSimulator, default_design, simulation_schema

    rows = []
    for seed in seeds:
        sim = VirtualCellSimulator(n_genes=1000, n_cell_types=1, seed=seed).build()
        design = default_design(
            sim, n_cells=30_000, max_singles=300, double_fraction=0.0, n_design_drugs=0, seed=seed
        )
        raw, truth = sim.simulate(design, n_batches=1, seed=seed)
        schema = simulation_schema()
        adata, schema = prepare(raw, schema)
        genes = [str(g) for g in adata.var_names]
        pos = {g: i for i, g in enumerate(genes)}
        labels = adata.obs[schema.perturbation_key].astype(str)
        perts = sorted(set(labels) - {schema.control_label})
        split = kfold_perturbations(perts, schema, n_folds=5, seeds=[seed])[0]
        test = [
            p for p in split.test_perturbations if p in pos and len(truth.network.targets_of(p))
        ]
        train_cells = ~labels.isin(split.test_perturbations).to_numpy()
        regs = [pos[p] for p in test]
        targets = [truth.network.targets_of(p) for p in test]
        ctrl = np.asarray(adata.X[(labels == schema.control_label).to_numpy()].mean(axis=0)).ravel()
        observed = np.stack(
            [
                np.asarray(adata.X[(labels == p).to_numpy()].mean(axis=0)).ravel() - ctrl
                for p in test
            ]
        )
        res = edge_precision(observed, regs, targets, k=k)
        rows.append({"seed": seed, "source": "observed (measured ceiling)", **res, "seconds": 0.0})
        rows.append(
            {
                "seed": seed,
                "source": "random edges",
                "precision": res["random_precision"],
                "random_precision": res["random_precision"],
                "enrichment": 1.0,
                "n_regulators": res["n_regulators"],
                "seconds": 0.0,
            }
        )
        for name in models:
            meter = ResourceMeter()
            with meter:
                cls = get_instrument_class(name)
                params = (
                    {"seed": seed} if "seed" in inspect.signature(cls.__init__).parameters else {}
                )
                model = cls(**params)
                model.fit(adata[train_cells], schema, known_genes=genes)
                pred = model.predict_delta(test, contexts=str(truth.cell_types[0]))
            res = edge_precision(pred, regs, targets, k=k)
            rows.append({"seed": seed, "source": name, **res, "seconds": meter.wall_seconds})
    table = pd.DataFrame(rows)
    summary = (
        table.groupby("source", sort=False)
        .agg(
            precision=("precision", "mean"),
            precision_sd=("precision", "std"),
            enrichment=("enrichment", "mean"),
            regulators=("n_regulators", "mean"),
            seconds=("seconds", "mean"),
        )
        .reset_index()
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "explain_edges.json").write_text(
        json.dumps({"k": k, "seeds": seeds, "rows": table.to_dict(orient="records")}, indent=2)
    )
    lines = [
        f"| explanation source | precision@{k} | sd | enrichment over random | held-out regulators | fit+predict s |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary.itertuples():
        lines.append(
            f"| {r.source} | {r.precision:.3f} | {r.precision_sd:.3f} | {r.enrichment:.1f}x | "
            f"{r.regulators:.0f} | {r.seconds:.1f} |"
        )
    (out / "explain_edges.md").write_text("\n".join(lines) + "\n")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/explain"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=["linear", "nearest-neighbour"])
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args()
    summary = run(args.out, args.seeds, args.models, args.k)
    print((args.out / "explain_edges.md").read_text())
    del summary


if __name__ == "__main__":
    main()
