"""The migration engine against a real PostgreSQL database: ledger, lock, failures, revert."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from deploy import migrations as m
from deploy.errors import MigrationError
from deploy.secrets import Secret

NOTES = {
    "0001_notes.up.sql": "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);\n"
    "COMMENT ON TABLE notes IS '100% notes';\n",
    "0001_notes.down.sql": "DROP TABLE notes;\n",
    "0002_notes_body_idx.up.sql": "-- stageflow: transaction=off\n"
    "CREATE INDEX CONCURRENTLY notes_body_idx ON notes (body);\n",
    "0002_notes_body_idx.down.sql": "-- stageflow: transaction=off\n"
    "DROP INDEX CONCURRENTLY notes_body_idx;\n",
    "0003_notes_title.up.sql": "-- stageflow: phase=expand\nALTER TABLE notes ADD COLUMN title text;\n",
    "0003_notes_title.down.sql": "ALTER TABLE notes DROP COLUMN title;\n",
}


def write(directory: Path, files: dict[str, str]) -> list[m.MigrationFile]:
    for name, text in files.items():
        (directory / name).write_text(text)
    return m.discover(directory)


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[call-overload]


def run(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[call-overload]


def ledger_exists(dsn: str) -> bool:
    return query(dsn, "SELECT to_regclass('stageflow_migrations') IS NOT NULL")[0][0]


def ledger(dsn: str) -> list[tuple[Any, ...]]:
    if not ledger_exists(dsn):
        return []
    return query(dsn, "SELECT * FROM stageflow_migrations ORDER BY version")


def fingerprint(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a migration could change in schema public, and the ledger rows."""
    return {
        "columns": query(
            dsn,
            "SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE n.nspname = 'public' ORDER BY 1, 3",
        ),
        "indexes": query(
            dsn, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        ),
        "functions": query(
            dsn,
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1",
        ),
        "ledger": ledger(dsn),
    }


