"""Gene representations from interaction networks (STRING, HuRI)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._settings import settings
from aivc.genes._knowledge import _file_digest, _load_cached, _svd_embedding, knowledge_path

__all__ = ["NETWORKS", "network_embedding"]

logger = logging.getLogger(__name__)

#: Network sources: file, weight column (None = unweighted) and citation.
NETWORKS: dict[str, tuple[str, str | None, str]] = {
    "string": (
        "string_v12_human_notextmining_700_top3.tsv.gz",
        "combined_score",
        "STRING v12 (no text mining); Szklarczyk et al. NAR 2023",
    ),
    "huri": ("huri_ppi_luck2020.tsv.gz", None, "HuRI; Luck et al. Nature 2020"),
}


def network_embedding(
    source: str,
    *,
    n_components: int = 64,
    data_dir: str | Path | None = None,
    cache: bool = True,
) -> pd.DataFrame:
    """Spectral gene embeddings of an interaction network.

    The symmetric normalised adjacency ``D^-1/2 A D^-1/2`` (edge weights =
    STRING combined score / 1000, or 1 for HuRI; self-loops added so isolated
    pairs stay finite) is reduced with a seeded truncated SVD; rows are
    L2-normalised. Genes absent from the network are absent from the result.

    Returns
    -------
    Genes x ``n_components`` DataFrame indexed by symbol (cached as ``.npz``).
    """
    if source not in NETWORKS:
        msg = f"Unknown network {source!r}; expected one of {sorted(NETWORKS)}."
        raise ValueError(msg)
    filename, weight_col, _ = NETWORKS[source]
    path = knowledge_path(filename, data_dir)
    key = _file_digest([path], f"{source}-v1-{n_components}")
    cache_file = settings.cache_dir / "genes" / f"{source}_embedding_{key}.npz"
    cached = _load_cached(cache_file) if cache else None
    if cached is not None:
        return cached
    cols = ["symbol_a", "symbol_b", *([weight_col] if weight_col else [])]
    edges = pd.read_csv(path, sep="\t", usecols=cols, dtype={"symbol_a": str, "symbol_b": str})
    edges = edges.dropna(subset=["symbol_a", "symbol_b"])
    edges = edges[edges["symbol_a"] != edges["symbol_b"]]
    genes = pd.Index(sorted(set(edges["symbol_a"]) | set(edges["symbol_b"])))
    a = genes.get_indexer(edges["symbol_a"])
    b = genes.get_indexer(edges["symbol_b"])
    w = edges[weight_col].to_numpy(dtype=float) / 1000.0 if weight_col else np.ones(len(edges))
    n = len(genes)
    adj = sp.coo_matrix(
        (np.concatenate([w, w]), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n)
    ).tocsr()
    adj = adj + sp.identity(n, format="csr")
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = sp.diags(1.0 / np.sqrt(deg))
    norm = inv_sqrt @ adj @ inv_sqrt
    return _svd_embedding(
        norm,
        genes,
        n_components=n_components,
        cache_file=cache_file if cache else None,
        label=source,
    )
