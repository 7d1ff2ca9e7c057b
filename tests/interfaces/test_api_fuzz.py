"""Robustness of the REST API: schema-driven fuzzing and concurrent predictions on a live server."""

from __future__ import annotations

import socket
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("schemathesis")

import anyio
import httpx

from aivc.interfaces.api import Workspace, create_app


def _workspace(root: Path) -> Workspace:
    from aivc.data._synthetic import synthetic_perturbation_data

    ws = Workspace(root, max_upload_bytes=200_000)
    adata, schema = synthetic_perturbation_data(
        n_genes=40, n_singles=8, n_doubles=2, cells_per_condition=15, n_control_cells=40
    )
    ws.add_dataset("synth", adata, schema)
    job = ws.submit_fit(dataset="synth", instrument="additive", name="fz")
    done = ws.jobs.wait(job["id"], timeout=120)
    assert done.state == "succeeded", done.error
    return ws


@pytest.mark.slow
def test_schemathesis_no_server_errors(tmp_path: Path) -> None:
    """Every operation of the app's own OpenAPI schema, with generated inputs: no 5xx.

    Path parameters naming a model or dataset are pointed at real ones half of
    the time, so the generated bodies reach the prediction and upload code.
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    ws = _workspace(tmp_path / "ws")
    app = create_app(ws, allowed_hosts=["testserver"])  # the host name schemathesis sends
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    real = {"model_id": "fz", "name": "synth"}
    calls: list[tuple[str, int]] = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15

    def make_check(op: Any) -> Any:
        label = f"{op.method.upper()} {op.path}"

        @settings(
            max_examples=8,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy())
        def check(case) -> None:
            params = case.path_parameters or {}
            for key, value in real.items():
                seen = repr((case.path_parameters, case.query, case.body)).encode()
                if key in params and zlib.crc32(seen) % 2 == 0:
                    params[key] = value
            response = case.call()
            calls.append((label, response.status_code))
            case.validate_response(response, checks=[not_a_server_error])
            assert response.status_code < 500, (case, response.text)
            if response.status_code >= 400:
                assert "detail" in response.json(), response.text

        return check

    for op in operations:
        if op.method.upper() == "DELETE" and op.path == "/api/models/{model_id}":
            continue  # deleting the shared model would only turn later calls into 404s
        make_check(op)()
    ws.shutdown()
    from collections import Counter

    print(sorted(Counter(calls).items()))
    assert len(calls) > 100
    ok = {path for path, status in calls if status < 300}
    # the generated inputs reached real work, not only the validators
    assert "POST /api/models/{model_id}/predict" in ok or "GET /api/models/{model_id}" in ok
    # no upload half-written by any generated body
    assert not [p for p in (ws.root / "uploads").iterdir() if p.name.startswith(".incoming")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fifty_concurrent_predictions_on_live_server(tmp_path: Path) -> None:
    import uvicorn

    ws = _workspace(tmp_path / "ws")
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(ws), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    perts = sorted(ws.model_info("fz")["train_perturbations"])

    async def many() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            out: list[httpx.Response] = [None] * 50  # type: ignore[list-item]

            async def one(i: int) -> None:
                body = {"perturbations": [perts[i % len(perts)]], "top_k": 5}
                out[i] = await client.post("/api/models/fz/predict", json=body)

            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(one, i)
            return out

    try:
        t0 = time.perf_counter()
        responses = anyio.run(many)
        seconds = time.perf_counter() - t0
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        ws.shutdown()
    assert [r.status_code for r in responses] == [200] * 50
    for i, r in enumerate(responses):
        pred = r.json()["predictions"][0]
        assert pred["perturbation"] == perts[i % len(perts)] and len(pred["top_genes"]) == 5
    # the same perturbation gives the same answer under concurrency
    first = {}
    for i, r in enumerate(responses):
        key = perts[i % len(perts)]
        first.setdefault(key, r.json()["predictions"][0]["top_genes"])
        assert r.json()["predictions"][0]["top_genes"] == first[key]
    print(f"50 concurrent predictions in {seconds:.2f} s")
