"""``aivc demo``: a short end-to-end run of the virtual cell on real data."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DemoPlan", "demo_plan", "run_demo"]

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
DEMO_TASK = "unseen-single"

#: The Gene Ontology tables (in the data directory's ``genes`` folder) the GO embedding reads;
#: the networks' tables are those of :data:`aivc.genes.NETWORKS`.
GO_TABLES = ("human_go_annotations.tsv.gz", "go_term_parents.tsv.gz")
_SOURCE_NAMES = {"go": "Gene Ontology", "string": "STRING", "huri": "HuRI"}


@dataclass(frozen=True)
class DemoPlan:
    """What the demo runs, given the gene-knowledge tables that are present.

    Attributes
    ----------
    models
        Models to run, in order.
    model_params
        Parameters that replace a model's defaults (empty when every table is present).
    missing_sources
        Knowledge sources (``"go"``, ``"string"``, ``"huri"``) whose tables are absent.
    notes
        One line per model that runs, or is left out, without gene knowledge.
    """

    models: tuple[str, ...]
    model_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing_sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def demo_plan(data_dir: str | Path | None = None) -> DemoPlan:
    """The demo's models, and how each one runs without the gene-knowledge tables.

    With every table present this is the demo's full model list with default
    parameters. Without the Gene Ontology tables, ``linear-knowledge`` is left
    out (it is the ``linear`` model on Gene Ontology embeddings, so without
    them it would repeat the ``linear`` row) and ``nearest-neighbour`` compares
    perturbations through data-derived embeddings instead. ``aivc-perturb``
    skips the missing sources itself and chooses among those left.

    Parameters
    ----------
    data_dir
        Data directory whose ``genes`` folder holds the tables (default:
        ``aivc.settings.data_dir``).
    """
    from aivc.genes import NETWORKS, knowledge_path

    tables = {"go": GO_TABLES, **{s: (NETWORKS[s][0],) for s in ("string", "huri")}}

    def present(files: tuple[str, ...]) -> bool:
        try:
            for f in files:
                knowledge_path(f, data_dir)
        except FileNotFoundError:
            return False
        return True

    missing = tuple(s for s, files in tables.items() if not present(files))
    if not missing:
        return DemoPlan(models=DEMO_MODELS)
    models = DEMO_MODELS
    params: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    if "go" in missing:
        models = tuple(m for m in DEMO_MODELS if m != "linear-knowledge")
        params["nearest-neighbour"] = {"perturbation_embedding": "data"}
        notes += [
            "linear-knowledge: left out; it is the linear model on Gene Ontology embeddings, "
            "so without them it would repeat the linear row.",
            "nearest-neighbour: ran without gene knowledge; perturbations are compared through "
            "data-derived embeddings (each target gene's loadings on the main components of the "
            "training changes) instead of Gene Ontology, and a target outside the measured "
            "genes gets the mean training change.",
        ]
    left = [_SOURCE_NAMES[s] for s in tables if s not in missing]
    notes.append(
        "aivc-perturb: ran without "
        + ", ".join(_SOURCE_NAMES[s] for s in missing)
        + "; it chooses among "
        + (
            "embeddings from the data alone (co-expression in the control cells)"
            if not left
            else "co-expression in the control cells and " + ", ".join(left)
        )
        + ", keeps one only where it lowers the leave-one-target-out error, and otherwise "
        "predicts its prior mean (the mean training change)."
    )
    return DemoPlan(models=models, model_params=params, missing_sources=missing, notes=tuple(notes))


def run_demo(*, out: str | Path, dataset: str = "papalexi2021", seed: int = 0) -> pd.DataFrame:
    """Run the ``unseen-single`` benchmark with the demo's models and summarise it.

    Every perturbation is held out once (5-fold leave-perturbations-out, one
    seed), each model is fitted on the other folds, and the metrics are
    reported as mean ± sd over the folds. Writes the benchmark's results folder
    to ``out/benchmark`` and ``demo_results.csv``, ``demo_results.md`` and
    ``demo.png`` (metric bars with their sd) to ``out``.

    Without the gene-knowledge tables the models run as :func:`demo_plan`
    says, and the results say so.

    Returns
    -------
    Models x (metric mean, metric sd) table; ``attrs["notes"]`` holds the lines
    on the models that ran without gene knowledge (empty with every table).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aivc._io import write_csv_atomic, write_text_atomic
    from aivc.evaluate import run_task

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = demo_plan()
    if plan.missing_sources:
        logger.warning(
            "No %s tables in the data directory: %s (details under the table)",
            ", ".join(_SOURCE_NAMES[s] for s in plan.missing_sources),
            "; ".join(line.split(";")[0] for line in plan.notes),
        )
    result = run_task(
        DEMO_TASK,
        out / "benchmark",
        dataset=dataset,
        models=plan.models,
        seeds=(seed,),
        cell_eval=False,
        model_params=plan.model_params or None,
        notes=" ".join(plan.notes) or None,
    )
    models = result["models"]
    table = pd.DataFrame(
        {
            name: {
                **{f"{m}_mean": models[name][m]["mean"] for m in DEMO_METRICS},
                **{f"{m}_sd": models[name][m]["sd"] for m in DEMO_METRICS},
            }
            for name in models
        }
    ).T
    table.index.name = "model"
    write_csv_atomic(table, out / "demo_results.csv", index=True)
    n_splits = result["split"]["n_splits"]
    md = [
        "| model | " + " | ".join(DEMO_METRICS) + " |",
        "|---|" + "---|" * len(DEMO_METRICS),
    ]
    for name in table.index:
        md.append(
            f"| {name} | "
            + " | ".join(
                f"{table.loc[name, f'{m}_mean']:.3f} ± {table.loc[name, f'{m}_sd']:.3f}"
                for m in DEMO_METRICS
            )
            + " |"
        )
    write_text_atomic(
        out / "demo_results.md",
        f"Every perturbation of {dataset} held out once ({n_splits}-fold leave-perturbations-out, "
        f"seed {seed}; {result['n_conditions']} held-out perturbations); mean ± sd over the folds.\n\n"
        + "\n".join(md)
        + "\n"
        + "".join(f"\n{line}" for line in _knowledge_lines(plan, table))
        + ("\n" if plan.missing_sources else ""),
    )

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    palette = dict(
        zip(
            DEMO_MODELS,
            ["#9e9e9e", "#616161", "#1e88e5", "#43a047", "#fb8c00", "#d81b60"],
            strict=True,
        )
    )
    colors = [palette.get(str(name), "#757575") for name in table.index]
    for ax, metric in zip(axes, ("pearson_delta_de20", "mse_de20"), strict=True):
        ax.bar(
            table.index,
            table[f"{metric}_mean"],
            yerr=table[f"{metric}_sd"],
            capsize=3,
            color=colors,
        )
        ax.set_title(
            metric
            + (" (higher is better)" if metric.startswith("pearson") else " (lower is better)")
        )
        ax.set_ylabel("mean ± sd over folds")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"aivc demo on {dataset}: never-seen perturbations, {n_splits} folds")
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=110)
    plt.close(fig)
    table.attrs["notes"] = _knowledge_lines(plan, table)
    return table


def _knowledge_lines(plan: DemoPlan, table: pd.DataFrame) -> list[str]:
    """The lines the demo prints under its table about the missing gene knowledge."""
    if not plan.missing_sources:
        return []
    lines = [
        "Gene-knowledge tables not found (the 'genes' folder of the data directory; set "
        "AIVC_DATA_DIR to a folder that holds it to run every model with them):",
        *(f"- {line}" for line in plan.notes),
    ]
    if {"aivc-perturb", "train-mean"} <= set(table.index) and np.allclose(
        table.loc["aivc-perturb"].to_numpy(dtype=float),
        table.loc["train-mean"].to_numpy(dtype=float),
        rtol=1e-9,
        atol=1e-12,
        equal_nan=True,
    ):
        lines.append(
            "- aivc-perturb: scored exactly as train-mean here; without gene knowledge it fell "
            "back to its prior mean."
        )
    return lines
