"""The benchmark runner: every model and every baseline, same splits, same metrics.

``run_benchmark("unseen-single", out="results/unseen-single")`` loads the
task's dataset, makes seeded splits, fits each model on each training split,
predicts the held-out conditions, scores them with aivc's pseudobulk metrics
and cell-eval's Virtual Cell Challenge metrics, scales each metric between
the train-mean baseline and a split-half replicate of the data, and writes
``results.json``, ``results.md``, ``splits.json`` and ``per_condition.csv``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._io import json_safe, write_csv_atomic
from aivc._progress import progress
from aivc._settings import settings
from aivc.data._changes import observed_changes
from aivc.data._preprocess import (
    CONDITION_SEP,
    condition_labels,
    differential_expression,
    dose_label,
    highly_variable_genes,
    prepare,
    pseudobulk,
    treatment_labels,
)
from aivc.data._registry import load, schema_of
from aivc.data._schema import PerturbationSchema
from aivc.data._validate import read_h5ad
from aivc.data.splits import (
    Split,
    kfold_perturbations,
    leave_one_context_out,
    leave_one_double_out,
    save_splits,
)
from aivc.evaluate._memory import ResourceMeter
from aivc.evaluate._metrics import (
    METRICS,
    centroid_accuracy,
    direction_acc_de20,
    energy_distance,
    mse_de20,
    pearson_delta,
    pearson_delta_de20,
    scaled_score,
    systema_pearson_delta,
    top_de_mask,
)
from aivc.evaluate._results import fmt, machine_info, summarize, write_results
from aivc.evaluate.tasks import Task, knowledge_from, register_task
from aivc.evaluate.tasks._out_of_core import is_out_of_core, run_out_of_core

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["PERTURBATION_SPECS", "PerturbationSpec", "run_benchmark"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerturbationSpec:
    """A benchmark task: dataset, split family, models and preprocessing."""

    name: str
    dataset: str
    description: str
    split_kind: str
    models: tuple[str, ...]
    make_splits: Callable[[AnnData, PerturbationSchema, Sequence[int]], list[Split]]
    n_top_genes: int | None = None
    n_folds: int | None = None
    max_cells_per_condition: int = 500
    max_control_cells: int = 2000
    notes: str = ""
    model_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Builds the dataset instead of loading it: seed -> (raw AnnData, known targets, target features).
    build: Callable[[int], tuple[AnnData, list[str] | None, pd.DataFrame | None]] | None = None
    cell_eval: bool = True
    #: The model every scaled score is measured from (0 = as good as it).
    zero_point: str = "train-mean"
    #: What the task needs of a dataset given by path (shown by ``--help`` and ``--list``).
    accepts: str = "a perturbation column and a control label"


def _perts(adata: AnnData, schema: PerturbationSchema) -> list[str]:
    return sorted(set(adata.obs[schema.perturbation_key].astype(str)))


def _unseen_single_splits(
    adata: AnnData, schema: PerturbationSchema, seeds: Sequence[int]
) -> list[Split]:
    return kfold_perturbations(_perts(adata, schema), schema, n_folds=5, seeds=seeds)


def _combination_splits(
    adata: AnnData, schema: PerturbationSchema, seeds: Sequence[int]
) -> list[Split]:
    return leave_one_double_out(_perts(adata, schema), schema)


def _context_splits(
    adata: AnnData, schema: PerturbationSchema, seeds: Sequence[int]
) -> list[Split]:
    assert schema.context_key is not None
    return leave_one_context_out(
        adata.obs[schema.context_key].astype(str), _perts(adata, schema), schema
    )


def _pair_splits(
    adata: AnnData, schema: PerturbationSchema, seeds: Sequence[int], n_folds: int = 5
) -> list[Split]:
    """Hold out (perturbation, context) pairs whose perturbation stays measured elsewhere.

    Every condition whose perturbation was measured in at least two contexts is
    held out once per seed, in ``n_folds`` folds of shuffled conditions; the
    other contexts of the perturbation, and the other perturbations of the
    context, stay in training.
    """
    if schema.context_key is None:
        msg = (
            "unseen-context needs a context column (cell type, cell line, donor); "
            "declare it (--context-key) in the dataset's schema."
        )
        raise ValueError(msg)
    pert = adata.obs[schema.perturbation_key].astype(str).to_numpy()
    ctx = adata.obs[schema.context_key].astype(str).to_numpy()
    perturbed = pert != schema.control_label
    pairs = sorted(set(zip(pert[perturbed], ctx[perturbed], strict=True)))
    n_ctx: dict[str, int] = {}
    for p, _ in pairs:
        n_ctx[p] = n_ctx.get(p, 0) + 1
    eligible = [(p, c) for p, c in pairs if n_ctx[p] >= 2]
    if len(eligible) < 2:
        msg = (
            "unseen-context needs perturbations measured in at least two contexts; "
            f"found {len(eligible)} such (perturbation, context) pairs."
        )
        raise ValueError(msg)
    perts = sorted({p for p, _ in pairs})
    k = min(n_folds, len(eligible))
    out = []
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(eligible))
        for fold in range(k):
            held = tuple(sorted(_condition(*eligible[i]) for i in order[fold::k]))
            out.append(
                Split(
                    f"seed{seed}-fold{fold}",
                    "leave-pairs-out",
                    seed,
                    tuple(sorted({eligible[i][0] for i in order[fold::k]})),
                    tuple(perts),
                    tuple(sorted({eligible[i][1] for i in order[fold::k]})),
                    test_conditions=held,
                )
            )
    return out


#: Size of the simulator task (genes, cells, singles per cell type, doubles per single).
SIMULATOR_SETTINGS = {
    "n_genes": 1000,
    "n_cells": 60_000,
    "max_singles": 500,
    "double_fraction": 0.4,
}


def _build_simulation(seed: int) -> tuple[AnnData, list[str], pd.DataFrame]:
    """The simulator task's data: >=1,000 genes, 500 singles + 200 doubles, 4 drugs x 4 doses, 2 cell types."""
    from aivc.sim import VirtualCellSimulator, default_design

    sim = VirtualCellSimulator(
        n_genes=SIMULATOR_SETTINGS["n_genes"], n_cell_types=2, seed=seed
    ).build()
    design = default_design(
        sim,
        n_cells=SIMULATOR_SETTINGS["n_cells"],
        max_singles=SIMULATOR_SETTINGS["max_singles"],
        double_fraction=SIMULATOR_SETTINGS["double_fraction"],
        min_cells_per_condition=30,
        seed=seed,
    )
    adata, _ = sim.simulate(design, n_batches=2, seed=seed)
    features = pd.DataFrame(
        np.asarray(sim.drugs_.features, dtype=float), index=[str(n) for n in sim.drugs_.names]
    )
    known = [*map(str, sim.genes), *features.index]
    return adata, known, features


