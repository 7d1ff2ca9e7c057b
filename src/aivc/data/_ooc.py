"""Out-of-core pseudobulk: per-condition sums read from disk block by block, on one process or Dask.

A dataset on disk (``.h5ad`` or ``.zarr``, as anndata writes them) is never
loaded whole: the cell annotations (``obs``, small) are read into memory, the
count matrix is read in blocks of rows through anndata's own element readers
(``anndata.io.sparse_dataset`` for sparse matrices, array slicing for dense
ones), and every block adds its cells to per-condition sums:

- ``count_sums``: raw counts summed per condition. Counts are integers, and a
  float64 sum of integers below 2**53 is exact whatever the order, so these
  equal the in-memory sums exactly;
- ``means``: the mean of the log-normalised expression per condition (each
  cell scaled to ``target_sum`` and ``log1p``-ed, as :func:`aivc.data.prepare`
  does; a cell's normalisation involves only that cell, so blocks need nothing
  from each other). These equal :func:`aivc.data.pseudobulk` of the prepared
  data up to float64 rounding of the summation order.

With a ``distributed.Client`` (or ``"local"`` for a ``LocalCluster`` of worker
processes) each block is a task that reads its own rows from the file; the
partial sums come back and are added in block order on the caller, so the
result is identical, bit for bit, to the single-process path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.data._preprocess import condition_labels
from aivc.data._schema import PerturbationSchema
from aivc.data._validate import DataValidationError

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "DASK_SCHEDULER_ENV",
    "BackedCells",
    "OutOfCorePseudobulk",
    "OutOfCoreStatistics",
    "as_csr",
    "condition_statistics_from_file",
    "dask_client",
    "open_cells",
    "pseudobulk_from_file",
    "stored_schema",
    "validate_file",
]

logger = logging.getLogger(__name__)

#: Environment variable naming a running Dask scheduler (``tcp://host:8786``).
DASK_SCHEDULER_ENV = "AIVC_DASK_SCHEDULER"
#: Cells per block by default: about 100 MB of a typical sparse matrix.
DEFAULT_CHUNK = 50_000


@dataclass
class OutOfCorePseudobulk:
    """Per-condition sums of a dataset read from disk block by block.

    Attributes
    ----------
    means
        Conditions x genes mean log-normalised expression (as :func:`aivc.data.pseudobulk`).
    count_sums
        Conditions x genes sums of the raw counts (exact).
    info
        One row per condition: ``perturbation``, ``context``, ``dose``, ``n_cells``.
    n_cells, n_blocks
        Cells read and blocks they were read in.
    target_sum
        Library size every cell was scaled to before ``log1p``.
    """

    means: pd.DataFrame
    count_sums: pd.DataFrame
    info: pd.DataFrame
    n_cells: int
    n_blocks: int
    target_sum: float


# ------------------------------------------------------------------------------------ reading
def as_csr(m: Any) -> sp.csr_matrix:
    """A CSR view (sparse input keeps its dtype) or a float32 CSR copy of a dense block of rows."""
    if sp.issparse(m):
        return sp.csr_matrix(m)
    return sp.csr_matrix(np.asarray(m, dtype=np.float32))


@dataclass
class BackedCells:
    """A count matrix on disk, read lazily by row blocks.

    Attributes
    ----------
    path
        The ``.h5ad`` file or ``.zarr`` store.
    var_names
        Gene names (columns).
    n_obs
        Number of cells (rows).
    matrix
        Lazily sliced matrix (``matrix[start:stop]``).
    """

    path: Path
    var_names: pd.Index
    n_obs: int
    matrix: Any
    _handle: Any = None

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as CSR."""
        return as_csr(self.matrix[start:stop])

    def obs_names(self) -> pd.Index:
        """Cell names (read from disk on demand)."""
        from anndata.io import read_elem

        return pd.Index(read_elem(self._group()["obs"]).index)

    def obs(self, columns: Sequence[str] | None = None, *, names: bool = True) -> pd.DataFrame:
        """The cell annotations (read from disk on demand); only ``columns`` when given.

        Reading only the columns a step needs keeps millions of cells' other
        annotations (barcodes, QC values) out of memory. With ``columns``, the
        cell names are not read: the index holds row numbers, as strings (what
        AnnData wants) unless ``names=False`` (a range, which takes no memory).
        """
        from anndata.io import read_elem

        group = self._group()["obs"]
        if columns is None:
            return read_elem(group)
        missing = [c for c in columns if c not in group]
        if missing:
            have = [k for k in group.keys() if not k.startswith("_")]
            msg = f"obs has no column {missing[0]!r} named by the schema; its columns are {have}."
            raise DataValidationError(msg)
        frame = pd.DataFrame({c: read_elem(group[c]) for c in columns})
        if names:
            frame.index = frame.index.astype(str)
        return frame

    def _group(self) -> Any:
        return self._handle

    def close(self) -> None:
        """Close the underlying file."""
        if self._handle is not None and hasattr(self._handle, "close"):
            self._handle.close()
        self._handle = None


