"""Receiving uploaded measurements: stream to disk, then look at the file before reading it.

An upload is written chunk by chunk to a hidden file in the workspace
(:class:`UploadWriter`), refused as soon as it passes the size limit or the
workspace's disk quota, or as soon as its first bytes are not the HDF5
signature. Before anndata reads a single array, :func:`inspect_h5ad` walks
the file's structure with h5py (names, shapes, dtypes, chunking and links;
no data) and refuses a file that would take more memory once read than the
server allows (a few compressed megabytes can declare a matrix of gigabytes),
or that points outside itself (external links, external or virtual storage).
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aivc.interfaces.api._errors import (
    PayloadTooLargeError,
    QuotaExceededError,
    WorkspaceValidationError,
)

__all__ = [
    "DEFAULT_MAX_UPLOAD",
    "DEFAULT_MAX_UPLOAD_MEMORY",
    "MAX_H5_OBJECTS",
    "MIN_SHARED_FRACTION",
    "MIN_SHARED_GENES",
    "H5adLayout",
    "UploadWriter",
    "inspect_h5ad",
    "min_shared_genes",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Largest upload accepted by default, as sent (bytes).
DEFAULT_MAX_UPLOAD = 256 * 1024 * 1024
#: Most memory the arrays of an upload may take once read, by default (bytes).
DEFAULT_MAX_UPLOAD_MEMORY = 512 * 1024 * 1024
#: An upload must share at least this many genes with its dataset...
MIN_SHARED_GENES = 50
#: ... or this fraction of the dataset's genes, whichever is fewer.
MIN_SHARED_FRACTION = 0.5
#: Most HDF5 links an upload may hold (an h5ad file has tens to hundreds).
MAX_H5_OBJECTS = 20_000
#: Prefix of the hidden files uploads are written to while they arrive.
INCOMING_PREFIX = ".incoming-"


def min_shared_genes(n_genes: int) -> int:
    """Genes an upload must share with a dataset of ``n_genes`` genes.

    ``min(MIN_SHARED_GENES, ceil(MIN_SHARED_FRACTION * n_genes))``, at least 1:
    50 genes for a dataset of 100 genes or more, half of them for a smaller one.
    """
    return max(1, min(MIN_SHARED_GENES, math.ceil(MIN_SHARED_FRACTION * n_genes)))


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


class UploadWriter:
    """Write an upload to a hidden file in ``folder``, checking each chunk as it arrives.

    Parameters
    ----------
    folder
        Where the hidden file is created.
    dataset
        The dataset the upload is for.
    max_bytes
        Largest upload; a chunk that passes it raises :class:`PayloadTooLargeError`.
    quota_left
        Bytes the workspace may still grow by; passing it raises
        :class:`QuotaExceededError`. ``None``: no quota.

    Notes
    -----
    The first bytes must be the HDF5 signature: a file that starts otherwise
    is refused (:class:`WorkspaceValidationError`) with its first chunk. Call
    :meth:`discard` when the upload is not kept; it is safe to call twice.
    """

    def __init__(
        self, folder: Path, *, dataset: str, max_bytes: int, quota_left: int | None = None
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.dataset = dataset
        self.path = Path(folder) / f"{INCOMING_PREFIX}{self.id}.h5ad"
        self.max_bytes = int(max_bytes)
        self.quota_left = quota_left
        self.size = 0
        self._head = b""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._fh = os.fdopen(fd, "wb")

    def check_length(self, length: int) -> None:
        """Refuse an upload announced (``Content-Length``) as larger than allowed."""
        if length > self.max_bytes:
            msg = f"The upload ({length} bytes) is larger than the {self.max_bytes} bytes this server accepts."
            raise PayloadTooLargeError(msg)
        self._check_quota(length)

    def _check_quota(self, size: int) -> None:
        if self.quota_left is not None and size > self.quota_left:
            msg = (
                f"The upload ({_mb(size)} so far) does not fit in the workspace's disk quota "
                f"({_mb(max(self.quota_left, 0))} left); delete models or uploads, or start "
                "the server with a larger --max-workspace-gb."
            )
            raise QuotaExceededError(msg)

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raises when the upload is too large, over quota or not HDF5."""
        if not chunk:
            return
        self.size += len(chunk)
        if self.size > self.max_bytes:
            msg = f"The upload is larger than the {self.max_bytes} bytes this server accepts."
            raise PayloadTooLargeError(msg)
        self._check_quota(self.size)
        if len(self._head) < len(HDF5_SIGNATURE):
            self._head += chunk[: len(HDF5_SIGNATURE) - len(self._head)]
            if not HDF5_SIGNATURE.startswith(self._head):
                _not_hdf5()
        self._fh.write(chunk)

    def close(self) -> Path:
        """Finish writing; returns the file. Raises when it is too short to be HDF5."""
        self._fh.close()
        if self._head != HDF5_SIGNATURE:
            _not_hdf5()
        return self.path

    def discard(self) -> None:
        """Close and remove the file (nothing is left behind)."""
        self._fh.close()
        self.path.unlink(missing_ok=True)