def tables(dsn: str) -> set[str]:
    return {r[0] for r in query(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def refusal(call: Callable[[], object]) -> MigrationError:
    with pytest.raises(MigrationError) as info:
        call()
    return info.value


# --------------------------------------------------------------------------- applying


def test_applies_three_files_and_records_them(pg_dsn: str, tmp_path: Path) -> None:
    files = write(tmp_path, NOTES)
    assert m.current_version(pg_dsn) == 0
    assert [f.version for f in m.pending(pg_dsn, files)] == [1, 2, 3]

    applied = m.migrate(pg_dsn, files, release="r1", applied_by="alice")

    assert [f.version for f in applied] == [1, 2, 3]
    assert query(pg_dsn, "SELECT indexname FROM pg_indexes WHERE indexname = 'notes_body_idx'")
    assert ("title",) in query(
        pg_dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'"
    )
    assert query(pg_dsn, "SELECT obj_description('notes'::regclass)") == [("100% notes",)]
    rows = query(
        pg_dsn,
        "SELECT version, name, checksum, phase, state, applied_by, release, error FROM stageflow_migrations",
    )
    assert rows == [
        (1, "notes", files[0].checksum, None, "applied", "alice", "r1", None),
        (2, "notes_body_idx", files[1].checksum, None, "applied", "alice", "r1", None),
        (3, "notes_title", files[2].checksum, "expand", "applied", "alice", "r1", None),
    ]
    assert all(r[0] >= 0 for r in query(pg_dsn, "SELECT duration_ms FROM stageflow_migrations"))
    assert m.current_version(pg_dsn) == 3
    assert m.pending(pg_dsn, files) == []
    assert [(s.version, s.state, s.drift) for s in m.status(pg_dsn, files)] == [
        (1, "applied", False),
        (2, "applied", False),
        (3, "applied", False),
    ]
    assert m.migrate(pg_dsn, files) == []  # a second run has nothing to do
    m.validate(pg_dsn, files)


def test_non_transactional_file_with_tricky_sql_runs_statement_by_statement(
    pg_dsn: str, tmp_path: Path
) -> None:
    tricky = (
        "-- stageflow: transaction=off\n"
        "CREATE TABLE t (id int, note text);\n"
        "/* a; comment */ INSERT INTO t VALUES (1, 'semi;colon'), (2, E'it\\'s;');\n"
        "CREATE FUNCTION plus_one(x int) RETURNS int LANGUAGE plpgsql AS $fn$\n"
        "BEGIN RETURN x + 1; END;\n$fn$;\n"
        "CREATE FUNCTION sign_of(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC\n"
        "  SELECT CASE WHEN x > 0 THEN 1 WHEN x < 0 THEN -1 ELSE 0 END;\nEND;\n"
        "CREATE INDEX CONCURRENTLY t_id ON t (id); -- trailing; comment\n"
    )
    files = write(tmp_path, {"0001_tricky.up.sql": tricky})
    assert not files[0].transactional

    m.migrate(pg_dsn, files)

    assert query(pg_dsn, "SELECT note FROM t ORDER BY id") == [("semi;colon",), ("it's;",)]
    assert query(pg_dsn, "SELECT plus_one(1), sign_of(-5)") == [(2, -1)]
    assert query(pg_dsn, "SELECT indexname FROM pg_indexes WHERE tablename = 't'") == [("t_id",)]


def test_target_version_is_respected(pg_dsn: str, tmp_path: Path) -> None:
    files = write(tmp_path, NOTES)
    assert [f.version for f in m.migrate(pg_dsn, files, target=2)] == [1, 2]
    assert m.current_version(pg_dsn) == 2
    assert (
        "below the applied version 2" in refusal(lambda: m.migrate(pg_dsn, files, target=1)).message
    )
    assert "target version 9" in refusal(lambda: m.migrate(pg_dsn, files, target=9)).message
    assert [f.version for f in m.migrate(pg_dsn, files)] == [3]


def test_dry_run_touches_nothing(pg_dsn: str, tmp_path: Path) -> None:
    files = write(tmp_path, NOTES)
    before = fingerprint(pg_dsn)

    plan = m.migrate(pg_dsn, files, dry_run=True, target=2)

    assert [(f.version, f.name) for f in plan] == [(1, "notes"), (2, "notes_body_idx")]
    assert not ledger_exists(pg_dsn)
    assert fingerprint(pg_dsn) == before
    assert m.status(pg_dsn, files)[0].state == "pending"
    assert not ledger_exists(pg_dsn)  # status reads, never creates


# --------------------------------------------------------------------------- failures


def test_transactional_failure_leaves_schema_and_ledger_as_before(
    pg_dsn: str, tmp_path: Path
) -> None:
    m.migrate(pg_dsn, write(tmp_path, {"0001_notes.up.sql": NOTES["0001_notes.up.sql"]}))
    files = write(
        tmp_path,
        {
            "0002_half.up.sql": "CREATE TABLE half (id int);\nALTER TABLE notes ADD COLUMN x int;\n"
            "INSERT INTO missing_table VALUES (1);\n",
        },
    )
    before = fingerprint(pg_dsn)
    assert (
        "notes" in {r[0] for r in before["columns"]} and len(before["ledger"]) == 1
    )  # not vacuous

    error = refusal(lambda: m.migrate(pg_dsn, files))

    assert isinstance(error, m.MigrationFailed) and error.applied == []
    assert "0002_half.up.sql" in error.message
    assert 'relation "missing_table" does not exist' in error.message
    assert fingerprint(pg_dsn) == before
    assert "half" not in tables(pg_dsn)


def test_file_and_ledger_row_commit_together(pg_dsn: str, tmp_path: Path) -> None:
    m.migrate(pg_dsn, write(tmp_path, {"0001_notes.up.sql": NOTES["0001_notes.up.sql"]}))
    run(
        pg_dsn,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'ledger refuses %', NEW.version; END $$;"
        " CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON stageflow_migrations"
        " FOR EACH ROW WHEN (NEW.version = 2) EXECUTE FUNCTION refuse()",
    )
    files = write(tmp_path, {"0002_more.up.sql": "CREATE TABLE more (id int);\n"})
    before = fingerprint(pg_dsn)

    error = refusal(lambda: m.migrate(pg_dsn, files))

    assert "0002_more.up.sql" in error.message and "ledger refuses 2" in error.message
    assert fingerprint(pg_dsn) == before  # the file's table went with the ledger row


def test_non_transactional_failure_is_recorded_and_blocks_later_runs(
    pg_dsn: str, tmp_path: Path
) -> None:
    broken = "-- stageflow: transaction=off\nCREATE TABLE kept (id int);\nCREATE INDEX CONCURRENTLY k ON missing (id);\n"
    files = write(
        tmp_path, {"0001_notes.up.sql": NOTES["0001_notes.up.sql"], "0002_kept.up.sql": broken}
    )

    error = refusal(lambda: m.migrate(pg_dsn, files, applied_by="bob"))

    assert isinstance(error, m.MigrationFailed) and [f.version for f in error.applied] == [1]
    assert "0002_kept.up.sql" in error.message and "statement 2 of 2" in error.message
    assert "kept" in tables(pg_dsn)  # autocommit: the first statement stays
    ((state, err, by),) = query(
        pg_dsn, "SELECT state, error, applied_by FROM stageflow_migrations WHERE version = 2"
    )
    assert (state, by) == ("failed", "bob") and 'relation "missing" does not exist' in err
    assert m.current_version(pg_dsn) == 1

    again = refusal(lambda: m.migrate(pg_dsn, files))
    assert "0002_kept.up.sql failed" in again.message and again.hint and "resolve" in again.hint
    assert "0002_kept.up.sql failed" in refusal(lambda: m.validate(pg_dsn, files)).message
    assert (
        "0002_kept.up.sql failed" in refusal(lambda: m.revert(pg_dsn, files, to_version=0)).message
    )

    # The operator undoes the partial work, fixes the file and marks the version for a retry.
    run(pg_dsn, "DROP TABLE kept")
    fixed = write(tmp_path, {"0002_kept.up.sql": broken.replace("ON missing", "ON kept")})
    m.resolve_failed(pg_dsn, fixed, version=2, state="reverted", applied_by="bob")
    assert [f.version for f in m.migrate(pg_dsn, fixed)] == [2]
    assert query(
        pg_dsn, "SELECT state, error, checksum FROM stageflow_migrations WHERE version = 2"
    ) == [("applied", None, fixed[1].checksum)]


def test_checksum_drift_is_refused_naming_the_file(pg_dsn: str, tmp_path: Path) -> None:
    m.migrate(pg_dsn, write(tmp_path, NOTES))
    files = write(
        tmp_path, {"0003_notes_title.up.sql": "ALTER TABLE notes ADD COLUMN title varchar(80);\n"}
    )

    error = refusal(lambda: m.migrate(pg_dsn, files))

    assert "0003_notes_title.up.sql changed after it was applied" in error.message
    assert "0003_notes_title.up.sql" in refusal(lambda: m.validate(pg_dsn, files)).message
    assert [s.drift for s in m.status(pg_dsn, files)] == [False, False, True]


def test_applied_version_without_file_is_refused(pg_dsn: str, tmp_path: Path) -> None:
    m.migrate(pg_dsn, write(tmp_path, NOTES))
    for name in ("0003_notes_title.up.sql", "0003_notes_title.down.sql"):
        (tmp_path / name).unlink()
    files = m.discover(tmp_path)

    error = refusal(lambda: m.validate(pg_dsn, files))

    assert "applied version 3 has no file 0003_notes_title.up.sql" in error.message
    assert "0003_notes_title.up.sql" in refusal(lambda: m.migrate(pg_dsn, files)).message


def test_lock_timeout_applies_to_migrations(pg_dsn: str, tmp_path: Path) -> None:
    m.migrate(pg_dsn, write(tmp_path, {"0001_notes.up.sql": NOTES["0001_notes.up.sql"]}))
    files = write(tmp_path, {"0002_col.up.sql": "ALTER TABLE notes ADD COLUMN c int;\n"})
    with psycopg.connect(pg_dsn) as holder:  # an open transaction holding a lock on notes
        holder.execute("LOCK TABLE notes IN ACCESS SHARE MODE")
        error = refusal(lambda: m.migrate(pg_dsn, files, lock_timeout="100ms"))
    assert "0002_col.up.sql" in error.message and "lock timeout" in error.message
    assert m.current_version(pg_dsn) == 1
    assert (
        "bad lock_timeout"
        in refusal(lambda: m.migrate(pg_dsn, files, lock_timeout="5 parsecs")).message
    )


def test_statement_timeout_applies_to_migrations(pg_dsn: str, tmp_path: Path) -> None:
    files = write(tmp_path, {"0001_slow.up.sql": "SELECT pg_sleep(5);\n"})
    error = refusal(lambda: m.migrate(pg_dsn, files, statement_timeout="100ms"))
    assert "0001_slow.up.sql" in error.message and "statement timeout" in error.message


# --------------------------------------------------------------------------- lock


def test_advisory_lock_held_elsewhere_refuses(pg_dsn: str, tmp_path: Path) -> None:
    files = write(tmp_path, NOTES)
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (m.LOCK_KEY,))
        error = refusal(lambda: m.migrate(pg_dsn, files, lock_wait_s=0.5))
        assert "another migration holds the lock" in error.message
        assert f"pid {other.info.backend_pid}" in error.message
        assert not ledger_exists(pg_dsn)
    # Once the holder is gone the same call goes through, and leaves the lock free behind it.
    assert len(m.migrate(pg_dsn, files, target=1, lock_wait_s=0.5)) == 1
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (m.LOCK_KEY,)).fetchone() == (True,)
        before = fingerprint(pg_dsn)
        error = refusal(lambda: m.revert(pg_dsn, files, to_version=0, lock_wait_s=0))
        assert "another migration holds the lock" in error.message
        assert (
            "another migration holds the lock"
            in refusal(lambda: m.migrate(pg_dsn, files, lock_wait_s=0)).message
        )
        assert fingerprint(pg_dsn) == before
    assert len(m.migrate(pg_dsn, files, lock_wait_s=0.5)) == 2


