"""A service whose own tool migrates (alembic, kind = "command") against the real PostgreSQL: the
migrate step, the backup decision, level 2 and the prod request, through the engine's functions."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest

from deploy import env_migrations, migrations, releases
from deploy.config import Project, load_project
from deploy.engine.context import Context
from deploy.engine.rollback_rules import ToolSchemaPlan
from deploy.engine.runtimes import runtime_for
from deploy.errors import GuardRefused, MigrationError
from deploy.hosts import Host
from deploy.policy import promotion
from deploy.policy.actors import Actor
from deploy.runtime import native_rollback
from deploy.runtime.native import service_interpreter
from deploy.state import HistoryEntry, Layout, record_history
from tests import support
from tests.conftest import PgServer, fresh_database

SERVICE = """\
[service]
name = "widgets"
wsgi = "widgets.web:app"
requirements = "requirements.txt"

[service.env]  # the keys the test env files hold
keys = ["FEATURES", "LOG_LEVEL", "DEBUG", "REQUIRE_API_KEY", "API_RATE_LIMIT"]
secrets = ["API_KEYS", "SECRET_KEY"]

[service.migrations]
kind = "command"
dir = "migrations"
up = ["alembic", "upgrade", "head"]
down = ["alembic", "downgrade", "{target}"]
current = ["alembic", "current"]

"""

ENV_PY = """\
import os

from alembic import context
from sqlalchemy import create_engine

url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
with create_engine(url).connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
"""

# what the migration saw: the timeouts PGOPTIONS set, and whether stageflow held its lock
A1 = f"""\
from alembic import op

revision = "a1"
down_revision = None


def upgrade():
    op.execute("CREATE TABLE widgets (id serial PRIMARY KEY)")
    op.execute("CREATE TABLE seen (k text PRIMARY KEY, v text)")
    op.execute("INSERT INTO seen SELECT 'lock_timeout', current_setting('lock_timeout')")
    op.execute("INSERT INTO seen SELECT 'statement_timeout', current_setting('statement_timeout')")
    op.execute(
        "INSERT INTO seen SELECT 'lock', count(*)::text FROM pg_locks WHERE locktype = 'advisory'"
        " AND granted AND classid = {migrations.LOCK_KEY >> 32}"
        " AND objid = {migrations.LOCK_KEY & 0xFFFF_FFFF} AND pid <> pg_backend_pid()"
    )


def downgrade():
    op.execute("DROP TABLE seen")
    op.execute("DROP TABLE widgets")
"""

B2 = """\
from alembic import op

revision = "b2"
down_revision = "a1"


def upgrade():
    op.execute("ALTER TABLE widgets ADD COLUMN name text")


def downgrade():
    op.execute("ALTER TABLE widgets DROP COLUMN name")