def _not_hdf5() -> None:
    msg = "The upload is not an h5ad file (no HDF5 signature); write it with AnnData.write_h5ad."
    raise WorkspaceValidationError(msg)


@dataclass(frozen=True)
class H5adLayout:
    """What an h5ad file declares, read from its structure without reading arrays.

    Attributes
    ----------
    x
        The main matrix in words (``"70000 × 3000 float32, dense"``), or ``None``.
    declared_bytes
        Memory its arrays take once read: the sum over datasets of
        ``max(size, chunk size) × item size``.
    largest
        Name of the largest array.
    n_objects
        Links in the file.
    """

    x: str | None
    declared_bytes: int
    largest: str
    n_objects: int


def _describe_matrix(obj: Any) -> str | None:
    import h5py

    if isinstance(obj, h5py.Dataset):
        shape = " × ".join(str(n) for n in (obj.shape or ()))
        return f"{shape} {obj.dtype}, dense"
    shape, kind = obj.attrs.get("shape"), obj.attrs.get("encoding-type")
    if shape is None:
        return None
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    return f"{' × '.join(str(int(n)) for n in shape)} {kind}"


def _dataset_bytes(obj: Any) -> int:
    if obj.shape is None:  # an empty (null) dataspace
        return 0
    item = obj.dtype.itemsize
    n = math.prod(int(d) for d in obj.shape) * item
    chunk = math.prod(int(d) for d in obj.chunks) * item if obj.chunks else 0
    return max(n, chunk)  # reading any element decompresses a whole chunk


def inspect_h5ad(path: str | Path, *, max_bytes: int) -> H5adLayout:
    """Check an h5ad file's structure before any of its arrays is read.

    Parameters
    ----------
    path
        The file.
    max_bytes
        Most memory its arrays may take once read.

    Returns
    -------
    The layout.

    Raises
    ------
    WorkspaceValidationError
        Not readable as HDF5, too many objects, or data outside the file
        (external links, external or virtual datasets).
    PayloadTooLargeError
        Its arrays would take more than ``max_bytes`` once read.
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError:
        msg = (
            "The upload is not a readable HDF5 file (it may be truncated or damaged); "
            "write it again with AnnData.write_h5ad."
        )
        raise WorkspaceValidationError(msg) from None
    with f:
        total, n_objects, largest = 0, 0, (0, "")
        refused: str | None = None

        def visit(name: str, link: Any) -> bool | None:
            nonlocal total, n_objects, largest, refused
            n_objects += 1
            if n_objects > MAX_H5_OBJECTS:
                refused = f"it holds more than {MAX_H5_OBJECTS} HDF5 objects"
                return True
            if isinstance(link, h5py.SoftLink):
                return None  # its target is visited through its own hard link
            if not isinstance(link, h5py.HardLink):
                refused = f"{name!r} is a link to another file"
                return True
            obj = f[name]
            if not isinstance(obj, h5py.Dataset):
                return None
            if obj.is_virtual or obj.external:
                refused = f"{name!r} keeps its data outside the file"
                return True
            nbytes = _dataset_bytes(obj)
            total += nbytes
            largest = max(largest, (nbytes, name))
            return None

        try:
            f.visititems_links(visit)
            x = _describe_matrix(f["X"]) if "X" in f and refused is None else None
        except (OSError, KeyError, ValueError, TypeError):
            msg = "The upload's HDF5 structure could not be read; write it again with AnnData.write_h5ad."
            raise WorkspaceValidationError(msg) from None
    if refused is not None:
        msg = f"The upload is refused: {refused}. Write a plain file with AnnData.write_h5ad."
        raise WorkspaceValidationError(msg)
    if total > max_bytes:
        matrix = f" (X: {x})" if x else ""
        msg = (
            f"The upload's arrays would take {_mb(total)} of memory once read{matrix}, more than "
            f"the {_mb(max_bytes)} this server reads for an upload. Upload fewer cells at a time "
            "or store X as a sparse matrix."
        )
        raise PayloadTooLargeError(msg)
    return H5adLayout(x=x, declared_bytes=total, largest=largest[1], n_objects=n_objects)
