"""Label-transfer benchmark: annotate a query with cell types learnt on a labelled reference.

``run_label_transfer(out)`` (task ``label-transfer``; ``aivc benchmark
label-transfer --out DIR``) trains every model on the labelled cells of a
reference and annotates a query without using any query label. Built-in
transfers (``--dataset``):

- ``baron`` (default): Baron pancreas human -> mouse and mouse -> human, cell
  types matched through their Cell Ontology class, donors as batches;
- ``kang2018``: control PBMCs -> the same donors' IFN-beta-stimulated PBMCs
  (a cross-condition shift, no batch column);
- a path to an ``.h5ad`` file with ``--cell-type-key``, optional
  ``--batch-key``, and ``--query-key`` / ``--query-value`` naming the query
  cells (all others form the reference).

Scoring uses only query cells whose type exists in the reference; how many
were excluded per type is reported, and so is what each model answers for
the excluded cells (the share called "unknown").

Models, all on the same cells in the same run:

- ``aivc``: :class:`~aivc.cells.CellAnnotator`, which chooses among logistic,
  PCA-kNN, Harmony-kNN, PCA-logistic and self-training classifiers (reference- or batch-scaled) by
  predicting held-out reference batches, calibrates its probabilities on them
  and answers "unknown" for cells unlike any reference type.
- ``aivc-encoder``: :class:`~aivc.cells.CellEncoder` trained on the reference
  counts, the query embedded without retraining, and
  :class:`~aivc.cells.CellTypeDecoder` fit on the reference embedding.
- ``logistic``: L2 logistic regression (C = 1) on log-normalised, scaled
  expression of the panel (the reference's most variable shared genes).
- ``pca-knn``: PCA (fit on the reference) of the same values, then 15-nearest-neighbour vote.
- ``harmony``: Harmony (harmonypy) on the joint principal components of
  reference and query (batches: the reference's batches and the query), then
  the kNN vote of the corrected reference.
- ``scanvi``: scANVI (scvi-tools), scArches-style: SCVI trained on the
  reference counts (batch covariate), SCANVI initialised from it on the
  reference labels, the query added with ``SCANVI.load_query_data`` (frozen
  reference weights) and trained without its labels. Epochs are those of
  :class:`TransferConfig` (scvi-tools' own size heuristic with early stopping
  for SCVI, the scvi-tools/scArches tutorial schedule for SCANVI and the query).

Every model reads the same log-expression (:func:`aivc.data.log_expression`):
counts are normalised once, log-normalised input is used as given, and the
count models (``scanvi``, ``aivc-encoder``) get counts rebuilt from library
sizes when ``--library-size-key`` names them, or are skipped with a note.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
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
    "LABEL_TRANSFER_MODELS",
    "TRANSFERS",
    "TransferConfig",
    "TransferSpec",
    "label_transfer_metrics",
    "run_label_transfer",
    "shared_gene_panel",
    "transfer_labels",
]

logger = logging.getLogger(__name__)

LABEL_TRANSFER_MODELS = (
    "aivc", "aivc-encoder", "logistic", "pca-knn", "harmony", "scanvi", "scanvi-retrain",
)  # fmt: skip
#: Models that need raw counts (given, or rebuilt from library sizes).
COUNT_MODELS = frozenset({"aivc-encoder", "scanvi", "scanvi-retrain"})
UNKNOWN = "unknown"
#: Keyword options of the label tasks (``--cell-type-key`` etc. on the command line).
LABEL_OPTIONS = (
    "cell_type_key",
    "batch_key",
    "query_key",
    "query_value",
    "species",
    "input",
    "library_size_key",
    "counts_layer",
)
_METRICS = (
    "accuracy",
    "macro_f1",
    "ece",
    "abstention",
    "accuracy_answered",
    "accuracy_forced",
    "unknown_rate_excluded",
    "query_mixing",
)
_HIGHER = {
    "accuracy": True,
    "macro_f1": True,
    "ece": False,
    "abstention": False,
    "accuracy_answered": True,
    "accuracy_forced": True,
    "unknown_rate_excluded": True,
    "query_mixing": True,
}


@dataclass(frozen=True)
class TransferSpec:
    """One reference -> query transfer: where the cells come from and which columns to read.

    ``reference`` and ``query`` are registered dataset names or ``.h5ad``
    paths (the same one when ``query_key`` / ``query_value`` split a single
    dataset); ``label_key`` and ``batch_key`` are declared by the data, never
    assumed.
    """

    name: str
    reference: str
    reference_species: str
    query: str
    query_species: str
    label_key: str
    batch_key: str | None = None
    query_key: str | None = None
    query_value: str | None = None
    input: str = "auto"
    library_size_key: str | None = None
    counts_layer: str | None = None
    description: str = ""


#: The built-in transfers.
TRANSFERS: dict[str, TransferSpec] = {
    "baron-human-to-mouse": TransferSpec(
        "baron-human-to-mouse", "baron_human", "human", "baron_mouse", "mouse",
        "cell_ontology_class", "donor",
        description="Baron pancreas, human donors -> mouse donors",
    ),
    "baron-mouse-to-human": TransferSpec(
        "baron-mouse-to-human", "baron_mouse", "mouse", "baron_human", "human",
        "cell_ontology_class", "donor",
        description="Baron pancreas, mouse donors -> human donors",
    ),
    "kang2018-control-to-stimulated": TransferSpec(
        "kang2018-control-to-stimulated", "kang2018", "human", "kang2018", "human",
        "cell_type", None, "condition_source", "stimulated", counts_layer="counts",
        description="Kang PBMCs, control cells -> IFN-beta-stimulated cells",
    ),
}  # fmt: skip
#: ``--dataset`` names and the transfers they run.
GROUPS: dict[str, tuple[str, ...]] = {
    "baron": ("baron-human-to-mouse", "baron-mouse-to-human"),
    "kang2018": ("kang2018-control-to-stimulated",),
    **{name: (name,) for name in TRANSFERS},
}


@dataclass(frozen=True)
class TransferConfig:
    """Model settings of one label-transfer run (the same for every seed and transfer)."""

    n_top_genes: int = 2000
    n_pcs: int = 50
    n_neighbors: int = 15
    logistic_c: float = 1.0
    #: CellEncoder epochs and latent size of ``aivc-encoder``, chosen on the reference
    #: species only (held-out-donor cell-type accuracy, never query labels; see
    #: ``benchmarks/label_transfer_encoder_selection.py``): 40 epochs beat 10 (human
    #: held-out kNN 0.85 vs 0.61), 16 dimensions beat 32.
    encoder_epochs: int = 40
    encoder_latent: int = 16
    scvi_latent: int = 10
    #: SCVI: ``None`` is scvi-tools' own heuristic (400 epochs below 20,000 cells, fewer above),
    #: stopped early when the validation loss stops improving (the library's convergence rule).
    scvi_epochs: int | None = None
    #: SCANVI fine-tuning from SCVI and query training: the schedule of the scvi-tools /
    #: scArches reference-mapping tutorials (20 and 100 epochs).
    scanvi_epochs: int = 20
    query_epochs: int = 100
    early_stopping: bool = True
    max_threads: int = 2


#: Named variants of the run (``--variant``); ``None`` is the default above.
VARIANTS: dict[str | None, TransferConfig] = {
    None: TransferConfig(),
    "quick": TransferConfig(
        n_top_genes=1000,
        encoder_epochs=3,
        scvi_epochs=3,
        scanvi_epochs=2,
        query_epochs=2,
        early_stopping=False,
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


def _shared_genes(reference: AnnData, query: AnnData) -> pd.Index:
    shared = reference.var_names.intersection(query.var_names, sort=False)
    if len(shared) < 10:
        msg = (
            f"The reference and the query share only {len(shared)} genes (reference {reference.n_vars}, "
            f"query {query.n_vars}); check that both use the same gene symbols (map orthologs first)."
        )
        raise DataValidationError(msg)
    return shared


def shared_gene_panel(
    reference: AnnData,
    query: AnnData,
    *,
    n_top_genes: int,
    input: str = "auto",
    library_size_key: str | None = None,
) -> tuple[pd.Index, dict[str, int]]:
    """Genes of the baselines: the reference's most variable genes among those both panels share.

    Both objects must already use the same (human) symbols. Variability is
    measured on the reference only (:func:`aivc.cells.reference_panel`), so
    the panel does not look at the query beyond which genes it measured.

    Returns
    -------
    genes
        The panel.
    info
        Counts: ``reference_genes``, ``query_genes``, ``shared_genes``, ``panel_genes``.
    """
    from aivc.cells._annotate import reference_panel
    from aivc.data._expression import log_expression

    shared = _shared_genes(reference, query)
    x, _ = log_expression(
        reference,
        genes=shared,
        input=input,
        library_size_key=library_size_key,  # type: ignore[arg-type]
    )
    genes = reference_panel(x, shared, n_top_genes=n_top_genes)
    info = {
        "reference_genes": int(reference.n_vars),
        "query_genes": int(query.n_vars),
        "shared_genes": len(shared),
        "panel_genes": len(genes),
    }
    return genes, info


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
    #: How unlike every reference type each cell is (higher: more likely unknown); models
    #: without their own score use 1 - the top probability.
    unknown_score: np.ndarray | None = None
    #: The reference and query cells in the model's joint space (for ``query_mixing``);
    #: ``None`` for models without one (logistic regression on genes).
    embedding: tuple[np.ndarray, np.ndarray] | None = None

    def novelty(self) -> np.ndarray:
        if self.unknown_score is not None:
            return self.unknown_score
        return 1.0 - self.proba.max(axis=1)


def _scaled_pair(ref_x: np.ndarray, query_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets centred and scaled by the reference's gene means and sds (clipped at 10)."""
    from aivc.cells._annotate import _scale, _stats

    mean, sd = _stats(ref_x)
    return _scale(ref_x, mean, sd), _scale(query_x, mean, sd)