#: Prefix of the simulated worlds any perturbation task reads by name (``sim-world-3``):
#: 400 genes, 3 cell types that all receive the same 80 knockouts, 15,000 cells; the
#: number is the simulator's seed, so each name is a different regulatory network.
WORLD_PREFIX = "sim-world-"


def _simulate_world(seed: int, module_fraction: float = 0.0) -> tuple[AnnData, Any]:
    """The measured cells of a ``sim-world``-shaped world, and its simulator."""
    from aivc.sim import VirtualCellSimulator, default_design

    sim = VirtualCellSimulator(
        n_genes=400, n_cell_types=3, seed=seed, module_fraction=module_fraction
    ).build()
    design = default_design(
        sim,
        n_cells=15_000,
        max_singles=80,
        double_fraction=0.0,
        n_design_drugs=0,
        min_cells_per_condition=40,
        seed=seed,
    )
    adata, _ = sim.simulate(design, n_batches=2, seed=seed)
    return adata, sim


def build_world(seed: int) -> tuple[AnnData, list[str], pd.DataFrame | None]:
    """The simulated world ``sim-world-<seed>``: raw counts, its known targets, no features."""
    adata, sim = _simulate_world(seed)
    return adata, [str(g) for g in sim.genes], None


#: Prefix of the simulated worlds with functional modules and a knowledge base
#: (``sim-module-world-3``): the shape of ``sim-world-<seed>`` with 20 % of the genes in
#: complexes and pathways (the presets' share), and the world's "good" simulated knowledge
#: base, which the models read instead of the real gene tables while they run.
MODULE_WORLD_PREFIX = "sim-module-world-"


def build_module_world(seed: int) -> tuple[AnnData, list[str], pd.DataFrame | None, Path]:
    """The world ``sim-module-world-<seed>``: raw counts, its targets, no features, and the
    folder of its simulated knowledge base (under the cache directory; rewritten each time)."""
    from aivc.sim import simulated_knowledge, write_knowledge

    adata, sim = _simulate_world(seed, module_fraction=0.2)
    folder = Path(settings.cache_dir) / "worlds" / f"{MODULE_WORLD_PREFIX}{seed}" / "knowledge"
    write_knowledge(folder, simulated_knowledge(sim.network_, sim.modules_, "good", seed=seed))
    return adata, [str(g) for g in sim.genes], None, folder


#: Prefix of the simulated drug x genetic worlds (``sim-drug-genetic-0``): one cell type, 8
#: knockouts of regulators, 3 drugs at 1 µM, and every knockout combined with every drug.
DRUG_GENETIC_PREFIX = "sim-drug-genetic-"
#: Concentration (µM) of every drug of a drug x genetic world: inside the simulated drugs'
#: potency range (EC50 0.01-10 µM), so most drugs act without saturating.
DRUG_GENETIC_DOSE = 1.0


def build_drug_genetic_world(seed: int) -> tuple[AnnData, list[str], pd.DataFrame | None]:
    """The world ``sim-drug-genetic-<seed>``: knockouts, drugs and every knockout + drug pair.

    400 genes, one cell type; 8 regulators knocked out, the simulator's first 3
    drugs at :data:`DRUG_GENETIC_DOSE`, and the 24 pairs of a knockout with a
    drug (labels ``GENE+D001``, the dose in ``obs["dose"]``); 150 cells per
    condition and 600 controls. The combinations task holds out each pair in
    turn and predicts it from the singles and the other pairs.
    """
    from aivc.sim import CONTROL, VirtualCellSimulator

    sim = VirtualCellSimulator(n_genes=400, n_cell_types=1, seed=seed).build()
    net = sim.network_
    rng = np.random.default_rng([seed, 43])
    knockouts = [str(net.gene_names[g]) for g in np.sort(rng.permutation(net.regulators)[:8])]
    drugs = [str(d) for d in sim.drugs[:3]]
    pairs = [f"{k}+{d}" for k in knockouts for d in drugs]
    labels = [CONTROL, *knockouts, *drugs, *pairs]
    design = pd.DataFrame(
        {
            "perturbation": labels,
            "cell_type": sim.cell_types[0],
            "dose": [0.0 if p in (CONTROL, *knockouts) else DRUG_GENETIC_DOSE for p in labels],
            "n_cells": [600] + [150] * (len(labels) - 1),
        }
    )
    adata, _ = sim.simulate(design, n_batches=2, seed=seed)
    return adata, [*map(str, sim.genes), *drugs], None


#: Families of simulated datasets named by seed: prefix -> (what it is, its builder).
_WORLD_FAMILIES: dict[str, tuple[str, Callable[[int], tuple[Any, ...]]]] = {
    WORLD_PREFIX: ("A simulated world", build_world),
    MODULE_WORLD_PREFIX: ("A simulated world with modules", build_module_world),
    DRUG_GENETIC_PREFIX: ("A drug x genetic world", build_drug_genetic_world),
}


def _world_of(dataset: str | None) -> tuple[str, int] | None:
    """``(prefix, seed)`` of a dataset named ``<prefix><seed>`` of a simulated family."""
    if dataset is None:
        return None
    for prefix, (what, _) in _WORLD_FAMILIES.items():
        if dataset.startswith(prefix):
            tail = dataset[len(prefix) :]
            if not tail.isdigit():
                msg = f"{what} is named {prefix}<seed>, e.g. '{prefix}0'; got {dataset!r}."
                raise ValueError(msg)
            return prefix, int(tail)
    return None


def _simulator_splits(
    adata: AnnData, schema: PerturbationSchema, seeds: Sequence[int]
) -> list[Split]:
    """GEARS-style splits on the simulation, one per seed.

    Held out: 20% of the genetic singles ("unseen single"); half of the doubles,
    labelled by how many of their genes were seen as singles ("seen k/2"); one
    drug at every dose ("unseen drug"); and for each other drug one of its
    doses ("unseen dose", given as a perturbation-at-dose label).
    """
    assert schema.dose_key is not None
    pert = adata.obs[schema.perturbation_key].astype(str)
    dose = pd.to_numeric(adata.obs[schema.dose_key]).to_numpy(dtype=float)
    perts = sorted(set(pert) - {schema.control_label})
    drug_mask = dose > 0
    drugs = sorted(set(pert[drug_mask]))
    singles = sorted(p for p in perts if schema.order(p) == 1 and p not in drugs)
    doubles = sorted(p for p in perts if schema.order(p) == 2)
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        test_singles = set(rng.choice(singles, round(0.2 * len(singles)), replace=False))
        test_doubles = set(rng.choice(doubles, round(0.5 * len(doubles)), replace=False))
        held_drug = drugs[seed % len(drugs)] if drugs else None
        categories = dict.fromkeys(sorted(test_singles), "unseen single")
        train_singles = set(singles) - test_singles
        for d in test_doubles:
            seen = sum(t in train_singles for t in schema.targets(d))
            categories[d] = f"seen {seen}/2"
        tests = set(test_singles) | test_doubles
        if held_drug is not None:
            tests.add(held_drug)
            categories[held_drug] = "unseen drug"
        for drug in drugs:
            if drug == held_drug:
                continue
            levels = sorted(set(dose[(pert == drug).to_numpy()]))
            if len(levels) >= 3:
                level = levels[1 + int(rng.integers(len(levels) - 2))]  # an interior dose
                label = dose_label(drug, level)
                tests.add(label)
                categories[label] = "unseen dose"
        train = sorted(set(perts) - (tests & set(perts)))
        out.append(
            Split(
                f"seed{seed}",
                "simulator-gears",
                seed,
                tuple(sorted(tests)),
                tuple(train),
                categories=categories,
            )
        )
    return out


