"""How far ``aivc-perturb`` must pull unmeasured knockouts towards no change, and by which signal.

Usage: AIVC_DATA_DIR=... python benchmarks/shrinkage_frontier.py OUT.csv

On the 15 unseen-single splits of papalexi2021 (5 folds x seeds 0, 1, 2, the
benchmark's own splits), fits ``aivc-perturb`` without shrinkage once per
split and scales each held-out knockout's predicted change by
``|f|^2 / (|f|^2 + c D)`` for a fixed grid of strengths ``c``, with ``D`` either

- ``gp-variance``: the GP's predictive variance summed over genes (as
  ``null_shrinkage="condition"``), or
- ``dispersion``: how much the training changes the prediction draws on
  disagree with it (as ``null_shrinkage="dispersion"``).

The own-gene change of a target in the panel is kept as predicted. Prints,
per signal and strength, the mean over splits of the pseudobulk mean absolute
error of the change over all genes and of the runner's mse_de20 and
pearson_delta_de20, and writes the per-split rows to ``OUT.csv``. Every
strength is shown, so the two signals are compared along their whole
trade-off between mae and mse_de20 rather than at one chosen point; the
model's own strength is chosen per fit on the training targets.

Then, from the training data alone, prints per split the held-out objective
of the model's own choosing rule (``null_shrinkage``; below 1 means ahead of
both baselines on the training targets) for no shrinkage and for the best
strength of each signal.
"""

from __future__ import annotations

import sys

STRENGTHS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def main(out: str) -> int:
    import numpy as np
    import pandas as pd

    from aivc.evaluate import _benchmark as bench
    from aivc.instruments import PerturbModel
    from aivc.instruments._manipulator import _neighbour_dispersion

    data = bench.task_data("unseen-single", None, [0, 1, 2])
    obs = bench._observe(data.adata, data.schema, seed=0)
    rows, choices = [], []
    for split in data.splits:
        train = bench._training_view(obs, split)
        conds = bench._test_conditions(obs, split)
        perts = [obs.pert_of[c] for c in conds]
        model = PerturbModel(null_shrinkage="none", seed=split.seed)
        model.fit(train, data.schema, known_genes=data.known, perturbation_features=data.features)
        full = model.predict_delta(perts)  # with the own-gene change
        observed = obs.delta.loc[conds].to_numpy()
        log_doses = np.zeros(len(perts))
        states = np.stack([model.row_states_[0]] * len(perts))
        f, v, weights = model._gp_singles(perts, log_doses, states, weights=True)
        signals = {
            "gp-variance": v * model.gene_sigma2_.sum(),
            "dispersion": _neighbour_dispersion(weights, model._row_changes(), f),
        }
        if not model.sources_:  # the prior mean alone: nothing to shrink by either signal
            signals = {name: np.zeros(len(perts)) for name in signals}
        own = np.zeros_like(full, dtype=bool)
        for i, j in model._own_gene(perts):
            own[i, j] = True
        ff = (f**2).sum(axis=1)
        for name, d in signals.items():
            for c in STRENGTHS:
                pred = f * (ff / (ff + c * d + 1e-300))[:, None]
                pred[own] = full[own]
                scores = bench._pseudobulk_scores(obs, conds, pred)
                rows.append(
                    {
                        "split": split.name,
                        "seed": split.seed,
                        "signal": name,
                        "strength": c,
                        "mae": float(np.abs(pred - observed).mean()),
                        "mse_de20": float(scores["mse_de20"].mean()),
                        "pearson_delta_de20": float(scores["pearson_delta_de20"].mean()),
                    }
                )
        objectives = {}
        for kind in ("condition", "dispersion"):
            chooser = PerturbModel(null_shrinkage=kind, seed=split.seed)
            chooser.fit(
                train, data.schema, known_genes=data.known, perturbation_features=data.features
            )
            scored = {
                key.split("|", 1)[1]: value["objective"]
                for key, value in chooser.selection_.items()
                if key.startswith("null-shrinkage|") and "objective" in value
            }
            objectives["none"] = scored["none"]
            objectives[kind] = min(v for key, v in scored.items() if key != "none")
        choices.append({"split": split.name, **objectives})
        print(split.name, "sources:", "+".join(model.sources_) or "prior mean", flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out, index=False)
    summary = table.groupby(["signal", "strength"])[["mae", "mse_de20", "pearson_delta_de20"]]
    print(summary.mean().round(4).to_string())
    choice = pd.DataFrame(choices).set_index("split")
    print("\nheld-out objective of the choosing rule on the training targets (best strength):")
    print(choice.round(3).to_string())
    print(
        "none above 1:",
        int((choice["none"] > 1).sum()),
        "| dispersion below condition:",
        int((choice["dispersion"] < choice["condition"] - 1e-12).sum()),
        "equal:",
        int((abs(choice["dispersion"] - choice["condition"]) <= 1e-12).sum()),
        "of",
        len(choice),
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1]))