def _pca_pair(
    ref_s: np.ndarray, query_s: np.ndarray, n_pcs: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(n_pcs, *ref_s.shape) - 1, svd_solver="arpack", random_state=seed)
    return pca.fit_transform(ref_s), pca.transform(query_s)


def _knn_answer(
    ref_z: np.ndarray, y: np.ndarray, query_z: np.ndarray, cfg: TransferConfig
) -> _Answer:
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(cfg.n_neighbors, len(y)), weights="distance")
    knn.fit(ref_z, y)
    proba = knn.predict_proba(query_z)
    classes = [str(c) for c in knn.classes_]
    labels = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    return _Answer(proba, classes, labels, embedding=(ref_z, query_z))


def _run_harmony(
    ref_pc: np.ndarray,
    query_pc: np.ndarray,
    y: np.ndarray,
    ref_batches: np.ndarray,
    query_batches: np.ndarray,
    cfg: TransferConfig,
    seed: int,
) -> _Answer:
    import harmonypy

    pcs = np.vstack([ref_pc, query_pc])
    meta = pd.DataFrame({"batch": np.concatenate([ref_batches, query_batches]).astype(str)})
    ho = harmonypy.run_harmony(pcs, meta, "batch", random_state=seed, verbose=False)
    z = np.asarray(ho.Z_corr)
    z = z if z.shape[0] == len(pcs) else z.T
    return _knn_answer(z[: len(ref_pc)], y, z[len(ref_pc) :], cfg)


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


