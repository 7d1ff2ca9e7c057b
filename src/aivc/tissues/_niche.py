"""The niche representation: each cell embedded with its spatial neighbourhood.

:class:`NicheModel` (``aivc-niche``) reads a spatial AnnData (counts or
log-normalised values; coordinates in ``obsm["spatial"]``), turns each cell
into principal components of its log expression (computed chunk by chunk
from a gene covariance, so a million cells never become one dense matrix),
centres them per section (``batch_correct``: a section's overall shift is
technical, its composition is kept), builds the spatial graph within each
section, and trains a masked graph autoencoder
(:class:`~aivc.tissues._module.NicheGNN`) on it. :meth:`NicheModel.transform`
gives each cell its niche embedding and :meth:`NicheModel.embed` writes it
to ``obsm["X_niche"]``.

Large tissues train on sampled subgraphs (random seed cells and their
two-hop neighbourhoods) and are embedded layer by layer in blocks of rows,
so memory grows with the number of cells times the embedding width only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import scipy.sparse as sp
import torch

from aivc.data._expression import looks_like_counts
from aivc.data._preprocess import log_normalize
from aivc.data._validate import DataValidationError
from aivc.instruments._base import Instrument
from aivc.instruments._registry import register_instrument
from aivc.tissues._module import NicheGNN
from aivc.tissues._spatial import SpatialSchema, check_spatial, spatial_graph

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["NicheModel", "expression_components"]

logger = logging.getLogger(__name__)

#: Cells per block when reading expression.
CHUNK = 65536
#: Above this many cells, training uses sampled subgraphs instead of the whole graph.
FULL_GRAPH_CELLS = 100_000


def _log_rows(x: object, rows: slice, counts: bool) -> np.ndarray:
    """Dense float64 log expression of a block of rows (counts are normalised here, once)."""
    block = x[rows]  # type: ignore[index]
    if counts:
        return log_normalize(block, target_sum=1e4, dtype=np.float64, dense=True)[0]
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    return block.astype(np.float64)


class _Components:
    """Gene selection, standardisation and principal axes, fitted in blocks of cells."""

    def __init__(self, n_components: int, max_genes: int) -> None:
        self.n_components = n_components
        self.max_genes = max_genes

    def fit(self, x: object, counts: bool) -> _Components:
        n, g = x.shape  # type: ignore[attr-defined]
        s1 = np.zeros(g)
        s2 = np.zeros(g)
        for s in range(0, n, CHUNK):
            b = _log_rows(x, slice(s, min(s + CHUNK, n)), counts)
            s1 += b.sum(0)
            s2 += (b**2).sum(0)
        mean = s1 / n
        var = np.maximum(s2 / n - mean**2, 0.0)
        keep = np.flatnonzero(var > 1e-12)
        if len(keep) > self.max_genes:
            keep = np.sort(keep[np.argsort(-var[keep])[: self.max_genes]])
        if len(keep) < 2:
            msg = "Fewer than two genes vary across these cells; a niche model needs expression that differs."
            raise DataValidationError(msg)
        self.genes_ = keep
        self.mean_ = mean[keep]
        self.scale_ = np.sqrt(var[keep])
        cov = np.zeros((len(keep), len(keep)))
        for s in range(0, n, CHUNK):
            b = self._standard(_log_rows(x, slice(s, min(s + CHUNK, n)), counts))
            cov += b.T @ b
        evals, evecs = np.linalg.eigh(cov / max(n - 1, 1))
        k = min(self.n_components, len(keep) - 1)
        order = np.argsort(-evals)[:k]
        comps = evecs[:, order].T
        comps *= np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])[:, None]
        self.components_ = comps
        return self

    def _standard(self, block: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        cols = self.genes_ if columns is None else columns
        return (block[:, cols] - self.mean_) / self.scale_

    def transform(self, x: object, counts: bool, columns: np.ndarray | None = None) -> np.ndarray:
        """Components of every row of ``x``; ``columns``: where the fitted genes are in ``x``."""
        n = x.shape[0]  # type: ignore[attr-defined]
        out = np.empty((n, len(self.components_)), dtype=np.float32)
        for s in range(0, n, CHUNK):
            rows = slice(s, min(s + CHUNK, n))
            out[rows] = self._standard(_log_rows(x, rows, counts), columns) @ self.components_.T
        return out


def expression_components(
    x: object, *, n_components: int = 30, max_genes: int = 2000, counts: bool | None = None
) -> np.ndarray:
    """Principal components of standardised log expression (cells x ``n_components``, float32).

    ``x`` holds counts (library-size normalised and ``log1p``-transformed
    here) or log-normalised values (used as given); ``counts=None`` decides
    from the values.
    """
    counts = looks_like_counts(x) if counts is None else counts
    return _Components(n_components, max_genes).fit(x, counts).transform(x, counts)


def _center_sections(z: np.ndarray, sections: np.ndarray) -> np.ndarray:
    out = z.copy()
    for s in np.unique(sections):
        rows = sections == s
        out[rows] -= out[rows].mean(0)
    return out


def _subgraph(
    graph: sp.csr_matrix, seeds: np.ndarray
) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Seeds' two-hop neighbourhood: its nodes, its edges (local ids) and the seeds' local ids."""
    hop1 = np.unique(graph[seeds].indices)
    nodes = np.unique(np.r_[seeds, hop1, graph[hop1].indices])
    sub = graph[nodes][:, nodes].tocoo()
    edges = torch.from_numpy(np.vstack([sub.col, sub.row]).astype(np.int64))
    return nodes, edges, np.searchsorted(nodes, seeds)