_COMMON = ("control", "train-mean", "linear", "linear-knowledge", "nearest-neighbour")

PERTURBATION_SPECS: dict[str, PerturbationSpec] = {
    t.name: t
    for t in [
        PerturbationSpec(
            name="unseen-single",
            dataset="papalexi2021",
            description="Predict never-seen CRISPR knockouts (5-fold leave-perturbations-out, 3 seeds)",
            split_kind="leave-perturbations-out",
            n_folds=5,
            models=(*_COMMON, "aivc-perturb", "gears"),
            make_splits=_unseen_single_splits,
        ),
        PerturbationSpec(
            name="combinations",
            dataset="norman2019_subset",
            description="Predict a held-out double from the singles and the other doubles (leave-one-double-out)",
            split_kind="leave-one-double-out",
            models=(
                "control",
                "train-mean",
                "additive",
                "linear",
                "linear-knowledge",
                "nearest-neighbour",
                "aivc-perturb",
                "gears",
            ),
            make_splits=_combination_splits,
        ),
        PerturbationSpec(
            name="unseen-cell-type",
            dataset="kang2018",
            description="Predict a held-out cell type's IFN-beta response from its control cells (leave-one-cell-type-out)",
            split_kind="leave-one-context-out",
            models=("control", "train-mean", "linear", "nearest-neighbour", "aivc-perturb"),
            make_splits=_context_splits,
            n_top_genes=2000,
            notes="additive and linear-knowledge need several perturbations and are not defined for one stimulus; "
            "GEARS does not model cell types.",
        ),
        PerturbationSpec(
            name="unseen-context",
            dataset="kang2018",
            description=(
                "Predict a perturbation in a context where it was never measured, from its "
                "measurements in other contexts (leave-(perturbation, context)-pairs-out, 5 folds)"
            ),
            split_kind="leave-pairs-out",
            n_folds=5,
            models=(
                "control",
                "train-mean",
                "context-mean",
                "perturbation-elsewhere",
                "linear",
                "nearest-neighbour",
                "aivc-perturb",
            ),
            make_splits=_pair_splits,
            n_top_genes=2000,
            zero_point="context-mean",
            accepts="a perturbation column, a control label and a context column (--context-key)",
            notes="Scaled scores are measured from context-mean, the mean change of the training "
            "perturbations of the same context (train-mean where the context has none).",
        ),
        PerturbationSpec(
            name="simulator",
            dataset="aivc-simulator",
            description=(
                "Mechanistic simulation (1,000 genes, 2 cell types, 500 singles, 200 doubles, 4 drugs x 4 doses): "
                "unseen singles, doubles with 0/1/2 genes seen, unseen drugs, unseen doses"
            ),
            split_kind="simulator-gears",
            models=(
                "control",
                "train-mean",
                "additive",
                "linear",
                "nearest-neighbour",
                "aivc-perturb",
            ),
            make_splits=_simulator_splits,
            build=_build_simulation,
            cell_eval=False,
            model_params={"nearest-neighbour": {"perturbation_embedding": "data"}},
            notes="Simulated gene names have no Gene Ontology knowledge, so the data-embedding variants are used; "
            "drugs are described by the simulator's drug features (linear, nearest-neighbour) and doses enter "
            "as log10(dose). cell-eval metrics are skipped on this task (1,400 conditions); use the pseudobulk "
            "and energy metrics.",
        ),
    ]
}


# ----------------------------------------------------------------------------- data views
@dataclass
class _Observed:
    """Everything about the observed data that does not depend on a model."""

    adata: AnnData
    schema: PerturbationSchema
    conditions: list[str]  # condition labels (perturbation | context)
    pert_of: dict[str, str]
    ctx_of: dict[str, str | None]
    delta: pd.DataFrame  # condition x genes
    control_mean: dict[str | None, np.ndarray]
    exclude: pd.DataFrame  # condition x genes bool (targets)
    de20: pd.DataFrame  # condition x genes bool
    reference: np.ndarray  # mean perturbed centroid (as a change)
    labels: np.ndarray  # condition label per cell (or control label)
    dose_of: dict[str, float]
    treatment_of: dict[str, str]  # perturbation with its dose


def _condition(p: str, c: str | None) -> str:
    return p if c is None else p + CONDITION_SEP + c


def _observe(adata: AnnData, schema: PerturbationSchema, seed: int) -> _Observed:
    means, info = pseudobulk(adata, schema)
    is_ctrl = info["perturbation"].to_numpy() == schema.control_label
    control_mean = {
        (None if c is None else str(c)): means.to_numpy()[i]
        for i, c in zip(np.flatnonzero(is_ctrl), info["context"].to_numpy()[is_ctrl], strict=True)
    }
    # the truth: each condition against the pooled controls of its context
    delta, rows = observed_changes(adata, schema, control="context")
    conds = list(rows.index)
    ctx_of = {k: (None if c is None else str(c)) for k, c in rows["context"].items()}
    pert_of = {k: str(p) for k, p in rows["perturbation"].items()}
    genes = adata.var_names
    exclude = pd.DataFrame(False, index=conds, columns=genes)
    for k in conds:
        targets = [t for t in schema.targets(pert_of[k]) if t in genes]
        exclude.loc[k, targets] = True
    de = differential_expression(adata, schema, seed=seed)
    gpos = {g: i for i, g in enumerate(genes)}
    ranks = [[gpos[g] for g in de[k].index] for k in conds]
    de20 = pd.DataFrame(
        top_de_mask(ranks, len(genes), exclude.to_numpy()), index=conds, columns=genes
    )
    pert = adata.obs[schema.perturbation_key].astype(str).to_numpy()
    labels = np.where(
        pert == schema.control_label, pert, condition_labels(adata, schema).to_numpy()
    )
    dose_of = {k: float(d) for k, d in rows["dose"].items()}
    return _Observed(
        adata=adata,
        schema=schema,
        conditions=conds,
        pert_of=pert_of,
        ctx_of=ctx_of,
        delta=delta,
        control_mean=control_mean,
        exclude=exclude,
        de20=de20,
        reference=delta.to_numpy().mean(axis=0),
        labels=np.asarray(labels, dtype=object),
        dose_of=dose_of,
        treatment_of={k: dose_label(pert_of[k], dose_of[k]) for k in conds},
    )


def _cells(obs: _Observed, cond: str) -> np.ndarray:
    return np.flatnonzero(obs.labels == cond)


