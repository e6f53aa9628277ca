"""Migration files without a database: names, headers, numbering and SQL splitting."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from deploy.errors import MigrationError
from deploy.migrations import discover, is_expand_only, long_locks, parse_header, split_sql


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def refused(directory: Path) -> str:
    with pytest.raises(MigrationError) as info:
        discover(directory)
    return info.value.message


# --------------------------------------------------------------------------- names and numbering


def test_discover_reads_versions_headers_and_checksums(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "0001_notes.up.sql": "CREATE TABLE notes (id int);\n",
            "0001_notes.down.sql": "DROP TABLE notes;\n",
            "0002_notes_idx.up.sql": "-- stageflow: transaction=off\n"
            "CREATE INDEX CONCURRENTLY notes_id ON notes (id);\n",
            "0003_add_col.up.sql": "-- stageflow: phase=expand\nALTER TABLE notes ADD c text;\n",
            "README.md": "not a migration",
        },
    )
    files = discover(tmp_path)
    assert [(f.version, f.name) for f in files] == [(1, "notes"), (2, "notes_idx"), (3, "add_col")]
    assert files[0].down_path == tmp_path / "0001_notes.down.sql"
    assert files[1].down_path is None
    assert [f.transactional for f in files] == [True, False, True]
    assert [f.phase for f in files] == [None, None, "expand"]
    expected = hashlib.sha256((tmp_path / "0003_add_col.up.sql").read_bytes()).hexdigest()
    assert files[2].checksum == expected
    assert files[2].filename == "0003_add_col.up.sql"


def test_empty_directory_has_no_migrations(tmp_path: Path) -> None:
    assert discover(tmp_path) == []


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    assert "does not exist" in refused(tmp_path / "nope")


@pytest.mark.parametrize(
    "name",
    [
        "1_short.up.sql",
        "0001-dash.up.sql",
        "0001_Upper.up.sql",
        "0001_x.sql",
        "0001_x.side.sql",
        "0001_.up.sql",
    ],
)
def test_bad_names_are_refused_by_name(tmp_path: Path, name: str) -> None:
    write(tmp_path, {name: "SELECT 1;"})
    message = refused(tmp_path)
    assert "bad migration file name" in message and name in message


def test_version_zero_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"0000_init.up.sql": "SELECT 1;"})
    assert "0000_init.up.sql" in refused(tmp_path)


def test_duplicate_versions_are_refused(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.up.sql": "SELECT 1;", "0001_b.up.sql": "SELECT 2;"})
    message = refused(tmp_path)
    assert "duplicate migration version 1" in message and "0001_b.up.sql" in message


def test_down_without_up_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.up.sql": "SELECT 1;", "0002_b.down.sql": "SELECT 2;"})
    assert "0002_b.down.sql has no matching up file" in refused(tmp_path)


def test_down_with_other_slug_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.up.sql": "SELECT 1;", "0001_b.down.sql": "SELECT 2;"})
    assert "0001_b.down.sql" in refused(tmp_path)


def test_gap_in_numbering_is_refused(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"0001_a.up.sql": "SELECT 1;", "0002_b.up.sql": "SELECT 1;", "0004_d.up.sql": "SELECT 1;"},
    )
    message = refused(tmp_path)
    assert "gap" in message and "0004_d.up.sql" in message


def test_numbering_must_start_at_one(tmp_path: Path) -> None:
    write(tmp_path, {"0002_b.up.sql": "SELECT 1;"})
    assert "0002_b.up.sql" in refused(tmp_path)


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("-- stageflow: transaction=off\nSELECT 1;", {"transaction": "off"}),
        ("-- stageflow: phase=contract\n", {"phase": "contract"}),
        ("-- stageflow: transaction=off phase=expand\n", {"transaction": "off", "phase": "expand"}),
        (
            "-- stageflow: transaction=off, phase=expand\n",
            {"transaction": "off", "phase": "expand"},
        ),
        (
            "-- a note\n\n-- stageflow: phase=expand\n-- stageflow: transaction=on\nSELECT 1;",
            {"phase": "expand", "transaction": "on"},
        ),
        ("--stageflow:phase=expand\n", {"phase": "expand"}),
        ("SELECT 1;\n", {}),
    ],
)
def test_header_forms(text: str, expected: dict[str, str]) -> None:
    assert parse_header(text, source="x.up.sql") == expected


@pytest.mark.parametrize(
    "text, needle",
    [
        ("-- stageflow: transactions=off\n", "unknown stageflow header"),
        ("-- stageflow: phase=migrate\n", "bad value"),
        ("-- stageflow: transaction=maybe\n", "bad value"),
        ("-- stageflow: expand\n", "unknown stageflow header"),
        ("-- stageflow:\n", "empty stageflow header"),
        ("-- stageflow: phase=expand phase=contract\n", "set twice"),
        ("SELECT 1;\n-- stageflow: transaction=off\n", "below the first SQL statement"),
    ],
)
def test_bad_headers_are_refused_naming_the_file(text: str, needle: str) -> None:
    with pytest.raises(MigrationError) as info:
        parse_header(text, source="0007_x.up.sql")
    assert needle in info.value.message and "0007_x.up.sql" in info.value.message


def test_bad_header_in_discovered_file_names_it(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.up.sql": "-- stageflow: phase=sideways\nSELECT 1;"})
    assert "0001_a.up.sql" in refused(tmp_path)


def test_concurrent_index_in_transactional_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.up.sql": "-- comment\ncreate index  concurrently i on t (c);"})
    message = refused(tmp_path)
    assert "0001_a.up.sql" in message and "CREATE INDEX CONCURRENTLY" in message


def test_transaction_control_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.up.sql": "BEGIN;\nCREATE TABLE t (id int);\nCOMMIT;"})
    assert "transaction control" in refused(tmp_path)


def test_concurrently_inside_a_string_is_fine(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.up.sql": "SELECT 'CREATE INDEX CONCURRENTLY x';"})
    assert len(discover(tmp_path)) == 1


def test_is_expand_only(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "0001_a.up.sql": "-- stageflow: phase=expand\nSELECT 1;",
            "0002_b.up.sql": "-- stageflow: phase=expand\nSELECT 1;",
            "0003_c.up.sql": "-- stageflow: phase=contract\nSELECT 1;",
            "0004_d.up.sql": "SELECT 1;",
        },
    )
    files = discover(tmp_path)
    assert is_expand_only(files, [1, 2])
    assert is_expand_only(files, [])
    assert not is_expand_only(files, [2, 3])
    assert not is_expand_only(files, [4])
    assert not is_expand_only(files, [9])  # unknown versions fail closed


# --------------------------------------------------------------------------- SQL splitting


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"]),
        ("SELECT 1;;\n;SELECT 2;\n", ["SELECT 1", "SELECT 2"]),
        ("SELECT 'a;b'; SELECT 'it''s;'", ["SELECT 'a;b'", "SELECT 'it''s;'"]),
        ("SELECT E'x\\';y'; SELECT 2", ["SELECT E'x\\';y'", "SELECT 2"]),
        ("SELECT 'x\\'; SELECT 2", ["SELECT 'x\\'", "SELECT 2"]),  # no E: backslash is plain
        ('SELECT 1 AS "a;""b"; SELECT 2', ['SELECT 1 AS "a;""b"', "SELECT 2"]),
        ("SELECT 1 -- not; split\n; SELECT 2", ["SELECT 1 -- not; split", "SELECT 2"]),
        (
            "SELECT /* a; /* nested; */ b; */ 1; SELECT 2",
            ["SELECT /* a; /* nested; */ b; */ 1", "SELECT 2"],
        ),
        (
            "CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql; SELECT 2",
            [
                "CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql",
                "SELECT 2",
            ],
        ),
        (
            "DO $body$ BEGIN PERFORM '$$;'; END $body$; SELECT 2",
            ["DO $body$ BEGIN PERFORM '$$;'; END $body$", "SELECT 2"],
        ),
        ("PREPARE p AS SELECT $1; SELECT 2", ["PREPARE p AS SELECT $1", "SELECT 2"]),
        ("SELECT a$b$c FROM t; SELECT 2", ["SELECT a$b$c FROM t", "SELECT 2"]),
        (
            "CREATE OR REPLACE FUNCTION f(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC"
            " SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END; SELECT 2; END; SELECT 3",
            [
                "CREATE OR REPLACE FUNCTION f(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC"
                " SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END; SELECT 2; END",
                "SELECT 3",
            ],
        ),
        (
            "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END;"
            " SELECT CASE WHEN true THEN 1 END; SELECT 4",
            [
                "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END",
                "SELECT CASE WHEN true THEN 1 END",
                "SELECT 4",
            ],
        ),
        ("SELECT 1e5; SELECT x$1 FROM t", ["SELECT 1e5", "SELECT x$1 FROM t"]),
        ("-- only a comment;\n/* and; another */\n", []),
        ("-- header\nSELECT 1;\n-- trailing comment\n", ["-- header\nSELECT 1"]),
    ],
)
def test_split_sql(sql: str, expected: list[str]) -> None:
    assert split_sql(sql) == expected


@pytest.mark.parametrize("sql", ["SELECT 'open", 'SELECT "open', "DO $x$ BEGIN", "SELECT /* open"])
def test_split_sql_refuses_unterminated(sql: str) -> None:
    with pytest.raises(MigrationError) as info:
        split_sql(sql, source="0009_x.up.sql")
    assert "unterminated" in info.value.message and "0009_x.up.sql" in info.value.message


LONG_LOCK_CASES = {
    "LOCK TABLE notes IN ACCESS EXCLUSIVE MODE;": "stageflow-lock-table",
    "lock notes;": "stageflow-lock-table",
    "SELECT pg_sleep(40);": "stageflow-sleep",
    "SELECT pg_sleep_for('40 seconds');": "stageflow-sleep",
    "CLUSTER notes USING notes_pkey;": "stageflow-cluster",
    "REINDEX TABLE notes;": "stageflow-reindex-blocking",
    "REFRESH MATERIALIZED VIEW totals;": "stageflow-refresh-blocking",
}


@pytest.mark.parametrize("stmt", list(LONG_LOCK_CASES))
def test_long_lock_statements_are_flagged_with_their_line(tmp_path: Path, stmt: str) -> None:
    path = tmp_path / "0002_hold.up.sql"
    path.write_text(f"-- stageflow: phase=expand\nSELECT 1;\n{stmt}\n")
    ((where, finding),) = long_locks(path)
    assert where == "0002_hold.up.sql:3" and finding.startswith(LONG_LOCK_CASES[stmt] + ":")


def test_concurrent_and_plain_statements_are_not_flagged(tmp_path: Path) -> None:
    path = tmp_path / "0002_fine.up.sql"
    path.write_text(
        "-- stageflow: transaction=off\nREINDEX TABLE CONCURRENTLY notes;\n"
        "REFRESH MATERIALIZED VIEW CONCURRENTLY totals;\n"
        "-- LOCK TABLE in a comment is no statement\nSELECT 'pg_sleep(1)';\n"
    )
    assert long_locks(path) == []


def test_timeout_headers_are_read(tmp_path: Path) -> None:
    (f,) = discover(
        write(
            tmp_path,
            {"0001_a.up.sql": "-- stageflow: lock_timeout=2s, statement_timeout=1min\nSELECT 1;\n"},
        )  # fmt: skip
    )
    assert (f.lock_timeout, f.statement_timeout) == ("2s", "1min")
