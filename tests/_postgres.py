"""A throwaway PostgreSQL server for tests: initdb a temporary cluster, start it, tear it down.

PostgreSQL refuses to run as root, so when the tests run as root the server
runs as the ``postgres`` (or ``nobody``) system user, in a temporary folder
owned by that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Where Debian and Ubuntu install each PostgreSQL major version's server binaries.
_DEBIAN_ROOT = Path("/usr/lib/postgresql")


def _version_key(path: Path) -> tuple[int, ...]:
    """Sort key of a ``/usr/lib/postgresql/<version>/bin`` folder: its version as numbers."""
    parts = path.parent.name.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (-1,)


def _bin_dirs() -> list[Path]:
    """Folders to search for the server binaries: every installed version, newest first."""
    versions = sorted(_DEBIAN_ROOT.glob("*/bin"), key=_version_key, reverse=True)
    return [*versions, Path("/usr/local/bin")]


def _server_bins() -> tuple[str, str] | None:
    """``initdb`` and ``pg_ctl`` of one installation: the newest version folder that has both,
    else the ones on ``PATH``; ``None`` when there are none."""
    for d in _bin_dirs():
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return str(d / "initdb"), str(d / "pg_ctl")
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return (initdb, pg_ctl) if initdb and pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(user: str | None, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    if user is not None:
        args = ["runuser", "-u", user, "--", *args]
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a temporary PostgreSQL cluster; yields a SQLAlchemy URL to an empty database."""
    bins = _server_bins()
    if bins is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    initdb, pg_ctl = bins
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    user: str | None = None
    if os.geteuid() == 0:
        for candidate in ("postgres", "nobody"):
            try:
                pwd.getpwnam(candidate)
            except KeyError:
                continue
            user = candidate
            break
        if user is None or shutil.which("runuser") is None:
            pytest.skip("running as root and no unprivileged user to run PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="aivc-pg-"))
    data = root / "data"
    if user is not None:
        info = pwd.getpwnam(user)
        os.chown(root, info.pw_uid, info.pw_gid)
    os.chmod(root, 0o700)
    port = _free_port()
    started = False
    try:
        r = _run_as(user, [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        if r.returncode != 0:
            msg = f"initdb failed: {r.stderr[-2000:]}"
            raise RuntimeError(msg)
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off"
        r = _run_as(
            user,
            [pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log.txt"), "-w", "start"],
        )
        if r.returncode != 0:
            log = (root / "log.txt").read_text() if (root / "log.txt").exists() else ""
            msg = f"pg_ctl start failed: {r.stderr[-2000:]} {log[-2000:]}"
            raise RuntimeError(msg)
        started = True
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        if started:
            _run_as(user, [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """Create database ``name`` on the server of ``url`` and return its URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name
