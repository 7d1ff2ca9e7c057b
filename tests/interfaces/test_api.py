"""REST API: datasets, fit jobs, predictions, calibration, uploads, errors and auth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from aivc.instruments import load_model_dir
from aivc.interfaces.api import Workspace, create_app

#: The address the test clients call: a loopback name, as a browser on this machine would.
BASE = "http://127.0.0.1:8000"


def _synthetic(seed: int = 0):
    from aivc.data._synthetic import synthetic_perturbation_data

    return synthetic_perturbation_data(
        n_genes=60, n_singles=10, n_doubles=3, cells_per_condition=25, n_control_cells=60, seed=seed
    )


def _wait(client: TestClient, job_id: str) -> dict:
    import time

    for _ in range(1500):
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in {"succeeded", "failed", "cancelled"}:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws", max_upload_bytes=2_000_000)
    adata, schema = _synthetic()
    ws.add_dataset("synth", adata, schema, description="synthetic test data")
    return ws


@pytest.fixture
def client(workspace: Workspace):
    with TestClient(create_app(workspace), base_url=BASE) as c:
        yield c


@pytest.fixture
def fitted(client: TestClient) -> str:
    r = client.post(
        "/api/models", json={"dataset": "synth", "instrument": "additive", "name": "add"}
    )
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["id"])
    assert job["state"] == "succeeded", job
    return "add"


def test_lists_and_dataset_views(client: TestClient) -> None:
    names = [d["name"] for d in client.get("/api/datasets").json()]
    assert "synth" in names
    info = client.get("/api/datasets/synth").json()
    assert info["n_genes"] == 60 and info["control_label"] == "control"
    assert len(info["perturbations"]) == 13 and info["n_control_cells"] == 60
    emb = client.get("/api/datasets/synth/embedding", params={"n_cells": 100, "seed": 1}).json()
    assert len(emb["x"]) == len(emb["y"]) == len(emb["perturbation"]) == 100
    assert emb["explained_variance_ratio"][0] >= emb["explained_variance_ratio"][1] > 0
    instruments = {i["name"]: i for i in client.get("/api/instruments").json()}
    assert {"train-mean", "additive", "linear-knowledge"} <= set(instruments)
    assert "combination" in instruments["additive"]["capabilities"]
    schema = client.get("/openapi.json").json()
    assert "/api/models/{model_id}/predict" in schema["paths"]


def test_fit_predict_and_restart(client: TestClient, fitted: str, workspace: Workspace) -> None:
    from aivc.data import prepare, pseudobulk

    model = client.get(f"/api/models/{fitted}").json()
    heldout = model["heldout_perturbations"]
    assert len(heldout) == 3  # a fifth of 13 perturbations, seeded
    assert not set(heldout) & set(model["train_perturbations"])
    assert (workspace.root / "models" / fitted / "aivc-model.json").exists()

    single = next(p for p in heldout if "+" not in p)
    r = client.post(
        f"/api/models/{fitted}/predict",
        json={"perturbations": [single, "GENE000+GENE001"], "top_k": 5, "all_genes": True},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["has_intervals"] is False
    p0, p1 = out["predictions"]
    assert p0["measured"] and p0["heldout"] and not p0["in_training"]
    assert len(p0["top_genes"]) == 5 and len(p0["delta"]) == 60
    mags = [abs(g["delta"]) for g in p0["top_genes"]]
    assert mags == sorted(mags, reverse=True)
    # the observed change is the measured pseudobulk change against the controls
    adata, schema = _synthetic()
    prepared, schema = prepare(adata, schema)
    means, _ = pseudobulk(prepared, schema)
    expected = (means.loc[single] - means.loc["control"]).to_numpy()
    np.testing.assert_allclose(p0["observed"], expected, atol=1e-5)
    assert p1["perturbation"] == "GENE000+GENE001" and not p1["measured"]
    assert p1["observed"] is None
    assert p0["embedding"] is None  # no embedding computed yet

    # after the page asked for the embedding, predictions are placed in it
    client.get("/api/datasets/synth/embedding")
    r = client.post(
        f"/api/models/{fitted}/predict", json={"perturbations": [single], "all_genes": True}
    )
    emb = r.json()["predictions"][0]["embedding"]
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=0).fit(prepared.X.toarray())
    ctrl = means.loc["control"].to_numpy()
    np.testing.assert_allclose(emb["control"], pca.transform(ctrl[None])[0], atol=1e-3)
    np.testing.assert_allclose(
        emb["predicted"], pca.transform((ctrl + np.asarray(p0["delta"]))[None])[0], atol=1e-3
    )
    np.testing.assert_allclose(
        emb["observed"], pca.transform((ctrl + expected)[None])[0], atol=1e-3
    )

    # a new server on the same workspace finds the saved model
    ws2 = Workspace(workspace.root)
    with TestClient(create_app(ws2), base_url=BASE) as c2:
        assert [m["id"] for m in c2.get("/api/models").json()] == [fitted]
        r2 = c2.post(f"/api/models/{fitted}/predict", json={"perturbations": [single]})
        p2 = r2.json()["predictions"][0]
        assert p2["top_genes"][0]["delta"] == out["predictions"][0]["top_genes"][0]["delta"]
        # the in-memory training data are not offered by the new server: no measurement to show
        assert not p2["measured"] and p2["top_genes"][0]["observed"] is None


def test_errors_are_json_with_right_status(client: TestClient, fitted: str) -> None:
    cases = [
        ("post", f"/api/models/{fitted}/predict", {"perturbations": ["NOTAGENE99"]}, 404),
        ("post", f"/api/models/{fitted}/predict", {"perturbations": ["GENE001+"]}, 422),
        ("post", f"/api/models/{fitted}/predict", {"perturbations": ["control"]}, 422),
        ("post", f"/api/models/{fitted}/predict", {"perturbations": []}, 422),
        ("post", f"/api/models/{fitted}/predict", {"perturbations": ["GENE001"], "bogus": 1}, 422),
        ("post", "/api/models/nope/predict", {"perturbations": ["GENE001"]}, 404),
        ("get", "/api/models/nope", None, 404),
        ("get", "/api/datasets/nope", None, 404),
        ("get", "/api/jobs/nope", None, 404),
        ("post", "/api/models", {"dataset": "nope", "instrument": "train-mean"}, 404),
        ("post", "/api/models", {"dataset": "synth", "instrument": "nope"}, 404),
        (
            "post",
            "/api/models",
            {"dataset": "synth", "instrument": "linear", "params": {"x": 1}},
            422,
        ),
        (
            "post",
            "/api/models",
            {"dataset": "synth", "instrument": "train-mean", "name": "add"},
            409,
        ),
        (
            "post",
            "/api/models",
            {"dataset": "synth", "instrument": "train-mean", "name": "../x"},
            422,
        ),
        ("get", f"/api/models/{fitted}/calibration", None, 422),
    ]
    for method, url, body, status in cases:
        r = client.request(method, url, json=body)
        assert r.status_code == status, (url, body, r.status_code, r.text)
        detail = r.json()["detail"]
        assert detail, (url, r.text)
    r = client.post(f"/api/models/{fitted}/predict", json={"perturbations": ["GENE0001"]})
    assert "Did you mean" in r.json()["detail"]


def test_unknown_context_for_a_model_without_contexts_is_404(
    client: TestClient, fitted: str
) -> None:
    """A context given to a model trained without contexts was ignored (200); it is unknown."""
    requests = {
        "predict": {"perturbations": ["GENE001"], "context": "liver"},
        "screen": {"objective": "down:GENE010", "context": "liver"},
        "explain": {"perturbation": "GENE001", "context": "liver"},
        "proposals": {"strategy": "random", "candidates": ["GENE030"], "context": "liver"},
    }
    for path, body in requests.items():
        r = client.post(f"/api/models/{fitted}/{path}", json=body)
        assert r.status_code == 404, (path, r.status_code, r.text)
        detail = r.json()["detail"]
        assert "Unknown context 'liver'" in detail and "trained without contexts" in detail
    # without a context the same requests answer
    r = client.post(f"/api/models/{fitted}/predict", json={"perturbations": ["GENE001"]})
    assert r.status_code == 200, r.text


def test_intervals_and_calibration(client: TestClient, workspace: Workspace) -> None:
    r = client.post(
        "/api/models",
        json={"dataset": "synth", "instrument": "conformal", "params": {"base": "additive"}},
    )
    job = _wait(client, r.json()["id"])
    assert job["state"] == "succeeded", job
    model_id = job["result"]["id"]
    out = client.post(
        f"/api/models/{model_id}/predict",
        json={"perturbations": ["GENE001"], "level": 0.8, "all_genes": True},
    ).json()
    assert out["has_intervals"] and out["level"] == 0.8
    p = out["predictions"][0]
    lower, delta, upper = map(np.asarray, (p["lower"], p["delta"], p["upper"]))
    # the served bounds are the saved model's own intervals at the asked level, both of them
    own = load_model_dir(workspace.root / "models" / model_id).model
    want = own.predict_interval(["GENE001"], level=0.8)
    assert list(want.delta.columns) == p["genes"]
    assert_allclose(delta, want.delta.iloc[0], atol=1e-4)
    assert_allclose(lower, want.lower.iloc[0], atol=1e-4)
    assert_allclose(upper, want.upper.iloc[0], atol=1e-4)
    assert np.isfinite(upper).all() and (upper - lower).max() < 10
    # DE calls: exactly the genes whose interval excludes zero, with the sign of the change.
    excludes = (lower > 0) | (upper < 0)
    assert {c["gene"] for c in p["de_genes"]} == {
        g for g, e in zip(p["genes"], excludes, strict=True) if e
    }
    for call in p["de_genes"]:
        j = p["genes"].index(call["gene"])
        assert call["call"] == ("up" if lower[j] > 0 else "down")
    assert {g["de"] for g in p["top_genes"]} <= {"up", "down", "none"}
    cal = client.get(f"/api/models/{model_id}/calibration").json()
    assert cal["n_perturbations"] == 3
    assert cal["coverage"] == sorted(cal["coverage"])  # wider intervals cover more
    assert all(0 <= c <= 1 for c in cal["coverage"])


def test_cancel_queued_job_and_conflicts(client: TestClient) -> None:
    first = client.post("/api/models", json={"dataset": "synth", "instrument": "train-mean"}).json()
    second = client.post(
        "/api/models", json={"dataset": "synth", "instrument": "train-mean", "name": "later"}
    ).json()
    r = client.delete(f"/api/jobs/{second['id']}")
    assert r.status_code == 200
    assert _wait(client, second["id"])["state"] == "cancelled"
    assert _wait(client, first["id"])["state"] == "succeeded"
    assert client.delete(f"/api/jobs/{first['id']}").status_code == 409
    assert "later" not in [m["id"] for m in client.get("/api/models").json()]
    # the cancelled job's name is free again
    again = client.post(
        "/api/models", json={"dataset": "synth", "instrument": "train-mean", "name": "later"}
    )
    assert again.status_code == 202
    assert _wait(client, again.json()["id"])["state"] == "succeeded"
    assert client.delete("/api/models/later").status_code == 204
    assert client.get("/api/models/later").status_code == 404


def test_suggest(client: TestClient, fitted: str) -> None:
    items = client.get(f"/api/models/{fitted}/suggest", params={"q": "gene00"}).json()
    assert items and all(i.upper().startswith("GENE00") for i in items)
    combo = client.get(f"/api/models/{fitted}/suggest", params={"q": "GENE001+GENE00"}).json()
    assert combo and all(i.startswith("GENE001+GENE00") for i in combo)


def test_token(workspace: Workspace) -> None:
    with TestClient(create_app(workspace, token="s3cret"), base_url=BASE) as c:
        assert c.get("/api/datasets").status_code == 401
        assert c.get("/api/datasets", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/api/datasets", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/").status_code == 200  # the page itself holds no data


def _h5ad_bytes(adata) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.h5ad"
        adata.write_h5ad(path)
        return path.read_bytes()


def _upload_dir_files(ws: Workspace) -> list[str]:
    return sorted(p.name for p in (ws.root / "uploads").iterdir())


def test_uploads(client: TestClient, fitted: str, workspace: Workspace) -> None:
    adata, _ = _synthetic()
    labels = adata.obs["perturbation"].astype(str)
    measured = sorted(set(labels) - {"control"})[:2]
    good = adata[labels.isin(["control", *measured]).to_numpy()].copy()

    # malformed, wrong schema, not counts and too large: refused, nothing written
    bad_schema = good.copy()
    del bad_schema.obs["perturbation"]
    not_counts = good.copy()
    not_counts.X = not_counts.X * 0.5
    no_controls = good[good.obs["perturbation"].astype(str) != "control"].copy()
    refused = [
        (b"definitely not hdf5", 422),
        (b"\x89HDF\r\n\x1a\n" + b"\x00" * 100, 422),  # HDF5 signature, truncated
        (_h5ad_bytes(bad_schema), 422),
        (_h5ad_bytes(not_counts), 422),
        (_h5ad_bytes(no_controls), 422),
        (b"\x89HDF\r\n\x1a\n" + b"\x00" * 2_100_000, 413),
    ]
    for body, status in refused:
        r = client.post(
            "/api/datasets/synth/measurements",
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == status, (status, r.text)
        assert r.json()["detail"]
        assert _upload_dir_files(workspace) == []
    # chunked upload without a length header is cut off at the limit too
    r = client.post(
        "/api/datasets/synth/measurements",
        content=iter([b"\x89HDF\r\n\x1a\n", b"\x00" * 2_100_000]),
    )
    assert r.status_code == 413 and _upload_dir_files(workspace) == []

    r = client.post(
        "/api/datasets/synth/measurements",
        params={"filename": "round1.h5ad"},
        content=_h5ad_bytes(good),
    )
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["perturbations"] == measured and meta["n_shared_genes"] == 60
    assert _upload_dir_files(workspace) == [f"{meta['id']}.h5ad", f"{meta['id']}.json"]
    assert (
        json.loads((workspace.root / "uploads" / f"{meta['id']}.json").read_text())["id"]
        == meta["id"]
    )
    # predictions now compare with the newest measurement
    p = client.post(f"/api/models/{fitted}/predict", json={"perturbations": [measured[0]]}).json()
    assert p["predictions"][0]["observed_source"] == f"upload:{meta['id']}"
    assert client.get("/api/uploads").json()[0]["id"] == meta["id"]
    assert client.post("/api/datasets/nope/measurements", content=b"x").status_code == 404


def test_serve_refuses_public_bind_without_token(monkeypatch) -> None:
    from typer.testing import CliRunner

    from aivc.interfaces.cli import app

    monkeypatch.delenv("AIVC_API_TOKEN", raising=False)
    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert r.exit_code != 0
    assert "without a token" in r.output
    from aivc.interfaces._cli_serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_screen_proposals_and_ledger(client: TestClient, fitted: str, workspace: Workspace) -> None:
    from aivc.experiments._ledger import Ledger

    genes = client.get(f"/api/models/{fitted}").json()["train_perturbations"]
    target = "GENE010"
    r = client.post(
        f"/api/models/{fitted}/screen", json={"objective": f"down:{target}", "top_k": 5}
    )
    assert r.status_code == 200, r.text
    out = r.json()
    # the default candidates: the measured targets (held-out ones included); the synthetic
    # genes have no knowledge, so no other gene is a default candidate when the tables are there
    measured_targets = {
        t
        for p in genes + client.get(f"/api/models/{fitted}").json()["heldout_perturbations"]
        for t in p.split("+")
    }
    assert out["candidates"].startswith(f"candidates: {len(measured_targets)} measured targets")
    assert out["n_candidates"] in (len(measured_targets), 60) and len(out["ranking"]) == 5
    scores = [row["score"] for row in out["ranking"]]
    assert scores == sorted(scores, reverse=True)
    # the score is minus the predicted mean of the target under each candidate
    from aivc.instruments import PerturbationModel

    model = PerturbationModel.load(workspace.root / "models" / fitted)
    best = out["ranking"][0]["perturbation"]
    j = list(model.genes_).index(target)
    assert np.isclose(-model.predict_mean([best])[0, j], scores[0], atol=1e-6)
    assert (
        client.post(f"/api/models/{fitted}/screen", json={"objective": "down:NOPE1"}).status_code
        == 422
    )

    every_gene = [f"GENE{i:03d}" for i in range(60)]
    ask = {"batch_size": 4, "strategy": "gp-ucb", "candidates": every_gene}
    r = client.post(f"/api/models/{fitted}/proposals", json=ask)
    assert r.status_code == 200, r.text
    assert r.json()["candidates"] == "candidates: 60 given"
    props = [p["perturbation"] for p in r.json()["proposals"]]
    measured = set(genes) | set(client.get(f"/api/models/{fitted}").json()["heldout_perturbations"])
    assert len(props) == 4 and not set(props) & measured
    assert r.json()["n_measured"] == len([g for g in measured if "+" not in g])
    again = client.post(f"/api/models/{fitted}/proposals", json=ask)
    assert [p["perturbation"] for p in again.json()["proposals"]] == props  # seeded
    bad = client.post(f"/api/models/{fitted}/proposals", json={"strategy": "nope"})
    assert bad.status_code == 404

    assert client.get("/api/ledger/projects").json() == []
    with Ledger(workspace.ledger_url) as led:
        led.create_project("screen-1", config={"strategy": "random"})
    projects = client.get("/api/ledger/projects").json()
    assert [p["name"] for p in projects] == ["screen-1"]
    detail = client.get("/api/ledger/projects/screen-1").json()
    assert detail["state"] == {"round": 0, "status": "new"} and detail["rounds"] == []
    assert client.get("/api/ledger/projects/other").status_code == 404


def test_running_job_stops_at_next_step_when_cancelled() -> None:
    import threading

    from aivc.interfaces.api import JobManager

    jobs = JobManager(max_workers=1)
    started, release = threading.Event(), threading.Event()
    steps: list[int] = []
    cleaned: list[bool] = []

    def work(rep) -> dict:
        for i in range(5):
            rep.update(i / 5, f"step {i}")
            steps.append(i)
            started.set()
            release.wait(5)
        return {"steps": len(steps)}

    job = jobs.submit("test", {}, work, cleanup=lambda: cleaned.append(True))
    assert started.wait(5)
    assert jobs.get(job.id).state == "running" and jobs.get(job.id).message == "step 0"
    jobs.cancel(job.id)
    release.set()
    done = jobs.wait(job.id, timeout=10)
    assert done.state == "cancelled" and done.result is None and steps == [0]
    assert cleaned == [True]
    failing = jobs.submit("test", {}, lambda rep: 1 / 0)
    failed = jobs.wait(failing.id, timeout=10)
    assert failed.state == "failed" and failed.error_id and failed.error_id in failed.error
    jobs.shutdown()


@pytest.mark.parametrize(
    "upload_ids",
    [("f" * 12, "0" * 12), ("0" * 12, "f" * 12)],
    ids=["older-id-larger", "older-id-smaller"],
)
def test_newest_upload_wins_whatever_the_ids(
    client: TestClient, fitted: str, monkeypatch, upload_ids: tuple[str, str]
) -> None:
    """Two uploads of one perturbation: predictions and GET /api/uploads follow upload time, not ids."""
    import types

    from aivc.experiments import measured_changes
    from aivc.interfaces.api import _uploads

    adata, schema = _synthetic()
    labels = adata.obs["perturbation"].astype(str)
    pert = sorted(set(labels) - {"control"})[0]
    older = adata[labels.isin(["control", pert]).to_numpy()].copy()
    newer = older.copy()
    perturbed = (newer.obs["perturbation"].astype(str) == pert).to_numpy()
    x = np.asarray(newer.X.todense() if hasattr(newer.X, "todense") else newer.X).copy()
    x[np.ix_(perturbed, np.arange(10))] = x[np.ix_(perturbed, np.arange(10))] * 4 + 3
    newer.X = x

    # ids that sort the uploads one way, then the other: only the upload time may decide
    ids = iter(upload_ids)
    fake_uuid = types.SimpleNamespace(uuid4=lambda: types.SimpleNamespace(hex=next(ids) + "0" * 20))
    monkeypatch.setattr(_uploads, "uuid", fake_uuid)
    metas = []
    for name, data in [("older.h5ad", older), ("newer.h5ad", newer)]:
        r = client.post(
            "/api/datasets/synth/measurements",
            params={"filename": name},
            content=_h5ad_bytes(data),
        )
        assert r.status_code == 201, r.text
        metas.append(r.json())
    old_id, new_id = (m["id"] for m in metas)
    assert (old_id, new_id) == upload_ids

    listed = client.get("/api/uploads").json()
    assert [u["id"] for u in listed] == [new_id, old_id]
    assert [u["filename"] for u in listed] == ["newer.h5ad", "older.h5ad"]

    p = client.post(
        f"/api/models/{fitted}/predict", json={"perturbations": [pert], "all_genes": True}
    ).json()["predictions"][0]
    assert p["measured"] and p["observed_source"] == f"upload:{new_id}"
    expected = measured_changes(newer, schema, counts=True).delta.loc[pert, p["genes"]]
    stale = measured_changes(older, schema, counts=True).delta.loc[pert, p["genes"]]
    assert not np.allclose(expected, stale, atol=1e-3)
    assert_allclose(np.asarray(p["observed"], dtype=float), expected.to_numpy(), atol=1e-4)