# --------------------------------------------------------------------------- revert


def test_revert_runs_downs_newest_first(pg_dsn: str, tmp_path: Path) -> None:
    files = write(tmp_path, NOTES)
    m.migrate(pg_dsn, files)
    assert [f.version for f in m.revert(pg_dsn, files, to_version=1, dry_run=True)] == [3, 2]
    assert m.current_version(pg_dsn) == 3  # dry run changed nothing

    reverted = m.revert(pg_dsn, files, to_version=1, applied_by="carol", release="r0")

    assert [f.version for f in reverted] == [3, 2]
    assert query(
        pg_dsn, "SELECT version, state, applied_by, release FROM stageflow_migrations ORDER BY 1"
    ) == [
        (1, "applied", "", ""),
        (2, "reverted", "carol", "r0"),
        (3, "reverted", "carol", "r0"),
    ]
    columns = {
        r[0]
        for r in query(
            pg_dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'"
        )
    }
    assert columns == {"id", "body"}
    assert not query(pg_dsn, "SELECT 1 FROM pg_indexes WHERE indexname = 'notes_body_idx'")
    assert m.current_version(pg_dsn) == 1
    assert [f.version for f in m.pending(pg_dsn, files)] == [2, 3]
    assert [f.version for f in m.migrate(pg_dsn, files)] == [2, 3]  # and forward again
    assert [f.version for f in m.revert(pg_dsn, files, to_version=0)] == [3, 2, 1]
    assert tables(pg_dsn) == {"stageflow_migrations"}


