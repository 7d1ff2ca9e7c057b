"""End-to-end tests of the downloader against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import aivc
from aivc.data import _registry
from aivc.data._download import (
    ChecksumMismatchError,
    DownloadError,
    download_dataset,
    download_file,
)

PAYLOAD = np.random.default_rng(0).integers(0, 256, size=(5 << 19) + 123, dtype=np.uint8).tobytes()
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()

PUBLIC = ("norman2019", "replogle2022_k562_essential", "adamson2016", "kang2018_full", "sciplex3")


# ----------------------------------------------------------------------------- local server
@dataclass
class Served:
    """What a test server serves and what it saw."""

    body: bytes
    mode: str = "range"  # "range", "ignore-range", "corrupt", "truncate", "status", "redirect"
    status: int = 200
    location: str = ""
    ranges: list[str | None] = field(default_factory=list)
    bytes_sent: list[int] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    served: Served  # set on a subclass per server

    def log_message(self, format: str, *args: object) -> None:  # silence the server
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.served.bytes_sent.append(len(body))

    def do_GET(self) -> None:
        served = self.served
        requested = self.headers.get("Range")
        served.ranges.append(requested)
        body = served.body
        if served.mode == "status":
            self._send(served.status, b"")
        elif served.mode == "redirect":
            self._send(302, b"", {"Location": served.location})
        elif served.mode == "corrupt":
            bad = bytearray(body)
            bad[len(bad) // 2] ^= 0xFF
            self._send(200, bytes(bad))
        elif served.mode == "truncate":
            # Announce the full length, send half, then close the connection.
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            half = body[: len(body) // 2]
            self.wfile.write(half)
            self.served.bytes_sent.append(len(half))
            self.close_connection = True
        elif served.mode == "range" and requested and requested.startswith("bytes="):
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            chunk = body[start:]
            self._send(206, chunk, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
        else:  # "range" without a Range header, or "ignore-range"
            self._send(200, body)


@pytest.fixture
def serve() -> Iterator:
    """Start a loopback HTTP server for a :class:`Served`; returns the file's URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(served: Served) -> str:
        handler = type("Handler", (_Handler,), {"served": served})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        thread.start()
        servers.append(server)
        host, port = server.server_address[:2]
        return f"http://{host}:{port}/files/data.bin"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leftovers(dest: Path) -> list[Path]:
    return sorted(dest.parent.glob(dest.name + "*")) if dest.parent.exists() else []


# ----------------------------------------------------------------------------- download_file
@pytest.mark.parametrize("show_progress", [False, True])
def test_download_verifies_md5_and_sha256(serve, tmp_path: Path, show_progress: bool) -> None:
    served = Served(PAYLOAD)
    url = serve(served)
    dest = tmp_path / "sub" / "data.bin"
    out = download_file(
        url,
        dest,
        md5=PAYLOAD_MD5,
        sha256=PAYLOAD_SHA256.upper(),
        size=len(PAYLOAD),
        progress=show_progress,
    )
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest) == [dest]  # no .part left
    assert served.ranges == [None]


