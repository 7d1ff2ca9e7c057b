"""The aivc MCP server: the virtual cell as tools for agents.

Tools list datasets, instruments and fitted models, fit a model, predict
perturbations (with intervals when the model has them), explain a prediction
(top genes, enriched GO biological processes among the predicted DE genes,
responding network neighbours), read measured results and summarise a
spatial tissue by cell type, niche or region. They share one
:class:`aivc.interfaces.api.Workspace` with the REST API, so a model fitted by
either is visible to both. ``aivc mcp`` serves it on stdio.

>>> from mcp import Client
>>> server = create_server("aivc-workspace")
>>> async with Client(server) as client:  # in-process, e.g. in tests
...     await client.call_tool("list_datasets", {})
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from aivc.interfaces.api import Workspace

__all__ = ["create_server", "in_tool_terms"]

F = TypeVar("F", bound=Callable[..., Any])

#: The tool that does what a REST endpoint does: (method, path pattern, tool).
#: Endpoints with no tool (deleting a model, cancelling a job) are absent.
_TOOL_OF_ENDPOINT: tuple[tuple[str, str, str], ...] = (
    ("POST", r"/models", "fit_model"),
    ("GET", r"/models(/[^/\s]+)?", "list_models"),
    ("POST", r"/models/[^/\s]+/predict", "predict_perturbation"),
    ("POST", r"/models/[^/\s]+/explain", "explain_prediction"),
    ("POST", r"/models/[^/\s]+/screen", "run_screen"),
    ("POST", r"/models/[^/\s]+/proposals", "propose_experiments"),
    ("GET", r"/models/[^/\s]+/suggest", "propose_experiments"),
    ("GET", r"/datasets", "list_datasets"),
    ("GET", r"/datasets/[^/\s]+", "describe_dataset"),
    ("GET", r"/instruments", "list_instruments"),
    ("GET", r"/uploads(/[^/\s]+)?", "list_measurements"),
    ("GET", r"/ledger/projects(/[^/\s]+)?", "read_ledger"),
)
_ENDPOINT = re.compile(
    r"(?P<open>\()?\b(?P<method>GET|POST|PUT|PATCH|DELETE) /api(?P<path>/\S*?)"
    r"(?P<close>\))?(?=[\s.,;:)]|$)"
)


def _tool_of(method: str, path: str) -> str | None:
    for m, pattern, tool in _TOOL_OF_ENDPOINT:
        if m == method and re.fullmatch(pattern, path):
            return tool
    return None


def in_tool_terms(message: str) -> str:
    """An error message of the workspace, with REST endpoints replaced by the MCP tools to call.

    The workspace speaks to REST clients ("fit one with POST /api/models"); an
    agent calls tools ("fit one with the fit_model tool"). An endpoint that no
    tool offers is dropped, and the message then says that this step is not
    available through MCP.

    Examples
    --------
    >>> in_tool_terms("Unknown model 'm'; fit one with POST /api/models or list them with GET /api/models.")
    "Unknown model 'm'; fit one with the fit_model tool or list them with the list_models tool."
    """
    missing: list[str] = []

    def swap(match: re.Match[str]) -> str:
        tool = _tool_of(match["method"], match["path"].rstrip("/"))
        opened, closed = match["open"] or "", match["close"] or ""
        if tool is not None:
            return f"{opened}the {tool} tool{closed}"
        missing.append(match["method"])
        return "" if opened and closed else f"{opened}a step that no MCP tool offers{closed}"

    text = _ENDPOINT.sub(swap, message)
    text = re.sub(r" {2,}", " ", re.sub(r" +([.,;:])", r"\1", text))
    if missing:
        text = (
            text.rstrip()
            + " (Some of this is not available through MCP tools; "
            + "the person running this server can do it.)"
        )
    return text


def _anticipated(fn: F) -> F:
    """Report the workspace's expected errors (unknown gene, bad label...) to the agent as tool errors."""
    from mcp.server.mcpserver.exceptions import ToolError

    from aivc.data import DataValidationError
    from aivc.interfaces.api import ConflictError, NotFoundError, WorkspaceValidationError

    expected = (
        NotFoundError,
        WorkspaceValidationError,
        ConflictError,
        DataValidationError,
        ValueError,
        TimeoutError,
        _FitFailedError,
    )

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except expected as e:
            raise ToolError(in_tool_terms(str(e))) from e

    return wrapper  # type: ignore[return-value]


class _FitFailedError(RuntimeError):
    """A fit job ended without a model."""


