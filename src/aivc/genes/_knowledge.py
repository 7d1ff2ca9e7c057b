"""Knowledge-based gene representations from the Gene Ontology and gene tables."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._io import atomic_path
from aivc._settings import settings

__all__ = [
    "GO_PROPAGATION_RELATIONS",
    "KNOWLEDGE_FOLDER",
    "gene_aliases",
    "gene_symbols",
    "go_ancestor_closure",
    "go_embedding",
    "knowledge_path",
]

logger = logging.getLogger(__name__)

#: Folder of the gene-knowledge tables under the data directory.
KNOWLEDGE_FOLDER = "genes"


def knowledge_path(filename: str, data_dir: str | Path | None = None) -> Path:
    """Path of a gene-knowledge table, with a clear error when it is missing."""
    base = Path(data_dir) if data_dir is not None else settings.data_dir
    path = base / KNOWLEDGE_FOLDER / filename
    if not path.exists():
        msg = (
            f"Gene-knowledge table {filename!r} not found under {str(base / KNOWLEDGE_FOLDER)!r}. "
            "Set AIVC_DATA_DIR to the folder that holds the 'genes' tables."
        )
        raise FileNotFoundError(msg)
    return path


def _file_digest(paths: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


@lru_cache(maxsize=4)
def _gene_table_cached(path: str) -> tuple[frozenset[str], dict[str, str]]:
    table = pd.read_csv(path, sep="\t", usecols=["symbol", "aliases"], dtype=str)
    table["symbol"] = table["symbol"].str.strip()
    symbols = frozenset(table["symbol"].dropna())
    pairs = table.dropna().assign(alias=lambda t: t["aliases"].str.split(";")).explode("alias")
    # sources write "A; B" as well as "A;B": an alias is the symbol without surrounding spaces
    pairs["alias"] = pairs["alias"].str.strip()
    pairs = pairs[(pairs["alias"] != "") & (pairs["alias"] != pairs["symbol"])]
    pairs = pairs[~pairs["alias"].isin(symbols)]
    counts = pairs["alias"].value_counts()
    unique = pairs[pairs["alias"].isin(counts.index[counts == 1])]
    return symbols, dict(zip(unique["alias"], unique["symbol"], strict=True))


def gene_symbols(
    data_dir: str | Path | None = None, *, include_aliases: bool = True
) -> frozenset[str]:
    """Symbols of all human genes in the gene-info table.

    With ``include_aliases`` (default) unambiguous previous symbols and aliases
    (e.g. ``MARCH8`` for ``MARCHF8``) are included, so data labelled with an
    older nomenclature validate.
    """
    symbols, aliases = _gene_table_cached(str(knowledge_path("human_gene_info.tsv.gz", data_dir)))
    return symbols | frozenset(aliases) if include_aliases else symbols


def gene_aliases(data_dir: str | Path | None = None) -> dict[str, str]:
    """Unambiguous alias -> official symbol (aliases that are someone's symbol are left out)."""
    return dict(_gene_table_cached(str(knowledge_path("human_gene_info.tsv.gz", data_dir)))[1])


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)


def _load_cached(cache_file: Path) -> pd.DataFrame | None:
    """A cached embedding, or None when there is none."""
    if not cache_file.exists():
        return None
    with np.load(cache_file, allow_pickle=False) as z:
        return pd.DataFrame(z["values"], index=pd.Index(z["genes"].astype(str)))


def _svd_embedding(
    matrix: sp.spmatrix,
    genes: Sequence[str],
    *,
    n_components: int,
    cache_file: Path | None,
    label: str,
) -> pd.DataFrame:
    """Seeded truncated SVD of a genes x features matrix, rows L2-normalised, cached if asked."""
    from sklearn.decomposition import TruncatedSVD

    k = min(n_components, min(matrix.shape) - 1)
    z = TruncatedSVD(
        n_components=k, algorithm="randomized", n_iter=7, random_state=0
    ).fit_transform(matrix)
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    values = z.astype(np.float32)
    names = np.asarray(genes, dtype=str)
    if cache_file is not None:
        _save_npz_atomic(cache_file, values=values, genes=names)
    logger.info("%s embedding: %d genes x %d dimensions", label, values.shape[0], values.shape[1])
    return pd.DataFrame(values, index=pd.Index(names))


#: GO relations along which annotations are propagated to ancestor terms (the true-path rule).
GO_PROPAGATION_RELATIONS = ("isa", "part of")

#: The three GO root terms; annotations to them carry no information.
GO_ROOTS = ("GO:0008150", "GO:0003674", "GO:0005575")


