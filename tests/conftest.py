"""Shared fixtures: real PostgreSQL and Redis servers (embedded wheels), started once per session."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.config import load_env
from deploy.runtime.native import NativeServices, pg_bin_dir
from tests import support

REQUIRE_ALL = os.environ.get("STAGEFLOW_REQUIRE_ALL") == "1"


def pytest_sessionstart(session: pytest.Session) -> None:
    support.reap_leftovers()


def need(condition: bool, reason: str) -> None:
    """Skip when a part is missing, except in CI (STAGEFLOW_REQUIRE_ALL=1), where it fails."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required part missing: {reason}")
    pytest.skip(reason)


@dataclass
class PgServer:
    host: str
    port: int
    bin_dir: Path
    superuser: str = "postgres"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{dbname}"


@dataclass
class RedisServer:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


@pytest.fixture(scope="session")
def _services():
    root = support.public_tmpdir("sf-services-")
    support.write_envs(root, names=("dev",))
    env = load_env(root, "dev")
    services = NativeServices(env)
    entry = support.register(
        "services", {"root": str(root), "pgdata": services.layout.pgdata, "pattern": str(root)}
    )
    try:
        services.up()
        # tests connect as the superuser over TCP: trust on loopback for this throwaway cluster
        hba = Path(services.layout.pgdata) / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        services._run_as_service(
            [str(pg_bin_dir() / "pg_ctl"), "-D", services.layout.pgdata, "-s", "reload"]
        )
        yield services
    finally:
        services.down()
        shutil.rmtree(root, ignore_errors=True)
        entry.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def pg_server(_services: NativeServices) -> PgServer:
    return PgServer("127.0.0.1", _services.env.postgres_port, pg_bin_dir())


@pytest.fixture(scope="session")
def redis_server(_services: NativeServices) -> RedisServer:
    return RedisServer("127.0.0.1", _services.env.redis_port)


@contextmanager
def fresh_database(pg_server: PgServer) -> Iterator[str]:
    """A new empty database on pg_server (its superuser DSN), dropped on exit."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_server.dsn(name)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(pg_server: PgServer):
    with fresh_database(pg_server) as dsn:
        yield dsn


_redis_dbs = iter(range(1, 16))


@pytest.fixture
def redis_url(redis_server: RedisServer):
    import redis

    db = next(_redis_dbs, None)
    if db is None:  # more than 15 tests in one session: reuse db 15 after a flush
        db = 15
    client = redis.Redis(host=redis_server.host, port=redis_server.port, db=db)
    client.flushdb()
    client.close()
    return f"redis://{redis_server.host}:{redis_server.port}/{db}"


@pytest.fixture
def free_port():
    return support.free_port
