"""The REST API as an exposed server: hosts, origins, tokens, uploads, limits, errors, docs, ledger."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

import anyio
import h5py
import httpx
from fastapi.testclient import TestClient

from aivc.interfaces.api import NotFoundError, Workspace, create_app

BASE = "http://127.0.0.1:8000"
UPLOAD = "/api/datasets/synth/measurements"


def _synthetic():
    from aivc.data._synthetic import synthetic_perturbation_data

    return synthetic_perturbation_data(
        n_genes=60, n_singles=10, n_doubles=3, cells_per_condition=25, n_control_cells=60, seed=0
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws", max_upload_bytes=2_000_000)
    adata, schema = _synthetic()
    ws.add_dataset("synth", adata, schema, description="synthetic test data")
    yield ws
    ws.shutdown()


@pytest.fixture
def client(workspace: Workspace):
    with TestClient(create_app(workspace), base_url=BASE) as c:
        yield c


def _good_upload(tmp_path: Path, name: str = "good.h5ad") -> Path:
    """A valid upload: the control cells and two measured perturbations of the dataset."""
    adata, _ = _synthetic()
    labels = adata.obs["perturbation"].astype(str)
    keep = labels.isin(["control", *sorted(set(labels) - {"control"})[:2]]).to_numpy()
    path = tmp_path / name
    adata[keep].copy().write_h5ad(path)
    return path


def _uploads(ws: Workspace) -> list[str]:
    return sorted(p.name for p in (ws.root / "uploads").iterdir())


# ----------------------------------------------------------------------------- hosts and origins
def test_foreign_host_header_is_refused(workspace: Workspace) -> None:
    """DNS rebinding: a hostile name that resolves to 127.0.0.1 must not reach the API."""
    app = create_app(workspace)
    with TestClient(app, base_url="http://attacker.example:8765") as c:
        for path in ("/api/models", "/api/datasets", "/", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 421, (path, r.status_code)
            assert "does not answer to the host name" in r.json()["detail"]
    for base in ("http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765"):
        with TestClient(app, base_url=base) as c:
            assert c.get("/api/models").status_code == 200, base
    # more names when configured; the port is checked when given
    app = create_app(workspace, allowed_hosts=["lab.example.org", "127.0.0.1:8000"])
    with TestClient(app, base_url="http://lab.example.org:9999") as c:
        assert c.get("/api/models").status_code == 200
    with TestClient(app, base_url="http://127.0.0.1:8001") as c:
        assert c.get("/api/models").status_code == 421
    with TestClient(app, base_url="http://localhost:8000") as c:
        assert c.get("/api/models").status_code == 421  # not in the configured list
    with pytest.raises(ValueError, match="Invalid host"):
        create_app(workspace, allowed_hosts=["bad/host"])


def test_cross_origin_writes_are_refused(client: TestClient, workspace: Workspace) -> None:
    """A page on another site cannot post a form (text/plain upload, fit, delete) to the server."""
    body = _good_upload(workspace.root.parent).read_bytes()
    foreign = [
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},  # sandboxed frames and file:// pages
        {"Origin": "http://127.0.0.1:3000"},  # another port is another origin
        {"Sec-Fetch-Site": "cross-site"},
    ]
    for headers in foreign:
        r = client.post(UPLOAD, content=body, headers={"Content-Type": "text/plain", **headers})
        assert r.status_code == 403, (headers, r.status_code, r.text)
        assert "refused" in r.json()["detail"]
        fit = client.post(
            "/api/models", json={"dataset": "synth", "instrument": "train-mean"}, headers=headers
        )
        assert fit.status_code == 403
        assert client.delete("/api/models/x", headers=headers).status_code == 403
    assert _uploads(workspace) == [] and client.get("/api/jobs").json() == []
    # reads from anywhere the Host allows, and writes from the server's own page or a script
    assert (
        client.get("/api/models", headers={"Origin": "http://attacker.example"}).status_code == 200
    )
    r = client.post(UPLOAD, content=body, headers={"Origin": "http://127.0.0.1:8000"})
    assert r.status_code == 201, r.text
    r = client.post(UPLOAD, content=body, headers={"Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 201, r.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_answers_only_to_its_own_host_names(tmp_path: Path) -> None:
    """A real `aivc serve`: loopback names on its own port, and names given with --allowed-host."""
    env = {
        **os.environ,
        "AIVC_API_TOKEN": "",
        "AIVC_ALLOWED_HOSTS": "",
        "AIVC_CACHE_DIR": str(tmp_path / "cache"),
    }
    cmd = [sys.executable, "-m", "aivc.interfaces.cli", "serve", "--port", "0"]
    cmd += ["--workspace", str(tmp_path / "ws"), "--allowed-host", "lab.example.org"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        banner = ""
        for line in proc.stderr:  # type: ignore[union-attr]
            if "serving" in line:
                banner = line
                break
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", banner)
        assert match, banner
        port = int(match.group(1))
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        cases = {
            f"attacker.example:{port}": 421,
            f"127.0.0.1:{port + 1}": 421,
            f"localhost:{port}": 200,
            f"[::1]:{port}": 200,
            "lab.example.org": 200,
        }
        for host, status in cases.items():
            r = httpx.get(url + "/api/models", headers={"Host": host}, timeout=10)
            assert r.status_code == status, (host, r.status_code, r.text)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stderr.close()  # type: ignore[union-attr]


def test_serve_on_busy_port_fails_before_announcing(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    monkeypatch.delenv("AIVC_API_TOKEN", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        args = ["serve", "--port", str(port), "--workspace", str(tmp_path / "ws")]
        r = CliRunner().invoke(app, args)
    assert r.exit_code != 0
    assert "already in use" in r.output
    assert "serving" not in r.output


# ----------------------------------------------------------------------------- tokens
def test_bearer_scheme_is_case_insensitive_and_blank_token_refused(
    workspace: Workspace, monkeypatch
) -> None:
    with TestClient(create_app(workspace, token="s3cret"), base_url=BASE) as c:
        for header in ("Bearer s3cret", "bearer s3cret", "BEARER  s3cret ", "bEaReR s3cret"):
            assert c.get("/api/models", headers={"Authorization": header}).status_code == 200
        for header in ("Basic s3cret", "Bearer", "Bearer s3cre", "s3cret", "Bearer s3cret x"):
            r = c.get("/api/models", headers={"Authorization": header})
            assert r.status_code == 401, header
    with pytest.raises(ValueError, match="blank"):
        create_app(workspace, token="   ")

    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    for host in ("0.0.0.0", "127.0.0.1"):
        args = ["serve", "--host", host, "--port", "1", "--workspace", str(workspace.root)]
        r = CliRunner().invoke(app, [*args, "--token", " \t "])
        assert r.exit_code != 0 and "blank" in r.output and "serving" not in r.output
        monkeypatch.setenv("AIVC_API_TOKEN", "   ")
        r = CliRunner().invoke(app, args)
        assert r.exit_code != 0 and "blank" in r.output
        monkeypatch.delenv("AIVC_API_TOKEN")


# ----------------------------------------------------------------------------- uploads
def _asgi_upload(app, chunks: list[bytes]) -> tuple[int, int]:
    """Send ``chunks`` as a streamed (chunked) upload; returns the status and the chunks read."""
    read = 0
    status: list[int] = []

    async def receive() -> dict:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": True}
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": UPLOAD,
        "raw_path": UPLOAD.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }

    async def run() -> None:
        await app(scope, receive, send)

    anyio.run(run)
    return status[0], read


def test_upload_is_streamed_and_refused_at_its_first_bytes(workspace: Workspace) -> None:
    """The HDF5 signature is checked on the first chunk, not after the whole body arrived."""
    app = create_app(workspace)
    chunks = [b"PK\x03\x04 a zip file" + b"\x00" * 10_000] + [b"\x00" * 10_000] * 49
    status, read = _asgi_upload(app, chunks)
    assert status == 422 and read == 1
    # past the size limit, the rest is not read either
    status, read = _asgi_upload(app, [b"\x89HDF\r\n\x1a\n"] + [b"\x00" * 500_000] * 10)
    assert status == 413 and read == 5
    assert _uploads(workspace) == []
    # a good file sent in small chunks goes to disk and is kept
    data = _good_upload(workspace.root.parent).read_bytes()
    pieces = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    status, read = _asgi_upload(app, pieces)
    assert status == 201 and read == len(pieces)
    assert len(_uploads(workspace)) == 2


def _with_dense_x(src: Path, dst: Path, shape: tuple[int, int], dtype: str = "float32") -> Path:
    """A copy of ``src`` whose X declares a dense ``shape`` matrix (chunked, nothing written)."""
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        del f["X"]
        x = f.create_dataset(
            "X", shape=shape, dtype=dtype, chunks=(1000, min(shape[1], 300)), compression="gzip"
        )
        x.attrs["encoding-type"] = "array"
        x.attrs["encoding-version"] = "0.2.0"
    return dst


def test_upload_declaring_a_huge_matrix_is_refused_before_reading(
    client: TestClient, workspace: Workspace, tmp_path: Path, monkeypatch
) -> None:
    """A few kilobytes can declare a 70,000 x 3,000 matrix: refused from its shape alone."""
    import anndata

    workspace.max_upload_bytes = 5_000_000
    path = _with_dense_x(_good_upload(tmp_path), tmp_path / "bomb.h5ad", (70_000, 3_000))
    assert path.stat().st_size < 3_000_000

    def never(*args, **kwargs):
        raise AssertionError("the upload was read")

    monkeypatch.setattr(anndata, "read_h5ad", never)
    r = client.post(UPLOAD, content=path.read_bytes())
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "70000 × 3000 float32, dense" in detail and "840.0 MB" in detail
    assert _uploads(workspace) == []
    # a smaller budget refuses smaller files the same way
    workspace.max_upload_memory_bytes = 10_000
    r = client.post(UPLOAD, content=_good_upload(tmp_path, "small.h5ad").read_bytes())
    assert r.status_code == 413 and _uploads(workspace) == []


def test_upload_with_data_outside_the_file_is_refused(
    client: TestClient, workspace: Workspace, tmp_path: Path
) -> None:
    """An external link would make the server read one of its own files as the upload's data."""
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["X"] = np.ones((10, 10), dtype="float32")
    path = _good_upload(tmp_path)
    with h5py.File(path, "a") as f:
        f["linked"] = h5py.ExternalLink(str(secret), "/X")
    r = client.post(UPLOAD, content=path.read_bytes())
    assert r.status_code == 422 and "link to another file" in r.json()["detail"]
    assert str(tmp_path) not in r.text and _uploads(workspace) == []


