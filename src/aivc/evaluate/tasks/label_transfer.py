"""Cross-species label transfer benchmark: Baron pancreas human <-> mouse.

``run_label_transfer(out)`` (task ``label-transfer``; ``aivc benchmark
label-transfer --out DIR``) trains every model on the labelled cells of one
species (the reference) and annotates the other species (the query) without
using any query label. Cell types are matched through their Cell Ontology
class (``obs["cell_ontology_class"]``), so e.g. human ``t_cell`` and mouse
``T_cell`` are one type, and activated and quiescent stellate cells are one
type ("pancreatic stellate cell").

Scoring uses only query cells whose type exists in the reference; how many
were excluded per type is reported, and so is what each model answers for
the excluded cells (the share called "unknown").

Models, all on the same cells in the same run:

- ``aivc``: :class:`~aivc.cells.CellEncoder` trained on the reference counts
  (batch = donor), the query embedded without retraining (mouse genes through
  human one-to-one orthologs), and :class:`~aivc.cells.CellTypeDecoder` fit on
  the reference embedding.
- ``aivc-adaptive``: the same encoder embedding and decoder with
  ``adapt_to_query=True`` (novelty thresholds corrected for a shift of the
  whole query); its wall time includes the shared encoder.
- ``aivc-pca``: the same decoder on the PCA representation of ``pca-knn``
  (separates the decoder's contribution from the encoder's).
- ``pca-knn``: PCA (fit on the reference) of log-normalised, scaled
  expression of shared one-to-one orthologous genes, then a kNN classifier.
- ``logistic``: CellTypist-style L2 logistic regression on log1p-normalised
  (1e4), scaled expression of the same genes.
- ``scvi``: scANVI (scvi-tools), scArches-style: SCVI pre-trained on the
  reference with the donor as batch, SCANVI initialised from it and trained on
  the reference labels, the query added with ``SCANVI.load_query_data`` (new
  batches, frozen reference weights) and trained for a few epochs without its
  labels.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._io import json_safe
from aivc._progress import progress
from aivc._settings import settings
from aivc.cells._calibration import expected_calibration_error
from aivc.data._validate import DataValidationError
from aivc.evaluate._results import fmt_summary, summarize, write_results
from aivc.evaluate.tasks import Task, register_task

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "DIRECTIONS",
    "LABEL_TRANSFER_MODELS",
    "TransferConfig",
    "label_transfer_metrics",
    "run_label_transfer",
    "shared_gene_panel",
    "transfer_labels",
]

logger = logging.getLogger(__name__)

#: Direction name -> (reference dataset, reference species, query dataset, query species).
DIRECTIONS: dict[str, tuple[str, str, str, str]] = {
    "baron-human-to-mouse": ("baron_human", "human", "baron_mouse", "mouse"),
    "baron-mouse-to-human": ("baron_mouse", "mouse", "baron_human", "human"),
}
LABEL_TRANSFER_MODELS = ("aivc", "aivc-adaptive", "aivc-pca", "pca-knn", "logistic", "scvi")
UNKNOWN = "unknown"
_METRICS = (
    "accuracy",
    "macro_f1",
    "ece",
    "abstention",
    "accuracy_answered",
    "accuracy_forced",
    "unknown_rate_excluded",
)
_HIGHER = {
    "accuracy": True,
    "macro_f1": True,
    "ece": False,
    "abstention": False,
    "accuracy_answered": True,
    "accuracy_forced": True,
    "unknown_rate_excluded": True,
}


@dataclass(frozen=True)
class TransferConfig:
    """Settings of one label-transfer run (the same for every seed and direction).

    ``label_key`` and ``batch_key`` name the ``obs`` columns of the cell type
    and the batch (donor, technology) in both the reference and the query;
    they have no default, since they belong to the data (the Baron benchmark
    declares its own in :data:`BARON_COLUMNS`).
    """

    label_key: str
    batch_key: str
    n_top_genes: int = 2000
    n_pcs: int = 50
    n_neighbors: int = 15
    logistic_c: float = 1.0
    #: CellEncoder epochs and latent size of the ``aivc`` models, chosen on the reference
    #: species only (held-out-donor cell-type accuracy, never query labels; see
    #: ``benchmarks/label_transfer_encoder_selection.py``): 40 epochs beat 10 (human
    #: held-out kNN 0.85 vs 0.61), 16 dimensions beat 32, and the adversarial batch
    #: weight (CellEncoder default 1.0) tied with 0 and 0.1, so it is left unchanged.
    encoder_epochs: int = 40
    encoder_latent: int = 16
    scvi_latent: int = 10
    scvi_epochs: int = 10
    scanvi_epochs: int = 4
    query_epochs: int = 6
    max_threads: int = 2


#: The columns of the Baron pancreas datasets the benchmark reads.
BARON_COLUMNS = {"label_key": "cell_ontology_class", "batch_key": "donor"}

#: Named variants of the run (``--variant``); ``None`` is the default above.
VARIANTS: dict[str | None, TransferConfig] = {
    None: TransferConfig(**BARON_COLUMNS),
    "quick": TransferConfig(
        **BARON_COLUMNS,
        n_top_genes=1000,
        encoder_epochs=3,
        scvi_epochs=3,
        scanvi_epochs=2,
        query_epochs=2,
    ),
}


# ----------------------------------------------------------------------------- genes
def _to_human(adata: AnnData, species: str) -> AnnData:
    """``adata`` with human symbols: mouse genes renamed to their one-to-one human orthologs.

    Genes with several candidate orthologs are left out (``many="drop"``), so
    the baselines compare strictly one-to-one orthologous genes.
    """
    if species == "human":
        return adata
    from aivc.genes import map_orthologs

    result = map_orthologs(
        [str(g) for g in adata.var_names], from_species=species, to_species="human", many="drop"
    )
    names = pd.Index([str(g) for g in adata.var_names])
    keep = np.flatnonzero(names.isin(list(result.mapping)) & ~names.duplicated())
    out = adata[:, keep].copy()
    out.var_names = pd.Index([result.mapping[g] for g in names[keep]])
    return out


def shared_gene_panel(
    reference: AnnData, query: AnnData, *, n_top_genes: int
) -> tuple[pd.Index, dict[str, int]]:
    """Genes of the baselines: the reference's most variable genes among those both panels share.

    Both objects must already use the same (human) symbols. Variability is
    measured on the reference only (log-normalised dispersion), so the panel
    does not look at the query beyond which genes it measured.

    Returns
    -------
    genes
        The panel.
    info
        Counts: ``reference_genes``, ``query_genes``, ``shared_genes``, ``panel_genes``.
    """
    import scanpy as sc

    shared = reference.var_names.intersection(query.var_names, sort=False)
    if len(shared) < 10:
        msg = (
            f"The reference and the query share only {len(shared)} genes (reference {reference.n_vars}, "
            f"query {query.n_vars}); check that both use the same gene symbols (map orthologs first)."
        )
        raise DataValidationError(msg)
    ref = reference[:, shared].copy()
    detected = np.asarray((ref.X > 0).sum(axis=0)).ravel() >= 3
    ref = ref[:, detected].copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    n = min(n_top_genes, ref.n_vars)
    sc.pp.highly_variable_genes(ref, n_top_genes=n, flavor="seurat")
    genes = ref.var_names[ref.var["highly_variable"].to_numpy()]
    info = {
        "reference_genes": int(reference.n_vars),
        "query_genes": int(query.n_vars),
        "shared_genes": len(shared),
        "panel_genes": len(genes),
    }
    return genes, info


def _lognorm(adata: AnnData, genes: pd.Index) -> np.ndarray:
    """log1p of counts normalised to 1e4 over ``genes``, dense float64."""
    from aivc.data import log_normalize

    x, _ = log_normalize(adata[:, genes].X, dtype=np.float64, dense=True)
    return x


# ----------------------------------------------------------------------------- models
@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, settings.n_jobs)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Answer:
    """A model's answer for the query cells."""

    proba: np.ndarray  # cells x classes (reference classes)
    classes: list[str]
    labels: np.ndarray  # answered label per cell (may be UNKNOWN)


