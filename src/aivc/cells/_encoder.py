"""The gene-panel-agnostic cell encoder and expression decoder.

:class:`CellEncoder` is an estimator over :class:`aivc.cells._module.SetEncoderModule`.
It reads raw counts of any gene panel: reference genes through their learned
and knowledge tokens, genes new to the model through their knowledge
embedding only, other genes are dropped (and counted in the log). Mouse genes
are renamed to their human one-to-one orthologs first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._settings import settings
from aivc.cells._data import as_csr, check_counts, counts_matrix, iter_chunks
from aivc.cells._module import SetEncoderModule
from aivc.data._validate import DataValidationError
from aivc.instruments._base import Instrument
from aivc.instruments._registry import register_instrument

if TYPE_CHECKING:
    import torch
    from anndata import AnnData

__all__ = ["GENE_EMBEDDINGS", "CellEncoder", "heldout_reconstruction", "map_species_genes"]

logger = logging.getLogger(__name__)

#: Knowledge sources a cell encoder can read gene tokens from.
GENE_EMBEDDINGS = ("go", "fused", "none")
#: Species whose genes the encoder can read (mouse through human orthologs).
SPECIES = ("human", "mouse")
_SCALE = 1e4
#: torch threads for training and inference. The per-step matrices are small; on a
#: shared 2-core machine a second thread made training 50x slower (threads spin
#: waiting for each other), and on an idle one it gains little.
_TORCH_THREADS = 1


# ----------------------------------------------------------------------------- gene knowledge
@lru_cache(maxsize=2)
def _knowledge_table(source: str, data_dir: str) -> pd.DataFrame:
    from aivc.genes import fused_embedding, go_embedding

    if source == "go":
        return go_embedding(data_dir=data_dir)
    return fused_embedding(data_dir=data_dir)[0]


@lru_cache(maxsize=1)
def _aliases(data_dir: str) -> dict[str, str]:
    from aivc.genes import gene_aliases

    try:
        return gene_aliases(data_dir)
    except FileNotFoundError:
        return {}


def knowledge_rows(genes: Sequence[str], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Knowledge embedding rows of ``genes`` (zeros where absent) and a has-knowledge mask.

    Symbols absent from the table are looked up once more through the
    unambiguous alias map of the gene-info table.
    """
    if source == "none":
        return np.zeros((len(genes), 0), dtype=np.float32), np.zeros(len(genes), dtype=bool)
    data_dir = str(settings.data_dir)
    table = _knowledge_table(source, data_dir)
    aliases = _aliases(data_dir)
    names = [g if g in table.index else aliases.get(g, g) for g in genes]
    pos = table.index.get_indexer(names)
    has = pos >= 0
    rows = np.zeros((len(genes), table.shape[1]), dtype=np.float32)
    rows[has] = table.to_numpy(dtype=np.float32)[pos[has]]
    return rows, has


# ----------------------------------------------------------------------------- orthologs
def _ortholog_map(symbols: Sequence[str], species: str) -> list[str | None]:
    from aivc.genes import map_orthologs

    mapping = map_orthologs(list(symbols), from_species=species, to_species="human").mapping
    return [mapping.get(s) for s in symbols]


def map_species_genes(symbols: Sequence[str], species: str) -> tuple[np.ndarray, pd.Index]:
    """Columns to keep and their human symbols, for genes of ``species``.

    Human symbols are kept as they are. Mouse symbols become their human
    orthologs through :func:`aivc.genes.map_orthologs` (one-to-one pairs, and
    the best-scored candidate of one-to-many pairs); genes without one are
    dropped, with the count logged.

    Returns
    -------
    keep
        Column positions to keep.
    names
        Human symbols of the kept columns.
    """
    if species not in SPECIES:
        msg = f"The 'species' parameter must be one of {list(SPECIES)}. Got {species!r} instead."
        raise ValueError(msg)
    symbols = [str(s) for s in symbols]
    if species == "human":
        return np.arange(len(symbols)), pd.Index(symbols)
    mapped = _ortholog_map(symbols, species)
    seen: set[str] = set()
    keep, names = [], []
    for i, h in enumerate(mapped):
        if h is None or h in seen:
            continue
        seen.add(h)
        keep.append(i)
        names.append(h)
    logger.info(
        "Mapped %d of %d %s genes to human orthologs (%d dropped).",
        len(keep),
        len(symbols),
        species,
        len(symbols) - len(keep),
    )
    if not keep:
        msg = f"None of the {len(symbols)} genes has a human ortholog; are these {species} gene symbols?"
        raise DataValidationError(msg)
    return np.asarray(keep, dtype=np.int64), pd.Index(names)


