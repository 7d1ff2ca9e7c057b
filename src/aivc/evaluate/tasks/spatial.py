"""Spatial benchmark: what a cell is, which domain it sits in and which genes it expresses, given where it sits.

``aivc benchmark spatial --dataset NAME_OR_PATH --out DIR`` (variant ``tissue``):

- **Cell type.** Sections are held out in turn (a dataset with one section
  is cut into square tiles spread over five folds). Rows:
  ``expression-only`` (logistic regression on the principal components of
  each cell's own log expression), ``neighbour-mean`` (own plus the mean of
  its 10 nearest neighbours' components), ``neighbour-composition`` (own plus
  the neighbours' mean type probabilities from the expression-only model:
  squidpy-style neighbourhood-enrichment features, without true labels),
  ``niche-gnn`` (own plus the niche embedding of
  :class:`~aivc.tissues.NicheModel`) and ``aivc-niche``
  (:class:`~aivc.tissues.NicheCellTyper`: whichever of those four wins a
  blocked cross-validation on the training cells). Metrics ``accuracy``,
  ``macro_f1`` and ``ece`` (expected calibration error of the top
  probability, 10 bins) on the held-out cells.
- **Domains** (where the dataset annotates regions). k-means with as many
  clusters as annotated regions on: own components (``expression-only``),
  own plus neighbour mean (``neighbour-mean``) and the niche embedding
  averaged over two graph steps (``aivc-niche``); ``domain_ari`` and
  ``domain_nmi`` against the regions.
- **Genes the panel lacks.** Within the panel (``imputation_pearson_panel``):
  genes in five folds, each fold's genes hidden in one fold of cells and
  predicted from the other genes (ridge on own expression:
  ``expression-only``; plus neighbour mean: ``neighbour-mean``;
  ``aivc-niche``: :class:`~aivc.tissues.GeneImputer` choosing among those
  and a two-step neighbourhood by blocked cross-validation on the training
  cells); Pearson per gene over the held-out cells, averaged over genes
  (a panel of more than 300 genes is cut to its 300 most variable).
  From a single-cell reference (the simulator gives one:
  ``imputation_pearson``): the genes outside the panel predicted by
  mapping each spatial cell to its nearest reference cells on the shared
  genes (``expression-only``: 10 neighbours; ``neighbour-mean``: the query
  averaged with its spatial neighbours; ``aivc-niche``: the variant chosen
  by predicting held-out shared genes, among them the reference's
  cell-type means weighted by the query's type probabilities) and by the
  peers gimVI (scvi-tools, trained here from scratch) where scvi-tools is
  installed and Tangram (its own environment: ``aivc peers install
  tangram``) where installed. Domains are also clustered by the peers
  CellCharter and Novae (``aivc peers install cellcharter``, ``... novae``;
  trained from scratch) where installed.

Variant ``niche-effect`` (the simulator only: ``--dataset sim-tissue-N``):
a virtual tissue is measured unperturbed and with each signalling
pathway's ligand knocked out in every cell (separate tissue samples). Each
pathway is held out in turn: the models see the unperturbed tissue and the
other knockouts, and predict each cell's change of log-normalised expression
when the held-out ligand is knocked out in the unperturbed tissue. Rows
``no-change``, ``mean-effect`` (each cell type's mean measured change under
the other knockouts) and ``aivc-tissue``
(:class:`~aivc.tissues.TissueManipulator`). Metrics against the simulator's
noise-free truth, over every gene but the knocked-out ligand:
``effect_mse`` (all cells; ``effect_mse_rel``: divided by that of
``no-change``), ``effect_mse_receivers`` (cells of the
pathway's receiving types) and ``effect_pearson`` (receivers); the removal of a
sender type from the layer where it is most common is scored the same way (``removal_*``, no
``mean-effect`` row). ``edge_precision``: of the neighbour → cell edges of
the manipulator's graph, the share of true signalling edges among the top
scored (as many as there are true ones), with the share a random ranking
gets (``edge_precision_random``).

Datasets: ``osmfish_cortex`` (one section, no regions: domains are not
scored), ``sim-tissue-N`` (the virtual tissue of seed N, three sections,
four layers), or an ``.h5ad`` path with ``--cell-type-key`` and optionally
``--section-key`` and ``--region-key`` (coordinates in ``obsm["spatial"]``;
counts detected in ``X`` or ``--counts-layer``, otherwise log values).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import (
    accuracy_score,
    adjusted_rand_score,
    f1_score,
    normalized_mutual_info_score,
)

from aivc.evaluate._memory import ResourceMeter
from aivc.evaluate._results import fmt_summary, machine_info, summarize, write_results
from aivc.evaluate.tasks import Task, register_task

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["SPATIAL_MODELS", "load_spatial", "run_spatial", "simulated_tissue"]

logger = logging.getLogger(__name__)

SPATIAL_MODELS = (
    "expression-only",
    "neighbour-mean",
    "neighbour-composition",
    "niche-gnn",
    "aivc-niche",
)
EFFECT_MODELS = ("no-change", "mean-effect", "aivc-tissue")
VARIANTS = ("tissue", "niche-effect")
#: Neighbours of the baselines' graph (and of the niche model).
N_NEIGHBORS = 10
#: Cells of the simulated tissue, of its reference, and genes in its spatial panel.
SIM_CELLS, SIM_REFERENCE_CELLS, SIM_PANEL = 6000, 3000, 80

#: Most variable genes hidden and predicted within the panel (a larger panel is cut to these).
PANEL_GENES = 300
#: Training steps of the niche model (its default).
NICHE_STEPS = 300

#: Registered spatial datasets: cell type, section and region columns.
SPATIAL_DATASETS = {"osmfish_cortex": ("cell_type", None, None)}


def simulated_tissue(world: int, *, n_cells: int = SIM_CELLS) -> tuple[AnnData, AnnData, list[str]]:
    """A virtual tissue of three sections (all genes), a dissociated reference, and the spatial panel.

    The tissue's noise-free log-normalised expression is in ``layers["truth"]``.
    """
    from aivc.sim import VirtualTissue

    tissue = VirtualTissue(n_sections=3, seed=world).build()
    adata, truth = tissue.simulate(n_cells, seed=world)
    adata.layers["truth"] = _normalised_log(truth.state.cell_log_mean()).astype(np.float32)
    reference, _ = tissue.simulate(SIM_REFERENCE_CELLS, seed=world + 1000)
    genes = list(adata.var_names)
    rng = np.random.default_rng([world, 81])
    panel = sorted(rng.choice(genes, size=SIM_PANEL, replace=False).tolist())
    return adata, reference, panel


def load_spatial(
    dataset: str,
    *,
    cell_type_key: str | None = None,
    section_key: str | None = None,
    region_key: str | None = None,
    counts_layer: str | None = None,
) -> tuple[AnnData, Any, AnnData | None, list[str] | None]:
    """A spatial dataset, its schema, and (simulator only) a reference with the panel genes."""
    from aivc.tissues import SpatialSchema

    if dataset.startswith("sim-tissue-"):
        adata, reference, panel = simulated_tissue(int(dataset.rsplit("-", 1)[1]))
        schema = SpatialSchema(
            cell_type_key="cell_type", section_key="section", region_key="region"
        )
        return adata, schema, reference, panel
    from aivc.data._registry import _REGISTRY, load

    if dataset in _REGISTRY:
        if dataset not in SPATIAL_DATASETS:
            msg = f"Dataset {dataset!r} is not spatial; spatial datasets are {sorted(SPATIAL_DATASETS)}, sim-tissue-N or a file."
            raise ValueError(msg)
        ct, sec, reg = SPATIAL_DATASETS[dataset]
        adata = load(dataset)
        schema = SpatialSchema(
            cell_type_key=cell_type_key or ct,
            section_key=section_key or sec,
            region_key=region_key or reg,
        )
    else:
        path = Path(dataset)
        if not path.exists():
            msg = f"{dataset!r} is neither a registered spatial dataset nor a file."
            raise FileNotFoundError(msg)
        from aivc.data._validate import read_h5ad

        adata = read_h5ad(path)
        schema = SpatialSchema.of(
            adata, cell_type_key=cell_type_key, section_key=section_key, region_key=region_key
        )
        if schema.cell_type_key is None or schema.cell_type_key not in adata.obs:
            msg = "A spatial file needs --cell-type-key (the obs column with each cell's type)."
            raise ValueError(msg)
    if counts_layer is not None:
        if counts_layer not in adata.layers:
            msg = f"No layers[{counts_layer!r}] (layers: {list(adata.layers)})."
            raise ValueError(msg)
        adata = adata.copy()
        adata.X = adata.layers[counts_layer]
    return adata, schema, None, None


def _log(x: object, *, max_genes: int | None = None) -> np.ndarray:
    """Dense log-normalised values (counts: per-cell total 10,000, log1p; else as given).

    With ``max_genes`` only the most variable genes are kept (in their order
    in ``x``), so a whole-transcriptome dataset never becomes one dense matrix.
    """
    from aivc.data._expression import looks_like_counts
    from aivc.data._preprocess import log_normalize

    counts = looks_like_counts(x)
    m = sp.csr_matrix(x, dtype=np.float64)
    if counts:
        m, _ = log_normalize(m, target_sum=1e4, dtype=np.float64)
    if max_genes is not None and m.shape[1] > max_genes:
        mean = np.asarray(m.mean(0)).ravel()
        var = np.asarray(m.multiply(m).mean(0)).ravel() - mean**2
        m = m[:, np.sort(np.argsort(-var)[:max_genes])]
    return np.asarray(m.toarray(), dtype=np.float64)


def _ece(proba: np.ndarray, classes: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    conf = proba.max(1)
    right = classes[proba.argmax(1)] == truth
    edges = np.linspace(0, 1, bins + 1)
    err = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            err += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    return float(err)


def _outer_folds(xy: np.ndarray, sections: np.ndarray, seed: int) -> np.ndarray:
    from aivc.tissues import spatial_blocks

    return spatial_blocks(
        xy, sections if len(np.unique(sections)) >= 2 else None, n_blocks=5, seed=seed
    )


def _cell_type_scores(
    own: np.ndarray,
    niche: np.ndarray,
    graph: sp.csr_matrix,
    labels: np.ndarray,
    xy: np.ndarray,
    folds: np.ndarray,
    seed: int,
) -> tuple[dict[str, dict[str, float]], list[str], dict[str, float]]:
    from aivc.tissues import NicheCellTyper, spatial_blocks

    tiles = spatial_blocks(xy, None, n_blocks=4, seed=seed + 1)
    fixed = {
        "expression-only": ("expression-only",),
        "neighbour-mean": ("neighbour-mean",),
        "neighbour-composition": ("neighbour-types",),
        "niche-gnn": ("niche",),
        "aivc-niche": ("expression-only", "neighbour-mean", "niche", "neighbour-types"),
    }
    predicted = {m: np.empty(len(labels), dtype=object) for m in fixed}
    probs: dict[str, list[float]] = {m: [] for m in fixed}
    wall = dict.fromkeys(fixed, 0.0)
    chosen: list[str] = []
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        if len(np.unique(labels[train])) < 2:
            continue
        for name, cands in fixed.items():
            with ResourceMeter() as meter:
                typer = NicheCellTyper(candidates=cands, seed=seed).fit(
                    own, graph, labels, train, tiles, niche=niche
                )
                p = typer.predict_proba(np.flatnonzero(test))
            wall[name] += meter.wall_seconds
            predicted[name][test] = typer.classes_[p.argmax(1)]
            probs[name].append(_ece(p, typer.classes_, labels[test]) * test.sum())
            if name == "aivc-niche":
                chosen.append(typer.chosen_)
    scores = {}
    for name in fixed:
        scores[name] = {
            "accuracy": float(accuracy_score(labels, predicted[name].astype(str))),
            "macro_f1": float(f1_score(labels, predicted[name].astype(str), average="macro")),
            "ece": float(np.sum(probs[name]) / len(labels)),
        }
    return scores, chosen, wall


def _domain_scores(
    own: np.ndarray,
    niche: np.ndarray,
    graph: sp.csr_matrix,
    regions: np.ndarray,
    seed: int,
    adata: AnnData | None = None,
    section_key: str | None = None,
    peers: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    from aivc.tissues import neighbour_mean, niche_domains

    k = len(np.unique(regions))
    runs = {
        "expression-only": niche_domains(own, None, k, hops=0, seed=seed),
        "neighbour-mean": niche_domains(
            np.hstack([own, neighbour_mean(graph, own)]), None, k, hops=0, seed=seed
        ),
        "aivc-niche": niche_domains(niche, graph, k, hops=2, seed=seed),
    }
    if adata is not None:  # the domain peers, each in its own environment
        from aivc.evaluate import _spatial_peers

        for name in peers:
            run = getattr(_spatial_peers, f"{name}_domains")
            runs[name] = run(adata, k, section_key=section_key, seed=seed)
    return {
        m: {
            "domain_ari": float(adjusted_rand_score(regions, lab)),
            "domain_nmi": float(normalized_mutual_info_score(regions, lab)),
        }
        for m, lab in runs.items()
    }


def _panel_imputation(
    x: np.ndarray,
    graph: sp.csr_matrix,
    folds: np.ndarray,
    tiles: np.ndarray,
    seed: int,
    truth: np.ndarray | None = None,
) -> tuple[dict[str, float], list[str]]:
    from aivc.tissues import GeneImputer, per_gene_pearson

    g = x.shape[1]
    cell_folds = np.unique(folds)
    gene_fold = np.random.default_rng([seed, 83]).permutation(g) % 5
    names = {
        "expression-only": ("expression-only",),
        "neighbour-mean": ("neighbour-mean",),
        "aivc-niche": None,
    }
    per_gene = {m: np.full(g, np.nan) for m in names}
    chosen: list[str] = []
    for f in range(5):
        held = gene_fold == f
        if not held.any() or held.all():
            continue
        test = folds == cell_folds[f % len(cell_folds)]
        for name, variants in names.items():
            imp = GeneImputer(variants=variants, seed=seed)
            pred = imp.within_panel(x[:, ~held], x[:, held], graph, ~test, tiles)
            target = x if truth is None else truth
            per_gene[name][held] = per_gene_pearson(pred[test], target[test][:, held])
            if variants is None:
                chosen.append(imp.chosen_)
    return {m: float(np.nanmean(v)) for m, v in per_gene.items()}, chosen


def _reference_imputation(
    adata: AnnData,
    reference: AnnData,
    panel: list[str],
    graph: sp.csr_matrix,
    seed: int,
    with_gimvi: bool,
    cell_type_key: str | None = None,
    with_tangram: bool = False,
) -> tuple[dict[str, float], list[str], dict[str, float]]:
    from aivc.tissues import GeneImputer, per_gene_pearson

    targets = [g for g in reference.var_names if g not in set(panel)]
    x_all = _log(adata.X)
    col = {g: i for i, g in enumerate(adata.var_names)}
    ref_all = _log(reference.X)
    rcol = {g: i for i, g in enumerate(reference.var_names)}
    # the spatial panel is normalised over its own genes, as a panel would be measured
    spatial = _log(adata[:, panel].X)
    ref_panel = ref_all[:, [rcol[g] for g in panel]]
    ref_targets = ref_all[:, [rcol[g] for g in targets]]
    # the simulator's noise-free expression where it is known, the measured one otherwise
    labels = (
        reference.obs[cell_type_key].astype(str).to_numpy()
        if cell_type_key is not None and cell_type_key in reference.obs
        else None
    )
    observed = (
        np.asarray(adata.layers["truth"])[:, [col[g] for g in targets]]
        if "truth" in adata.layers
        else x_all[:, [col[g] for g in targets]]
    )
    runs = {
        "expression-only": ("map-k10",),
        "neighbour-mean": ("map-k10-smooth",),
        "aivc-niche": None,
    }
    scores, wall = {}, {}
    chosen: list[str] = []
    for name, variants in runs.items():
        with ResourceMeter() as meter:
            imp = GeneImputer(variants=variants, seed=seed)
            pred = imp.from_reference(spatial, ref_panel, ref_targets, graph, labels)
        wall[name] = meter.wall_seconds
        scores[name] = float(np.nanmean(per_gene_pearson(pred, observed)))
        if variants is None:
            chosen.append(imp.chosen_)
    if with_tangram:
        from aivc.evaluate._spatial_peers import tangram_impute

        with ResourceMeter() as meter:
            pred = np.log1p(tangram_impute(adata[:, panel].copy(), reference, targets, seed=seed))
        wall["tangram"] = meter.wall_seconds
        scores["tangram"] = float(np.nanmean(per_gene_pearson(pred, observed)))
    if with_gimvi:
        with ResourceMeter() as meter:
            pred = _gimvi(adata[:, panel].copy(), reference.copy(), targets, seed)
        wall["gimvi"] = meter.wall_seconds
        scores["gimvi"] = float(np.nanmean(per_gene_pearson(pred, observed)))
    return scores, chosen, wall


#: gimVI's training epochs (scvi-tools' tutorial trains 200).
GIMVI_EPOCHS = 200


def _gimvi(spatial: AnnData, reference: AnnData, targets: list[str], seed: int) -> np.ndarray:
    """gimVI's imputation of ``targets`` for the spatial cells, as log-normalised values."""
    import scvi
    from scvi.external import GIMVI

    scvi.settings.seed = seed
    spatial.X = sp.csr_matrix(spatial.X, dtype=np.float32)
    reference.X = sp.csr_matrix(reference.X, dtype=np.float32)
    GIMVI.setup_anndata(spatial)
    GIMVI.setup_anndata(reference)
    model = GIMVI(reference, spatial)
    model.train(max_epochs=GIMVI_EPOCHS, accelerator="cpu", enable_progress_bar=False)
    _, imputed = model.get_imputed_values(normalized=True)
    ref_genes = list(reference.var_names)
    cols = [ref_genes.index(g) for g in targets]
    return np.log1p(np.asarray(imputed)[:, cols] * 1e4)