def open_cells(path: str | Path, *, layer: str | None = None) -> BackedCells:
    """Open an ``.h5ad`` file or ``.zarr`` store for chunked reading.

    Parameters
    ----------
    path
        File written by ``AnnData.write_h5ad`` / ``write_zarr`` or :func:`aivc.sim.write_simulation`.
    layer
        Read ``layers[layer]`` instead of ``X``.
    """
    from anndata.io import read_elem, sparse_dataset

    path = Path(path)
    if not path.exists():
        msg = f"No such file or store: {str(path)!r}."
        raise FileNotFoundError(msg)
    if path.name.endswith(".zarr") or path.is_dir():
        import zarr

        group = zarr.open_group(str(path), mode="r")
    else:
        import h5py

        try:
            group = h5py.File(path, "r")
        except OSError as e:
            msg = f"{str(path)!r} is not a readable .h5ad (HDF5) file ({e})."
            raise DataValidationError(msg) from None
    try:
        if layer is None:
            node = group["X"]
        else:
            if "layers" not in group or layer not in group["layers"]:
                have = sorted(group["layers"]) if "layers" in group else []
                msg = f"layer={layer!r} is not in {str(path)!r} (layers: {have})."
                raise DataValidationError(msg)
            node = group["layers"][layer]
        var = read_elem(group["var"])
        encoding = node.attrs.get("encoding-type", "array")
        matrix = sparse_dataset(node) if encoding in ("csr_matrix", "csc_matrix") else node
        if encoding == "csc_matrix":
            logger.warning("%s stores a CSC matrix; reading rows in chunks is slow.", path)
        n_obs = int(matrix.shape[0])
    except Exception:
        if hasattr(group, "close"):
            group.close()
        raise
    return BackedCells(
        path=path,
        var_names=pd.Index(var.index.astype(str)),
        n_obs=n_obs,
        matrix=matrix,
        _handle=group,
    )


def stored_schema(path: str | Path) -> PerturbationSchema:
    """The schema a store carries in ``uns["aivc"]`` (as aivc writes it), with a clear error."""
    from anndata.io import read_elem

    cells = open_cells(Path(path))
    try:
        group = cells._group()
        stored = (
            read_elem(group["uns"]["aivc"]) if "uns" in group and "aivc" in group["uns"] else None
        )
    finally:
        cells.close()
    if stored is None:
        msg = (
            f"{str(path)!r} carries no aivc schema; declare its columns (--perturbation-key, "
            "--control-label, --context-key, --counts-layer)."
        )
        raise ValueError(msg)
    return PerturbationSchema.from_dict(dict(stored.get("schema", stored)))


