"""Reading R data files (``.rda``) for the converters, without R.

The R objects the sources hold are read with the pure-Python ``rdata`` package
(aivc's ``sources`` extra), imported only when a file is read. Sparse matrices
of the R ``Matrix`` package (``dgCMatrix``, ``dgTMatrix``, ``dgRMatrix`` and
their logical and pattern variants) become :class:`RMatrix`; so do dense R
matrices, through :func:`as_matrix`. Data frames become pandas DataFrames
(factors as categoricals), named lists become dicts.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "RMatrix",
    "as_matrix",
    "as_strings",
    "read_rda",
    "require_keys",
    "require_path",
    "to_int32",
]

_EXTRA = "sources"

#: Sparse matrix classes of the R Matrix package: general (``g``) double, logical or
#: pattern matrices in compressed-column, compressed-row or triplet form.
_SPARSE_CLASSES = tuple(f"{kind}g{form}Matrix" for kind in "dln" for form in "CRT")

# The slots each storage form needs besides Dim (``x`` too, except for pattern matrices).
_INDEX_SLOTS = {"C": ("i", "p"), "R": ("j", "p"), "T": ("i", "j")}


@dataclass(frozen=True)
class RMatrix:
    """A matrix read from R, oriented as in R (rows x columns).

    Attributes
    ----------
    values
        The entries as a CSR matrix (float64; ``TRUE``/pattern entries are 1).
    row_names, col_names
        ``rownames`` and ``colnames`` as string arrays, ``None`` where R has none.
    r_class
        The R class it was read from (``"dgCMatrix"``, ``"matrix"``...).
    """

    values: sp.csr_matrix
    row_names: np.ndarray | None
    col_names: np.ndarray | None
    r_class: str

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` as in R."""
        return self.values.shape


class _UnreadableMatrix(ValueError):
    """A Matrix object read from R lacks what the converters need."""


def _names(value: object) -> np.ndarray | None:
    return None if value is None else as_strings(value)


def _sparse_matrix(_obj: Any, attrs: Mapping[str, Any]) -> RMatrix:
    """rdata constructor for the sparse classes of the R Matrix package."""
    r_class = str(np.asarray(attrs["class"]).ravel()[0])
    kind, form = r_class[0], r_class[2]
    needed = ["Dim", *_INDEX_SLOTS[form], *(() if kind == "n" else ("x",))]
    missing = [slot for slot in needed if slot not in attrs]
    if missing:
        msg = (
            f"An R {r_class} read from the source lacks the slot(s) {missing}; it holds "
            f"{sorted(attrs)}. The file is not a Matrix object the converters can read."
        )
        raise _UnreadableMatrix(msg)
    shape = tuple(int(d) for d in np.asarray(attrs["Dim"]).ravel())
    if len(shape) != 2:
        msg = f"An R {r_class} read from the source has Dim {shape}; expected two dimensions."
        raise _UnreadableMatrix(msg)
    n_stored = len(np.asarray(attrs[_INDEX_SLOTS[form][0]]))
    if form in "CR":
        n_stored = int(np.asarray(attrs["p"])[-1])
    x = (
        np.ones(n_stored, dtype=np.float64)
        if kind == "n"
        else np.asarray(attrs["x"], dtype=np.float64)
    )
    if form == "C":
        values = sp.csc_matrix(
            (x, np.asarray(attrs["i"]), np.asarray(attrs["p"])), shape=shape
        ).tocsr()
    elif form == "R":
        values = sp.csr_matrix((x, np.asarray(attrs["j"]), np.asarray(attrs["p"])), shape=shape)
    else:  # triplets; repeated (i, j) pairs add up, as in R
        values = sp.coo_matrix(
            (x, (np.asarray(attrs["i"]), np.asarray(attrs["j"]))), shape=shape
        ).tocsr()
    values.sum_duplicates()
    values.sort_indices()
    dimnames = attrs.get("Dimnames")
    if isinstance(dimnames, Mapping):  # named dimnames
        dimnames = list(dimnames.values())
    if not dimnames:
        dimnames = [None, None]
    return RMatrix(
        values=values, row_names=_names(dimnames[0]), col_names=_names(dimnames[1]), r_class=r_class
    )


