"""The migrations gate against a production-like target read by a role that can only read: the
rehearsal happens in a cluster of the gate's own, for SQL files and for a service's alembic."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from deploy.gates.migrations import fingerprint
from deploy.secrets import Secret
from tests.integration import test_release_gate
from tests.integration.test_release_gate import (
    CREATE,
    STAGES,
    _applied_target,
    by_name,
    commit,
    gate,
    git,
)

repo = test_release_gate.repo  # the fixture: a tiny project with the notes service's policy


@pytest.fixture
def reader(pg_dsn: str) -> Iterator[str]:
    """A URL of the target database for a role with pg_read_all_data alone: no CREATEDB, no
    write, no ownership (what prod grants the gate)."""
    role = f"gate_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB NOSUPERUSER PASSWORD 'reader-s3cret'").format(
                sql.Identifier(role)
            )
        )
        conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(role)))
    url = pg_dsn.replace("postgresql://postgres@", f"postgresql://{role}:reader-s3cret@")
    try:
        yield url
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _databases(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def _target(repo: Path, dsn: str, second: dict[str, str], tag: str, *, extra: str = "") -> None:
    if extra:
        commit(repo, {"stageflow.toml": STAGES + extra})
    commit(repo, {"app/migrations/0001_notes.up.sql": CREATE})
    _applied_target(repo, dsn)
    commit(repo, second, tag=tag)


def test_a_read_only_role_is_all_the_gate_needs(pg_dsn: str, reader: str, repo: Path) -> None:
    _target(
        repo,
        pg_dsn,
        {
            "app/migrations/0002_tags.up.sql": "ALTER TABLE notes ADD COLUMN tags text;\n",
            "app/migrations/0002_tags.down.sql": "ALTER TABLE notes DROP COLUMN tags;\n",
        },
        "v4.0.0-rc.1",
    )
    before, databases = fingerprint(pg_dsn), _databases(pg_dsn)
    # the service is writing: an open transaction holding the row locks of an INSERT
    with psycopg.connect(pg_dsn) as service:
        service.execute("INSERT INTO notes VALUES (9, 9)")
        report = gate(repo, "v4.0.0-rc.1", only=("migrations",), db_url=Secret(reader))
        service.rollback()
    mig = by_name(report)["migrations"]
    assert mig.status == "passed", mig.summary
    applied = mig.details["rehearsal"]["applied"][0]
    assert applied["file"] == "0002_tags.up.sql" and applied["seconds"] >= 0
    (statement,) = applied["statements"]
    (lock,) = statement["locks"]
    assert lock["table"] == "public.notes" and lock["mode"] == "AccessExclusiveLock"
    assert lock["held_s"] >= 0
    assert mig.details["copy"]["mode"] == "data"
    assert fingerprint(pg_dsn) == before  # no write
    assert _databases(pg_dsn) == databases  # no scratch database on the target's server
    text = (repo / "dist" / "release-gate" / f"{report.stem}.json").read_text()
    assert "reader-s3cret" not in text


def test_a_breaking_migration_fails_for_the_read_only_role(
    pg_dsn: str, reader: str, repo: Path
) -> None:
    _target(
        repo,
        pg_dsn,
        {"app/migrations/0002_positive.up.sql": "ALTER TABLE notes ADD CHECK (score > 0);\n"},
        "v4.1.0-rc.1",
    )
    before, databases = fingerprint(pg_dsn), _databases(pg_dsn)
    mig = by_name(gate(repo, "v4.1.0-rc.1", only=("migrations",), db_url=Secret(reader)))[
        "migrations"
    ]
    assert mig.status == "failed" and "rehearsal of 0002_positive.up.sql failed" in mig.summary
    assert "check constraint" in mig.summary
    assert fingerprint(pg_dsn) == before and _databases(pg_dsn) == databases
    commit(
        repo,
        {
            "app/migrations/0002_positive.up.sql": "ALTER TABLE notes ADD COLUMN a bigint NOT NULL;\n"
        },
        tag="v4.1.1-rc.1",
    )
    mig = by_name(gate(repo, "v4.1.1-rc.1", only=("migrations",), db_url=Secret(reader)))[
        "migrations"
    ]
    assert mig.status == "failed" and "adding-required-field" in mig.summary


def test_long_locks_are_linted_with_the_rehearsals_measured_time(
    pg_dsn: str, reader: str, repo: Path
) -> None:
    # a "large" table from one row on, so the small test table counts as one
    _target(
        repo,
        pg_dsn,
        {
            "app/migrations/0002_idx.up.sql": "LOCK TABLE notes IN SHARE MODE;\n"
            "CREATE INDEX notes_score ON notes (score);\n"
        },
        "v4.2.0-rc.1",
        extra="\n[gates.migrations]\nlarge_table_rows = 1\n",
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ANALYZE notes")  # the catalog's row estimate, as a live table has one
    mig = by_name(gate(repo, "v4.2.0-rc.1", only=("migrations",), db_url=Secret(reader)))[
        "migrations"
    ]
    assert mig.status == "failed", mig.summary
    assert "index-without-concurrently" in mig.summary and "held ShareLock for" in mig.summary
    (warning,) = mig.details["lock_warnings"]
    assert warning.startswith("0002_idx.up.sql: lock-table:") and "in the rehearsal" in warning


# -- a service whose alembic migrates ---------------------------------------------------------

ENV_PY = """\
import os

