"""Commands for interfaces for people and agents (serve, mcp, report).

Imported by :mod:`aivc.interfaces.cli`; heavy libraries are imported inside each command.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from aivc.interfaces._cli_common import fail as _fail

#: Environment variable holding the API token of ``aivc serve``.
TOKEN_ENV = "AIVC_API_TOKEN"
#: Environment variable with more Host names ``aivc serve`` answers to (comma-separated).
ALLOWED_HOSTS_ENV = "AIVC_ALLOWED_HOSTS"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; exits with a clear message when that fails."""
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        _fail(f"cannot bind {host!r}: the address does not resolve ({e.strerror}).")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        reason = (
            "the port is already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        )
        _fail(
            f"cannot listen on {host}:{port}: {reason}. Stop the other server or pick "
            "another --port (0 picks a free one)."
        )
    sock.set_inheritable(True)
    return sock


def _allowed_hosts(host: str, port: int, extra: list[str]) -> list[str]:
    """The Host values to answer to: loopback names on ``port``, the bound address, ``extra``."""
    from aivc.interfaces.api._security import loopback_hosts

    hosts = loopback_hosts(port)
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is None and host.lower() != "localhost":
        hosts.append(f"{host}:{port}")  # a host name to bind is a name to answer to
    elif address is not None and not address.is_unspecified and not address.is_loopback:
        hosts.append(f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}")
    hosts.extend(extra)
    hosts.extend(os.environ.get(ALLOWED_HOSTS_ENV, "").split(","))
    return [h for h in hosts if h.strip()]


def _check_ledger(url: str | None, default: Path) -> None:
    """Warn (without writing) when the ledger the server reads needs a migration."""
    from aivc.experiments._ledger import Ledger, LedgerSchemaError

    try:
        Ledger(url or default, upgrade=False).close()
    except LedgerSchemaError as e:
        if e.version:
            typer.echo(f"warning: {e}", err=True)
    except RuntimeError as e:
        typer.echo(f"warning: {e}", err=True)


def _workspace_dir(workspace: Path | None) -> Path:
    if workspace is not None:
        return workspace
    from aivc._settings import settings

    return settings.cache_dir / "workspace"


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="Port to listen on (0: a free one).", min=0, max=65535)
    ] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help=f"Require 'Authorization: Bearer <token>' on /api (default: ${TOKEN_ENV}). "
            "Needed to bind anything but a loopback address.",
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Another Host name (NAME or NAME:PORT) the server answers to, besides "
            f"127.0.0.1, localhost and [::1] on its port; repeat for more (also ${ALLOWED_HOSTS_ENV}, "
            "comma-separated). '*' answers to any name: only behind a proxy that checks it.",
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
            help="SQLAlchemy URL of the experiment ledger to read (default: ledger.db in the "
            "workspace). It is never migrated here: use 'aivc ledger migrate URL'.",
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", help="Largest accepted upload (MB).", min=0.001)
    ] = 256.0,
    max_upload_memory_mb: Annotated[
        float,
        typer.Option(
            "--max-upload-memory-mb",
            help="Most memory an upload's arrays may take once read (MB), checked from the "
            "file's declared shapes before reading.",
            min=0.001,
        ),
    ] = 512.0,
    max_workspace_gb: Annotated[
        float,
        typer.Option(
            "--max-workspace-gb",
            help="Disk quota of the workspace (GB); uploads and fits past it get 507.",
            min=0.0,
        ),
    ] = 10.0,
    max_queued_jobs: Annotated[
        int,
        typer.Option(
            "--max-queued-jobs",
            help="Fit jobs that may wait for the worker; more get 429.",
            min=0,
        ),
    ] = 10,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Folder holding the datasets (default: AIVC_DATA_DIR)."),
    ] = None,
    verbosity: Annotated[str, typer.Option("--verbosity", "-v")] = "info",
) -> None:
    """Serve the REST API and the virtual lab bench page (http://HOST:PORT/).

    Binds 127.0.0.1 by default. Binding any other address needs a token
    (--token or AIVC_API_TOKEN); then every /api request must send
    'Authorization: Bearer <token>'. The server answers only to the Host
    names 127.0.0.1, localhost and [::1] on its port, and to those given with
    --allowed-host; a page from another site cannot make it change anything.
    OpenAPI: /openapi.json, docs: /docs and /redoc.
    """
    from aivc.interfaces.api._security import check_token, parse_allowed_hosts

    try:
        token = check_token(token if token is not None else os.environ.get(TOKEN_ENV))
    except ValueError as e:
        _fail(f"refusing to start: {e} Pass --token with a real secret or unset {TOKEN_ENV}.")
    if not is_loopback(host) and not token:
        _fail(
            f"refusing to bind {host!r} without a token: anyone who can reach it could use the "
            f"server. Pass --token or set {TOKEN_ENV}, or bind 127.0.0.1."
        )
    try:
        parse_allowed_hosts([*(allowed_host or []), os.environ.get(ALLOWED_HOSTS_ENV, "")])
    except ValueError as e:
        _fail(str(e))
    # bind before anything is announced: a busy port fails here, with nothing printed before
    sock = _bind(host, port)
    port = sock.getsockname()[1]
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
        max_upload_memory_bytes=int(max_upload_memory_mb * 1024 * 1024),
        max_workspace_bytes=int(max_workspace_gb * 1024**3),
        max_queued_jobs=max_queued_jobs,
        ledger=ledger,
    )
    _check_ledger(ledger, ws.root / "ledger.db")
    hosts = _allowed_hosts(host, port, list(allowed_host or []))
    app = create_app(ws, token=token, allowed_hosts=hosts)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    typer.echo(
        f"aivc serving http://{shown}:{port}/ (workspace {ws.root}; "
        f"{'token required' if token else 'no token'}; answers to {', '.join(hosts)})",
        err=True,
    )
    config = uvicorn.Config(app, log_level="warning" if verbosity != "debug" else "info")
    uvicorn.Server(config).run(sockets=[sock])


def ledger_migrate(
    url: Annotated[
        str,
        typer.Argument(
            help="SQLAlchemy URL or SQLite path of the ledger (sqlite:///lab.db, "
            "postgresql+psycopg://...)."
        ),
    ],
) -> None:
    """Bring an experiment ledger to the schema version this aivc reads (creates a new one).

    Reading a ledger (the lab bench page, GET /api/ledger/projects) never
    migrates it: run this once after upgrading aivc. Each step is committed
    with its version row, so an interrupted migration can be run again.
    """
    from aivc.experiments._ledger import Ledger

    try:
        with Ledger(url) as led:
            version = led.schema_version
            shown = repr(led).removeprefix("Ledger(").removesuffix(")")
    except (RuntimeError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"ledger {shown} is at schema version {version}")


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
    ledger_app = typer.Typer(help="The experiment ledger.", no_args_is_help=True)
    ledger_app.command("migrate")(ledger_migrate)
    app.add_typer(ledger_app, name="ledger")
