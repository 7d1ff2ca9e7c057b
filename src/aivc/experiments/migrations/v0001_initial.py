"""Schema version 1: projects, datasets, rounds, model versions, proposals, predictions, results."""

from __future__ import annotations

import sqlalchemy as sa

VERSION = 1
DESCRIPTION = "initial ledger: projects, datasets, rounds, models, proposals, predictions, results"

# A frozen copy of the version-1 tables; later versions change the database
# through their own migrations, never by editing this one.
_md = sa.MetaData()
_tz = sa.DateTime(timezone=True)

sa.Table(
    "projects",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("created_at", _tz, nullable=False),
    sa.UniqueConstraint("name", name="uq_projects_name"),
)
sa.Table(
    "datasets",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("n_obs", sa.Integer, nullable=True),
    sa.Column("n_vars", sa.Integer, nullable=True),
    sa.Column("created_at", _tz, nullable=False),
    sa.UniqueConstraint("project_id", "name", name="uq_datasets_project_name"),
)
sa.Table(
    "rounds",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("strategy", sa.String(100), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", _tz, nullable=False),
    sa.Column("completed_at", _tz, nullable=True),
    sa.UniqueConstraint("project_id", "number", name="uq_rounds_project_number"),
)
sa.Table(
    "model_versions",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
    sa.Column("instrument", sa.String(100), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("created_at", _tz, nullable=False),
    sa.UniqueConstraint("project_id", "round_id", name="uq_model_versions_project_round"),
)
sa.Table(
    "proposals",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("candidate", sa.String(200), nullable=False),
    sa.UniqueConstraint("project_id", "candidate", name="uq_proposals_project_candidate"),
    sa.UniqueConstraint("round_id", "position", name="uq_proposals_round_position"),
)
sa.Table(
    "predictions",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
    sa.Column("model_version_id", sa.Integer, sa.ForeignKey("model_versions.id"), nullable=False),
    sa.Column("candidate", sa.String(200), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.UniqueConstraint("model_version_id", "candidate", name="uq_predictions_model_candidate"),
)
sa.Table(
    "results",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
    sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=True),
    sa.Column("candidate", sa.String(200), nullable=False),
    sa.Column("is_control", sa.Boolean, nullable=False),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("n_cells", sa.Integer, nullable=False),
    sa.Column("profile", sa.LargeBinary, nullable=True),
    sa.UniqueConstraint("round_id", "candidate", name="uq_results_round_candidate"),
)


def upgrade(conn: sa.Connection) -> None:
    """Create the version-1 tables."""
    _md.create_all(conn)
