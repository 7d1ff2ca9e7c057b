"""osmfish_cortex from the scvi-tools data store (YosefLab/scVI-data).

``smfish.h5ad`` is the scvi-tools/gimVI preparation of the osmFISH mouse
somatosensory cortex data (Codeluppi et al. 2018), the file behind
``scvi.data.smfish()``: 4,530 cells with a major-class label, 33 genes,
molecule counts in ``X`` and the cells' image coordinates in ``obs``. The
converter renames the columns, adds ``obsm["spatial"]`` and per-cell totals.
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

__all__ = ["FILENAME", "convert"]

REPO = "YosefLab/scVI-data"
COMMIT = "9a647afc8893604fa11024ddcd5fc5bb22b8e50e"
PATH = "smfish.h5ad"
#: Name of the source file in the dataset's ``source/`` folder.
FILENAME = "smfish.h5ad"
#: Prefix of the cell ids (the source's are row numbers).
CELL_PREFIX = "osmfish_"


def convert(paths: Mapping[str, Path]) -> AnnData:
    """The osmfish_cortex AnnData from scVI-data's ``smfish.h5ad``.

    ``X`` becomes float32 CSR; ``str_labels`` is renamed ``cell_type`` and
    ``x_coord``/``y_coord`` ``x``/``y``; the integer ``labels`` column is
    dropped; ``batch`` is kept (as text categories); ``n_counts`` (molecules
    per cell) and ``obsm["spatial"]`` (``x``, ``y``) are added; cell ids get the
    prefix ``osmfish_``. No cells or genes are removed.
    """
    import anndata as ad

    src = read_source_h5ad(
        paths[FILENAME], what=f"{REPO}:{PATH}", obs=("str_labels", "x_coord", "y_coord", "batch")
    )
    o = src.obs
    x = as_csr_float32(src.X)
    xy = np.column_stack(
        [o["x_coord"].to_numpy(dtype=np.float64), o["y_coord"].to_numpy(dtype=np.float64)]
    )
    cells = pd.Index([f"{CELL_PREFIX}{c}" for c in src.obs_names.astype(str)], name="cell_id")
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(o["str_labels"].astype(str)),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "batch": pd.Categorical(o["batch"].astype(str)),
            "n_counts": np.asarray(x.sum(axis=1), dtype=np.float32).ravel(),
        },
        index=cells,
    )
    var = pd.DataFrame(index=pd.Index(src.var_names.astype(str), name="gene_symbol"))
    uns = {
        "X_description": "osmFISH molecule counts per cell (integer-valued float32, CSR)",
        "spatial_units": "as in source file (pixel/um coordinates of the osmFISH image; see PROVENANCE.md)",
    }
    return ad.AnnData(X=x, obs=obs, var=var, obsm={"spatial": xy}, uns=uns)


SOURCE = register_source(
    PublicSource(
        dataset="osmfish_cortex",
        origin=f"scvi-tools data store: github.com/{REPO} at {COMMIT}, {PATH}",
        files=(
            SourceFile(
                url=f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/{PATH}",
                filename=FILENAME,
                git_blob="c5960c06426b61c290492739c2e7b23399479328",
                size=1_537_716,
            ),
        ),
        convert=convert,
        notes=(
            "Counts and coordinates unchanged; the repository has no licence file (cite Codeluppi "
            "et al. 2018 for the data). Not confirmed on the source file here: that its cells already "
            "carry the six major-class labels (as the 4,530 cells of our copy do), so no relabelling "
            "or filtering is applied; scvi.data.smfish() maps osmFISH subtypes to these classes when "
            "a file holds subtypes."
        ),
    )
)
