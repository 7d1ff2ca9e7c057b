"""Helpers the converters share: reading a source file, checking its slots, archive members.

A converter reads a public file whose layout it expects (columns in ``obs``,
keys in ``obsm``/``uns``...); when the file lacks one of them, the source has
changed and the converter must say what is missing rather than build a
different dataset. :func:`read_source_h5ad` does the reading and the check.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from aivc.data._download import ChecksumMismatchError
from aivc.data._validate import read_h5ad

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "as_csr_float32",
    "extract_member",
    "integrality",
    "read_source_h5ad",
    "require_slots",
]


def require_slots(
    adata: AnnData,
    *,
    what: str,
    obs: Iterable[str] = (),
    var: Iterable[str] = (),
    obsm: Iterable[str] = (),
    uns: Iterable[str] = (),
) -> None:
    """Raise a ValueError naming every listed slot that ``adata`` lacks.

    Parameters
    ----------
    adata
        The source file as read.
    what
        The source in words, for the message (e.g. ``"scGen valid.h5ad"``).
    obs, var, obsm, uns
        Column names of ``obs``/``var`` and keys of ``obsm``/``uns`` the converter needs.
    """
    missing = [f"obs[{k!r}]" for k in obs if k not in adata.obs.columns]
    missing += [f"var[{k!r}]" for k in var if k not in adata.var.columns]
    missing += [f"obsm[{k!r}]" for k in obsm if k not in adata.obsm]
    missing += [f"uns[{k!r}]" for k in uns if k not in adata.uns]
    if missing:
        msg = (
            f"The source file {what} lacks {', '.join(missing)}; it is not the file the converter "
            "was written for (the source may have changed). Check the pinned URL and checksum."
        )
        raise ValueError(msg)


def read_source_h5ad(
    path: str | Path,
    *,
    what: str,
    obs: Iterable[str] = (),
    var: Iterable[str] = (),
    obsm: Iterable[str] = (),
    uns: Iterable[str] = (),
) -> AnnData:
    """Read a source ``.h5ad`` and check that it holds the slots the converter needs.

    See :func:`require_slots` for the parameters; raises ValueError naming what is missing.
    """
    adata = read_h5ad(path)
    require_slots(adata, what=what, obs=obs, var=var, obsm=obsm, uns=uns)
    return adata


def as_csr_float32(x: object) -> sp.csr_matrix:
    """``x`` (dense or sparse) as a float32 CSR matrix."""
    if sp.issparse(x):
        return sp.csr_matrix(x, dtype=np.float32)
    return sp.csr_matrix(np.asarray(x, dtype=np.float32))


def integrality(raw: sp.csr_matrix, *, tolerance: float = 0.01) -> np.ndarray:
    """Per cell, the share of stored entries of ``raw`` within ``tolerance`` of an integer.

    ``raw`` holds counts rebuilt from log-normalised values before rounding; a
    cell whose values were all rebuilt exactly scores 1.0. A cell with no
    stored entries has nothing to rebuild and scores 1.0 too.
    """
    raw = sp.csr_matrix(raw)
    near = (np.abs(raw.data - np.round(raw.data)) <= tolerance).astype(np.float64)
    per_row = np.add.reduceat(near, raw.indptr[:-1]) if near.size else np.zeros(raw.shape[0])
    n = np.diff(raw.indptr)
    return np.where(n > 0, per_row / np.maximum(n, 1), 1.0)


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            hasher.update(block)
    return hasher.hexdigest()


def extract_member(
    archive: str | Path, member: str, dest: str | Path, *, sha256: str | None
) -> Path:
    """Extract ``member`` of the zip file (or wheel) ``archive`` to ``dest`` and verify it.

    Parameters
    ----------
    archive
        A zip file; wheels are zip files.
    member
        Path of the member inside the archive.
    dest
        Where the member is written.
    sha256
        The member's expected sha256, or ``None`` to skip the check.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    ValueError
        The archive has no member of that name.
    ChecksumMismatchError
        The member's sha256 differs from ``sha256`` (``dest`` is then removed).
    """
    dest = Path(dest)
    with zipfile.ZipFile(archive) as zf:
        if member not in zf.namelist():
            msg = (
                f"{Path(archive).name} has no member {member!r}; it holds "
                f"{sorted(zf.namelist())[:20]}. The source may have changed."
            )
            raise ValueError(msg)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(member) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 22)
    if sha256 is not None:
        got = _sha256(dest)
        if got != sha256.lower():
            dest.unlink(missing_ok=True)
            msg = (
                f"Checksum mismatch for {member!r} in {Path(archive).name}: expected sha256 {sha256}, "
                f"received {got}. The archive is not the published release."
            )
            raise ChecksumMismatchError(msg)
    return dest
