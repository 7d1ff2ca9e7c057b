"""Atomic file writes: a reader never sees half a file, a crash never leaves one.

Every writer here goes through :func:`atomic_path`: the content is written to
a hidden temporary file in the target's folder and renamed onto the target
only once it is complete. A rename within one folder is atomic, so the target
either keeps its old content or has the new one in full; a failed write
removes its temporary file.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "atomic_path",
    "json_safe",
    "write_bytes_atomic",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

_TEMP_SUFFIX = ".tmp"


def _create_temp(path: Path) -> Path:
    """Create an empty, hidden, uniquely named file beside ``path``.

    The file is made with the mode a plain ``open(path, "w")`` would give
    (``0o666`` less the umask), so the renamed result is not private the way
    a :func:`tempfile.mkstemp` file is.
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    msg = f"Could not create a temporary file beside {str(path)!r}."
    raise FileExistsError(msg)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path that replaces ``path`` when the block succeeds.

    The missing parent folders of ``path`` are created. The block receives the
    path of an empty hidden file in the same folder (its name ends in
    ``.tmp``) and writes it by any means; when the block ends without an
    exception that file is renamed onto ``path`` in one step, and when it
    raises the file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path
        The file to write.

    Yields
    ------
    Path
        Where to write the content.

    Notes
    -----
    Writers that add an extension to a file name they are given (NumPy's
    ``save`` and ``savez`` do) should be handed an open file instead:
    ``with atomic_path(p) as tmp, tmp.open("wb") as fh: np.save(fh, x)``.

    Examples
    --------
    >>> with atomic_path("table.csv") as tmp:  # doctest: +SKIP
    ...     frame.to_csv(tmp, index=False)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path


def write_csv_atomic(table: pd.DataFrame, path: str | Path, *, index: bool = False) -> Path:
    """Write a DataFrame to ``path`` as CSV atomically; returns ``path``."""
    return write_text_atomic(path, table.to_csv(index=index))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, infinity) replaced by ``None``.

    Dictionaries are rebuilt with the same keys, lists and tuples become
    lists; anything else is returned unchanged.
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | Path, obj: Any, *, sort_keys: bool = False) -> Path:
    """Write ``obj`` to ``path`` as indented strict JSON, atomically; returns ``path``.

    NaN and infinity are written as ``null`` (:func:`json_safe`); anything
    else JSON cannot represent raises ``TypeError`` or ``ValueError`` and
    leaves ``path`` as it was.

    Parameters
    ----------
    path
        The file to write.
    obj
        Dictionaries, lists, tuples, strings, numbers, booleans and ``None``.
    sort_keys
        Write dictionary keys in sorted order.
    """
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False, sort_keys=sort_keys)
    return write_text_atomic(path, text)
