"""Download public dataset files: resumable, verified, atomic.

:func:`download_file` fetches one URL with the standard library only. It
writes to ``<dest>.part`` next to the destination, resumes an interrupted
``.part`` with an HTTP ``Range`` request (and starts again from the beginning
when the server ignores the range), verifies the size and the md5/sha256
checksums, and only then renames the file to its final name with
:func:`os.replace`. A file under the final name is therefore always complete
and verified.

:func:`download_dataset` downloads the files of a registered public dataset
into its folder under the data directory (``aivc.settings.data_dir``, set by
``AIVC_DATA_DIR``).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from aivc._progress import progress as progress_bar
from aivc._settings import settings
from aivc._version import __version__
from aivc.data._registry import dataset_entry

__all__ = ["ChecksumMismatchError", "DownloadError", "download_dataset", "download_file"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes per read while streaming (1 MiB; the progress bar counts MiB)
_HASH_CHUNK = 1 << 22
_USER_AGENT = f"aivc/{__version__} (python-urllib)"
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)
_HEX = re.compile(r"^[0-9a-f]+$")


class DownloadError(ConnectionError):
    """A file could not be downloaded; the message says why and what to do next."""


class ChecksumMismatchError(ValueError):
    """A downloaded file does not match its expected size or checksum."""


# ----------------------------------------------------------------------------- helpers
def _part_path(dest: Path) -> Path:
    """The temporary file a download is written to before verification."""
    return dest.with_name(dest.name + ".part")


def _normalise_digest(value: str | None, algorithm: str, length: int) -> str | None:
    if value is None:
        return None
    digest = str(value).strip().lower()
    if len(digest) != length or not _HEX.match(digest):
        msg = (
            f"The '{algorithm}' parameter of download_file must be a {length}-character hexadecimal "
            f"digest or None. Got {value!r} instead."
        )
        raise ValueError(msg)
    return digest


def _parse_content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` from a ``Content-Range`` header; ``None`` where unknown."""
    if not header:
        return None, None
    match = _CONTENT_RANGE.match(header)
    if match is None:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


def _unreachable(url: str, dest: Path, reason: object) -> DownloadError:
    host = urllib.parse.urlsplit(url).netloc or url
    msg = (
        f"Could not reach {host} to download {url} ({reason}). Check the network connection "
        "(and proxy settings). On a machine without network access, download the file elsewhere "
        f"and copy it to {str(dest)!r}, that is into the dataset's folder under the data directory "
        "(AIVC_DATA_DIR/<folder>/), then try again."
    )
    return DownloadError(msg)


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=timeout)


def _read_chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while True:
        chunk = response.read(_CHUNK)
        if not chunk:
            return
        yield chunk


def _digests(path: Path, algorithms: list[str]) -> dict[str, str]:
    """Hex digests of ``path`` for each algorithm, computed in one pass."""
    hashers = {name: hashlib.new(name, usedforsecurity=False) for name in algorithms}
    if not hashers:
        return {}
    with path.open("rb") as fh:
        while block := fh.read(_HASH_CHUNK):
            for hasher in hashers.values():
                hasher.update(block)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