def test_upload_needs_a_minimum_gene_overlap(
    client: TestClient, workspace: Workspace, tmp_path: Path
) -> None:
    """10 of 60 genes is too few: 50, or half of the dataset's genes when fewer (here 30)."""
    import anndata

    adata = anndata.read_h5ad(_good_upload(tmp_path))
    for n_shared, status in ((10, 422), (29, 422), (30, 201)):
        part = adata.copy()
        part.var_names = [g if i < n_shared else f"OTHER{i}" for i, g in enumerate(adata.var_names)]
        path = tmp_path / f"overlap{n_shared}.h5ad"
        part.write_h5ad(path)
        r = client.post(UPLOAD, content=path.read_bytes())
        assert r.status_code == status, (n_shared, r.text)
        if status == 422:
            assert f"shares {n_shared} genes" in r.json()["detail"]
            assert "at least 30" in r.json()["detail"]
    from aivc.interfaces.api._uploads import min_shared_genes

    assert min_shared_genes(299) == 50 and min_shared_genes(60) == 30 and min_shared_genes(1) == 1


# ----------------------------------------------------------------------------- error bodies
def test_error_bodies_hide_paths_and_internals(
    client: TestClient, workspace: Workspace, tmp_path: Path, caplog, monkeypatch
) -> None:
    # an h5ad anndata cannot read: an extra root element makes AnnData.__init__ raise TypeError
    path = _good_upload(tmp_path)
    with h5py.File(path, "a") as f:
        f["x"] = np.zeros(3)
    with caplog.at_level(logging.ERROR):
        r = client.post(UPLOAD, content=path.read_bytes())
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error_id"] and body["error_id"] in body["detail"]
    for leak in (
        str(workspace.root),
        "uploads/",
        ".incoming",
        "TypeError",
        "__init__",
        "Traceback",
    ):
        assert leak not in r.text, leak
    logged = [rec for rec in caplog.records if body["error_id"] in rec.getMessage()]
    assert logged and "TypeError" in "".join(traceback.format_exception(*logged[0].exc_info))

    # an unexpected error: 500 with an id, nothing of the exception
    def broken() -> list:
        raise OSError(f"[Errno 5] I/O error: '{workspace.root}/models/m/weights.safetensors'")

    monkeypatch.setattr(workspace, "list_models", broken)
    r = TestClient(create_app(workspace), base_url=BASE, raise_server_exceptions=False).get(
        "/api/models"
    )
    assert r.status_code == 500 and r.json()["error_id"]
    assert "OSError" not in r.text and str(workspace.root) not in r.text

    # a library message with a server path keeps its words, not the path
    def missing(name: str) -> None:
        msg = f"No such file: '{tmp_path}/data/{name}.h5ad'. Check AIVC_DATA_DIR."
        raise NotFoundError(msg)

    monkeypatch.setattr(workspace, "_load_dataset", missing)
    r = client.get("/api/datasets/ghost")
    assert r.status_code == 404
    assert "ghost.h5ad" in r.json()["detail"] and str(tmp_path) not in r.text

    # a job that fails inside a library reports an id, not the exception
    def fail(rep) -> dict:
        msg = "unsupported operand type(s) for +: 'int' and 'NoneType'"
        raise TypeError(msg)

    job = workspace.jobs.submit("test", {}, fail)
    done = workspace.jobs.wait(job.id, timeout=10)
    assert done.state == "failed" and "TypeError" not in done.error and done.error_id
    shown = client.get(f"/api/jobs/{job.id}").json()
    assert shown["error_id"] == done.error_id and "TypeError" not in json.dumps(shown)