# ----------------------------------------------------------------------------- utilities
@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _log_weights(x: Any) -> sp.csr_matrix:
    """log1p of counts per 10,000 (totals over the given columns), as a new float32 CSR."""
    x = sp.csr_matrix(x, dtype=np.float32, copy=True)
    totals = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    scale = np.where(totals > 0, _SCALE / np.maximum(totals, 1e-12), 0.0).astype(np.float32)
    x.data *= np.repeat(scale, np.diff(x.indptr))
    np.log1p(x.data, out=x.data)
    return x


@dataclass
class _PanelPlan:
    """How a query panel maps onto the model: kept columns and their gene features."""

    cols: np.ndarray
    genes: pd.Index
    features: np.ndarray
    n_reference: int
    n_knowledge_only: int
    n_dropped: int


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        msg = f"The {name!r} parameter of CellEncoder must be an integer >= {low}. Got {value!r} instead."
        raise ValueError(msg)


def _check_float(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        msg = f"The {name!r} parameter of CellEncoder must be a number in [{low}, {high}]. Got {value!r} instead."
        raise ValueError(msg)


# ----------------------------------------------------------------------------- model
# The registry imports this module through its entry point in the "aivc.instruments" group
# (pyproject.toml); aivc.instruments never imports aivc.cells itself.
@register_instrument(
    "cell-encoder",
    kind="encoder",
    description=(
        "Gene-panel-agnostic cell encoder (deep sets over knowledge + learned gene tokens) with a "
        "batch-aware negative-binomial expression decoder; maps any panel, mouse via orthologs."
    ),
)
class CellEncoder(Instrument):
    """Gene-panel-agnostic cell encoder with a batch-aware count decoder.

    A cell ``c`` is encoded from the set of its genes as
    ``z = MLP(Σ_g w_cg φ(e_g) / Σ_g w_cg)`` where ``w_cg = log1p(10^4 x_cg / Σ_g x_cg)``
    and the gene token ``e_g`` sums a projected knowledge embedding (or an
    explicit no-knowledge vector) and, for genes seen in training, a learned
    vector. Training is variational masked-expression reconstruction: a random
    ``mask_rate`` of each cell's genes is hidden from the encoder and the
    decoder reconstructs the counts of all decoder genes with a negative
    binomial whose mean is ``library x softmax_g(<h(z, batch), o_g> + b_g)``,
    ``o_g`` being output tokens built like the input tokens. The batch enters
    only the decoder, so embeddings of new batches need no retraining.

    Parameters
    ----------
    n_latent
        Width of the cell representation.
    n_hidden
        Width of the gene tokens and hidden layers.
    gene_embedding
        Knowledge behind the gene tokens: ``"go"`` (:func:`aivc.genes.go_embedding`),
        ``"fused"`` (:func:`aivc.genes.fused_embedding`, GO + STRING + HuRI) or
        ``"none"`` (learned gene vectors only; new genes are then dropped).
    n_input_genes
        The most variable training genes (log-normalised variance) that become
        reference genes (``None``: every gene detected in ``min_cells`` cells).
        The other genes of the training panel are remembered as excluded and are
        ignored in queries too, so the same data embed the same way.
    n_decoder_genes
        The most variable reference genes reconstructed in training.
    min_cells
        Reference genes must be detected in at least this many training cells.
    mask_rate
        Fraction of each cell's genes hidden from the encoder in training.
    token_dropout
        Fraction of learned gene vectors dropped in each step, so that the
        knowledge-only tokens of new genes are meaningful.
    kl_weight
        Weight of the KL term (reached after a warm-up over the first half of training).
    adversarial_weight
        Weight of a batch classifier trained through a reversed gradient on the
        latent (0: off; only used with more than one batch). On the Baron human
        donors it raised iLISI from 0.35 to 0.48 at equal bio-conservation.
    max_epochs
        Training epochs.
    batch_size
        Cells per step.
    learning_rate
        Adam learning rate.
    seed
        Seed of initialisation, masks and minibatch order.

    Attributes
    ----------
    genes_
        Reference genes (human symbols).
    decoder_genes_
        Genes reconstructed in training.
    excluded_genes_
        Genes of the training panel that are not reference genes (ignored in queries).
    batches_
        Batch categories the decoder knows.
    history_
        Mean training loss per epoch.
    """

    #: The torch module this model trains; swap it to change the architecture.
    module_class: ClassVar[type[SetEncoderModule]] = SetEncoderModule

    def __init__(
        self,
        *,
        n_latent: int = 16,
        n_hidden: int = 128,
        gene_embedding: str = "go",
        n_input_genes: int | None = 4000,
        n_decoder_genes: int = 2000,
        min_cells: int = 3,
        mask_rate: float = 0.25,
        token_dropout: float = 0.1,
        kl_weight: float = 1.0,
        adversarial_weight: float = 1.0,
        max_epochs: int = 40,
        batch_size: int = 256,
        learning_rate: float = 2e-3,
        seed: int = 0,
        n_processes: int = 1,
    ) -> None:
        self.n_latent = n_latent
        self.n_hidden = n_hidden
        self.gene_embedding = gene_embedding
        self.n_input_genes = n_input_genes
        self.n_decoder_genes = n_decoder_genes
        self.min_cells = min_cells
        self.mask_rate = mask_rate
        self.token_dropout = token_dropout
        self.kl_weight = kl_weight
        self.adversarial_weight = adversarial_weight
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.seed = seed
        self.n_processes = n_processes

    def _validate_params(self) -> None:
        _check_int("n_latent", self.n_latent, 1)
        _check_int("n_hidden", self.n_hidden, 2)
        _check_int("n_decoder_genes", self.n_decoder_genes, 1)
        if self.n_input_genes is not None:
            _check_int("n_input_genes", self.n_input_genes, 2)
        _check_int("min_cells", self.min_cells, 1)
        _check_int("max_epochs", self.max_epochs, 1)
        _check_int("batch_size", self.batch_size, 2)
        _check_int("seed", self.seed, 0)
        _check_int("n_processes", self.n_processes, 1)
        _check_float("mask_rate", self.mask_rate, 0.0, 0.9)
        _check_float("token_dropout", self.token_dropout, 0.0, 1.0)
        _check_float("kl_weight", self.kl_weight, 0.0, 1e3)
        _check_float("adversarial_weight", self.adversarial_weight, 0.0, 1e3)
        _check_float("learning_rate", self.learning_rate, 1e-7, 1.0)
        if self.gene_embedding not in GENE_EMBEDDINGS:
            msg = (
                f"The 'gene_embedding' parameter of CellEncoder must be one of {list(GENE_EMBEDDINGS)}. "
                f"Got {self.gene_embedding!r} instead."
            )
            raise ValueError(msg)

    # ------------------------------------------------------------------------- fit
    def fit(
        self,
        adata: AnnData,
        *,
        batch_key: str | None = None,
        layer: str | None = None,
        species: str = "human",
    ) -> CellEncoder:
        """Train the encoder on raw counts.

        Parameters
        ----------
        adata
            Cells x genes with raw counts in ``X`` or ``layers[layer]``; var names are gene symbols.
        batch_key
            Column of ``adata.obs`` with the batch (donor, technology, species) the
            decoder is conditioned on; ``None``: one batch.
        layer
            Layer holding raw counts (``None``: ``X``).
        species
            ``"human"`` or ``"mouse"`` (mouse genes are renamed to human orthologs).

        Returns
        -------
        self
        """
        import torch

        self._validate_params()
        if adata.n_obs < 2:
            msg = f"CellEncoder.fit needs at least 2 cells. Got {adata.n_obs}."
            raise DataValidationError(msg)
        m = counts_matrix(adata, layer)
        check_counts(m, layer=layer)
        keep, names = map_species_genes(adata.var_names, species)
        x = as_csr(m)[:, keep]
        detected = np.asarray((x > 0).sum(axis=0)).ravel()
        ref = np.flatnonzero(detected >= self.min_cells)
        if len(ref) < 2:
            msg = (
                f"Only {len(ref)} genes are detected in at least min_cells={self.min_cells} cells; "
                "lower min_cells or pass more cells."
            )
            raise DataValidationError(msg)
        if names.has_duplicates:
            msg = f"Gene names must be unique; duplicated: {list(names[names.duplicated()][:5])}."
            raise DataValidationError(msg)
        # rank genes by the variance of log-normalised expression (totals over the whole panel)
        logx = _log_weights(x)
        mean = np.asarray(logx.mean(axis=0)).ravel()
        var = np.asarray(logx.multiply(logx).mean(axis=0)).ravel() - mean**2
        if self.n_input_genes is not None and len(ref) > self.n_input_genes:
            ref = np.sort(ref[np.argsort(-var[ref], kind="stable")[: self.n_input_genes]])
        x = sp.csr_matrix(x[:, ref], dtype=np.float32)
        genes = pd.Index(names[ref])
        self.excluded_genes_ = pd.Index(names.difference(genes, sort=False))
        logger.info(
            "CellEncoder: %d reference genes; %d genes of the training panel excluded "
            "(detected in < %d cells or beyond n_input_genes).",
            len(ref),
            len(self.excluded_genes_),
            self.min_cells,
        )
        # decoder genes: the most variable reference genes
        n_dec = min(self.n_decoder_genes, len(genes))
        dec = np.sort(np.argsort(-var[ref], kind="stable")[:n_dec])

        if batch_key is None:
            batch_codes = np.zeros(adata.n_obs, dtype=np.int64)
            batches = ["all"]
        else:
            if batch_key not in adata.obs:
                msg = f"batch_key={batch_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
                raise DataValidationError(msg)
            col = adata.obs[batch_key].astype(str)
            batches = sorted(col.unique())
            batch_codes = pd.Categorical(col, categories=batches).codes.astype(np.int64)

        know, has = knowledge_rows(list(genes), self.gene_embedding)
        logger.info(
            "CellEncoder: %d of %d reference genes have a %r knowledge embedding.",
            int(has.sum()),
            len(genes),
            self.gene_embedding,
        )
        self.genes_ = genes
        self.decoder_genes_ = genes[dec]
        self.batches_ = list(batches)
        self.batch_key_ = batch_key
        self.knowledge_ = know
        self.has_knowledge_ = has
        with _torch_threads(_TORCH_THREADS), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.module_ = self._new_module()
            launched = _launched_world()
            self.__dict__.pop("ddp_", None)  # a refit does not keep the last fit's process group
            t0 = time.perf_counter()
            if launched > 1:
                self.history_ = self._train_launched(x, dec, batch_codes, launched)
                self.train_seconds_ = time.perf_counter() - t0
            elif int(self.n_processes) > 1:
                # the training loop's seconds as rank 0 measured them (without process start-up)
                self.history_, self.train_seconds_ = self._train_distributed(x, dec, batch_codes)
            else:
                self.history_ = self._train(x, dec, batch_codes)
                self.train_seconds_ = time.perf_counter() - t0
        self.module_.eval()
        self.fitted_ = True
        return self

    def _new_module(self) -> SetEncoderModule:
        module = self.module_class(
            n_ref=len(self.genes_),
            n_knowledge=self.knowledge_.shape[1],
            n_hidden=self.n_hidden,
            n_latent=self.n_latent,
            n_batches=len(self.batches_),
        )
        if self.adversarial_weight > 0 and len(self.batches_) > 1:
            module.add_adversary(self.n_latent, self.n_hidden)
        return module

    def _ref_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        n = len(self.genes_)
        return (
            torch.arange(n),
            torch.from_numpy(self.knowledge_),
            torch.from_numpy(self.has_knowledge_),
        )

    def _objective(self, dec: np.ndarray, batch_codes: np.ndarray) -> torch.nn.Module:
        """The training loss of ``module_`` as a module (so DistributedDataParallel can wrap it)."""
        import torch
        from torch.nn import functional as F

        from aivc.cells._module import gaussian_kl, nb_log_likelihood, reverse_gradient

        ref_idx, know, has = self._ref_tensors()
        dec_t = torch.from_numpy(dec)
        n_b = len(self.batches_)
        onehot_all = F.one_hot(torch.from_numpy(batch_codes), num_classes=max(n_b, 1)).float()
        kl_weight, adversarial_weight = self.kl_weight, self.adversarial_weight

        class Objective(torch.nn.Module):
            def __init__(self, module: torch.nn.Module) -> None:
                super().__init__()
                self.module = module

            def forward(
                self,
                xb: torch.Tensor,
                keep: torch.Tensor,
                tok_keep: torch.Tensor,
                noise: torch.Tensor,
                idx: np.ndarray,
                warm: float,
            ) -> torch.Tensor:
                module = self.module
                xin = xb * keep
                w = torch.log1p(xin * (_SCALE / xin.sum(1, keepdim=True).clamp(min=1.0)))
                feats = module.gene_features(ref_idx, know, has, tok_keep)
                mu, logvar = module.encode_pooled(module.pool(w, feats))
                z = mu + noise * (0.5 * logvar).exp()
                onehot = onehot_all[idx]
                logits, log_theta = module.decode_logits(z, onehot, dec_t, know[dec_t], has[dec_t])
                xd = xb[:, dec_t]
                lib = xd.sum(1)
                rate = lib.unsqueeze(1) * torch.softmax(logits, dim=1)
                nll = -nb_log_likelihood(xd, rate, log_theta).sum(1)
                loss = (nll + kl_weight * warm * gaussian_kl(mu, logvar)).mean()
                if module.adversary is not None:
                    adv_logits = module.adversary(reverse_gradient(z, adversarial_weight))
                    loss = loss + F.cross_entropy(adv_logits, onehot.argmax(1)) * xd.shape[1] / 100
                return loss

        return Objective(self.module_)

    def _train(
        self,
        x: sp.csr_matrix,
        dec: np.ndarray,
        batch_codes: np.ndarray,
        *,
        rank: int = 0,
        world: int = 1,
    ) -> list[float]:
        """Train ``module_``; with ``world > 1`` this is one rank of a DistributedDataParallel run.

        Every rank draws the same global batches (one permutation per epoch from
        ``seed``) and trains on its share of each (every ``world``-th cell);
        DistributedDataParallel averages the gradients, so all ranks take the
        same steps. Masks and noise are drawn per rank (seeded by ``seed`` and
        the rank); with one process the draws are those of ``seed`` alone.
        """
        import torch

        from aivc._progress import progress

        module = self.module_
        module.train()
        objective = self._objective(dec, batch_codes)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            objective = DistributedDataParallel(objective)
        gen = torch.Generator().manual_seed(self.seed + _RANK_SEED_STEP * rank)
        rng = np.random.default_rng(self.seed)
        n_ref = len(self.genes_)
        opt = torch.optim.Adam(module.parameters(), lr=self.learning_rate)
        n = x.shape[0]
        bs = min(self.batch_size, n)
        steps_per_epoch = max(1, n // bs)
        total_steps = steps_per_epoch * self.max_epochs
        warmup = max(1, total_steps // 2)
        step = 0
        history: list[float] = []
        epochs = range(self.max_epochs)
        if rank == 0:
            epochs = progress(epochs, desc="training cell encoder", unit="epoch")
        for _ in epochs:
            perm = rng.permutation(n)
            losses = []
            for s in range(steps_per_epoch):
                idx = perm[s * bs : (s + 1) * bs][rank::world]
                xb = torch.from_numpy(x[idx].toarray())
                keep = (torch.rand(xb.shape, generator=gen) >= self.mask_rate).to(xb.dtype)
                tok_keep = (torch.rand(n_ref, generator=gen) >= self.token_dropout).to(xb.dtype)
                noise = torch.randn((len(idx), self.n_latent), generator=gen)
                loss = objective(xb, keep, tok_keep, noise, idx, min(1.0, step / warmup))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
            history.append(float(np.mean(losses)))
            if not math.isfinite(history[-1]):
                msg = "Training diverged (loss is not finite); lower learning_rate."
                raise FloatingPointError(msg)
        return history

    def _train_launched(
        self, x: sp.csr_matrix, dec: np.ndarray, batch_codes: np.ndarray, world: int
    ) -> list[float]:
        """Train as one rank of a run started by ``torchrun`` (its environment names the group).

        Every rank reads the same data and ends with the same weights, so any
        rank (usually rank 0) can save the model.
        """
        import torch.distributed as dist

        rank = int(os.environ["RANK"])
        own = not dist.is_initialized()
        if own:
            dist.init_process_group("gloo", init_method="env://")
        try:
            history = self._train(x, dec, batch_codes, rank=rank, world=world)
        finally:
            if own:
                dist.destroy_process_group()
        self.ddp_ = {"processes": world, "backend": "gloo", "launched_by": "torchrun", "rank": rank}
        return history

    def _train_distributed(
        self, x: sp.csr_matrix, dec: np.ndarray, batch_codes: np.ndarray
    ) -> tuple[list[float], float]:
        """Train on ``n_processes`` CPU processes with DistributedDataParallel (gloo backend).

        Returns rank 0's loss history and its training-loop seconds.
        """
        from aivc._ddp import train_on_processes

        world = int(self.n_processes)
        state, history, seconds = train_on_processes(
            self,
            "_train_rank",
            (x, dec, batch_codes),
            world,
            threads=max(1, _TORCH_THREADS // world),
        )
        self.module_.load_state_dict(state)
        self.ddp_ = {"processes": world, "backend": "gloo", "ranks_in_sync": True}
        return history, seconds

    def _train_rank(
        self, x: sp.csr_matrix, dec: np.ndarray, batch_codes: np.ndarray, *, rank: int, world: int
    ) -> tuple[Any, list[float]]:
        """One process of :meth:`_train_distributed`: a fresh module from the seed, trained."""
        import torch

        torch.manual_seed(self.seed)
        self.module_ = self._new_module()
        return self.module_, self._train(x, dec, batch_codes, rank=rank, world=world)

    # ------------------------------------------------------------------------- panels
    def _panel_plan(self, var_names: Sequence[str], *, species: str = "human") -> _PanelPlan:
        """Map a query panel onto the model: reference genes, knowledge-only genes, dropped genes."""
        import torch

        keep, names = map_species_genes(var_names, species)
        ref_pos = self.genes_.get_indexer(names)
        in_ref = ref_pos >= 0
        excluded = names.isin(self.excluded_genes_)
        novel = np.flatnonzero(~in_ref & ~excluded)
        k_rows = np.zeros((len(names), self.knowledge_.shape[1]), dtype=np.float32)
        has = np.zeros(len(names), dtype=bool)
        k_rows[in_ref] = self.knowledge_[ref_pos[in_ref]]
        has[in_ref] = self.has_knowledge_[ref_pos[in_ref]]
        if len(novel) and self.gene_embedding != "none":
            try:
                rows, hk = knowledge_rows([names[i] for i in novel], self.gene_embedding)
            except FileNotFoundError as e:
                logger.warning(
                    "Gene knowledge is unavailable (%s); %d genes new to the model are dropped.",
                    e,
                    len(novel),
                )
                rows, hk = (
                    np.zeros((len(novel), self.knowledge_.shape[1]), np.float32),
                    np.zeros(len(novel), bool),
                )
            k_rows[novel] = rows
            has[novel] = hk
        use = in_ref | has
        n_ref = int(in_ref.sum())
        n_know = int((use & ~in_ref).sum())
        n_excl = int(excluded.sum())
        n_drop = len(var_names) - int(use.sum())
        if not use.any():
            msg = (
                f"The query shares no genes with the model: none of its {len(var_names)} genes "
                f"(e.g. {list(map(str, var_names[:5]))}) is a reference gene or has a {self.gene_embedding!r} "
                f"knowledge embedding (reference genes e.g. {list(self.genes_[:5])}). Check that var_names "
                "hold gene symbols of the right species (pass species='mouse' for mouse data)."
            )
            raise DataValidationError(msg)
        logger.info(
            "Query panel: %d reference genes, %d genes through knowledge only, %d genes dropped "
            "(%d excluded in training, the others with no reference vector and no knowledge embedding).",
            n_ref,
            n_know,
            n_drop,
            n_excl,
        )
        sel = np.flatnonzero(use)
        with torch.no_grad():
            feats = self.module_.gene_features(
                torch.from_numpy(np.where(in_ref, ref_pos, -1)[sel]),
                torch.from_numpy(k_rows[sel]),
                torch.from_numpy(has[sel]),
            ).numpy()
        return _PanelPlan(
            cols=keep[sel],
            genes=names[sel],
            features=np.ascontiguousarray(feats, dtype=np.float32),
            n_reference=n_ref,
            n_knowledge_only=n_know,
            n_dropped=n_drop,
        )

    def _embed_counts(
        self, counts: Any, plan: _PanelPlan, *, layer: str | None = None
    ) -> tuple[np.ndarray, int]:
        """Latent means of a block of cells given as counts over the query panel.

        The counts of the genes the model reads are checked to be raw counts.

        Returns
        -------
        The latent means and the number of cells with no counts on those genes.
        """
        import torch

        block = counts if sp.issparse(counts) else sp.csr_matrix(np.asarray(counts))
        block = sp.csr_matrix(block)
        full = len(plan.cols) == block.shape[1] and (plan.cols == np.arange(block.shape[1])).all()
        sub = block if full else block[:, plan.cols]
        check_counts(sub, layer=layer)
        w = _log_weights(sub)
        totals = np.asarray(w.sum(axis=1)).ravel()
        pooled = np.asarray(w @ plan.features) / np.maximum(totals, 1e-6)[:, None]
        with torch.no_grad():
            mu, _ = self.module_.encode_pooled(torch.from_numpy(pooled.astype(np.float32)))
        return mu.numpy(), int((totals == 0).sum())

    # ------------------------------------------------------------------------- transform
    def transform(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        species: str = "human",
        chunk_size: int = 20_000,
    ) -> np.ndarray:
        """Cell representations (latent means), cells x ``n_latent``.

        Works on any gene panel (see the class description); an AnnData opened
        in backed mode is read ``chunk_size`` cells at a time.

        Parameters
        ----------
        adata
            Cells x genes with raw counts; var names are gene symbols.
        layer
            Layer holding raw counts (``None``: ``X``).
        species
            ``"human"`` or ``"mouse"``.
        chunk_size
            Cells embedded at once.
        """
        self._check_fitted()
        plan = self._panel_plan(adata.var_names, species=species)
        out = np.empty((adata.n_obs, self.n_latent), dtype=np.float32)
        with _torch_threads(_TORCH_THREADS):
            empty = 0
            for start, stop, block in iter_chunks(adata, chunk_size=chunk_size, layer=layer):
                out[start:stop], n_empty = self._embed_counts(block, plan, layer=layer)
                empty += n_empty
        if empty:
            logger.warning(
                "%d cells have no counts on the genes the model reads; their embedding carries no information.",
                empty,
            )
        return out

    def embed(
        self,
        adata: AnnData,
        *,
        key_added: str = "X_aivc",
        layer: str | None = None,
        species: str = "human",
    ) -> None:
        """Write cell representations to ``adata.obsm[key_added]``.

        Also records the model parameters in ``adata.uns[key_added]["params"]``.
        """
        adata.obsm[key_added] = self.transform(adata, layer=layer, species=species)
        adata.uns[key_added] = {
            "params": {k: v for k, v in self.get_params().items() if v is not None},
            "n_reference_genes": len(self.genes_),
        }

    # ------------------------------------------------------------------------- decode
    def decode(
        self,
        z: np.ndarray,
        genes: Sequence[str],
        *,
        library_size: float | np.ndarray = _SCALE,
        batch: str | None = None,
    ) -> np.ndarray:
        """Expected counts of ``genes`` for cell representations ``z``.

        The decoder gives each cell a distribution over ``genes`` (proportions
        summing to 1) scaled by ``library_size``, the cell's total count over
        these genes (default 10,000: normalised mean expression).

        Parameters
        ----------
        z
            Cells x ``n_latent`` representations (e.g. from :meth:`transform`).
        genes
            Human symbols: reference genes or genes with a knowledge embedding.
        library_size
            A number or one per cell.
        batch
            Batch to decode as (one of ``batches_``); ``None`` averages the batches.

        Returns
        -------
        Cells x genes expected counts.
        """
        import torch

        self._check_fitted()
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.n_latent:
            msg = f"z must be cells x {self.n_latent} (n_latent). Got shape {z.shape}."
            raise ValueError(msg)
        genes = pd.Index([str(g) for g in genes])
        ref_pos = self.genes_.get_indexer(genes)
        in_ref = ref_pos >= 0
        k_rows = np.zeros((len(genes), self.knowledge_.shape[1]), dtype=np.float32)
        has = np.zeros(len(genes), dtype=bool)
        k_rows[in_ref] = self.knowledge_[ref_pos[in_ref]]
        has[in_ref] = self.has_knowledge_[ref_pos[in_ref]]
        novel = np.flatnonzero(~in_ref)
        if len(novel):
            rows, hk = knowledge_rows(list(genes[novel]), self.gene_embedding)
            k_rows[novel], has[novel] = rows, hk
        unknown = ~(in_ref | has)
        if unknown.any():
            msg = (
                f"Cannot decode {int(unknown.sum())} genes that are neither reference genes nor have a "
                f"{self.gene_embedding!r} knowledge embedding: {list(genes[unknown][:8])}."
            )
            raise DataValidationError(msg)
        lib = np.broadcast_to(np.asarray(library_size, dtype=np.float32), (z.shape[0],))
        if batch is None:
            codes = list(range(len(self.batches_)))
        elif batch in self.batches_:
            codes = [self.batches_.index(batch)]
        else:
            msg = f"Unknown batch {batch!r}; the decoder knows {self.batches_}."
            raise ValueError(msg)
        nb = self.module_.n_batches
        with torch.no_grad(), _torch_threads(_TORCH_THREADS):
            zt = torch.from_numpy(z)
            props = torch.zeros((z.shape[0], len(genes)))
            for c in codes:
                onehot = torch.zeros((z.shape[0], nb))
                onehot[:, c] = 1.0
                logits, _ = self.module_.decode_logits(
                    zt,
                    onehot,
                    torch.from_numpy(np.where(in_ref, ref_pos, -1)),
                    torch.from_numpy(k_rows),
                    torch.from_numpy(has),
                )
                props += torch.softmax(logits, dim=1)
            props /= len(codes)
        return props.numpy() * lib[:, None]

    # ------------------------------------------------------------------------- persistence
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {
            f"module.{k}": v.detach().cpu().numpy()
            for k, v in self.module_.state_dict().items()
            if not k.startswith("adversary.")
        }
        arrays["knowledge"] = self.knowledge_
        arrays["has_knowledge"] = self.has_knowledge_.astype(np.uint8)
        meta = {
            "genes": list(self.genes_),
            "decoder_genes": list(self.decoder_genes_),
            "excluded_genes": list(self.excluded_genes_),
            "batches": list(self.batches_),
            "batch_key": self.batch_key_,
            "history": list(self.history_),
            "module_class": type(self.module_).__name__,
        }
        return arrays, meta

    def _set_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        import torch

        self._validate_params()
        self.genes_ = pd.Index(meta["genes"])
        self.decoder_genes_ = pd.Index(meta["decoder_genes"])
        self.excluded_genes_ = pd.Index(meta["excluded_genes"], dtype=object)
        self.batches_ = list(meta["batches"])
        self.batch_key_ = meta["batch_key"]
        self.history_ = list(meta["history"])
        self.knowledge_ = np.asarray(arrays["knowledge"], dtype=np.float32)
        self.has_knowledge_ = np.asarray(arrays["has_knowledge"]).astype(bool)
        if self.knowledge_.shape[0] != len(self.genes_):
            msg = (
                f"The model directory is inconsistent: {len(self.genes_)} genes in config.json but "
                f"{self.knowledge_.shape[0]} knowledge rows in the weights."
            )
            raise DataValidationError(msg)
        module = self.module_class(
            n_ref=len(self.genes_),
            n_knowledge=self.knowledge_.shape[1],
            n_hidden=self.n_hidden,
            n_latent=self.n_latent,
            n_batches=len(self.batches_),
        )
        state = {
            k.removeprefix("module."): torch.from_numpy(v.copy())
            for k, v in arrays.items()
            if k.startswith("module.")
        }
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            msg = f"The weights do not match the model configuration ({e})."
            raise DataValidationError(msg) from None
        module.eval()
        self.module_ = module


# ----------------------------------------------------------------------------- decoder evaluation
def heldout_reconstruction(
    encoder: CellEncoder,
    adata: AnnData,
    genes: Sequence[str],
    *,
    layer: str | None = None,
    reference_mean: np.ndarray | None = None,
) -> dict[str, float]:
    """Reconstruction of genes hidden from the encoder, against a mean-profile baseline.

    The ``genes`` are removed from the cells' panel before encoding; the
    decoder then predicts them from the representation, scaled by each
    cell's observed total over these genes. The baseline predicts every cell
    as the mean proportion profile (``reference_mean``, proportions over
    ``genes`` from training cells; default: from ``adata`` itself, which
    favours the baseline).

    Returns
    -------
    Mean per-gene Pearson correlation (across cells) of log1p expected vs
    observed counts, and mean Poisson deviance per cell-gene, for the model and the baseline.
    """
    genes = [str(g) for g in genes]
    pos = adata.var_names.get_indexer(genes)
    if (pos < 0).any():
        msg = f"{int((pos < 0).sum())} held-out genes are not in adata.var_names."
        raise DataValidationError(msg)
    m = as_csr(counts_matrix(adata, layer))
    check_counts(m, layer=layer)
    visible = np.setdiff1d(np.arange(adata.n_vars), pos)
    sub = adata[:, visible]
    z = encoder.transform(sub, layer=layer)
    obs = m[:, pos].toarray()
    lib = obs.sum(axis=1)
    pred = encoder.decode(z, genes, library_size=lib)
    if reference_mean is None:
        reference_mean = obs.sum(axis=0) / max(obs.sum(), 1.0)
    base = lib[:, None] * np.asarray(reference_mean, dtype=np.float64)[None, :]

    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        a, b = np.log1p(a), np.log1p(b)
        a, b = a - a.mean(0), b - b.mean(0)
        den = np.sqrt((a**2).sum(0) * (b**2).sum(0))
        ok = den > 0
        return float(np.mean((a * b).sum(0)[ok] / den[ok])) if ok.any() else float("nan")

    def deviance(p: np.ndarray) -> float:
        p = np.maximum(p, 1e-8)
        term = np.where(obs > 0, obs * np.log(np.maximum(obs, 1e-8) / p), 0.0)
        return float(np.mean(2 * (term - (obs - p))))

    return {
        "pearson_model": pearson(pred, obs),
        "pearson_mean_baseline": pearson(base, obs),
        "deviance_model": deviance(pred),
        "deviance_mean_baseline": deviance(base),
        "n_genes": len(genes),
        "n_cells": int(adata.n_obs),
    }


#: Seed offset between the random streams (masks, noise) of two training processes.
_RANK_SEED_STEP = 7919


def _launched_world() -> int:
    """The number of processes when this one was started by ``torchrun`` (1 otherwise)."""
    if os.environ.get("RANK") is None or os.environ.get("WORLD_SIZE") is None:
        return 1
    return max(1, int(os.environ["WORLD_SIZE"]))
