"""mimitou2019_cite_small from the CiteFuse R package's example data.

The source is ``data/CITEseq_example.rda`` of the ``SydneyBioX/CiteFuse``
repository at a pinned commit: 500 cells of the ECCITE-seq PBMC control sample
of Mimitou et al. (2019), an R list of three count matrices with the same cells,
``RNA`` (19,521 genes, named ``hg19_<symbol>``), ``ADT`` (49 antibodies) and
``HTO`` (4 hashtags).

The converter transposes the matrices to cells x features, takes the ``hg19_``
prefix off the gene names and keeps every cell and feature. RNA counts go to
``X`` (float32 CSR), antibody and hashtag counts to ``obsm["protein_counts"]``
and ``obsm["hto_counts"]`` (float32 DataFrames, columns in sorted order), and
``obs`` gets the RNA and ADT totals, the strongest hashtag and the batch name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data.sources import PublicSource, SourceFile, register_source
from aivc.data.sources._rdata import RMatrix, as_matrix, read_rda, require_keys, require_path

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["convert"]

DATASET = "mimitou2019_cite_small"
REPOSITORY = "SydneyBioX/CiteFuse"
COMMIT = "b6075864d8930967946022fdfbbf57a6a120061f"
PATH = "data/CITEseq_example.rda"
GIT_BLOB = "bd27181d24427b9211ed1ffdebc132666966bb78"
FILENAME = "CITEseq_example.rda"
OBJECT = "CITEseq_example"
GENE_PREFIX = "hg19_"
BATCH = "eccite_pbmc_ctrl"
UNS = {
    "X_description": (
        "raw RNA UMI counts (integer-valued float32, CSR); gene symbols from hg19 annotation "
        "(prefix hg19_ stripped)"
    ),
    "protein_description": (
        "obsm[protein_counts]: raw ADT UMI counts, 49 antibodies incl. isotype controls "
        "IgG1/IgG2a; obsm[hto_counts]: hashtag counts"
    ),
}


def _named(matrix: RMatrix, part: str) -> RMatrix:
    if matrix.row_names is None or matrix.col_names is None:
        msg = f"{OBJECT}${part} has no row or column names; features and cells are named by them."
        raise ValueError(msg)
    return matrix


def _counts_frame(matrix: RMatrix, cells: pd.Index, part: str) -> pd.DataFrame:
    """Cells x features float32 DataFrame of ``matrix`` (features x cells), columns sorted."""
    position = pd.Index(matrix.col_names).get_indexer(cells)
    if (position < 0).any() or len(set(matrix.col_names)) != len(cells):
        msg = f"{OBJECT}${part} does not hold the same cells as {OBJECT}$RNA."
        raise ValueError(msg)
    dense = matrix.values.T.toarray()[position].astype(np.float32)
    frame = pd.DataFrame(dense, index=cells, columns=pd.Index(matrix.row_names, dtype=object))
    return frame[sorted(frame.columns)]


def convert(paths: Mapping[str, Path]) -> AnnData:
    """Build mimitou2019_cite_small from ``CITEseq_example.rda``.

    Parameters
    ----------
    paths
        ``{"CITEseq_example.rda": path}``.

    Returns
    -------
    AnnData
        500 cells x 19,521 genes of raw RNA counts (float32 CSR), ADT and HTO counts in ``obsm``.
    """
    import anndata as ad

    path = require_path(paths, FILENAME, dataset=DATASET)
    objects = read_rda(path, what=FILENAME)
    data = require_keys(objects, [OBJECT], what=FILENAME)[OBJECT]
    data = require_keys(data, ["RNA", "ADT", "HTO"], what=f"{OBJECT} in {FILENAME}")
    rna, adt, hto = (
        _named(as_matrix(data[part], what=f"{OBJECT}${part}"), part)
        for part in ("RNA", "ADT", "HTO")
    )

    cells = pd.Index(rna.col_names, dtype=object, name="cell_barcode")
    genes = [name.removeprefix(GENE_PREFIX) for name in rna.row_names]
    x = sp.csr_matrix(rna.values.T, dtype=np.float32)
    x.eliminate_zeros()
    x.sort_indices()
    protein = _counts_frame(adt, cells, "ADT")
    hashtags = _counts_frame(hto, cells, "HTO")

    obs = pd.DataFrame(index=cells)
    obs["n_counts_rna"] = np.asarray(x.sum(axis=1), dtype=np.float32).ravel()
    obs["n_counts_adt"] = protein.to_numpy().sum(axis=1).astype(np.int64)
    obs["hto_max"] = pd.Categorical(hashtags.columns.to_numpy()[hashtags.to_numpy().argmax(axis=1)])
    obs["batch"] = pd.Categorical([BATCH] * len(cells))
    var = pd.DataFrame(index=pd.Index(genes, dtype=object, name="gene_symbol"))
    return ad.AnnData(
        X=x,
        obs=obs,
        var=var,
        obsm={"protein_counts": protein, "hto_counts": hashtags},
        uns=dict(UNS),
    )


SOURCE = register_source(
    PublicSource(
        dataset=DATASET,
        origin=(
            f"GitHub {REPOSITORY} (the CiteFuse Bioconductor package, GPL-3) at commit {COMMIT}, "
            f"file {PATH} (unchanged since commit 7fe9b86b6e51c77742e00ee9bcbe4c29e25d5bdd)"
        ),
        files=(
            SourceFile(
                url=f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/{PATH}",
                filename=FILENAME,
                git_blob=GIT_BLOB,
            ),
        ),
        convert=convert,
        notes=(
            "RNA, ADT and HTO counts are transposed to cells x features without changing a value "
            "or dropping a cell or feature; the hg19_ prefix is taken off the gene names. ADT and "
            "HTO counts become float32 DataFrames in obsm with their columns in sorted order, as in "
            "the data directory's copy (whether the source rows are already in that order could "
            "not be checked; sorting leaves such an order as it is). obs gets n_counts_rna, "
            "n_counts_adt, hto_max (the hashtag with the most counts, the first in sorted order on "
            "a tie) and batch. Not confirmed without the file at hand: the R class of the three "
            "matrices (sparse Matrix objects and dense matrices are both read) and the file's size, "
            "which is therefore not pinned (the git blob id is)."
        ),
    )
)