#: Published spatial models run in their own environments: what each is used for here.
SPATIAL_PEERS = {"tangram": "imputation", "cellcharter": "domains", "novae": "domains"}


def _spatial_peers(
    models: Sequence[str] | None, has_reference: bool, has_regions: bool
) -> dict[str, str]:
    """Which peers run ("ran"), and why the others do not."""
    from aivc.evaluate._peer_envs import peer_status

    out = {}
    for name, use in SPATIAL_PEERS.items():
        needed = has_reference if use == "imputation" else has_regions
        if not needed:
            continue
        if models is not None and name not in models:
            out[name] = "not asked for (--models)"
        elif not peer_status(name).installed:
            out[name] = f"not installed (aivc peers install {name})"
        else:
            out[name] = "ran"
    return out


def _has_scvi() -> bool:
    import importlib.util

    return importlib.util.find_spec("scvi") is not None


def run_spatial(
    out: str | Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    variant: str | None = None,
    cell_type_key: str | None = None,
    section_key: str | None = None,
    region_key: str | None = None,
    counts_layer: str | None = None,
) -> dict[str, Any]:
    """Run the spatial benchmark (see the module docstring); writes results into ``out``."""
    out = Path(out)
    variant = variant or "tissue"
    if variant not in VARIANTS:
        msg = f"Unknown spatial variant {variant!r}; choose from {VARIANTS}."
        raise ValueError(msg)
    if variant == "niche-effect":
        dataset = dataset or "sim-tissue-0"
        if not dataset.startswith("sim-tissue-"):
            msg = "The niche-effect variant runs on the simulator: --dataset sim-tissue-N."
            raise ValueError(msg)
        return run_niche_effect(out, dataset, seeds)
    dataset = dataset or "osmfish_cortex"
    from aivc.tissues import (
        NicheModel,
        check_spatial,
        expression_components,
        spatial_blocks,
        spatial_graph,
    )

    adata, schema, reference, panel = load_spatial(
        dataset,
        cell_type_key=cell_type_key,
        section_key=section_key,
        region_key=region_key,
        counts_layer=counts_layer,
    )
    full = adata
    if panel is not None:
        adata = adata[:, panel].copy()
    xy = check_spatial(adata, schema)
    sections = schema.sections(adata)
    labels = adata.obs[schema.cell_type_key].astype(str).to_numpy()
    regions = (
        adata.obs[schema.region_key].astype(str).to_numpy()
        if schema.region_key is not None and schema.region_key in adata.obs
        else None
    )
    graph = spatial_graph(xy, sections, method="knn", n_neighbors=N_NEIGHBORS)
    own = expression_components(adata.X, n_components=30)
    x_log = _log(adata.X, max_genes=PANEL_GENES)
    metrics_per_seed: dict[str, dict[str, list[float]]] = {}
    wall: dict[str, float] = {}
    choices: dict[str, list[str]] = {"cell_type": [], "imputation_panel": [], "imputation": []}
    with_gimvi = reference is not None and _has_scvi() and (models is None or "gimvi" in models)
    peers = _spatial_peers(models, reference is not None, regions is not None)

    def add(model: str, values: dict[str, float]) -> None:
        for k, v in values.items():
            metrics_per_seed.setdefault(model, {}).setdefault(k, []).append(v)

    for seed in seeds:
        folds = _outer_folds(xy, sections, int(seed))
        tiles = spatial_blocks(xy, None, n_blocks=4, seed=int(seed) + 1)
        with ResourceMeter() as meter:
            niche_model = NicheModel(
                n_neighbors=N_NEIGHBORS, steps=NICHE_STEPS, seed=int(seed)
            ).fit(adata, schema)
            niche = niche_model.transform(adata, schema)
        wall["niche-gnn (embedding)"] = wall.get("niche-gnn (embedding)", 0.0) + meter.wall_seconds
        ct, chosen, ct_wall = _cell_type_scores(own, niche, graph, labels, xy, folds, int(seed))
        choices["cell_type"] += chosen
        for m, v in ct.items():
            add(m, v)
        for m, v in ct_wall.items():
            wall[m] = wall.get(m, 0.0) + v
        if regions is not None:
            ran = [p for p in ("cellcharter", "novae") if peers.get(p) == "ran"]
            domains = _domain_scores(
                own,
                niche,
                graph,
                regions,
                int(seed),
                adata if ran else None,
                schema.section_key,
                ran,
            )
            for m, v in domains.items():
                add(m, v)
        truth = np.asarray(adata.layers["truth"]) if "truth" in adata.layers else None
        panel_scores, chosen = _panel_imputation(x_log, graph, folds, tiles, int(seed), truth)
        choices["imputation_panel"] += chosen
        for m, v in panel_scores.items():
            add(m, {"imputation_pearson_panel": v})
        if reference is not None and panel is not None:
            ref_scores, chosen, ref_wall = _reference_imputation(
                full,
                reference,
                panel,
                graph,
                int(seed),
                with_gimvi,
                schema.cell_type_key,
                peers.get("tangram") == "ran",
            )
            choices["imputation"] += chosen
            for m, v in ref_scores.items():
                add(m, {"imputation_pearson": v})
            for m, v in ref_wall.items():
                wall[f"{m} (imputation)"] = wall.get(f"{m} (imputation)", 0.0) + v
    order = [m for m in (*SPATIAL_MODELS, "gimvi", *SPATIAL_PEERS) if m in metrics_per_seed]
    result = {
        "task": "spatial",
        "dataset": dataset if not Path(dataset).exists() else Path(dataset).name,
        "variant": "tissue",
        "description": "Cell type, spatial domain and unmeasured genes of cells in a tissue, with and without their neighbourhood",
        "split": {
            "kind": "held-out sections"
            if len(np.unique(sections)) >= 2
            else "held-out spatial tiles (5 folds)",
            "seeds": [int(s) for s in seeds],
            "n_cells": int(adata.n_obs),
            "n_genes": int(adata.n_vars),
            "sections": len(np.unique(sections)),
            "regions": None if regions is None else len(np.unique(regions)),
            "reference_cells": None if reference is None else int(reference.n_obs),
            "imputed_genes": None if panel is None else int(full.n_vars - len(panel)),
            "graph": f"{N_NEIGHBORS} nearest neighbours within each section",
        },
        "models": {m: {k: summarize(v) for k, v in metrics_per_seed[m].items()} for m in order},
        "aivc_choices": {k: pd.Series(v).value_counts().to_dict() for k, v in choices.items() if v},
        "peers": {
            **peers,
            **({"gimvi": "ran (scvi-tools, aivc's environment)"} if with_gimvi else {}),
        },
        "metrics": {
            "accuracy": {
                "higher_is_better": True,
                "description": "cell-type accuracy on held-out sections/tiles",
            },
            "macro_f1": {
                "higher_is_better": True,
                "description": "cell-type macro-F1 on held-out sections/tiles",
            },
            "ece": {
                "higher_is_better": False,
                "description": "expected calibration error of the top type probability",
            },
            "domain_ari": {
                "higher_is_better": True,
                "description": "adjusted Rand index of domains vs annotated regions",
            },
            "domain_nmi": {
                "higher_is_better": True,
                "description": "normalised mutual information of domains vs regions",
            },
            "imputation_pearson_panel": {
                "higher_is_better": True,
                "description": "Pearson per hidden panel gene over held-out cells (mean over genes)",
            },
            "imputation_pearson": {
                "higher_is_better": True,
                "description": "Pearson per gene outside the panel, imputed from the reference (mean over genes)",
            },
        },
        "wall_seconds": {k: round(v, 3) for k, v in wall.items()},
        "machine": machine_info(),
    }
    write_results(out, result, spatial_markdown(result))
    return result