def test_resume_requests_only_the_remaining_bytes(serve, tmp_path: Path) -> None:
    served = Served(PAYLOAD, mode="range")
    url = serve(served)
    dest = tmp_path / "data.bin"
    have = 700_001
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:have])
    download_file(url, dest, md5=PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert served.ranges == [f"bytes={have}-"]
    assert served.bytes_sent == [len(PAYLOAD) - have]
    assert _leftovers(dest) == [dest]


def test_resume_follows_redirects(serve, tmp_path: Path) -> None:
    target = Served(PAYLOAD, mode="range")
    front = Served(b"", mode="redirect", location=serve(target))
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:4096])
    download_file(serve(front), dest, md5=PAYLOAD_MD5, size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert front.ranges == target.ranges == ["bytes=4096-"]
    assert target.bytes_sent == [len(PAYLOAD) - 4096]


def test_resume_falls_back_to_full_download_when_range_is_ignored(serve, tmp_path: Path) -> None:
    served = Served(PAYLOAD, mode="ignore-range")
    url = serve(served)
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:1000])
    download_file(url, dest, sha256=PAYLOAD_SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD  # not the prefix twice
    assert served.ranges == ["bytes=1000-"]
    assert served.bytes_sent == [len(PAYLOAD)]


def test_complete_part_file_is_verified_without_refetching(serve, tmp_path: Path) -> None:
    served = Served(PAYLOAD, mode="range")
    url = serve(served)
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    download_file(url, dest, md5=PAYLOAD_MD5, progress=False)  # size unknown: server answers 416
    assert dest.read_bytes() == PAYLOAD
    assert served.ranges == [f"bytes={len(PAYLOAD)}-"]
    # With the size known, a complete .part file is verified without contacting the server.
    (tmp_path / "again.bin.part").write_bytes(PAYLOAD)
    download_file(url, tmp_path / "again.bin", md5=PAYLOAD_MD5, size=len(PAYLOAD), progress=False)
    assert (tmp_path / "again.bin").read_bytes() == PAYLOAD
    assert len(served.ranges) == 1


def test_interrupted_download_keeps_part_and_resumes(serve, tmp_path: Path) -> None:
    broken = Served(PAYLOAD, mode="truncate")
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="run the download again to resume"):
        download_file(serve(broken), dest, md5=PAYLOAD_MD5, progress=False)
    part = tmp_path / "data.bin.part"
    assert part.read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]
    assert not dest.exists()

    good = Served(PAYLOAD, mode="range")
    download_file(serve(good), dest, md5=PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert good.bytes_sent == [len(PAYLOAD) - len(PAYLOAD) // 2]


def test_corrupted_download_raises_and_leaves_nothing(serve, tmp_path: Path) -> None:
    served = Served(PAYLOAD, mode="corrupt")
    url = serve(served)
    dest = tmp_path / "data.bin"
    with pytest.raises(ChecksumMismatchError) as info:
        download_file(url, dest, md5=PAYLOAD_MD5, progress=False)
    bad = bytearray(PAYLOAD)
    bad[len(bad) // 2] ^= 0xFF
    message = str(info.value)
    assert f"expected md5 {PAYLOAD_MD5}" in message
    assert f"received {hashlib.md5(bytes(bad)).hexdigest()}" in message
    assert url in message
    assert _leftovers(dest) == []


def test_corrupted_download_fails_on_sha256_too(serve, tmp_path: Path) -> None:
    url = serve(Served(PAYLOAD, mode="corrupt"))
    dest = tmp_path / "data.bin"
    with pytest.raises(ChecksumMismatchError, match=f"expected sha256 {PAYLOAD_SHA256}"):
        download_file(url, dest, sha256=PAYLOAD_SHA256, progress=False)
    assert _leftovers(dest) == []


def test_wrong_size_raises_and_leaves_nothing(serve, tmp_path: Path) -> None:
    url = serve(Served(PAYLOAD))
    dest = tmp_path / "data.bin"
    with pytest.raises(ChecksumMismatchError, match=f"expected {len(PAYLOAD) - 1} bytes"):
        download_file(url, dest, size=len(PAYLOAD) - 1, progress=False)
    assert _leftovers(dest) == []


def test_existing_file_is_replaced_only_after_verification(serve, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"old but intact")
    with pytest.raises(ChecksumMismatchError):
        download_file(serve(Served(PAYLOAD, mode="corrupt")), dest, md5=PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == b"old but intact"
    assert _leftovers(dest) == [dest]


def test_unreachable_host_gives_offline_advice(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/files/data.bin"
    dest = tmp_path / "folder" / "data.bin"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, md5=PAYLOAD_MD5, timeout=5, progress=False)
    message = str(info.value)
    assert "Could not reach 127.0.0.1" in message
    assert "AIVC_DATA_DIR" in message and str(dest) in message
    assert isinstance(info.value, ConnectionError)
    assert _leftovers(dest) == []


@pytest.mark.parametrize("status", [404, 202])
def test_http_status_errors_are_clear(serve, tmp_path: Path, status: int) -> None:
    url = serve(Served(PAYLOAD, mode="status", status=status))
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match=f"HTTP {status}"):
        download_file(url, dest, md5=PAYLOAD_MD5, progress=False)
    assert _leftovers(dest) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"md5": "abc"}, "'md5' parameter"),
        ({"sha256": "z" * 64}, "'sha256' parameter"),
        ({"size": -1}, "'size' parameter"),
        ({"timeout": 0}, "'timeout' parameter"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        download_file("http://127.0.0.1/x", tmp_path / "x", **kwargs)  # type: ignore[arg-type]


def test_non_http_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        download_file("file:///etc/hostname", tmp_path / "x")


# ----------------------------------------------------------------------------- datasets
@pytest.fixture
def tiny_h5ad(tmp_path: Path) -> bytes:
    rng = np.random.default_rng(1)
    adata = ad.AnnData(X=rng.poisson(1.0, size=(12, 5)).astype(np.float32))
    adata.obs_names = [f"c{i}" for i in range(12)]
    adata.var_names = [f"G{i}" for i in range(5)]
    adata.obs["perturbation"] = ["control"] * 6 + ["G1"] * 6
    path = tmp_path / "source.h5ad"
    adata.write_h5ad(path)
    return path.read_bytes()


@pytest.fixture
def throwaway_entry(serve, tiny_h5ad: bytes) -> Iterator[tuple[str, Served]]:
    served = Served(tiny_h5ad)
    url = serve(served)
    name = f"test_download_{uuid.uuid4().hex}"
    entry = aivc.data.DatasetEntry(
        name=name,
        description="tiny file served on the loopback interface",
        folder=f"{name}_folder",
        filename="tiny.h5ad",
        schema=aivc.data.PerturbationSchema(
            perturbation_key="perturbation", control_label="control"
        ),
        remote=(
            aivc.data.RemoteFile(
                url=url,
                filename="tiny.h5ad",
                md5=hashlib.md5(tiny_h5ad).hexdigest(),
                sha256=hashlib.sha256(tiny_h5ad).hexdigest(),
                size=len(tiny_h5ad),
            ),
        ),
    )
    aivc.data.register_dataset(entry)
    try:
        yield name, served
    finally:
        _registry._REGISTRY.pop(name, None)


def test_load_downloads_a_registered_dataset(throwaway_entry, tmp_path: Path) -> None:
    name, served = throwaway_entry
    data_dir = tmp_path / "data"
    adata = aivc.data.load(name, data_dir=data_dir, download=True)
    assert adata.shape == (12, 5)
    assert adata.uns["aivc"]["dataset"] == name
    assert aivc.data.schema_of(adata).control_label == "control"
    path = data_dir / f"{name}_folder" / "tiny.h5ad"
    assert path.exists() and not path.with_name("tiny.h5ad.part").exists()
    # Loading again reads the local copy without contacting the server.
    aivc.data.load(name, data_dir=data_dir, download=True)
    assert len(served.ranges) == 1


def test_download_dataset_skips_present_files_unless_forced(
    throwaway_entry, tmp_path: Path
) -> None:
    name, served = throwaway_entry
    path = download_dataset(name, data_dir=tmp_path)
    assert path == tmp_path / f"{name}_folder" / "tiny.h5ad"
    assert download_dataset(name, data_dir=tmp_path) == path
    assert len(served.ranges) == 1
    path.with_name("tiny.h5ad.part").write_bytes(b"stale")
    download_dataset(name, data_dir=tmp_path, force=True)
    assert served.ranges == [None, None]  # the stale partial file was discarded, not resumed
    assert path.read_bytes() == served.body


def test_download_dataset_uses_settings_data_dir(
    throwaway_entry, tmp_path: Path, monkeypatch
) -> None:
    name, _ = throwaway_entry
    monkeypatch.setattr(aivc.settings, "data_dir", tmp_path / "default")
    path = download_dataset(name)
    assert path == tmp_path / "default" / f"{name}_folder" / "tiny.h5ad"


def test_download_dataset_refuses_local_only_entries(tmp_path: Path) -> None:
    # A throwaway entry with neither remote files nor a registered public source.
    name = f"test_local_only_{uuid.uuid4().hex}"
    aivc.data.register_dataset(
        aivc.data.DatasetEntry(
            name=name,
            description="local-only entry",
            folder=f"{name}_folder",
            filename="local.h5ad",
        )
    )
    try:
        with pytest.raises(ValueError, match="has no public download"):
            download_dataset(name, data_dir=tmp_path)
    finally:
        _registry._REGISTRY.pop(name, None)


# ----------------------------------------------------------------------------- public registry
@pytest.mark.parametrize("name", PUBLIC)
def test_public_entries_have_https_urls_and_checksums(name: str) -> None:
    entry = aivc.data.dataset_entry(name)
    assert entry.remote, f"{name} has no remote file"
    assert entry.schema is not None
    assert entry.citation and entry.license and entry.notes
    assert entry.filename in {r.filename for r in entry.remote}
    for remote in entry.remote:
        assert remote.url.startswith("https://")
        assert remote.md5 or remote.sha256 or remote.checksum_note
        if remote.md5 is None:
            assert remote.checksum_note, f"{name}: no md5 and no reason given"
        if remote.md5 is not None:
            assert len(remote.md5) == 32 and int(remote.md5, 16) >= 0
        if remote.sha256 is not None:
            assert len(remote.sha256) == 64 and int(remote.sha256, 16) >= 0


def test_public_folders_do_not_collide_with_other_entries() -> None:
    entries = list(aivc.data.list_datasets())
    public_folders = {aivc.data.dataset_entry(name).folder for name in PUBLIC}
    assert len(public_folders) == len(PUBLIC)
    other_folders = {e.folder for e in entries if e.name not in PUBLIC}
    assert not public_folders & other_folders