from alembic import context

url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
if context.is_offline_mode():
    context.configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    from sqlalchemy import create_engine

    with create_engine(url).connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
"""

REVISION = """\
from alembic import op

revision = {rev!r}
down_revision = {down!r}


def upgrade():
    op.execute({up!r})


def downgrade():
    op.execute({down_sql!r})
"""

SERVICE = """
[service]
name = "widgets"
wsgi = "widgets:app"

[service.migrations]
kind = "command"
dir = "migrations"
up = ["{bin}/alembic", "upgrade", "head"]
down = ["{bin}/alembic", "downgrade", "{{target}}"]
current = ["{bin}/alembic", "current"]

"""
# the GA stage alone, requiring the migrations gate: what each service below is judged by
GA_MIGRATIONS = """
[stages]
order = ["GA"]
[stages.GA]
patterns = ["*"]
[stages.GA.gates]
migrations = "required"
promotion_guard = "required"
"""


TOOLS = ("alembic", "sqlalchemy", "psycopg[binary]", "django")


@pytest.fixture(scope="module")
def alembic_bin() -> Path:
    """A venv with the services' migration tools, built once per Python and tool list and kept
    in the temp dir: the suite runs this module twice (on the embedded servers, then on
    testcontainers' in test_services_fixture), and pip would build it each time."""
    import fcntl
    import hashlib

    key = hashlib.sha256(repr((sys.version, TOOLS)).encode()).hexdigest()[:16]
    venv = Path(tempfile.gettempdir()) / f"stageflow-test-tools-{key}"
    # scripts carry their venv's path, so it is built in place; a file lock keeps workers apart
    with open(f"{venv}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = subprocess.run(
                [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-compile", *TOOLS],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if pip.returncode != 0:
                pytest.skip(f"cannot install the tools: {pip.stderr.strip().splitlines()[-1:]}")
            (venv / ".complete").write_text("\n".join(TOOLS) + "\n")
    return venv / "bin"


def _revision(rev: str, down: str | None, up: str, down_sql: str) -> str:
    return REVISION.format(rev=rev, down=down, up=up, down_sql=down_sql)


def test_an_alembic_service_gets_its_sql_linted_and_rehearsed(
    tmp_path: Path, pg_dsn: str, reader: str, alembic_bin: Path
) -> None:
    root = tmp_path / "widgets"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    files = {
        ".gitignore": "dist/\n",
        "stageflow.toml": SERVICE.format(bin=alembic_bin) + GA_MIGRATIONS,
        "alembic.ini": "[alembic]\nscript_location = migrations\n",
        "migrations/env.py": ENV_PY,
        "migrations/versions/a1.py": _revision(
            "a1", None, "CREATE TABLE widgets (id int PRIMARY KEY)", "DROP TABLE widgets"
        ),
        "widgets.py": "app = None\n",
    }
    commit(root, files, message="widgets")
    env = {"PATH": f"{alembic_bin}:/usr/bin:/bin", "DATABASE_URL": pg_dsn}
    subprocess.run([str(alembic_bin / "alembic"), "upgrade", "head"], cwd=root, env=env, check=True)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO widgets VALUES (1), (2)")
    commit(
        root,
        {
            "migrations/versions/b2.py": _revision(
                "b2",
                "a1",
                "ALTER TABLE widgets ADD COLUMN name text",
                "ALTER TABLE widgets DROP COLUMN name",
            )
        },
        tag="v1.0.0",
    )
    before, databases = fingerprint(pg_dsn), _databases(pg_dsn)
    report = gate(root, "v1.0.0", db_url=Secret(reader))
    mig = by_name(report)["migrations"]
    assert mig.status == "passed", mig.summary
    assert mig.details["revision_before"] == "a1" and mig.details["revision_after"] == "b2"
    assert "ALTER TABLE widgets ADD COLUMN name text" in mig.details["rendered"]["statements"]
    assert "--sql" in mig.details["rendered"]["command"]
    assert any(
        row["statement"].startswith("ALTER TABLE widgets") and row["locks"]
        for row in mig.details["statements"]
    )
    assert mig.details["rehearsal"]["round_trip"]["down_s"] >= 0
    assert "a1 -> b2 rehearsed" in mig.summary and "statement(s) linted" in mig.summary
    assert fingerprint(pg_dsn) == before and _databases(pg_dsn) == databases
    md = (root / "dist" / "release-gate" / f"{report.commit}.md").read_text()
    assert "a1 -> b2" in md
    # a migration the copy's rows refuse fails the rehearsal, the target untouched
    commit(
        root,
        {
            "migrations/versions/c3.py": _revision(
                "c3", "b2", "ALTER TABLE widgets ADD CHECK (id > 1)", "SELECT 1"
            )
        },
        tag="v1.1.0",
    )
    mig = by_name(gate(root, "v1.1.0", db_url=Secret(reader)))["migrations"]
    assert mig.status == "failed" and "check constraint" in mig.summary, mig.summary
    assert fingerprint(pg_dsn) == before and _databases(pg_dsn) == databases


# a data migration that asks the database while it runs: alembic cannot print it offline
ASKS_THE_DATABASE = """\
import sqlalchemy as sa
from alembic import op

revision = "b2"
down_revision = "a1"


def upgrade():
    rows = op.get_bind().execute(sa.text("SELECT count(*) FROM widgets")).scalar()
    op.execute(f"ALTER TABLE widgets ADD COLUMN seen int DEFAULT {int(rows)}")


def downgrade():
    op.execute("ALTER TABLE widgets DROP COLUMN seen")
"""


def test_migrations_that_cannot_print_their_sql_offline_are_still_rehearsed(
    tmp_path: Path, pg_dsn: str, reader: str, alembic_bin: Path
) -> None:
    root = tmp_path / "widgets"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    files = {
        ".gitignore": "dist/\n",
        "stageflow.toml": SERVICE.format(bin=alembic_bin) + GA_MIGRATIONS,
        "alembic.ini": "[alembic]\nscript_location = migrations\n",
        "migrations/env.py": ENV_PY,
        # the oldest migration's downgrade was never kept working
        "migrations/versions/a1.py": _revision(
            "a1", None, "CREATE TABLE widgets (id int PRIMARY KEY)", "SELECT no_such_function()"
        ),
        "migrations/versions/b2.py": ASKS_THE_DATABASE,
        "widgets.py": "app = None\n",
    }
    commit(root, files, message="widgets", tag="v1.0.0")
    mig = by_name(gate(root, "v1.0.0", db_url=Secret(reader)))["migrations"]
    # the rehearsal judges them on the copy; the report says why their SQL was not linted
    assert mig.status == "passed", mig.summary
    assert mig.details["revision_after"] == "b2"
    assert "cannot print its SQL offline" in mig.summary, mig.summary
    assert mig.details["lint"].startswith("not linted: the tool's offline SQL failed")
    # an empty target: no round trip down to nothing, which no rollback would ever make
    assert mig.details["rehearsal"]["round_trip"] == "skipped: the target has no schema yet"
    # a render command the operator set must work: its failure fails the gate
    policy = SERVICE.format(bin=alembic_bin) + '[gates.migrations]\nrender = ["false"]\n'
    commit(root, {"stageflow.toml": policy + GA_MIGRATIONS}, tag="v1.0.1")
    mig = by_name(gate(root, "v1.0.1", db_url=Secret(reader)))["migrations"]
    assert mig.status == "failed" and "`false` exited 1" in mig.summary, mig.summary


def test_what_the_app_prints_on_its_way_up_is_not_linted_as_sql(
    tmp_path: Path, pg_dsn: str, reader: str, alembic_bin: Path
) -> None:
    # an env.py that builds the app, whose factory prints as it loads its plugins
    root = tmp_path / "widgets"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    files = {
        ".gitignore": "dist/\n",
        "stageflow.toml": SERVICE.format(bin=alembic_bin) + GA_MIGRATIONS,
        "alembic.ini": "[alembic]\nscript_location = migrations\n",
        "migrations/env.py": 'print(" * Loaded plugin, <module widgets.extras>")\n' + ENV_PY,
        "migrations/versions/a1.py": _revision(
            "a1", None, "CREATE TABLE widgets (id int PRIMARY KEY)", "DROP TABLE widgets"
        ),
        "widgets.py": "app = None\n",
    }
    commit(root, files, message="widgets", tag="v1.0.0")
    mig = by_name(gate(root, "v1.0.0", db_url=Secret(reader)))["migrations"]
    assert mig.status == "passed", mig.summary
    statements = mig.details["rendered"]["statements"]
    assert statements and not any("Loaded plugin" in s for s in statements), statements
    assert "CREATE TABLE widgets (id int PRIMARY KEY)" in statements


def test_a_service_whose_settings_require_its_secrets_is_rehearsed_with_throwaway_ones(
    tmp_path: Path, pg_dsn: str, reader: str, alembic_bin: Path
) -> None:
    # env.py loads the service's settings, which require its declared secret at import (as a
    # pydantic-settings field without a default does); the gate has no real secret to give
    root = tmp_path / "widgets"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    settings = "import os\n\nassert len(os.environ['SECRET_KEY']) >= 16, 'SECRET_KEY required'\n"
    service = SERVICE.format(bin=alembic_bin).replace(
        "[service.migrations]", '[service.env]\nsecrets = ["SECRET_KEY"]\n\n[service.migrations]'
    )
    files = {
        ".gitignore": "dist/\n",
        "stageflow.toml": service + GA_MIGRATIONS,
        "alembic.ini": "[alembic]\nscript_location = migrations\n",
        "migrations/env.py": "import widgets_settings  # noqa: F401\n" + ENV_PY,
        "migrations/versions/a1.py": _revision(
            "a1", None, "CREATE TABLE widgets (id int PRIMARY KEY)", "DROP TABLE widgets"
        ),
        "widgets.py": "app = None\n",
        "widgets_settings.py": settings,
    }
    commit(root, files, message="widgets", tag="v1.0.0")
    mig = by_name(gate(root, "v1.0.0", db_url=Secret(reader)))["migrations"]
    assert mig.status == "passed", mig.summary
    # a settings error says the exception its traceback ends with, not what follows it
    broken = "raise RuntimeError('settings refused\\nsee https://example.invalid/why')\n"
    commit(root, {"migrations/env.py": broken + files["migrations/env.py"]}, tag="v1.0.1")
    mig = by_name(gate(root, "v1.0.1", db_url=Secret(reader)))["migrations"]
    assert mig.status == "failed"
    assert mig.summary.endswith("exited 1: RuntimeError: settings refused"), mig.summary


# -- a Django service: each pending migration's SQL from `manage.py sqlmigrate` ---------------

DJANGO_SETTINGS = """\
import os
from urllib.parse import unquote, urlsplit

SECRET_KEY = "not-a-secret"
INSTALLED_APPS = ["catalog"]
USE_TZ = True
_url = urlsplit(os.environ["DATABASE_URL"])
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or os.environ.get("PGPASSWORD", "")),
        "HOST": _url.hostname,
        "PORT": _url.port,
    }
}
"""

DJANGO_MANAGE = """\
import os
import sys
import tempfile

from django.core.management import execute_from_command_line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_settings")
execute_from_command_line(sys.argv)
"""

DJANGO_MIGRATION = """\
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = {initial}
    dependencies = {deps!r}
    operations = [{op}]
"""

DJANGO_SERVICE = """
[service]
name = "catalog"
wsgi = "site_settings:app"

[service.migrations]
kind = "command"
dir = "."
up = ["{bin}/python", "manage.py", "migrate", "--noinput"]
down = ["{bin}/python", "manage.py", "migrate", "{{app}}", "{{target}}", "--noinput"]
current = ["{bin}/python", "manage.py", "showmigrations", "--plan"]
"""


def _django_migration(name: str, op: str, deps: list[tuple[str, str]]) -> dict[str, str]:
    text = DJANGO_MIGRATION.format(initial=not deps, deps=deps, op=op)
    return {f"catalog/migrations/{name}.py": text}


def test_a_django_service_gets_each_pending_migrations_sql_linted(
    tmp_path: Path, pg_dsn: str, reader: str, alembic_bin: Path
) -> None:
    root = tmp_path / "catalog"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    create = (
        'migrations.CreateModel("Item", [("id", models.AutoField(primary_key=True)), '
        '("name", models.TextField())])'
    )
    commit(
        root,
        {
            ".gitignore": "dist/\n__pycache__/\n",
            "stageflow.toml": DJANGO_SERVICE.format(bin=alembic_bin) + GA_MIGRATIONS,
            "manage.py": DJANGO_MANAGE,
            "site_settings.py": DJANGO_SETTINGS,
            "catalog/__init__.py": "",
            "catalog/migrations/__init__.py": "",
            **_django_migration("0001_initial", create, []),
        },
        message="catalog",
    )
    env = {"PATH": f"{alembic_bin}:/usr/bin:/bin", "DATABASE_URL": pg_dsn}
    migrate = [str(alembic_bin / "python"), "manage.py", "migrate", "--noinput"]
    subprocess.run(migrate, cwd=root, env=env, check=True, capture_output=True)
    price = 'migrations.AddField("Item", "price", models.IntegerField(null=True))'
    commit(root, _django_migration("0002_price", price, [("catalog", "0001_initial")]), tag="v1")
    before, databases = fingerprint(pg_dsn), _databases(pg_dsn)
    mig = by_name(gate(root, "v1", db_url=Secret(reader)))["migrations"]
    assert mig.status == "passed", mig.summary
    rendered = mig.details["rendered"]
    assert rendered["commands"][-1][-3:] == ["sqlmigrate", "catalog", "0002_price"], rendered
    assert any('ADD COLUMN "price" integer NULL' in s for s in rendered["statements"]), rendered
    assert "1 statement(s) linted" in mig.summary, mig.summary
    # only the apps that moved: a project's dozen others would bury the change
    assert mig.summary.startswith("catalog 0001_initial -> 0002_price rehearsed"), mig.summary
    # a column's type changed rewrites the table under an exclusive lock: squawk blocks it
    sku = 'migrations.AlterField("Item", "name", models.CharField(max_length=40))'
    commit(root, _django_migration("0003_sku", sku, [("catalog", "0002_price")]), tag="v2")
    mig = by_name(gate(root, "v2", db_url=Secret(reader)))["migrations"]
    assert mig.status == "failed" and "squawk blocks" in mig.summary, mig.summary
    assert [c[-1] for c in mig.details["rendered"]["commands"]] == ["0002_price", "0003_sku"]
    assert fingerprint(pg_dsn) == before and _databases(pg_dsn) == databases


def test_the_gate_task_reads_the_db_urls_password_from_pgpassword(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented way: --db-url without its password, PGPASSWORD in the shell. The task's edge
    drops the operator's libpq variables before it connects anywhere; the gate keeps this one. The
    target asks for a password (scram over TCP), as a real prod does."""
    from invoke import Context

    from deploy.gates import scratch_cluster
    from deploy.tasks import _common
    from deploy.tasks.release import gate as gate_task

    with scratch_cluster.started() as target:
        _target(
            repo,
            target.url().reveal(),
            {"app/migrations/0002_tags.up.sql": "ALTER TABLE notes ADD COLUMN tags text;\n"},
            "v4.0.2-rc.1",
        )
        monkeypatch.chdir(repo)
        monkeypatch.setenv("PGPASSWORD", target.password.reveal())
        monkeypatch.setenv("STAGEFLOW_ACTOR", "alice@example.org")
        try:
            gate_task(
                Context(),
                ref="v4.0.2-rc.1",
                db_url=f"postgresql://postgres@127.0.0.1:{target.port}/{scratch_cluster.DBNAME}",
                only="migrations",
            )
        finally:
            getattr(_common, "OPERATOR_LIBPQ", {}).clear()
    sha = git(repo, "rev-parse", "v4.0.2-rc.1")
    text = (repo / "dist" / "release-gate" / f"{sha}.partial.json").read_text()
    (mig,) = [g for g in json.loads(text)["gates"] if g["name"] == "migrations"]
    assert mig["status"] == "passed", mig["summary"]
    assert target.password.reveal() not in text