def _scaled_pair(ref_x: np.ndarray, query_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = ref_x.mean(axis=0)
    sd = ref_x.std(axis=0)
    sd[sd < 1e-8] = 1.0
    return (
        np.clip((ref_x - mean) / sd, -10, 10),
        np.clip((query_x - mean) / sd, -10, 10),
    )


def _pca_pair(
    ref_s: np.ndarray, query_s: np.ndarray, n_pcs: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(n_pcs, *ref_s.shape) - 1, svd_solver="arpack", random_state=seed)
    return pca.fit_transform(ref_s), pca.transform(query_s)


def _run_pca_knn(
    ref_pc: np.ndarray, y: np.ndarray, query_pc: np.ndarray, cfg: TransferConfig
) -> _Answer:
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(cfg.n_neighbors, len(y)), weights="distance")
    knn.fit(ref_pc, y)
    proba = knn.predict_proba(query_pc)
    classes = [str(c) for c in knn.classes_]
    return _Answer(proba, classes, np.asarray(classes, dtype=object)[proba.argmax(axis=1)])


def _run_logistic(
    ref_s: np.ndarray, y: np.ndarray, query_s: np.ndarray, cfg: TransferConfig
) -> _Answer:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=cfg.logistic_c, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(ref_s, y)
    proba = clf.predict_proba(query_s)
    classes = [str(c) for c in clf.classes_]
    return _Answer(proba, classes, np.asarray(classes, dtype=object)[proba.argmax(axis=1)])


