"""Spatial tissues through the REST API and the MCP server: the virtual tissue needs no data folder."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import torch

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from aivc.interfaces.api import Workspace, WorkspaceValidationError, create_app

BASE = "http://127.0.0.1:8000"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Torch on one thread: where the cores are shared, more threads mostly wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    ws = Workspace(tmp_path / "ws")
    yield ws
    ws.shutdown()


@pytest.fixture
def client(workspace: Workspace):
    with TestClient(create_app(workspace), base_url=BASE) as c:
        yield c


def _payload(result) -> dict:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


def _points(out: dict) -> set[tuple[float, float]]:
    return set(zip(out["x"], out["y"], strict=True))


def test_virtual_tissue_by_cell_type_and_region(client: TestClient) -> None:
    from aivc.data import dataset_entry

    listed = {d["name"]: d for d in client.get("/api/spatial-datasets").json()}
    assert listed["virtual-tissue"]["colors"] == ["cell_type", "niche", "region"]
    # a registered tissue is offered exactly when the data folder has it
    assert ("osmfish_cortex" in listed) == dataset_entry("osmfish_cortex").path().exists()

    r = client.get("/api/spatial/virtual-tissue")
    assert r.status_code == 200, r.text
    full = r.json()
    assert full["color"] == "cell_type" and full["niche_model"] is None
    assert full["n_cells"] == full["n_shown"] == 3000
    assert len(full["x"]) == len(full["y"]) == len(full["section"]) == len(full["labels"]) == 3000
    assert all(isinstance(v, float) for v in full["x"][:10] + full["y"][:10])
    assert full["sections"] == ["S1", "S2"] and set(full["section"]) == {"S1", "S2"}
    assert len(full["categories"]) == 5 and set(full["labels"]) == set(full["categories"])

    # a seeded subsample: the same cells on every call and under every colour
    small = client.get("/api/spatial/virtual-tissue", params={"max_cells": 500}).json()
    assert small["n_shown"] == len(small["x"]) == 500 and small["n_cells"] == 3000
    assert small == client.get("/api/spatial/virtual-tissue", params={"max_cells": 500}).json()
    assert _points(small) <= _points(full)
    region = client.get(
        "/api/spatial/virtual-tissue", params={"color": "region", "max_cells": 500}
    ).json()
    assert (region["x"], region["y"]) == (small["x"], small["y"])
    assert region["categories"] == ["layer_1", "layer_2", "layer_3", "layer_4"]
    assert set(region["labels"]) <= set(region["categories"])


def test_niche_domains_are_fitted_once_per_dataset(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aivc.tissues import NicheModel

    fits: list[int] = []
    fit = NicheModel.fit

    def counted(self, adata, schema=None):
        fits.append(adata.n_obs)
        return fit(self, adata, schema)

    monkeypatch.setattr(NicheModel, "fit", counted)
    first = client.get("/api/spatial/virtual-tissue", params={"color": "niche"})
    assert first.status_code == 200, first.text
    out = first.json()
    # as many domains as cell types, niche_1 the largest
    assert out["categories"] == [f"niche_{k}" for k in range(1, 6)]
    sizes = Counter(out["labels"])
    assert [sizes[c] for c in out["categories"]] == sorted(sizes.values(), reverse=True)
    assert out["niche_model"]["instrument"] == "aivc-niche"
    assert out["niche_model"]["steps"] == 100 and out["niche_model"]["n_domains"] == 5
    again = client.get("/api/spatial/virtual-tissue", params={"color": "niche"}).json()
    assert again == out
    assert fits == [3000]  # the whole tissue, once


def test_spatial_errors(client: TestClient, workspace: Workspace) -> None:
    r = client.get("/api/spatial/not-a-tissue")
    assert r.status_code == 404
    assert "not-a-tissue" in r.json()["detail"] and "virtual-tissue" in r.json()["detail"]
    r = client.get("/api/spatial/not-a-tissue", params={"color": "blue"})
    assert r.status_code == 422  # the query is checked before the name
    r = client.get("/api/spatial/virtual-tissue", params={"color": "blue"})
    assert r.status_code == 422 and "cell_type" in r.text
    for bad in (0, 20001, "many"):
        r = client.get("/api/spatial/virtual-tissue", params={"max_cells": bad})
        assert r.status_code == 422, bad
    with pytest.raises(WorkspaceValidationError, match="max_cells must be between 1 and 20000"):
        workspace.spatial.map("virtual-tissue", max_cells=20001)
    with pytest.raises(WorkspaceValidationError, match="Unknown colour 'blue'"):
        workspace.spatial.summary("virtual-tissue", color="blue")


def test_registered_tissue_without_regions(data_dir: Path, client: TestClient) -> None:
    out = client.get("/api/spatial/osmfish_cortex", params={"max_cells": 1000}).json()
    assert out["n_cells"] == 4530 and out["n_shown"] == 1000 and out["sections"] == ["0"]
    assert "Pyramidals" in out["categories"]
    r = client.get("/api/spatial/osmfish_cortex", params={"color": "region"})
    assert r.status_code == 422 and "no annotated regions" in r.json()["detail"]
    listed = {d["name"]: d for d in client.get("/api/spatial-datasets").json()}
    assert listed["osmfish_cortex"]["colors"] == ["cell_type", "niche"]


def test_mcp_spatial_map(workspace: Workspace) -> None:
    pytest.importorskip("mcp")
    from mcp import Client

    from aivc.interfaces.mcp_server import create_server

    server = create_server(workspace)

    async def talk() -> dict:
        async with Client(server) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            return {
                "tools": tools,
                "cell_type": await client.call_tool("spatial_map", {"dataset": "virtual-tissue"}),
                "region": await client.call_tool(
                    "spatial_map", {"dataset": "virtual-tissue", "color": "region"}
                ),
                "unknown": await client.call_tool("spatial_map", {"dataset": "nope"}),
                "colour": await client.call_tool(
                    "spatial_map", {"dataset": "virtual-tissue", "color": "blue"}
                ),
            }

    out = anyio.run(talk)
    assert "spatial_map" in out["tools"]
    summary = _payload(out["cell_type"])
    assert summary["n_cells"] == 3000 and summary["sections"] == ["S1", "S2"]
    assert sum(sum(c.values()) for c in summary["counts"].values()) == 3000
    assert set(summary["counts"]["S1"]) <= set(summary["categories"])
    assert len(summary["first_rows"]) == 10
    assert set(summary["first_rows"][0]) == {"cell", "x", "y", "section", "label"}
    region = _payload(out["region"])
    assert region["categories"] == ["layer_1", "layer_2", "layer_3", "layer_4"]
    assert out["unknown"].is_error and "virtual-tissue" in out["unknown"].content[0].text
    assert out["colour"].is_error and "Unknown colour 'blue'" in out["colour"].content[0].text