def _run_annotator(
    reference: AnnData,
    query: AnnData,
    genes: pd.Index,
    *,
    spec: TransferSpec,
    cfg: TransferConfig,
    seed: int,
) -> tuple[_Answer, dict[str, Any]]:
    from aivc.cells._annotate import CellAnnotator

    ann = CellAnnotator(
        label_key=spec.label_key,
        batch_key=spec.batch_key,
        n_top_genes=cfg.n_top_genes,
        n_pcs=cfg.n_pcs,
        n_neighbors=cfg.n_neighbors,
        input=spec.input,
        library_size_key=spec.library_size_key,
        unknown_label=UNKNOWN,
        seed=seed,
    ).fit(reference, genes=genes)
    table, proba = ann.answer(query)
    extra = {**ann.selection_, "query_input": table.attrs["input"]}
    answer = _Answer(
        proba,
        list(ann.classes_),
        table["label"].to_numpy(dtype=object),
        table["unknown_score"].to_numpy(dtype=np.float64),
        embedding=(ann.transform(reference), ann.transform(query)),
    )
    return answer, extra


def _run_encoder(
    reference: AnnData,
    query: AnnData,
    y: np.ndarray,
    *,
    ref_species: str,
    query_species: str,
    batch_key: str | None,
    cfg: TransferConfig,
    seed: int,
) -> tuple[_Answer, dict[str, Any]]:
    """Cell encoder trained on the reference; both sets embedded without retraining; decoder on top."""
    from aivc.cells._celltype import CellTypeDecoder
    from aivc.cells._encoder import CellEncoder

    enc = CellEncoder(n_latent=cfg.encoder_latent, max_epochs=cfg.encoder_epochs, seed=seed)
    enc.fit(reference, batch_key=batch_key, species=ref_species)
    ref_z = enc.transform(reference, species=ref_species)
    query_z = enc.transform(query, species=query_species)
    dec = CellTypeDecoder(use_rep=None, seed=seed, unknown_label=UNKNOWN).fit(ref_z, labels=y)
    table = dec.predict_table(query_z)
    proba = dec.predict_proba(query_z)
    answer = _Answer(
        proba, list(dec.classes_), table["label"].to_numpy(dtype=object), embedding=(ref_z, query_z)
    )
    return answer, {"temperature": dec.temperature_, "calibration": dec.calibration_}


def _epochs_run(model: Any) -> int | None:
    """Epochs a scvi-tools model trained for, from its training history."""
    history = getattr(model, "history", None) or {}
    for key in ("elbo_train", "train_loss_epoch"):
        if key in history:
            return len(history[key])
    return None