def _condition_codes(
    obs: pd.DataFrame, schema: PerturbationSchema
) -> tuple[np.ndarray, pd.DataFrame]:
    """Each cell's condition code and one row of ``info`` per condition (sorted labels).

    Conditions and their ``info`` are those of :func:`aivc.data.pseudobulk`.
    """
    keys = _condition_keys(schema)
    for key in keys:
        if key not in obs:
            msg = f"obs has no column {key!r} named by the schema; its columns are {list(obs.columns)}."
            raise DataValidationError(msg)
    # one id per distinct (perturbation, dose, context) without building a label per cell
    # (millions of label strings would be most of the memory), then the labels of those rows
    group = obs.groupby(keys, observed=True, sort=False, dropna=False).ngroup().to_numpy()
    first = np.unique(group, return_index=True)[1]
    head_codes, info = _condition_table(obs.iloc[first], schema)
    codes = head_codes[group]
    info["n_cells"] = np.bincount(codes, minlength=len(info))
    return codes.astype(np.int64), info


def _condition_keys(schema: PerturbationSchema) -> list[str]:
    """The obs columns that define a condition: perturbation, dose, context."""
    return [
        k for k in (schema.perturbation_key, schema.dose_key, schema.context_key) if k is not None
    ]


def _condition_table(
    heads: pd.DataFrame, schema: PerturbationSchema
) -> tuple[np.ndarray, pd.DataFrame]:
    """The condition code of each distinct annotation row, and one ``info`` row per condition.

    Conditions (sorted labels) and ``info`` are those of :func:`aivc.data.pseudobulk`.
    """
    import anndata as ad

    heads = heads.copy()
    heads.index = pd.Index([f"g{i}" for i in range(len(heads))])
    head_labels = condition_labels(ad.AnnData(obs=heads), schema).to_numpy()
    head_codes, labels = pd.factorize(head_labels, sort=True)
    frame = pd.DataFrame({"perturbation": heads[schema.perturbation_key].astype(str).to_numpy()})
    frame["context"] = (
        heads[schema.context_key].astype(str).to_numpy() if schema.context_key is not None else None
    )
    frame["dose"] = (
        pd.to_numeric(heads[schema.dose_key], errors="coerce").fillna(0.0).to_numpy(dtype=float)
        if schema.dose_key is not None
        else 0.0
    )
    info = frame.groupby(head_codes).first()
    info.index = pd.Index(labels)
    return head_codes, info


def _row_keys(rows: pd.DataFrame, keys: Sequence[str]) -> pd.Index:
    """One string per annotation row that identifies its condition (the same for equal rows)."""
    parts = [rows[k].astype(str).to_numpy(dtype=object) for k in keys]
    out = parts[0]
    for part in parts[1:]:
        out = out + "\x1f" + part
    return pd.Index(out)


def _check_chunk(chunk_size: int) -> None:
    if int(chunk_size) < 1:
        msg = f"chunk_size must be a positive number of cells. Got {chunk_size}."
        raise ValueError(msg)


def _obs_column(group: Any, column: str) -> Any:
    """The on-disk node of obs column ``column``, with a clear error when it is missing."""
    if column not in group["obs"]:
        have = [k for k in group["obs"].keys() if not k.startswith("_")]
        msg = f"obs has no column {column!r} named by the schema; its columns are {have}."
        raise DataValidationError(msg)
    return group["obs"][column]


def _obs_rows(group: Any, columns: Sequence[str], start: int, stop: int) -> pd.DataFrame:
    """Rows ``start:stop`` of obs columns, sliced on disk (categorical codes, arrays).

    Other encodings are read whole and sliced (correct, not block-bounded).
    """
    from anndata.io import read_elem

    out: dict[str, Any] = {}
    for c in columns:
        node = _obs_column(group, c)
        encoding = node.attrs.get("encoding-type", "array")
        if encoding == "categorical":
            codes = np.asarray(node["codes"][start:stop])
            out[c] = pd.Categorical.from_codes(codes, categories=read_elem(node["categories"]))
        elif encoding in ("array", "string-array") and hasattr(node, "shape"):
            if hasattr(node, "asstr") and node.dtype.kind in ("O", "S"):
                out[c] = np.asarray(node.asstr()[start:stop], dtype=object)  # HDF5 strings
            else:
                out[c] = np.asarray(node[start:stop])
        else:
            out[c] = np.asarray(read_elem(node))[start:stop]
    return pd.DataFrame(out)