def _control_cells(obs: _Observed, ctx: str | None) -> np.ndarray:
    schema = obs.schema
    mask = obs.labels == schema.control_label
    if ctx is not None:
        mask &= (obs.adata.obs[schema.context_key].astype(str) == ctx).to_numpy()
    return np.flatnonzero(mask)


def _controls_of(obs: _Observed, ctxs: Sequence[str | None]) -> np.ndarray:
    """Control rows of the given contexts, contexts in first-seen order (never a set's order,
    which changes with the hash seed and would change the cells a seeded model samples)."""
    return np.concatenate([_control_cells(obs, c) for c in dict.fromkeys(ctxs)])


def _dense_rows(x: object, rows: np.ndarray) -> np.ndarray:
    sub = x[rows]  # type: ignore[index]
    return sub.toarray() if sp.issparse(sub) else np.asarray(sub)


# ----------------------------------------------------------------------------- metrics
def _pseudobulk_scores(
    obs: _Observed, conds: list[str], pred: np.ndarray, observed: np.ndarray | None = None
) -> pd.DataFrame:
    o = obs.delta.loc[conds].to_numpy() if observed is None else observed
    ex = obs.exclude.loc[conds].to_numpy()
    de = obs.de20.loc[conds].to_numpy()
    return pd.DataFrame(
        {
            "pearson_delta": pearson_delta(pred, o, ex),
            "pearson_delta_de20": pearson_delta_de20(pred, o, de),
            "mse_de20": mse_de20(pred, o, de),
            "direction_acc_de20": direction_acc_de20(pred, o, de),
            "systema_pearson_delta": systema_pearson_delta(pred, o, obs.reference, ex),
        },
        index=conds,
    )


class _EnergyScorer:
    """Energy distance in the PCA space of each context's observed cells."""

    def __init__(
        self, obs: _Observed, *, n_components: int = 20, max_cells: int = 300, seed: int = 0
    ) -> None:
        from sklearn.decomposition import PCA

        self.obs = obs
        self.max_cells = max_cells
        self.rng = np.random.default_rng(seed)
        self.pca: dict[str | None, Any] = {}
        self._observed: dict[str, np.ndarray] = {}
        self._control: dict[str | None, np.ndarray] = {}
        self._base: dict[str, float] = {}
        x = obs.adata.X
        # contexts in first-seen order (a set's order changes with the hash seed between runs)
        for ctx in dict.fromkeys(obs.ctx_of[c] for c in obs.conditions):
            rows = np.concatenate(
                [_control_cells(obs, ctx)]
                + [_cells(obs, c) for c in obs.conditions if obs.ctx_of[c] == ctx]
            )
            rows = self._sample(rows, 4000)
            data = _dense_rows(x, rows)
            k = min(n_components, data.shape[1] - 1, data.shape[0] - 1)
            self.pca[ctx] = PCA(n_components=k, random_state=0).fit(data)

    def _sample(self, rows: np.ndarray, n: int) -> np.ndarray:
        return rows if len(rows) <= n else self.rng.choice(rows, n, replace=False)

    def embed(self, ctx: str | None, cells: np.ndarray) -> np.ndarray:
        return self.pca[ctx].transform(cells)

    def observed(self, cond: str) -> np.ndarray:
        """The condition's observed cells (a seeded sample drawn once, so every model meets the same cells)."""
        if cond not in self._observed:
            rows = self._sample(_cells(self.obs, cond), self.max_cells)
            self._observed[cond] = self.embed(
                self.obs.ctx_of[cond], _dense_rows(self.obs.adata.X, rows)
            )
        return self._observed[cond]

    def control(self, ctx: str | None) -> np.ndarray:
        """The context's control cells (a seeded sample drawn once)."""
        if ctx not in self._control:
            rows = self._sample(_control_cells(self.obs, ctx), self.max_cells)
            self._control[ctx] = self.embed(ctx, _dense_rows(self.obs.adata.X, rows))
        return self._control[ctx]

    def relative(
        self, cond: str, predicted_cells: np.ndarray, observed_cells: np.ndarray | None = None
    ) -> float:
        """Energy distance of predicted to observed cells over that of the control cells.

        ``observed_cells`` replaces the condition's observed sample (the
        replicate scores one half of the cells against the other half).
        """
        ctx = self.obs.ctx_of[cond]
        p = self.embed(ctx, predicted_cells[: self.max_cells])
        if observed_cells is None:
            o = self.observed(cond)
            if cond not in self._base:
                self._base[cond] = energy_distance(self.control(ctx), o)
            base = self._base[cond]
        else:
            o = self.embed(ctx, observed_cells[: self.max_cells])
            base = energy_distance(self.control(ctx), o)
        return float(energy_distance(p, o) / base) if base > 1e-12 else float("nan")


def _celleval_frames(
    obs: _Observed,
    conds: list[str],
    cells_of: dict[str, np.ndarray],
    control_rows: np.ndarray,
    seed: int,
    real_rows_of: dict[str, np.ndarray] | None = None,
) -> tuple[AnnData, AnnData]:
    """Real and predicted AnnData for cell-eval with condition labels as perturbations."""
    import anndata as ad

    schema = obs.schema
    key = schema.perturbation_key
    rng = np.random.default_rng(seed)
    real_rows, real_labels, pred_blocks, pred_labels = [], [], [], []
    for c in conds:
        rows = _cells(obs, c) if real_rows_of is None else real_rows_of[c]
        rows = rows if len(rows) <= 300 else rng.choice(rows, 300, replace=False)
        real_rows.append(rows)
        real_labels += [c] * len(rows)
        pred_blocks.append(cells_of[c])
        pred_labels += [c] * len(cells_of[c])
    ctrl = (
        control_rows if len(control_rows) <= 600 else rng.choice(control_rows, 600, replace=False)
    )
    x = obs.adata.X
    real_x = sp.vstack([sp.csr_matrix(x[np.concatenate([*real_rows, ctrl])])]).tocsr()
    real_obs = pd.DataFrame({key: [*real_labels, *[schema.control_label] * len(ctrl)]})
    real_obs.index = [f"r{i}" for i in range(len(real_obs))]
    pred_ctrl = sp.csr_matrix(
        x[rng.choice(control_rows, min(len(control_rows), 600), replace=False)]
    )
    pred_x = sp.vstack([*(sp.csr_matrix(b) for b in pred_blocks), pred_ctrl]).tocsr()
    pred_obs = pd.DataFrame({key: [*pred_labels, *[schema.control_label] * pred_ctrl.shape[0]]})
    pred_obs.index = [f"p{i}" for i in range(len(pred_obs))]
    var = pd.DataFrame(index=obs.adata.var_names.copy())
    real = ad.AnnData(X=real_x.astype(np.float32), obs=real_obs, var=var)
    pred = ad.AnnData(X=pred_x.astype(np.float32), obs=pred_obs, var=var.copy())
    return real, pred


