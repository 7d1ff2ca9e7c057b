"""The FastAPI application: routes over a :class:`Workspace`."""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from aivc.interfaces.api._jobs import JobConflictError
from aivc.interfaces.api._schemas import (
    CalibrationOut,
    DatasetOut,
    ErrorOut,
    ExplainIn,
    FitIn,
    InstrumentOut,
    JobOut,
    PredictIn,
    PredictOut,
    ProposeIn,
    ScreenIn,
)
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


def _error(status: int, detail: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


def create_app(
    workspace: Workspace | str | Path,
    *,
    token: str | None = None,
    max_upload_bytes: int | None = None,
) -> FastAPI:
    """Build the aivc REST API and web page.

    Parameters
    ----------
    workspace
        A :class:`Workspace`, or the directory of one.
    token
        When given, every ``/api`` request needs ``Authorization: Bearer <token>``.
    max_upload_bytes
        Largest accepted upload (default: the workspace's limit).

    Returns
    -------
    The FastAPI application; ``app.state.workspace`` is the workspace.
    """
    from aivc._version import __version__

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
        "measurements. Errors are JSON {'detail': ...}.",
        lifespan=lifespan,
    )
    app.state.workspace = ws

    # ------------------------------------------------------------------ errors
    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, e: NotFoundError) -> JSONResponse:
        return _error(404, str(e))

    @app.exception_handler(WorkspaceValidationError)
    async def _invalid(_: Request, e: WorkspaceValidationError) -> JSONResponse:
        return _error(422, str(e))

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, e: ConflictError) -> JSONResponse:
        return _error(409, str(e))

    @app.exception_handler(JobConflictError)
    async def _job_conflict(_: Request, e: JobConflictError) -> JSONResponse:
        return _error(409, str(e))

    @app.exception_handler(PayloadTooLargeError)
    async def _too_large(_: Request, e: PayloadTooLargeError) -> JSONResponse:
        return _error(413, str(e))

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
        return JSONResponse(
            status_code=e.status_code, content={"detail": e.detail}, headers=e.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return _error(500, f"Internal error ({type(e).__name__}); see the server log.")

    # ------------------------------------------------------------------ auth
    if token:
        expected = f"Bearer {token}".encode()

        @app.middleware("http")
        async def _auth(request: Request, call_next):  # type: ignore[no-untyped-def]
            if request.url.path.startswith("/api") and request.url.path != "/api/health":
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return JSONResponse(
                        status_code=401,
                        content={
                            "detail": "Missing or wrong token: send 'Authorization: Bearer <token>'."
                        },
                        headers={"WWW-Authenticate": "Bearer"},
                    )
            return await call_next(request)

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
        responses={413: {"model": ErrorOut, "description": "Upload too large."}},
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
        """Upload measured results (h5ad); validated against the dataset, then stored atomically."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > ws.max_upload_bytes:
            msg = f"The upload ({length} bytes) is larger than the {ws.max_upload_bytes} bytes this server accepts."
            raise PayloadTooLargeError(msg)
        body, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > ws.max_upload_bytes:
                msg = f"The upload is larger than the {ws.max_upload_bytes} bytes this server accepts."
                raise PayloadTooLargeError(msg)
            body.append(chunk)
        return await run_in_threadpool(ws.save_upload, name, iter(body), filename=filename)

    @api.get("/uploads", tags=["datasets"])
    def uploads() -> list[dict[str, Any]]:
        """Measurements uploaded to this workspace."""
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
        responses={409: {"model": ErrorOut, "description": "The model name is taken."}},
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

    @api.get("/ledger/projects", tags=["experiments"])
    def ledger_projects() -> list[dict[str, Any]]:
        """Lab-loop projects recorded in the experiment ledger."""
        return ws.ledger_projects()

    @api.get("/ledger/projects/{name}", tags=["experiments"])
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

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        files = {
            "plotly.min.js": (_plotly_js(), "text/javascript"),
            "app.js": (WEB_DIR / "app.js", "text/javascript"),
            "style.css": (WEB_DIR / "style.css", "text/css"),
        }
        if name not in files:
            raise StarletteHTTPException(status_code=404, detail=f"No static file {name!r}.")
        path, media = files[name]
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})

    return app