def _run_decoder(
    ref_z: np.ndarray, y: np.ndarray, query_z: np.ndarray, seed: int, *, adapt: bool = False
) -> tuple[_Answer, Any]:
    from aivc.cells._celltype import CellTypeDecoder

    dec = CellTypeDecoder(use_rep=None, seed=seed, unknown_label=UNKNOWN, adapt_to_query=adapt).fit(
        ref_z, labels=y
    )
    table = dec.predict_table(query_z)
    proba = dec.predict_proba(query_z)
    answer = _Answer(proba, list(dec.classes_), table["label"].to_numpy(dtype=object))
    return answer, {
        "temperature": dec.temperature_,
        "calibration": dec.calibration_,
        "novelty_shift": table.attrs["novelty_shift"],
    }


def _encode(
    reference: AnnData,
    query: AnnData,
    *,
    ref_species: str,
    query_species: str,
    cfg: TransferConfig,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Cell encoder trained on the reference; both sets embedded without retraining."""
    from aivc.cells._encoder import CellEncoder

    enc = CellEncoder(n_latent=cfg.encoder_latent, max_epochs=cfg.encoder_epochs, seed=seed)
    enc.fit(reference, batch_key=cfg.batch_key, species=ref_species)
    return enc.transform(reference, species=ref_species), enc.transform(
        query, species=query_species
    )


def _run_scanvi(
    reference: AnnData,
    query: AnnData,
    genes: pd.Index,
    *,
    y: np.ndarray,
    cfg: TransferConfig,
    seed: int,
) -> _Answer:
    import anndata as ad
    import scvi

    unlabeled = "__unlabeled__"
    ref = ad.AnnData(
        X=sp.csr_matrix(reference[:, genes].X, dtype=np.float32),
        obs=pd.DataFrame(
            {
                "batch": reference.obs[cfg.batch_key].astype(str).to_numpy(),
                "label": y,
            },
            index=reference.obs_names.astype(str),
        ),
        var=pd.DataFrame(index=genes),
    )
    qry = ad.AnnData(
        X=sp.csr_matrix(query[:, genes].X, dtype=np.float32),
        obs=pd.DataFrame(
            {
                "batch": ["query:" + b for b in query.obs[cfg.batch_key].astype(str)],
                "label": unlabeled,
            },
            index=query.obs_names.astype(str),
        ),
        var=pd.DataFrame(index=genes),
    )
    quiet = {
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "enable_checkpointing": False,
    }
    old_seed = scvi.settings.seed
    lightning_loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "scvi")]
    old_levels = [lg.level for lg in lightning_loggers]
    try:
        for lg in lightning_loggers:
            lg.setLevel(logging.ERROR)
        scvi.settings.seed = seed
        scvi.model.SCVI.setup_anndata(ref, batch_key="batch", labels_key="label")
        vae = scvi.model.SCVI(
            ref, n_latent=cfg.scvi_latent, n_layers=2, encode_covariates=True,
            deeply_inject_covariates=False, use_layer_norm="both", use_batch_norm="none",
        )  # fmt: skip
        vae.train(max_epochs=cfg.scvi_epochs, accelerator="cpu", devices=1, **quiet)
        lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=unlabeled)
        lvae.train(
            max_epochs=cfg.scanvi_epochs,
            n_samples_per_label=100,
            accelerator="cpu",
            devices=1,
            **quiet,
        )
        scvi.model.SCANVI.prepare_query_anndata(qry, lvae)
        qmodel = scvi.model.SCANVI.load_query_data(qry, lvae, accelerator="cpu", device=1)
        qmodel.train(
            max_epochs=cfg.query_epochs,
            plan_kwargs={"weight_decay": 0.0},
            check_val_every_n_epoch=None,
            accelerator="cpu",
            devices=1,
            **quiet,
        )
        soft = qmodel.predict(soft=True)
    finally:
        scvi.settings.seed = old_seed
        for lg, lvl in zip(lightning_loggers, old_levels, strict=True):
            lg.setLevel(lvl)
    soft = soft.drop(columns=[c for c in soft.columns if c == unlabeled])
    proba = soft.to_numpy(dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)
    classes = [str(c) for c in soft.columns]
    return _Answer(proba, classes, np.asarray(classes, dtype=object)[proba.argmax(axis=1)])


# ----------------------------------------------------------------------------- metrics
def label_transfer_metrics(
    truth: np.ndarray,
    answer: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    *,
    unknown_label: str = UNKNOWN,
) -> dict[str, float]:
    """Metrics of one model on the query.

    Cells whose true type is not among ``classes`` (the reference types) are
    excluded from ``accuracy``, ``macro_f1``, ``ece``, ``abstention``,
    ``accuracy_answered`` and ``accuracy_forced``; ``unknown_rate_excluded`` is
    the share of those excluded cells answered ``unknown_label``.

    - ``accuracy``: share of included cells answered with their type ("unknown" is wrong);
    - ``macro_f1``: F1 averaged over the reference types present in the included query cells;
    - ``ece``: top-label expected calibration error of ``proba`` (15 bins);
    - ``abstention``: share of included cells answered "unknown";
    - ``accuracy_answered``: accuracy among included cells not answered "unknown";
    - ``accuracy_forced``: accuracy of the most probable type, never abstaining.
    """
    from sklearn.metrics import f1_score

    truth = np.asarray(truth, dtype=object).astype(str)
    answer = np.asarray(answer, dtype=object).astype(str)
    classes = [str(c) for c in classes]
    known = np.isin(truth, classes)
    t, a, p = truth[known], answer[known], np.asarray(proba)[known]
    pos = {c: i for i, c in enumerate(classes)}
    idx = np.array([pos[c] for c in t], dtype=np.int64)
    forced = np.asarray(classes, dtype=object)[p.argmax(axis=1)].astype(str) if len(t) else t
    answered = a != unknown_label
    present = sorted(set(t.tolist()))
    out = {
        "accuracy": float((a == t).mean()) if len(t) else float("nan"),
        "macro_f1": float(f1_score(t, a, labels=present, average="macro", zero_division=0))
        if len(t)
        else float("nan"),
        "ece": expected_calibration_error(p, idx) if len(t) else float("nan"),
        "abstention": float((~answered).mean()) if len(t) else float("nan"),
        "accuracy_answered": float((a[answered] == t[answered]).mean())
        if answered.any()
        else float("nan"),
        "accuracy_forced": float((forced == t).mean()) if len(t) else float("nan"),
        "unknown_rate_excluded": float((answer[~known] == unknown_label).mean())
        if (~known).any()
        else float("nan"),
    }
    return out


def _excluded_answers(
    truth: np.ndarray, answer: np.ndarray, classes: Sequence[str]
) -> dict[str, dict[str, int]]:
    """For each excluded query type: how many cells got each answer."""
    truth = np.asarray(truth).astype(str)
    answer = np.asarray(answer).astype(str)
    out: dict[str, dict[str, int]] = {}
    for t in sorted(set(truth.tolist()) - set(classes)):
        vals, counts = np.unique(answer[truth == t], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        out[t] = {str(vals[i]): int(counts[i]) for i in order}
    return out


# ----------------------------------------------------------------------------- one transfer
def transfer_labels(
    reference: AnnData,
    query: AnnData,
    *,
    ref_species: str,
    query_species: str,
    models: Sequence[str] = LABEL_TRANSFER_MODELS,
    seed: int = 0,
    config: TransferConfig,
) -> dict[str, Any]:
    """Annotate ``query`` with every model trained on ``reference``; score against the query labels.

    Both objects hold raw counts in ``X`` with gene symbols of their species as
    var names, the cell type in ``obs[config.label_key]`` and the batch in
    ``obs[config.batch_key]`` (the query's labels are used only for scoring).

    Returns
    -------
    ``{"metrics": {model: {...}}, "wall_seconds": {...}, "peak_memory_mb": {...},
    "excluded_answers": {model: {type: {answer: n}}}, "genes": {...}, "extra": {...}}``.
    """
    from aivc.evaluate._memory import ResourceMeter

    cfg = config
    unknown_models = sorted(set(models) - set(LABEL_TRANSFER_MODELS))
    if unknown_models:
        msg = f"Unknown label-transfer model(s) {unknown_models}; expected some of {list(LABEL_TRANSFER_MODELS)}."
        raise ValueError(msg)
    for name, a in (("reference", reference), ("query", query)):
        for key in (cfg.label_key, cfg.batch_key):
            if key not in a.obs:
                msg = f"The {name} has no obs[{key!r}] (columns: {list(a.obs.columns)})."
                raise DataValidationError(msg)
    y = reference.obs[cfg.label_key].astype(str).to_numpy()
    truth = query.obs[cfg.label_key].astype(str).to_numpy()

    ref_h, query_h = _to_human(reference, ref_species), _to_human(query, query_species)
    genes, gene_info = shared_gene_panel(ref_h, query_h, n_top_genes=cfg.n_top_genes)
    ref_x, query_x = _lognorm(ref_h, genes), _lognorm(query_h, genes)
    ref_s, query_s = _scaled_pair(ref_x, query_x)
    del ref_x, query_x
    need_pca = {"pca-knn", "aivc-pca"} & set(models)
    ref_pc, query_pc = _pca_pair(ref_s, query_s, cfg.n_pcs, seed) if need_pca else (None, None)

    answers: dict[str, _Answer] = {}
    wall: dict[str, float] = {}
    peak: dict[str, float] = {}
    extra: dict[str, Any] = {}
    embedding: tuple[np.ndarray, np.ndarray] | None = None
    encoder_seconds = encoder_mb = 0.0
    first_encoder_model = next((m for m in models if m in ("aivc", "aivc-adaptive")), None)
    with _threads(cfg.max_threads):
        for name in progress(list(models), desc="label transfer", unit="model"):
            with ResourceMeter() as meter:
                if name == "pca-knn":
                    answers[name] = _run_pca_knn(ref_pc, y, query_pc, cfg)
                elif name == "aivc-pca":
                    answers[name], extra[name] = _run_decoder(ref_pc, y, query_pc, seed)
                elif name == "logistic":
                    answers[name] = _run_logistic(ref_s, y, query_s, cfg)
                elif name == "scvi":
                    answers[name] = _run_scanvi(ref_h, query_h, genes, y=y, cfg=cfg, seed=seed)
                elif name in ("aivc", "aivc-adaptive"):
                    if embedding is None:
                        with ResourceMeter() as enc_meter:
                            embedding = _encode(
                                reference,
                                query,
                                ref_species=ref_species,
                                query_species=query_species,
                                cfg=cfg,
                                seed=seed,
                            )
                        encoder_seconds = enc_meter.wall_seconds
                        encoder_mb = enc_meter.peak_increase_mb
                    answers[name], extra[name] = _run_decoder(
                        embedding[0], y, embedding[1], seed, adapt=name == "aivc-adaptive"
                    )
            if name in ("aivc", "aivc-adaptive") and name != first_encoder_model:
                # the encoder ran once for both rows: count its cost in each
                wall[name] = meter.wall_seconds + encoder_seconds
                peak[name] = max(meter.peak_increase_mb, encoder_mb)
                continue
            wall[name] = meter.wall_seconds
            peak[name] = meter.peak_increase_mb
            logger.info("label transfer: %s took %.1f s", name, meter.wall_seconds)
    classes = sorted(set(y.tolist()))
    metrics = {}
    for name, ans in answers.items():
        # every model's probabilities over the same reference types, same order
        proba = pd.DataFrame(ans.proba, columns=ans.classes).reindex(
            columns=classes, fill_value=0.0
        )
        metrics[name] = label_transfer_metrics(truth, ans.labels, proba.to_numpy(), classes)
    excluded = {t: int((truth == t).sum()) for t in sorted(set(truth.tolist()) - set(classes))}
    return {
        "metrics": metrics,
        "wall_seconds": wall,
        "peak_memory_mb": peak,
        "excluded_cells": excluded,
        "n_query_included": int(np.isin(truth, classes).sum()),
        "n_query": len(truth),
        "n_reference": len(y),
        "reference_types": classes,
        "excluded_answers": {
            name: _excluded_answers(truth, ans.labels, classes) for name, ans in answers.items()
        },
        "genes": gene_info,
        "panel": [str(g) for g in genes],
        "extra": extra,
    }


# ----------------------------------------------------------------------------- runner
def _directions(dataset: str | None) -> list[str]:
    if dataset in (None, "baron", "baron_human_mouse", "pancreas_baron_human_mouse"):
        return list(DIRECTIONS)
    if dataset not in DIRECTIONS:
        msg = (
            f"Unknown label-transfer dataset {dataset!r}; expected one of {[*DIRECTIONS, 'baron']}."
        )
        raise ValueError(msg)
    return [dataset]


def run_label_transfer(
    out: Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    variant: str | None = None,
) -> dict[str, Any]:
    """Run the cross-species label-transfer benchmark and write ``results.json`` / ``results.md``.

    Parameters
    ----------
    out
        Output directory (created).
    dataset
        ``"baron-human-to-mouse"``, ``"baron-mouse-to-human"``, or ``None`` /
        ``"baron"`` for both directions.
    models
        Subset of :data:`LABEL_TRANSFER_MODELS` (default: all).
    seeds
        Seeds of every model (encoder, decoder split, scVI); the cells are the same for every seed.
    variant
        ``None`` (default settings) or ``"quick"`` (few epochs, for smoke tests).
    """
    from aivc._version import __version__
    from aivc.data._registry import load

    if variant not in VARIANTS:
        msg = f"Unknown label-transfer variant {variant!r}; expected one of {list(VARIANTS)}."
        raise ValueError(msg)
    cfg = VARIANTS[variant]
    model_names = list(models) if models else list(LABEL_TRANSFER_MODELS)
    seeds = [int(s) for s in seeds]
    if not seeds:
        msg = "Pass at least one seed."
        raise ValueError(msg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    directions = _directions(dataset)

    runs_by_direction: dict[str, list[dict[str, Any]]] = {d: [] for d in directions}
    result: dict[str, Any] = {}
    for direction in directions:
        ref_name, ref_species, query_name, query_species = DIRECTIONS[direction]
        reference, query = load(ref_name), load(query_name)
        for seed in seeds:
            logger.info("label transfer %s, seed %d", direction, seed)
            runs_by_direction[direction].append(
                transfer_labels(
                    reference,
                    query,
                    ref_species=ref_species,
                    query_species=query_species,
                    models=model_names,
                    seed=seed,
                    config=cfg,
                )
            )
            # written after every seed, so an interrupted run leaves its finished seeds
            result = _build_result(runs_by_direction, seeds, model_names, cfg, variant, __version__)
            write_results(out, result, label_transfer_markdown(result))
    return json_safe(result)


def _build_result(
    runs_by_direction: dict[str, list[dict[str, Any]]],
    seeds: Sequence[int],
    model_names: Sequence[str],
    cfg: TransferConfig,
    variant: str | None,
    version: str,
) -> dict[str, Any]:
    directions = list(runs_by_direction)
    by_direction: dict[str, Any] = {}
    for direction, runs in runs_by_direction.items():
        if not runs:
            continue
        ref_name, _, query_name, _ = DIRECTIONS[direction]
        first = runs[0]
        by_direction[direction] = {
            "reference": ref_name,
            "query": query_name,
            "seeds": list(seeds[: len(runs)]),
            "n_reference": first["n_reference"],
            "n_query": first["n_query"],
            "n_query_included": first["n_query_included"],
            "excluded_cells": first["excluded_cells"],
            "reference_types": first["reference_types"],
            "genes": first["genes"],
            "models": {
                m: {k: summarize([r["metrics"][m][k] for r in runs]) for k in _METRICS}
                for m in model_names
            },
            "per_seed": {
                m: {k: [r["metrics"][m][k] for r in runs] for k in _METRICS} for m in model_names
            },
            "wall_seconds": {
                m: summarize([r["wall_seconds"][m] for r in runs]) for m in model_names
            },
            "wall_seconds_total": {
                m: float(sum(r["wall_seconds"][m] for r in runs)) for m in model_names
            },
            "peak_memory_mb": {
                m: float(max(r["peak_memory_mb"][m] for r in runs)) for m in model_names
            },
            "excluded_answers_first_seed": first["excluded_answers"],
            "decoder_first_seed": first["extra"],
        }
    done = list(by_direction)
    n_common = min(len(runs_by_direction[d]) for d in done)
    complete = all(len(runs_by_direction[d]) == len(seeds) for d in directions)
    # top level: mean over directions per seed, then mean +- sd over seeds
    top: dict[str, Any] = {}
    for m in model_names:
        entry: dict[str, Any] = {}
        for k in _METRICS:
            per_seed = []
            for i in range(n_common):
                vals = [by_direction[d]["per_seed"][m][k][i] for d in done]
                vals = [v for v in vals if v is not None and np.isfinite(v)]
                per_seed.append(float(np.mean(vals)) if vals else float("nan"))
            entry[k] = summarize(per_seed)
        entry["by_direction"] = {d: by_direction[d]["models"][m] for d in done}
        top[m] = entry
    return {
        "task": "label-transfer",
        "dataset": directions[0] if len(directions) == 1 else "baron-human-mouse",
        "description": (
            "Cross-species cell-type label transfer, Baron 2016 pancreas: train on one species' labelled "
            "cells, annotate the other's; types matched by Cell Ontology class; scored on query cells whose "
            "type exists in the reference"
        ),
        "complete": complete,
        "split": {
            "kind": "cross-species",
            "directions": directions,
            "seeds": list(seeds) if complete else list(seeds[:n_common]),
            "n_splits": len(directions),
            "label_key": cfg.label_key,
            "batch_key": cfg.batch_key,
        },
        "variant": variant,
        "config": asdict(cfg),
        "models": top,
        "metrics": {k: {"higher_is_better": _HIGHER[k], "source": "aivc"} for k in _METRICS},
        "directions": by_direction,
        "wall_seconds": {
            m: float(sum(by_direction[d]["wall_seconds_total"][m] for d in done))
            for m in model_names
        },
        "peak_memory_mb": {
            m: float(max(by_direction[d]["peak_memory_mb"][m] for d in done)) for m in model_names
        },
        "peak_memory_note": "peak resident memory of fit+predict above the process's memory before the model ran (max over runs)",
        "wall_note": "total seconds of fit+predict over all seeds and directions",
        "machine": {
            "cpus": os.cpu_count(),
            "threads": cfg.max_threads,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "aivc": version,
        },
    }


def label_transfer_markdown(result: dict[str, Any]) -> str:
    """A readable report of a label-transfer ``results.json``."""
    cols = ("accuracy", "macro_f1", "ece", "abstention", "accuracy_answered", "accuracy_forced")
    arrows = {k: "↑" if result["metrics"][k]["higher_is_better"] else "↓" for k in cols}
    lines = [f"# label-transfer on {result['dataset']}", "", result["description"] + ".", ""]
    for d, info in result["directions"].items():
        g = info["genes"]
        lines += [
            f"## {d} ({info['reference']} → {info['query']})",
            "",
            f"{info['n_reference']} reference cells; {info['n_query_included']} of {info['n_query']} query cells "
            f"scored; shared one-to-one orthologous genes {g['shared_genes']}, baseline panel {g['panel_genes']} "
            f"genes. Mean ± sd over seeds {info['seeds']}.",
            "",
            "| model | " + " | ".join(f"{c} {arrows[c]}" for c in cols) + " | wall s | peak MB |",
            "|---|" + "---|" * (len(cols) + 2),
        ]
        for m, vals in info["models"].items():
            lines.append(
                f"| {m} | "
                + " | ".join(fmt_summary(vals[c]) for c in cols)
                + f" | {info['wall_seconds'][m]['mean']:.1f} | {info['peak_memory_mb'][m]:.0f} |"
            )
        if info["excluded_cells"]:
            lines += [
                "",
                "Query cells excluded (type absent from the reference): "
                + ", ".join(f"{t} {n}" for t, n in info["excluded_cells"].items())
                + ".",
                "",
                "| model | share answered unknown | answers (first seed) |",
                "|---|---|---|",
            ]
            for m, vals in info["models"].items():
                ans = info["excluded_answers_first_seed"].get(m, {})
                text = "; ".join(
                    f"{t}: " + ", ".join(f"{a} {n}" for a, n in list(c.items())[:3])
                    for t, c in ans.items()
                )
                lines.append(f"| {m} | {fmt_summary(vals['unknown_rate_excluded'], 2)} | {text} |")
        lines.append("")
    m = result["machine"]
    lines += [
        "Metrics: accuracy and macro-F1 count 'unknown' as wrong; abstention = share of scored cells "
        "answered 'unknown'; accuracy_answered = accuracy of the rest; accuracy_forced = accuracy of the "
        "most probable type; ECE = 15-bin top-label expected calibration error of the probabilities.",
        "",
        f"Machine: {m['cpus']} CPUs ({m['threads']} threads), Python {m['python']}, aivc {m['aivc']}.",
        "",
    ]
    return "\n".join(lines)


register_task(
    Task(
        name="label-transfer",
        description="Annotate cells of one species from a reference of the other (Baron pancreas, both directions)",
        datasets=("baron", *DIRECTIONS),
        models=LABEL_TRANSFER_MODELS,
        seeds=(0, 1, 2),
        run=run_label_transfer,
        variants=tuple(v for v in VARIANTS if v is not None),
    )
)
