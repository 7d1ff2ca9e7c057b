"""GEARS (Roohani, Huang & Leskovec 2024) as a peer perturbation model.

The wrapper runs the ``cell-gears`` package through aivc's model interface
without any network access. GEARS normally downloads a gene -> GO-terms table
(``gene2go_all.pkl``), a list of genes for its perturbation graph and a
precomputed GO similarity graph at run time; here all of them are built from
the gene-knowledge tables in ``<data_dir>/genes/`` and handed to GEARS in a
private temporary directory (the GO graph directly as tensors).

The files GEARS reads (gene -> GO terms, the genes of its perturbation graph,
the split) and writes (its co-expression graph) live in that directory, which
is deleted when :meth:`GearsModel.fit` returns. The fitted state is the
network's weights, the two gene graphs and a little metadata, saved as
safetensors + JSON; loading rebuilds the network from them alone.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import pickle
import random
import tempfile
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data._validate import DataValidationError
from aivc.instruments._base import PerturbationModel, PerturbationSummary
from aivc.instruments._registry import register_instrument

if TYPE_CHECKING:
    import torch
    from anndata import AnnData

__all__ = ["GearsModel", "go_gene_terms", "go_similarity_graph"]

logger = logging.getLogger(__name__)

#: How GEARS itself spells the control in its condition labels (``"A+ctrl"``, ``"ctrl"``).
_GEARS_CTRL = "ctrl"
#: GEARS' own separator inside its condition labels.
_GEARS_SEP = "+"
#: The single cell type GEARS is shown (it does not model contexts).
_GEARS_CELL_TYPE = "cells"
#: GEARS' Jaccard threshold for an edge of its GO similarity graph.
_GO_JACCARD_THRESHOLD = 0.1
_GO_SOURCES = ("annotations", "bp_propagated")
#: Keys of the GEARS network configuration stored with a fitted model.
_CONFIG_KEYS = (
    "hidden_size",
    "num_go_gnn_layers",
    "num_gene_gnn_layers",
    "decoder_hidden_size",
    "num_similar_genes_go_graph",
    "num_similar_genes_co_express_graph",
    "coexpress_threshold",
    "uncertainty",
    "uncertainty_reg",
    "direction_lambda",
    "num_genes",
    "num_perts",
    "no_perturb",
)


# ----------------------------------------------------------------------------- GEARS import
def _import_gears() -> Any:
    """Import the ``gears`` package without keeping its import-time side effects.

    Importing GEARS sets a global "ignore all warnings" filter, seeds torch's
    global generator and silences scanpy; all three are restored here. Warnings
    its dependencies raise while importing are not shown.
    """
    try:
        import scanpy as sc
        import torch
    except ImportError as e:  # pragma: no cover - torch and scanpy come with cell-gears
        msg = f"GEARS needs torch and scanpy ({e}); install them with `pip install cell-gears`."
        raise ImportError(msg) from None
    torch_state = torch.get_rng_state()
    verbosity = sc.settings.verbosity
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gears = importlib.import_module("gears")
            importlib.import_module("gears.model")
    except ImportError as e:
        msg = f"The GEARS peer model needs the 'cell-gears' package ({e}); install it with `pip install cell-gears`."
        raise ImportError(msg) from None
    finally:
        torch.set_rng_state(torch_state)
        sc.settings.verbosity = verbosity
    return gears


@contextlib.contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed numpy's, torch's and Python's global generators, and restore them afterwards.

    GEARS draws from the global generators (weight initialisation, batch
    order), so they are seeded for the duration of a fit and put back as they
    were when it ends.
    """
    import torch

    np_state = np.random.get_state()  # noqa: NPY002
    torch_state = torch.get_rng_state()
    py_state = random.getstate()
    np.random.seed(seed)  # noqa: NPY002 - GEARS reads the global generator
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        torch.set_rng_state(torch_state)
        random.setstate(py_state)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` CPU threads for one block, then restore the previous setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Capture what GEARS prints and silence the warnings it raises, for one block."""
    buffer = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(buffer),
        contextlib.redirect_stderr(buffer),
    ):
        warnings.simplefilter("ignore")
        yield buffer


# ----------------------------------------------------------------------------- GO knowledge
def _table_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


@lru_cache(maxsize=4)
def _go_matrix_cached(
    key: tuple[str, int, int], source: str
) -> tuple[pd.Index, sp.csr_matrix, pd.Index]:
    path = Path(key[0])
    if source == "annotations":
        table = pd.read_csv(
            path, sep="\t", usecols=["symbol", "go_id", "evidence"], dtype=str
        ).dropna()
        # 'ND' (no biological data) rows only say that nothing is known about a gene
        table = table[table["evidence"] != "ND"]
        pairs = table[["symbol", "go_id"]]
    else:
        import gzip

        rows: list[tuple[str, str]] = []
        with gzip.open(path, "rt") as fh:
            for line in fh:
                parts = line.rstrip("\n").split("\t")
                rows.extend((g, parts[0]) for g in parts[2:] if g)
        pairs = pd.DataFrame(rows, columns=["symbol", "go_id"])
    pairs = pairs.drop_duplicates()
    g_codes, genes = pd.factorize(pairs["symbol"], sort=True)
    t_codes, terms = pd.factorize(pairs["go_id"], sort=True)
    m = sp.csr_matrix(
        (np.ones(len(g_codes), dtype=np.float32), (g_codes, t_codes)),
        shape=(len(genes), len(terms)),
    )
    return pd.Index(genes.astype(str)), m, pd.Index(terms.astype(str))


def _go_table_path(source: str) -> Path:
    from aivc.genes import knowledge_path

    if source not in _GO_SOURCES:
        msg = f"The 'go_terms' parameter of GearsModel must be one of {list(_GO_SOURCES)}. Got {source!r} instead."
        raise ValueError(msg)
    name = (
        "human_go_annotations.tsv.gz"
        if source == "annotations"
        else "go_bp_propagated_5to1000.gmt.gz"
    )
    return knowledge_path(name)


def _go_matrix(source: str) -> tuple[pd.Index, sp.csr_matrix, pd.Index]:
    """Genes x GO-terms indicator matrix (genes and terms sorted)."""
    return _go_matrix_cached(_table_key(_go_table_path(source)), source)


def go_gene_terms(source: str = "annotations") -> dict[str, frozenset[str]]:
    """Gene symbol -> set of GO term ids, from the gene-knowledge tables.

    Parameters
    ----------
    source
        ``"annotations"``: the direct GO annotations of all three aspects
        (NCBI ``gene2go``, the source of GEARS' own ``gene2go`` table), without
        the 'ND' (no data) placeholders. ``"bp_propagated"``: Biological-Process
        sets with annotations propagated to ancestor terms (5-1000 genes each).
    """
    genes, m, terms = _go_matrix(source)
    term_ids = terms.to_numpy()
    return {
        g: frozenset(term_ids[m.indices[m.indptr[i] : m.indptr[i + 1]]])
        for i, g in enumerate(genes)
    }


def go_similarity_graph(
    matrix: sp.csr_matrix, *, n_neighbours: int, threshold: float = _GO_JACCARD_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GEARS' GO similarity graph: each gene receives edges from its most similar genes.

    The similarity of two genes is the Jaccard index of their GO-term sets;
    pairs above ``threshold`` are kept, and each gene keeps the
    ``n_neighbours`` most similar genes as sources (itself included, with
    similarity 1). Ties are broken by gene order. Computed in row blocks of the
    sparse term matrix, so a graph over all annotated human genes fits in memory.

    Parameters
    ----------
    matrix
        Genes x terms indicator matrix; its rows are the graph's nodes.
    n_neighbours
        Incoming edges kept per gene (GEARS keeps ``num_similar_genes_go_graph + 1``).
    threshold
        Minimum Jaccard index of an edge.

    Returns
    -------
    source, target, weight
        Node indices (int64) and Jaccard weights (float32) of the edges.
    """
    m = sp.csr_matrix(matrix, dtype=np.float32)
    m.data[:] = 1.0
    n = m.shape[0]
    size = np.asarray(m.sum(axis=1)).ravel().astype(np.float64)
    mt = m.T.tocsr()
    block = max(1, int(2e7 // max(n, 1)))
    sources, targets, weights = [], [], []
    for start in range(0, n, block):
        prod = (m[start : start + block] @ mt).tocoo()
        rows = prod.row.astype(np.int64) + start
        cols = prod.col.astype(np.int64)
        inter = prod.data.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            jac = inter / (size[rows] + size[cols] - inter)
        keep = jac > threshold
        rows, cols, jac = rows[keep], cols[keep], jac[keep]
        order = np.lexsort((cols, -jac, rows))
        rows, cols, jac = rows[order], cols[order], jac[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        keep = rank < n_neighbours
        targets.append(rows[keep])
        sources.append(cols[keep])
        weights.append(jac[keep])
    if not sources:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.float32)
    return (
        np.concatenate(sources),
        np.concatenate(targets),
        np.concatenate(weights).astype(np.float32),
    )


@lru_cache(maxsize=4)
def _go_graph_cached(
    key: tuple[str, int, int], source: str, nodes: tuple[str, ...], n_neighbours: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    genes, m, _ = _go_matrix_cached(key, source)
    rows = genes.get_indexer(list(nodes))
    return go_similarity_graph(m[rows], n_neighbours=n_neighbours)


def _gene_aliases() -> dict[str, str]:
    """Unambiguous alias -> official symbol, or nothing when the gene table is missing."""
    from aivc.genes import gene_aliases

    try:
        return gene_aliases()
    except FileNotFoundError:
        return {}


# ----------------------------------------------------------------------------- the model
@register_instrument(
    "gears",
    description=(
        "GEARS (Roohani et al. 2024): graph neural network over a GO gene-similarity graph and a "
        "co-expression graph; peer model run offline from aivc's gene tables."
    ),
)
class GearsModel(PerturbationModel):
    """GEARS, run through aivc's perturbation-model interface.

    Fitting converts the log-normalised training cells into GEARS' format
    (``obs['condition']`` as ``'A+ctrl'``, ``'A+B'`` or ``'ctrl'``, one cell
    type, ``var['gene_name']``), lets GEARS compute its DE-gene fields, and
    trains GEARS on CPU with a custom split: every training condition is in
    GEARS' training set, and a seeded subset of them (never a test condition)
    is also GEARS' validation set, on which GEARS picks its best epoch.

    GEARS' perturbation graph covers every gene this model accepts as a
    target (the measured genes, the training targets and ``fit(known_genes=...)``)
    that has GO terms, so targets outside the measured genes work. Old symbols
    are mapped to current ones through the gene-info table's aliases.

    **Targets GEARS cannot represent.** GEARS silently drops conditions whose
    targets are not in its GO graph (and treats them as unperturbed when they
    reach its training data). Here they are explicit: training conditions with
    a target that has no GO terms, or with more than two targets, are left out
    of GEARS' training and listed in a log message and in
    ``unrepresented_training_``; at prediction time such conditions get the
    mean change over all training conditions (the ``train-mean`` baseline),
    with a log message naming the targets.

    **Prediction.** The basal state is the mean of the (seeded sample of)
    training control cells given to GEARS; the predicted change is GEARS'
    output for that state minus the state. (GEARS adds its predicted shift to
    the input expression, and in evaluation mode the shift does not depend on
    the input, so this equals the change GEARS predicts for any control cell;
    it avoids the sampling noise of GEARS' own ``predict()``, which averages
    300 random control cells.) GEARS has no notion of context: all contexts
    are pooled and every context gets the same change.

    **Randomness.** GEARS draws from numpy's, torch's and Python's global
    generators; :meth:`fit` seeds them with ``seed`` and restores their
    previous states when it returns. Prediction uses no randomness.

    Parameters
    ----------
    epochs
        Training epochs (GEARS halves the learning rate after each). With the
        default cell sample, one epoch leaves GEARS undertrained (its fit to
        the training conditions themselves is near zero correlation), hence 2.
    hidden_size
        Width of GEARS' embeddings.
    batch_size
        Cells per training batch.
    lr, weight_decay
        Adam learning rate and weight decay.
    max_cells_per_condition
        Cells per training condition given to GEARS (seeded sample; ``None``: all).
    max_control_cells
        Control cells given to GEARS and averaged into the basal state (seeded sample; ``None``: all).
    val_fraction
        Fraction of the training conditions (at least one) GEARS validates on to pick its best epoch.
    num_go_gnn_layers, num_gene_gnn_layers, decoder_hidden_size
        GEARS architecture.
    num_similar_genes_go_graph
        Neighbours per gene in the GO similarity graph.
    num_similar_genes_co_express_graph, coexpress_threshold
        Neighbours per gene and the absolute Pearson threshold of the co-expression graph.
    direction_lambda
        Weight of GEARS' direction-of-change loss.
    go_terms
        GO terms per gene: ``"annotations"`` (direct annotations of all aspects,
        like GEARS' own table) or ``"bp_propagated"`` (see :func:`go_gene_terms`).
    num_threads
        Torch CPU threads during fit and prediction (set for their duration and
        restored). GEARS' operations are small, so one thread is about as fast
        as several and gives bitwise-reproducible fits.
    seed
        Seed for cell sampling, the validation conditions and training.

    Fitted attributes
    -----------------
    pert_list_
        Genes of GEARS' perturbation graph, in node order.
    gene_list_
        Measured genes, in GEARS' order (= ``genes_``).
    train_conditions_, val_conditions_
        GEARS condition labels trained on and validated on.
    unrepresented_training_
        Training perturbations GEARS could not represent.
    basal_
        The basal state (mean of the sampled control cells).
    mean_delta_
        Mean change over all training conditions (fallback prediction).
    config_
        GEARS network configuration.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"single", "combination"})
    #: The torch module this model wraps (``module:attribute``), resolved lazily.
    module_class: ClassVar[str] = "gears.model:GEARS_Model"

    def __init__(
        self,
        *,
        epochs: int = 2,
        hidden_size: int = 64,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        max_cells_per_condition: int | None = 200,
        max_control_cells: int | None = 500,
        val_fraction: float = 0.1,
        num_go_gnn_layers: int = 1,
        num_gene_gnn_layers: int = 1,
        decoder_hidden_size: int = 16,
        num_similar_genes_go_graph: int = 20,
        num_similar_genes_co_express_graph: int = 20,
        coexpress_threshold: float = 0.4,
        direction_lambda: float = 0.1,
        go_terms: str = "annotations",
        num_threads: int = 1,
        seed: int = 0,
    ) -> None:
        self.epochs = epochs
        self.hidden_size = hidden_size
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_cells_per_condition = max_cells_per_condition
        self.max_control_cells = max_control_cells
        self.val_fraction = val_fraction
        self.num_go_gnn_layers = num_go_gnn_layers
        self.num_gene_gnn_layers = num_gene_gnn_layers
        self.decoder_hidden_size = decoder_hidden_size
        self.num_similar_genes_go_graph = num_similar_genes_go_graph
        self.num_similar_genes_co_express_graph = num_similar_genes_co_express_graph
        self.coexpress_threshold = coexpress_threshold
        self.direction_lambda = direction_lambda
        self.go_terms = go_terms
        self.num_threads = num_threads
        self.seed = seed

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        positive = {
            "epochs": self.epochs,
            "hidden_size": self.hidden_size,
            "batch_size": self.batch_size,
            "num_go_gnn_layers": self.num_go_gnn_layers,
            "num_gene_gnn_layers": self.num_gene_gnn_layers,
            "decoder_hidden_size": self.decoder_hidden_size,
            "num_similar_genes_go_graph": self.num_similar_genes_go_graph,
            "num_similar_genes_co_express_graph": self.num_similar_genes_co_express_graph,
            "num_threads": self.num_threads,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"The {name!r} parameter of GearsModel must be a positive integer. Got {value!r} instead."
                raise ValueError(msg)
        for name, value in {
            "max_cells_per_condition": self.max_cells_per_condition,
            "max_control_cells": self.max_control_cells,
        }.items():
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                msg = f"The {name!r} parameter of GearsModel must be a positive integer or None. Got {value!r} instead."
                raise ValueError(msg)
        if not 0.0 < float(self.val_fraction) <= 1.0:
            msg = f"The 'val_fraction' parameter of GearsModel must be in (0, 1]. Got {self.val_fraction!r} instead."
            raise ValueError(msg)
        if self.go_terms not in _GO_SOURCES:
            msg = f"The 'go_terms' parameter of GearsModel must be one of {list(_GO_SOURCES)}. Got {self.go_terms!r} instead."
            raise ValueError(msg)

    # ------------------------------------------------------------------ target mapping
    def _gears_targets(self, label: str) -> tuple[str, ...] | None:
        """GEARS graph genes of a label's targets, or ``None`` when GEARS cannot represent it."""
        targets = self.schema_.targets(label)
        if not 1 <= len(targets) <= 2:
            return None
        out = []
        for t in targets:
            g = self.aliases_.get(t, t)
            if g not in self._pert_index:
                return None
            out.append(g)
        return tuple(out)

    def _unrepresented_targets(self, label: str) -> list[str]:
        targets = self.schema_.targets(label)
        if len(targets) > 2:
            return [f"{label} (more than two targets)"]
        return [t for t in targets if self.aliases_.get(t, t) not in self._pert_index]

    @staticmethod
    def _condition(targets: tuple[str, ...]) -> str:
        if len(targets) == 1:
            return targets[0] + _GEARS_SEP + _GEARS_CTRL
        return _GEARS_SEP.join(targets)

    def _graph_nodes(self) -> tuple[list[str], dict[str, str]]:
        """Genes of the perturbation graph, and aliases used to reach them."""
        genes, _, _ = _go_matrix(self.go_terms)
        annotated = set(genes)
        aliases_all = _gene_aliases()
        nodes: set[str] = set()
        aliases: dict[str, str] = {}
        for g in self.known_genes_:
            if g in annotated:
                nodes.add(g)
            elif aliases_all.get(g) in annotated:
                aliases[g] = aliases_all[g]
                nodes.add(aliases_all[g])
        bad = sorted(g for g in nodes if _GEARS_SEP in g or g == _GEARS_CTRL)
        nodes -= set(bad)
        return sorted(nodes), {k: v for k, v in aliases.items() if v in nodes}

    # ------------------------------------------------------------------ fit
    def _fit(self, summary: PerturbationSummary, adata: AnnData) -> None:
        self._check_params()
        schema = summary.schema
        self.mean_delta_ = summary.delta.mean(axis=0)
        if schema.context_key is not None and len(summary.control_mean) > 1:
            logger.info(
                "GEARS has no notion of context; the %d contexts are pooled.",
                len(summary.control_mean),
            )
        nodes, self.aliases_ = self._graph_nodes()
        self.pert_list_ = nodes
        self._pert_index = {g: i for i, g in enumerate(nodes)}
        self.gene_list_ = list(map(str, self.genes_))

        labels = adata.obs[schema.perturbation_key].astype(str).to_numpy()
        conditions = np.full(len(labels), "", dtype=object)
        unrepresented: list[str] = []
        for label in pd.unique(labels):
            rows = labels == label
            if label == schema.control_label:
                conditions[rows] = _GEARS_CTRL
                continue
            targets = self._gears_targets(label)
            if targets is None:
                unrepresented.append(label)
            else:
                conditions[rows] = self._condition(targets)
        self.unrepresented_training_ = sorted(unrepresented)
        if unrepresented:
            logger.warning(
                "GEARS cannot represent %d training perturbation(s) (targets without GO terms, or more than "
                "two targets); they are left out of its training: %s",
                len(unrepresented),
                {p: self._unrepresented_targets(p) for p in self.unrepresented_training_},
            )

        rng = np.random.default_rng(self.seed)
        keep: list[np.ndarray] = []
        for cond in sorted(set(conditions) - {""}):
            rows = np.flatnonzero(conditions == cond)
            cap = self.max_control_cells if cond == _GEARS_CTRL else self.max_cells_per_condition
            if cap is not None and len(rows) > cap:
                rows = np.sort(rng.choice(rows, cap, replace=False))
            keep.append(rows)
        rows = np.sort(np.concatenate(keep))
        x = sp.csr_matrix(adata.X[rows], dtype=np.float32)
        cond = conditions[rows].astype(str)
        ctrl = cond == _GEARS_CTRL
        self.basal_ = np.asarray(x[ctrl].mean(axis=0), dtype=np.float64).ravel()

        train_conditions = sorted(set(cond) - {_GEARS_CTRL})
        self.train_conditions_ = train_conditions
        if not train_conditions:
            logger.warning(
                "GEARS can represent none of the training perturbations; this model predicts the mean "
                "training change for every condition."
            )
            self.val_conditions_ = []
            self.config_ = {}
            self.graphs_ = {}
            self.weights_ = {}
            self._network = None
            return
        n_val = max(1, round(float(self.val_fraction) * len(train_conditions)))
        self.val_conditions_ = sorted(rng.choice(train_conditions, n_val, replace=False).tolist())

        import anndata as ad

        cells = ad.AnnData(
            X=x,
            obs=pd.DataFrame(
                {"condition": cond, "cell_type": _GEARS_CELL_TYPE},
                index=pd.Index([f"cell{i}" for i in range(len(rows))]),
            ),
            var=pd.DataFrame({"gene_name": self.gene_list_}, index=pd.Index(self.gene_list_)),
        )
        self._train_gears(cells)

    def _train_gears(self, cells: AnnData) -> None:
        gears = _import_gears()
        import torch

        key = _table_key(_go_table_path(self.go_terms))
        genes, m, terms = _go_matrix(self.go_terms)
        src, dst, weight = _go_graph_cached(
            key, self.go_terms, tuple(self.pert_list_), self.num_similar_genes_go_graph + 1
        )
        term_ids = terms.to_numpy()
        gene_rows = genes.get_indexer(self.pert_list_)
        gene2go = {
            g: set(term_ids[m.indices[m.indptr[r] : m.indptr[r + 1]]])
            for g, r in zip(self.pert_list_, gene_rows, strict=True)
        }
        split = {
            "train": [_GEARS_CTRL, *self.train_conditions_],
            "val": list(self.val_conditions_),
            "test": [],
        }
        with (
            tempfile.TemporaryDirectory(prefix="aivc-gears-") as tmp,
            _seeded_global_rngs(self.seed),
            _torch_threads(self.num_threads),
            _quiet() as printed,
        ):
            work = Path(tmp)
            # the files GEARS reads: gene -> GO terms, the genes of its perturbation graph, the split
            _write_pickle(work / "gene2go_all.pkl", gene2go)
            _write_pickle(work / "pert_genes.pkl", list(self.pert_list_))
            _write_pickle(work / "split.pkl", split)
            pert_data = gears.PertData(
                str(work), gene_set_path=str(work / "pert_genes.pkl"), default_pert_graph=False
            )
            _process_new_data(pert_data, cells, np.random.default_rng([self.seed, 1]))
            if list(pert_data.pert_names) != list(self.pert_list_):
                msg = "GEARS ordered its perturbation graph differently from the GO graph built for it."
                raise RuntimeError(msg)
            pert_data.prepare_split(
                split="custom", seed=self.seed, split_dict_path=str(work / "split.pkl")
            )
            n_train = sum(len(pert_data.dataset_processed[c]) for c in split["train"])
            pert_data.get_dataloader(
                batch_size=min(self.batch_size, n_train), test_batch_size=self.batch_size
            )
            pert_data.dataloader.pop("test_loader", None)
            # GEARS 0.1.2 indexes X with a pandas mask here, which current scipy sparse matrices
            # refuse; it gets a dense X for its constructor, and the sparse one back for the rest.
            sparse_x = pert_data.adata.X
            pert_data.adata.X = sparse_x.toarray()
            model = gears.GEARS(pert_data, device="cpu")
            pert_data.adata.X = sparse_x
            model.model_initialize(
                hidden_size=self.hidden_size,
                num_go_gnn_layers=self.num_go_gnn_layers,
                num_gene_gnn_layers=self.num_gene_gnn_layers,
                decoder_hidden_size=self.decoder_hidden_size,
                num_similar_genes_go_graph=self.num_similar_genes_go_graph,
                num_similar_genes_co_express_graph=self.num_similar_genes_co_express_graph,
                coexpress_threshold=self.coexpress_threshold,
                direction_lambda=self.direction_lambda,
                G_go=torch.as_tensor(np.stack([src, dst])),
                G_go_weight=torch.as_tensor(weight),
            )
            model.train(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay)
            config = model.config
            best = model.best_model
        logger.debug("GEARS output:\n%s", printed.getvalue())
        self.config_ = {k: _plain(config[k]) for k in _CONFIG_KEYS}
        self.graphs_ = {
            "go_edge_index": config["G_go"].cpu().numpy().astype(np.int64),
            "go_edge_weight": config["G_go_weight"].cpu().numpy().astype(np.float32),
            "coexpress_edge_index": config["G_coexpress"].cpu().numpy().astype(np.int64),
            "coexpress_edge_weight": config["G_coexpress_weight"].cpu().numpy().astype(np.float32),
        }
        self.weights_ = {k: v.detach().cpu().numpy().copy() for k, v in best.state_dict().items()}
        self._network = self._build_network()
        logger.info(
            "GEARS trained on %d conditions (%d cells, %d validation conditions), %d genes, %d-gene GO graph",
            len(self.train_conditions_),
            cells.n_obs,
            len(self.val_conditions_),
            len(self.gene_list_),
            len(self.pert_list_),
        )

    def _build_network(self) -> torch.nn.Module:
        """The GEARS torch module, rebuilt from the stored configuration, graphs and weights."""
        import torch

        _import_gears()
        module_name, attr = self.module_class.split(":")
        module_cls = getattr(importlib.import_module(module_name), attr)
        args = dict(self.config_)
        args["device"] = "cpu"
        args["G_go"] = torch.as_tensor(self.graphs_["go_edge_index"])
        args["G_go_weight"] = torch.as_tensor(self.graphs_["go_edge_weight"])
        args["G_coexpress"] = torch.as_tensor(self.graphs_["coexpress_edge_index"])
        args["G_coexpress_weight"] = torch.as_tensor(self.graphs_["coexpress_edge_weight"])
        torch_state = torch.get_rng_state()
        try:
            network = module_cls(args)  # initial weights are overwritten below
        finally:
            torch.set_rng_state(torch_state)
        network.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in self.weights_.items()})
        return network.eval()

    # ------------------------------------------------------------------ predict
    def _predict_delta(
        self, perturbations: list[str], contexts: list[str | None], control_mean: np.ndarray
    ) -> np.ndarray:
        out = np.tile(self.mean_delta_, (len(perturbations), 1))
        rows: list[int] = []
        pert_idx: list[list[int]] = []
        missing: dict[str, list[str]] = {}
        for i, p in enumerate(perturbations):
            targets = self._gears_targets(p) if self._network is not None else None
            if targets is None:
                missing[p] = (
                    self._unrepresented_targets(p)
                    if self._network is not None
                    else list(self.schema_.targets(p))
                )
                continue
            rows.append(i)
            pert_idx.append([self._pert_index[t] for t in targets])
        if missing:
            logger.warning(
                "GEARS cannot represent %d condition(s) (targets outside its GO graph or more than two "
                "targets); they get the mean training change: %s",
                len(missing),
                missing,
            )
        if rows:
            out[rows] = self._gears_shift(pert_idx)
        return out

    def _gears_shift(self, pert_idx: list[list[int]], chunk: int = 128) -> np.ndarray:
        """GEARS' predicted change from the basal state for each list of graph nodes."""
        import torch
        from torch_geometric.data import Batch, Data

        basal = torch.as_tensor(self.basal_, dtype=torch.float32).reshape(-1, 1)
        shifts = []
        with torch.no_grad(), _torch_threads(self.num_threads):
            for start in range(0, len(pert_idx), chunk):
                graphs = [Data(x=basal, pert_idx=idx) for idx in pert_idx[start : start + chunk]]
                pred = self._network(Batch.from_data_list(graphs))
                shifts.append(
                    pred.cpu().numpy().astype(np.float64) - self.basal_.astype(np.float32)
                )
        return np.concatenate(shifts)

    # ------------------------------------------------------------------ persistence
    def _model_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"gears_basal": self.basal_, "gears_mean_delta": self.mean_delta_}
        arrays.update({f"gears.{k}": v for k, v in self.weights_.items()})
        arrays.update({f"gears_graph.{k}": v for k, v in self.graphs_.items()})
        meta = {
            "gears_config": self.config_,
            "gears_pert_list": list(self.pert_list_),
            "gears_gene_list": list(self.gene_list_),
            "gears_aliases": dict(self.aliases_),
            "gears_train_conditions": list(self.train_conditions_),
            "gears_val_conditions": list(self.val_conditions_),
            "gears_unrepresented_training": list(self.unrepresented_training_),
        }
        return arrays, meta

    def _set_model_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.basal_ = np.asarray(arrays["gears_basal"])
        self.mean_delta_ = np.asarray(arrays["gears_mean_delta"])
        self.weights_ = {k[len("gears.") :]: v for k, v in arrays.items() if k.startswith("gears.")}
        self.graphs_ = {
            k[len("gears_graph.") :]: v for k, v in arrays.items() if k.startswith("gears_graph.")
        }
        self.config_ = dict(meta["gears_config"])
        self.pert_list_ = list(meta["gears_pert_list"])
        self.gene_list_ = list(meta["gears_gene_list"])
        if self.gene_list_ != list(map(str, self.genes_)):
            msg = "The stored GEARS gene list differs from the model's genes; the model directory is corrupted."
            raise DataValidationError(msg)
        if self.weights_ and len(self.pert_list_) != self.config_.get("num_perts"):
            msg = (
                f"The stored GEARS graph has {len(self.pert_list_)} genes but the network expects "
                f"{self.config_.get('num_perts')}; the model directory is corrupted."
            )
            raise DataValidationError(msg)
        self.aliases_ = dict(meta["gears_aliases"])
        self.train_conditions_ = list(meta["gears_train_conditions"])
        self.val_conditions_ = list(meta["gears_val_conditions"])
        self.unrepresented_training_ = list(meta["gears_unrepresented_training"])
        self._pert_index = {g: i for i, g in enumerate(self.pert_list_)}
        self._network = self._build_network() if self.weights_ else None


def _process_new_data(pert_data: Any, cells: AnnData, rng: np.random.Generator) -> None:
    """What ``PertData.new_data_process`` does, with a faster builder of the per-cell graphs.

    GEARS computes its DE-gene fields (``rank_genes_groups_cov_all``,
    ``non_zeros_gene_idx``, ``top_non_dropout_de_20``...) and its perturbation
    genes exactly as in ``new_data_process``. Its cell-graph builder pairs
    every perturbed cell with one random control cell (the model's input) and
    every control cell with itself, slicing an AnnData view per cell (about 5 ms
    each); the same pairing and graph fields are built here in one pass, drawn
    from ``rng``.
    """
    import torch
    from gears.data_utils import get_DE_genes, get_dropout_non_zero_genes
    from torch_geometric.data import Data

    name = "aivc"
    folder = Path(pert_data.data_path) / name
    folder.mkdir(exist_ok=True)
    pert_data.dataset_name = name
    pert_data.dataset_path = str(folder)
    adata = get_dropout_non_zero_genes(get_DE_genes(cells, False))
    pert_data.adata = adata
    pert_data.set_pert_genes()
    is_ctrl = (adata.obs["condition"] == _GEARS_CTRL).to_numpy()
    pert_data.ctrl_adata = adata[is_ctrl]
    pert_data.gene_names = adata.var.gene_name

    n_de = 20
    x = sp.csr_matrix(adata.X).toarray().astype(np.float32)
    ctrl_x = x[is_ctrl]
    node = {g: i for i, g in enumerate(pert_data.pert_names)}
    de_genes = adata.uns["rank_genes_groups_cov_all"]
    condition = adata.obs["condition"].astype(str).to_numpy()
    condition_name = adata.obs["condition_name"].astype(str).to_numpy()
    graphs: dict[str, list[Any]] = {}
    for cond in pd.unique(condition):
        rows = np.flatnonzero(condition == cond)
        if cond == _GEARS_CTRL:
            de_idx: Any = [-1] * n_de
            pert_idx = [-1]
            inputs = x[rows]
        else:
            de_idx = np.flatnonzero(
                adata.var_names.isin(np.asarray(de_genes[condition_name[rows[0]]][:n_de]))
            )
            pert_idx = [node[g] for g in cond.split(_GEARS_SEP) if g != _GEARS_CTRL]
            inputs = ctrl_x[rng.integers(0, len(ctrl_x), len(rows))]
        graphs[cond] = [
            Data(
                x=torch.from_numpy(inputs[i].reshape(-1, 1).copy()),
                pert_idx=pert_idx,
                y=torch.from_numpy(x[r].reshape(1, -1).copy()),
                de_idx=de_idx,
                pert=cond,
            )
            for i, r in enumerate(rows)
        ]
    pert_data.dataset_processed = graphs


def _plain(value: object) -> object:
    """A JSON-friendly copy of a GEARS configuration value."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_pickle(path: Path, obj: object) -> None:
    """Write one of the files GEARS insists on reading as a pickle (built here, in a private directory)."""
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.chmod(path, 0o600)
