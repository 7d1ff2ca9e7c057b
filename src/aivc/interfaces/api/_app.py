"""The FastAPI application: routes over a :class:`Workspace`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from aivc.interfaces.api._errors import (
    QuotaExceededError,
    UnavailableError,
    new_error_id,
    scrub_paths,
)
from aivc.interfaces.api._jobs import JobConflictError, JobQueueFullError
from aivc.interfaces.api._schemas import (
    CalibrationOut,
    CompoundFitIn,
    CompoundPredictIn,
    DatasetOut,
    ErrorOut,
    ExplainIn,
    FitIn,
    ForecastIn,
    InstrumentOut,
    JobOut,
    PredictIn,
    PredictOut,
    ProposeIn,
    ScreenIn,
    TemporalFitIn,
)
from aivc.interfaces.api._security import (
    HostGuard,
    check_token,
    parse_allowed_hosts,
    token_matches,
)
from aivc.interfaces.api._spatial import MAX_CELLS as MAX_SPATIAL_CELLS
from aivc.interfaces.api._spatial import Color
from aivc.interfaces.api._workspace import (
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    Workspace,
    WorkspaceValidationError,
)

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown dataset, model, gene, context or job."},
    422: {"model": ErrorOut, "description": "The request cannot be carried out as sent."},
}


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


def _docs_assets() -> Path | None:
    """The folder of Swagger UI's and ReDoc's files shipped by ``fastapi-offline``, if installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).resolve().parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


#: Files of the API docs pages, served from the installed package (nothing from a CDN).
_DOCS_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}