# ----------------------------------------------------------------------------- the runner
def _training_view(obs: _Observed, split: Split) -> AnnData:
    schema = obs.schema
    pert = obs.adata.obs[schema.perturbation_key].astype(str).to_numpy()
    train = np.isin(pert, [*split.train_perturbations, schema.control_label])
    if split.test_contexts is None:
        # held-out treatments (a perturbation, or a perturbation at one dose) leave training
        treat = treatment_labels(obs.adata, schema).to_numpy()
        train &= ~np.isin(treat, list(split.test_perturbations))
    if split.test_conditions is not None:
        # held-out (perturbation, context) pairs leave training; the rest of each stays
        train &= ~np.isin(obs.labels, list(split.test_conditions))
    elif split.test_contexts is not None:
        ctx = obs.adata.obs[schema.context_key].astype(str).to_numpy()
        train &= ~(np.isin(ctx, split.test_contexts) & (pert != schema.control_label))
    return obs.adata[train].copy()


def _test_conditions(obs: _Observed, split: Split) -> list[str]:
    if split.test_conditions is not None:
        held = set(split.test_conditions)
        return [c for c in obs.conditions if c in held]
    out = []
    tests = set(split.test_perturbations)
    for c in obs.conditions:
        if obs.pert_of[c] not in tests and obs.treatment_of[c] not in tests:
            continue
        if split.test_contexts is not None and obs.ctx_of[c] not in split.test_contexts:
            continue
        out.append(c)
    return out


def _replicate(
    obs: _Observed, energy: _EnergyScorer, n_halvings: int, seed: int
) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]]:
    """Per-condition scores of one half of the cells predicting the other half (mean of halvings)."""
    rng = np.random.default_rng(seed + 10_000)
    x = obs.adata.X
    tables, halves = [], []
    for _ in range(n_halvings):
        a_delta, b_delta, cells_a, cells_b, rows_b = [], [], {}, {}, {}
        for c in obs.conditions:
            rows = rng.permutation(_cells(obs, c))
            h = len(rows) // 2
            base = obs.control_mean[obs.ctx_of[c]]
            a = _dense_rows(x, rows[:h])
            b = _dense_rows(x, rows[h : 2 * h])
            a_delta.append(a.mean(0) - base)
            b_delta.append(b.mean(0) - base)
            cells_a[c] = a
            cells_b[c] = b
            rows_b[c] = rows[h : 2 * h]
        pa, pb = np.asarray(a_delta), np.asarray(b_delta)
        t = _pseudobulk_scores(obs, obs.conditions, pa, observed=pb)
        t["energy_distance_rel"] = [
            energy.relative(c, cells_a[c], observed_cells=cells_b[c]) for c in obs.conditions
        ]
        tables.append(t)
        halves.append({"pred": pa, "obs": pb, "cells_a": cells_a, "rows_b": rows_b})
    table = sum(tables[1:], tables[0]) / len(tables)
    return table, {"halves": halves}  # type: ignore[dict-item]


def _finite_mean(v: pd.Series | np.ndarray) -> float:
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _read_dataset(dataset: str, data_dir: str | Path | None) -> tuple[str, AnnData]:
    """A registered dataset by name, or an ``.h5ad`` file by path: (name for the results, data)."""
    path = Path(dataset).expanduser()
    if dataset.endswith(".h5ad") or path.is_file():
        return path.stem, read_h5ad(path)
    return dataset, load(dataset, data_dir=data_dir)


@dataclass
class TaskData:
    """A perturbation task's prepared data and splits, shared by every runner that scores it.

    ``known`` holds the names models accept as targets: the measured genes and every
    target of the dataset (the names of held-out targets are part of the question,
    their measurements are not).
    """

    adata: AnnData
    schema: PerturbationSchema
    dataset: str
    known: list[str]
    features: pd.DataFrame | None
    splits: list[Split]
    knowledge: Path | None = None


def task_data(
    task: str,
    dataset: str | None,
    seeds: Sequence[int],
    *,
    data_dir: str | Path | None = None,
    schema: PerturbationSchema | None = None,
) -> TaskData:
    """Load, prepare and split the data of perturbation task ``task``.

    ``dataset`` is a registered name or the path of an ``.h5ad`` file; a file
    is read with ``schema`` when given, otherwise with the schema it carries in
    ``uns["aivc"]["schema"]``.
    """
    spec = PERTURBATION_SPECS[task]
    features: pd.DataFrame | None = None
    knowledge: Path | None = None
    world = _world_of(dataset)
    if spec.build is not None and dataset is None:
        dataset_name = spec.dataset
        raw, known, features = spec.build(seeds[0])
        schema = schema or schema_of(raw)
    elif world is not None:
        prefix, seed = world
        dataset_name = str(dataset)
        raw, known, features, *rest = _WORLD_FAMILIES[prefix][1](seed)
        knowledge = rest[0] if rest else None
        schema = schema or schema_of(raw)
    else:
        dataset_name, raw = _read_dataset(dataset or spec.dataset, data_dir)
        if schema is None:
            try:
                schema = schema_of(raw)
            except KeyError:
                msg = (
                    f"The dataset {dataset_name!r} carries no aivc schema; declare its columns "
                    f"({spec.accepts}): --perturbation-key, --control-label, --context-key, "
                    "--batch-key, --counts-layer."
                )
                raise ValueError(msg) from None
        known = None
        try:
            from aivc.genes import gene_symbols

            # a target may be any gene symbol, or any measured gene (a user's own panel)
            known = sorted(gene_symbols(data_dir) | set(map(str, raw.var_names)))
        except FileNotFoundError:
            logger.info(
                "No gene table in the data directory; targets are checked against the measured genes only"
            )
    adata, schema = prepare(raw, schema, known_genes=known)
    fit_known = sorted(
        set(adata.var_names)
        | {
            t
            for p in adata.obs[schema.perturbation_key].astype(str).unique()
            for t in schema.targets(p)
        }
    )
    if spec.n_top_genes is not None:
        mask = highly_variable_genes(adata, schema, n_top_genes=spec.n_top_genes)
        adata = adata[:, mask].copy()
    splits = spec.make_splits(adata, schema, list(seeds))
    if spec.split_kind in {"leave-one-double-out", "leave-one-context-out"}:
        # deterministic split families are repeated once per seed (cell sampling differs)
        splits = [
            Split(
                f"seed{s}-{sp_.name}",
                sp_.kind,
                s,
                sp_.test_perturbations,
                sp_.train_perturbations,
                sp_.test_contexts,
                sp_.categories,
            )
            for s in seeds
            for sp_ in splits
        ]
    return TaskData(adata, schema, dataset_name, fit_known, features, splits, knowledge)


def _peer_record(name: str, info: dict[str, Any]) -> dict[str, Any]:
    """What the results keep of a published peer's run: version, licence and configuration."""
    from aivc.evaluate._peer_envs import get_peer

    return {
        "version": info.get("version", ""),
        "torch": info.get("torch", ""),
        "licence": get_peer(name).licence,
        "steps": info.get("steps"),
        "config": info.get("config", {}),
        "n_train_cells": info.get("n_train_cells"),
        "clipped_values": info.get("clipped_values", 0),
    }


