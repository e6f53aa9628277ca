"""The environment's lock_timeout reaches every place migrations run, not only the deploy: a
migration whose table another session holds fails with the lock timeout, it does not wait."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from deploy import compose_migrate, staging
from deploy.config import load_project
from deploy.errors import MigrationError
from deploy.state import Layout
from tests import support

TABLE = "CREATE TABLE held (id int);\n"
ALTER = "ALTER TABLE held ADD COLUMN c int;\n"


def _files(directory: Path, *, second: bool = False) -> None:
    """0001 makes the table; with second, 0002 alters it (the statement that must wait)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "0001_held.up.sql").write_text(TABLE)
    if second:
        (directory / "0002_col.up.sql").write_text(ALTER)


def _held(dsn: str) -> Iterator[psycopg.Connection]:
    """A session holding a lock on `held` in an open transaction: ALTER must wait behind it."""
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE held IN ACCESS SHARE MODE")
        yield holder


def test_compose_migrate_applies_the_policys_lock_timeout(pg_dsn: str, tmp_path: Path) -> None:
    _files(tmp_path / "m")
    environ = {"DATABASE_URL": pg_dsn}
    assert compose_migrate.run(["up", "--dir", "m"], environ, root=tmp_path) == {"applied": [1]}
    _files(tmp_path / "m", second=True)
    argv = ["up", "--dir", "m", "--lock-timeout", "100ms", "--statement-timeout", "1min"]
    for _ in _held(pg_dsn):
        with pytest.raises(MigrationError) as info:
            compose_migrate.run([*argv, "--deadline-s", "60"], environ, root=tmp_path)
    assert "0002_col.up.sql" in info.value.message and "lock timeout" in info.value.message


@pytest.fixture
def staging_root(tmp_path: Path, pg_dsn: str) -> Path:
    """A project whose staging database is a fresh one on the test server; its policy's
    lock_timeout 100ms and statement_timeout 300ms (the engine's own default is no limit)."""
    root = tmp_path / "proj"
    root.mkdir()
    policy = support.minimal_policy().replace(
        "[environments.staging]\n",
        '[environments.staging]\nlock_timeout = "100ms"\nstatement_timeout = "300ms"\n',
        1,
    )
    (root / "stageflow.toml").write_text(policy)
    support.write_envs(root)
    port = urlsplit(pg_dsn).port
    path = root / "env" / "staging.env"
    text = re.sub(r"(?m)^POSTGRES_PORT=.*$", f"POSTGRES_PORT={port}", path.read_text())
    text = re.sub(r"(?m)^DATABASE_URL=.*$", f"DATABASE_URL={pg_dsn}", text)
    path.write_text(text)
    _files(root / "app" / "migrations")
    return root


def test_staging_init_migrates_with_the_policys_lock_timeout(
    staging_root: Path, pg_dsn: str
) -> None:
    proj = load_project(staging_root)
    env = proj.env("staging")
    layout = Layout(str(env.data_dir))
    assert staging._migrate_schema(proj, env, layout, actor="t", reset=True) == "applied [1]"
    _files(staging_root / "app" / "migrations", second=True)
    for _ in _held(pg_dsn):
        with pytest.raises(MigrationError) as info:
            staging._migrate_schema(proj, env, layout, actor="t", reset=True)
    assert "0002_col.up.sql" in info.value.message and "lock timeout" in info.value.message
    # a statement running past the policy's statement_timeout is cancelled, not waited for
    (staging_root / "app/migrations/0002_col.up.sql").write_text("SELECT pg_sleep(3);\n")
    with pytest.raises(MigrationError) as info:
        staging._migrate_schema(proj, env, layout, actor="t", reset=True)
    assert "0002_col.up.sql" in info.value.message and "statement timeout" in info.value.message