INSTRUCTIONS = (
    "aivc predicts how cells respond to genetic perturbations. Typical flow: list_datasets, "
    "list_instruments, fit_model (a dataset + an instrument, a few seconds for baselines), then "
    "predict_perturbation with labels such as 'STAT1' or 'A+B', explain_prediction for pathways, "
    "run_screen to rank candidates under an objective, and propose_experiments for what to measure next. Predictions are changes of mean "
    "log-normalised expression relative to control cells; models with the 'uncertainty' "
    "capability also give intervals. Compare with the measured change where one exists "
    "('measured': true) before trusting a prediction. For compounds: fit_compound_model on a "
    "profile dataset (e.g. lincs_cellpainting_a549), then predict_compound with a name or a "
    "SMILES and a list of doses (a dose-response curve of the most changed features, with intervals). "
    "For time courses: fit_temporal_model, then forecast_population at times between or after "
    "the measured ones. For tissues: spatial_map summarises where cell types, niches (spatial "
    "domains of a niche model) or annotated regions lie in each section."
)


def create_server(workspace: Workspace | str | Path, *, fit_timeout: float = 600.0) -> MCPServer:
    """Build the MCP server over a workspace (a :class:`Workspace` or its directory)."""
    from mcp.server.mcpserver import MCPServer

    from aivc._version import __version__
    from aivc.interfaces.api import Workspace

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    server = MCPServer(name="aivc", version=__version__, instructions=INSTRUCTIONS)

    @server.tool()
    @_anticipated
    def list_datasets() -> dict[str, Any]:
        """Perturbation datasets available to fit models on."""
        return {"datasets": ws.list_datasets()}

    @server.tool()
    @_anticipated
    def describe_dataset(name: str) -> dict[str, Any]:
        """Cells, genes, measured perturbations (with cell counts) and contexts of a dataset."""
        return ws.dataset_info(name)

    @server.tool()
    @_anticipated
    def list_instruments() -> dict[str, Any]:
        """Registered perturbation models and baselines, their capabilities and parameters."""
        return {"instruments": ws.list_instruments()}

    @server.tool()
    @_anticipated
    def list_models() -> dict[str, Any]:
        """Models already fitted in this workspace (use their id to predict)."""
        return {"models": ws.list_models()}

    @server.tool()
    @_anticipated
    def fit_model(
        dataset: str,
        instrument: str = "linear-knowledge",
        params: dict[str, Any] | None = None,
        name: str | None = None,
        holdout: bool = True,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Fit an instrument on a dataset and wait for it; returns the model record.

        With holdout (default), a seeded fifth of the measured perturbations is
        kept out of training so predictions for them can be checked against the
        measurement.
        """
        job = ws.submit_fit(
            dataset=dataset,
            instrument=instrument,
            params=params,
            name=name,
            holdout=holdout,
            seed=seed,
        )
        done = ws.jobs.wait(job["id"], timeout=fit_timeout)
        if done.state != "succeeded":
            msg = (
                f"Fitting {instrument!r} on {dataset!r} {done.state}: {done.error or done.message}"
            )
            raise _FitFailedError(msg)
        return done.result or {}

    @server.tool()
    @_anticipated
    def predict_perturbation(
        model: str,
        perturbations: list[str],
        context: str | None = None,
        top_k: int = 10,
        level: float = 0.9,
    ) -> dict[str, Any]:
        """Predict the change of mean expression for perturbations ('GENE' or 'A+B').

        Returns, for each perturbation, the top_k most changed genes with the
        predicted change, the interval at `level` when the model gives one, and
        the measured change when the perturbation was measured.
        """
        if not 1 <= top_k <= 200:
            msg = f"top_k must be between 1 and 200. Got {top_k} instead."
            raise ValueError(msg)
        if not 0 < level < 1:
            msg = f"level must be between 0 and 1. Got {level} instead."
            raise ValueError(msg)
        if not perturbations or len(perturbations) > 50:
            msg = f"Pass 1 to 50 perturbations. Got {len(perturbations)}."
            raise ValueError(msg)
        return ws.predict(model, perturbations, context=context, top_k=top_k, level=level)

    @server.tool()
    @_anticipated
    def fit_compound_model(
        dataset: str = "lincs_cellpainting_a549", name: str | None = None, seed: int = 0
    ) -> dict[str, Any]:
        """Fit the chemical manipulator (aivc-chem) on a profile dataset of compounds at doses.

        Returns the model record: its id, compounds, and the candidates it chose
        on its training data for measured compounds at new doses and for new compounds.
        """
        return ws.compounds.fit(dataset, name=name, seed=seed)

    @server.tool()
    @_anticipated
    def predict_compound(
        model: str,
        compound: str,
        doses: list[float],
        dose_unit: str = "uM",
        level: float = 0.9,
        top_k: int = 10,
    ) -> dict[str, Any]:
        """Predict a compound's profile change at each dose (a dose-response curve).

        `compound` is a name the model was trained on or any SMILES. Returns the
        top_k most changed features, each with the predicted change and its
        interval at `level` per dose, and the measured changes if the compound
        was measured.
        """
        if not 1 <= top_k <= 100:
            msg = f"top_k must be between 1 and 100. Got {top_k} instead."
            raise ValueError(msg)
        if not 0 < level < 1:
            msg = f"level must be between 0 and 1. Got {level} instead."
            raise ValueError(msg)
        return ws.compounds.predict(
            model, compound, doses, dose_unit=dose_unit, level=level, top_k=top_k
        )

    @server.tool()
    @_anticipated
    def fit_temporal_model(
        dataset: str = "schiebinger2019", name: str | None = None, seed: int = 0
    ) -> dict[str, Any]:
        """Fit the temporal manipulator (aivc-time) on a time course; returns its measured times
        and the candidates it chose for interpolation and forecasting."""
        return ws.temporal.fit(dataset, name=name, seed=seed)

    @server.tool()
    @_anticipated
    def forecast_population(
        model: str, times: list[float], n_cells: int = 200, top_k: int = 10
    ) -> dict[str, Any]:
        """Predict the cell population at each time (between measured times, or after the last).

        Returns, per time, the predicted cells on the first two principal components and the
        top_k genes whose mean changes most from the last measured time before it.
        """
        if not 1 <= n_cells <= 2000:
            msg = f"n_cells must be between 1 and 2000. Got {n_cells} instead."
            raise ValueError(msg)
        return ws.temporal.forecast(model, times, n_cells=n_cells, top_k=top_k)

    @server.tool()
    @_anticipated
    def spatial_map(dataset: str = "virtual-tissue", color: str = "cell_type") -> dict[str, Any]:
        """Summarise a spatial tissue coloured by 'cell_type', 'niche' or 'region'.

        'virtual-tissue' (simulated) is always available; the answer to an unknown name lists
        the others. Returns the categories, the cells per category in each section, the extent
        of the coordinates and the first cells with their x, y, section and label. 'niche' fits
        a small niche model on the whole tissue on first use (seconds) and clusters its
        embedding into as many spatial domains as there are cell types.
        """
        return ws.spatial.summary(dataset, color=color)

    @server.tool()
    @_anticipated
    def explain_prediction(
        model: str, perturbation: str, context: str | None = None, n_top: int = 20
    ) -> dict[str, Any]:
        """Explain one prediction: top genes, GO biological processes enriched among the
        predicted DE genes (hypergeometric, BH-adjusted), network neighbours of the target
        that respond, and which knowledge source the prediction resembles."""
        return ws.explain(model, perturbation, context=context, n_top=n_top)

    @server.tool()
    @_anticipated
    def run_screen(
        model: str,
        objective: str,
        candidates: list[str] | None = None,
        pairs_of: list[str] | None = None,
        context: str | None = None,
        top_k: int = 20,
    ) -> dict[str, Any]:
        """A small virtual screen: score candidate perturbations under an objective
        ('up:GENE', 'down:GENE' or 'towards:CONTEXT') and return the top_k. Default
        candidates: the model's measured targets and the genes of its panel with prior
        knowledge (the answer's 'candidates' says how many of each); pairs_of ranks every
        pair of a panel."""
        too_many = candidates is not None and len(candidates) > 5000
        if too_many or (pairs_of is not None and len(pairs_of) > 200):
            msg = "Keep screens small here: at most 5000 candidates or a panel of 200 genes."
            raise ValueError(msg)
        return ws.screen(
            model,
            objective=objective,
            candidates=candidates,
            pairs_of=pairs_of,
            context=context,
            top_k=top_k,
        )

    @server.tool()
    @_anticipated
    def propose_experiments(
        model: str,
        strategy: str = "gp-ucb",
        batch_size: int = 10,
        candidates: list[str] | None = None,
        context: str | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Suggest the next perturbations to measure. The acquisition strategy (random,
        uncertainty, gp-ucb, degree-prior, aivc-design) learns from the effect sizes of the
        perturbations measured so far and sees the model's predicted changes."""
        return ws.propose(
            model,
            strategy=strategy,
            batch_size=batch_size,
            candidates=candidates,
            context=context,
            seed=seed,
        )

    @server.tool()
    @_anticipated
    def read_ledger(project: str | None = None) -> dict[str, Any]:
        """The experiment ledger: every lab-loop project, or one project's rounds,
        proposals and measured results."""
        if project is None:
            return {"projects": ws.ledger_projects()}
        return ws.ledger_project(project)

    @server.tool()
    @_anticipated
    def list_measurements() -> dict[str, Any]:
        """Measured results uploaded to this workspace (through the REST API), newest first."""
        return {"uploads": ws.list_uploads()}

    return server