def test_revert_refuses_without_a_down_file_before_changing_anything(
    pg_dsn: str, tmp_path: Path
) -> None:
    without_down = {k: v for k, v in NOTES.items() if k != "0002_notes_body_idx.down.sql"}
    files = write(tmp_path, without_down)
    m.migrate(pg_dsn, files)
    before = fingerprint(pg_dsn)
    assert m.is_expand_only(files, [3]) and not m.is_expand_only(files, [2, 3])

    error = refusal(lambda: m.revert(pg_dsn, files, to_version=0))

    assert "0002_notes_body_idx.up.sql has no down file" in error.message
    assert "level 3 (restore) is needed" in error.message
    assert fingerprint(pg_dsn) == before  # 0003's down, first in line, did not run either
    assert [f.version for f in m.revert(pg_dsn, files, to_version=2)] == [3]  # above 2 is fine


def test_failing_down_rolls_back(pg_dsn: str, tmp_path: Path) -> None:
    files = write(
        tmp_path,
        {
            **NOTES,
            "0003_notes_title.down.sql": "ALTER TABLE notes DROP COLUMN title;\nDROP TABLE nope;\n",
        },
    )
    m.migrate(pg_dsn, files)
    before = fingerprint(pg_dsn)
    error = refusal(lambda: m.revert(pg_dsn, files, to_version=1))
    assert (
        "0003_notes_title.down.sql" in error.message
        and 'table "nope" does not exist' in error.message
    )
    assert fingerprint(pg_dsn) == before