def go_ancestor_closure(
    terms: Sequence[str] | None = None, *, data_dir: str | Path | None = None
) -> tuple[sp.csr_matrix, pd.Index]:
    """Reflexive-transitive closure of the GO hierarchy (``is_a`` and ``part_of``).

    Parameters
    ----------
    terms
        Extra term ids to include (e.g. annotated terms missing from the parents table).
    data_dir
        Data directory holding ``genes/go_term_parents.tsv.gz``.

    Returns
    -------
    closure
        Terms x terms boolean CSR matrix, ``closure[i, j]`` true when term ``j``
        is term ``i`` or one of its ancestors.
    index
        The term ids labelling rows and columns.
    """
    path = knowledge_path("go_term_parents.tsv.gz", data_dir)
    edges = pd.read_csv(path, sep="\t", usecols=["child", "parent", "relationship_type"], dtype=str)
    edges = edges[edges["relationship_type"].isin(GO_PROPAGATION_RELATIONS)]
    index = pd.Index(
        sorted(set(edges["child"]) | set(edges["parent"]) | set(() if terms is None else terms))
    )
    n = len(index)
    step = sp.csr_matrix(
        (
            np.ones(len(edges)),
            (index.get_indexer(edges["child"]), index.get_indexer(edges["parent"])),
        ),
        shape=(n, n),
    )
    closure = sp.identity(n, format="csr")
    while True:  # the GO graph is a DAG of depth < 30: this stops after depth + 1 rounds
        grown = ((closure + closure @ step) > 0).astype(np.float64).tocsr()
        if grown.nnz == closure.nnz:
            break
        closure = grown
    return closure.astype(bool).tocsr(), index


def go_embedding(
    *,
    n_components: int = 64,
    data_dir: str | Path | None = None,
    cache: bool = True,
) -> pd.DataFrame:
    """Gene embeddings from Gene Ontology annotations propagated up the term hierarchy.

    The direct annotations (all three aspects, all evidence codes) are
    propagated to every ancestor term along ``is_a`` and ``part_of``
    (:func:`go_ancestor_closure`, the GO true-path rule), so a gene annotated
    to "type I interferon-mediated signaling pathway" also counts for
    "cytokine-mediated signaling pathway". The gene x term matrix (root terms
    and terms held by a single gene removed) is weighted by inverse term
    frequency, L2-normalised per gene, reduced with a seeded truncated SVD
    and the rows are L2-normalised. Genes without any annotation are absent
    (callers decide their fallback explicitly, see :func:`aivc.genes.embed_genes`).

    The result is cached under ``aivc.settings.cache_dir`` keyed by the input
    files and parameters (``.npz``, no pickle).

    Returns
    -------
    Genes x ``n_components`` DataFrame indexed by symbol.
    """
    ann_path = knowledge_path("human_go_annotations.tsv.gz", data_dir)
    parents_path = knowledge_path("go_term_parents.tsv.gz", data_dir)
    key = _file_digest([ann_path, parents_path], f"go-v2-{n_components}")
    cache_file = settings.cache_dir / "genes" / f"go_embedding_{key}.npz"
    cached = _load_cached(cache_file) if cache else None
    if cached is not None:
        return cached
    ann = pd.read_csv(ann_path, sep="\t", usecols=["symbol", "go_id"], dtype=str).dropna()
    ann = ann.drop_duplicates()
    closure, terms = go_ancestor_closure(ann["go_id"].unique(), data_dir=data_dir)
    g_codes, genes = pd.factorize(ann["symbol"], sort=True)
    direct = sp.csr_matrix(
        (np.ones(len(g_codes)), (g_codes, terms.get_indexer(ann["go_id"]))),
        shape=(len(genes), len(terms)),
    )
    m = ((direct @ closure.astype(np.float64)) > 0).astype(np.float64).tocsc()
    df = np.asarray(m.sum(axis=0)).ravel()
    keep = (df >= 2) & ~terms.isin(GO_ROOTS)
    m = m[:, np.flatnonzero(keep)].tocsr()
    df = df[keep]
    has_terms = np.asarray(m.sum(axis=1)).ravel() > 0
    m, genes = m[np.flatnonzero(has_terms)], genes[has_terms]
    idf = np.log((1 + m.shape[0]) / (1 + df)) + 1.0
    m = m @ sp.diags(idf)
    row_norm = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    m = sp.diags(1.0 / np.maximum(row_norm, 1e-12)) @ m
    return _svd_embedding(
        m, genes, n_components=n_components, cache_file=cache_file if cache else None, label="GO"
    )