def _run_scanvi(
    ref_counts: sp.csr_matrix,
    query_counts: sp.csr_matrix,
    genes: pd.Index,
    *,
    y: np.ndarray,
    ref_batches: np.ndarray,
    query_batches: np.ndarray,
    cfg: TransferConfig,
    seed: int,
    retrain: bool = False,
) -> tuple[_Answer, dict[str, Any]]:
    """scANVI on the reference, then either the query mapped onto it without retraining the
    reference (scArches surgery: ``load_query_data``, only the query's batch weights learn), or,
    with ``retrain``, one model trained from scratch on reference + unlabelled query cells."""
    import anndata as ad
    import scvi

    unlabeled = "__unlabeled__"
    ref = ad.AnnData(
        X=sp.csr_matrix(ref_counts, dtype=np.float32),
        obs=pd.DataFrame(
            {"batch": ref_batches.astype(str), "label": y},
            index=[f"r{i}" for i in range(len(y))],
        ),
        var=pd.DataFrame(index=genes),
    )
    qry = ad.AnnData(
        X=sp.csr_matrix(query_counts, dtype=np.float32),
        obs=pd.DataFrame(
            {"batch": ["query:" + b for b in query_batches.astype(str)], "label": unlabeled},
            index=[f"q{i}" for i in range(len(query_batches))],
        ),
        var=pd.DataFrame(index=genes),
    )
    # scvi-tools' own in-memory logger stays on: it records the epochs each stage ran
    quiet = {
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    stop = {"early_stopping": True} if cfg.early_stopping else {}
    old_seed = scvi.settings.seed
    lightning_loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "scvi")]
    old_levels = [lg.level for lg in lightning_loggers]
    epochs: dict[str, Any] = {}
    try:
        for lg in lightning_loggers:
            lg.setLevel(logging.ERROR)
        scvi.settings.seed = seed
        scvi.settings.dl_num_workers = 0
        train = ad.concat([ref, qry]) if retrain else ref
        scvi.model.SCVI.setup_anndata(train, batch_key="batch", labels_key="label")
        vae = scvi.model.SCVI(
            train, n_latent=cfg.scvi_latent, n_layers=2, encode_covariates=True,
            deeply_inject_covariates=False, use_layer_norm="both", use_batch_norm="none",
        )  # fmt: skip
        vae.train(max_epochs=cfg.scvi_epochs, accelerator="cpu", devices=1, **stop, **quiet)
        epochs["scvi"] = _epochs_run(vae)
        lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=unlabeled)
        lvae.train(
            max_epochs=cfg.scanvi_epochs,
            n_samples_per_label=100,
            accelerator="cpu",
            devices=1,
            **quiet,
        )
        epochs["scanvi"] = _epochs_run(lvae)
        if retrain:
            rows = np.arange(ref.n_obs, train.n_obs)
            soft = lvae.predict(indices=rows, soft=True)
            latent = lvae.get_latent_representation()
            space = (latent[: ref.n_obs], latent[ref.n_obs :])
        else:
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
            epochs["query"] = _epochs_run(qmodel)
            soft = qmodel.predict(soft=True)
            space = (lvae.get_latent_representation(), qmodel.get_latent_representation())
    finally:
        scvi.settings.seed = old_seed
        for lg, lvl in zip(lightning_loggers, old_levels, strict=True):
            lg.setLevel(lvl)
    soft = soft.drop(columns=[c for c in soft.columns if c == unlabeled])
    proba = soft.to_numpy(dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)
    classes = [str(c) for c in soft.columns]
    labels = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    answer = _Answer(proba, classes, labels, embedding=space)
    return answer, {"epochs": epochs, "retrained_on_query": retrain}


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


def query_mixing(
    reference: np.ndarray, query: np.ndarray, *, max_cells: int = 3000, seed: int = 0
) -> float:
    """How well query cells mix with reference cells in a model's joint space, 0 to 1.

    The batch LISI of the labels "reference" / "query" (Korsunsky et al. 2019),
    averaged over cells and scaled so that 0 means every neighbourhood holds one
    side only and 1 means neighbourhoods as mixed as two sides can be. At most
    ``max_cells`` cells (sampled with ``seed``, in proportion) are scored.
    """
    from aivc.evaluate._scib import lisi

    x = np.vstack([reference, query]).astype(np.float64)
    side = np.repeat(["reference", "query"], [len(reference), len(query)])
    if len(x) > max_cells:
        take = np.sort(np.random.default_rng(seed).choice(len(x), max_cells, replace=False))
        x, side = x[take], side[take]
    if len(np.unique(side)) < 2:
        return float("nan")
    return float(np.clip(np.mean(lisi(x, side)) - 1.0, 0.0, 1.0))


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
def _batches(adata: AnnData, key: str | None, default: str) -> np.ndarray:
    if key is None or key not in adata.obs:
        return np.full(adata.n_obs, default, dtype=object)
    return adata.obs[key].astype(str).to_numpy(dtype=object)


def _counts(adata: AnnData, genes: pd.Index, spec: TransferSpec) -> sp.csr_matrix | None:
    """Raw counts of ``genes`` (given, or rebuilt from library sizes), or ``None`` when there are none."""
    from aivc.data._expression import _resolve_kind, counts_from_log

    kind = _resolve_kind(adata.X, spec.input, "X")
    if kind == "counts":
        return sp.csr_matrix(adata[:, genes].X, dtype=np.float32)
    if spec.library_size_key is None or spec.library_size_key not in adata.obs:
        return None
    lib = adata.obs[spec.library_size_key].to_numpy(dtype=np.float64)
    return sp.csr_matrix(counts_from_log(adata.X, lib)[:, adata.var_names.get_indexer(genes)])


@dataclass
class QueryAnswers:
    """What :func:`answer_query` returns: every model's answer and its cost."""

    answers: dict[str, _Answer]
    wall: dict[str, float]
    peak: dict[str, float]
    extra: dict[str, Any]
    skipped: dict[str, str]
    classes: list[str]
    genes: dict[str, int]
    panel: list[str]
    input: dict[str, str]
    n_reference: int