_NO_DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>aivc API</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>aivc REST API</h1>
<p>The interactive documentation needs the <code>fastapi-offline</code> package, which
ships Swagger UI and ReDoc: <code>pip install 'aivc[serve]'</code>.</p>
<p>The OpenAPI schema is at <a href="/openapi.json">/openapi.json</a>.</p>
</body></html>
"""


def _error(
    status: int, detail: Any, *, error_id: str | None = None, **headers: str
) -> JSONResponse:
    """A JSON error body: the message without server paths, and the error id when there is one."""
    content: dict[str, Any] = {"detail": scrub_paths(detail) if isinstance(detail, str) else detail}
    if error_id:
        content["error_id"] = error_id
    return JSONResponse(status_code=status, content=content, headers=headers or None)


def create_app(
    workspace: Workspace | str | Path,
    *,
    token: str | None = None,
    max_upload_bytes: int | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """Build the aivc REST API and web page.

    Parameters
    ----------
    workspace
        A :class:`Workspace`, or the directory of one.
    token
        When given, every ``/api`` request but ``/api/health`` needs
        ``Authorization: Bearer <token>`` (the scheme in any case). A blank
        token (only whitespace) raises ``ValueError``.
    max_upload_bytes
        Largest accepted upload (default: the workspace's limit).
    allowed_hosts
        ``Host`` header values the server answers to: ``NAME`` (any port),
        ``NAME:PORT`` or ``*`` (any host). Default: the loopback names
        ``127.0.0.1``, ``localhost`` and ``[::1]`` on any port. Other hosts
        get 421; state-changing requests from another origin get 403 (see
        :mod:`aivc.interfaces.api._security`).

    Returns
    -------
    The FastAPI application; ``app.state.workspace`` is the workspace.
    """
    from aivc._version import __version__

    token = check_token(token)
    parse_allowed_hosts(
        allowed_hosts or ()
    )  # a malformed entry fails here, not at the first request
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if max_upload_bytes is not None:
        ws.max_upload_bytes = int(max_upload_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        ws.shutdown()

    app = FastAPI(
        title="aivc",
        version=__version__,
        description="The AI virtual cell: fit perturbation models, predict, screen and upload "
        "measurements. Errors are JSON {'detail': ..., 'error_id': ...}; the error id, when "
        "there is one, finds the details in the server log.",
        lifespan=lifespan,
        docs_url=None,  # served below from local files, not from a CDN
        redoc_url=None,
    )
    app.state.workspace = ws

    # ------------------------------------------------------------------ errors
    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, e: NotFoundError) -> JSONResponse:
        return _error(404, str(e), error_id=getattr(e, "error_id", None))

    @app.exception_handler(WorkspaceValidationError)
    async def _invalid(_: Request, e: WorkspaceValidationError) -> JSONResponse:
        return _error(422, str(e), error_id=getattr(e, "error_id", None))

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, e: ConflictError) -> JSONResponse:
        return _error(409, str(e))

    @app.exception_handler(JobConflictError)
    async def _job_conflict(_: Request, e: JobConflictError) -> JSONResponse:
        return _error(409, str(e))

    @app.exception_handler(PayloadTooLargeError)
    async def _too_large(_: Request, e: PayloadTooLargeError) -> JSONResponse:
        return _error(413, str(e))

    @app.exception_handler(JobQueueFullError)
    async def _queue_full(_: Request, e: JobQueueFullError) -> JSONResponse:
        return _error(429, str(e), **{"Retry-After": "30"})

    @app.exception_handler(QuotaExceededError)
    async def _quota(_: Request, e: QuotaExceededError) -> JSONResponse:
        return _error(507, str(e))

    @app.exception_handler(UnavailableError)
    async def _unavailable(_: Request, e: UnavailableError) -> JSONResponse:
        return _error(503, str(e), error_id=getattr(e, "error_id", None))

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": list(err.get("loc", ())),
                "msg": str(err.get("msg", "")),
                "type": err.get("type"),
            }
            for err in e.errors()
        ]
        return _error(422, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, e.detail, **(e.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        error_id = new_error_id()
        logger.error(
            "unexpected error on %s %s (error id %s)",
            request.method,
            request.url.path,
            error_id,
            exc_info=e,
        )
        return _error(
            500,
            f"Internal error; the server log has the details (error id {error_id}).",
            error_id=error_id,
        )

    # ------------------------------------------------------------------ auth
    if token:

        @app.middleware("http")
        async def _auth(request: Request, call_next):  # type: ignore[no-untyped-def]
            if request.url.path.startswith("/api") and request.url.path != "/api/health":
                if not token_matches(request.headers.get("authorization", ""), token):
                    return _error(
                        401,
                        "Missing or wrong token: send 'Authorization: Bearer <token>'.",
                        **{"WWW-Authenticate": "Bearer"},
                    )
            return await call_next(request)

    # the outermost check: a request for another host, or a cross-site write, goes no further
    app.add_middleware(HostGuard, allowed_hosts=allowed_hosts)

    api = APIRouter(prefix="/api", responses=_ERRORS)

    # ------------------------------------------------------------------ meta
    @api.get("/health", tags=["meta"])
    def health() -> dict[str, Any]:
        """Liveness, version and whether requests need a token."""
        return {"status": "ok", "version": __version__, "auth": bool(token)}

    # ------------------------------------------------------------------ datasets
    @api.get("/datasets", response_model=list[DatasetOut], tags=["datasets"])
    def datasets() -> list[dict[str, Any]]:
        """Perturbation datasets present in the data directory (and added in memory)."""
        return ws.list_datasets()

    @api.get("/datasets/{name}", tags=["datasets"])
    def dataset(name: str) -> dict[str, Any]:
        """Cells, genes, perturbations, contexts and uploads of a dataset (loads it on first use)."""
        return ws.dataset_info(name)

    @api.get("/datasets/{name}/embedding", tags=["datasets"])
    def embedding(
        name: str,
        n_cells: Annotated[int, Query(ge=10, le=20000)] = 2000,
        seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    ) -> dict[str, Any]:
        """2-D PCA of a seeded subsample of cells, with each cell's perturbation."""
        return ws.embedding(name, n_cells=n_cells, seed=seed)

    @api.post(
        "/datasets/{name}/measurements",
        status_code=201,
        tags=["datasets"],
        responses={
            413: {"model": ErrorOut, "description": "Upload too large, as sent or once read."},
            507: {"model": ErrorOut, "description": "The workspace's disk quota is reached."},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "An .h5ad file (AnnData) with raw counts, the dataset's "
                "perturbation column and control cells.",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def upload(
        name: str, request: Request, filename: Annotated[str, Query(max_length=200)] = "upload.h5ad"
    ) -> dict[str, Any]:
        """Upload measured results (h5ad), streamed to disk; checked, validated against the
        dataset, then stored atomically."""
        writer = await run_in_threadpool(ws.open_upload, name)
        try:
            length = request.headers.get("content-length")
            if length is not None and length.isdigit():
                writer.check_length(int(length))
            async for chunk in request.stream():
                writer.write(chunk)  # refuses past the limits, or when the start is not HDF5
        except BaseException:
            writer.discard()
            raise
        return await run_in_threadpool(ws.finish_upload, writer, filename=filename)

    @api.get("/uploads", tags=["datasets"])
    def uploads() -> list[dict[str, Any]]:
        """Measurements uploaded to this workspace, newest first."""
        return ws.list_uploads()

    # ------------------------------------------------------------------ instruments and models
    @api.get("/instruments", response_model=list[InstrumentOut], tags=["models"])
    def instruments() -> list[dict[str, Any]]:
        """Registered perturbation models and baselines, with capabilities and parameters."""
        return ws.list_instruments()

    @api.get("/models", tags=["models"])
    def models() -> list[dict[str, Any]]:
        """Fitted models in this workspace."""
        return ws.list_models()

    @api.post(
        "/models",
        status_code=202,
        response_model=JobOut,
        tags=["models"],
        responses={
            409: {"model": ErrorOut, "description": "The model name is taken."},
            429: {"model": ErrorOut, "description": "Too many jobs are waiting."},
            507: {"model": ErrorOut, "description": "The workspace's disk quota is reached."},
        },
    )
    def fit(body: FitIn) -> dict[str, Any]:
        """Start fitting a model in the background; poll the returned job."""
        return ws.submit_fit(
            dataset=body.dataset,
            instrument=body.instrument,
            params=body.params,
            name=body.name,
            holdout=body.holdout,
            seed=body.seed,
        )

    @api.get("/compound-datasets", tags=["compounds"])
    def compound_datasets() -> list[dict[str, Any]]:
        """Profile datasets (compounds at doses) the chemical manipulator can be fit on."""
        return ws.compounds.datasets()

    @api.get("/compound-models", tags=["compounds"])
    def compound_models() -> list[dict[str, Any]]:
        """Fitted chemical models in this workspace."""
        return ws.compounds.list()

    @api.post("/compound-models", status_code=201, tags=["compounds"])
    def fit_compound_model(body: CompoundFitIn) -> dict[str, Any]:
        """Fit aivc-chem on a profile dataset (seconds; returns the model record)."""
        return ws.compounds.fit(body.dataset, name=body.name, seed=body.seed)

    @api.post("/compound-models/{model_id}/predict", tags=["compounds"])
    def predict_compound(model_id: str, body: CompoundPredictIn) -> dict[str, Any]:
        """A compound's predicted dose response: the most changed features with intervals,
        and the measured changes where the compound was measured."""
        return ws.compounds.predict(
            model_id,
            body.compound,
            body.doses,
            dose_unit=body.dose_unit,
            level=body.level,
            top_k=body.top_k,
        )

    @api.get("/temporal-datasets", tags=["time"])
    def temporal_datasets() -> list[dict[str, Any]]:
        """Time courses the temporal manipulator can be fit on."""
        return ws.temporal.datasets()

    @api.get("/temporal-models", tags=["time"])
    def temporal_models() -> list[dict[str, Any]]:
        """Fitted temporal models in this workspace."""
        return ws.temporal.list()

    @api.post("/temporal-models", status_code=201, tags=["time"])
    def fit_temporal_model(body: TemporalFitIn) -> dict[str, Any]:
        """Fit aivc-time on a time course (seconds; returns the model record)."""
        return ws.temporal.fit(body.dataset, name=body.name, seed=body.seed)

    @api.post("/temporal-models/{model_id}/forecast", tags=["time"])
    def forecast(model_id: str, body: ForecastIn) -> dict[str, Any]:
        """The predicted population at each time: cells on the first two components and the
        most changed genes, with the measured populations for comparison."""
        return ws.temporal.forecast(model_id, body.times, n_cells=body.n_cells, top_k=body.top_k)

    @api.get("/spatial-datasets", tags=["tissues"])
    def spatial_datasets() -> list[dict[str, Any]]:
        """Spatial tissues offered here (the simulator's virtual tissue, and registered datasets
        present in the data folder), each with the colourings it has."""
        return ws.spatial.datasets()

    @api.get("/spatial/{name}", tags=["tissues"])
    def spatial_map(
        name: str,
        color: Annotated[Color, Query()] = "cell_type",
        max_cells: Annotated[int, Query(ge=1, le=MAX_SPATIAL_CELLS)] = 5000,
    ) -> dict[str, Any]:
        """Cells at their coordinates (a seeded subsample of ``max_cells``), each with its section
        and its label under ``color``, and the labels in legend order. ``niche`` fits a small
        niche model on the first request for a dataset (seconds) and keeps its domains."""
        return ws.spatial.map(name, color=color, max_cells=max_cells)

    @api.get("/models/{model_id}", tags=["models"])
    def model(model_id: str) -> dict[str, Any]:
        """A fitted model: instrument, dataset, held-out perturbations, genes."""
        return ws.model_info(model_id)

    @api.delete("/models/{model_id}", status_code=204, tags=["models"])
    def delete_model(model_id: str) -> Response:
        """Delete a fitted model from the workspace."""
        ws.delete_model(model_id)
        return Response(status_code=204)

    @api.get("/models/{model_id}/suggest", tags=["models"])
    def suggest(
        model_id: str,
        q: Annotated[str, Query(max_length=200)] = "",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> list[str]:
        """Autocomplete perturbations: measured labels and target genes (``A+B`` completes B)."""
        return ws.suggest_perturbations(model_id, q, limit=limit)

    @api.post("/models/{model_id}/predict", response_model=PredictOut, tags=["predictions"])
    def predict(model_id: str, body: PredictIn) -> dict[str, Any]:
        """Predicted mean changes, intervals when the model has them, top genes, and the
        observed change where the perturbation was measured."""
        return ws.predict(
            model_id,
            body.perturbations,
            context=body.context,
            top_k=body.top_k,
            level=body.level,
            all_genes=body.all_genes,
        )

    @api.get("/models/{model_id}/calibration", response_model=CalibrationOut, tags=["predictions"])
    def calibration(model_id: str) -> dict[str, Any]:
        """Interval coverage against nominal level on the model's held-out perturbations."""
        return ws.calibration(model_id)

    @api.post("/models/{model_id}/explain", tags=["predictions"])
    def explain(model_id: str, body: ExplainIn) -> dict[str, Any]:
        """Top genes, enriched GO-BP pathways and responding network neighbours of a prediction."""
        return ws.explain(model_id, body.perturbation, context=body.context, n_top=body.n_top)

    # ------------------------------------------------------------------ experiments
    @api.post("/models/{model_id}/screen", tags=["experiments"])
    def screen(model_id: str, body: ScreenIn) -> dict[str, Any]:
        """A virtual screen: rank candidates by an objective under the model's predictions
        (and by its lower bound inside the intervals, when the model gives them)."""
        return ws.screen(
            model_id,
            objective=body.objective,
            candidates=body.candidates,
            pairs_of=body.pairs_of,
            context=body.context,
            level=body.level,
            top_k=body.top_k,
        )

    @api.post("/models/{model_id}/proposals", tags=["experiments"])
    def proposals(model_id: str, body: ProposeIn) -> dict[str, Any]:
        """Suggest the next perturbations to measure with an acquisition strategy that learns
        from the perturbations measured so far (dataset and uploads)."""
        return ws.propose(
            model_id,
            strategy=body.strategy,
            batch_size=body.batch_size,
            candidates=body.candidates,
            context=body.context,
            seed=body.seed,
        )

    _ledger_errors: dict[int | str, dict[str, Any]] = {
        409: {"model": ErrorOut, "description": "The ledger needs `aivc ledger migrate`."},
        503: {"model": ErrorOut, "description": "The ledger's database cannot be reached."},
    }

    @api.get("/ledger/projects", tags=["experiments"], responses=_ledger_errors)
    def ledger_projects() -> list[dict[str, Any]]:
        """Lab-loop projects recorded in the experiment ledger."""
        return ws.ledger_projects()

    @api.get("/ledger/projects/{name}", tags=["experiments"], responses=_ledger_errors)
    def ledger_project(name: str) -> dict[str, Any]:
        """A project's state, rounds, proposals and measured results."""
        return ws.ledger_project(name)

    # ------------------------------------------------------------------ jobs
    @api.get("/jobs", response_model=list[JobOut], tags=["jobs"])
    def jobs() -> list[dict[str, Any]]:
        """Background jobs, newest first."""
        return [j.to_dict() for j in ws.jobs.list()]

    @api.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
    def job(job_id: str) -> dict[str, Any]:
        """State and progress of a job."""
        try:
            return ws.jobs.get(job_id).to_dict()
        except KeyError as e:
            raise NotFoundError(e.args[0]) from None

    @api.delete(
        "/jobs/{job_id}",
        response_model=JobOut,
        tags=["jobs"],
        responses={409: {"model": ErrorOut, "description": "The job has already finished."}},
    )
    def cancel(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (a running fit stops at its next step)."""
        try:
            return ws.jobs.cancel(job_id).to_dict()
        except KeyError as e:
            raise NotFoundError(e.args[0]) from None

    app.include_router(api)

    # ------------------------------------------------------------------ web page
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    # ------------------------------------------------------------------ API docs (local files)
    docs_assets = _docs_assets()

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if docs_assets is None:
            return HTMLResponse(_NO_DOCS_PAGE)
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="aivc API",
            swagger_js_url="/static/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from an online validator
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        if docs_assets is None:
            return HTMLResponse(_NO_DOCS_PAGE)
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="aivc API",
            redoc_js_url="/static/redoc.standalone.js",
            redoc_favicon_url="/static/favicon.png",
            with_google_fonts=False,
        )

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        files = {
            "plotly.min.js": (_plotly_js(), "text/javascript"),
            "app.js": (WEB_DIR / "app.js", "text/javascript"),
            "style.css": (WEB_DIR / "style.css", "text/css"),
        }
        if docs_assets is not None:
            files.update({f: (docs_assets / f, media) for f, media in _DOCS_FILES.items()})
        if name not in files:
            raise StarletteHTTPException(status_code=404, detail=f"No static file {name!r}.")
        path, media = files[name]
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})

    return app
