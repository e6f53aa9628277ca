"""Shared fixtures: real PostgreSQL and Redis servers, started once per session.

They come from the embedded wheels by default, or from testcontainers with
STAGEFLOW_TEST_SERVICES=docker where a Docker engine answers.
"""

from __future__ import annotations

import compileall
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.config import load_env
from deploy.errors import ServiceError
from deploy.runtime.native import NativeServices, pg_bin_dir
from tests import support

REQUIRE_ALL = os.environ.get("STAGEFLOW_REQUIRE_ALL") == "1"

# The suite starts about 3,000 Pythons (`inv`, the stand-in engine, launchers, gunicorn) on copies
# of the tree. Without their compiled code kept, each one compiles the engine again: 0.1-0.2 CPU-s
# apiece, minutes of a run. A caller's PYTHONDONTWRITEBYTECODE is dropped for what the tests start.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.fixture(autouse=True)
def _sigint_left_as_found() -> Iterator[None]:
    """A test that changes the process's Ctrl-C handler and leaves it changed makes every later
    test of an interrupt in the same worker pass or fail by chance: it fails here, by name."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"the test left SIGINT's handler changed: {after!r}, was {before!r}")


def pytest_sessionstart(session: pytest.Session) -> None:
    support.reap_leftovers()
    # the engine compiled once, here: test projects copy the compiled files with the sources
    compileall.compile_dir(str(support.REPO / "deploy"), quiet=2)


# The longest files, longest first (each file's time in a run of 2026-12-02 13:15). `make test`
# hands whole files to parallel workers in collection order (pytest-xdist --dist loadfile): a long
# file handed out last would finish the run alone, so the long ones go first and the many short
# ones fill the gaps at the end.
RUN_FIRST = (
    "tests/e2e/test_fault_matrix_compose.py",
    "tests/e2e/test_fault_matrix_hosts.py",
    "tests/e2e/test_compose_live.py",
    "tests/e2e/test_service_flask_prod.py",
    "tests/e2e/test_fault_matrix.py",
    "tests/e2e/test_compose_runtime.py",
    "tests/e2e/test_rolling_rollback.py",
    "tests/e2e/test_processes.py",
    "tests/integration/test_verify_under_load.py",
    "tests/e2e/test_rollback.py",
    "tests/e2e/test_compose_live_tool.py",
    "tests/integration/test_release_gate_target.py",
    "tests/integration/test_migrations_command.py",
    "tests/e2e/test_promotion.py",
    "tests/integration/test_release_gate.py",
    "tests/e2e/test_bad_input.py",
    "tests/e2e/test_signed_approvals.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # pytest-xdist's mark of a worker
        return  # one process runs everything anyway: keep the plain order

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return RUN_FIRST.index(path) if path in RUN_FIRST else len(RUN_FIRST)

    items.sort(key=rank)  # stable: every file keeps its own order, the rest theirs


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


# Where the test servers come from: "embedded" (the wheels, the default) or "docker"
# (testcontainers, on a machine whose Docker engine answers).
SERVICES = os.environ.get("STAGEFLOW_TEST_SERVICES", "embedded")
# the same keys as compose's (docs/DEPLOYMENT.md, "Images are configuration"): a registry's own
# images, or the local ones .ci/engine-up builds where no registry can be reached
PG_IMAGE = os.environ.get("STAGEFLOW_POSTGRES_IMAGE") or "postgres:16-alpine"
REDIS_IMAGE = os.environ.get("STAGEFLOW_REDIS_IMAGE") or "redis:7-alpine"


@pytest.fixture(scope="session")
def _services(request: pytest.FixtureRequest) -> Iterator[tuple[PgServer, RedisServer]]:
    if SERVICES == "docker":
        with _container_services() as servers:
            yield servers
    elif SERVICES == "embedded":
        with _stop_the_run_from_a_worker(request.session), _embedded_services() as servers:
            yield servers
    else:
        pytest.fail(
            f"STAGEFLOW_TEST_SERVICES={SERVICES!r} is not a source of servers; "
            "use embedded (the default) or docker"
        )


@contextmanager
def _stop_the_run_from_a_worker(session: pytest.Session) -> Iterator[None]:
    """pytest.exit in a parallel worker (pytest-xdist) crashes the controller and loses the reason:
    there, fail this test and have the controller stop the run with the reason instead."""
    try:
        yield
    except pytest.exit.Exception as exc:
        if not hasattr(session.config, "workerinput"):
            raise
        reason = exc.msg
    else:
        return
    session.shouldstop = reason
    raise pytest.fail.Exception(reason, pytrace=False) from None  # the reason alone, no chain


@contextmanager
def _embedded_services() -> Iterator[tuple[PgServer, RedisServer]]:
    root = support.public_tmpdir("sf-services-")
    support.write_envs(root, names=("dev",))
    (root / "stageflow.toml").write_text(support.minimal_policy())  # the service's declared keys
    env = load_env(root, "dev")
    services = NativeServices(env)
    entry = support.register(
        "services", {"root": str(root), "pgdata": services.layout.pgdata, "pattern": str(root)}
    )
    try:
        try:
            services.up()
        except ServiceError as exc:
            # every test on these servers would fail the same way: say it once and stop
            pytest.exit(f"the test servers cannot start: {exc.line()}", returncode=1)
        # tests connect as the superuser over TCP: trust on loopback for this throwaway cluster
        hba = Path(services.layout.pgdata) / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        services._run_as_service(
            [
                str(services.binaries().pg_bin / "pg_ctl"),
                "-D",
                services.layout.pgdata,
                "-s",
                "reload",
            ]
        )
        yield (
            PgServer("127.0.0.1", env.postgres_port, pg_bin_dir()),
            RedisServer("127.0.0.1", env.redis_port),
        )
    finally:
        services.down()
        shutil.rmtree(root, ignore_errors=True)
        entry.unlink(missing_ok=True)


@contextmanager
def _container_services() -> Iterator[tuple[PgServer, RedisServer]]:
    """PostgreSQL and Redis from testcontainers; asked for by name, so no engine is a failure."""
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # noqa: BLE001 - any way of not answering is the same answer
        pytest.fail(
            f"STAGEFLOW_TEST_SERVICES=docker but no Docker engine answers ({exc.__class__.__name__}); "
            "start one or unset it for the embedded servers"
        )
    # the fixture stops its own containers; the reaper container would need a registry to pull from
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.community.redis import RedisContainer

    # the embedded fixtures' contract: the superuser needs no password over TCP
    pg = PostgresContainer(PG_IMAGE, username="postgres", dbname="postgres")
    pg.with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
    with pg, RedisContainer(REDIS_IMAGE) as rd:
        yield (
            PgServer(pg.get_container_host_ip(), int(pg.get_exposed_port(5432)), pg_bin_dir()),
            RedisServer(rd.get_container_host_ip(), int(rd.get_exposed_port(6379))),
        )


@pytest.fixture(scope="session")
def pg_server(_services: tuple[PgServer, RedisServer]) -> PgServer:
    return _services[0]


@pytest.fixture(scope="session")
def redis_server(_services: tuple[PgServer, RedisServer]) -> RedisServer:
    return _services[1]


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
