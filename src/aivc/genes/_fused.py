"""Fusion of gene representation sources, and embeddings for any requested gene list."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aivc.genes._knowledge import gene_aliases, go_embedding, knowledge_path
from aivc.genes._networks import NETWORKS, network_embedding

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "FALLBACKS",
    "GENE_SOURCES",
    "KNOWLEDGE_SOURCES",
    "embed_genes",
    "fused_embedding",
    "genes_with_knowledge",
    "source_embedding",
]

logger = logging.getLogger(__name__)

#: Gene representation sources; ``"coexpression"`` needs a dataset (``adata``).
GENE_SOURCES = ("go", "string", "huri", "text", "coexpression")

#: Fallbacks of :func:`embed_genes` for genes no source knows.
FALLBACKS = ("zero", "mean")

#: Sources of prior knowledge about a gene (curated tables, not a dataset).
KNOWLEDGE_SOURCES = ("go", "string", "huri")


def source_embedding(
    source: str,
    *,
    n_components: int = 64,
    adata: AnnData | None = None,
    data_dir: str | Path | None = None,
) -> pd.DataFrame:
    """One gene representation source as a genes x ``n_components`` table.

    ``"go"`` (:func:`aivc.genes.go_embedding`), ``"string"`` / ``"huri"``
    (:func:`aivc.genes.network_embedding`), ``"text"``
    (:func:`aivc.genes.text_embedding`, reduced to ``n_components``) or
    ``"coexpression"`` (:func:`aivc.genes.coexpression_embedding` of ``adata``,
    which then must be given and hold log-normalised expression).
    """
    if source not in GENE_SOURCES:
        msg = f"Unknown gene source {source!r}; expected one of {list(GENE_SOURCES)}."
        raise ValueError(msg)
    if source == "go":
        return go_embedding(n_components=n_components, data_dir=data_dir)
    if source in NETWORKS:
        return network_embedding(source, n_components=n_components, data_dir=data_dir)
    if source == "text":
        from aivc.genes._text import text_embedding

        return text_embedding(n_components=n_components, data_dir=data_dir)
    if adata is None:
        msg = "The 'coexpression' source needs a dataset: pass adata=<log-normalised AnnData>."
        raise ValueError(msg)
    from aivc.genes._coexpression import coexpression_embedding

    return coexpression_embedding(adata, n_components=n_components)


def fused_embedding(
    sources: Sequence[str] = ("go", "string", "huri"),
    *,
    n_components: int = 64,
    adata: AnnData | None = None,
    data_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gene embeddings that concatenate several representation sources.

    Each source contributes one block of ``n_components`` columns (named
    ``<source>_<i>``), scaled by ``1/sqrt(len(sources))`` so a gene covered by
    every source has unit norm. A gene missing from a source gets zeros in
    that block — an explicit fallback recorded in the returned coverage
    table, never a silent drop. Leaving a source out of ``sources`` is the
    ablation of that source.

    Parameters
    ----------
    sources
        Any of :data:`GENE_SOURCES`, each at most once.
    n_components
        Dimensions per source.
    adata
        Dataset for the ``"coexpression"`` source (log-normalised expression).
    data_dir
        Data directory of the knowledge tables.

    Returns
    -------
    embedding
        Genes (union over sources) x ``len(sources) * n_components``.
    coverage
        Genes x sources, True where the source has the gene.
    """
    sources = tuple(sources)
    if not sources:
        msg = "fused_embedding needs at least one source."
        raise ValueError(msg)
    if len(set(sources)) != len(sources):
        msg = f"Each source may appear once in 'sources'. Got {list(sources)} instead."
        raise ValueError(msg)
    tables = {
        s: source_embedding(s, n_components=n_components, adata=adata, data_dir=data_dir)
        for s in sources
    }
    genes = pd.Index(sorted(set().union(*(t.index for t in tables.values()))))
    scale = 1.0 / np.sqrt(len(sources))
    blocks, coverage = [], {}
    for s, t in tables.items():
        block = t.reindex(genes).to_numpy(dtype=np.float32)
        coverage[s] = ~np.isnan(block).any(axis=1)
        blocks.append(np.nan_to_num(block, nan=0.0) * scale)
    columns = [f"{s}_{i}" for s, t in tables.items() for i in range(t.shape[1])]
    embedding = pd.DataFrame(np.hstack(blocks), index=genes, columns=columns)
    return embedding, pd.DataFrame(coverage, index=genes)