def test_scrub_paths_keeps_api_routes() -> None:
    from aivc.interfaces.api._errors import scrub_paths

    assert scrub_paths("'/srv/a/b.h5ad' and /tmp/x/") == "'b.h5ad' and x"
    assert scrub_paths("fit with POST /api/models or GET /api/models/{id}") == (
        "fit with POST /api/models or GET /api/models/{id}"
    )
    assert scrub_paths("A+B and/or C; see http://host/a/b") == "A+B and/or C; see http://host/a/b"


# ----------------------------------------------------------------------------- limits
def test_job_queue_is_bounded(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws", max_queued_jobs=1)
    adata, schema = _synthetic()
    ws.add_dataset("synth", adata, schema)
    release = threading.Event()
    blocker = ws.jobs.submit("test", {}, lambda rep: (release.wait(30), {})[1])
    try:
        with TestClient(create_app(ws), base_url=BASE) as c:
            for _ in range(100):
                if ws.jobs.get(blocker.id).state == "running":
                    break
                time.sleep(0.02)
            fit = {"dataset": "synth", "instrument": "train-mean", "name": "queued"}
            assert c.post("/api/models", json=fit).status_code == 202
            r = c.post("/api/models", json={**fit, "name": "refused"})
            assert r.status_code == 429, r.text
            assert "at most 1" in r.json()["detail"] and r.headers["Retry-After"]
            # the refused name is free, and a cancelled job frees its place in the queue
            queued = next(j for j in ws.jobs.list() if j.params.get("model") == "queued")
            assert c.delete(f"/api/jobs/{queued.id}").status_code == 200
            assert c.post("/api/models", json={**fit, "name": "refused"}).status_code == 202
            release.set()
    finally:
        release.set()
        ws.shutdown()


def test_workspace_disk_quota(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws", max_workspace_bytes=200_000)
    adata, schema = _synthetic()
    ws.add_dataset("synth", adata, schema)
    body = _good_upload(tmp_path).read_bytes()
    assert 10_000 < len(body) < 200_000
    with TestClient(create_app(ws), base_url=BASE) as c:
        (ws.root / "filler.bin").write_bytes(b"\x00" * (200_000 - len(body) // 2))
        r = c.post(UPLOAD, content=body)  # announced larger than what is left
        assert r.status_code == 507, r.text
        assert "quota" in r.json()["detail"]
        r = c.post(UPLOAD, content=iter([body[:4096], body[4096:]]))  # found while streaming
        assert r.status_code == 507
        assert _uploads(ws) == []
        (ws.root / "filler.bin").write_bytes(b"\x00" * 200_000)
        fit = c.post("/api/models", json={"dataset": "synth", "instrument": "train-mean"})
        assert fit.status_code == 507 and c.get("/api/jobs").json() == []
        (ws.root / "filler.bin").unlink()
        assert c.post(UPLOAD, content=body).status_code == 201
    ws.shutdown()


# ----------------------------------------------------------------------------- docs
def test_docs_are_served_without_a_cdn(client: TestClient) -> None:
    pytest.importorskip("fastapi_offline")
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "http://" not in r.text and "https://" not in r.text, page
        refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert refs, page
        for ref in refs:
            asset = client.get(ref)
            assert asset.status_code == 200 and len(asset.content) > 100, ref
    assert "SwaggerUIBundle" in client.get("/static/swagger-ui-bundle.js").text
    assert client.get("/openapi.json").json()["openapi"].startswith("3.")


# ----------------------------------------------------------------------------- ledger
def test_ledger_reads_never_migrate(client: TestClient, workspace: Workspace) -> None:
    import sqlalchemy as sa

    from aivc.experiments import migrations
    from aivc.experiments._ledger import Ledger

    # no ledger yet: no projects, and nothing is created by looking
    assert client.get("/api/ledger/projects").json() == []
    assert client.get("/api/ledger/projects/p").status_code == 404
    assert not (workspace.root / "ledger.db").exists()

    engine = sa.create_engine(workspace.ledger_url)
    migrations.upgrade(engine, target=1)  # a ledger written by an older aivc
    for url in ("/api/ledger/projects", "/api/ledger/projects/p"):
        r = client.get(url)
        assert r.status_code == 409, r.text
        assert "aivc ledger migrate" in r.json()["detail"]
        assert str(workspace.root) not in r.text
    with engine.connect() as conn:
        assert migrations.current_version(conn) == 1  # the reads did not migrate it
    engine.dispose()

    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    r = CliRunner().invoke(app, ["ledger", "migrate", workspace.ledger_url])
    assert r.exit_code == 0, r.output
    assert f"schema version {migrations.LATEST_VERSION}" in r.output
    with Ledger(workspace.ledger_url) as led:
        led.create_project("screen-1")
    assert [p["name"] for p in client.get("/api/ledger/projects").json()] == ["screen-1"]

    # a database that cannot be reached (nothing listens on port 1): 503 with an id, not the URL
    pytest.importorskip("psycopg")
    workspace.ledger_url = "postgresql+psycopg://aivc:pw@127.0.0.1:1/lab?connect_timeout=2"
    r = client.get("/api/ledger/projects")
    assert r.status_code == 503, r.text
    assert r.json()["error_id"] and "127.0.0.1" not in r.text and "pw" not in r.text