"""


@dataclass
class Repo:
    root: Path
    venv: Path
    commits: dict[str, str]  # a1: first migration, b2: the second, app: an app-only change


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()


def _commit(root: Path, message: str) -> str:
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", message)
    return _git(root, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def repo() -> Iterator[Repo]:
    """A service repository using alembic, three commits, and one venv with alembic for its
    releases (pip's cache makes it quick)."""
    base = support.public_tmpdir("sf-alembic-")
    venv = base / "venv"
    # one the service user can run: as root, the service's commands run as that user
    python = service_interpreter("stageflow") or sys.executable
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "alembic", "sqlalchemy",
         "psycopg[binary]"],
        capture_output=True, text=True,
    )  # fmt: skip
    if pip.returncode != 0:
        pytest.skip(f"cannot install alembic: {pip.stderr.strip().splitlines()[-1:]}")
    root = base / "svc"
    (root / "migrations" / "versions").mkdir(parents=True)
    policy = support.minimal_policy()
    start, end = policy.index("[service]"), policy.index("[environments.dev]")
    (root / "stageflow.toml").write_text(policy[:start] + SERVICE + policy[end:])
    (root / ".gitignore").write_text("env/\n.stageflow/\n")
    (root / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    (root / "migrations" / "env.py").write_text(ENV_PY)
    (root / "migrations" / "versions" / "a1_widgets.py").write_text(A1)
    (root / "widgets.py").write_text("app = None\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "ci@example.com")
    _git(root, "config", "user.name", "ci")
    commits = {"a1": _commit(root, "widgets")}
    (root / "migrations" / "versions" / "b2_name.py").write_text(B2)
    commits["b2"] = _commit(root, "widget names")
    (root / "widgets.py").write_text("app = 'v3'\n")
    commits["app"] = _commit(root, "app only")
    try:
        yield Repo(root, venv, commits)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def proj(repo: Repo, pg_server: PgServer) -> Iterator[Project]:
    """The repository's environments, dev on a fresh database (with a password: trust ignores
    it, the scrubbing must not) and a fresh data directory the service user can reach."""
    support.write_envs(repo.root)
    tmp_path = support.public_tmpdir("sf-alembic-data-")
    with fresh_database(pg_server) as dsn:
        dev = repo.root / "env" / "dev.env"
        text = re.sub(r"POSTGRES_PORT=\d+", f"POSTGRES_PORT={pg_server.port}", dev.read_text())
        text = re.sub(r"DATABASE_URL=\S+", f"DATABASE_URL={dsn}", text)
        text = re.sub(r"DATA_DIR=\S+", f"DATA_DIR={tmp_path / 'dev'}", text)
        dev.write_text(text)
        secrets = repo.root / "env" / "dev.secrets.env"
        secrets.write_text("POSTGRES_PASSWORD=pg-dev-s3cret-value\n")
        secrets.chmod(0o600)
        try:
            yield load_project(repo.root)
        finally:
            secrets.unlink()
            shutil.rmtree(tmp_path, ignore_errors=True)


def query(proj: Project, sql: str) -> list[tuple]:
    with psycopg.connect(proj.env("dev").database_url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[call-overload]


def build(proj: Project, repo: Repo, rid: str, commit: str, *, meta: dict | None = None) -> None:
    """A release directory as the build leaves it: the commit's files, .venv, RELEASE.json."""
    layout = Layout(str(proj.env("dev").data_dir))
    target = Path(layout.release(rid))
    target.mkdir(parents=True)
    tar = target.parent / f"{rid}.tar"
    _git(proj.root, "archive", "-o", str(tar), commit)
    with tarfile.open(tar) as t:
        t.extractall(target, filter="data")
    tar.unlink()
    (target / ".venv").symlink_to(repo.venv)
    info = {"id": rid, "commit": commit, "ref": "main"} if meta is None else meta
    (target / "RELEASE.json").write_text(json.dumps(info))


def context(proj: Project, rid: str, commit: str, previous: str | None) -> Context:
    runtime, targets = runtime_for(proj, "dev")
    t = targets[0]
    ctx = Context(
        proj, proj.env("dev"), Actor("alice@example.com", "human"), t.host, t.layout, print
    )
    ctx.targets, ctx.runtime = targets, runtime
    runtime.bind(ctx)
    ctx.release = releases.Release(rid, commit, "main")
    ctx.previous = previous
    return ctx


def deploy(proj: Project, repo: Repo, rid: str, key: str, previous: str | None) -> tuple:
    """Build, the backup decision and the migrate step of one deploy; then serve it."""
    build(proj, repo, rid, repo.commits[key])
    ctx = context(proj, rid, repo.commits[key], previous)
    pending = ctx.runtime.pending(ctx)
    applied = ctx.runtime.migrate(ctx)
    releases.switch(ctx.host, ctx.layout, rid)
    return pending, applied, ctx


def meta(proj: Project, rid: str) -> dict:
    layout = Layout(str(proj.env("dev").data_dir))
    return json.loads(Path(layout.release(rid), "RELEASE.json").read_text())


def test_migrate_runs_up_between_two_currents_under_the_lock_and_records_both(proj, repo):
    pending, applied, ctx = deploy(proj, repo, "r1", "a1", None)
    assert pending == ["migrations/env.py", "migrations/versions/a1_widgets.py"]  # first deploy
    assert applied == ["base -> a1"]
    assert meta(proj, "r1")["schema_before"] == {"": "base"}
    assert meta(proj, "r1")["schema_after"] == {"": "a1"}
    assert "schema base -> a1" in ctx.hook_notes  # into history's notes
    seen = dict(query(proj, "SELECT k, v FROM seen"))
    assert seen == {"lock_timeout": "5s", "statement_timeout": "0", "lock": "1"}

    pending, applied, _ = deploy(proj, repo, "r2", "b2", "r1")
    assert pending == ["migrations/versions/b2_name.py"]
    assert applied == ["a1 -> b2"]
    assert query(proj, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'name'"
                 " AND table_name = 'widgets'") == [(1,)]  # fmt: skip

    pending, applied, ctx = deploy(proj, repo, "r3", "app", "r2")
    assert pending == []  # policy pending-migrations: no backup
    assert applied == []
    assert meta(proj, "r3")["schema_before"] == meta(proj, "r3")["schema_after"] == {"": "b2"}
    assert "schema b2 -> b2" in ctx.hook_notes


def _moved_by_hand(proj: Project, variant: Project, repo: Repo, ctx: Context) -> Context:
    """r3's schema taken back to a1 by hand, then r4 (r3's commit) built with variant's commands:
    the context of its migrate step."""
    tool = env_migrations.MigrationTool(proj, "dev", ctx.host, ctx.layout, "r3")
    tool.run(("alembic", "downgrade", "a1"), what="a downgrade by hand")
    build(variant, repo, "r4", repo.commits["app"])
    return context(variant, "r4", repo.commits["app"], "r3")


def test_the_migrations_task_asks_the_serving_release_s_current_command(proj, repo):
    from deploy.errors import UsageError

    with pytest.raises(UsageError, match="no release serves yet"):
        env_migrations.tool_revisions(proj, "dev")
    deploy(proj, repo, "r1", "a1", None)
    assert env_migrations.tool_revisions(proj, "dev") == {"": "a1"}
    deploy(proj, repo, "r2", "b2", "r1")
    assert env_migrations.tool_revisions(proj, "dev") == {"": "b2"}


def test_a_release_shipping_the_same_migrations_runs_up_only_when_the_schema_moved(proj, repo):
    """`up` is a Python start importing the service: skipped when the release ships the serving
    release's migrations unchanged and `current` shows the revisions that release recorded."""
    deploy(proj, repo, "r1", "a1", None)
    deploy(proj, repo, "r2", "b2", "r1")
    fails = ("python", "-c", "import sys; sys.exit('up ran')")
    svc = replace(proj.service, migrations=replace(proj.service.migrations, up=fails))
    no_up = replace(proj, service=svc)
    pending, applied, ctx = deploy(no_up, repo, "r3", "app", "r2")
    assert (pending, applied) == ([], [])
    assert meta(proj, "r3")["schema_before"] == meta(proj, "r3")["schema_after"] == {"": "b2"}
    assert "schema b2 -> b2" in ctx.hook_notes

    # the schema moved behind stageflow's back: the same files, but `up` runs and says so
    moved = _moved_by_hand(proj, no_up, repo, ctx)
    with pytest.raises(MigrationError, match="up ran"):
        moved.runtime.migrate(moved)
    _, applied, _ = deploy(proj, repo, "r5", "app", "r3")
    assert applied == ["a1 -> b2"]


def test_alembics_own_table_answers_for_current_when_nothing_changed(proj, repo):
    """An unchanged release whose recorded revision alembic's table still shows runs no tool at
    all (each run is a Python start importing the service); a table showing another revision
    (the schema moved by hand) runs `current` as before."""
    deploy(proj, repo, "r1", "a1", None)
    deploy(proj, repo, "r2", "b2", "r1")
    fails = ("alembic", "-c", "no-such.ini", "current")  # alembic's, but any run of it fails
    tools = replace(proj.service.migrations, current=fails, up=fails)
    no_tool = replace(proj, service=replace(proj.service, migrations=tools))
    pending, applied, ctx = deploy(no_tool, repo, "r3", "app", "r2")
    assert (pending, applied) == ([], [])
    assert meta(proj, "r3")["schema_before"] == meta(proj, "r3")["schema_after"] == {"": "b2"}

    moved = _moved_by_hand(proj, no_tool, repo, ctx)
    with pytest.raises(MigrationError, match="the current command"):
        moved.runtime.migrate(moved)


def test_the_tools_up_stops_at_the_deploys_deadline_and_says_which_limit(proj, repo):
    slow = ("python", "-c", "import time; time.sleep(60)")
    svc = replace(proj.service, migrations=replace(proj.service.migrations, up=slow))
    stuck = replace(proj, service=svc)
    build(stuck, repo, "r1", repo.commits["a1"])
    ctx = context(stuck, "r1", repo.commits["a1"], None)
    ctx.deadline = time.monotonic() + 3
    began = time.monotonic()
    with pytest.raises(MigrationError) as err:
        ctx.runtime.migrate(ctx)
    assert time.monotonic() - began < 30  # not the command's own hour
    assert "was stopped after" in err.value.message and "deploy_timeout_s" in err.value.message
    ctx.deadline = time.monotonic() - 1  # past already: nothing starts
    with pytest.raises(MigrationError, match="not started: the deploy ran past deploy_timeout_s"):
        ctx.runtime.migrate(ctx)


@pytest.fixture
def bounded(proj: Project, repo: Repo) -> Iterator[Project]:
    """The same project, dev's policy bounding migrations: lock_timeout 300ms (the tool's own
    default is 5s), statement_timeout 2min (the tool's own default is none)."""
    toml = repo.root / "stageflow.toml"
    text = toml.read_text()
    bounds = '[environments.dev]\nlock_timeout = "300ms"\nstatement_timeout = "2min"\n'
    toml.write_text(text.replace("[environments.dev]\n", bounds, 1))
    try:
        yield load_project(repo.root)
    finally:
        toml.write_text(text)


def test_the_tool_migrates_with_the_policys_timeouts(bounded, repo):
    deploy(bounded, repo, "r1", "a1", None)
    seen = dict(query(bounded, "SELECT k, v FROM seen"))
    assert (seen["lock_timeout"], seen["statement_timeout"]) == ("300ms", "2min")
    # b2's ALTER waits behind a session reading widgets: it fails at 300ms, it does not queue
    build(bounded, repo, "r2", repo.commits["b2"])
    ctx = context(bounded, "r2", repo.commits["b2"], "r1")
    with psycopg.connect(bounded.env("dev").database_url) as holder:
        holder.execute("LOCK TABLE widgets IN ACCESS SHARE MODE")
        with pytest.raises(MigrationError) as info:
            ctx.runtime.migrate(ctx)
    assert "lock timeout" in info.value.message


def test_the_backup_decision_fails_closed_when_it_cannot_tell(proj, repo):
    build(proj, repo, "r0", repo.commits["a1"], meta={"id": "r0"})  # no commit recorded
    build(proj, repo, "r1", repo.commits["app"])
    ctx = context(proj, "r1", repo.commits["app"], "r0")
    assert ctx.runtime.pending(ctx) == ["(cannot tell what changed since the serving release)"]


def test_a_failing_up_says_one_line_without_the_password(proj, repo):
    leak = ["python", "-c", "import os, sys; sys.exit(os.environ['DATABASE_URL'] + ' '"
            " + os.environ['PGPASSWORD'])"]  # fmt: skip
    svc = replace(proj.service, migrations=replace(proj.service.migrations, up=tuple(leak)))
    broken = replace(proj, service=svc)
    build(broken, repo, "r1", repo.commits["a1"])
    ctx = context(broken, "r1", repo.commits["a1"], None)
    with pytest.raises(MigrationError) as err:
        ctx.runtime.migrate(ctx)
    assert "exited 1" in err.value.message
    assert "pg-dev-s3cret-value" not in err.value.line()
    assert "[REDACTED]" in err.value.message


# a driver's error as SQLAlchemy raises it: the message, then its own trailer lines
DRIVER_ERROR = (
    "raise type('NotSupportedError', (Exception,), {})("
    "'(psycopg.errors.FeatureNotSupported) extension \"uuid-ossp\" is not available\\n'"
    "'[SQL: CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\"]\\n'"
    "'(Background on this error at: https://sqlalche.me/e/20/tw8g)')"
)


def test_a_failing_up_says_the_error_its_traceback_ends_with(proj, repo):
    up = ("python", "-c", DRIVER_ERROR)
    svc = replace(proj.service, migrations=replace(proj.service.migrations, up=up))
    broken = replace(proj, service=svc)
    build(broken, repo, "r1", repo.commits["a1"])
    ctx = context(broken, "r1", repo.commits["a1"], None)
    with pytest.raises(MigrationError) as err:
        ctx.runtime.migrate(ctx)
    assert err.value.message.endswith(
        "exited 1: NotSupportedError: (psycopg.errors.FeatureNotSupported) extension "
        '"uuid-ossp" is not available'
    )
    # the embedded PostgreSQL ships no uuid-ossp: the hint names the way to another PostgreSQL
    assert "has no extension uuid-ossp: set STAGEFLOW_POSTGRES_BIN" in err.value.line()


# Django's management commands run the system checks first and stop, without a traceback, on an
# error among them (a model field whose app is not installed)
DJANGO_CHECKS = (
    "import sys; sys.stderr.write('SystemCheckError: System check identified some issues:\\n\\n"
    "ERRORS:\\nsearch.Entry.body: (postgres.E005) django.contrib.postgres must be in "
    "INSTALLED_APPS\\n'); sys.exit(1)"
)


def test_a_command_stopped_by_django_s_system_checks_says_no_migration_ran(proj, repo):
    up = ("python", "-c", DJANGO_CHECKS)
    svc = replace(proj.service, migrations=replace(proj.service.migrations, up=up))
    broken = replace(proj, service=svc)
    build(broken, repo, "r1", repo.commits["a1"])
    ctx = context(broken, "r1", repo.commits["a1"], None)
    with pytest.raises(MigrationError) as err:
        ctx.runtime.migrate(ctx)
    assert "(postgres.E005)" in err.value.message
    assert "Django's system checks failed before any migration ran" in err.value.line()
    assert "fix the migration" not in err.value.line()


def test_level_2_runs_down_to_the_revision_the_target_recorded(proj, repo):
    deploy(proj, repo, "r1", "a1", None)
    _, _, ctx = deploy(proj, repo, "r2", "b2", "r1")
    p = native_rollback.make_plan(proj, "dev", level=2, to="r1")
    assert isinstance(p.schema, ToolSchemaPlan)
    assert p.commands == ["alembic downgrade a1"]  # what the dry run prints
    assert p.schema.describe() == "alembic downgrade a1"
    details: list[str] = []
    done = native_rollback.revert_schema(ctx, p, details)
    assert done == "schema b2 -> a1"
    assert details == ["schema b2 -> a1"]
    assert query(proj, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'name'"
                 " AND table_name = 'widgets'") == [(0,)]  # fmt: skip
    tool = env_migrations.MigrationTool(proj, "dev", ctx.host, ctx.layout, "r2")
    assert tool.current() == {"": "a1"}
    # nothing left to undo: a second plan runs nothing
    again = native_rollback.make_plan(proj, "dev", level=2, to="r1")
    assert again.commands == [] and again.schema.describe() == "schema already at a1"


def test_level_2_is_refused_without_a_recorded_revision_or_a_down_command(proj, repo):
    deploy(proj, repo, "r1", "a1", None)
    deploy(proj, repo, "r2", "b2", "r1")
    no_down = replace(proj.service, migrations=replace(proj.service.migrations, down=()))
    with pytest.raises(GuardRefused, match="no `down` command; level 3"):
        native_rollback.make_plan(replace(proj, service=no_down), "dev", level=2, to="r1")
    build(proj, repo, "r0", repo.commits["a1"])  # built, never migrated by stageflow
    with pytest.raises(GuardRefused, match="r0 recorded no schema revision; level 3"):
        native_rollback.make_plan(proj, "dev", level=2, to="r0")


def test_a_first_prod_request_sums_the_history_up(proj, repo):
    # prod has served nothing: every migration builds an empty schema, every commit is new; the
    # approver gets one line for the migrations and the newest commits, not the whole history
    req = promotion.request(proj, ref=repo.commits["b2"], actor=Actor("bot", "agent"))
    md = promotion.checklist(proj, req).replace("\\_", "_")
    assert re.search(r"first prod deploy: \d+ migration files build the schema from empty", md)
    assert "Migration: migrations/versions/" not in md
    changes = md.split("### Changes Included")[1].split("###")[0]
    assert len([ln for ln in changes.splitlines() if ln.startswith("- [ ]")]) <= 11


def test_the_prod_request_sees_the_alembic_files(proj, repo):
    host, layout = Host(), Layout(str(proj.env("prod").data_dir))
    entry = HistoryEntry(
        id="h1", time="2026-01-01T00:00:00Z", env="prod", release="p1",
        commit=repo.commits["a1"], ref="main", actor="alice", kind="deploy", status="success",
    )  # fmt: skip
    record_history(host, layout, entry)
    bot = Actor("bot", "agent")
    req = promotion.request(proj, ref=repo.commits["b2"], actor=bot)
    assert req["risk"] == "Medium"  # a migration, with a down command
    md = promotion.checklist(proj, req)
    assert (  # the checklist escapes Markdown: b2\_name reads b2_name
        "Migration: migrations/versions/b2_name.py (the service's own tool, down command: yes)"
        in md.replace("\\_", "_")
    )
    assert "No migrations" not in md

    record_history(host, layout, replace(entry, id="h2", commit=repo.commits["b2"]))
    req = promotion.request(proj, ref=repo.commits["app"], actor=bot)
    assert req["risk"] == "Low"
    assert "- [x] No migrations" in promotion.checklist(proj, req)