class _Loss(torch.nn.Module):
    """The autoencoder's masked loss as a module's forward (what DistributedDataParallel wraps);
    0, through every weight, when nothing is masked."""

    def __init__(self, module: NicheGNN) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, edges: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        if bool(masked.any()):
            return self.module.loss(x, edges, masked)
        return sum(p.sum() for p in self.module.parameters()) * 0.0


@register_instrument(
    "aivc-niche",
    kind="niche",
    description=(
        "Niche representation: a masked graph autoencoder (GraphSAGE, torch-geometric) over the "
        "spatial graph within each section, on principal components of each cell's expression."
    ),
)
class NicheModel(Instrument):
    """Embed each cell with its spatial neighbourhood.

    Parameters
    ----------
    n_components
        Principal components of expression per cell (the node features).
    n_hidden, n_latent
        Width of the graph layers; ``n_latent`` is the size of the embedding.
    graph
        ``"knn"``, ``"radius"`` or ``"delaunay"`` (see :func:`~aivc.tissues.spatial_graph`).
    n_neighbors, radius
        Neighbourhood size of the graph.
    mask_rate
        Share of cells whose features are hidden in each training step.
    steps
        Optimisation steps.
    batch_cells
        Seed cells per step when the tissue is trained on sampled subgraphs.
    learning_rate
        Adam's step size.
    max_genes
        Most variable genes kept for the components.
    batch_correct
        Centre the components within each section.
    seed
        Seed of the weights, masks and samples.
    n_processes
        Train with DistributedDataParallel on this many CPU processes (gloo): every
        process draws the same seed cells and masks, trains on its share of them, and
        the gradients are averaged, so all processes take the same steps. 1 (the
        default) trains in this process, unchanged.
    """

    module_class = NicheGNN

    def __init__(
        self,
        *,
        n_components: int = 30,
        n_hidden: int = 64,
        n_latent: int = 16,
        graph: str = "knn",
        n_neighbors: int = 10,
        radius: float | None = None,
        mask_rate: float = 0.3,
        steps: int = 300,
        batch_cells: int = 2048,
        learning_rate: float = 5e-3,
        max_genes: int = 2000,
        batch_correct: bool = True,
        seed: int = 0,
        n_processes: int = 1,
    ) -> None:
        self.n_components = n_components
        self.n_hidden = n_hidden
        self.n_latent = n_latent
        self.graph = graph
        self.n_neighbors = n_neighbors
        self.radius = radius
        self.mask_rate = mask_rate
        self.steps = steps
        self.batch_cells = batch_cells
        self.learning_rate = learning_rate
        self.max_genes = max_genes
        self.batch_correct = batch_correct
        self.seed = seed
        self.n_processes = n_processes

    # ------------------------------------------------------------------ features
    def _check(
        self, adata: AnnData, schema: SpatialSchema | None
    ) -> tuple[SpatialSchema, np.ndarray]:
        schema = schema or SpatialSchema.of(adata)
        return schema, check_spatial(adata, schema)

    def features(self, adata: AnnData, schema: SpatialSchema | None = None) -> np.ndarray:
        """Node features of ``adata``'s cells: components, centred per section when asked."""
        self._check_fitted()
        schema, _ = self._check(adata, schema)
        import pandas as pd

        columns = pd.Index([str(g) for g in adata.var_names]).get_indexer(self.genes_)
        missing = [g for g, c in zip(self.genes_, columns, strict=True) if c < 0]
        if missing:
            msg = (
                f"{len(missing)} genes of the fitted niche model are not in the data "
                f"(first: {missing[:5]}); a niche model reads the panel it was fitted on."
            )
            raise DataValidationError(msg)
        z = self._pca.transform(adata.X, self.expression_ == "counts", columns)
        if self.batch_correct:
            z = _center_sections(z, schema.sections(adata))
        return z

    def spatial_graph(self, adata: AnnData, schema: SpatialSchema | None = None) -> sp.csr_matrix:
        """The graph the model uses for ``adata`` (built within each section)."""
        schema, xy = self._check(adata, schema)
        return spatial_graph(
            xy,
            schema.sections(adata),
            method=self.graph,  # type: ignore[arg-type]
            n_neighbors=self.n_neighbors,
            radius=self.radius,
        )

    # ----------------------------------------------------------------------- fit
    def fit(self, adata: AnnData, schema: SpatialSchema | None = None) -> Self:
        """Learn the components and train the graph autoencoder on ``adata``."""
        schema, _ = self._check(adata, schema)
        if (
            isinstance(self.n_processes, bool)
            or not isinstance(self.n_processes, int | np.integer)
            or self.n_processes < 1
        ):
            msg = f"The 'n_processes' parameter of NicheModel must be a positive integer. Got {self.n_processes!r} instead."
            raise ValueError(msg)
        if adata.n_obs < 10:
            msg = f"A niche model needs at least 10 cells; got {adata.n_obs}."
            raise DataValidationError(msg)
        counts = looks_like_counts(adata.X)
        self.expression_ = "counts" if counts else "log"
        self._pca = _Components(self.n_components, self.max_genes).fit(adata.X, counts)
        self.genes_ = [str(adata.var_names[i]) for i in self._pca.genes_]
        self.schema_ = schema
        self.fitted_ = True
        x = self.features(adata, schema)
        graph = self.spatial_graph(adata, schema)
        full = x.shape[0] <= FULL_GRAPH_CELLS  # else sampled subgraphs
        self.ddp_: dict[str, Any] | None = None
        if int(self.n_processes) > 1:
            from aivc._ddp import train_on_processes

            state, history, _ = train_on_processes(
                self, "_train", (x, graph, full), int(self.n_processes)
            )
            self.module_ = self._new_module(x.shape[1])
            self.module_.load_state_dict(state)
            self.module_.eval()
            self.training_loss_ = history[-1] if history else float("nan")
            self.ddp_ = {
                "processes": int(self.n_processes),
                "backend": "gloo",
                "ranks_in_sync": True,
            }
        else:
            self.module_, history = self._train(x, graph, full)
            self.training_loss_ = history[-1] if history else float("nan")
        return self

    def _new_module(self, n_input: int) -> NicheGNN:
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return self.module_class(n_input, self.n_hidden, self.n_latent)

    def _train(
        self, x: np.ndarray, graph: sp.csr_matrix, full: bool, *, rank: int = 0, world: int = 1
    ) -> tuple[NicheGNN, list[float]]:
        """Train the graph autoencoder; with ``world > 1``, as one DistributedDataParallel rank.

        Every rank draws the same seed cells and masks (one random stream from
        the seed) and keeps every ``world``-th of them, so the ranks' shares
        make up the one-process batch; with one process the draws are those
        of the single-process loop. Returns the module and the loss of each step.
        """
        module = self._new_module(x.shape[1])
        rng = np.random.default_rng([self.seed, 41])
        model: torch.nn.Module = module
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(_Loss(module))
        opt = torch.optim.Adam(module.parameters(), lr=self.learning_rate)
        features = torch.from_numpy(x)
        if full:
            coo = graph.tocoo()
            edges = torch.from_numpy(np.vstack([coo.col, coo.row]).astype(np.int64))
        module.train()
        history: list[float] = []
        for _ in range(self.steps):
            if full:
                xb, eb = features, edges
                hidden = rng.random(len(x)) < self.mask_rate
                if world > 1:
                    hidden &= np.arange(len(x)) % world == rank
                masked = torch.from_numpy(hidden)
            else:
                seeds = np.sort(
                    rng.choice(len(x), size=min(self.batch_cells, len(x)), replace=False)
                )
                if world > 1:
                    # masks for all seeds first, so every rank consumes the same draws
                    hide_seed = rng.random(len(seeds)) < self.mask_rate
                    seeds, hide_seed = seeds[rank::world], hide_seed[rank::world]
                nodes, eb, local = _subgraph(graph, seeds)
                xb = features[torch.from_numpy(nodes)]
                hide = np.zeros(len(nodes), dtype=bool)
                if world > 1:
                    hide[local[hide_seed]] = True
                else:
                    hide[local[rng.random(len(local)) < self.mask_rate]] = True
                masked = torch.from_numpy(hide)
            if world == 1 and not bool(masked.any()):
                continue
            opt.zero_grad()
            # (a rank with nothing masked still takes part in the gradient exchange, with 0)
            loss = model(xb, eb, masked) if world > 1 else module.loss(xb, eb, masked)
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
        module.eval()
        return module, history

    # ----------------------------------------------------------------- transform
    def transform(self, adata: AnnData, schema: SpatialSchema | None = None) -> np.ndarray:
        """Each cell's niche embedding (cells x ``n_latent``, float32)."""
        self._check_fitted()
        x = self.features(adata, schema)
        return self.module_.embed_chunked(x, self.spatial_graph(adata, schema))

    def embed(
        self, adata: AnnData, schema: SpatialSchema | None = None, *, key_added: str = "X_niche"
    ) -> np.ndarray:
        """Write :meth:`transform` into ``adata.obsm[key_added]`` and return it."""
        z = self.transform(adata, schema)
        adata.obsm[key_added] = z
        adata.uns[key_added] = {"params": {**self.get_params(), "genes": len(self.genes_)}}
        return z

    # --------------------------------------------------------------- persistence
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            "gene_mean": self._pca.mean_,
            "gene_scale": self._pca.scale_,
            "components": self._pca.components_,
        }
        for k, v in self.module_.state_dict().items():
            arrays[f"module.{k}"] = v.detach().cpu().numpy()
        meta = {
            "genes": self.genes_,
            "expression": self.expression_,
            "schema": self.schema_.to_dict(),
            "n_input": int(self._pca.components_.shape[0]),
        }
        return arrays, meta

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.genes_ = list(meta["genes"])
        self.expression_ = meta["expression"]
        self.schema_ = SpatialSchema.from_dict(meta["schema"])
        pca = _Components(self.n_components, self.max_genes)
        pca.genes_ = np.arange(len(self.genes_))
        pca.mean_ = arrays["gene_mean"]
        pca.scale_ = arrays["gene_scale"]
        pca.components_ = arrays["components"]
        self._pca = pca
        module = self.module_class(int(meta["n_input"]), self.n_hidden, self.n_latent)
        module.load_state_dict(
            {
                k[len("module.") :]: torch.from_numpy(v)
                for k, v in arrays.items()
                if k.startswith("module.")
            }
        )
        module.eval()
        self.module_ = module