def answer_query(
    reference: AnnData,
    query: AnnData,
    *,
    spec: TransferSpec,
    models: Sequence[str] = LABEL_TRANSFER_MODELS,
    seed: int = 0,
    config: TransferConfig,
) -> QueryAnswers:
    """Every model trained on ``reference`` answers ``query`` (no query label is read).

    Both objects hold raw counts or log-normalised values in ``X`` (as
    ``spec.input`` says) with gene symbols of their species as var names, the
    cell type in ``obs[spec.label_key]`` and, optionally, the batch in
    ``obs[spec.batch_key]`` (the query's labels are used only for scoring).

    The query's labels must exist (the label column is checked on both
    sides) but only :func:`transfer_labels` and the unknown-type task read them, to score.
    """
    from aivc.data._expression import log_expression
    from aivc.evaluate._memory import ResourceMeter

    cfg = config
    unknown_models = sorted(set(models) - set(LABEL_TRANSFER_MODELS))
    if unknown_models:
        msg = f"Unknown label-transfer model(s) {unknown_models}; expected some of {list(LABEL_TRANSFER_MODELS)}."
        raise ValueError(msg)
    for name, a in (("reference", reference), ("query", query)):
        if spec.label_key not in a.obs:
            msg = (
                f"The {name} has no obs[{spec.label_key!r}] with cell types (columns: "
                f"{list(a.obs.columns)}); name the cell-type column (--cell-type-key)."
            )
            raise DataValidationError(msg)
    if spec.batch_key is not None and spec.batch_key not in reference.obs:
        msg = (
            f"The reference has no obs[{spec.batch_key!r}] (columns: {list(reference.obs.columns)}); "
            "name the batch column, or leave --batch-key out when there is none."
        )
        raise DataValidationError(msg)
    y = reference.obs[spec.label_key].astype(str).to_numpy()

    ref_h = _to_human(reference, spec.reference_species)
    query_h = _to_human(query, spec.query_species)
    shared = _shared_genes(ref_h, query_h)
    read = {"input": spec.input, "library_size_key": spec.library_size_key}
    ref_all, ref_input = log_expression(ref_h, genes=shared, **read)  # type: ignore[arg-type]
    query_all, query_input = log_expression(query_h, genes=shared, **read)  # type: ignore[arg-type]
    from aivc.cells._annotate import reference_panel

    genes = reference_panel(ref_all, shared, n_top_genes=cfg.n_top_genes)
    pos = shared.get_indexer(genes)
    ref_s, query_s = _scaled_pair(ref_all[:, pos], query_all[:, pos])
    del ref_all, query_all
    gene_info = {
        "reference_genes": int(ref_h.n_vars),
        "query_genes": int(query_h.n_vars),
        "shared_genes": len(shared),
        "panel_genes": len(genes),
    }
    need_pca = {"pca-knn", "harmony"} & set(models)
    ref_pc, query_pc = _pca_pair(ref_s, query_s, cfg.n_pcs, seed) if need_pca else (None, None)
    ref_batches = _batches(reference, spec.batch_key, "reference")
    query_batches = _batches(query, spec.batch_key, "query")

    answers: dict[str, _Answer] = {}
    wall: dict[str, float] = {}
    peak: dict[str, float] = {}
    extra: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    counts: tuple[sp.csr_matrix | None, sp.csr_matrix | None] | None = None
    with _threads(cfg.max_threads):
        for name in progress(list(models), desc="label transfer", unit="model"):
            if name in COUNT_MODELS:
                if counts is None:
                    counts = (_counts(ref_h, genes, spec), _counts(query_h, genes, spec))
                ref_counts, query_counts = counts
                if ref_counts is None or query_counts is None:
                    skipped[name] = (
                        "needs raw counts: the data holds log-normalised values and no library-size "
                        "column (--library-size-key) to rebuild them"
                    )
                    logger.warning("label transfer: %s skipped (%s)", name, skipped[name])
                    continue
            with ResourceMeter() as meter:
                if name == "pca-knn":
                    answers[name] = _knn_answer(ref_pc, y, query_pc, cfg)
                elif name == "harmony":
                    answers[name] = _run_harmony(
                        ref_pc, query_pc, y, ref_batches, "query:" + query_batches, cfg, seed
                    )
                elif name == "logistic":
                    answers[name] = _run_logistic(ref_s, y, query_s, cfg)
                elif name == "aivc":
                    answers[name], extra[name] = _run_annotator(
                        ref_h, query_h, genes=shared, spec=spec, cfg=cfg, seed=seed
                    )
                elif name in ("scanvi", "scanvi-retrain"):
                    answers[name], extra[name] = _run_scanvi(
                        ref_counts, query_counts, genes, y=y, ref_batches=ref_batches,
                        query_batches=query_batches, cfg=cfg, seed=seed,
                        retrain=name == "scanvi-retrain",
                    )  # fmt: skip
                elif name == "aivc-encoder":
                    answers[name], extra[name] = _run_encoder(
                        reference, query, y, ref_species=spec.reference_species,
                        query_species=spec.query_species, batch_key=spec.batch_key, cfg=cfg, seed=seed,
                    )  # fmt: skip
            wall[name] = meter.wall_seconds
            peak[name] = meter.peak_increase_mb
            logger.info("label transfer: %s took %.1f s", name, meter.wall_seconds)
    return QueryAnswers(
        answers=answers,
        wall=wall,
        peak=peak,
        extra=extra,
        skipped=skipped,
        classes=sorted(set(y.tolist())),
        genes=gene_info,
        panel=[str(g) for g in genes],
        input={"reference": ref_input.describe(), "query": query_input.describe()},
        n_reference=len(y),
    )