def _n_rows(group: Any, column: str) -> int:
    """Number of rows of an obs column on disk."""
    node = _obs_column(group, column)
    if node.attrs.get("encoding-type") == "categorical":
        return int(node["codes"].shape[0])
    if "values" in getattr(node, "keys", lambda: [])():
        return int(node["values"].shape[0])
    return int(node.shape[0])


def _block_distinct(path: str, keys: Sequence[str], start: int, stop: int) -> pd.DataFrame:
    """The distinct condition rows of rows ``start:stop`` (runs on a worker)."""
    cells = open_cells(path)
    try:
        rows = _obs_rows(cells._group(), keys, start, stop)
    finally:
        cells.close()
    return rows.iloc[np.unique(_row_keys(rows, keys), return_index=True)[1]]


def _block_codes(
    group: Any, keys: Sequence[str], table: pd.Index, code_of: np.ndarray, start: int, stop: int
) -> np.ndarray:
    """Condition codes of rows ``start:stop`` of an open store, from their annotations and the
    condition table (``table``: the key of each distinct annotation row; ``code_of``: its code)."""
    rows = _obs_rows(group, keys, start, stop)
    at = table.get_indexer(_row_keys(rows, keys))
    if (at < 0).any():  # the table was built from these very rows: cannot happen
        msg = f"Rows {start}-{stop - 1}: annotations changed while the file was read."
        raise DataValidationError(msg)
    return code_of[at]


def _annotations(
    path: Path, schema: PerturbationSchema, chunk_size: int
) -> tuple[pd.DataFrame, pd.Index]:
    """The schema's obs columns and the gene names of a store, checked against its matrix."""
    _check_chunk(chunk_size)
    keys = schema.obs_keys()
    cells = open_cells(path, layer=schema.counts_layer)
    try:
        obs = cells.obs(list(dict.fromkeys(keys.values())), names=False)
        var_names, n_obs = cells.var_names, cells.n_obs
    finally:
        cells.close()
    if n_obs != len(obs):
        msg = f"The count matrix has {n_obs} rows, but obs has {len(obs)} cells."
        raise DataValidationError(msg)
    return obs, var_names