def _precision_at_k(scores: np.ndarray, truth: np.ndarray) -> float:
    k = int(truth.sum())
    if k == 0:
        return float("nan")
    top = np.argsort(-scores, kind="stable")[:k]
    return float(truth[top].mean())


def _normalised_log(log_mean: np.ndarray) -> np.ndarray:
    """Noise-free log-normalised expression from true log means (as the models see measured cells)."""
    from aivc.data._preprocess import log_normalize

    return log_normalize(np.exp(log_mean), target_sum=1e4, dtype=np.float64, dense=True)[0]


def run_niche_effect(out: Path, dataset: str, seeds: Sequence[int]) -> dict[str, Any]:
    """The ``niche-effect`` variant (see the module docstring)."""
    from aivc.sim import VirtualTissue
    from aivc.tissues import TissueManipulator

    world = int(dataset.rsplit("-", 1)[1])
    metrics = (
        "effect_mse",
        "effect_mse_rel",
        "effect_mse_receivers",
        "effect_pearson",
        "removal_mse",
        "removal_mse_rel",
        "removal_mse_receivers",
        "removal_pearson",
        "edge_precision",
        "edge_precision_random",
    )
    per_seed = {m: {k: [] for k in metrics} for m in EFFECT_MODELS}
    rows: list[dict[str, Any]] = []
    wall = dict.fromkeys(EFFECT_MODELS, 0.0)
    for seed in seeds:
        tissue = VirtualTissue(n_sections=2, seed=world).build()
        pathways = tissue.pathways_
        base = tissue.layout(SIM_CELLS, seed=int(seed))
        measured, truth0 = tissue.simulate(layout=base, seed=int(seed))
        kos = {}
        for i, p in enumerate(pathways):
            lay = tissue.knock_out(tissue.layout(SIM_CELLS, seed=int(seed) * 100 + i + 1), p.ligand)
            kos[p.name] = tissue.simulate(layout=lay, seed=int(seed) * 100 + i + 1)[0]
        genes = list(measured.var_names)
        x0 = _log(measured.X)
        xy0 = np.asarray(measured.obsm["spatial"], dtype=np.float64)
        sec0 = measured.obs["section"].astype(str).to_numpy()
        types0 = measured.obs["cell_type"].astype(str).to_numpy()
        true0 = _normalised_log(truth0.state.cell_log_mean())
        unit = {m: {k: [] for k in metrics} for m in EFFECT_MODELS}
        for p in pathways:
            g = genes.index(p.ligand)
            others = [q for q in pathways if q.name != p.name]
            train = [measured] + [kos[q.name] for q in others]
            x_tr = np.vstack([_log(a.X) for a in train])
            xy_tr = [np.asarray(a.obsm["spatial"], dtype=np.float64) for a in train]
            # sections of different tissue samples are different sections
            sec_tr = [
                np.asarray([f"{j}:{s}" for s in a.obs["section"].astype(str)])
                for j, a in enumerate(train)
            ]
            types_tr = np.concatenate([a.obs["cell_type"].astype(str).to_numpy() for a in train])
            with ResourceMeter() as meter:
                model = TissueManipulator(seed=int(seed)).fit(
                    x_tr, np.vstack(xy_tr), np.concatenate(sec_tr), types_tr
                )
                x_after = x0.copy()
                x_after[:, g] = 0.0
                pred = model.predict_change(x0, xy0, sec0, types0, x_after=x_after)
            wall["aivc-tissue"] += meter.wall_seconds
            # mean-effect: each type's mean measured change under the other knockouts
            mean_change = np.zeros((len(np.unique(types0)), len(genes)))
            type_names = np.unique(types0)
            for q in others:
                a = kos[q.name]
                xa = _log(a.X)
                ta = a.obs["cell_type"].astype(str).to_numpy()
                for ti, t in enumerate(type_names):
                    if (ta == t).any() and (types0 == t).any():
                        mean_change[ti] += (xa[ta == t].mean(0) - x0[types0 == t].mean(0)) / len(
                            others
                        )
            mean_pred = mean_change[np.searchsorted(type_names, types0)]
            ko_layout = tissue.knock_out(base, p.ligand)
            true_ko = _normalised_log(tissue.true_state(ko_layout).cell_log_mean())
            truth = true_ko - true0
            cols = np.arange(len(genes)) != g
            receivers = np.isin(types0, p.receivers)
            still = float((truth[:, cols] ** 2).mean())  # the error of predicting no change
            for name, guess in (
                ("no-change", np.zeros_like(truth)),
                ("mean-effect", mean_pred),
                ("aivc-tissue", pred),
            ):
                d = guess[:, cols] - truth[:, cols]
                r = guess[receivers][:, cols].ravel()
                t = truth[receivers][:, cols].ravel()
                values = {
                    "effect_mse": float((d**2).mean()),
                    "effect_mse_rel": float((d**2).mean()) / still if still > 0 else float("nan"),
                    "effect_mse_receivers": float((d[receivers] ** 2).mean())
                    if receivers.any()
                    else float("nan"),
                    "effect_pearson": float(np.corrcoef(r, t)[0, 1])
                    if r.std() > 0 and t.std() > 0
                    else 0.0,
                }
                for k, v in values.items():
                    unit[name][k].append(v)
                rows.append(
                    {
                        "seed": int(seed),
                        "pathway": p.name,
                        "ligand": p.ligand,
                        "model": name,
                        **values,
                    }
                )
        # removal of the first pathway's first sender type from the layer where it is most common
        sender = pathways[0].senders[0]
        region = str(
            base.loc[base["cell_type"].astype(str) == sender, "region"].astype(str).mode()[0]
        )
        kept = tissue.remove_cells(base, sender, region)
        keep = base.index.isin(kept.index)
        true_rm = _normalised_log(tissue.true_state(kept).cell_log_mean())
        truth = true_rm - true0[keep]
        receivers = np.isin(types0[keep], pathways[0].receivers)
        with ResourceMeter() as meter:
            model = TissueManipulator(seed=int(seed)).fit(x0, xy0, sec0, types0)
            pred_rm = model.predict_change(x0, xy0, sec0, types0, keep=keep)
        wall["aivc-tissue"] += meter.wall_seconds
        for name, guess in (("no-change", np.zeros_like(truth)), ("aivc-tissue", pred_rm)):
            d = guess - truth
            r, t = guess[receivers].ravel(), truth[receivers].ravel()
            unit[name]["removal_mse"].append(float((d**2).mean()))
            still = float((truth**2).mean())
            unit[name]["removal_mse_rel"].append(
                float((d**2).mean()) / still if still > 0 else float("nan")
            )
            unit[name]["removal_mse_receivers"].append(
                float((d[receivers] ** 2).mean()) if receivers.any() else float("nan")
            )
            unit[name]["removal_pearson"].append(
                float(np.corrcoef(r, t)[0, 1]) if r.std() > 0 and t.std() > 0 else 0.0
            )
        # signalling edges: the manipulator's graph, scored against the true edges
        edges = model.edge_scores(x0, xy0, sec0, types0)
        # true edges: a sender type's cell next to a receiver type's cell of the same pathway
        # (every type makes a little of each ligand; those trickles are not counted)
        true_edges = truth0.edges
        kind = dict(zip(measured.obs_names, types0, strict=True))
        roles = {p.name: (set(p.senders), set(p.receivers)) for p in pathways}
        main = [
            kind[a] in roles[w][0] and kind[b] in roles[w][1]
            for a, b, w in zip(
                true_edges["sender"], true_edges["receiver"], true_edges["pathway"], strict=True
            )
        ]
        true_edges = true_edges[np.asarray(main, dtype=bool)]
        pos = {c: i for i, c in enumerate(measured.obs_names)}
        true_pairs = set(
            zip(true_edges["sender"].map(pos), true_edges["receiver"].map(pos), strict=True)
        )
        is_true = np.fromiter(
            ((s, r) in true_pairs for s, r in zip(edges["sender"], edges["receiver"], strict=True)),
            dtype=bool,
            count=len(edges),
        )
        unit["aivc-tissue"]["edge_precision"].append(
            _precision_at_k(edges["score"].to_numpy(), is_true)
        )
        unit["aivc-tissue"]["edge_precision_random"].append(float(is_true.mean()))
        for m in EFFECT_MODELS:
            for k in metrics:
                if unit[m][k]:
                    per_seed[m][k].append(float(np.nanmean(unit[m][k])))
    result = {
        "task": "spatial",
        "dataset": dataset,
        "variant": "niche-effect",
        "description": "Predict each cell's change when a ligand is knocked out in its neighbours (virtual tissue truth)",
        "split": {
            "kind": "held-out ligand knockout",
            "seeds": [int(s) for s in seeds],
            "n_cells": SIM_CELLS,
            "pathways": len(pathways),
        },
        "models": {
            m: {k: summarize(v) for k, v in per_seed[m].items() if v} for m in EFFECT_MODELS
        },
        "metrics": {
            "effect_mse_rel": {
                "higher_is_better": False,
                "description": "effect_mse / that of no-change on the same held-out pathway (below 1: better than no change)",
            },
            "removal_mse_rel": {
                "higher_is_better": False,
                "description": "removal_mse / that of no-change",
            },
            "effect_mse": {
                "higher_is_better": False,
                "description": "MSE of the change, all cells, genes but the ligand",
            },
            "effect_mse_receivers": {
                "higher_is_better": False,
                "description": "MSE of the change over cells of the receiving types",
            },
            "effect_pearson": {
                "higher_is_better": True,
                "description": "Pearson of predicted vs true change over receiving cells x genes",
            },
            "removal_mse": {
                "higher_is_better": False,
                "description": "MSE of the change after removing a sender type from a region",
            },
            "removal_mse_receivers": {
                "higher_is_better": False,
                "description": "the same over cells of the pathway's receiving types",
            },
            "removal_pearson": {
                "higher_is_better": True,
                "description": "Pearson of predicted vs true change after the removal (receivers)",
            },
            "edge_precision": {
                "higher_is_better": True,
                "description": "share of true signalling edges among the top-scored graph edges",
            },
            "edge_precision_random": {
                "higher_is_better": True,
                "description": "the share a random ranking gets",
            },
        },
        "wall_seconds": {k: round(v, 3) for k, v in wall.items()},
        "machine": machine_info(),
    }
    from aivc._io import write_csv_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(pd.DataFrame(rows), out / "per_pathway.csv")
    write_results(out, result, spatial_markdown(result))
    return result