def transfer_labels(
    reference: AnnData,
    query: AnnData,
    *,
    spec: TransferSpec,
    models: Sequence[str] = LABEL_TRANSFER_MODELS,
    seed: int = 0,
    config: TransferConfig,
) -> dict[str, Any]:
    """Annotate ``query`` with every model trained on ``reference``; score against the query labels.

    Returns
    -------
    ``{"metrics": {model: {...}}, "wall_seconds": {...}, "peak_memory_mb": {...},
    "excluded_answers": {model: {type: {answer: n}}}, "genes": {...}, "extra": {...},
    "skipped": {model: reason}}``.
    """
    res = answer_query(reference, query, spec=spec, models=models, seed=seed, config=config)
    truth = query.obs[spec.label_key].astype(str).to_numpy()
    classes = res.classes
    answers = res.answers
    metrics = {}
    for name, ans in answers.items():
        # every model's probabilities over the same reference types, same order
        proba = pd.DataFrame(ans.proba, columns=ans.classes).reindex(
            columns=classes, fill_value=0.0
        )
        metrics[name] = label_transfer_metrics(truth, ans.labels, proba.to_numpy(), classes)
        metrics[name]["query_mixing"] = (
            query_mixing(*ans.embedding, seed=seed) if ans.embedding is not None else float("nan")
        )
    excluded = {t: int((truth == t).sum()) for t in sorted(set(truth.tolist()) - set(classes))}
    return {
        "metrics": metrics,
        "wall_seconds": res.wall,
        "peak_memory_mb": res.peak,
        "excluded_cells": excluded,
        "n_query_included": int(np.isin(truth, classes).sum()),
        "n_query": len(truth),
        "n_reference": res.n_reference,
        "reference_types": classes,
        "excluded_answers": {
            name: _excluded_answers(truth, ans.labels, classes) for name, ans in answers.items()
        },
        "genes": res.genes,
        "input": res.input,
        "panel": res.panel,
        "extra": res.extra,
        "skipped": res.skipped,
    }


# ----------------------------------------------------------------------------- runner
def resolve_transfers(
    dataset: str | None,
    *,
    cell_type_key: str | None = None,
    batch_key: str | None = None,
    query_key: str | None = None,
    query_value: str | None = None,
    species: str = "human",
    input: str = "auto",
    library_size_key: str | None = None,
    counts_layer: str | None = None,
) -> list[TransferSpec]:
    """The transfers ``--dataset`` names: a built-in group, or one file split by ``query_key``."""
    declared = {
        "cell_type_key": cell_type_key,
        "batch_key": batch_key,
        "query_key": query_key,
        "query_value": query_value,
    }
    if dataset is None or dataset in GROUPS:
        if any(v is not None for v in declared.values()):
            msg = (
                f"The built-in transfer {dataset or 'baron'!r} declares its own columns; "
                "--cell-type-key, --batch-key and --query-key/--query-value are for a dataset file."
            )
            raise ValueError(msg)
        given: dict[str, Any] = {"input": input} if input != "auto" else {}
        if library_size_key is not None:
            given["library_size_key"] = library_size_key
        if counts_layer is not None:
            given["counts_layer"] = counts_layer
        return [replace(TRANSFERS[n], **given) for n in GROUPS[dataset or "baron"]]
    if not (dataset.endswith((".h5ad", ".zarr")) or os.sep in dataset):
        msg = (
            f"Unknown label-transfer dataset {dataset!r}; expected one of {list(GROUPS)}, or the path "
            "of an .h5ad file with --cell-type-key and --query-key/--query-value."
        )
        raise ValueError(msg)
    if cell_type_key is None or query_key is None or query_value is None:
        msg = (
            "A dataset file needs its columns declared: --cell-type-key (the cell type), "
            "--query-key and --query-value (which cells form the query; all others are the "
            "reference), and --batch-key when it has batches."
        )
        raise ValueError(msg)
    stem = Path(dataset).name.removesuffix(".h5ad").removesuffix(".zarr")
    return [
        TransferSpec(
            f"{stem}:{query_key}={query_value}", dataset, species, dataset, species,
            cell_type_key, batch_key, query_key, query_value, input, library_size_key, counts_layer,
            description=f"{stem}: cells with {query_key} != {query_value} -> {query_key} == {query_value}",
        )
    ]  # fmt: skip


