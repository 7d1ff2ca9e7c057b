"""Schema version 2: prediction intervals and compact prediction arrays; the loop-state table.

Adds ``predictions.score_lower``, ``predictions.score_upper`` and
``predictions.payload`` (nullable, so existing rows stay valid) and the
``loop_state`` table, filled from the rounds already recorded: a project's
state is its last round and that round's status.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

VERSION = 2
DESCRIPTION = "prediction intervals and payloads; loop_state table"

_md = sa.MetaData()
_projects = sa.Table("projects", _md, sa.Column("id", sa.Integer, primary_key=True))
loop_state = sa.Table(
    "loop_state",
    _md,
    sa.Column(
        "project_id",
        sa.Integer,
        sa.ForeignKey("projects.id"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def _add_column(conn: sa.Connection, table: str, column: sa.Column) -> None:
    prep = conn.dialect.identifier_preparer
    ddl = (
        f"ALTER TABLE {prep.quote(table)} ADD COLUMN {prep.quote(column.name)} "
        f"{column.type.compile(dialect=conn.dialect)}"
    )
    conn.execute(sa.text(ddl))


def upgrade(conn: sa.Connection) -> None:
    """Add the interval columns and the loop-state table, and fill the state from the rounds."""
    _add_column(conn, "predictions", sa.Column("score_lower", sa.Float))
    _add_column(conn, "predictions", sa.Column("score_upper", sa.Float))
    _add_column(conn, "predictions", sa.Column("payload", sa.LargeBinary))
    loop_state.create(conn)
    rows = conn.execute(
        sa.text(
            "SELECT r.project_id, r.number, r.status FROM rounds r JOIN "
            "(SELECT project_id, MAX(number) AS number FROM rounds GROUP BY project_id) last "
            "ON r.project_id = last.project_id AND r.number = last.number"
        )
    ).all()
    now = datetime.now(UTC)
    for project_id, number, status in rows:
        conn.execute(
            loop_state.insert().values(
                project_id=project_id, round=number, status=status, updated_at=now
            )
        )