def spatial_markdown(result: dict[str, Any]) -> str:
    """A readable table of a ``spatial`` ``results.json``."""
    metrics = [k for k in result["metrics"] if any(k in e for e in result["models"].values())]
    arrows = {k: "↑" if result["metrics"][k]["higher_is_better"] else "↓" for k in metrics}
    lines = [
        f"# spatial on {result['dataset']} ({result['variant']})",
        "",
        result["description"] + ".",
        "",
        "Split: "
        + ", ".join(f"{k} {v}" for k, v in result["split"].items() if v is not None)
        + "; mean ± sd over seeds.",
        "",
        "| model | " + " | ".join(f"{k} {arrows[k]}" for k in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for name, e in result["models"].items():
        cells = " | ".join(fmt_summary(e.get(k)) if k in e else "—" for k in metrics)
        lines.append(f"| {name} | {cells} |")
    if result.get("aivc_choices"):
        lines += [
            "",
            "aivc's choices on training data: "
            + "; ".join(
                f"{k}: " + ", ".join(f"{c} ×{n}" for c, n in v.items())
                for k, v in result["aivc_choices"].items()
            ),
        ]
    if result.get("peers"):
        lines += ["", "Peers: " + "; ".join(f"{k} {v}" for k, v in result["peers"].items())]
    lines += [
        "",
        "Wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["wall_seconds"].items()),
    ]
    return "\n".join(lines) + "\n"


register_task(
    Task(
        name="spatial",
        description="Cell type, domains and unmeasured genes with the spatial neighbourhood; niche effects on the virtual tissue",
        datasets=("osmfish_cortex", "sim-tissue-0"),
        models=SPATIAL_MODELS,
        seeds=(0, 1, 2),
        run=run_spatial,
        variants=VARIANTS,
        options=("cell_type_key", "section_key", "region_key", "counts_layer"),
    )
)
