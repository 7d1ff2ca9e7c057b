"""The experiment ledger: a SQL database of projects, rounds, proposals, models, predictions and results.

A :class:`Ledger` is opened from a SQLAlchemy URL: a SQLite file by default
(``Ledger("sqlite:///lab.db")`` or just a path), PostgreSQL for shared use
(``Ledger("postgresql+psycopg://user@host/db")``). Opening a ledger to write
it (the default) brings its schema to the newest version through the
versioned migrations in :mod:`aivc.experiments.migrations`; a reader opens it
with ``upgrade=False``, which never writes to the database (nor creates a
missing SQLite file) and raises :class:`LedgerSchemaError` for a ledger that
is missing or at another version (``aivc ledger migrate URL`` upgrades it).

Everything a round of the lab loop produces is written by
:meth:`Ledger.commit_round` in ONE transaction, so a crash or a killed
process leaves either the whole round or nothing of it. Unique keys make
every write idempotent or loud: a candidate is proposed once per project, a
result is recorded once per round, a model version once per round.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from aivc.experiments import migrations

__all__ = [
    "Ledger",
    "LedgerConflictError",
    "LedgerSchemaError",
    "ModelRecord",
    "PredictionRecord",
    "ResultRecord",
    "RoundRecord",
    "decode_array",
    "encode_array",
]

#: Round and loop statuses.
PROPOSED = "awaiting-results"
COMPLETE = "complete"
FINISHED = "finished"


class LedgerConflictError(ValueError):
    """A write would duplicate or contradict what the ledger already holds."""


class LedgerSchemaError(RuntimeError):
    """A ledger opened without upgrading is missing or at another schema version.

    Attributes
    ----------
    version
        The database's schema version (0: no ledger tables, or no SQLite file).
    """

    def __init__(self, msg: str, *, version: int) -> None:
        super().__init__(msg)
        self.version = version


def _now() -> datetime:
    return datetime.now(UTC)


def encode_array(x: np.ndarray | None) -> bytes | None:
    """A compact blob (little-endian float32) of a 1-D array; ``None`` stays ``None``."""
    if x is None:
        return None
    return np.ascontiguousarray(np.asarray(x, dtype="<f4").ravel()).tobytes()


def decode_array(blob: bytes | None) -> np.ndarray | None:
    """The array stored by :func:`encode_array` (float32)."""
    if blob is None:
        return None
    return np.frombuffer(bytes(blob), dtype="<f4").copy()


# ----------------------------------------------------------------------------- tables
class Base(DeclarativeBase):
    pass


_tz = sa.DateTime(timezone=True)


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (sa.UniqueConstraint("name", name="uq_projects_name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    config: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(_tz)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (sa.UniqueConstraint("project_id", "name", name="uq_datasets_project_name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(sa.String(200))
    content_hash: Mapped[str] = mapped_column(sa.String(64))
    n_obs: Mapped[int | None] = mapped_column(sa.Integer)
    n_vars: Mapped[int | None] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(_tz)


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (sa.UniqueConstraint("project_id", "number", name="uq_rounds_project_number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"))
    number: Mapped[int] = mapped_column(sa.Integer)
    strategy: Mapped[str] = mapped_column(sa.String(100))
    status: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(_tz)
    completed_at: Mapped[datetime | None] = mapped_column(_tz)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "round_id", name="uq_model_versions_project_round"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"))
    round_id: Mapped[int] = mapped_column(sa.ForeignKey("rounds.id"))
    instrument: Mapped[str] = mapped_column(sa.String(100))
    params: Mapped[str] = mapped_column(sa.Text)
    content_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(_tz)


class Proposal(Base):
    __tablename__ = "proposals"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "candidate", name="uq_proposals_project_candidate"),
        sa.UniqueConstraint("round_id", "position", name="uq_proposals_round_position"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"))
    round_id: Mapped[int] = mapped_column(sa.ForeignKey("rounds.id"))
    position: Mapped[int] = mapped_column(sa.Integer)
    candidate: Mapped[str] = mapped_column(sa.String(200))


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (
        sa.UniqueConstraint("model_version_id", "candidate", name="uq_predictions_model_candidate"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(sa.ForeignKey("rounds.id"))
    model_version_id: Mapped[int] = mapped_column(sa.ForeignKey("model_versions.id"))
    candidate: Mapped[str] = mapped_column(sa.String(200))
    score: Mapped[float] = mapped_column(sa.Float)
    score_lower: Mapped[float | None] = mapped_column(sa.Float)
    score_upper: Mapped[float | None] = mapped_column(sa.Float)
    payload: Mapped[bytes | None] = mapped_column(sa.LargeBinary)


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (
        sa.UniqueConstraint("round_id", "candidate", name="uq_results_round_candidate"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(sa.ForeignKey("projects.id"))
    round_id: Mapped[int] = mapped_column(sa.ForeignKey("rounds.id"))
    dataset_id: Mapped[int | None] = mapped_column(sa.ForeignKey("datasets.id"))
    candidate: Mapped[str] = mapped_column(sa.String(200))
    is_control: Mapped[bool] = mapped_column(sa.Boolean)
    value: Mapped[float | None] = mapped_column(sa.Float)
    n_cells: Mapped[int] = mapped_column(sa.Integer)
    profile: Mapped[bytes | None] = mapped_column(sa.LargeBinary)


class LoopState(Base):
    __tablename__ = "loop_state"
    project_id: Mapped[int] = mapped_column(
        sa.ForeignKey("projects.id"), primary_key=True, autoincrement=False
    )
    round: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(32))
    updated_at: Mapped[datetime] = mapped_column(_tz)


# ----------------------------------------------------------------------------- records
@dataclass
class ResultRecord:
    """One measured condition of a round.

    Attributes
    ----------
    candidate
        Perturbation label (the control label for the round's controls).
    n_cells
        Cells measured.
    value
        Scalar readout (e.g. effect size); ``None`` for controls.
    profile
        Optional mean profile (e.g. mean log-expression per gene), stored compactly.
    is_control
        Whether this row holds the round's control cells.
    """

    candidate: str
    n_cells: int
    value: float | None = None
    profile: np.ndarray | None = None
    is_control: bool = False


@dataclass
class PredictionRecord:
    """A model's prediction for one candidate: a summary score, optionally an interval and an array."""

    candidate: str
    score: float
    lower: float | None = None
    upper: float | None = None
    payload: np.ndarray | None = None


@dataclass
class ModelRecord:
    """A fitted model version: instrument name, parameters and the content hash of its saved directory."""

    instrument: str
    params: Mapping[str, Any]
    content_hash: str


@dataclass
class DatasetRecord:
    """Data a round used (e.g. an uploaded results file), identified by its content hash."""

    name: str
    content_hash: str
    n_obs: int | None = None
    n_vars: int | None = None


@dataclass
class RoundRecord:
    """Everything one round writes, committed together by :meth:`Ledger.commit_round`.

    Attributes
    ----------
    project
        Project name.
    number
        Round number (1, 2, ...).
    strategy
        Acquisition strategy that chose the proposals.
    status
        ``"awaiting-results"`` (proposed, not measured) or ``"complete"``.
    proposals
        Candidates proposed in this round, in order (``None``: already recorded).
    results
        Measured conditions (empty while awaiting results).
    dataset
        The data the results came from, if any.
    model
        Model version fitted after the results.
    predictions
        That model's predictions for the candidates.
    loop_status
        Status written to the loop state (defaults to ``status``; ``"finished"``
        after the last round).
    """

    project: str
    number: int
    strategy: str
    status: str
    proposals: Sequence[str] | None = None
    results: Sequence[ResultRecord] = field(default_factory=list)
    dataset: DatasetRecord | None = None
    model: ModelRecord | None = None
    predictions: Sequence[PredictionRecord] = field(default_factory=list)
    loop_status: str | None = None


# ----------------------------------------------------------------------------- ledger
def _as_url(url: str | Path) -> str:
    if isinstance(url, Path) or "://" not in str(url):
        return f"sqlite:///{Path(url).expanduser()}"
    return str(url)


def _redact(url: str) -> str:
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # malformed: hide whatever stands between '://' and '@'
        import re

        return re.sub(r"://[^@/]*@", "://***@", url)


class Ledger:
    """A database of lab-loop projects (SQLite file or PostgreSQL).

    Parameters
    ----------
    url
        SQLAlchemy URL (``"sqlite:///lab.db"``, ``"postgresql+psycopg://..."``)
        or a path to a SQLite file.
    upgrade
        Bring an older schema to the newest version when opening (default).
        With ``False`` nothing is written (no migration, no new SQLite file or
        folder), and a ledger that is missing or at another version raises
        :class:`LedgerSchemaError`: readers open ledgers this way.

    Examples
    --------
    >>> ledger = Ledger("sqlite:///lab.db")  # doctest: +SKIP
    >>> ledger.list_projects()  # doctest: +SKIP
    """

    def __init__(
        self, url: str | Path = "sqlite:///aivc-ledger.db", *, upgrade: bool = True
    ) -> None:
        self.url = _as_url(url)
        try:
            sa_url = sa.make_url(self.url)
        except (sa.exc.ArgumentError, ValueError) as e:
            msg = f"Could not parse the ledger URL {_redact(self.url)!r} ({e}); expected e.g. 'sqlite:///lab.db'."
            raise ValueError(msg) from None
        kwargs: dict[str, Any] = {}
        if sa_url.get_backend_name() == "sqlite":
            db = sa_url.database
            if db and db != ":memory:":
                if upgrade:
                    Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
                elif not Path(db).expanduser().is_file():
                    msg = (
                        f"There is no ledger at {_redact(self.url)!r} (no such file). A lab loop "
                        "creates it, or `aivc ledger migrate URL`."
                    )
                    raise LedgerSchemaError(msg, version=0)
            kwargs["connect_args"] = {"timeout": 60}
        self.engine = sa.create_engine(self.url, **kwargs)
        if sa_url.get_backend_name() == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            if upgrade:
                migrations.upgrade(self.engine)
            with self.engine.connect() as conn:
                version = migrations.current_version(conn)
        except sa.exc.OperationalError as e:
            self.engine.dispose()
            reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            msg = (
                f"Could not open the ledger {_redact(self.url)!r} ({reason}). Check the URL, that the "
                "database server is running and that the user may connect."
            )
            raise RuntimeError(msg) from None
        if version != migrations.LATEST_VERSION:
            self.engine.dispose()
            if version > migrations.LATEST_VERSION:
                advice = "Upgrade aivc to read it."
            else:
                advice = "Migrate it with `aivc ledger migrate URL` (or open it with upgrade=True)."
            msg = (
                f"The ledger {_redact(self.url)!r} is at schema version {version}; this aivc needs "
                f"{migrations.LATEST_VERSION}. {advice}"
            )
            raise LedgerSchemaError(msg, version=version)

    def __repr__(self) -> str:
        return f"Ledger({_redact(self.url)!r})"

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """The database's schema version."""
        with self.engine.connect() as conn:
            return migrations.current_version(conn)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine) as s, s.begin():
            yield s

    # ------------------------------------------------------------------ projects
    def create_project(self, name: str, *, config: Mapping[str, Any] | None = None) -> int:
        """Create project ``name`` (or return the existing one's id).

        An existing project must have the same ``config``; otherwise a
        :class:`LedgerConflictError` names the settings that differ.
        """
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            msg = f"A project name must be a non-empty string of at most 200 characters. Got {name!r} instead."
            raise ValueError(msg)
        text = json.dumps(dict(config or {}), sort_keys=True, default=str)
        with self._session() as s:
            p = s.scalar(sa.select(Project).where(Project.name == name))
            if p is not None:
                old = json.loads(p.config)
                new = json.loads(text)
                if old != new:
                    diff = {
                        k: {"ledger": old.get(k), "now": new.get(k)}
                        for k in sorted(set(old) | set(new))
                        if old.get(k) != new.get(k)
                    }
                    msg = (
                        f"Project {name!r} already exists with different settings {diff}; use the "
                        "recorded settings to resume it, or choose a new project name."
                    )
                    raise LedgerConflictError(msg)
                return p.id
            p = Project(name=name, config=text, created_at=_now())
            s.add(p)
            try:
                s.flush()
            except sa.exc.IntegrityError:  # created concurrently
                msg = f"Project {name!r} was created concurrently; open it again."
                raise LedgerConflictError(msg) from None
            return p.id

    def set_rounds(self, name: str, n_rounds: int) -> None:
        """Change the number of rounds of project ``name`` (its ``n_rounds`` setting).

        A finished project given more rounds than it has run is open again
        (``"complete"``); a complete one whose rounds are all run is
        ``"finished"``. Fewer rounds than the project has run are refused.
        """
        n_rounds = int(n_rounds)
        with self._session() as s:
            p = self._project(s, name)
            state = s.get(LoopState, p.id)
            done = state.round if state is not None else 0
            if n_rounds < max(done, 1):
                msg = (
                    f"Project {name!r} has run {done} rounds; it cannot have {n_rounds}. Ask for "
                    f"at least {max(done, 1)} rounds."
                )
                raise ValueError(msg)
            config = json.loads(p.config)
            config["n_rounds"] = n_rounds
            p.config = json.dumps(config, sort_keys=True, default=str)
            if state is not None:
                if state.status == FINISHED and done < n_rounds:
                    state.status = COMPLETE
                elif state.status == COMPLETE and done >= n_rounds:
                    state.status = FINISHED
                state.updated_at = _now()

    def project_config(self, name: str) -> dict[str, Any]:
        """The settings a project was created with."""
        with self._session() as s:
            return json.loads(self._project(s, name).config)

    def _project(self, s: Session, name: str) -> Project:
        p = s.scalar(sa.select(Project).where(Project.name == name))
        if p is None:
            known = s.scalars(sa.select(Project.name).order_by(Project.name)).all()
            msg = f"No project {name!r} in the ledger; it holds {list(known)}."
            raise KeyError(msg)
        return p

    # ------------------------------------------------------------------ rounds
    def commit_round(
        self, record: RoundRecord, *, before_commit: Callable[[], None] | None = None
    ) -> None:
        """Write everything of one round in a single transaction.

        A round first recorded as ``"awaiting-results"`` (its proposals only) is
        completed by a later call with the same number, ``proposals=None`` (or
        the same proposals) and its results. Anything that would duplicate or
        contradict recorded data raises :class:`LedgerConflictError` and writes
        nothing.

        Parameters
        ----------
        record
            The round's rows.
        before_commit
            Called inside the open transaction once every row was sent to the
            database, just before the commit. An exception it raises rolls the
            round back. Meant for tests of crash safety and concurrency, which
            stop or kill the process at that point.
        """
        if record.status not in (PROPOSED, COMPLETE):
            msg = f"A round's status must be {PROPOSED!r} or {COMPLETE!r}. Got {record.status!r} instead."
            raise ValueError(msg)
        if record.number < 1:
            msg = f"Round numbers start at 1. Got {record.number} instead."
            raise ValueError(msg)
        try:
            with self._session() as s:
                self._write_round(s, record)
                s.flush()
                if before_commit is not None:
                    before_commit()
        except sa.exc.IntegrityError as e:
            msg = (
                f"Round {record.number} of project {record.project!r} would duplicate data already in "
                f"the ledger ({str(e.orig).splitlines()[0]}); nothing was written."
            )
            raise LedgerConflictError(msg) from None

    def _write_round(self, s: Session, rec: RoundRecord) -> None:
        p = self._project(s, rec.project)
        r = s.scalar(sa.select(Round).where(Round.project_id == p.id, Round.number == rec.number))
        last = s.scalar(sa.select(sa.func.max(Round.number)).where(Round.project_id == p.id)) or 0
        if r is None:
            if rec.number != last + 1:
                msg = f"Project {rec.project!r} has {last} rounds; the next round is {last + 1}, not {rec.number}."
                raise LedgerConflictError(msg)
            if last:
                prev = s.scalar(
                    sa.select(Round.status).where(Round.project_id == p.id, Round.number == last)
                )
                if prev != COMPLETE:
                    msg = f"Round {last} of project {rec.project!r} is still {prev!r}; complete it first."
                    raise LedgerConflictError(msg)
            if not rec.proposals:
                msg = f"Round {rec.number} is new; it needs its proposals."
                raise ValueError(msg)
            r = Round(
                project_id=p.id,
                number=rec.number,
                strategy=rec.strategy,
                status=rec.status,
                created_at=_now(),
            )
            s.add(r)
            s.flush()
            s.add_all(
                Proposal(project_id=p.id, round_id=r.id, position=i, candidate=str(c))
                for i, c in enumerate(rec.proposals)
            )
        else:
            if r.status == COMPLETE:
                msg = f"Round {rec.number} of project {rec.project!r} is already complete; nothing was written."
                raise LedgerConflictError(msg)
            if rec.proposals is not None:
                have = s.scalars(
                    sa.select(Proposal.candidate)
                    .where(Proposal.round_id == r.id)
                    .order_by(Proposal.position)
                ).all()
                if list(have) != [str(c) for c in rec.proposals]:
                    msg = (
                        f"Round {rec.number} of project {rec.project!r} was proposed as {list(have)[:5]}...; "
                        f"got different proposals {list(rec.proposals)[:5]}...; nothing was written."
                    )
                    raise LedgerConflictError(msg)
            r.status = rec.status
        dataset_id = None
        if rec.dataset is not None:
            d = Dataset(
                project_id=p.id,
                name=rec.dataset.name,
                content_hash=rec.dataset.content_hash,
                n_obs=rec.dataset.n_obs,
                n_vars=rec.dataset.n_vars,
                created_at=_now(),
            )
            s.add(d)
            s.flush()
            dataset_id = d.id
        s.add_all(
            Result(
                project_id=p.id,
                round_id=r.id,
                dataset_id=dataset_id,
                candidate=str(x.candidate),
                is_control=bool(x.is_control),
                value=None if x.value is None else float(x.value),
                n_cells=int(x.n_cells),
                profile=encode_array(x.profile),
            )
            for x in rec.results
        )
        if rec.model is not None:
            m = ModelVersion(
                project_id=p.id,
                round_id=r.id,
                instrument=rec.model.instrument,
                params=json.dumps(dict(rec.model.params), sort_keys=True, default=str),
                content_hash=rec.model.content_hash,
                created_at=_now(),
            )
            s.add(m)
            s.flush()
            s.add_all(
                Prediction(
                    round_id=r.id,
                    model_version_id=m.id,
                    candidate=str(x.candidate),
                    score=float(x.score),
                    score_lower=None if x.lower is None else float(x.lower),
                    score_upper=None if x.upper is None else float(x.upper),
                    payload=encode_array(x.payload),
                )
                for x in rec.predictions
            )
        elif rec.predictions:
            msg = "Predictions need the model version that made them (record.model)."
            raise ValueError(msg)
        if rec.status == COMPLETE:
            r.completed_at = _now()
        state = s.get(LoopState, p.id)
        status = rec.loop_status or rec.status
        if state is None:
            s.add(LoopState(project_id=p.id, round=rec.number, status=status, updated_at=_now()))
        else:
            state.round, state.status, state.updated_at = rec.number, status, _now()

    def set_status(self, project: str, status: str) -> None:
        """Set a project's loop status (e.g. ``"finished"``) without touching its rounds."""
        with self._session() as s:
            p = self._project(s, project)
            state = s.get(LoopState, p.id)
            if state is None:
                s.add(LoopState(project_id=p.id, round=0, status=status, updated_at=_now()))
            else:
                state.status, state.updated_at = status, _now()

    # ------------------------------------------------------------------ reading
    def list_projects(self) -> list[dict[str, Any]]:
        """Every project: name, creation time, settings, current round and status."""
        with self._session() as s:
            rows = s.execute(
                sa.select(Project, LoopState)
                .outerjoin(LoopState, LoopState.project_id == Project.id)
                .order_by(Project.name)
            ).all()
            return [
                {
                    "name": p.name,
                    "created_at": p.created_at,
                    "config": json.loads(p.config),
                    "round": st.round if st is not None else 0,
                    "status": st.status if st is not None else "new",
                }
                for p, st in rows
            ]

    def state(self, project: str) -> dict[str, Any]:
        """The loop state of a project: ``{"round": int, "status": str}`` (round 0, ``"new"`` before any)."""
        with self._session() as s:
            p = self._project(s, project)
            st = s.get(LoopState, p.id)
            if st is None:
                return {"round": 0, "status": "new"}
            return {"round": st.round, "status": st.status}

    def rounds(self, project: str) -> pd.DataFrame:
        """One row per round: number, strategy, status, proposals, results, times."""
        with self._session() as s:
            p = self._project(s, project)
            n_prop = (
                sa.select(Proposal.round_id, sa.func.count().label("n"))
                .group_by(Proposal.round_id)
                .subquery()
            )
            n_res = (
                sa.select(Result.round_id, sa.func.count().label("n"))
                .where(Result.is_control.is_(False))
                .group_by(Result.round_id)
                .subquery()
            )
            rows = s.execute(
                sa.select(
                    Round.number,
                    Round.strategy,
                    Round.status,
                    sa.func.coalesce(n_prop.c.n, 0),
                    sa.func.coalesce(n_res.c.n, 0),
                    Round.created_at,
                    Round.completed_at,
                )
                .outerjoin(n_prop, n_prop.c.round_id == Round.id)
                .outerjoin(n_res, n_res.c.round_id == Round.id)
                .where(Round.project_id == p.id)
                .order_by(Round.number)
            ).all()
        return pd.DataFrame(
            rows,
            columns=[
                "round",
                "strategy",
                "status",
                "n_proposals",
                "n_results",
                "created_at",
                "completed_at",
            ],
        )

    def proposals(self, project: str, round: int | None = None) -> pd.DataFrame:
        """Proposed candidates: round, position, candidate."""
        with self._session() as s:
            p = self._project(s, project)
            q = (
                sa.select(Round.number, Proposal.position, Proposal.candidate)
                .join(Round, Round.id == Proposal.round_id)
                .where(Proposal.project_id == p.id)
            )
            if round is not None:
                q = q.where(Round.number == int(round))
            rows = s.execute(q.order_by(Round.number, Proposal.position)).all()
        return pd.DataFrame(rows, columns=["round", "position", "candidate"])

    def results(
        self, project: str, round: int | None = None, *, profiles: bool = False
    ) -> pd.DataFrame:
        """Measured conditions: round, candidate, is_control, value, n_cells (and ``profile`` arrays)."""
        with self._session() as s:
            p = self._project(s, project)
            cols = [Round.number, Result.candidate, Result.is_control, Result.value, Result.n_cells]
            if profiles:
                cols.append(Result.profile)
            q = (
                sa.select(*cols)
                .join(Round, Round.id == Result.round_id)
                .where(Result.project_id == p.id)
            )
            if round is not None:
                q = q.where(Round.number == int(round))
            rows = s.execute(q.order_by(Round.number, Result.id)).all()
        names = ["round", "candidate", "is_control", "value", "n_cells"]
        df = pd.DataFrame(rows, columns=[*names, "profile"] if profiles else names)
        df["is_control"] = df["is_control"].astype(bool)
        if profiles:
            df["profile"] = [decode_array(b) for b in df["profile"]]
        return df

    def predictions(
        self, project: str, round: int | None = None, *, payload: bool = False
    ) -> pd.DataFrame:
        """Predictions: round, model_version, candidate, score, score_lower, score_upper (and ``payload``)."""
        with self._session() as s:
            p = self._project(s, project)
            cols = [
                Round.number,
                Prediction.model_version_id,
                Prediction.candidate,
                Prediction.score,
                Prediction.score_lower,
                Prediction.score_upper,
            ]
            if payload:
                cols.append(Prediction.payload)
            q = (
                sa.select(*cols)
                .join(Round, Round.id == Prediction.round_id)
                .where(Round.project_id == p.id)
            )
            if round is not None:
                q = q.where(Round.number == int(round))
            rows = s.execute(q.order_by(Round.number, Prediction.id)).all()
        names = ["round", "model_version", "candidate", "score", "score_lower", "score_upper"]
        df = pd.DataFrame(rows, columns=[*names, "payload"] if payload else names)
        if payload:
            df["payload"] = [decode_array(b) for b in df["payload"]]
        return df

    def model_versions(self, project: str) -> pd.DataFrame:
        """Model versions: id, round, instrument, params (dict), content_hash, created_at."""
        with self._session() as s:
            p = self._project(s, project)
            rows = s.execute(
                sa.select(
                    ModelVersion.id,
                    Round.number,
                    ModelVersion.instrument,
                    ModelVersion.params,
                    ModelVersion.content_hash,
                    ModelVersion.created_at,
                )
                .join(Round, Round.id == ModelVersion.round_id)
                .where(ModelVersion.project_id == p.id)
                .order_by(Round.number)
            ).all()
        df = pd.DataFrame(
            rows, columns=["id", "round", "instrument", "params", "content_hash", "created_at"]
        )
        df["params"] = [json.loads(x) for x in df["params"]]
        return df

    def datasets(self, project: str) -> pd.DataFrame:
        """Registered data: name, content_hash, n_obs, n_vars, created_at."""
        with self._session() as s:
            p = self._project(s, project)
            rows = s.execute(
                sa.select(
                    Dataset.name,
                    Dataset.content_hash,
                    Dataset.n_obs,
                    Dataset.n_vars,
                    Dataset.created_at,
                )
                .where(Dataset.project_id == p.id)
                .order_by(Dataset.id)
            ).all()
        return pd.DataFrame(rows, columns=["name", "content_hash", "n_obs", "n_vars", "created_at"])


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
