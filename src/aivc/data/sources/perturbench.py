"""norman2019_subset from PerturBench's bundled development dataset.

PerturBench (Altos Labs, BSD-3-Clause) ships ``devel.h5ad``, a small file that
mixes 100 cells per condition of two studies. Its ``norman19`` rows are the
Norman et al. (2019) K562 CRISPRa screen after PerturBench's preprocessing:
``X`` holds ``log1p(normalize_total)`` values over 500 genes, and the raw counts
are not stored. The converter keeps those rows and rebuilds integer counts from
``X`` (see :func:`reconstruct_counts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data._expression import counts_from_log
from aivc.data.sources import PublicSource, SourceFile, register_source
from aivc.data.sources._common import as_csr_float32, integrality, read_source_h5ad

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["FILENAME", "convert", "reconstruct_counts"]

REPO = "altoslabs/perturbench"
COMMIT = "d357dfae3b50968e800e9f5f273ff145080ae67c"
PATH = "src/perturbench/data/resources/devel.h5ad"
#: Name of the source file in the dataset's ``source/`` folder.
FILENAME = "perturbench_devel.h5ad"
#: Value of ``obs["dataset"]`` that marks the Norman et al. rows.
DATASET_VALUE = "norman19"

_SOURCE_OBS = (
    "dataset",
    "condition",
    "perturbation",
    "cell_type",
    "perturbation_type",
    "dose",
    "ncounts",
    "ngenes",
)


def reconstruct_counts(
    x: sp.spmatrix | np.ndarray, total_counts: np.ndarray
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Integer counts of the stored genes, rebuilt from ``log1p(normalize_total)`` values.

    ``expm1(x)`` of a cell is its counts times one unknown factor (the
    normalisation target over the cell's full-transcriptome total, computed by
    PerturBench on more genes than are stored). The factor is found from the
    smallest non-zero value: ``k = round(min * total / T)`` counts, with ``T``
    the median of ``min * total`` over the cells (the normalisation target),
    gives the value of one count, ``min / k``; every entry divided by it is then
    an integer.

    Parameters
    ----------
    x
        Cells x genes, ``log1p`` of the normalised values.
    total_counts
        Each cell's total counts over the full transcriptome (``ncounts``).

    Returns
    -------
    counts
        int32 CSR, the rebuilt counts.
    integrality
        Per cell, the share of non-zero entries that came within 0.01 of an integer.
    """
    m = sp.csr_matrix(x, dtype=np.float64)
    total = np.asarray(total_counts, dtype=np.float64).ravel()
    lin = np.expm1(m.data)
    starts = m.indptr[:-1]
    has = np.diff(m.indptr) > 0
    smallest = np.full(m.shape[0], np.nan)
    if lin.size:
        smallest[has] = np.minimum.reduceat(lin, starts[has])
    target = float(np.nanmedian(smallest * total))
    k = np.maximum(np.round(smallest * total / target), 1.0)
    per_count = np.where(has, smallest / k, 1.0)
    raw = m.copy()
    raw.data = lin / np.repeat(per_count, np.diff(m.indptr))
    # counts_from_log checks that the rebuild is integral: one count is worth per_count.
    counts = counts_from_log(m, 1.0 / per_count, target_sum=1.0, tolerance=0.01)
    return sp.csr_matrix(counts, dtype=np.int32), integrality(raw)


def convert(paths: Mapping[str, Path]) -> AnnData:
    """The norman2019_subset AnnData from PerturBench's ``devel.h5ad``.

    Keeps the rows with ``obs["dataset"] == "norman19"``; renames ``condition``
    to ``perturbation`` (the source's ``perturbation``, the label before
    PerturBench renamed KIAA1804 to MAP3K21, becomes ``perturbation_raw``) and
    ``ncounts``/``ngenes`` to ``ncounts_source``/``ngenes_source``; adds
    ``nperts``, ``is_control``, ``cell_line`` (the cell type) and ``gemgroup``
    (the barcode's suffix); drops the other columns and the HVG statistics;
    keeps ``X`` as float32 CSR and adds ``layers["counts"]`` (see
    :func:`reconstruct_counts`).
    """
    import anndata as ad

    src = read_source_h5ad(paths[FILENAME], what=f"{REPO}:{PATH}", obs=_SOURCE_OBS)
    keep = (src.obs["dataset"].astype(str) == DATASET_VALUE).to_numpy()
    if not keep.any():
        msg = f"The source file {REPO}:{PATH} has no rows with obs['dataset'] == {DATASET_VALUE!r}."
        raise ValueError(msg)
    src = src[keep].copy()
    o = src.obs
    perturbation = o["condition"].astype(str)
    nperts = np.where(perturbation == "control", 0, perturbation.str.count(r"\+") + 1).astype(
        np.int64
    )
    names = pd.Index(src.obs_names.astype(str))
    gemgroup = names.str.rsplit("-", n=1).str[-1]
    x = as_csr_float32(src.X)
    counts, recon = reconstruct_counts(x, o["ncounts"].to_numpy())
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(perturbation),
            "perturbation_raw": pd.Categorical(o["perturbation"].astype(str)),
            "nperts": nperts,
            "is_control": (perturbation == "control").to_numpy(),
            "cell_type": pd.Categorical(o["cell_type"].astype(str)),
            "cell_line": pd.Categorical(o["cell_type"].astype(str)),
            "perturbation_type": pd.Categorical(o["perturbation_type"].astype(str)),
            "gemgroup": pd.Categorical(np.asarray(gemgroup, dtype=str)),
            "dose": pd.Categorical(o["dose"].astype(str)),
            "ncounts_source": o["ncounts"].to_numpy(dtype=np.float64),
            "ngenes_source": o["ngenes"].to_numpy(dtype=np.int32),
            "counts_recon_integrality": recon,
        },
        index=names,
    )
    obs.index.name = src.obs_names.name
    genes = pd.Index(src.var_names.astype(str), name=src.var_names.name)
    var = pd.DataFrame({"gene_symbol": np.asarray(genes, dtype=object)}, index=genes)
    uns = {
        "X_description": (
            "log1p(normalize_total) values exactly as in source; layers['counts'] = integer counts "
            "reconstructed by inverting the per-cell scaling (see PROVENANCE.md)"
        ),
        "source": {
            "blob": SOURCE.files[0].git_blob,
            "commit": COMMIT,
            "path": PATH,
            "repo": REPO,
            "subset": f"obs.dataset == {DATASET_VALUE!r}",
        },
    }
    return ad.AnnData(X=x, obs=obs, var=var, layers={"counts": counts}, uns=uns)


SOURCE = register_source(
    PublicSource(
        dataset="norman2019_subset",
        origin=f"PerturBench development dataset: github.com/{REPO} at {COMMIT}, {PATH}",
        files=(
            SourceFile(
                url=f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/{PATH}",
                filename=FILENAME,
                git_blob="e62cc451db0b19a75b5dc535fc044ff6f333d80e",
            ),
        ),
        convert=convert,
        notes=(
            "Keeps the norman19 rows of PerturBench's devel.h5ad (which also holds McFaline-Figueroa "
            "2023 cells); X is the source's log1p(normalize_total) values, unchanged. Integer counts "
            "of the 500 genes are rebuilt per cell from the smallest non-zero value and the cell's "
            "full-transcriptome total (ncounts); they do not sum to that total. Not confirmed on the "
            "source file here: the names of its raw-label and total columns (read as 'perturbation', "
            "'ncounts' and 'ngenes'); a file without them is refused with the missing names."
        ),
    )
)
