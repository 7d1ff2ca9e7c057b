"""The MCP server, driven by an in-process MCP client."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import numpy as np
import pytest
from numpy.testing import assert_allclose

pytest.importorskip("mcp")

from mcp import Client

from aivc.interfaces.api import Workspace
from aivc.interfaces.mcp_server import create_server


def _payload(result) -> dict:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


def test_mcp_tools_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    server = create_server(ws)

    async def talk() -> dict:
        out: dict = {}
        async with Client(server) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            out["tools"] = tools
            out["datasets"] = _payload(await client.call_tool("list_datasets", {}))
            out["instruments"] = _payload(await client.call_tool("list_instruments", {}))
            out["fit"] = _payload(
                await client.call_tool(
                    "fit_model",
                    {"dataset": "papalexi2021", "instrument": "train-mean", "name": "tm"},
                )
            )
            out["predict"] = _payload(
                await client.call_tool(
                    "predict_perturbation",
                    {"model": "tm", "perturbations": ["IFNGR1", "STAT1+JAK2"], "top_k": 5},
                )
            )
            out["explain"] = _payload(
                await client.call_tool(
                    "explain_prediction", {"model": "tm", "perturbation": "IFNGR1"}
                )
            )
            out["screen"] = _payload(
                await client.call_tool(
                    "run_screen", {"model": "tm", "objective": "down:JAK2", "top_k": 3}
                )
            )
            out["proposals"] = _payload(
                await client.call_tool(
                    "propose_experiments", {"model": "tm", "strategy": "random", "batch_size": 3}
                )
            )
            out["ledger"] = _payload(await client.call_tool("read_ledger", {}))
            out["unknown_gene"] = await client.call_tool(
                "predict_perturbation", {"model": "tm", "perturbations": ["NOTAGENE99"]}
            )
            out["unknown_model"] = await client.call_tool(
                "predict_perturbation", {"model": "nope", "perturbations": ["STAT1"]}
            )
        return out

    out = anyio.run(talk)
    assert {
        "list_datasets",
        "list_instruments",
        "fit_model",
        "predict_perturbation",
        "explain_prediction",
    } <= out["tools"]
    assert "papalexi2021" in [d["name"] for d in out["datasets"]["datasets"]]
    assert "linear-knowledge" in [i["name"] for i in out["instruments"]["instruments"]]
    assert out["fit"]["id"] == "tm" and len(out["fit"]["heldout_perturbations"]) == 5

    preds = out["predict"]["predictions"]
    assert [p["perturbation"] for p in preds] == ["IFNGR1", "STAT1+JAK2"]
    assert len(preds[0]["top_genes"]) == 5 and preds[0]["measured"]
    # the MCP answer is the same as the Python API's
    direct = ws.predict("tm", ["IFNGR1"], top_k=5)["predictions"][0]["top_genes"]
    assert preds[0]["top_genes"] == direct

    ex = out["explain"]
    assert ex["perturbation"] == "IFNGR1" and len(ex["top_genes"]) == 20
    assert {"term", "name", "q_value"} <= set(ex["pathways"][0]) if ex["pathways"] else ex["notes"]

    # default candidates: the 25 measured targets and the panel genes with knowledge
    assert len(out["screen"]["ranking"]) == 3 and out["screen"]["n_candidates"] == 274
    assert out["screen"]["candidates"].startswith(
        "candidates: 25 measured targets + 249 genes with knowledge"
    )
    assert len(out["proposals"]["proposals"]) == 3
    measured = set(out["fit"]["heldout_perturbations"])
    assert not {p["perturbation"] for p in out["proposals"]["proposals"]} & measured
    assert out["ledger"] == {"projects": []}
    assert {"run_screen", "propose_experiments", "read_ledger"} <= out["tools"]

    assert out["unknown_gene"].is_error and "NOTAGENE99" in out["unknown_gene"].content[0].text
    assert out["unknown_model"].is_error and "nope" in out["unknown_model"].content[0].text


def test_mcp_unknown_context_for_a_model_without_contexts_is_a_tool_error(
    tmp_path: Path,
) -> None:
    from aivc.data._synthetic import synthetic_perturbation_data

    ws = Workspace(tmp_path / "ws")
    adata, schema = synthetic_perturbation_data(
        n_genes=30, n_singles=5, n_doubles=0, cells_per_condition=15, n_control_cells=30
    )
    ws.add_dataset("synth", adata, schema)
    server = create_server(ws)

    async def talk() -> dict:
        async with Client(server) as client:
            await client.call_tool(
                "fit_model", {"dataset": "synth", "instrument": "additive", "name": "add"}
            )
            calls = {
                "predict_perturbation": {"perturbations": ["GENE001"]},
                "explain_prediction": {"perturbation": "GENE001"},
                "run_screen": {"objective": "down:GENE010"},
                "propose_experiments": {"strategy": "random", "candidates": ["GENE020"]},
            }
            return {
                tool: await client.call_tool(tool, {"model": "add", "context": "liver", **args})
                for tool, args in calls.items()
            }

    for tool, result in anyio.run(talk).items():
        assert result.is_error, tool
        assert "Unknown context 'liver'" in result.content[0].text, (tool, result.content)


def test_mcp_errors_name_the_tool_to_call_not_rest_endpoints(tmp_path: Path) -> None:
    server = create_server(Workspace(tmp_path / "ws"))

    async def talk():
        async with Client(server) as client:
            return await client.call_tool(
                "predict_perturbation", {"model": "nope", "perturbations": ["STAT1"]}
            )

    result = anyio.run(talk)
    text = result.content[0].text
    assert result.is_error and "Unknown model 'nope'" in text
    assert "fit one with the fit_model tool or list them with the list_models tool" in text
    assert "/api/" not in text and "POST" not in text


def test_in_tool_terms_maps_endpoints_and_says_when_no_tool_does_it() -> None:
    from aivc.interfaces.mcp_server import in_tool_terms

    assert in_tool_terms("see GET /api/datasets/papalexi2021.") == (
        "see the describe_dataset tool."
    )
    assert in_tool_terms("(POST /api/models/m1/predict)") == "(the predict_perturbation tool)"
    quota = in_tool_terms(
        "The workspace is full; delete models (DELETE /api/models/{id}) or start the server "
        "with a larger --max-workspace-gb."
    )
    assert "/api/" not in quota and "DELETE" not in quota
    assert quota.startswith("The workspace is full; delete models or start the server")
    assert "not available through MCP tools" in quota
    assert in_tool_terms("No endpoint here.") == "No endpoint here."


@pytest.mark.slow
def test_aivc_mcp_runs_on_stdio(tmp_path: Path) -> None:
    """``aivc mcp`` on stdio: a client finds a model fitted in the workspace and predicts with it;
    the answer is the Python API's for that model: ``additive`` gives a measured single its
    measured change and a pair the sum of its singles' changes."""
    import os
    import sys

    from mcp import StdioServerParameters

    from aivc.data import prepare
    from aivc.data._synthetic import synthetic_perturbation_data

    adata, schema = synthetic_perturbation_data(
        n_genes=30, n_singles=5, n_doubles=0, cells_per_condition=15, n_control_cells=30
    )
    ws = Workspace(tmp_path / "ws")
    ws.add_dataset("synth", adata, schema)  # in memory: the server sees only the saved model
    job = ws.submit_fit(dataset="synth", instrument="additive", name="add", holdout=False)
    assert ws.jobs.wait(job["id"], timeout=120).state == "succeeded"
    ws.shutdown()
    a, b, *_ = sorted(set(adata.obs[schema.perturbation_key].astype(str)) - {schema.control_label})
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "aivc.interfaces.cli", "mcp", "--workspace", str(tmp_path / "ws")],
        env={**os.environ},
    )

    async def talk() -> dict:
        out: dict = {}
        async with Client(params) as client:
            out["tools"] = {t.name for t in (await client.list_tools()).tools}
            out["models"] = _payload(await client.call_tool("list_models", {}))
            out["predict"] = _payload(
                await client.call_tool(
                    "predict_perturbation",
                    {"model": "add", "perturbations": [a, f"{a}+{b}"], "top_k": 30},
                )
            )
            out["unknown"] = await client.call_tool(
                "predict_perturbation", {"model": "add", "perturbations": ["NOTAGENE99"]}
            )
        return out

    out = anyio.run(talk)
    assert "predict_perturbation" in out["tools"]
    assert [(m["id"], m["instrument"]) for m in out["models"]["models"]] == [("add", "additive")]
    preds = out["predict"]["predictions"]
    assert [p["perturbation"] for p in preds] == [a, f"{a}+{b}"]
    # the same answer as the Python API's on the saved model (without the in-memory dataset)
    direct = Workspace(tmp_path / "ws").predict("add", [a, f"{a}+{b}"], top_k=30)
    assert out["predict"] == json.loads(json.dumps(direct))
    # the measured changes, from the log-normalised cells (all 30 genes are in the answer)
    data, _ = prepare(adata, schema)
    x, labels = data.X.toarray(), data.obs[schema.perturbation_key].astype(str).to_numpy()
    base = x[labels == schema.control_label].mean(axis=0)
    change = {t: x[labels == t].mean(axis=0) - base for t in (a, b)}
    genes = list(data.var_names)
    single, double = (
        np.array([{g["gene"]: g["delta"] for g in p["top_genes"]}[gene] for gene in genes])
        for p in preds
    )
    assert_allclose(single, change[a], rtol=1e-5, atol=1e-6)
    # (a pair's mean is floored at zero expression)
    assert_allclose(double, np.maximum(change[a] + change[b], -base), rtol=1e-5, atol=1e-6)
    assert np.abs(double - single).max() > 0.5
    assert out["unknown"].is_error and "NOTAGENE99" in out["unknown"].content[0].text


def test_mcp_prediction_with_a_case_mistake_suggests_the_gene(tmp_path: Path) -> None:
    from aivc.data._synthetic import synthetic_perturbation_data

    ws = Workspace(tmp_path / "ws")
    adata, schema = synthetic_perturbation_data(
        n_genes=30, n_singles=5, n_doubles=0, cells_per_condition=15, n_control_cells=30
    )
    ws.add_dataset("synth", adata, schema)
    server = create_server(ws)

    async def talk() -> dict:
        async with Client(server) as client:
            await client.call_tool(
                "fit_model", {"dataset": "synth", "instrument": "additive", "name": "add"}
            )
            calls = {
                "predict_perturbation": {"perturbations": ["gene001"]},
                "explain_prediction": {"perturbation": "gene001"},
            }
            return {
                tool: await client.call_tool(tool, {"model": "add", **args})
                for tool, args in calls.items()
            }

    for tool, result in anyio.run(talk).items():
        text = result.content[0].text
        assert result.is_error, tool
        assert "Unknown gene 'gene001'" in text and "Did you mean 'GENE001'" in text, (tool, text)