def run_benchmark(
    task: str,
    *,
    out: str | Path,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    data_dir: str | Path | None = None,
    n_halvings: int = 5,
    cell_eval: bool | None = None,
    peers_first_seed: Sequence[str] = ("gears", "state", "biolord", "cellflow"),
    model_params: dict[str, dict[str, Any]] | None = None,
    notes: str | None = None,
    schema: PerturbationSchema | None = None,
    out_of_core: bool | None = None,
) -> dict[str, Any]:
    """Run a benchmark task and write its results.

    Parameters
    ----------
    task
        One of :data:`PERTURBATION_SPECS` (``unseen-single``, ``combinations``, ``unseen-cell-type``).
    out
        Output directory (created).
    dataset
        Registered dataset to use instead of the task's default (same schema roles).
    models
        Registered instrument names; default: the task's models (``gears`` only where installed).
    seeds
        Seeds; each seed repeats the splits (for k-fold: reshuffled folds) and cell sampling.
        Default 0, 1 and 2; 0 alone for a dataset read out of core (every condition is
        still tested once).
    data_dir
        Data directory (default ``aivc.settings.data_dir``).
    n_halvings
        Random halvings of the cells averaged for the replicate ceiling.
    cell_eval
        Also compute cell-eval's Virtual Cell Challenge metrics (default: the task's setting).
    peers_first_seed
        Slow peer models run on the first seed's splits only (every condition
        once); their mean and sd are then over those splits (folds), and their
        scaled scores use the baseline on the same splits.
    model_params
        Constructor parameters per model name, on top of the task's own.
    notes
        A sentence added to the task's notes in the results (e.g. how models ran).
    schema
        The columns of a dataset given by path (default: the schema it carries).
    out_of_core
        Read the dataset from disk in blocks instead of loading it
        (:mod:`aivc.evaluate.tasks._out_of_core`: pseudobulk metrics only,
        Welch's t for the top-20 DE genes). Default: for a ``sim:`` world
        (``sim:replogle``) or a ``.zarr`` store.

    Returns
    -------
    The content of ``results.json``.
    """
    from aivc._version import __version__
    from aivc.instruments._registry import get_instrument_class

    if task not in PERTURBATION_SPECS:
        msg = f"Unknown benchmark task {task!r}; expected one of {sorted(PERTURBATION_SPECS)}."
        raise ValueError(msg)
    spec = PERTURBATION_SPECS[task]
    if model_params or notes:
        extra = {name: dict(p) for name, p in (model_params or {}).items()}
        spec = dataclasses.replace(
            spec,
            model_params={**spec.model_params, **extra},
            notes=f"{spec.notes} {notes or ''}".strip(),
        )
    if cell_eval is None:
        cell_eval = spec.cell_eval
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if out_of_core is None:
        out_of_core = is_out_of_core(dataset)
    # a screen read out of core is large: one seed (every condition tested once) unless asked
    seeds = list(seeds) if seeds is not None else ([0] if out_of_core else [0, 1, 2])
    if len(seeds) < 1:
        msg = "At least one seed is needed."
        raise ValueError(msg)
    model_names = list(models) if models else list(spec.models)
    if models is None and "gears" in model_names:
        try:
            get_instrument_class("gears")
            import gears  # noqa: F401
        except (ImportError, KeyError):
            logger.warning("GEARS is not installed; its row is left out (pip install cell-gears)")
            model_names.remove("gears")
    for m in model_names:
        get_instrument_class(m)  # fail early on unknown names
    if spec.zero_point not in model_names:
        model_names.insert(0, spec.zero_point)
    if out_of_core:
        if dataset is None:
            msg = "The out-of-core runner reads a dataset from disk; name it (--dataset)."
            raise ValueError(msg)
        return _run_out_of_core(
            spec, out, dataset, model_names, models is None, seeds, schema, data_dir
        )

    data = task_data(task, dataset, seeds, data_dir=data_dir, schema=schema)
    adata, schema, dataset_name = data.adata, data.schema, data.dataset
    fit_known, features, splits = data.known, data.features, data.splits
    save_splits(splits, out / "splits.json")
    logger.info(
        "%s on %s: %d cells x %d genes, %d splits, models %s",
        task,
        dataset_name,
        adata.n_obs,
        adata.n_vars,
        len(splits),
        model_names,
    )

    obs = _observe(adata, schema, seed=seeds[0])
    energy = _EnergyScorer(obs, seed=seeds[0])
    replicate_table, replicate_halves = _replicate(obs, energy, n_halvings, seeds[0])

    records: list[pd.DataFrame] = []
    wall: dict[str, float] = dict.fromkeys(model_names, 0.0)
    peak: dict[str, float] = dict.fromkeys(model_names, 0.0)
    # predictions per model and seed: condition -> (delta, cells)
    preds: dict[tuple[str, int], dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    peer_runs: dict[str, dict[str, Any]] = {}  # published peers: version and configuration
    for split in progress(splits, desc=f"{task}: splits", unit="split"):
        train = _training_view(obs, split)
        conds = _test_conditions(obs, split)
        if not conds:
            continue
        perts = [obs.pert_of[c] for c in conds]
        ctxs = [obs.ctx_of[c] for c in conds]
        doses = [obs.dose_of[c] for c in conds]
        control_rows = _controls_of(obs, ctxs)
        control = obs.adata[control_rows].copy()
        for name in model_names:
            if name in peers_first_seed and split.seed != seeds[0]:
                continue
            cls = get_instrument_class(name)
            params = dict(spec.model_params.get(name, {}))
            rng_seed = split.seed
            if "seed" in inspect.signature(cls.__init__).parameters:
                params["seed"] = rng_seed  # seeded models follow the split's seed
            model = cls(**params)
            with ResourceMeter() as meter, knowledge_from(data.knowledge):
                model.fit(train, schema, known_genes=fit_known, perturbation_features=features)
                delta = model.predict_delta(perts, contexts=ctxs, doses=doses, control=control)
                n_cells = [min(len(_cells(obs, c)), 300) for c in conds]
                per_block = max(n_cells)
                cells = model.predict(
                    perts,
                    contexts=ctxs,
                    doses=doses,
                    control=control,
                    n_cells=per_block,
                    include_control=False,
                    seed=rng_seed,
                )
            wall[name] += meter.wall_seconds
            peak[name] = max(peak[name], meter.peak_increase_mb)
            if getattr(model, "peer_info_", None):
                peer_runs[name] = _peer_record(name, model.peer_info_)
            x = cells.X.toarray() if sp.issparse(cells.X) else np.asarray(cells.X)
            table = _pseudobulk_scores(obs, conds, delta)
            energies = []
            for i, c in enumerate(conds):
                # predict() writes one block of per_block cells per requested condition, in order
                pc = x[i * per_block : i * per_block + n_cells[i]]
                energies.append(energy.relative(c, pc))
                preds.setdefault((name, split.seed), {})[c] = (delta[i], pc if cell_eval else None)
            table["energy_distance_rel"] = energies
            table["model"] = name
            table["seed"] = split.seed
            table["split"] = split.name
            table["category"] = [
                split.categories.get(obs.treatment_of[c], split.categories.get(obs.pert_of[c], ""))
                for c in conds
            ]
            records.append(table.rename_axis("condition").reset_index())
    per_condition = pd.concat(records, ignore_index=True)

    # pooled metrics per seed: centroid accuracy and cell-eval ----------------------------------
    pooled: list[pd.DataFrame] = []
    groups = _celleval_groups(obs)
    for (name, seed), by_cond in preds.items():
        conds = [c for c in obs.conditions if c in by_cond]
        pred = np.stack([by_cond[c][0] for c in conds])
        ca = centroid_accuracy(
            pred, obs.delta.loc[conds].to_numpy(), obs.exclude.loc[conds].to_numpy()
        )
        t = pd.DataFrame({"centroid_accuracy": ca}, index=conds)
        if cell_eval:
            t = t.join(
                _run_celleval(obs, groups, {c: by_cond[c][1] for c in conds}, seed, cache=_DE_CACHE)
            )
        t["model"], t["seed"] = name, seed
        pooled.append(t.rename_axis("condition").reset_index())
    pooled_df = pd.concat(pooled, ignore_index=True)
    per_condition = per_condition.merge(pooled_df, on=["condition", "model", "seed"], how="left")

    # replicate ceiling ---------------------------------------------------------------------------
    h0 = replicate_halves["halves"]
    rep_pooled = []
    for h in h0:
        ca = centroid_accuracy(h["pred"], h["obs"], obs.exclude.loc[obs.conditions].to_numpy())
        t = pd.DataFrame({"centroid_accuracy": ca}, index=obs.conditions)
        if cell_eval:
            t = t.join(
                _run_celleval(
                    obs, groups, h["cells_a"], seeds[0], cache={}, real_rows_of=h["rows_b"]
                )
            )
        rep_pooled.append(t)
    celleval_rep = sum(rep_pooled[1:], rep_pooled[0]) / len(rep_pooled)
    replicate_table = replicate_table.join(celleval_rep)
    _DE_CACHE.clear()

    result = _assemble(
        spec,
        dataset_name,
        splits,
        seeds,
        model_names,
        per_condition,
        replicate_table,
        wall,
        peak,
        __version__,
        (adata.n_obs, adata.n_vars),
    )
    if peer_runs:
        from aivc.evaluate.tasks.suite import peer_matrix

        result["peer_runs"] = peer_runs
        # our model against each peer on the splits the peer ran (peers run the first seed)
        result["peer_comparison"] = peer_matrix(
            result, per_condition, task=task, dataset=dataset_name, peers=list(peer_runs)
        )
    write_csv_atomic(per_condition, out / "per_condition.csv")
    write_csv_atomic(replicate_table.rename_axis("condition"), out / "replicate.csv", index=True)
    write_results(out, result, results_markdown(result))
    return json_safe(result)


_DE_CACHE: dict[Any, Any] = {}


def _run_out_of_core(
    spec: PerturbationSpec,
    out: Path,
    dataset: str,
    model_names: list[str],
    default_models: bool,
    seeds: list[int],
    schema: PerturbationSchema | None,
    data_dir: str | Path | None,
) -> dict[str, Any]:
    """The task on a dataset read from disk in blocks; models that need every cell are refused."""
    from aivc.instruments._registry import list_instruments

    kinds = {info.name: info.kind for info in list_instruments()}
    whole = [m for m in model_names if m == "gears" or kinds.get(m) == "peer"]
    if whole and not default_models:
        msg = (
            f"{whole} train on every cell and cannot run out of core; "
            "leave them out (--models) or run the task on an .h5ad file that fits in memory."
        )
        raise ValueError(msg)
    if whole:
        logger.info("out of core: %s left out (they train on every cell)", whole)
    names = [m for m in model_names if m not in whole]
    return run_out_of_core(
        spec,
        out=out,
        dataset=dataset,
        model_names=names,
        seeds=seeds,
        schema=schema,
        data_dir=data_dir,
    )


def _celleval_groups(obs: _Observed) -> dict[str | None, list[str]]:
    """Conditions scored together by cell-eval: all of one context at once."""
    groups: dict[str | None, list[str]] = {}
    for c in obs.conditions:
        groups.setdefault(obs.ctx_of[c], []).append(c)
    return groups


def _run_celleval(
    obs: _Observed,
    groups: dict[str | None, list[str]],
    cells_of: dict[str, np.ndarray],
    seed: int,
    cache: dict[Any, Any],
    real_rows_of: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    from aivc.evaluate._celleval import CELL_EVAL_METRICS, cell_eval_metrics

    frames = []
    for ctx, conds in groups.items():
        conds = [c for c in conds if c in cells_of]
        if not conds:
            continue
        real, pred = _celleval_frames(
            obs, conds, cells_of, _control_cells(obs, ctx), seed, real_rows_of
        )
        key = (ctx, tuple(conds), seed)
        table, de_real = cell_eval_metrics(
            pred, real, obs.schema, de_real=cache.get(key), num_threads=settings.n_jobs
        )
        cache[key] = de_real
        frames.append(table[list(CELL_EVAL_METRICS)])
    return pd.concat(frames)


def _assemble(
    spec: PerturbationSpec,
    dataset: str,
    splits: Sequence[Split],
    seeds: Sequence[int],
    model_names: Sequence[str],
    per_condition: pd.DataFrame,
    replicate: pd.DataFrame,
    wall: dict[str, float],
    peak: dict[str, float],
    version: str,
    shape: tuple[int, int],
) -> dict[str, Any]:
    zero = spec.zero_point
    metric_names = [m for m in METRICS if m in per_condition.columns]
    rep_means = {m: _finite_mean(replicate[m]) for m in metric_names if m in replicate}
    models: dict[str, dict[str, Any]] = {}
    seed_means: dict[str, dict[str, list[float]]] = {}
    units: dict[str, str] = {}
    for name in model_names:
        sub = per_condition[per_condition["model"] == name]
        if sub["seed"].nunique() > 1 or sub["split"].nunique() < 2:
            units[name] = "seeds"
            seed_means[name] = {
                m: [_finite_mean(sub[sub["seed"] == s][m]) for s in seeds] for m in metric_names
            }
        else:
            # a model run on one seed only (a slow peer): spread over its splits (folds)
            units[name] = "folds"
            split_names = list(dict.fromkeys(sub["split"]))
            seed_means[name] = {
                m: [_finite_mean(sub[sub["split"] == sp_][m]) for sp_ in split_names]
                for m in metric_names
            }
            base = per_condition[
                (per_condition["model"] == zero) & per_condition["split"].isin(split_names)
            ]
            seed_means[f"{zero}@{name}"] = {
                m: [_finite_mean(base[base["split"] == sp_][m]) for sp_ in split_names]
                for m in metric_names
            }
    for name in model_names:
        entry: dict[str, Any] = {"aggregated_over": units[name]}
        baseline_key = zero if units[name] == "seeds" else f"{zero}@{name}"
        for m in metric_names:
            s = summarize(seed_means[name][m])
            vals = per_condition.loc[per_condition["model"] == name, m].to_numpy(dtype=float)
            vals = vals[np.isfinite(vals)]
            s["sd_conditions"] = float(vals.std()) if vals.size else float("nan")
            entry[m] = s
            scaled = [
                scaled_score(u, b, rep_means.get(m, float("nan")))
                for u, b in zip(seed_means[name][m], seed_means[baseline_key][m], strict=True)
            ]
            entry[f"{m}_scaled"] = summarize(scaled)
        cats = per_condition.loc[per_condition["model"] == name, "category"]
        if cats.astype(bool).any():
            entry["by_category"] = {
                cat: {m: _finite_mean(g[m]) for m in metric_names}
                for cat, g in per_condition[per_condition["model"] == name].groupby("category")
                if cat
            }
        models[name] = entry
    first = splits[0]
    split_info: dict[str, Any] = {
        "kind": spec.split_kind,
        "seeds": list(seeds),
        "n_splits": len(splits),
    }
    if spec.n_folds:
        split_info["folds"] = spec.n_folds
    return {
        "task": spec.name,
        "dataset": dataset,
        "description": spec.description,
        "split": split_info,
        "n_cells": int(shape[0]),
        "n_genes": int(shape[1]),
        "n_conditions": int(per_condition["condition"].nunique()),
        "models": models,
        "replicate": {m: {"mean": v} for m, v in rep_means.items()},
        "baseline_for_scaling": zero,
        "metrics": {
            m: {
                "higher_is_better": METRICS[m].higher_is_better,
                "source": METRICS[m].source,
                "description": METRICS[m].description,
            }
            for m in metric_names
        },
        "wall_seconds": {k: round(v, 3) for k, v in wall.items()},
        "peak_memory_mb": {k: round(v, 1) for k, v in peak.items()},
        "peak_memory_note": "peak resident memory of fit+predict above the process's memory before the model ran (max over splits)",
        "machine": {**machine_info(), "aivc": version},
        "notes": spec.notes,
        "example_split": first.to_dict(),
    }


_TABLE_METRICS = (
    "pearson_delta",
    "pearson_delta_de20",
    "mse_de20",
    "direction_acc_de20",
    "systema_pearson_delta",
    "centroid_accuracy",
    "energy_distance_rel",
    "overlap_at_N",
    "discrimination_score_l1",
    "discrimination_score_cosine",
    "mae",
)


def results_markdown(result: dict[str, Any]) -> str:
    """A human-readable table of a ``results.json``."""
    models = result["models"]
    metrics = [m for m in _TABLE_METRICS if any(m in v for v in models.values())]
    arrows = {m: ("↑" if result["metrics"][m]["higher_is_better"] else "↓") for m in metrics}
    lines = [
        f"# {result['task']} on {result['dataset']}",
        "",
        result.get("description", ""),
        "",
        f"Split: {result['split']['kind']}, seeds {result['split']['seeds']}, {result['split']['n_splits']} splits; "
        f"{result['n_conditions']} test conditions, {result['n_cells']} cells x {result['n_genes']} genes. "
        "Mean ± sd over seeds (each seed scores every condition once).",
        "",
        "| model | " + " | ".join(f"{m} {arrows[m]}" for m in metrics) + " | wall s | peak MB |",
        "|---|" + "---|" * (len(metrics) + 2),
    ]
    folds_note = False
    for name, entry in models.items():
        label = name
        if entry.get("aggregated_over") == "folds":
            label, folds_note = f"{name} †", True
        cells = []
        for m in metrics:
            s = entry.get(m, {})
            cells.append(f"{fmt(s.get('mean'))} ± {fmt(s.get('sd'))}")
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {result['wall_seconds'].get(name, 0):.1f} | {result['peak_memory_mb'].get(name, 0):.0f} |"
        )
    rep = result["replicate"]
    lines.append(
        "| *replicate (split-half)* | "
        + " | ".join(fmt(rep.get(m, {}).get("mean")) for m in metrics)
        + " | | |"
    )
    if folds_note:
        lines += [
            "",
            "† run on the first seed's splits only (every condition once); mean ± sd over those splits.",
        ]
    zero = result.get("baseline_for_scaling", "train-mean")
    lines += ["", f"Scaled scores (0 = {zero}, 1 = split-half replicate):", ""]
    lines.append("| model | " + " | ".join(metrics) + " |")
    lines.append("|---|" + "---|" * len(metrics))
    for name, entry in models.items():
        lines.append(
            f"| {name} | "
            + " | ".join(fmt(entry.get(m + "_scaled", {}).get("mean"), 2) for m in metrics)
            + " |"
        )
    cats = {c for e in models.values() for c in e.get("by_category", {})}
    if cats:
        lines += ["", "By category (mean over conditions):", ""]
        lines.append("| model | category | pearson_delta_de20 | mse_de20 |")
        lines.append("|---|---|---|---|")
        for name, entry in models.items():
            for cat, vals in sorted(entry.get("by_category", {}).items()):
                lines.append(
                    f"| {name} | {cat} | {fmt(vals['pearson_delta_de20'])} | {fmt(vals['mse_de20'])} |"
                )
    m = result["machine"]
    lines += [
        "",
        f"Machine: {m['cpus']} CPUs, Python {m['python']}, aivc {m['aivc']}. {result.get('notes', '')}",
        "",
    ]
    return "\n".join(lines)


def _task_runner(name: str) -> Callable[..., dict[str, Any]]:
    def run(
        out: Path,
        *,
        dataset: str | None = None,
        models: Sequence[str] | None = None,
        seeds: Sequence[int] | None = None,
        variant: str | None = None,
        cell_eval: bool | None = None,
        model_params: dict[str, dict[str, Any]] | None = None,
        notes: str | None = None,
        schema: PerturbationSchema | None = None,
        out_of_core: bool | None = None,
    ) -> dict[str, Any]:
        del variant  # these tasks have no variants; run_task refuses one
        return run_benchmark(
            name,
            out=out,
            dataset=dataset,
            models=models,
            seeds=seeds,
            cell_eval=cell_eval,
            model_params=model_params,
            notes=notes,
            schema=schema,
            out_of_core=out_of_core,
        )

    return run


for _spec in PERTURBATION_SPECS.values():
    register_task(
        Task(
            name=_spec.name,
            description=f"{_spec.description}. A dataset path needs {_spec.accepts}.",
            datasets=(_spec.dataset,),
            models=_spec.models,
            seeds=(0, 1, 2),
            run=_task_runner(_spec.name),
            options=("cell_eval", "model_params", "notes", "schema", "out_of_core"),
        )
    )
