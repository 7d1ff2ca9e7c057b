"""Public sources of the local datasets, and the converters that rebuild them.

Every dataset in the registry that is not downloaded as a ready ``.h5ad`` (the
"local" datasets: papalexi2021, kang2018, baron_human...) has here the public
files it was made from (a repository at a pinned commit, a package release, or
a Zenodo/figshare record), the checksums those sources publish, and a
converter that turns the source files into the same AnnData the data directory
holds. :func:`rebuild` downloads the source files (resumable, verified, see
:func:`aivc.data.download`) into ``<data_dir>/<folder>/source/`` and writes the
converted file atomically to the dataset's path, so ``aivc.data.load(name,
download=True)`` works for every registered dataset on a machine with a network.

Checksums: a GitHub file is checked against its git blob id (the SHA-1 git
publishes for every file at every commit); a Zenodo/figshare file against its
published md5; a package release against the sha256 its index publishes. Where a
source publishes none, the sha256 recorded after our first verified download is
used, and :attr:`SourceFile.checksum_note` says so.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aivc._settings import settings
from aivc.data._download import ChecksumMismatchError, download_file
from aivc.data._registry import dataset_entry

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "PublicSource",
    "SourceFile",
    "git_blob_id",
    "list_sources",
    "rebuild",
    "register_source",
    "source_of",
]

logger = logging.getLogger(__name__)

# Modules that register sources, one per source (imported lazily by ``_registered``).
_SOURCE_MODULES: tuple[str, ...] = (
    # each module below calls register_source(...) for the datasets it converts
    "came",
    "citefuse",
    "hsmm",
    "perturbench",
    "sceptre",
    "scgen",
    "scvi_data",
    "scvi_fixtures",
)

_SOURCES: dict[str, PublicSource] = {}
_LOADED = False


@dataclass(frozen=True)
class SourceFile:
    """One public file a dataset is rebuilt from.

    Attributes
    ----------
    url
        Public address of the file, pinned (a commit, a release, a record version).
    filename
        Name the file gets in the dataset's ``source/`` folder; converters receive
        files by this name.
    git_blob
        Git object id (SHA-1 of ``"blob <size>\\0" + content``) as the repository
        publishes it at the pinned commit.
    md5
        md5 the source publishes (Zenodo, figshare).
    sha256
        sha256 the source publishes (package indexes), or the one recorded after a
        first verified download (``checksum_note`` then says so).
    size
        Size in bytes, when known.
    checksum_note
        Where the checksum comes from when it is not published by the source.
    """

    url: str
    filename: str
    git_blob: str | None = None
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    checksum_note: str | None = None


@dataclass(frozen=True)
class PublicSource:
    """Where a local dataset comes from, and how to rebuild it.

    Attributes
    ----------
    dataset
        Registry name of the dataset it rebuilds.
    origin
        The source in words: repository and commit, package and version, or record.
    files
        The files to download.
    convert
        ``convert(paths) -> AnnData``: ``paths`` maps each ``SourceFile.filename``
        to its downloaded path; the result is the dataset as the data directory
        holds it.
    notes
        What the converter changes (subsets, renamed columns, reconstructed counts).
    """

    dataset: str
    origin: str
    files: tuple[SourceFile, ...]
    convert: Callable[[Mapping[str, Path]], AnnData]
    notes: str = ""


def git_blob_id(path: str | Path) -> str:
    """Git's object id of a file: SHA-1 over ``"blob <size>\\0"`` and its bytes."""
    path = Path(path)
    hasher = hashlib.sha1(usedforsecurity=False)
    hasher.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            hasher.update(block)
    return hasher.hexdigest()


def register_source(source: PublicSource) -> PublicSource:
    """Add ``source`` for its dataset (which must be registered)."""
    dataset_entry(source.dataset)  # raises for unknown names
    if not source.files:
        msg = f"The public source of {source.dataset!r} lists no files."
        raise ValueError(msg)
    names = [f.filename for f in source.files]
    if len(set(names)) != len(names):
        msg = f"The public source of {source.dataset!r} lists a file name twice: {names}."
        raise ValueError(msg)
    _SOURCES[source.dataset] = source
    return source


def _registered() -> dict[str, PublicSource]:
    global _LOADED
    if not _LOADED:
        for module in _SOURCE_MODULES:
            importlib.import_module(f"{__name__}.{module}")
        _LOADED = True
    return _SOURCES


def list_sources() -> list[str]:
    """Names of the datasets that have a public source and converter."""
    return sorted(_registered())


def source_of(name: str) -> PublicSource | None:
    """The public source of dataset ``name``, or ``None`` when it has none."""
    dataset_entry(name)
    return _registered().get(name)


def _fetch(file: SourceFile, dest: Path, *, force: bool) -> Path:
    if dest.exists() and not force:
        if file.git_blob is None or git_blob_id(dest) == file.git_blob:
            logger.info("%s is already present.", dest)
            return dest
        logger.warning("%s does not match its git blob id; downloading it again.", dest)
    download_file(file.url, dest, md5=file.md5, sha256=file.sha256, size=file.size)
    if file.git_blob is not None:
        got = git_blob_id(dest)
        if got != file.git_blob:
            dest.unlink(missing_ok=True)
            msg = (
                f"Checksum mismatch for {file.url}: expected git blob {file.git_blob}, received {got}. "
                "The download was deleted; run it again. If this persists, the file at the source "
                "has changed: report it."
            )
            raise ChecksumMismatchError(msg)
    return dest


def rebuild(
    name: str,
    *,
    data_dir: str | Path | None = None,
    force: bool = False,
    source: PublicSource | None = None,
) -> Path:
    """Download the public source of dataset ``name`` and convert it into the data directory.

    Parameters
    ----------
    name
        Registry name of a local dataset (see :func:`list_sources`).
    data_dir
        Data directory; defaults to ``aivc.settings.data_dir`` (``AIVC_DATA_DIR``).
    force
        Download the source files again and overwrite the converted file.
    source
        Use this source instead of the registered one (for a mirror).

    Returns
    -------
    Path
        The dataset's ``.h5ad``, ready for :func:`aivc.data.load`.
    """
    entry = dataset_entry(name)
    source = source or source_of(name)
    if source is None:
        msg = f"Dataset {name!r} has no registered public source; copy its folder into the data directory."
        raise ValueError(msg)
    base = Path(data_dir).expanduser() if data_dir is not None else settings.data_dir
    out = entry.path(base)
    if out.exists() and not force:
        logger.info("%s is already present; pass force=True to rebuild it.", out)
        return out
    folder = out.parent / "source"
    paths = {f.filename: _fetch(f, folder / f.filename, force=force) for f in source.files}
    logger.info("Converting %s from %s", name, source.origin)
    adata = source.convert(paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        adata.write_h5ad(tmp, compression="gzip", convert_strings_to_categoricals=False)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    logger.info("Rebuilt %s at %s", name, out)
    return out
