"""What kind of expression values a matrix holds, and log-expression from either kind.

Public datasets ship raw counts, or only log-normalised values (``log1p`` of
counts scaled to a fixed total per cell), often with each cell's library size
in ``obs``. Models that read log-expression must never normalise such values a
second time, and models that need counts can have them back exactly when the
library sizes are known. :func:`log_expression` is the one entry point: it says
which input it found (``"counts"`` or ``"log-normalized"``) and never guesses
silently between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data._validate import DataValidationError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "INPUT_MODES",
    "ExpressionInput",
    "counts_from_log",
    "log_expression",
    "looks_like_counts",
]

#: What ``input=`` accepts.
INPUT_MODES = ("auto", "counts", "log-normalized")
InputMode = Literal["auto", "counts", "log-normalized"]

#: Above this, non-integer values cannot be ``log1p`` of counts scaled to any usual total.
_MAX_LOG_VALUE = 20.0


def _sample_values(x: object, n: int = 200_000) -> np.ndarray:
    values = x.data if sp.issparse(x) else np.asarray(x).ravel()  # type: ignore[union-attr]
    return np.asarray(values[:n], dtype=np.float64)


def looks_like_counts(x: object) -> bool:
    """Whether the (first 200,000 stored) values of ``x`` are non-negative integers, some above 14.

    Log-normalised values are rarely all integers, and never as large as 15
    (that is ``log1p`` of 3.3 million), so the test separates the two kinds.
    """
    values = _sample_values(x)
    return (
        bool(values.size)
        and bool(np.all(values >= 0))
        and bool(np.all(np.abs(values - np.round(values)) < 1e-6))
        and float(values.max()) > 14
    )


@dataclass(frozen=True)
class ExpressionInput:
    """Which input :func:`log_expression` read, in words a result can carry.

    Attributes
    ----------
    kind
        ``"counts"`` or ``"log-normalized"``.
    counts_reconstructed
        For log-normalised input: whether counts were rebuilt from the library sizes.
    library_size_key
        The ``obs`` column the library sizes came from (or ``None``).
    """

    kind: str
    counts_reconstructed: bool = False
    library_size_key: str | None = None

    def describe(self) -> str:
        if self.kind == "counts":
            return "raw counts, log-normalised here"
        if self.counts_reconstructed:
            return f"log-normalised values; counts rebuilt from obs[{self.library_size_key!r}]"
        return "log-normalised values, used as given (no counts)"


def _resolve_kind(x: object, input: str, where: str) -> str:
    if input not in INPUT_MODES:
        msg = f"input must be one of {list(INPUT_MODES)}; got {input!r}."
        raise ValueError(msg)
    values = _sample_values(x)
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0):
        msg = (
            f"{where} holds negative or non-finite values; pass raw counts or log-normalised values "
            "(log1p of counts scaled per cell), not scaled or centred data."
        )
        raise DataValidationError(msg)
    counts_like = looks_like_counts(x)
    if input == "auto":
        if counts_like:
            return "counts"
        if values.size and values.max() > _MAX_LOG_VALUE:
            msg = (
                f"{where} holds non-integer values up to {values.max():.3g}: neither raw counts nor "
                "log-normalised values. Pass raw counts, or log1p of counts scaled per cell."
            )
            raise DataValidationError(msg)
        return "log-normalized"
    if input == "counts" and values.size and not np.all(np.abs(values - np.round(values)) < 1e-6):
        msg = (
            f"{where} is not raw counts (it has non-integer values); pass input='log-normalized' "
            "if it holds log-normalised values."
        )
        raise DataValidationError(msg)
    if input == "log-normalized" and counts_like:
        msg = (
            f"{where} looks like raw counts (non-negative integers up to {values.max():.0f}), not "
            "log-normalised values; pass input='counts' (or 'auto')."
        )
        raise DataValidationError(msg)
    return input


def counts_from_log(
    x: object, library_sizes: np.ndarray, *, target_sum: float = 1e4, tolerance: float = 0.05
) -> sp.csr_matrix:
    """Raw counts rebuilt from log-normalised values and each cell's library size.

    ``counts = expm1(x) * library_size / target_sum``, rounded. The rebuild is
    checked: when the values were not made with this ``target_sum`` and these
    library sizes, the unrounded counts are far from integers and a
    :class:`~aivc.data.DataValidationError` says so.
    """
    m = sp.csr_matrix(x, dtype=np.float64)
    lib = np.asarray(library_sizes, dtype=np.float64).ravel()
    if lib.shape[0] != m.shape[0] or not np.all(np.isfinite(lib)) or np.any(lib < 0):
        msg = f"Library sizes must be {m.shape[0]} finite non-negative numbers, one per cell."
        raise DataValidationError(msg)
    per_entry = np.repeat(lib, np.diff(m.indptr)) / target_sum
    raw = np.expm1(m.data) * per_entry
    off = np.abs(raw - np.round(raw))
    if raw.size and float(np.quantile(off, 0.99)) > tolerance:
        msg = (
            "Counts rebuilt from the log-normalised values and the library sizes are not integers "
            f"(99% of entries within {float(np.quantile(off, 0.99)):.2f} of an integer); the values "
            f"were not made as log1p(counts / library size * {target_sum:g}). Check the library-size "
            "column and the target sum, or use the values as given."
        )
        raise DataValidationError(msg)
    out = m.copy()
    out.data = np.round(raw)
    out.eliminate_zeros()
    return out


def log_expression(
    adata: AnnData,
    *,
    genes: Sequence[str] | pd.Index | None = None,
    input: InputMode = "auto",
    library_size_key: str | None = None,
    target_sum: float = 1e4,
    layer: str | None = None,
) -> tuple[np.ndarray, ExpressionInput]:
    """Dense float64 log-expression of ``adata`` (over ``genes``), from counts or log-normalised values.

    Raw counts are normalised to ``target_sum`` per cell over all genes and
    ``log1p``-transformed; log-normalised values are used as given, never
    normalised twice. With ``library_size_key`` and log-normalised input the
    counts are rebuilt (and checked) first, so the values are exactly those of
    counts normalised here.

    Parameters
    ----------
    adata
        Cells x genes.
    genes
        Columns to return, in this order; genes absent from ``adata`` are an
        error (select the shared genes first).
    input
        ``"auto"`` (counts when the values are non-negative integers, else
        log-normalised), ``"counts"`` or ``"log-normalized"``.
    library_size_key
        ``obs`` column with each cell's total counts, for log-normalised input.
    target_sum
        The per-cell total of the normalisation.
    layer
        Layer to read instead of ``X``.

    Returns
    -------
    The matrix and an :class:`ExpressionInput` saying which input was read.
    """
    from aivc.data._preprocess import log_normalize

    x = adata.layers[layer] if layer is not None else adata.X
    where = f"layers[{layer!r}]" if layer is not None else "X"
    kind = _resolve_kind(x, input, where)
    rebuilt = False
    if kind == "counts":
        m, _ = log_normalize(x, target_sum=target_sum, dtype=np.float64)
    else:
        m = sp.csr_matrix(x, dtype=np.float64)
        if library_size_key is not None:
            if library_size_key not in adata.obs:
                msg = f"No obs[{library_size_key!r}] with library sizes (columns: {list(adata.obs.columns)})."
                raise DataValidationError(msg)
            counts = counts_from_log(
                m, adata.obs[library_size_key].to_numpy(dtype=np.float64), target_sum=target_sum
            )
            m, _ = log_normalize(counts, target_sum=target_sum, dtype=np.float64)
            rebuilt = True
    if genes is not None:
        names = pd.Index([str(g) for g in adata.var_names])
        idx = names.get_indexer(pd.Index([str(g) for g in genes]))
        if np.any(idx < 0):
            missing = [str(g) for g, i in zip(genes, idx, strict=True) if i < 0][:5]
            msg = f"Genes {missing} are not in the data; select the genes it shares first."
            raise DataValidationError(msg)
        m = m[:, idx]
    info = ExpressionInput(kind, rebuilt, library_size_key if rebuilt else None)
    return np.asarray(m.toarray(), dtype=np.float64), info
