"""pbmc10k_cite_small and pbmc5k_cite_small from the scvi-tools test fixtures.

scvi-tools (scverse, BSD-3-Clause) keeps in its tests the first 200 cells of
its filtered 10x Genomics PBMC CITE-seq files (the totalVI preparation of the
10k and 5k TotalSeq-B datasets, CC BY 4.0): RNA counts in ``X`` (dense),
antibody counts in ``obsm["protein_expression"]`` with their names in
``uns["protein_names"]``. The converter turns the proteins into a named table
and prefixes the cell ids with the dataset's name, so the two sets can be
concatenated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aivc.data.sources import PublicSource, SourceFile, register_source
from aivc.data.sources._common import as_csr_float32, read_source_h5ad

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["PROTEIN_SUFFIX", "convert_pbmc5k", "convert_pbmc10k"]

REPO = "scverse/scvi-tools"
COMMIT = "93dc4fae21917406673206320c8a3002433c4a5d"
FOLDER = "tests/test_data"
#: Suffix of the antibody names in the source, removed here.
PROTEIN_SUFFIX = "_TotalSeqB"


def convert_fixture(path: str | Path, name: str) -> AnnData:
    """Convert one scvi-tools CITE-seq fixture (``<name>.h5ad``) to the aivc layout.

    ``X`` becomes float32 CSR; ``obsm["protein_expression"]`` and
    ``uns["protein_names"]`` become the DataFrame ``obsm["protein_counts"]``
    (float32, names without the ``_TotalSeqB`` suffix); cell ids are prefixed
    with ``<name>_`` and named ``cell_id``; ``obs`` keeps ``percent_mito`` and
    gains ``batch`` (``name``) and ``n_counts_rna`` (RNA counts per cell); the
    source's other ``obs`` and ``var`` columns are dropped.
    """
    import anndata as ad

    src = read_source_h5ad(
        path,
        what=f"{REPO}:{FOLDER}/{name}.h5ad",
        obs=("percent_mito",),
        obsm=("protein_expression",),
        uns=("protein_names",),
    )
    x = as_csr_float32(src.X)
    proteins = [
        str(p).removesuffix(PROTEIN_SUFFIX) for p in np.asarray(src.uns["protein_names"]).ravel()
    ]
    values = np.asarray(src.obsm["protein_expression"], dtype=np.float32)
    if values.shape != (src.n_obs, len(proteins)):
        msg = (
            f"The source file {name}.h5ad has {len(proteins)} protein names but obsm['protein_expression'] "
            f"of shape {values.shape}; expected ({src.n_obs}, {len(proteins)})."
        )
        raise ValueError(msg)
    cells = pd.Index([f"{name}_{c}" for c in src.obs_names.astype(str)], name="cell_id")
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([name] * src.n_obs),
            "n_counts_rna": np.asarray(x.sum(axis=1), dtype=np.float32).ravel(),
            "percent_mito": src.obs["percent_mito"].to_numpy(dtype=np.float32),
        },
        index=cells,
    )
    var = pd.DataFrame(index=pd.Index(src.var_names.astype(str), name="gene_symbol"))
    protein_counts = pd.DataFrame(values, index=cells, columns=pd.Index(proteins))
    uns = {
        "X_description": (
            "raw RNA UMI counts (integer-valued float32, CSR); first 200 cells of the filtered scvi-tools copy"
        )
    }
    return ad.AnnData(X=x, obs=obs, var=var, obsm={"protein_counts": protein_counts}, uns=uns)


def convert_pbmc10k(paths: Mapping[str, Path]) -> AnnData:
    """pbmc10k_cite_small from ``pbmc_10k_protein_v3.h5ad`` (see :func:`convert_fixture`)."""
    return convert_fixture(paths["pbmc_10k_protein_v3.h5ad"], "pbmc_10k_protein_v3")


def convert_pbmc5k(paths: Mapping[str, Path]) -> AnnData:
    """pbmc5k_cite_small from ``pbmc_5k_protein_v3.h5ad`` (see :func:`convert_fixture`)."""
    return convert_fixture(paths["pbmc_5k_protein_v3.h5ad"], "pbmc_5k_protein_v3")


def _fixture(name: str, blob: str, size: int) -> SourceFile:
    return SourceFile(
        url=f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/{FOLDER}/{name}.h5ad",
        filename=f"{name}.h5ad",
        git_blob=blob,
        size=size,
    )


_NOTES = (
    "The fixture is the first 200 cells (all genes) of the totalVI-filtered file scvi-tools "
    "downloads for pbmcs_10x_cite_seq(); RNA and protein counts are unchanged. The same bytes "
    "(same git blob) ship in the scvi-tools 1.0.1 source distribution on PyPI as "
    "tests/data/{name}.h5ad."
)

SOURCE_10K = register_source(
    PublicSource(
        dataset="pbmc10k_cite_small",
        origin=f"scvi-tools test fixture: github.com/{REPO} at {COMMIT}, {FOLDER}/pbmc_10k_protein_v3.h5ad",
        files=(
            _fixture("pbmc_10k_protein_v3", "301f52dadbf24cca996ae8fc95cc23184fa87519", 2_064_068),
        ),
        convert=convert_pbmc10k,
        notes=_NOTES.format(name="pbmc_10k_protein_v3"),
    )
)
SOURCE_5K = register_source(
    PublicSource(
        dataset="pbmc5k_cite_small",
        origin=f"scvi-tools test fixture: github.com/{REPO} at {COMMIT}, {FOLDER}/pbmc_5k_protein_v3.h5ad",
        files=(
            _fixture("pbmc_5k_protein_v3", "7491aa1c2768f703f6cff313af960ec45f92e9a5", 2_302_990),
        ),
        convert=convert_pbmc5k,
        notes=_NOTES.format(name="pbmc_5k_protein_v3"),
    )
)
