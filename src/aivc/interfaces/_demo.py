"""``aivc demo``: a short end-to-end run of the virtual cell on real data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["run_demo"]

logger = logging.getLogger(__name__)

DEMO_MODELS = (
    "control",
    "train-mean",
    "linear",
    "linear-knowledge",
    "nearest-neighbour",
    "aivc-perturb",
)
DEMO_METRICS = ("pearson_delta_de20", "mse_de20", "direction_acc_de20", "systema_pearson_delta")


def run_demo(*, out: str | Path, dataset: str = "papalexi2021", seed: int = 0) -> pd.DataFrame:
    """Hold out a fifth of the perturbations, fit every baseline, predict and score.

    Writes ``demo_results.csv``, ``demo_results.md`` and ``demo.png`` (metric
    bars and predicted vs observed changes on the top-20 DE genes) to ``out``.

    Returns
    -------
    Models x metrics table (mean over the held-out perturbations).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aivc.data import load, prepare, schema_of
    from aivc.data.splits import kfold_perturbations
    from aivc.evaluate._benchmark import _finite_mean, _observe, _pseudobulk_scores, _training_view
    from aivc.genes import gene_symbols
    from aivc.instruments import make_instrument

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = load(dataset)
    schema = schema_of(raw)
    try:
        known = sorted(gene_symbols())
    except FileNotFoundError:
        known = None
    adata, schema = prepare(raw, schema, known_genes=known)
    perts = sorted(set(adata.obs[schema.perturbation_key].astype(str)))
    split = kfold_perturbations(perts, schema, n_folds=5, seeds=[seed])[0]
    logger.info(
        "held out %d perturbations: %s",
        len(split.test_perturbations),
        ", ".join(split.test_perturbations),
    )
    obs = _observe(adata, schema, seed=seed)
    train = _training_view(obs, split)
    conds = [c for c in obs.conditions if obs.pert_of[c] in split.test_perturbations]
    rows, preds = {}, {}
    coverage = None
    for name in DEMO_MODELS:
        model = make_instrument(name)
        model.fit(train, schema, known_genes=known)  # type: ignore[attr-defined]
        labels = [obs.pert_of[c] for c in conds]
        delta = model.predict_delta(labels)  # type: ignore[attr-defined]
        if "uncertainty" in type(model).capabilities:
            _, low, high = model.predict_interval(labels, level=0.9)  # type: ignore[attr-defined]
            measured = obs.delta.loc[conds].to_numpy()
            coverage = (name, float(np.mean((measured >= low) & (measured <= high))))
        preds[name] = delta
        scores = _pseudobulk_scores(obs, conds, delta)
        rows[name] = {m: _finite_mean(scores[m]) for m in DEMO_METRICS}
    table = pd.DataFrame(rows).T[list(DEMO_METRICS)]
    table.index.name = "model"
    table.to_csv(out / "demo_results.csv")
    md = ["| model | " + " | ".join(DEMO_METRICS) + " |", "|---|" + "---|" * len(DEMO_METRICS)]
    md += [f"| {n} | " + " | ".join(f"{v:.3f}" for v in r) + " |" for n, r in table.iterrows()]
    note = (
        f"\n{coverage[0]}: {coverage[1]:.3f} of the measured changes (held-out perturbation x gene) "
        "lie inside its 90% intervals.\n"
        if coverage
        else ""
    )
    (out / "demo_results.md").write_text(
        f"Held-out perturbations of {dataset} (seed {seed}): {', '.join(split.test_perturbations)}\n\n"
        + "\n".join(md)
        + "\n"
        + note
    )

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = ["#9e9e9e", "#616161", "#1e88e5", "#43a047", "#fb8c00", "#d81b60"]
    for ax, metric in zip(axes[:2], ("pearson_delta_de20", "mse_de20"), strict=True):
        ax.bar(table.index, table[metric], color=colors[: len(table)])
        ax.set_title(
            metric
            + (" (higher is better)" if metric.startswith("pearson") else " (lower is better)")
        )
        ax.tick_params(axis="x", rotation=30)
    best = table["mse_de20"].drop("control").idxmin()
    de = obs.de20.loc[conds].to_numpy()
    observed = obs.delta.loc[conds].to_numpy()[de]
    predicted = preds[best][de]
    axes[2].scatter(observed, predicted, s=10, alpha=0.6, color="#1e88e5", label=best)
    axes[2].scatter(
        observed, preds["train-mean"][de], s=10, alpha=0.4, color="#616161", label="train-mean"
    )
    lim = float(np.abs(np.concatenate([observed, predicted])).max()) * 1.05
    axes[2].plot([-lim, lim], [-lim, lim], color="black", lw=0.8)
    axes[2].set_xlabel("observed change (log-normalised), top-20 DE genes")
    axes[2].set_ylabel("predicted change")
    axes[2].set_title("held-out knockouts: predicted vs observed")
    axes[2].legend()
    fig.suptitle(f"aivc demo on {dataset}: never-seen perturbations ({len(conds)} held out)")
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=110)
    plt.close(fig)
    return table