# --------------------------------------------------------------------------- connection


def test_password_is_passed_and_never_shown(
    pg_dsn: str, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    files = write(tmp_path, {"0001_notes.up.sql": NOTES["0001_notes.up.sql"]})
    secret = Secret("hunter2-very-secret")
    assert (
        len(m.migrate(pg_dsn, files, password=secret)) == 1
    )  # trust auth ignores it; connect takes it

    dead = f"postgresql://postgres:{secret.reveal()}@127.0.0.1:{free_port()}/x"
    error = refusal(lambda: m.current_version(dead, password=secret, connect_timeout=2))
    assert "cannot connect" in error.message
    assert secret.reveal() not in error.line()


# --------------------------------------------------------------------------- timeouts and the deadline

NOTES_ONLY = {k: v for k, v in NOTES.items() if k.startswith("0001_")}


def test_a_files_statement_timeout_cancels_it_and_frees_the_table(
    pg_dsn: str, tmp_path: Path
) -> None:
    m.migrate(pg_dsn, write(tmp_path, NOTES_ONLY))
    hostage = {
        "0002_hostage.up.sql": "-- stageflow: statement_timeout=1s lock_timeout=500ms\n"
        "LOCK TABLE notes IN ACCESS EXCLUSIVE MODE;\nSELECT pg_sleep(30);\n"
    }
    files = write(tmp_path, hostage)
    assert (files[1].statement_timeout, files[1].lock_timeout) == ("1s", "500ms")
    error = refusal(lambda: m.migrate(pg_dsn, files))
    assert "0002_hostage.up.sql failed and was rolled back" in error.message
    assert "statement timeout" in error.message
    assert query(pg_dsn, "SELECT count(*) FROM notes") == [(0,)]  # readable again
    assert [r[0] for r in ledger(pg_dsn)] == [1]


def test_a_files_lock_timeout_stops_it_waiting_behind_the_service(
    pg_dsn: str, tmp_path: Path
) -> None:
    m.migrate(pg_dsn, write(tmp_path, NOTES_ONLY))
    files = write(
        tmp_path,
        {"0002_wait.up.sql": "-- stageflow: lock_timeout=200ms\nALTER TABLE notes ADD c int;\n"},
    )
    with psycopg.connect(pg_dsn) as reader:  # the serving release, mid-transaction on notes
        reader.execute("SELECT * FROM notes")
        error = refusal(lambda: m.migrate(pg_dsn, files, lock_timeout="30s"))
    assert "lock timeout" in error.message


def test_the_deadline_cancels_a_file_that_outlives_it(pg_dsn: str, tmp_path: Path) -> None:
    m.migrate(pg_dsn, write(tmp_path, NOTES_ONLY))
    # each statement alone is short; together they run past the deadline
    slow = "LOCK TABLE notes IN ACCESS EXCLUSIVE MODE;\n" + "SELECT pg_sleep(1);\n" * 5
    files = write(tmp_path, {"0002_slow.up.sql": slow})
    error = refusal(
        lambda: m.migrate(pg_dsn, files, statement_timeout="0", deadline=time.monotonic() + 1.5)
    )
    assert "cancelled: the deploy's timeout passed" in error.message
    assert query(pg_dsn, "SELECT count(*) FROM notes") == [(0,)]
    late = refusal(lambda: m.migrate(pg_dsn, files, deadline=time.monotonic() - 1))
    assert "did not start: the deploy's timeout has passed" in late.message


def test_a_bad_timeout_header_is_refused_naming_the_line(tmp_path: Path) -> None:
    with pytest.raises(
        MigrationError, match=r"0001_x.up.sql:1: bad value 'statement_timeout=soon'"
    ):
        write(tmp_path, {"0001_x.up.sql": "-- stageflow: statement_timeout=soon\nSELECT 1;\n"})


def test_a_failed_version_resolves_without_its_file(pg_dsn: str, tmp_path: Path) -> None:
    first = write(tmp_path, NOTES_ONLY)
    m.migrate(pg_dsn, first)
    failing = tmp_path / "failing"
    failing.mkdir()
    files = write(
        failing,
        {
            **NOTES_ONLY,
            "0002_half.up.sql": "-- stageflow: transaction=off\n"
            "CREATE TABLE half (id int);\nCREATE INDEX CONCURRENTLY ON missing (id);\n",
        },
    )
    refusal(lambda: m.migrate(pg_dsn, files))
    # the serving release has only version 1: the failed file is not at hand
    run(pg_dsn, "DROP TABLE half")
    assert m.resolve_failed(pg_dsn, first, version=2, state="reverted", applied_by="ann") is False
    ((state, name, checksum, by),) = query(
        pg_dsn, "SELECT state, name, checksum, applied_by FROM stageflow_migrations WHERE version=2"
    )
    assert (state, name, checksum, by) == ("reverted", "half", files[1].checksum, "ann")
    m.validate(pg_dsn, first)  # nothing stands in the way of the serving release any more


# --------------------------------------------------------------------------- the ledger read by psql


def _ledger_json(dsn: str) -> list[dict[str, Any]]:
    """The ledger as a deploy reads it without the driver: ledger_rows_sql through psql, one
    JSON line (deploy.psql natively; the same query in the postgres container under compose)."""
    from deploy import psql
    from deploy.commands.postgres import ledger_rows_sql

    (sql,) = ledger_rows_sql(m.LEDGER_TABLE)
    lines = psql.query(dsn, sql).splitlines()
    assert len(lines) == 1, lines  # one line, whatever the ledger holds
    return m.parse_rows(lines[0])


def test_the_ledger_read_by_psql_is_checked_as_the_engine_checks_it(
    pg_dsn: str, tmp_path: Path
) -> None:
    """A compose deploy with nothing pending starts no migration container: validate_rows must
    refuse what migrate would (drift, a failed row, an applied version without its file)."""
    assert _ledger_json(pg_dsn) == []  # no ledger yet: nothing applied, nothing to refuse
    files = write(tmp_path, NOTES)
    m.migrate(pg_dsn, files)
    rows = _ledger_json(pg_dsn)
    assert [(r["version"], r["state"]) for r in rows] == [
        (1, "applied"),
        (2, "applied"),
        (3, "applied"),
    ]
    m.validate_rows(files, rows)  # what deployed, unchanged: accepted

    drifted = write(tmp_path, {"0003_notes_title.up.sql": "ALTER TABLE notes ADD COLUMN t int;\n"})
    expected = refusal(lambda: m.validate(pg_dsn, drifted)).message
    assert "0003_notes_title.up.sql changed after it was applied" in expected
    assert refusal(lambda: m.validate_rows(drifted, _ledger_json(pg_dsn))).message == expected

    for name in ("0003_notes_title.up.sql", "0003_notes_title.down.sql"):
        (tmp_path / name).unlink()
    fewer = m.discover(tmp_path)
    expected = refusal(lambda: m.validate(pg_dsn, fewer)).message
    assert "applied version 3 has no file" in expected
    assert refusal(lambda: m.validate_rows(fewer, _ledger_json(pg_dsn))).message == expected

    run(
        pg_dsn, "UPDATE stageflow_migrations SET state = 'failed', error = 'boom' WHERE version = 3"
    )
    expected = refusal(lambda: m.validate(pg_dsn, fewer)).message
    assert "failed at" in expected and "boom" in expected
    assert refusal(lambda: m.validate_rows(fewer, _ledger_json(pg_dsn))).message == expected


def test_the_ledger_read_by_psql_is_the_ledger_the_driver_reads(
    pg_dsn: str, tmp_path: Path
) -> None:
    """A native deploy reads the ledger with psql (no driver loaded) and falls back to the driver
    where there is no psql: both give the same rows, and the same pending versions."""
    files = write(tmp_path, NOTES)
    assert m.ledger_rows_by_driver(pg_dsn) == _ledger_json(pg_dsn) == []
    m.migrate(pg_dsn, files[:2])
    run(pg_dsn, "UPDATE stageflow_migrations SET error = 'a note' WHERE version = 2")
    by_psql, by_driver = _ledger_json(pg_dsn), m.ledger_rows_by_driver(pg_dsn)

    def same(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # PostgreSQL's JSON drops a timestamp's trailing zeros, Python's isoformat keeps six
        return [{**r, "applied_at": datetime.fromisoformat(r["applied_at"])} for r in rows]

    assert same(by_psql) == same(by_driver) and [r["version"] for r in by_psql] == [1, 2]
    assert m.pending_of(files, by_psql) == [3] == [f.version for f in m.pending(pg_dsn, files)]