def read_rda(source: str | Path | bytes, *, what: str) -> dict[str, Any]:
    """The objects of an R data file, by name.

    Parameters
    ----------
    source
        Path of the ``.rda`` file (gzip, bzip2 or xz compressed, as R writes them), or its bytes.
    what
        The file in words, for error messages.

    Returns
    -------
    dict
        Object name -> Python value (:class:`RMatrix` for Matrix objects).

    Raises
    ------
    ImportError
        ``rdata`` is not installed (``pip install 'aivc[sources]'``).
    ValueError
        The file cannot be read as R data.
    """
    try:
        import rdata
    except ImportError as err:
        msg = (
            f"Reading {what} needs the 'rdata' package, which comes with aivc's {_EXTRA!r} extra: "
            f"pip install 'aivc[{_EXTRA}]'."
        )
        raise ImportError(msg) from err
    constructors = dict(rdata.conversion.DEFAULT_CLASS_MAP)
    constructors.update(dict.fromkeys(_SPARSE_CLASSES, _sparse_matrix))
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        objects = rdata.read_rda(handle, constructor_dict=constructors)
    except _UnreadableMatrix:
        raise
    except (ValueError, TypeError, NotImplementedError, EOFError, OSError) as err:
        msg = f"{what} could not be read as R data ({type(err).__name__}: {err})."
        raise ValueError(msg) from err
    return dict(objects)


def as_matrix(value: object, *, what: str) -> RMatrix:
    """``value`` (a Matrix object or a dense R matrix, as :func:`read_rda` gives them) as an :class:`RMatrix`."""
    if isinstance(value, RMatrix):
        return value
    row_names = col_names = None
    if hasattr(value, "dims") and hasattr(value, "coords"):  # xarray: a dense matrix with dimnames
        dims = list(value.dims)
        if len(dims) == 2:
            row_names = _names(value.coords[dims[0]].values) if dims[0] in value.coords else None
            col_names = _names(value.coords[dims[1]].values) if dims[1] in value.coords else None
        value = value.values
    if isinstance(value, np.ndarray) and value.ndim == 2 and value.dtype.kind in "biuf":
        values = sp.csr_matrix(value.astype(np.float64))
        return RMatrix(values=values, row_names=row_names, col_names=col_names, r_class="matrix")
    msg = (
        f"{what} is a {type(value).__name__}, not a matrix (an R matrix or a sparse matrix of "
        "the Matrix package was expected)."
    )
    raise ValueError(msg)


def as_strings(values: object) -> np.ndarray:
    """Strings read from R (a character vector, a factor or a column) as an object array of str."""
    if isinstance(values, str):
        values = [values]
    array = np.asarray(values, dtype=object).ravel()
    return np.array([str(v) for v in array], dtype=object)


def require_keys(value: object, keys: Iterable[str], *, what: str) -> Mapping[str, Any]:
    """``value`` as a mapping that holds every key of ``keys``; a ValueError names what is missing.

    Works for named R lists (dicts) and data frames (their columns).
    """
    keys = list(keys)
    if isinstance(value, pd.DataFrame):
        present = [str(c) for c in value.columns]
    elif isinstance(value, Mapping):
        present = [str(k) for k in value]
    else:
        msg = (
            f"{what} is a {type(value).__name__}; expected a named list or data frame with {keys}."
        )
        raise ValueError(msg)
    missing = [k for k in keys if k not in present]
    if missing:
        msg = (
            f"{what} lacks {missing} (it holds {present}); the source is not the file the converter "
            "was written for. Check the pinned URL and checksum."
        )
        raise ValueError(msg)
    return value


def require_path(paths: Mapping[str, Path], filename: str, *, dataset: str) -> Path:
    """The downloaded path of ``filename``; a ValueError when the converter was not given it."""
    if filename not in paths:
        msg = (
            f"Converting {dataset!r} needs the source file {filename!r}; received {sorted(paths)}."
        )
        raise ValueError(msg)
    return Path(paths[filename])


def to_int32(matrix: sp.spmatrix, *, what: str) -> sp.csr_matrix:
    """A sparse matrix of whole numbers as int32 CSR; a ValueError if any entry is not a count."""
    csr = sp.csr_matrix(matrix)
    data = csr.data
    if data.size and (
        not np.all(np.isfinite(data))
        or np.any(data != np.round(data))
        or data.min() < np.iinfo(np.int32).min
        or data.max() > np.iinfo(np.int32).max
    ):
        msg = f"{what} holds values that are not whole numbers in the int32 range; expected counts."
        raise ValueError(msg)
    out = sp.csr_matrix(
        (data.astype(np.int32), csr.indices, csr.indptr), shape=csr.shape, dtype=np.int32
    )
    out.eliminate_zeros()
    return out
