from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from aivc.experiments import migrations
from aivc.experiments._ledger import (
    COMPLETE,
    PROPOSED,
    Base,
    Ledger,
    LedgerConflictError,
    LedgerSchemaError,
    ModelRecord,
    PredictionRecord,
    ResultRecord,
    RoundRecord,
)


def _round(number: int, candidates: list[str], *, status: str = COMPLETE) -> RoundRecord:
    rng = np.random.default_rng(number)
    results = [ResultRecord("control", n_cells=50, profile=rng.normal(size=5), is_control=True)]
    results += [
        ResultRecord(c, n_cells=30, value=float(i), profile=rng.normal(size=5))
        for i, c in enumerate(candidates)
    ]
    preds = [
        PredictionRecord(f"G{j}", score=0.1 * j, lower=0.1 * j - 1, upper=0.1 * j + 1)
        for j in range(10)
    ]
    return RoundRecord(
        project="p",
        number=number,
        strategy="random",
        status=status,
        proposals=candidates,
        results=results if status == COMPLETE else [],
        model=ModelRecord("linear", {"ridge": 1.0}, "abc123") if status == COMPLETE else None,
        predictions=preds if status == COMPLETE else [],
    )


def test_round_trip_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    with Ledger(url) as ledger:
        assert ledger.schema_version == migrations.LATEST_VERSION
        ledger.create_project("p", config={"model": "linear", "batch_size": 2})
        ledger.commit_round(_round(1, ["G1", "G2"]))
        ledger.commit_round(_round(2, ["G3", "G4"]))
    # a fresh connection reads what was written
    with Ledger(tmp_path / "lab.db") as ledger:
        [proj] = ledger.list_projects()
        assert proj["name"] == "p"
        assert proj["config"] == {"model": "linear", "batch_size": 2}
        assert (proj["round"], proj["status"]) == (2, COMPLETE)
        rounds = ledger.rounds("p")
        assert rounds["round"].tolist() == [1, 2]
        assert rounds["n_proposals"].tolist() == [2, 2]
        assert rounds["n_results"].tolist() == [2, 2]
        assert ledger.proposals("p")["candidate"].tolist() == ["G1", "G2", "G3", "G4"]
        res = ledger.results("p", round=2, profiles=True)
        assert res["candidate"].tolist() == ["control", "G3", "G4"]
        assert res["is_control"].tolist() == [True, False, False]
        expected = np.random.default_rng(2).normal(size=5)
        np.testing.assert_allclose(res["profile"].iloc[0], expected, rtol=1e-6)
        pred = ledger.predictions("p", round=1)
        assert len(pred) == 10
        np.testing.assert_allclose(pred["score_upper"] - pred["score_lower"], 2.0)
        mv = ledger.model_versions("p")
        assert mv["params"].iloc[0] == {"ridge": 1.0}
        assert mv["content_hash"].tolist() == ["abc123", "abc123"]


def test_unique_constraints_no_duplicates_on_retry(tmp_path):
    ledger = Ledger(tmp_path / "lab.db")
    ledger.create_project("p", config={"a": 1})
    assert ledger.create_project("p", config={"a": 1}) == ledger.create_project(
        "p", config={"a": 1}
    )
    with pytest.raises(LedgerConflictError, match="different settings"):
        ledger.create_project("p", config={"a": 2})
    ledger.commit_round(_round(1, ["G1", "G2"]))
    # retrying the same round, re-proposing a measured candidate, or skipping a round: refused
    with pytest.raises(LedgerConflictError, match="already complete"):
        ledger.commit_round(_round(1, ["G1", "G2"]))
    with pytest.raises(LedgerConflictError, match="duplicate"):
        ledger.commit_round(_round(2, ["G3", "G1"]))
    with pytest.raises(LedgerConflictError, match="next round is 2"):
        ledger.commit_round(_round(3, ["G5"]))
    # a result listed twice in one round is refused as a whole
    bad = _round(2, ["G7", "G8"])
    bad.results = [*bad.results, ResultRecord("G7", n_cells=3, value=1.0)]
    with pytest.raises(LedgerConflictError):
        ledger.commit_round(bad)
    # nothing of the refused rounds was written
    assert ledger.proposals("p")["candidate"].tolist() == ["G1", "G2"]
    assert len(ledger.results("p")) == 3
    assert len(ledger.predictions("p")) == 10
    assert ledger.state("p") == {"round": 1, "status": COMPLETE}
    ledger.close()


def test_two_phase_round(tmp_path):
    ledger = Ledger(tmp_path / "lab.db")
    ledger.create_project("p")
    ledger.commit_round(_round(1, ["G1", "G2"], status=PROPOSED))
    assert ledger.state("p") == {"round": 1, "status": PROPOSED}
    with pytest.raises(LedgerConflictError, match="still"):
        ledger.commit_round(_round(2, ["G3"], status=PROPOSED))
    with pytest.raises(LedgerConflictError, match="different proposals"):
        ledger.commit_round(_round(1, ["G2", "G1"]))
    done = _round(1, ["G1", "G2"])
    done.proposals = None
    ledger.commit_round(done)
    assert ledger.state("p") == {"round": 1, "status": COMPLETE}
    assert ledger.proposals("p")["candidate"].tolist() == ["G1", "G2"]
    assert len(ledger.results("p")) == 3
    ledger.close()


