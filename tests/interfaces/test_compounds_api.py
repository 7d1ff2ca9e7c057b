"""Chemical models through the REST API and the MCP server: fit, dose response, errors."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("rdkit")

from fastapi.testclient import TestClient

from aivc.interfaces.api import Workspace, create_app

BASE = "http://127.0.0.1:8000"
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def test_fit_and_dose_response_over_rest(data_dir: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    with TestClient(create_app(ws), base_url=BASE) as client:
        assert "lincs_cellpainting_a549" in [
            d["name"] for d in client.get("/api/compound-datasets").json()
        ]
        r = client.post(
            "/api/compound-models", json={"dataset": "lincs_cellpainting_a549", "name": "lincs"}
        )
        assert r.status_code == 201, r.text
        assert r.json()["n_compounds"] == 58 and set(r.json()["chosen"]) == {"seen", "unseen"}
        body = {"compound": ASPIRIN, "doses": [0.1, 1.0, 10.0], "top_k": 4}
        r = client.post("/api/compound-models/lincs/predict", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert not out["measured"] and len(out["features"]) == 4
        for f in out["features"]:
            assert len(f["delta"]) == 3
            assert all(
                lo <= d <= hi for lo, d, hi in zip(f["lower"], f["delta"], f["upper"], strict=True)
            )
        measured = client.post(
            "/api/compound-models/lincs/predict", json={"compound": "bortezomib", "doses": [20.0]}
        ).json()
        assert measured["measured"] and measured["observed"][0]["dose_um"] == [20.0]
        # bad requests: unknown model, invalid SMILES, zero dose, too many doses, unknown unit
        assert client.post("/api/compound-models/nope/predict", json=body).status_code == 404
        bad = client.post("/api/compound-models/lincs/predict", json={**body, "compound": "C1CC("})
        assert bad.status_code == 404 and "SMILES" in bad.json()["detail"]
        assert (
            client.post(
                "/api/compound-models/lincs/predict", json={**body, "doses": [0.0]}
            ).status_code
            == 422
        )
        assert (
            client.post(
                "/api/compound-models/lincs/predict", json={**body, "doses": [1.0] * 51}
            ).status_code
            == 422
        )
        assert (
            client.post(
                "/api/compound-models/lincs/predict", json={**body, "dose_unit": "kg"}
            ).status_code
            == 422
        )
        again = client.post(
            "/api/compound-models", json={"dataset": "lincs_cellpainting_a549", "name": "lincs"}
        )
        assert again.status_code == 409
    # a new workspace object over the same folder finds the saved model and answers the same
    ws2 = Workspace(tmp_path / "ws")
    assert [m["id"] for m in ws2.compounds.list()] == ["lincs"]
    first = out["features"][0]
    same = ws2.compounds.predict("lincs", ASPIRIN, [0.1, 1.0, 10.0], top_k=4)["features"][0]
    assert same["feature"] == first["feature"] and np.allclose(same["delta"], first["delta"])


def test_compound_tools_over_mcp(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("mcp")
    from mcp import Client

    from aivc.interfaces.mcp_server import create_server

    server = create_server(Workspace(tmp_path / "ws"))

    async def talk() -> tuple[dict, dict, bool]:
        async with Client(server) as client:
            fit = await client.call_tool("fit_compound_model", {"name": "chem"})
            pred = await client.call_tool(
                "predict_compound",
                {"model": "chem", "compound": ASPIRIN, "doses": [1.0, 10.0], "top_k": 3},
            )
            bad = await client.call_tool(
                "predict_compound", {"model": "chem", "compound": ASPIRIN, "doses": [-1.0]}
            )
            as_dict = [
                r.structured_content
                if r.structured_content is not None
                else json.loads(r.content[0].text)
                for r in (fit, pred)
            ]
            return as_dict[0], as_dict[1], bad.is_error

    fit, pred, bad_is_error = anyio.run(talk)
    assert fit["id"] == "chem"
    assert len(pred["features"]) == 3 and pred["doses"] == [1.0, 10.0]
    assert bad_is_error


def test_temporal_models_over_rest_and_mcp(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("ot")
    ws = Workspace(tmp_path / "ws")
    with TestClient(create_app(ws), base_url=BASE) as client:
        assert "schiebinger2019" in [d["name"] for d in client.get("/api/temporal-datasets").json()]
        r = client.post(
            "/api/temporal-models", json={"dataset": "schiebinger2019", "name": "reprog"}
        )
        assert r.status_code == 201, r.text
        assert r.json()["times"] == [10.0, 10.5, 11.0]
        r = client.post(
            "/api/temporal-models/reprog/forecast",
            json={"times": [10.25, 11.5], "n_cells": 50, "top_k": 5},
        )
        assert r.status_code == 200, r.text
        out = r.json()
        assert [p["rule"] for p in out["predictions"]] == ["interpolate", "forecast"]
        assert (
            len(out["predictions"][0]["cells_pc"]) == 50
            and len(out["predictions"][1]["top_genes"]) == 5
        )
        assert out["predictions"][1]["compared_with_time"] == 11.0
        assert (
            client.post("/api/temporal-models/reprog/forecast", json={"times": [5.0]}).status_code
            == 422
        )
        assert (
            client.post("/api/temporal-models/none/forecast", json={"times": [11.0]}).status_code
            == 404
        )
        assert (
            client.post("/api/temporal-models", json={"dataset": "papalexi2021"}).status_code == 404
        )
    pytest.importorskip("mcp")
    from mcp import Client

    from aivc.interfaces.mcp_server import create_server

    server = create_server(Workspace(tmp_path / "ws"))

    async def talk() -> dict:
        async with Client(server) as client:
            r = await client.call_tool(
                "forecast_population", {"model": "reprog", "times": [12.0], "top_k": 3}
            )
            return (
                r.structured_content
                if r.structured_content is not None
                else json.loads(r.content[0].text)
            )

    got = anyio.run(talk)
    assert (
        got["predictions"][0]["rule"] == "forecast" and len(got["predictions"][0]["top_genes"]) == 3
    )
