"""Versioned schema migrations of the experiment ledger.

Each migration is a module ``vNNNN_<what>.py`` with ``VERSION``, ``DESCRIPTION``
and ``upgrade(conn)``; it runs inside the transaction that also records it in
the ``aivc_schema_version`` table, so a database is always at exactly one
version. :func:`upgrade` brings any older ledger to the newest version (or to
``target``); a ledger written by a newer aivc is refused instead of guessed at.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

__all__ = ["LATEST_VERSION", "MIGRATIONS", "Migration", "current_version", "upgrade"]

logger = logging.getLogger(__name__)

VERSION_TABLE = "aivc_schema_version"

_version_metadata = sa.MetaData()
version_table = sa.Table(
    VERSION_TABLE,
    _version_metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Migration:
    """One schema step: from ``version - 1`` to ``version``."""

    version: int
    description: str
    upgrade: Callable[[sa.Connection], None]


def _load() -> list[Migration]:
    out = []
    for name in ("v0001_initial", "v0002_intervals_and_loop_state"):
        mod = importlib.import_module(f"{__name__}.{name}")
        out.append(Migration(mod.VERSION, mod.DESCRIPTION, mod.upgrade))
    versions = [m.version for m in out]
    if versions != list(range(1, len(out) + 1)):  # pragma: no cover (a packaging error)
        msg = f"Ledger migrations must be numbered 1..n without gaps; got {versions}."
        raise RuntimeError(msg)
    return out


MIGRATIONS: list[Migration] = _load()
LATEST_VERSION: int = MIGRATIONS[-1].version


def current_version(conn: sa.Connection) -> int:
    """Schema version of the database (0: empty, no ledger tables)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return 0
    v = conn.execute(sa.select(sa.func.max(version_table.c.version))).scalar()
    return int(v or 0)


def upgrade(engine: sa.Engine, *, target: int | None = None) -> int:
    """Apply the missing migrations up to ``target`` (default: the newest); returns the version.

    Each migration and its version row are committed together, so an
    interrupted upgrade leaves the database at the last complete version.
    """
    target = LATEST_VERSION if target is None else int(target)
    if not 0 <= target <= LATEST_VERSION:
        msg = f"Ledger schema target version must be between 0 and {LATEST_VERSION}. Got {target} instead."
        raise ValueError(msg)
    with engine.begin() as conn:
        version = current_version(conn)
        if version == 0 and sa.inspect(conn).get_table_names():
            tables = sorted(sa.inspect(conn).get_table_names())
            if "projects" in tables:
                msg = (
                    f"The database has ledger-like tables {tables} but no {VERSION_TABLE!r} table; "
                    "it was not written by aivc. Use an empty database or an aivc ledger."
                )
                raise RuntimeError(msg)
    if version > LATEST_VERSION:
        msg = (
            f"The ledger is at schema version {version}, newer than this aivc understands "
            f"({LATEST_VERSION}). Upgrade aivc to open it."
        )
        raise RuntimeError(msg)
    for m in MIGRATIONS:
        if version < m.version <= target:
            with engine.begin() as conn:
                if current_version(conn) >= m.version:  # another process got there first
                    version = m.version
                    continue
                _version_metadata.create_all(conn, checkfirst=True)
                m.upgrade(conn)
                conn.execute(
                    version_table.insert().values(
                        version=m.version,
                        description=m.description,
                        applied_at=datetime.now(UTC),
                    )
                )
            logger.info("Upgraded the ledger schema to version %d (%s).", m.version, m.description)
            version = m.version
    return version