# ----------------------------------------------------------------------------- fetching
def _fetch(
    url: str,
    dest: Path,
    *,
    size: int | None,
    timeout: float,
    show_progress: bool,
    _restarted: bool = False,
) -> None:
    """Bring ``<dest>.part`` up to the full file, resuming when it already holds a prefix."""
    part = _part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        logger.warning(
            "%s holds %d bytes, more than the expected %d; starting the download again.",
            part,
            offset,
            size,
        )
        part.unlink()
        offset = 0
    if size is not None and 0 < offset == size:
        logger.info("%s already holds all %d bytes; verifying it.", part, size)
        return
    if offset:
        logger.info("Resuming %s from byte %d.", url, offset)
    else:
        logger.info("Downloading %s to %s.", url, dest)

    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset > 0:
            # Range not satisfiable: either the partial file is already complete, or the source changed.
            _, total = _parse_content_range(e.headers.get("Content-Range") if e.headers else None)
            e.close()
            if total == offset:
                logger.info(
                    "The server reports %s is complete (%d bytes); verifying it.", part, offset
                )
                return
            if _restarted:
                msg = f"The server at {url} refused the download (HTTP 416 twice). Try again later."
                raise DownloadError(msg) from None
            logger.warning(
                "The server could not resume %s; starting again from the beginning.", url
            )
            part.unlink(missing_ok=True)
            _fetch(
                url, dest, size=size, timeout=timeout, show_progress=show_progress, _restarted=True
            )
            return
        msg = (
            f"The server answered HTTP {e.code} ({e.reason}) for {url}. The file may have moved or the "
            "host may be down: try again later, or download the file in a browser and copy it to "
            f"{str(dest)!r}."
        )
        e.close()
        raise DownloadError(msg) from None
    except urllib.error.URLError as e:
        raise _unreachable(url, dest, e.reason) from e
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise _unreachable(url, dest, e) from e

    with response:
        status = response.status
        if status == 206:
            first, _ = _parse_content_range(response.headers.get("Content-Range"))
            if first != offset:
                if _restarted:
                    msg = (
                        f"The server at {url} answered a request for bytes {offset}- with a different "
                        f"range ({response.headers.get('Content-Range')!r}). Delete {str(part)!r} and try again."
                    )
                    raise DownloadError(msg)
                logger.warning("The server sent the wrong byte range for %s; starting again.", url)
                response.close()
                part.unlink(missing_ok=True)
                _fetch(
                    url,
                    dest,
                    size=size,
                    timeout=timeout,
                    show_progress=show_progress,
                    _restarted=True,
                )
                return
            mode = "ab"
        elif status == 200:
            if offset:
                logger.info(
                    "The server ignored the range request; downloading %s from the beginning.", url
                )
            offset = 0
            mode = "wb"
        else:
            msg = (
                f"The server answered HTTP {status} for {url} instead of sending the file (expected 200 "
                "or 206). It may still be preparing the file or may be limiting scripted downloads: try "
                f"again later, or download the file in a browser and copy it to {str(dest)!r}."
            )
            raise DownloadError(msg)

        length = response.headers.get("Content-Length")
        remaining = int(length) if length is not None and length.strip().isdigit() else None
        if remaining is None and size is not None:
            remaining = size - offset
        chunks: Iterator[bytes] = _read_chunks(response)
        if show_progress:
            n_chunks = math.ceil(remaining / _CHUNK) if remaining is not None else None
            chunks = progress_bar(chunks, desc=dest.name, total=n_chunks, unit="MiB")
        written = 0
        try:
            with part.open(mode) as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    written += len(chunk)
        except (
            TimeoutError,
            ConnectionError,
            http.client.HTTPException,
            urllib.error.URLError,
        ) as e:
            msg = (
                f"The download of {url} was interrupted after {offset + written} bytes ({e}). The partial "
                f"file {str(part)!r} is kept: run the download again to resume it."
            )
            raise DownloadError(msg) from e
    if length is not None and remaining is not None and written < remaining:
        msg = (
            f"The connection to {urllib.parse.urlsplit(url).netloc} closed after {offset + written} of "
            f"{offset + remaining} bytes of {url}. The partial file {str(part)!r} is kept: run the "
            "download again to resume it."
        )
        raise DownloadError(msg)


def _verify(
    part: Path, dest: Path, *, url: str, md5: str | None, sha256: str | None, size: int | None
) -> None:
    """Check size and checksums of ``part``; delete it and raise on any mismatch."""
    received_size = part.stat().st_size
    if size is not None and received_size != size:
        part.unlink(missing_ok=True)
        msg = (
            f"The file downloaded from {url} has the wrong size: expected {size} bytes, received "
            f"{received_size}. The partial file was deleted; run the download again. If this persists, "
            "the file at the source has changed: report it, or check the file yourself and copy it to "
            f"{str(dest)!r}."
        )
        raise ChecksumMismatchError(msg)
    expected = {
        name: value for name, value in (("md5", md5), ("sha256", sha256)) if value is not None
    }
    received = _digests(part, list(expected))
    for name, value in expected.items():
        if received[name] != value:
            part.unlink(missing_ok=True)
            msg = (
                f"Checksum mismatch for {url}: expected {name} {value}, received {received[name]} "
                f"({received_size} bytes). The corrupted download was deleted; run the download again. "
                "If this persists, the file at the source has changed: report it, or check the file "
                f"yourself and copy it to {str(dest)!r}."
            )
            raise ChecksumMismatchError(msg)


