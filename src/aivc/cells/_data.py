"""Reading cells in chunks: in-memory AnnData, backed ``.h5ad`` files and ``.zarr`` stores.

Data larger than memory are never loaded whole: the count matrix is opened
lazily (``anndata.io.sparse_dataset`` over HDF5 or Zarr) and read one block of
rows at a time. Embeddings are written incrementally to a ``.npy`` file on
disk (a memory map), so peak memory is bounded by the chunk size.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from aivc.data._ooc import BackedCells, as_csr, open_cells
from aivc.data._validate import DataValidationError, _check_counts

if TYPE_CHECKING:
    from anndata import AnnData

    from aivc.cells._encoder import CellEncoder

__all__ = ["BackedCells", "counts_matrix", "embed_file", "iter_chunks", "open_cells"]

logger = logging.getLogger(__name__)


def counts_matrix(adata: AnnData, layer: str | None) -> Any:
    """The matrix in ``layers[layer]`` (``X`` when ``layer`` is None), with a clear error."""
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        msg = (
            f"layer={layer!r} was asked for, but the AnnData has layers {sorted(adata.layers)}. "
            "Pass the layer that holds raw counts, or layer=None if adata.X holds them."
        )
        raise DataValidationError(msg)
    return adata.layers[layer]


def check_counts(m: Any, *, layer: str | None) -> None:
    """Raise :class:`DataValidationError` unless ``m`` holds non-negative integer counts."""
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    try:
        _check_counts(m, where)
    except DataValidationError as e:
        msg = f"{e} The cell encoder reads raw counts; pass layer='counts' (or the layer holding them)."
        raise DataValidationError(msg) from None


def iter_chunks(
    cells: AnnData | BackedCells, *, chunk_size: int, layer: str | None = None
) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, stop, counts)`` blocks of rows of an AnnData (in memory or backed) or a :class:`BackedCells`."""
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int | np.integer)
        or chunk_size < 1
    ):
        msg = f"The 'chunk_size' parameter must be a positive integer. Got {chunk_size!r} instead."
        raise ValueError(msg)
    if isinstance(cells, BackedCells):
        n = cells.n_obs
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            yield start, stop, cells.read(start, stop)
        return
    m = counts_matrix(cells, layer)
    n = cells.n_obs
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        yield start, stop, as_csr(m[start:stop])


#: Encoders rebuilt on a Dask worker, by the token of the weights they were sent.
_WORKER_ENCODERS: dict[str, Any] = {}


def _embed_block(
    token: str,
    state: tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]],
    plan: Any,
    path: str,
    layer: str | None,
    start: int,
    stop: int,
) -> tuple[np.ndarray, int]:
    """Latent means of rows ``start:stop`` of a file (runs on a Dask worker).

    The encoder travels as its parameters, weight arrays and configuration (no
    pickled model) and is rebuilt once per worker process.
    """
    from aivc.cells._encoder import _TORCH_THREADS, CellEncoder, _torch_threads

    encoder = _WORKER_ENCODERS.get(token)
    if encoder is None:
        params, arrays, meta = state
        encoder = CellEncoder(**params)
        encoder._set_state(arrays, meta)
        encoder.fitted_ = True
        _WORKER_ENCODERS.clear()  # one model at a time per worker
        _WORKER_ENCODERS[token] = encoder
    cells = open_cells(path, layer=layer)
    try:
        block = cells.read(start, stop)
    finally:
        cells.close()
    with _torch_threads(_TORCH_THREADS):
        return encoder._embed_counts(block, plan, layer=layer)


def embed_file(
    encoder: CellEncoder,
    path: str | Path,
    out: str | Path,
    *,
    chunk_size: int = 20_000,
    layer: str | None = None,
    species: str = "human",
    client: Any = None,
    n_workers: int = 2,
) -> Path:
    """Embed every cell of an ``.h5ad``/``.zarr`` file chunk by chunk into a ``.npy`` file.

    The output is a float32 ``n_obs x n_latent`` array written through a
    memory map as each chunk is done, so the whole matrix is never in memory
    at once. It is written to ``<out>.partial`` and renamed when complete.

    With ``client`` (a ``distributed.Client``, a scheduler address, or
    ``"local"`` for a ``LocalCluster`` of ``n_workers`` processes; or the
    scheduler named by ``AIVC_DASK_SCHEDULER``), every chunk is a Dask task
    that reads its own rows and embeds them with the encoder rebuilt from its
    weights on the worker; chunks are written in order, so the file equals
    the single-process one.

    Parameters
    ----------
    encoder
        A fitted :class:`aivc.cells.CellEncoder`.
    path
        Input file or store.
    out
        Output ``.npy`` file.
    chunk_size
        Cells read and embedded at once.
    layer
        Layer with raw counts (default ``X``).
    species
        Species of the input genes (mouse genes are mapped to human orthologs).
    client, n_workers
        Run the chunks on Dask (see above).

    Returns
    -------
    The path of the written ``.npy`` file.
    """
    import hashlib

    from aivc._progress import progress
    from aivc.cells._encoder import _TORCH_THREADS, _torch_threads
    from aivc.data._ooc import _blocks, _ordered_results, dask_client

    encoder._check_fitted()
    out = Path(out)
    cells = open_cells(path, layer=layer)
    partial = out.with_name(out.name + ".partial")
    try:
        plan = encoder._panel_plan(cells.var_names, species=species)
        arr = np.lib.format.open_memmap(
            partial, mode="w+", dtype=np.float32, shape=(cells.n_obs, encoder.n_latent)
        )
        blocks = _blocks(cells.n_obs, int(chunk_size))
        empty = 0
        with dask_client(client, n_workers=n_workers) as dask:
            if dask is None:
                parts: Iterator[tuple[np.ndarray, int]] = (
                    encoder._embed_counts(block, plan, layer=layer)
                    for _, _, block in iter_chunks(cells, chunk_size=chunk_size)
                )
            else:
                arrays, meta = encoder._state()
                token = hashlib.sha256(
                    b"".join(np.ascontiguousarray(v).tobytes() for v in arrays.values())
                ).hexdigest()[:16]
                state = dask.scatter((encoder.get_params(), arrays, meta), broadcast=True)
                args = [(token, state, plan, str(path), layer, a, b) for a, b in blocks]
                parts = _ordered_results(dask, _embed_block, args)
            with _torch_threads(_TORCH_THREADS):
                for i, ((start, stop), (emb, n_empty)) in enumerate(
                    progress(
                        zip(blocks, parts, strict=True),
                        desc="embedding cells",
                        total=len(blocks),
                        unit="chunk",
                    )
                ):
                    arr[start:stop] = emb
                    empty += n_empty
                    if i % 8 == 7:
                        arr.flush()
        arr.flush()
        del arr
        partial.replace(out)
        if empty:
            logger.warning("%d cells have no counts on the genes the model reads.", empty)
    finally:
        cells.close()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    logger.info("Embedded %d cells from %s into %s.", cells.n_obs, path, out)
    return out