def embed_genes(
    genes: Sequence[str],
    *,
    embedding: pd.DataFrame | None = None,
    sources: Sequence[str] = ("go", "string", "huri"),
    n_components: int = 64,
    fallback: str = "zero",
    adata: AnnData | None = None,
    data_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Embeddings for a requested gene list, with an explicit fallback for unknown genes.

    Each requested symbol is looked up as given, then through its
    unambiguous alias (e.g. ``MARCH8`` -> ``MARCHF8``,
    :func:`aivc.genes.gene_aliases`). A gene that is still unknown gets the
    ``fallback`` vector and ``known=False`` in the report; a warning is
    logged with the counts and the first unknown symbols. Mouse genes should
    first be mapped with :func:`aivc.genes.map_orthologs`.

    Parameters
    ----------
    genes
        Requested symbols (duplicates allowed; the output follows this order).
    embedding
        A genes x dimensions table to read from; default: the
        :func:`fused_embedding` of ``sources``.
    sources, n_components, adata, data_dir
        Passed to :func:`fused_embedding` when ``embedding`` is not given.
    fallback
        ``"zero"``: a zero vector (the gene adds nothing to sums or dot
        products); ``"mean"``: the mean vector of the known requested genes
        (zero when none is known).

    Returns
    -------
    values
        Requested genes x dimensions, index = requested symbols.
    report
        Index = requested symbols; columns ``resolved`` (the symbol found,
        empty when unknown), ``known`` (bool), ``via_alias`` (bool) and, with
        fused sources, one boolean column per source (the gene is covered by it).
    """
    if fallback not in FALLBACKS:
        msg = (
            f"The 'fallback' parameter must be one of {list(FALLBACKS)}. Got {fallback!r} instead."
        )
        raise ValueError(msg)
    if isinstance(genes, str):
        msg = "genes must be a sequence of gene symbols, not one string."
        raise TypeError(msg)
    requested = [str(g) for g in genes]
    coverage: pd.DataFrame | None = None
    if embedding is None:
        embedding, coverage = fused_embedding(
            sources, n_components=n_components, adata=adata, data_dir=data_dir
        )
    try:
        aliases = gene_aliases(data_dir)
    except FileNotFoundError:
        aliases = {}
    index = embedding.index
    resolved, via_alias = [], []
    for g in requested:
        if g in index:
            resolved.append(g)
            via_alias.append(False)
        elif aliases.get(g) in index:
            resolved.append(aliases[g])
            via_alias.append(True)
        else:
            resolved.append("")
            via_alias.append(False)
    known = np.asarray([r != "" for r in resolved])
    pos = index.get_indexer([r if r else None for r in resolved])
    table = embedding.to_numpy(dtype=np.float32)
    values = np.zeros((len(requested), table.shape[1]), dtype=np.float32)
    values[known] = table[pos[known]]
    if fallback == "mean" and known.any():
        values[~known] = values[known].mean(axis=0)
    report = pd.DataFrame(
        {"resolved": resolved, "known": known, "via_alias": via_alias},
        index=pd.Index(requested, name="gene"),
    )
    if coverage is not None:
        cov = coverage.reindex([r if r else None for r in resolved]).eq(True)
        for s in coverage.columns:
            report[s] = cov[s].to_numpy()
    n_unknown = int((~known).sum())
    if n_unknown:
        unknown = [g for g, k in zip(requested, known, strict=True) if not k]
        logger.warning(
            "%d of %d genes have no embedding and get the %r fallback (e.g. %s); "
            "%d more were found through an alias",
            n_unknown,
            len(requested),
            fallback,
            unknown[:10],
            int(np.sum(via_alias)),
        )
    return pd.DataFrame(values, index=report.index, columns=embedding.columns), report


@lru_cache(maxsize=8)
def _symbols_in_table(path: str, columns: tuple[str, ...]) -> frozenset[str]:
    table = pd.read_csv(path, sep="\t", usecols=list(columns), dtype=str)
    return frozenset(table[list(columns)].stack().dropna())


def _knowledge_file(source: str) -> tuple[str, tuple[str, ...]]:
    if source == "go":
        return "human_go_annotations.tsv.gz", ("symbol",)
    if source in NETWORKS:
        return NETWORKS[source][0], ("symbol_a", "symbol_b")
    msg = f"Unknown knowledge source {source!r}; expected one of {list(KNOWLEDGE_SOURCES)}."
    raise ValueError(msg)


def genes_with_knowledge(
    genes: Sequence[str],
    *,
    sources: Sequence[str] = KNOWLEDGE_SOURCES,
    data_dir: str | Path | None = None,
) -> list[str]:
    """The genes of ``genes`` that some knowledge source says anything about.

    A gene has knowledge when it is annotated in the Gene Ontology (``"go"``)
    or has an interaction in STRING or HuRI (``"string"``, ``"huri"``),
    looked up as given and then through its unambiguous alias (e.g. ``SEPT2``
    for ``SEPTIN2``). Unannotated transcripts (most lncRNAs, clone-based names
    such as ``RP11-...``) have none: a model knows nothing about them beyond
    the data, and they are rarely what an experiment perturbs.

    Parameters
    ----------
    genes
        Gene symbols (duplicates allowed).
    sources
        Any of :data:`KNOWLEDGE_SOURCES`. Sources whose table is missing are
        skipped; when every one is missing, :class:`FileNotFoundError` says
        where the tables are expected.
    data_dir
        Data directory holding the ``genes`` tables.

    Returns
    -------
    The genes with knowledge, in the order given, each once.
    """
    if isinstance(genes, str):
        msg = "genes must be a sequence of gene symbols, not one string."
        raise TypeError(msg)
    known: set[str] = set()
    missing: list[FileNotFoundError] = []
    for source in dict.fromkeys(sources):
        filename, columns = _knowledge_file(source)
        try:
            path = knowledge_path(filename, data_dir)
        except FileNotFoundError as e:
            missing.append(e)
            continue
        known |= _symbols_in_table(str(path), columns)
    if missing and len(missing) == len(set(sources)):
        raise missing[0]
    try:
        aliases = gene_aliases(data_dir)
    except FileNotFoundError:
        aliases = {}
    out = []
    for g in dict.fromkeys(str(g) for g in genes):
        if g in known or aliases.get(g) in known:
            out.append(g)
    return out