def _load_pair(spec: TransferSpec) -> tuple[AnnData, AnnData]:
    from aivc.data._registry import load
    from aivc.data._validate import read_h5ad

    def read(name: str) -> AnnData:
        data = read_h5ad(name) if name.endswith(".h5ad") or os.sep in name else load(name)
        if spec.counts_layer is None:
            return data
        if spec.counts_layer not in data.layers:
            msg = f"The dataset has no layers[{spec.counts_layer!r}] (layers: {list(data.layers)})."
            raise DataValidationError(msg)
        data.X = data.layers[spec.counts_layer]
        return data

    if spec.query_key is None:
        return read(spec.reference), read(spec.query)
    data = read(spec.reference)
    if spec.query_key not in data.obs:
        msg = f"The dataset has no obs[{spec.query_key!r}] (columns: {list(data.obs.columns)})."
        raise DataValidationError(msg)
    in_query = data.obs[spec.query_key].astype(str).to_numpy() == str(spec.query_value)
    if not in_query.any() or in_query.all():
        values = sorted(data.obs[spec.query_key].astype(str).unique().tolist())[:10]
        msg = (
            f"obs[{spec.query_key!r}] == {spec.query_value!r} selects {int(in_query.sum())} of "
            f"{data.n_obs} cells; the query and the reference must both be non-empty (values: {values})."
        )
        raise DataValidationError(msg)
    return data[~in_query].copy(), data[in_query].copy()


def run_label_transfer(
    out: Path,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    variant: str | None = None,
    cell_type_key: str | None = None,
    batch_key: str | None = None,
    query_key: str | None = None,
    query_value: str | None = None,
    species: str = "human",
    input: str = "auto",
    library_size_key: str | None = None,
    counts_layer: str | None = None,
) -> dict[str, Any]:
    """Run the label-transfer benchmark and write ``results.json`` / ``results.md``.

    Parameters
    ----------
    out
        Output directory (created).
    dataset
        ``None`` / ``"baron"`` (both Baron directions), ``"kang2018"``, one
        transfer of :data:`TRANSFERS`, or the path of an ``.h5ad`` file with
        ``cell_type_key``, ``query_key`` and ``query_value`` (and optionally
        ``batch_key``, ``species``, ``input``, ``library_size_key``, and
        ``counts_layer``: a layer with raw counts read instead of ``X``).
    models
        Subset of :data:`LABEL_TRANSFER_MODELS` (default: all).
    seeds
        Seeds of every model; the cells are the same for every seed.
    variant
        ``None`` (default settings) or ``"quick"`` (few epochs, for smoke tests).
    """
    from aivc._version import __version__

    if variant not in VARIANTS:
        msg = f"Unknown label-transfer variant {variant!r}; expected one of {list(VARIANTS)}."
        raise ValueError(msg)
    cfg = VARIANTS[variant]
    model_names = list(models) if models else list(LABEL_TRANSFER_MODELS)
    seeds = [int(s) for s in seeds]
    if not seeds:
        msg = "Pass at least one seed."
        raise ValueError(msg)
    specs = resolve_transfers(
        dataset, cell_type_key=cell_type_key, batch_key=batch_key, query_key=query_key,
        query_value=query_value, species=species, input=input, library_size_key=library_size_key,
        counts_layer=counts_layer,
    )  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in specs}
    result: dict[str, Any] = {}
    label = dataset or "baron"
    for spec in specs:
        reference, query = _load_pair(spec)
        for seed in seeds:
            logger.info("label transfer %s, seed %d", spec.name, seed)
            runs[spec.name].append(
                transfer_labels(
                    reference, query, spec=spec, models=model_names, seed=seed, config=cfg
                )
            )
            # written after every seed, so an interrupted run leaves its finished seeds
            result = _build_result(
                runs, specs, label, seeds, model_names, cfg, variant, __version__
            )
            write_results(out, result, label_transfer_markdown(result))
    return json_safe(result)


