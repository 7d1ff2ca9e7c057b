"""kang2018 from scGen's validation split of the Kang et al. (2018) IFN-beta PBMC data.

The scGen repository (theislab/scgen, GPL-3.0 for its code) held ``data/valid.h5ad``
in its early history: 1,975 PBMCs, control or stimulated with IFN-beta, seven
cell types, ``X`` = ``log1p`` of counts normalised to 1,832.5 per cell over
6,998 genes. The converter relabels the condition, renames the source's
per-cell and per-gene statistics, and rebuilds the integer counts.
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

__all__ = ["FILENAME", "TARGET_SUM", "convert"]

REPO = "theislab/scgen"
COMMIT = "dd7e178f9b42b9dfef9eb18d0da4b8e3caea4cf7"
PATH = "data/valid.h5ad"
#: Name of the source file in the dataset's ``source/`` folder.
FILENAME = "scgen_valid.h5ad"
#: The per-cell total scGen normalised to (the median library size of the full data).
TARGET_SUM = 1832.5
#: Source condition -> perturbation label.
LABELS = {"control": "control", "stimulated": "IFNB1"}
PERTURBATION_TYPE = "cytokine (recombinant IFN-beta, 6 h)"
CELL_LINE = "primary PBMC"


def convert(paths: Mapping[str, Path]) -> AnnData:
    """The kang2018 AnnData from scGen's ``valid.h5ad``.

    ``condition`` becomes ``perturbation`` (``stimulated`` -> ``IFNB1``) and is
    kept as ``condition_source``; ``is_control``, ``nperts``,
    ``perturbation_type`` and ``cell_line`` are added; ``n_counts``/``n_genes``
    /``n_cells`` get a ``_source`` suffix; ``mt_frac``, the embeddings, the
    neighbour graph and the colour palettes are dropped. ``layers["counts"]`` is
    ``round(expm1(X) * n_counts / 1832.5)``, checked to be integral.
    """
    import anndata as ad

    src = read_source_h5ad(
        paths[FILENAME],
        what=f"{REPO}:{PATH}",
        obs=("condition", "cell_type", "n_counts", "n_genes"),
        var=("n_cells",),
    )
    o = src.obs
    condition = o["condition"].astype(str)
    unknown = sorted(set(condition) - set(LABELS))
    if unknown:
        msg = f"The source file {REPO}:{PATH} has conditions {unknown}; expected only {sorted(LABELS)}."
        raise ValueError(msg)
    perturbation = condition.map(LABELS)
    x = as_csr_float32(src.X)
    n_counts = o["n_counts"].to_numpy(dtype=np.float32)
    counts = counts_from_log(x, n_counts, target_sum=TARGET_SUM, tolerance=0.01)
    raw = sp.csr_matrix(x, dtype=np.float64)
    raw.data = (
        np.expm1(raw.data)
        * np.repeat(n_counts.astype(np.float64), np.diff(raw.indptr))
        / TARGET_SUM
    )
    n = src.n_obs
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(perturbation),
            "condition_source": pd.Categorical(condition),
            "is_control": (perturbation == "control").to_numpy(),
            "nperts": np.where(perturbation == "control", 0, 1).astype(np.int64),
            "perturbation_type": pd.Categorical([PERTURBATION_TYPE] * n),
            "cell_type": pd.Categorical(o["cell_type"].astype(str)),
            "cell_line": pd.Categorical([CELL_LINE] * n),
            "n_counts_source": n_counts,
            "n_genes_source": o["n_genes"].to_numpy(dtype=np.int64),
            "counts_recon_integrality": integrality(raw),
        },
        index=src.obs_names.copy(),
    )
    var = pd.DataFrame(
        {
            "gene_symbol": np.asarray(src.var_names.astype(str), dtype=object),
            "n_cells_source": src.var["n_cells"].to_numpy(dtype=np.int64),
        },
        index=src.var_names.copy(),
    )
    uns = {
        "X_description": (
            f"log1p(normalize_per_cell, target {TARGET_SUM} = median UMI) values as in source; "
            f"layers['counts'] = exact integer reconstruction (expm1(X) * n_counts_source / {TARGET_SUM})"
        ),
        "source": {"blob": SOURCE.files[0].git_blob, "commit": COMMIT, "path": PATH, "repo": REPO},
    }
    layers = {"counts": sp.csr_matrix(counts, dtype=np.int32)}
    return ad.AnnData(X=x, obs=obs, var=var, layers=layers, uns=uns)


SOURCE = register_source(
    PublicSource(
        dataset="kang2018",
        origin=f"scGen validation split: github.com/{REPO} at {COMMIT}, {PATH}",
        files=(
            SourceFile(
                url=f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/{PATH}",
                filename=FILENAME,
                git_blob="1c1ac1c706fe2e82e654efbf7ec451f30097ff79",
                size=2_321_480,
            ),
        ),
        convert=convert,
        notes=(
            "The file was removed from the scGen repository later; it stays in its history at the "
            "pinned commit. X is the source's values unchanged; counts are rebuilt as "
            "round(expm1(X) * n_counts / 1832.5) and refused when they are not integers. Not "
            "confirmed on the source file here: it was written by an early anndata (2018), which "
            "current anndata reads; the converter was tested on a file of the same columns written "
            "by a current anndata."
        ),
    )
)
