"""Commands for interfaces for people and agents (serve, mcp, report).

Imported by :mod:`aivc.interfaces.cli`; heavy libraries are imported inside each command.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer

from aivc.interfaces._cli_common import fail as _fail

#: Environment variable holding the API token of ``aivc serve``.
TOKEN_ENV = "AIVC_API_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _workspace_dir(workspace: Path | None) -> Path:
    if workspace is not None:
        return workspace
    from aivc._settings import settings

    return settings.cache_dir / "workspace"


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="Port to listen on.", min=0, max=65535)
    ] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help=f"Require 'Authorization: Bearer <token>' on /api (default: ${TOKEN_ENV}). "
            "Needed to bind anything but a loopback address.",
        ),
    ] = None,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace", help="Folder for fitted models and uploads (default: cache dir)."
        ),
    ] = None,
    ledger: Annotated[
        str | None,
        typer.Option(
            "--ledger",
            help="SQLAlchemy URL of the experiment ledger to read (default: ledger.db in the workspace).",
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", help="Largest accepted upload (MB).", min=0.001)
    ] = 256.0,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Folder holding the datasets (default: AIVC_DATA_DIR)."),
    ] = None,
    verbosity: Annotated[str, typer.Option("--verbosity", "-v")] = "info",
) -> None:
    """Serve the REST API and the virtual lab bench page (http://HOST:PORT/).

    Binds 127.0.0.1 by default. Binding any other address needs a token
    (--token or AIVC_API_TOKEN); then every /api request must send
    'Authorization: Bearer <token>'. OpenAPI: /openapi.json, docs: /docs.
    """
    token = token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and not token:
        _fail(
            f"refusing to bind {host!r} without a token: anyone who can reach it could use the "
            f"server. Pass --token or set {TOKEN_ENV}, or bind 127.0.0.1."
        )
    from aivc._settings import settings

    settings.verbosity = verbosity
    settings.configure_logging()
    settings.progress = False  # no progress bars in a server's log
    if data_dir is not None:
        settings.data_dir = data_dir
    import uvicorn

    from aivc.interfaces.api import Workspace, create_app

    ws = Workspace(
        _workspace_dir(workspace),
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        ledger=ledger,
    )
    app = create_app(ws, token=token)
    typer.echo(
        f"aivc serving http://{host}:{port}/ (workspace {ws.root}; "
        f"{'token required' if token else 'no token'})",
        err=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning" if verbosity != "debug" else "info")


def mcp(
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", help="Folder for fitted models (default: cache dir)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Folder holding the datasets (default: AIVC_DATA_DIR)."),
    ] = None,
) -> None:
    """Run the aivc MCP server on stdio (for agents: list, fit, predict, explain, screen)."""
    from aivc._settings import settings

    settings.progress = False  # stdout carries the protocol
    if data_dir is not None:
        settings.data_dir = data_dir
    from aivc.interfaces.mcp_server import create_server

    create_server(_workspace_dir(workspace)).run("stdio")


def report(
    source: Annotated[
        Path, typer.Argument(help="A results directory (results.json) or a predictions .h5ad.")
    ],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
    observed: Annotated[
        str | None,
        typer.Option(
            "--observed",
            help="For predictions: a registered dataset name or .h5ad with the measured cells.",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Folder holding the datasets (default: AIVC_DATA_DIR)."),
    ] = None,
) -> None:
    """Write a self-contained HTML report (plotly.js inlined) of benchmark results or predictions."""
    from aivc._settings import settings

    if data_dir is not None:
        settings.data_dir = data_dir
    from aivc.data import DataValidationError
    from aivc.interfaces.report import write_report

    try:
        path = write_report(source, out, observed=observed)
    except (FileNotFoundError, DataValidationError, ValueError, KeyError) as e:
        _fail(str(e))
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``aivc`` app."""
    app.command()(serve)
    app.command()(mcp)
    app.command()(report)
