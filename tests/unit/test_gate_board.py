"""The release gate's pure parts: the board's lines, the lock lint, the rendered SQL, tool lines."""

from __future__ import annotations

import io
import threading
from pathlib import Path

from rich.console import Console

from deploy.gates import GateContext, GateResult, missing_tool
from deploy.gates.locks import TableSize, lint, short, statement_table
from deploy.gates.migrations_command import Tool, render_argv, rendered_statements
from deploy.gates.report import Board
from deploy.gates.scratch_cluster import ScratchCluster
from deploy.secrets import Secret
from deploy.service import Migrations


class Writes(io.StringIO):
    """A stream that keeps every write call apart."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.calls.append(text)
        return len(text)


def test_each_finished_gate_is_one_whole_line_written_at_once() -> None:
    names = [f"gate{i}" for i in range(40)]
    out = Writes()
    board = Board([(n, "required") for n in names], console=Console(file=io.StringIO()), stream=out)
    assert not board.live_mode
    barrier = threading.Barrier(len(names))

    def finish(name: str) -> None:
        barrier.wait()
        board.finished(GateResult(name, "required", "passed", f"{name} ok\nmore", 0.1))

    threads = [threading.Thread(target=finish, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out.calls) == len(names)
    assert all(c.endswith("\n") and c.count("\n") == 1 for c in out.calls)
    assert sorted(c.split(":")[0] for c in out.calls) == sorted(names)


def _ctx(tmp_path: Path, config: dict) -> GateContext:
    return GateContext("migrations", tmp_path, tmp_path, "v1", "c" * 40, "t" * 40, "GA",
                       "required", config, {}, tmp_path, 60.0)  # fmt: skip


def test_alembic_renders_from_the_copys_revision(tmp_path: Path) -> None:
    m = Migrations(
        kind="command", up=("alembic", "upgrade", "head"), current=("alembic", "current")
    )
    ctx = _ctx(tmp_path, {})
    assert render_argv(ctx, m, {"": "a1"}) == ["alembic", "upgrade", "a1:head", "--sql"]
    assert render_argv(ctx, m, {"": "base"}) == ["alembic", "upgrade", "head", "--sql"]
    flask = Migrations(
        kind="command", up=("flask", "db", "upgrade"), current=("flask", "db", "current")
    )
    assert render_argv(ctx, flask, {"": "a1"}) == ["flask", "db", "upgrade", "a1:head", "--sql"]
    named = ("env", "FLASK_APP=shop:app", "flask", "db", "upgrade")  # what init writes
    env_flask = Migrations(kind="command", up=named, current=("flask", "db", "current"))
    assert render_argv(ctx, env_flask, {"": "a1"}) == [*named, "a1:head", "--sql"]
    django = Migrations(kind="command", up=("python", "manage.py", "migrate"), current=("x",))
    assert render_argv(ctx, django, {"shop": "0001"}) is None
    configured = _ctx(tmp_path, {"render": ["tool", "sql", "{current}"]})
    assert render_argv(configured, django, {"shop": "0001"}) == ["tool", "sql", "shop 0001"]


def test_rendered_sql_loses_its_transaction_control_and_comments() -> None:
    text = (
        "BEGIN;\n\n-- Running upgrade a1 -> b2\n\nALTER TABLE w ADD COLUMN n text;\n\n"
        "UPDATE alembic_version SET version_num='b2';\n\nCOMMIT;\n"
    )
    assert rendered_statements(text) == [
        "ALTER TABLE w ADD COLUMN n text",
        "UPDATE alembic_version SET version_num='b2'",
    ]


def test_rendered_sql_loses_what_the_app_printed_before_it() -> None:
    # an app factory that prints as it loads its plugins: the tool imports it, same stdout
    banner = " * Loaded module, <module 'shop.plugins'>\nStarting shop\n"
    sql = "BEGIN;\n\n-- Running upgrade a1 -> b2\n\nALTER TABLE w ADD COLUMN n text;\n\nCOMMIT;\n"
    assert rendered_statements(banner + sql) == ["ALTER TABLE w ADD COLUMN n text"]
    assert rendered_statements(banner) == []  # nothing pending: no SQL at all


def test_long_lock_rules_and_their_measured_time() -> None:
    assert statement_table('ALTER TABLE ONLY "public"."notes" ADD COLUMN x int') == "public.notes"
    assert statement_table("CREATE INDEX i ON ONLY notes (a)") == "notes"
    assert statement_table("LOCK TABLE notes IN SHARE MODE") == "notes"
    sizes = {"notes": TableSize(1_000_000, 10**9), "tiny": TableSize(5, 8192)}
    index = "CREATE INDEX i ON notes (a)"
    retype = "ALTER TABLE tiny ALTER COLUMN a TYPE bigint"
    measured = {
        short(retype): {
            "locks": [{"table": "public.tiny", "mode": "AccessExclusiveLock", "held_s": 0.01}]
        }
    }
    blocking, warnings = lint(
        [("f.sql", index), ("f.sql", "CREATE INDEX j ON tiny (a)"), ("f.sql", retype)],
        measured,
        sizes,
    )
    assert len(blocking) == 1 and "index-without-concurrently" in blocking[0]
    assert "(1000000 rows)" in blocking[0]
    assert len(warnings) == 1 and "table-rewrite" in warnings[0]
    assert "held AccessExclusiveLock for 0.010s" in warnings[0]
    blocking, _ = lint([("f.sql", retype)], measured, sizes, max_lock_s=0.005)
    assert "table-rewrite" in blocking[0]
    assert lint([("f.sql", "CREATE INDEX CONCURRENTLY k ON notes (a)")], {}, sizes) == ([], [])


def test_a_missing_tool_is_one_line_naming_the_command() -> None:
    err = missing_tool(
        ["ruff", "check", "."], FileNotFoundError(2, "No such file"), "pip install ruff"
    )
    assert (
        err.line()
        == "`ruff` is not installed on PATH: the gate runs `ruff check .` (pip install ruff)"
    )
    assert "Error" not in err.line()


def test_the_rehearsal_feeds_every_name_and_the_commits_own_code(tmp_path: Path) -> None:
    # an app factory that reads os.environ["REDIS_URL"] must import during the rehearsal too
    policy = {"service": {"name": "bookmarks", "wsgi": "bookmarks:create_app()", "dir": "web"}}
    ctx = GateContext("migrations", tmp_path, tmp_path / "tree", "v1", "c" * 40, "t" * 40, "GA",
                      "required", {}, policy, tmp_path, 60.0)  # fmt: skip
    cluster = ScratchCluster(Path("/pg/bin"), 54999, "/run/pg", Secret("pw"))
    m = Migrations(
        kind="command", up=("flask", "db", "upgrade"), current=("flask", "db", "current")
    )
    env = Tool(ctx, m, cluster).env
    assert env["DATABASE_URL"].endswith("@127.0.0.1:54999/rehearsal")
    assert env["REDIS_URL"].startswith("redis://127.0.0.1:") and env["ENVIRONMENT"] == "rehearsal"
    # the snapshot's code before any copy of the service installed into the gate's venv
    tree = tmp_path / "tree" / "web"
    assert env["PYTHONPATH"].split(":")[:2] == [str(tree), str(tree / "src")]


def test_the_rehearsal_gives_each_declared_secret_a_throwaway_value(tmp_path: Path) -> None:
    # production settings that read env("SECRET_KEY") must import for showmigrations too
    policy = {
        "service": {
            "name": "site",
            "wsgi": "site.wsgi:application",
            "env": {"keys": ["ALLOWED_HOSTS"], "secrets": ["SECRET_KEY", "MAIL_PASSWORD"]},
        }
    }
    (tmp_path / "tree" / "env").mkdir(parents=True)
    (tmp_path / "tree" / "env" / "staging.env").write_text("ALLOWED_HOSTS=localhost\n")
    ctx = GateContext("migrations", tmp_path, tmp_path / "tree", "v1", "c" * 40, "t" * 40, "GA",
                      "required", {}, policy, tmp_path, 60.0)  # fmt: skip
    cluster = ScratchCluster(Path("/pg/bin"), 54999, "/run/pg", Secret("pw"))
    m = Migrations(kind="command", up=("python", "manage.py", "migrate"), current=("x",))
    env = Tool(ctx, m, cluster).env
    assert env["ALLOWED_HOSTS"] == "localhost"
    assert len(env["SECRET_KEY"]) >= 32 and env["MAIL_PASSWORD"] not in ("", env["SECRET_KEY"])
    assert Tool(ctx, m, cluster).env["SECRET_KEY"] != env["SECRET_KEY"]
