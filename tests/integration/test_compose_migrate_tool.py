"""The compose runtime's entry point for a service's own migration tool (kind "command"), as it
runs in a one-off container of a release's image: `python -m deploy.compose_migrate tool`, here
in-process against the real PostgreSQL, with the tests' small tool (tests/services/sqltool.py)
migrating the reference service's SQL files in its own books."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from deploy import compose_migrate, migrations
from deploy.commands.compose import migrate_tool
from deploy.errors import MigrationError
from tests import support

TOOL = support.REPO / "tests" / "services" / "sqltool.py"


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The image's working directory: the tool and the reference service's migrations."""
    shutil.copytree(support.REPO / "app" / "migrations", tmp_path / "app" / "migrations")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tool(*args: str) -> list[str]:
    return [sys.executable, str(TOOL), *args]


def entry(dsn: str, *args: str, **kw: object) -> dict:
    """The entry point's argv as the runtime builds it (minus `python -m ...`), run here."""
    argv = migrate_tool(tool("current"), **kw)  # type: ignore[arg-type]
    assert argv[:4] == ["python", "-m", "deploy.compose_migrate", "tool"], argv
    return compose_migrate.run([*argv[3:], *args], {"DATABASE_URL": dsn}, root=Path.cwd())


def rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def test_up_runs_between_two_currents_under_the_lock_with_the_timeouts(
    pg_dsn: str, service: Path
) -> None:
    options = migrations.pg_options(lock_timeout_ms=1234, statement_timeout_ms=0)
    got = entry(pg_dsn, up=tool("up"), pgoptions=options, within_s=60)
    assert got == {"before": {"": "base"}, "after": {"": "0003"}}
    # the tool ran once, with the policy's lock_timeout, while the engine held the lock
    assert rows(pg_dsn, "SELECT action, lock_timeout, locked FROM sqltool_runs") == [
        ("up", "1234ms", True)
    ]
    assert rows(pg_dsn, "SELECT count(*) FROM notes") == [(0,)]


def test_up_is_skipped_when_current_prints_what_the_serving_release_recorded(
    pg_dsn: str, service: Path
) -> None:
    entry(pg_dsn, up=tool("up"))
    got = entry(pg_dsn, up=tool("up"), unchanged_from={"": "0003"})
    assert got == {"before": {"": "0003"}, "after": {"": "0003"}}
    assert rows(pg_dsn, "SELECT count(*) FROM sqltool_runs") == [(1,)]
    # anything else runs `up` (which finds nothing to do here)
    entry(pg_dsn, up=tool("up"), unchanged_from={"": "0002"})
    assert rows(pg_dsn, "SELECT count(*) FROM sqltool_runs") == [(2,)]


def test_down_runs_each_command_in_order_and_reads_current_again(
    pg_dsn: str, service: Path
) -> None:
    entry(pg_dsn, up=tool("up"))
    got = entry(pg_dsn, down=[tool("down", "0002"), tool("down", "0001")])
    assert got == {"before": {"": "0003"}, "after": {"": "0001"}}
    columns = rows(pg_dsn, "SELECT column_name FROM information_schema.columns "
                   "WHERE table_name = 'notes' AND column_name = 'author'")  # fmt: skip
    assert columns == []
    assert [r[0] for r in rows(pg_dsn, "SELECT action FROM sqltool_runs")] == ["up", "down", "down"]


def test_current_alone_reads_without_the_lock(pg_dsn: str, service: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (migrations.LOCK_KEY,))
        assert entry(pg_dsn) == {"before": {"": "base"}, "after": {"": "base"}}


def test_a_held_lock_refuses_before_the_tool_runs(pg_dsn: str, service: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (migrations.LOCK_KEY,))
        with pytest.raises(MigrationError) as info:
            entry(pg_dsn, "--lock-wait-s", "0.3", up=tool("up"))
    assert "another migration holds the lock" in info.value.message
    assert rows(pg_dsn, "SELECT to_regclass('sqltool_runs') IS NULL") == [(True,)]


def test_a_failing_tool_is_one_line_naming_the_command_without_the_password(
    pg_dsn: str, service: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "tool-s3cret-pass-77"
    monkeypatch.setenv("SQLTOOL_FAIL", "up")
    argv = migrate_tool(tool("current"), up=[*tool("up"), password])
    with pytest.raises(MigrationError) as info:
        compose_migrate.run(
            argv[3:],
            {"DATABASE_URL": pg_dsn, "POSTGRES_PASSWORD": password, "SQLTOOL_FAIL": "up"},
            root=service,
        )
    said = info.value.line()
    assert "the up command" in said and "exited 3" in said and "failed as told" in said, said
    assert password not in said and "\n" not in said


def test_the_deadline_stops_a_tool_that_runs_too_long(pg_dsn: str, service: Path) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    start = time.monotonic()
    with pytest.raises(MigrationError) as info:
        entry(pg_dsn, up=sleeper, within_s=1.5)
    assert time.monotonic() - start < 30
    assert "was stopped" in info.value.message and "deploy_timeout_s" in info.value.message


def test_without_a_driver_for_the_lock_nothing_migrates(
    pg_dsn: str, service: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image with neither psycopg nor psycopg2 cannot hold the lock: refused, tool not run."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(MigrationError) as info:
        entry(pg_dsn, up=tool("up"))
    monkeypatch.undo()
    assert "no PostgreSQL driver" in info.value.message
    assert rows(pg_dsn, "SELECT to_regclass('sqltool_runs') IS NULL") == [(True,)]


def test_the_lock_is_held_for_the_whole_sequence(pg_dsn: str, service: Path) -> None:
    """A second migration started while the first runs waits for it, never runs beside it."""
    slow_up = [sys.executable, "-c", "import time; time.sleep(5)"]
    results: list[object] = []

    def first() -> None:
        results.append(entry(pg_dsn, up=slow_up))

    t = threading.Thread(target=first)
    t.start()
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    for _ in range(300):  # until the first holds the lock, however busy the machine
        if rows(pg_dsn, held) != [(0,)]:
            break
        time.sleep(0.1)
    with pytest.raises(MigrationError) as info:
        entry(pg_dsn, "--lock-wait-s", "0.2", up=tool("up"))
    t.join()
    assert "another migration holds the lock" in info.value.message
    assert results == [{"before": {"": "base"}, "after": {"": "base"}}]