def test_before_commit_runs_inside_the_transaction(tmp_path):
    ledger = Ledger(tmp_path / "lab.db")
    reader = Ledger(tmp_path / "lab.db")
    ledger.create_project("p")
    seen = []

    def look() -> None:
        # every row was sent, nothing is committed: another connection sees no round yet
        seen.append((reader.state("p"), len(reader.proposals("p"))))

    ledger.commit_round(_round(1, ["G1", "G2"]), before_commit=look)
    assert seen == [({"round": 0, "status": "new"}, 0)]
    assert reader.state("p") == {"round": 1, "status": COMPLETE}

    # a callback that fails (like a process stopped at that point) rolls the round back
    def fail() -> None:
        msg = "stopped before the commit"
        raise RuntimeError(msg)

    with pytest.raises(RuntimeError, match="stopped before the commit"):
        ledger.commit_round(_round(2, ["G3", "G4"]), before_commit=fail)
    assert reader.state("p") == {"round": 1, "status": COMPLETE}
    assert reader.proposals("p")["candidate"].tolist() == ["G1", "G2"]
    assert len(reader.results("p")) == 3
    assert len(reader.predictions("p")) == 10
    # the same round commits afterwards
    ledger.commit_round(_round(2, ["G3", "G4"]))
    assert reader.rounds("p")["round"].tolist() == [1, 2]
    reader.close()
    ledger.close()


def _columns(engine: sa.Engine) -> dict[str, dict[str, object]]:
    insp = sa.inspect(engine)
    out = {}
    for t in insp.get_table_names():
        cols = {c["name"]: (c["nullable"]) for c in insp.get_columns(t)}
        uniques = sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t))
        out[t] = {"columns": cols, "unique": uniques}
    return out


def test_migration_from_version_1(tmp_path):
    path = tmp_path / "old.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    assert migrations.upgrade(engine, target=1) == 1
    # a version-1 ledger with one finished round, written with version-1 columns only
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO projects (id, name, config, created_at) VALUES (1, 'old', '{}', '2025-01-01')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO rounds (id, project_id, number, strategy, status, created_at) "
                "VALUES (1, 1, 1, 'random', 'complete', '2025-01-01')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO model_versions (id, project_id, round_id, instrument, params, content_hash, created_at) "
                "VALUES (1, 1, 1, 'linear', '{}', 'h', '2025-01-01')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO predictions (round_id, model_version_id, candidate, score) VALUES (1, 1, 'G1', 0.5)"
            )
        )
        cols = {c["name"] for c in sa.inspect(conn).get_columns("predictions")}
        assert "score_lower" not in cols
        assert not sa.inspect(conn).has_table("loop_state")
    engine.dispose()
    with pytest.raises(RuntimeError, match="schema version 1"):
        Ledger(path, upgrade=False)
    ledger = Ledger(path)
    assert ledger.schema_version == migrations.LATEST_VERSION == 2
    # old data survived, the new state table was filled from the rounds
    assert ledger.state("old") == {"round": 1, "status": "complete"}
    pred = ledger.predictions("old")
    assert pred["score"].tolist() == [0.5]
    assert pred["score_lower"].isna().all()
    ledger.close()
    # the migrated schema is exactly the one the models describe (and a fresh one)
    fresh = sa.create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    migrations.upgrade(fresh)
    declared = sa.create_engine(f"sqlite:///{tmp_path / 'declared.db'}")
    Base.metadata.create_all(declared)
    migrated = sa.create_engine(f"sqlite:///{path}")
    got, want = _columns(migrated), _columns(fresh)
    assert got == want
    decl = _columns(declared)
    for table, spec in decl.items():
        assert set(spec["columns"]) == set(got[table]["columns"]), table
        assert spec["unique"] == got[table]["unique"], table
    for e in (fresh, declared, migrated):
        e.dispose()


def test_newer_ledger_is_refused(tmp_path):
    path = tmp_path / "new.db"
    Ledger(path).close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(
            migrations.version_table.insert().values(
                version=99, description="future", applied_at=sa.func.now()
            )
        )
    engine.dispose()
    with pytest.raises(RuntimeError, match="newer than this aivc"):
        Ledger(path)


def test_reader_never_migrates_nor_creates(tmp_path):
    """``upgrade=False`` writes nothing: no file, no folder, no migration; it says how to migrate."""
    missing = tmp_path / "sub" / "none.db"
    with pytest.raises(LedgerSchemaError, match="no ledger") as e:
        Ledger(missing, upgrade=False)
    assert e.value.version == 0 and not missing.parent.exists()

    path = tmp_path / "old.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    migrations.upgrade(engine, target=1)
    with pytest.raises(LedgerSchemaError, match="aivc ledger migrate") as e:
        Ledger(path, upgrade=False)
    assert e.value.version == 1
    with engine.connect() as conn:
        assert migrations.current_version(conn) == 1
    engine.dispose()
    with Ledger(path) as ledger:  # a writer migrates
        assert ledger.schema_version == migrations.LATEST_VERSION
    with Ledger(path, upgrade=False) as reader:
        assert reader.list_projects() == []


def test_postgres_round_trip_and_migration():
    from _postgres import fresh_database, postgres_server

    with postgres_server() as server:
        url = fresh_database(server, "ledger_rt")
        engine = sa.create_engine(url)
        migrations.upgrade(engine, target=1)
        engine.dispose()
        with Ledger(url) as ledger:
            assert ledger.schema_version == 2
            ledger.create_project("p")
            ledger.commit_round(_round(1, ["G1", "G2"]))
            with pytest.raises(LedgerConflictError):
                ledger.commit_round(_round(2, ["G2"]))
            assert ledger.proposals("p")["candidate"].tolist() == ["G1", "G2"]
            res = ledger.results("p", profiles=True)
            assert len(res) == 3
            assert res["profile"].iloc[1].shape == (5,)


def test_unreachable_database_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="Could not open the ledger"):
        Ledger("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(ValueError, match="Could not parse the ledger URL"):
        Ledger("postgresql+psycopg://host:notaport/db")
    with pytest.raises(ValueError, match="project name"):
        Ledger(tmp_path / "x.db").create_project("")