# ----------------------------------------------------------------------------- public API
def download_file(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 60,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resumably, and verify it before it gets its final name.

    The data are written to ``<dest>.part`` in the same directory. An existing
    ``.part`` (from an interrupted download) is resumed with an HTTP ``Range``
    request; a server that ignores the range (answers 200) is read from the
    beginning instead. After the transfer the size and checksums are checked,
    and only a verified file is renamed to ``dest`` (atomically, with
    :func:`os.replace`), replacing any file already there.

    Parameters
    ----------
    url
        ``http://`` or ``https://`` address of the file.
    dest
        Final path of the file; missing parent directories are created.
    md5
        Expected md5 hex digest (as published by Zenodo or figshare), or ``None``.
    sha256
        Expected sha256 hex digest, or ``None``.
    size
        Expected size in bytes, or ``None``.
    timeout
        Seconds to wait for the server on each network operation.
    progress
        Show a progress bar (when :attr:`aivc.settings.progress` is on too).

    Returns
    -------
    Path
        ``dest``, holding the verified file.

    Raises
    ------
    DownloadError
        The host cannot be reached (offline), answers with an HTTP error, or the
        transfer is interrupted (the ``.part`` file is then kept for resuming).
        A subclass of :class:`ConnectionError`.
    ChecksumMismatchError
        The downloaded size or checksum differs from the expected one; the
        partial file is deleted. A subclass of :class:`ValueError`.
    """
    scheme = urllib.parse.urlsplit(str(url)).scheme.lower()
    if scheme not in {"http", "https"}:
        msg = f"The 'url' parameter of download_file must be an http:// or https:// address. Got {url!r} instead."
        raise ValueError(msg)
    md5 = _normalise_digest(md5, "md5", 32)
    sha256 = _normalise_digest(sha256, "sha256", 64)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        msg = f"The 'size' parameter of download_file must be a non-negative integer or None. Got {size!r} instead."
        raise ValueError(msg)
    if not timeout or timeout <= 0:
        msg = f"The 'timeout' parameter of download_file must be a positive number. Got {timeout!r} instead."
        raise ValueError(msg)
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if md5 is None and sha256 is None:
        logger.warning("No checksum given for %s; the download can only be checked for size.", url)

    _fetch(url, dest, size=size, timeout=timeout, show_progress=progress)
    part = _part_path(dest)
    _verify(part, dest, url=url, md5=md5, sha256=sha256, size=size)
    os.replace(part, dest)
    logger.info("Downloaded and verified %s.", dest)
    return dest


def download_dataset(name: str, *, data_dir: str | Path | None = None, force: bool = False) -> Path:
    """Download the files of the public dataset ``name`` into its folder in the data directory.

    Parameters
    ----------
    name
        Registry name, see :func:`aivc.data.list_datasets`.
    data_dir
        Data directory; defaults to ``aivc.settings.data_dir`` (``AIVC_DATA_DIR``).
        Files go to ``<data_dir>/<entry.folder>/``.
    force
        Download files again even when they are already present (and discard
        any partial download). Without it, present files are kept as they are.

    Returns
    -------
    Path
        Path of the dataset's ``.h5ad`` file, ready for :func:`aivc.data.load`.

    Raises
    ------
    ValueError
        The dataset has no public download (a local-only entry).
    DownloadError, ChecksumMismatchError
        See :func:`download_file`.
    """
    entry = dataset_entry(name)
    base = Path(data_dir).expanduser() if data_dir is not None else settings.data_dir
    if not entry.remote:
        from aivc.data.sources import rebuild, source_of

        if source_of(name) is not None:
            return rebuild(name, data_dir=base, force=force)
        msg = (
            f"Dataset {name!r} has no public download. Copy its folder {entry.folder!r} into the data "
            f"directory {str(base)!r} (set AIVC_DATA_DIR to choose another)."
        )
        raise ValueError(msg)
    folder = base / entry.folder
    for remote in entry.remote:
        dest = folder / remote.filename
        if dest.exists() and not force:
            logger.info("%s is already present; pass force=True to download it again.", dest)
            continue
        if force:
            _part_path(dest).unlink(missing_ok=True)
        if remote.md5 is None and remote.sha256 is None and remote.checksum_note:
            logger.info("No published checksum for %s: %s", remote.filename, remote.checksum_note)
        download_file(remote.url, dest, md5=remote.md5, sha256=remote.sha256, size=remote.size)
    path = entry.path(base)
    if not path.exists():
        files = [r.filename for r in entry.remote]
        msg = (
            f"Downloaded {files} for dataset {name!r}, but its file {entry.filename!r} is not among them. "
            "The registry entry is inconsistent: its filename must be one of its remote files."
        )
        raise FileNotFoundError(msg)
    return path