def _build_result(
    runs_by_direction: dict[str, list[dict[str, Any]]],
    specs: Sequence[TransferSpec],
    dataset: str,
    seeds: Sequence[int],
    model_names: Sequence[str],
    cfg: TransferConfig,
    variant: str | None,
    version: str,
) -> dict[str, Any]:
    directions = list(runs_by_direction)
    by_spec = {s.name: s for s in specs}
    by_direction: dict[str, Any] = {}
    skipped: dict[str, dict[str, str]] = {}
    for direction, runs in runs_by_direction.items():
        if not runs:
            continue
        spec = by_spec[direction]
        first = runs[0]
        ran = [m for m in model_names if all(m in r["metrics"] for r in runs)]
        if first["skipped"]:
            skipped[direction] = dict(first["skipped"])
        by_direction[direction] = {
            "reference": spec.reference,
            "query": spec.query,
            "description": spec.description,
            "label_key": spec.label_key,
            "batch_key": spec.batch_key,
            "query_key": spec.query_key,
            "query_value": spec.query_value,
            "input": first["input"],
            "seeds": list(seeds[: len(runs)]),
            "n_reference": first["n_reference"],
            "n_query": first["n_query"],
            "n_query_included": first["n_query_included"],
            "excluded_cells": first["excluded_cells"],
            "reference_types": first["reference_types"],
            "genes": first["genes"],
            "models": {
                m: {k: summarize([r["metrics"][m][k] for r in runs]) for k in _METRICS} for m in ran
            },
            "per_seed": {m: {k: [r["metrics"][m][k] for r in runs] for k in _METRICS} for m in ran},
            "wall_seconds": {m: summarize([r["wall_seconds"][m] for r in runs]) for m in ran},
            "wall_seconds_total": {m: float(sum(r["wall_seconds"][m] for r in runs)) for m in ran},
            "peak_memory_mb": {m: float(max(r["peak_memory_mb"][m] for r in runs)) for m in ran},
            "excluded_answers_first_seed": first["excluded_answers"],
            "model_details_first_seed": first["extra"],
        }
    done = list(by_direction)
    n_common = min(len(runs_by_direction[d]) for d in done)
    complete = all(len(runs_by_direction[d]) == len(seeds) for d in directions)
    everywhere = [m for m in model_names if all(m in by_direction[d]["models"] for d in done)]
    # top level: mean over transfers per seed, then mean +- sd over seeds
    top: dict[str, Any] = {}
    for m in everywhere:
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
    cross_species = any(
        by_spec[d].reference_species != by_spec[d].query_species for d in directions
    )
    return {
        "task": "label-transfer",
        "dataset": "baron-human-mouse" if dataset == "baron" else dataset,
        "description": (
            "Cell-type label transfer: train on a labelled reference, annotate a query without its "
            "labels ("
            + "; ".join(by_spec[d].description for d in directions)
            + "); scored on query "
            "cells whose type exists in the reference"
        ),
        "complete": complete,
        "split": {
            "kind": "cross-species" if cross_species else "reference-to-query",
            "directions": directions,
            "seeds": list(seeds) if complete else list(seeds[:n_common]),
            "n_splits": len(directions),
            "label_key": sorted({by_spec[d].label_key for d in directions}),
            "batch_key": sorted({str(by_spec[d].batch_key) for d in directions}),
        },
        "variant": variant,
        "config": asdict(cfg),
        "models": top,
        "skipped": skipped,
        "metrics": {k: {"higher_is_better": _HIGHER[k], "source": "aivc"} for k in _METRICS},
        "directions": by_direction,
        "wall_seconds": {
            m: float(sum(by_direction[d]["wall_seconds_total"][m] for d in done))
            for m in everywhere
        },
        "peak_memory_mb": {
            m: float(max(by_direction[d]["peak_memory_mb"][m] for d in done)) for m in everywhere
        },
        "peak_memory_note": "peak resident memory of fit+predict above the process's memory before the model ran (max over runs)",
        "wall_note": "total seconds of fit+predict over all seeds and transfers",
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
    cols = (
        "accuracy", "macro_f1", "ece", "abstention", "accuracy_answered", "accuracy_forced",
        "query_mixing",
    )  # fmt: skip
    arrows = {k: "↑" if result["metrics"][k]["higher_is_better"] else "↓" for k in cols}
    lines = [f"# label-transfer on {result['dataset']}", "", result["description"] + ".", ""]
    for d, info in result["directions"].items():
        g = info["genes"]
        lines += [
            f"## {d} ({info['reference']} → {info['query']})",
            "",
            f"{info['n_reference']} reference cells; {info['n_query_included']} of {info['n_query']} query cells "
            f"scored; shared genes {g['shared_genes']}, baseline panel {g['panel_genes']} genes; input: "
            f"{info['input']['reference']}. Mean ± sd over seeds {info['seeds']}.",
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
    for d, why in result.get("skipped", {}).items():
        lines += [f"Skipped in {d}: " + "; ".join(f"{m} ({r})" for m, r in why.items()) + ".", ""]
    m = result["machine"]
    lines += [
        "Metrics: accuracy and macro-F1 count 'unknown' as wrong; abstention = share of scored cells "
        "answered 'unknown'; accuracy_answered = accuracy of the rest; accuracy_forced = accuracy of the "
        "most probable type; ECE = 15-bin top-label expected calibration error of the probabilities; "
        "query_mixing = reference-vs-query LISI in the model's joint space, scaled to 0 (apart) - 1 "
        "(fully mixed), blank for models without one. scanvi maps the query onto the trained "
        "reference without retraining it (scArches surgery); scanvi-retrain trains one model from "
        "scratch on reference + unlabelled query.",
        "",
        f"Machine: {m['cpus']} CPUs ({m['threads']} threads), Python {m['python']}, aivc {m['aivc']}.",
        "",
    ]
    return "\n".join(lines)


register_task(
    Task(
        name="label-transfer",
        description="Annotate a query's cell types from a labelled reference (Baron human <-> mouse; Kang control -> stimulated; any file)",
        datasets=tuple(GROUPS),
        models=LABEL_TRANSFER_MODELS,
        seeds=(0, 1, 2),
        run=run_label_transfer,
        variants=tuple(v for v in VARIANTS if v is not None),
        options=LABEL_OPTIONS,
    )
)
