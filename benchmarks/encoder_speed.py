"""Speed of the cell encoder and reconstruction of masked genes on real data.

On Baron 2016 human pancreas, for each seed:

1. train a :class:`aivc.cells.CellEncoder` on donors human1-3 (raw counts, donor as batch);
2. on the held-out donor human4, hide 200 randomly chosen decoder genes from the
   encoder's input, embed the cells and decode the hidden genes (scaled by each
   cell's observed total over them); compare with the mean-profile baseline
   (training cells' mean proportions over the same genes): per-gene Pearson
   correlation across cells of log1p counts, and mean Poisson deviance;
3. time the embedding of all 2,142 human cells (in memory) and of the 1,886
   mouse cells through human orthologs (reference mapping without retraining),
   and score the mapping by the accuracy of 15-nearest-neighbour labels from
   the human cells on mouse cells of shared cell types.

Run: ``python benchmarks/encoder_speed.py --out results/encoder`` (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def _knn_transfer(z_ref, ref, z_query, query, k: int = 15) -> float:
    """Accuracy of 15-NN majority labels from human reference cells on mouse cells
    whose (lower-cased) cell type exists in the reference."""
    from sklearn.neighbors import KNeighborsClassifier

    ref_lab = ref.obs["cell_type"].astype(str).str.lower().to_numpy()
    q_lab = query.obs["cell_type"].astype(str).str.lower().to_numpy()
    shared = np.isin(q_lab, np.unique(ref_lab))
    clf = KNeighborsClassifier(n_neighbors=k).fit(z_ref, ref_lab)
    return float((clf.predict(z_query[shared]) == q_lab[shared]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("encoder-results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--n-heldout", type=int, default=200)
    args = parser.parse_args()

    import aivc
    from aivc.cells import CellEncoder, heldout_reconstruction
    from aivc.data import load
    from aivc.evaluate import ResourceMeter
    from aivc.evaluate.tasks.perturbation import _write_json_atomic

    aivc.settings.progress = False
    args.out.mkdir(parents=True, exist_ok=True)
    human = load("baron_human")
    mouse = load("baron_mouse")
    test_mask = (human.obs["donor"].astype(str) == "human4").to_numpy()
    train, test = human[~test_mask].copy(), human[test_mask].copy()
    runs = []
    for seed in args.seeds:
        with ResourceMeter() as fit_meter:
            enc = CellEncoder(max_epochs=args.epochs, seed=seed).fit(train, batch_key="donor")
        rng = np.random.default_rng(seed)
        held = sorted(rng.choice(np.asarray(enc.decoder_genes_), args.n_heldout, replace=False))
        tr = train[:, held].X
        ref_mean = np.asarray(tr.sum(axis=0)).ravel()
        rec = heldout_reconstruction(
            enc, test, held, reference_mean=ref_mean / max(ref_mean.sum(), 1.0)
        )
        with ResourceMeter() as t_human:
            z_human = enc.transform(human)
        with ResourceMeter() as t_mouse:
            z_mouse = enc.transform(mouse, species="mouse")
        knn_acc = _knn_transfer(z_human, human, z_mouse, mouse)
        run = {
            "seed": seed,
            "fit_seconds": fit_meter.wall_seconds,
            "fit_peak_mb": fit_meter.peak_mb,
            "n_reference_genes": len(enc.genes_),
            "reconstruction": rec,
            "transform_human_seconds": t_human.wall_seconds,
            "transform_human_cells_per_min": human.n_obs / t_human.wall_seconds * 60,
            "transform_mouse_seconds": t_mouse.wall_seconds,
            "transform_mouse_cells_per_min": mouse.n_obs / t_mouse.wall_seconds * 60,
            "mouse_knn_accuracy": knn_acc,
        }
        print(json.dumps(run), flush=True)
        runs.append(run)

    def stat(f) -> dict[str, float]:
        v = np.array([f(r) for r in runs], dtype=float)
        return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}

    summary = {
        "pearson_model": stat(lambda r: r["reconstruction"]["pearson_model"]),
        "pearson_mean_baseline": stat(lambda r: r["reconstruction"]["pearson_mean_baseline"]),
        "deviance_model": stat(lambda r: r["reconstruction"]["deviance_model"]),
        "deviance_mean_baseline": stat(lambda r: r["reconstruction"]["deviance_mean_baseline"]),
        "fit_seconds": stat(lambda r: r["fit_seconds"]),
        "transform_human_cells_per_min": stat(lambda r: r["transform_human_cells_per_min"]),
        "transform_mouse_cells_per_min": stat(lambda r: r["transform_mouse_cells_per_min"]),
        "mouse_knn_accuracy": stat(lambda r: r["mouse_knn_accuracy"]),
    }
    result = {
        "task": "encoder-reconstruction-speed",
        "dataset": "baron_human (train human1-3, test human4); baron_mouse for cross-species speed",
        "seeds": args.seeds,
        "epochs": args.epochs,
        "n_heldout_genes": args.n_heldout,
        "runs": runs,
        "summary": summary,
        "n_jobs": aivc.settings.n_jobs,
        "aivc_version": aivc.__version__,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": f"python benchmarks/encoder_speed.py --out {args.out}",
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _write_json_atomic(args.out / "results.json", result)

    def f(k: str) -> str:
        return f"{summary[k]['mean']:.3f} ± {summary[k]['sd']:.3f}"

    md = [
        "# cell encoder: masked-gene reconstruction and speed",
        "",
        f"Held-out donor human4 ({int(test_mask.sum())} cells), {args.n_heldout} genes hidden from the encoder; "
        f"seeds {args.seeds}, {args.epochs} epochs.",
        "",
        "| predictor | per-gene Pearson (log1p) ↑ | Poisson deviance ↓ |",
        "|---|---|---|",
        f"| aivc-encoder decoder | {f('pearson_model')} | {f('deviance_model')} |",
        f"| mean profile (training cells) | {f('pearson_mean_baseline')} | {f('deviance_mean_baseline')} |",
        "",
        f"Fit on {int((~test_mask).sum())} cells: {f('fit_seconds')} s. Embedding speed: "
        f"{summary['transform_human_cells_per_min']['mean']:,.0f} human cells/min, "
        f"{summary['transform_mouse_cells_per_min']['mean']:,.0f} mouse cells/min (incl. ortholog mapping). "
        f"Mouse cells mapped into the human reference: 15-NN cell-type accuracy {f('mouse_knn_accuracy')}.",
        "",
    ]
    tmp = args.out / ".results.md.tmp"
    tmp.write_text("\n".join(md))
    os.replace(tmp, args.out / "results.md")


if __name__ == "__main__":
    main()
