"""papalexi2021 from the ``sceptredata`` R package (the low-MOI example data of ``sceptre``).

The source is ``data/lowmoi_example_data.rda`` of the ``Katsevich-Lab/sceptredata``
repository at a pinned commit: an R list of the Papalexi et al. (2021) THP-1
ECCITE-seq knockout screen with the genes downsampled to 299. It holds
``response_matrix`` (genes x cells, UMI counts), ``grna_matrix`` (gRNAs x cells,
UMI counts), ``grna_target_data_frame`` (``grna_id`` -> ``grna_target``) and
``extra_covariates`` (``bio_rep``, the biological replicate).

The converter turns both matrices into cells-by-features int32 CSR without
changing a value, gives each cell the gRNA with the most UMIs (the first one in
the gRNA matrix's row order on a tie), maps it to its target
(``non-targeting`` -> ``control``) and adds the annotation columns of the
dataset. Cells carry no barcodes in the source and are named ``cell_<i>`` in
source order.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data.sources import PublicSource, SourceFile, git_blob_id, register_source
from aivc.data.sources._rdata import (
    as_matrix,
    as_strings,
    read_rda,
    require_keys,
    require_path,
    to_int32,
)

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["assign_max_umi", "convert"]

DATASET = "papalexi2021"
REPOSITORY = "Katsevich-Lab/sceptredata"
COMMIT = "ec722d5df90dfd34ace6cc9a5745ab6a5c2a6731"
PATH = "data/lowmoi_example_data.rda"
GIT_BLOB = "8adaed1834e76b83ba27f2fa29a87cca8fbe4931"
FILENAME = "lowmoi_example_data.rda"
OBJECT = "lowmoi_example_data"
PARTS = ("response_matrix", "grna_matrix", "grna_target_data_frame", "extra_covariates")

NON_TARGETING = "non-targeting"
CONTROL = "control"
#: Columns that are the same for every cell of the screen.
CONSTANT_OBS = {
    "perturbation_type": "CRISPRko (ECCITE-seq)",
    "cell_type": "THP-1",
    "cell_line": "THP-1",
    "treatment": "IFN-gamma (all cells, per original study)",
}


def assign_max_umi(grna_counts: sp.spmatrix, grna_names: np.ndarray) -> pd.DataFrame:
    """Give each cell the gRNA with the most UMIs.

    Parameters
    ----------
    grna_counts
        Cells x gRNAs UMI counts.
    grna_names
        Name of each gRNA column.

    Returns
    -------
    pandas.DataFrame
        One row per cell: ``grna_assigned`` (the first gRNA with the largest count),
        ``grna_top_umi``, ``grna_second_umi`` (second-largest count, 0 with one gRNA),
        ``grna_total_umi`` and ``grna_top_fraction`` (top / total).

    Raises
    ------
    ValueError
        A cell has no gRNA UMI at all, so no gRNA can be assigned.
    """
    counts = np.asarray(sp.csr_matrix(grna_counts).toarray(), dtype=np.int64)
    if counts.shape[1] != len(grna_names):
        msg = f"{counts.shape[1]} gRNA columns but {len(grna_names)} gRNA names."
        raise ValueError(msg)
    total = counts.sum(axis=1)
    empty = np.flatnonzero(total == 0)
    if empty.size:
        msg = (
            f"{empty.size} cell(s) have no gRNA UMI (first: row {empty[0]}), so the maximum-UMI rule "
            "assigns them nothing; the source should have at least one gRNA UMI in every cell."
        )
        raise ValueError(msg)
    top_index = counts.argmax(axis=1)
    ordered = np.sort(counts, axis=1)
    top = ordered[:, -1]
    second = ordered[:, -2] if counts.shape[1] > 1 else np.zeros_like(top)
    return pd.DataFrame(
        {
            "grna_assigned": np.asarray(grna_names, dtype=object)[top_index],
            "grna_top_umi": top.astype(np.int64),
            "grna_second_umi": second.astype(np.int64),
            "grna_total_umi": total.astype(np.int64),
            "grna_top_fraction": top / total,
        }
    )


def convert(paths: Mapping[str, Path]) -> AnnData:
    """Build papalexi2021 from ``lowmoi_example_data.rda``.

    Parameters
    ----------
    paths
        ``{"lowmoi_example_data.rda": path}``.

    Returns
    -------
    AnnData
        Cells x 299 genes of raw UMI counts (int32 CSR), the assigned perturbation
        and gRNA details in ``obs``, gRNA counts in ``obsm["grna_counts"]``.
    """
    import anndata as ad

    path = require_path(paths, FILENAME, dataset=DATASET)
    objects = read_rda(path, what=FILENAME)
    data = require_keys(objects, [OBJECT], what=FILENAME)[OBJECT]
    data = require_keys(data, PARTS, what=f"{OBJECT} in {FILENAME}")

    response = as_matrix(data["response_matrix"], what=f"{OBJECT}$response_matrix")
    grna = as_matrix(data["grna_matrix"], what=f"{OBJECT}$grna_matrix")
    if response.row_names is None or grna.row_names is None:
        which = "response_matrix" if response.row_names is None else "grna_matrix"
        msg = f"{OBJECT}${which} has no row names; the genes and gRNAs are named by them."
        raise ValueError(msg)
    n_cells = response.shape[1]
    if grna.shape[1] != n_cells:
        msg = (
            f"{OBJECT}$response_matrix has {n_cells} cells but $grna_matrix has {grna.shape[1]}; "
            "they must describe the same cells."
        )
        raise ValueError(msg)
    covariates = require_keys(
        data["extra_covariates"], ["bio_rep"], what=f"{OBJECT}$extra_covariates"
    )
    if len(covariates) != n_cells:
        msg = f"{OBJECT}$extra_covariates has {len(covariates)} rows for {n_cells} cells."
        raise ValueError(msg)
    targets = require_keys(
        data["grna_target_data_frame"],
        ["grna_id", "grna_target"],
        what=f"{OBJECT}$grna_target_data_frame",
    )
    grna_ids = as_strings(targets["grna_id"])
    grna_targets = as_strings(targets["grna_target"])
    target_of = dict(zip(grna_ids, grna_targets, strict=True))

    x = to_int32(response.values.T, what=f"{OBJECT}$response_matrix")
    grna_counts = to_int32(grna.values.T, what=f"{OBJECT}$grna_matrix")
    grna_names = grna.row_names
    assigned = assign_max_umi(grna_counts, grna_names)
    unknown = sorted(set(assigned["grna_assigned"]) - set(target_of))
    if unknown:
        msg = f"Assigned gRNA(s) {unknown} are not in {OBJECT}$grna_target_data_frame."
        raise ValueError(msg)
    target = assigned["grna_assigned"].map(target_of)
    perturbation = target.where(target != NON_TARGETING, CONTROL).to_numpy(dtype=object)
    is_control = perturbation == CONTROL

    obs = pd.DataFrame(index=pd.Index([f"cell_{i}" for i in range(n_cells)], dtype=object))
    obs["perturbation"] = pd.Categorical(perturbation)
    obs["grna_assigned"] = pd.Categorical(assigned["grna_assigned"].to_numpy(dtype=object))
    for column in ("grna_top_umi", "grna_second_umi", "grna_total_umi", "grna_top_fraction"):
        obs[column] = assigned[column].to_numpy()
    obs["is_control"] = is_control
    obs["nperts"] = (~is_control).astype(np.int64)
    for column, value in CONSTANT_OBS.items():
        obs[column] = pd.Categorical([value] * n_cells)
    obs["batch"] = pd.Categorical(as_strings(covariates["bio_rep"]))

    genes = response.row_names
    var = pd.DataFrame({"gene_symbol": genes}, index=pd.Index(genes, dtype=object))
    return ad.AnnData(
        X=x,
        obs=obs,
        var=var,
        obsm={"grna_counts": grna_counts},
        uns={
            "grna_names": np.asarray(grna_names, dtype=object),
            "grna_targets": {"grna_id": grna_ids, "grna_target": grna_targets},
            "source": {
                "blob": git_blob_id(path),
                "commit": COMMIT,
                "path": PATH,
                "repo": REPOSITORY,
            },
        },
    )


SOURCE = register_source(
    PublicSource(
        dataset=DATASET,
        origin=(
            f"GitHub {REPOSITORY} (example data of the sceptre R package, MIT) at commit {COMMIT}, "
            f"file {PATH}"
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
            "Counts are kept as they are (cells x genes and cells x gRNAs, int32 CSR). Each cell gets "
            "the gRNA with the most UMIs (the first in the gRNA matrix's row order on a tie), mapped "
            "to its target through grna_target_data_frame, 'non-targeting' becoming 'control'; this "
            "is aivc's own rule, not sceptre's assignment. obs['batch'] is extra_covariates$bio_rep; "
            "the constant columns (cell line THP-1, CRISPRko, IFN-gamma) are added. Cells are named "
            "cell_<i> in source order, the source having no barcodes. Not confirmed without the "
            "file at hand: the R class of the two matrices (described as sparse triplets, i.e. "
            "dgTMatrix; dgCMatrix, dgRMatrix and dense matrices are read the same way) and the "
            "file's size, which is therefore not pinned (the git blob id is)."
        ),
    )
)
