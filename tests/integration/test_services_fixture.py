"""The shared fixtures reach real servers, and say why when the asked-for source cannot give them."""

import os
import subprocess
import sys
from pathlib import Path

import docker
import psycopg
import pytest
import redis

from tests.live_engine import image_env, require_engine

REPO = Path(__file__).resolve().parents[2]
# the files whose tests take the shared servers (pg_dsn, redis_url): the migration engine and the
# release gate's migrations gate against a live database. The gate's alembic and Django cases are
# left to the main run: their time goes to rendering and rehearsing the tools' SQL, not to the
# server, and their read of the target is the read-only role's the cases kept here make.
DOCKER_FILES = (
    "tests/integration/test_migrations.py",
    "tests/integration/test_release_gate_target.py",
)
DOCKER_SKIP = "not an_alembic_service and not a_django_service"


def test_pg_dsn_is_a_fresh_database(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()[0]
        assert tables == 0
        assert conn.execute("SELECT current_user").fetchone()[0] == "postgres"


def test_redis_url_is_flushed(redis_url):
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.set("k", "v")
    assert client.get("k") == b"v"


def _pytest_with(
    services: str,
    *,
    tests: tuple[str, ...] = ("test_pg_dsn_is_a_fresh_database",),
    files: tuple[str, ...] = (),
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """This module's tests (or whole files) in a new session whose servers come from `services`."""
    env = {**os.environ, "STAGEFLOW_TEST_SERVICES": services, **env}
    here = list(files) or [f"{__file__}::{test}" for test in tests]
    select = ["-k", DOCKER_SKIP] if files else []
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *select, *here],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=1200,
    )


def test_asking_for_docker_servers_without_an_engine_fails_with_the_reason():
    try:
        docker.from_env().ping()
    except Exception:  # noqa: BLE001 - no engine: the case under test
        pass
    else:
        pytest.skip("a Docker engine answers here: the fixtures would start containers")
    res = _pytest_with("docker")
    assert res.returncode != 0
    assert "STAGEFLOW_TEST_SERVICES=docker but no Docker engine answers" in res.stdout


def test_the_migration_and_gate_tests_pass_on_servers_from_testcontainers():
    """The user's named test dependency for real: PostgreSQL and Redis containers started by
    testcontainers on the engine (with the local images where no registry answers) serve the
    migration engine's and the release gate's database tests, as the embedded servers do."""
    require_engine()
    res = _pytest_with("docker", files=DOCKER_FILES, **image_env())
    last = res.stdout.strip().splitlines()[-1:]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert last and " passed" in last[0] and "skipped" not in last[0], last


def test_an_unknown_source_of_servers_fails_with_the_choices():
    res = _pytest_with("podman")
    assert res.returncode != 0 and "use embedded (the default) or docker" in res.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's servers run as another user")
def test_servers_the_service_user_cannot_reach_stop_the_run_with_one_line(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # the fixtures' data dirs go under TMPDIR: here, out of its reach
    res = _pytest_with(
        "embedded",
        tests=("test_pg_dsn_is_a_fresh_database", "test_redis_url_is_flushed"),
        TMPDIR=str(private),
    )
    assert res.returncode != 0
    assert res.stdout.count("cannot reach") == 1, res.stdout
    assert "the test servers cannot start: the service user stageflow cannot reach" in res.stdout