# ------------------------------------------------------------------------------------ one block
def _block_sums(
    path: str,
    layer: str | None,
    start: int,
    stop: int,
    codes: np.ndarray | tuple[Sequence[str], pd.Index, np.ndarray],
    n_groups: int,
    target_sum: float,
    squares: bool = False,
    halves: np.ndarray | None = None,
    keep: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per-condition sums of rows ``start:stop`` (runs on a worker).

    Always ``counts`` (raw count sums) and ``log`` (log-normalised sums); with
    ``squares`` also ``squares`` (sums of squared log values); with ``halves``
    (halvings x rows codes into ``2 * n_groups`` half-groups, -1 for a row in
    neither half) also ``halves`` (halvings x half-groups x genes log sums);
    with ``keep`` (row offsets within the block) also ``cells``, those rows'
    raw counts. ``codes`` are the rows' condition codes, or (condition columns, keys
    of the distinct annotation rows, their codes) to read them from the
    block's annotations (then ``n``, the cells per condition, is returned too).
    """
    from aivc.data._preprocess import log_normalize

    from_table = isinstance(codes, tuple)
    cells = open_cells(path, layer=layer)
    try:
        if from_table:
            keys, table, code_of = codes  # type: ignore[misc]
            codes = _block_codes(cells._group(), keys, table, code_of, start, stop)
        counts = sp.csr_matrix(cells.read(start, stop), dtype=np.float64)
    finally:
        cells.close()
    codes = np.asarray(codes)
    values = counts.data
    if values.size and (values.min() < 0 or not np.array_equal(values, np.round(values))):
        msg = (
            f"Rows {start}-{stop - 1} of the count matrix hold negative or non-integer values; "
            "the out-of-core path reads raw counts (name their layer in the schema's counts_layer)."
        )
        raise DataValidationError(msg)
    logx, _ = log_normalize(counts, target_sum=target_sum)
    logx = sp.csr_matrix(logx, dtype=np.float64)
    n = len(codes)
    indicator = sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(n_groups, n))
    out: dict[str, Any] = {
        "counts": np.asarray((indicator @ counts).toarray(), dtype=np.float64),
        "log": np.asarray((indicator @ logx).toarray()),
    }
    if squares:
        out["squares"] = np.asarray((indicator @ logx.multiply(logx)).toarray())
    if halves is not None:
        parts = []
        for h in np.asarray(halves):
            used = np.flatnonzero(h >= 0)
            half_ind = sp.csr_matrix((np.ones(len(used)), (h[used], used)), shape=(2 * n_groups, n))
            parts.append(np.asarray((half_ind @ logx).toarray()))
        out["halves"] = np.stack(parts) if parts else np.zeros((0, 2 * n_groups, counts.shape[1]))
    if keep is not None:
        out["cells"] = sp.csr_matrix(counts[np.asarray(keep, dtype=np.int64)], dtype=np.float32)
    if from_table:
        out["n"] = np.bincount(codes, minlength=n_groups)
    return out


def _blocks(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]


# ------------------------------------------------------------------------------------ Dask
@contextmanager
def dask_client(
    client: Client | str | None = None, *, n_workers: int = 2
) -> Iterator[Client | None]:
    """The Dask client to run blocks on, or None for a single process.

    ``client`` may be a ``distributed.Client``, a scheduler address
    (``tcp://host:8786``), ``"local"`` (a ``LocalCluster`` of ``n_workers``
    worker processes with one thread each, closed afterwards) or None; with
    None, :data:`DASK_SCHEDULER_ENV` names a scheduler when it is set.
    """
    if client is None:
        client = os.environ.get(DASK_SCHEDULER_ENV) or None
    if client is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if isinstance(client, Client):
        yield client
        return
    if not isinstance(client, str):
        msg = (
            f"client must be a distributed.Client, a scheduler address or 'local'; got {client!r}."
        )
        raise TypeError(msg)
    if client == "local":
        # no dashboard, and the scheduler's HTTP endpoints on a free port (two clusters at once
        # must not compete for the default 8787)
        cluster = LocalCluster(
            n_workers=int(n_workers),
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
        )
        own = Client(cluster)
        try:
            yield own
        finally:
            own.close()
            cluster.close()
        return
    own = Client(client)
    try:
        yield own
    finally:
        own.close()


def _ordered_results(
    dask: Client | None, func: Any, args: Sequence[tuple[Any, ...]]
) -> Iterator[Any]:
    """``func(*a)`` for each ``a`` in order: here, or on Dask with at most two blocks per
    worker in flight (a result is released as soon as it is read, so memory holds a few)."""
    if dask is None:
        for a in args:
            yield func(*a)
        return
    from collections import deque

    window = 2 * max(len(dask.scheduler_info()["workers"]), 1)

    pending: deque[Any] = deque()
    for a in args:
        pending.append(dask.submit(func, *a, pure=False))
        if len(pending) >= window:
            f = pending.popleft()
            yield f.result()
            f.release()
    while pending:
        f = pending.popleft()
        yield f.result()
        f.release()


# ------------------------------------------------------------------------------------ public
def pseudobulk_from_file(
    path: str | Path,
    schema: PerturbationSchema,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    target_sum: float = 1e4,
    client: Client | str | None = None,
    n_workers: int = 2,
) -> OutOfCorePseudobulk:
    """Per-condition count sums and mean log-normalised expression, read from disk in blocks.

    Parameters
    ----------
    path
        An ``.h5ad`` file or a ``.zarr`` folder written by anndata, with raw
        counts in ``X`` or in the layer ``schema.counts_layer``.
    schema
        The dataset's columns (perturbation, control label, context, dose).
    chunk_size
        Cells per block; memory holds one block (and, per condition, two
        rows of sums) at a time.
    target_sum
        Library size each cell is scaled to before ``log1p`` (as :func:`aivc.data.prepare`).
    client
        Run the blocks on Dask: a ``distributed.Client``, a scheduler
        address, or ``"local"`` for a ``LocalCluster`` of ``n_workers``
        processes; None runs them here (or on the scheduler named by
        ``AIVC_DASK_SCHEDULER``). The result is identical either way.
    n_workers
        Worker processes of a ``"local"`` cluster.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    DataValidationError
        The store is not anndata's, a schema column or the counts layer is
        missing, or a block holds values that are not counts.
    """
    _check_chunk(chunk_size)
    path = Path(path)
    keys = _condition_keys(schema)
    cells = open_cells(path, layer=schema.counts_layer)
    try:
        var_names, n_obs = cells.var_names, cells.n_obs
        n_annotated = _n_rows(cells._group(), keys[0])
    finally:
        cells.close()
    if n_obs != n_annotated:
        msg = f"The count matrix has {n_obs} rows, but obs has {n_annotated} cells."
        raise DataValidationError(msg)
    # the annotations are read block by block too: first the distinct conditions, then each
    # block's codes where its counts are read, so memory holds no per-cell array
    blocks = _blocks(n_obs, int(chunk_size))
    with dask_client(client, n_workers=n_workers) as dask:
        distinct = list(
            _ordered_results(dask, _block_distinct, [(str(path), keys, a, b) for a, b in blocks])
        )
        heads = pd.concat(distinct, ignore_index=True)
        heads = heads.iloc[np.unique(_row_keys(heads, keys), return_index=True)[1]]
        head_codes, info = _condition_table(heads, schema)
        n_groups = len(info)
        # the table: each distinct row's key, and its condition code
        table = (_row_keys(heads, keys), np.asarray(head_codes, dtype=np.int64))
        args = [
            (
                str(path),
                schema.counts_layer,
                a,
                b,
                (keys, *table),
                n_groups,
                float(target_sum),
            )
            for a, b in blocks
        ]
        count_sums = np.zeros((n_groups, len(var_names)))
        log_sums = np.zeros((n_groups, len(var_names)))
        n_cells = np.zeros(n_groups, dtype=np.int64)
        # in block order: the same sums as one process, bit for bit
        for part in _ordered_results(dask, _block_sums, args):
            count_sums += part["counts"]
            log_sums += part["log"]
            n_cells += part["n"]
    info["n_cells"] = n_cells
    logger.info(
        "pseudobulk of %s: %d cells in %d blocks, %d conditions%s",
        path,
        n_obs,
        len(blocks),
        n_groups,
        "" if client is None else " (Dask)",
    )
    genes = pd.Index(var_names).copy()
    sizes = info["n_cells"].to_numpy(dtype=float)[:, None]
    return OutOfCorePseudobulk(
        means=pd.DataFrame(log_sums / sizes, index=info.index, columns=genes),
        count_sums=pd.DataFrame(count_sums, index=info.index, columns=genes),
        info=info,
        n_cells=n_obs,
        n_blocks=len(blocks),
        target_sum=float(target_sum),
    )


@dataclass
class OutOfCoreStatistics:
    """What a perturbation benchmark needs of a dataset on disk, read in one pass.

    Attributes
    ----------
    pseudobulk
        Per-condition sums and means (:class:`OutOfCorePseudobulk`).
    variances
        Conditions x genes sample variance of the log-normalised expression
        (from the sums and sums of squares; 0 for a condition of one cell).
    halves
        One ``(a, b)`` pair of conditions x genes means per random halving:
        each condition's cells shuffled and split into two halves of
        ``n // 2`` cells (an odd cell left out), as a replicate of the data.
    sample
        Raw counts of a seeded sample of cells (at most ``cells_per_condition``
        of each perturbed condition, ``control_cells`` of each control), for
        the parts of models that need single cells; ``sample_obs`` holds their
        schema columns and ``sample_rows`` their rows in the file.
    """

    pseudobulk: OutOfCorePseudobulk
    variances: pd.DataFrame
    halves: list[tuple[np.ndarray, np.ndarray]]
    sample: sp.csr_matrix
    sample_obs: pd.DataFrame
    sample_rows: np.ndarray


def _rank_within(codes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's position in a random order of its condition's cells, and its condition's size."""
    order = np.lexsort((rng.random(len(codes)), codes))
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = np.empty(len(codes), dtype=np.int64)
    pos[order] = np.arange(len(codes)) - starts[codes[order]]
    return pos, sizes[codes]


