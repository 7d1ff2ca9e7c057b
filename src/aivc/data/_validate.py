"""Validation of perturbation data at the boundary.

Every check raises :class:`DataValidationError` with a message that says what
was expected, what was received and what to do next.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc._labels import check_known, did_you_mean
from aivc.data._schema import PerturbationSchema

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "COUNT_TOLERANCE",
    "DataValidationError",
    "check_gene_panel",
    "check_perturbation_labels",
    "get_counts",
    "read_h5ad",
    "validate",
    "validate_annotations",
]

logger = logging.getLogger(__name__)

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

#: Largest distance from an integer at which a stored count is read as that
#: integer (float noise from a conversion or a sum); :func:`get_counts` rounds it.
COUNT_TOLERANCE = 1e-4


class DataValidationError(ValueError):
    """Input data do not satisfy what aivc needs; the message says how to fix it."""


def _preview(values: Iterable[object], n: int = 8) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:n])
    return f"[{shown}{', ...' if len(values) > n else ''}] ({len(values)} in all)"


def _matrix_values(m: object) -> np.ndarray:
    """The stored values of a dense or sparse matrix (no densification)."""
    if sp.issparse(m):
        return np.asarray(m.data)  # type: ignore[union-attr]
    return np.asarray(m)


def get_counts(adata: AnnData, schema: PerturbationSchema) -> object:
    """The raw-count matrix named by ``schema.counts_layer`` (``X`` when None).

    Counts stored as floats with noise (every value within
    :data:`COUNT_TOLERANCE` of an integer, some not exactly) are returned
    rounded to the nearest integer, in a copy, and a line is logged; any other
    matrix is returned as stored.
    """
    where = "adata.X" if schema.counts_layer is None else f"adata.layers[{schema.counts_layer!r}]"
    return _round_count_noise(_stored_counts(adata, schema), where)


def _stored_counts(adata: AnnData, schema: PerturbationSchema) -> object:
    """The matrix named by ``schema.counts_layer`` as stored, with a clear error when missing."""
    if schema.counts_layer is None:
        return adata.X
    if schema.counts_layer not in adata.layers:
        msg = (
            f"The schema says raw counts are in layers[{schema.counts_layer!r}], but the AnnData has "
            f"layers {sorted(adata.layers)}. Set counts_layer to the layer holding integer counts, "
            "or None if adata.X holds them."
        )
        raise DataValidationError(msg)
    return adata.layers[schema.counts_layer]


def _round_count_noise(m: object, where: str) -> object:
    """``m`` with float noise around integer counts rounded away (a copy), else ``m`` itself."""
    if sp.issparse(m):
        values = np.asarray(m.data)  # type: ignore[union-attr]
    elif isinstance(m, np.ndarray):
        values = m
    else:  # a backed or lazy matrix is read as stored
        return m
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return m
    rounded = np.round(values)
    offset = np.abs(values - rounded)
    largest = float(np.max(offset, initial=0.0))
    if not np.isfinite(largest) or largest == 0 or largest > COUNT_TOLERANCE:
        return m  # integers already, or not counts (validation says so where it is asked)
    logger.info(
        "%s holds counts with float noise: %d values are within %g of an integer (up to %.2g "
        "away) and were rounded to it.",
        where,
        int(np.count_nonzero(offset)),
        COUNT_TOLERANCE,
        largest,
    )
    if sp.issparse(m):
        out = m.copy()  # type: ignore[union-attr]
        out.data = rounded.astype(values.dtype, copy=False)
        return out
    return rounded.astype(values.dtype, copy=False)


def _check_finite(m: object, where: str) -> None:
    values = _matrix_values(m)
    if not np.issubdtype(values.dtype, np.number):
        msg = f"{where} must be numeric. Got dtype {values.dtype} instead."
        raise DataValidationError(msg)
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values)
        if bad.any():
            n_nan = int(np.isnan(values).sum())
            n_inf = int(bad.sum()) - n_nan
            msg = (
                f"{where} contains {n_nan} NaN and {n_inf} infinite values; expected finite numbers. "
                "Remove or impute them before using aivc (e.g. filter the affected cells)."
            )
            raise DataValidationError(msg)


def _check_counts(m: object, where: str) -> None:
    _check_finite(m, where)
    values = _matrix_values(m)
    if values.size == 0:
        return
    n_neg = int((values < 0).sum())
    if n_neg:
        msg = (
            f"{where} must hold raw counts (non-negative integers), but {n_neg} values are negative "
            f"(minimum {values.min():g}). Point the schema's counts_layer at the raw counts, not at "
            "normalised or scaled values."
        )
        raise DataValidationError(msg)
    if np.issubdtype(values.dtype, np.floating):
        # counts within COUNT_TOLERANCE of an integer are float noise, rounded by get_counts
        frac = np.abs(values - np.round(values))
        n_frac = int((frac > COUNT_TOLERANCE).sum())
        if n_frac:
            example = values[frac > COUNT_TOLERANCE][0]
            msg = (
                f"{where} must hold raw counts (non-negative integers), but {n_frac} values are not "
                f"integers (e.g. {example:.8g}, more than {COUNT_TOLERANCE:g} from the nearest one). "
                "It looks normalised or log-transformed; point the schema's counts_layer at the "
                "raw counts."
            )
            raise DataValidationError(msg)


def check_perturbation_labels(
    labels: Iterable[str],
    schema: PerturbationSchema,
    *,
    known_genes: Collection[str] | None,
) -> None:
    """Check that every target named in ``labels`` is a known gene.

    Parameters
    ----------
    labels
        Perturbation labels (``"A"``, ``"A+B"``, the control label).
    schema
        The dataset schema (for the control label and separator).
    known_genes
        The gene universe. ``None`` skips the check.
    """
    if known_genes is None:
        return
    known = known_genes if isinstance(known_genes, set | frozenset) else set(known_genes)
    for label in dict.fromkeys(str(x) for x in labels):
        try:
            targets = schema.targets(label)
        except ValueError as e:
            raise DataValidationError(str(e)) from None
        kind = "combination" if len(targets) > 1 else "perturbation"
        check_known(
            targets,
            known,
            what="gene",
            known_as="known gene symbols",
            where=f" in the {kind} {label!r}",
            advice="Every target must be a known gene symbol; check the spelling.",
            error=DataValidationError,
        )


def check_gene_panel(
    var_names: Sequence[str],
    expected: Sequence[str],
    *,
    what: str = "the trained model",
) -> np.ndarray:
    """Check that a query's genes cover the genes ``expected`` by a model.

    Returns the index of each expected gene in ``var_names`` so the caller can
    reorder the query (extra query genes are allowed and ignored).
    """
    index = pd.Index(var_names)
    missing = [g for g in expected if g not in index]
    if missing:
        msg = (
            f"The gene panel does not match {what}: {len(missing)} of its {len(expected)} genes are "
            f"missing from the data, e.g. {_preview(missing, 5)}. Use data measured on the same genes, "
            "or refit the model on the genes you have."
        )
        raise DataValidationError(msg)
    return np.asarray(index.get_indexer(list(expected)))


def validate(
    adata: AnnData,
    schema: PerturbationSchema,
    *,
    known_genes: Collection[str] | None = None,
    require_counts: bool = True,
    require_control: bool = True,
    min_cells: int = 1,
) -> None:
    """Check that ``adata`` follows ``schema`` and holds usable values.

    Parameters
    ----------
    adata
        The perturbation data.
    schema
        The declared schema.
    known_genes
        If given, every target of every perturbation must be in it.
    require_counts
        Check that the counts layer exists and holds non-negative integers.
    require_control
        Require at least one control cell.
    min_cells
        Smallest number of cells a perturbation group may have.

    Raises
    ------
    DataValidationError
        On the first problem found, with what to do about it.
    """
    validate_annotations(
        adata,
        schema,
        known_genes=known_genes,
        require_control=require_control,
        min_cells=min_cells,
    )
    # values ---------------------------------------------------------------------------
    _check_finite(adata.X, "adata.X")
    if require_counts:
        where = (
            "adata.X" if schema.counts_layer is None else f"adata.layers[{schema.counts_layer!r}]"
        )
        _check_counts(_stored_counts(adata, schema), where)


def validate_annotations(
    adata: AnnData,
    schema: PerturbationSchema,
    *,
    known_genes: Collection[str] | None = None,
    require_control: bool = True,
    min_cells: int = 1,
) -> None:
    """The checks of :func:`validate` that read only ``obs``, ``obs_names`` and ``var_names``.

    A dataset on disk is validated with these on its annotations and the
    value checks block by block (:func:`aivc.data.validate_file`).
    """
    obs = adata.obs
    # columns ------------------------------------------------------------------
    for role, key in schema.obs_keys().items():
        check_known(
            [key],
            [str(c) for c in obs.columns],
            what="obs column",
            known_as="columns of adata.obs",
            where=f" (the schema's {role} column)",
            advice="Declare the right column in PerturbationSchema.",
            error=DataValidationError,
        )
    # names ---------------------------------------------------------------------
    for axis, names in (("cell (obs)", adata.obs_names), ("gene (var)", adata.var_names)):
        dup = names[names.duplicated()]
        if len(dup):
            fix = (
                "adata.obs_names_make_unique()"
                if axis.startswith("cell")
                else "adata.var_names_make_unique()"
            )
            msg = (
                f"Duplicate {axis} names: {_preview(pd.unique(dup), 5)}. Names must be unique; "
                f"run {fix} or aggregate the duplicates."
            )
            raise DataValidationError(msg)
    # perturbation labels ----------------------------------------------------------
    col = obs[schema.perturbation_key]
    if col.isna().any():
        msg = (
            f"{int(col.isna().sum())} cells have no value in obs[{schema.perturbation_key!r}]; every cell "
            f"needs a perturbation label (use {schema.control_label!r} for controls) or must be removed."
        )
        raise DataValidationError(msg)
    labels = col.astype(str)
    blank = labels.str.strip() == ""
    if blank.any():
        msg = (
            f"{int(blank.sum())} cells have an empty perturbation label in obs[{schema.perturbation_key!r}]; "
            "give them a target or the control label, or remove them."
        )
        raise DataValidationError(msg)
    if isinstance(col.dtype, pd.CategoricalDtype):
        unused = [c for c in col.cat.categories if not (col == c).any()]
        if unused:
            msg = (
                f"Perturbation groups {_preview(unused, 5)} in obs[{schema.perturbation_key!r}] have no "
                "cells. Drop them with "
                f"adata.obs[{schema.perturbation_key!r}] = adata.obs[{schema.perturbation_key!r}]"
                ".cat.remove_unused_categories()."
            )
            raise DataValidationError(msg)
    counts = labels.value_counts()
    small = counts[counts < min_cells]
    if len(small):
        msg = (
            f"Perturbation groups with fewer than {min_cells} cells: "
            f"{_preview([f'{k} ({v})' for k, v in small.items()], 5)}. Remove them or lower min_cells."
        )
        raise DataValidationError(msg)
    if require_control and schema.control_label not in counts.index:
        hint = did_you_mean(schema.control_label, [str(x) for x in counts.index])
        if hint:
            msg = (
                f"No cell has the control label {schema.control_label!r} in obs[{schema.perturbation_key!r}]. "
                f"{hint} Fix control_label in the schema."
            )
        else:
            msg = (
                f"No control cells: no cell has the label {schema.control_label!r} in "
                f"obs[{schema.perturbation_key!r}], whose labels are {_preview(counts.index)}. Control "
                "cells are needed to measure perturbation effects; include them or fix control_label."
            )
        raise DataValidationError(msg)
    try:
        for label in counts.index:
            schema.targets(label)
    except ValueError as e:
        raise DataValidationError(str(e)) from None
    check_perturbation_labels(counts.index, schema, known_genes=known_genes)
    # numeric design columns ----------------------------------------------------------
    for role, key in (("dose", schema.dose_key), ("time", schema.time_key)):
        if key is None:
            continue
        values = pd.to_numeric(obs[key], errors="coerce")
        if values.isna().any() or not np.isfinite(values.to_numpy(dtype=float)).all():
            msg = (
                f"obs[{key!r}] (the schema's {role} column) must be finite numbers for every cell; "
                f"{int(values.isna().sum())} values are missing or not numeric."
            )
            raise DataValidationError(msg)
        if role == "dose" and (values < 0).any():
            msg = f"obs[{key!r}] (dose) must be non-negative; got minimum {values.min():g}."
            raise DataValidationError(msg)


def read_h5ad(path: str | Path, *, backed: bool = False) -> AnnData:
    """Read an ``.h5ad`` file, with a clear error when it is missing, not HDF5 or truncated."""
    import anndata as ad

    path = Path(path)
    if not path.exists():
        msg = f"No such file: {str(path)!r}. Check the path (or AIVC_DATA_DIR for registered datasets)."
        raise FileNotFoundError(msg)
    if path.is_dir():
        msg = f"{str(path)!r} is a directory; expected an .h5ad file."
        raise DataValidationError(msg)
    with path.open("rb") as fh:
        head = fh.read(len(_HDF5_SIGNATURE))
    if head != _HDF5_SIGNATURE:
        msg = (
            f"{str(path)!r} is not a valid h5ad file: it does not start with the HDF5 signature "
            "(is it a CSV, a zip or a different format?). Write it with AnnData.write_h5ad."
        )
        raise DataValidationError(msg)
    try:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as e:  # h5py raises OSError/KeyError/ValueError for damaged files
        msg = (
            f"{str(path)!r} could not be read as h5ad; the file is truncated or corrupted "
            f"({type(e).__name__}: {e}). Download or write it again."
        )
        raise DataValidationError(msg) from e
    return adata