def condition_statistics_from_file(
    path: str | Path,
    schema: PerturbationSchema,
    *,
    n_halvings: int = 3,
    cells_per_condition: int = 20,
    control_cells: int = 2000,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    target_sum: float = 1e4,
    client: Client | str | None = None,
    n_workers: int = 2,
) -> OutOfCoreStatistics:
    """Means, variances, split-half replicates and a cell sample per condition, in one pass.

    Every number is accumulated block by block from the counts on disk (see
    :func:`pseudobulk_from_file`, whose ``means`` and ``count_sums`` these
    equal); memory holds one block, a few conditions x genes tables per
    halving, and the sample. Parameters are those of
    :func:`pseudobulk_from_file`, and:

    n_halvings
        Random split-halves of every condition's cells.
    cells_per_condition, control_cells
        Size of the cell sample per perturbed condition and per control.
    seed
        Seed of the halvings and the sample.
    """
    path = Path(path)
    obs, var_names = _annotations(path, schema, chunk_size)
    codes, info = _condition_codes(obs, schema)
    n_groups, n_genes = len(info), len(var_names)
    rng = np.random.default_rng(seed)
    halves = np.full((int(n_halvings), len(codes)), -1, dtype=np.int32)
    for h in range(int(n_halvings)):
        pos, size = _rank_within(codes, rng)
        half = size // 2
        halves[h] = np.where(pos < half, 2 * codes, np.where(pos < 2 * half, 2 * codes + 1, -1))
    pos, _ = _rank_within(codes, rng)
    is_ctrl = (info["perturbation"].to_numpy() == schema.control_label)[codes]
    cap = np.where(is_ctrl, int(control_cells), int(cells_per_condition))
    sample_rows = np.flatnonzero(pos < cap)
    blocks = _blocks(len(obs), int(chunk_size))
    args = [
        (
            str(path),
            schema.counts_layer,
            a,
            b,
            codes[a:b],
            n_groups,
            float(target_sum),
            True,
            halves[:, a:b],
            sample_rows[(sample_rows >= a) & (sample_rows < b)] - a,
        )
        for a, b in blocks
    ]
    count_sums = np.zeros((n_groups, n_genes))
    log_sums = np.zeros((n_groups, n_genes))
    sq_sums = np.zeros((n_groups, n_genes))
    half_sums = np.zeros((int(n_halvings), 2 * n_groups, n_genes))
    sample: list[sp.csr_matrix] = []
    with dask_client(client, n_workers=n_workers) as dask:
        for part in _ordered_results(dask, _block_sums, args):
            count_sums += part["counts"]
            log_sums += part["log"]
            sq_sums += part["squares"]
            half_sums += part["halves"]
            sample.append(part["cells"])
    sizes = info["n_cells"].to_numpy(dtype=float)[:, None]
    means = log_sums / sizes
    var = np.maximum(sq_sums - sizes * means**2, 0.0) / np.maximum(sizes - 1, 1)
    half_n = np.maximum(sizes // 2, 1)
    pairs = [(hs[0::2] / half_n, hs[1::2] / half_n) for hs in half_sums]
    genes = pd.Index(var_names).copy()
    logger.info(
        "statistics of %s: %d cells in %d blocks, %d conditions, %d sampled cells",
        path,
        len(obs),
        len(blocks),
        n_groups,
        len(sample_rows),
    )
    bulk = OutOfCorePseudobulk(
        means=pd.DataFrame(means, index=info.index, columns=genes),
        count_sums=pd.DataFrame(count_sums, index=info.index, columns=genes),
        info=info,
        n_cells=len(obs),
        n_blocks=len(blocks),
        target_sum=float(target_sum),
    )
    sample_obs = obs.iloc[sample_rows].copy()
    sample_obs.index = pd.Index([f"cell{r}" for r in sample_rows])
    return OutOfCoreStatistics(
        pseudobulk=bulk,
        variances=pd.DataFrame(var, index=info.index, columns=genes.copy()),
        halves=pairs,
        sample=sp.vstack(sample).tocsr() if sample else sp.csr_matrix((0, n_genes)),
        sample_obs=sample_obs,
        sample_rows=sample_rows,
    )


def _block_check(path: str, layer: str | None, start: int, stop: int, counts: bool) -> int:
    """Check that rows ``start:stop`` hold finite values (raw counts with ``counts``); runs on a worker."""
    from aivc.data._validate import _check_counts, _check_finite

    cells = open_cells(path, layer=layer)
    try:
        block = cells.read(start, stop)
    finally:
        cells.close()
    where = f"Rows {start}-{stop - 1} of {'X' if layer is None else f'layers[{layer!r}]'}"
    (_check_counts if counts else _check_finite)(block, where)
    return stop - start


def validate_file(
    path: str | Path,
    schema: PerturbationSchema,
    *,
    known_genes: Sequence[str] | None = None,
    require_counts: bool = True,
    require_control: bool = True,
    min_cells: int = 1,
    chunk_size: int = DEFAULT_CHUNK,
    client: Client | str | None = None,
    n_workers: int = 2,
) -> int:
    """:func:`aivc.data.validate` for a dataset on disk, without loading its matrix.

    The annotations (the schema's ``obs`` columns, cell and gene names) are
    checked in memory as :func:`aivc.data.validate` checks them; the values
    block by block (finite, and raw counts with ``require_counts``), here or
    as Dask tasks (``client`` as in :func:`pseudobulk_from_file`). The first
    problem raises :class:`DataValidationError`, naming the rows of its block.

    Returns
    -------
    The number of cells checked.
    """
    import anndata as ad

    from aivc.data._validate import validate_annotations

    path = Path(path)
    _check_chunk(chunk_size)
    layer = schema.counts_layer if require_counts else None
    cells = open_cells(path, layer=layer)
    try:
        group = cells._group()["obs"]
        present = [c for c in dict.fromkeys(schema.obs_keys().values()) if c in group]
        obs = cells.obs(present, names=False)
        obs.index = cells.obs_names()
        var_names, n_obs = cells.var_names, cells.n_obs
    finally:
        cells.close()
    if n_obs != len(obs):
        msg = f"The count matrix has {n_obs} rows, but obs has {len(obs)} cells."
        raise DataValidationError(msg)
    shell = ad.AnnData(obs=obs, var=pd.DataFrame(index=var_names))
    validate_annotations(
        shell,
        schema,
        known_genes=known_genes,
        require_control=require_control,
        min_cells=min_cells,
    )
    del shell, obs
    args = [
        (str(path), layer, a, b, bool(require_counts)) for a, b in _blocks(n_obs, int(chunk_size))
    ]
    with dask_client(client, n_workers=n_workers) as dask:
        checked = sum(_ordered_results(dask, _block_check, args))
    logger.info("validated %s: %d cells x %d genes", path, checked, len(var_names))
    return int(checked)
