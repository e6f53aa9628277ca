"""The reference service under real gunicorn (2 workers) against real PostgreSQL and Redis."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "app" / "migrations"
GUNICORN = Path(sys.executable).with_name("gunicorn")
EXPECTED = max(int(p.name[:4]) for p in MIGRATIONS.glob("*.up.sql"))
BOOT_WAIT_S = 30
PG_PASSWORD = "pg-secret-never-shown"
API_KEYS = ("key-alpha-0123", "key-beta-4567")


def migrate(dsn: str, *, upto: int | None = None) -> None:
    """Apply the shipped .up.sql files and mark them applied: the smallest stand-in for the engine."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS stageflow_migrations"
            " (version int PRIMARY KEY, state text NOT NULL)"
        )
        for path in sorted(MIGRATIONS.glob("*.up.sql")):
            version = int(path.name[:4])
            if upto is None or version <= upto:
                conn.execute(path.read_text())  # one statement per file: CONCURRENTLY runs as is
                conn.execute("INSERT INTO stageflow_migrations VALUES (%s, 'applied')", (version,))


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Server:
    port: int
    log: Path
    sent: int = 0  # requests made to this server, to check the metrics against

    def request(
        self, method: str, path: str, *, body: object = None, headers: dict[str, str] | None = None
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = dict(headers or {})
            if data is not None:
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            self.sent += 1
            return Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()

    def get(self, path: str, **kw: object) -> Reply:
        return self.request("GET", path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, body: object, **kw: object) -> Reply:
        return self.request("POST", path, body=body, **kw)  # type: ignore[arg-type]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def access_pids(self) -> set[int]:
        """Worker pids that wrote an access line: which processes served requests."""
        found = re.findall(r"\[(\d+)\] app\.access: ", self.output())
        return {int(p) for p in found}


def base_env(dsn: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": dsn,
        "POSTGRES_PASSWORD": PG_PASSWORD,  # trust auth ignores it; it must still never show
        "REDIS_URL": redis_url,
        "ENVIRONMENT": "staging",
        "FEATURES": "notes",
        "LOG_LEVEL": "info",
        "STAGEFLOW_RELEASE": "20261122T000000Z-abc1234",
        "STAGEFLOW_COMMIT": "abc1234def5678",
    }
    env.update(extra)
    return env


@contextmanager
def gunicorn(
    tmp_path: Path, port: int, env: dict[str, str], *, booted: str = "service starting"
) -> Iterator[Server]:
    """gunicorn with 2 sync workers on 127.0.0.1:port; yields once both workers logged `booted`."""
    log = tmp_path / f"gunicorn-{port}.log"
    argv = [str(GUNICORN), "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    argv += ["--chdir", str(REPO), "app.wsgi:application"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(port, log)
    try:
        deadline = time.monotonic() + BOOT_WAIT_S
        # Each worker logs one "service starting" line at boot; the socket is bound before that.
        while server.output().count(booted) < 2:
            if proc.poll() is not None:
                raise AssertionError(f"gunicorn exited {proc.returncode}:\n{server.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"workers did not boot:\n{server.output()}")
            time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = server.output()
    for secret in (PG_PASSWORD, *API_KEYS):
        assert secret not in text, "a secret reached the log"


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[2] or ""))
        series[(m[1], labels)] = float(m[3])
    return series


def total(series: dict, name: str, **match: str) -> float:
    want = set(match.items())
    return sum(v for (n, labels), v in series.items() if n == name and want <= labels)


@pytest.fixture
def start(tmp_path: Path, free_port: Callable[[], int]):
    """Start gunicorn with an env; every server started is stopped at teardown."""
    with ExitStack() as stack:
        yield lambda env, **kw: stack.enter_context(gunicorn(tmp_path, free_port(), env, **kw))


# ----------------------------------------------------------------------------- health and schema


def test_health_readiness_follows_the_schema(start, pg_dsn: str, redis_url: str) -> None:
    server = start(base_env(pg_dsn, redis_url))
    assert server.get("/healthz").json() == {"status": "ok"}

    before = server.get("/readyz")
    assert before.status == 503
    assert "stageflow_migrations" in before.json()["reason"]
    assert server.get("/notes").status == 503  # no notes table yet: not ready, not a crash

    migrate(pg_dsn, upto=EXPECTED - 1)
    behind = server.get("/readyz")
    assert behind.status == 503
    assert behind.json()["checks"]["schema"] == "behind"
    assert f"missing {EXPECTED}" in behind.json()["reason"]

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE stageflow_migrations; DROP TABLE notes")
    migrate(pg_dsn)
    ready = server.get("/readyz")
    assert ready.status == 200, ready.body
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok", "schema": "ok"}

    # A newer schema (an expand migration from the next release) keeps this release ready.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO stageflow_migrations VALUES (%s, 'applied')", (EXPECTED + 1,))
    assert server.get("/readyz").status == 200
    # A version the ledger records as failed is not applied.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE stageflow_migrations SET state = 'failed' WHERE version = 1")
    assert server.get("/readyz").status == 503


def test_settings_come_from_the_process_environment_with_credentials_in_the_urls(
    start, pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    # the URLs carry their passwords, as stageflow feeds them; a dotenv file is not read any more
    env_file = tmp_path / "service.env"
    env_file.write_text("ENVIRONMENT=from-file\nSTAGEFLOW_COMMIT=from-file\n")
    parts = urlsplit(pg_dsn)
    with_password = parts._replace(
        netloc=f"{parts.username}:{PG_PASSWORD}@{parts.hostname}:{parts.port}"
    )
    env = base_env(
        with_password.geturl(),
        redis_url,
        FEATURES="all",
        STAGEFLOW_ENV_FILE=str(env_file),
    )
    server = start(env)
    assert server.get("/version").json() == {
        "release": "20261122T000000Z-abc1234",
        "commit": "abc1234def5678",
        "environment": "staging",
        "database": parts.path.lstrip("/"),
        "features": ["notes"],  # "all", expanded
        "known_features": ["notes"],
        "schema_expected": EXPECTED,
    }
    assert server.get("/healthz").status == 200
    # the fixture checks at teardown that PG_PASSWORD reached no log line


def test_readyz_and_metrics_when_redis_is_down(
    start, pg_dsn: str, free_port: Callable[[], int]
) -> None:
    migrate(pg_dsn)
    server = start(base_env(pg_dsn, f"redis://127.0.0.1:{free_port()}/0"))
    reply = server.get("/readyz")
    assert reply.status == 503
    assert reply.json()["checks"]["redis"] == "down"
    assert reply.json()["checks"]["postgres"] == "ok"
    assert reply.json()["reason"].startswith("redis: ")
    # The notes cache is optional: reads and writes still work from the database alone.
    assert server.post("/notes", {"body": "no cache"}).status == 201
    assert [n["body"] for n in server.get("/notes").json()["notes"]] == ["no cache"]
    assert "stageflow_metrics_degraded 1" in server.get("/metrics").body.decode()


def test_readyz_when_postgres_is_down(start, redis_url: str, free_port: Callable[[], int]) -> None:
    server = start(base_env(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", redis_url))
    reply = server.get("/readyz")
    assert reply.status == 503
    assert reply.json()["checks"] == {"postgres": "down", "redis": "ok", "schema": "unknown"}
    assert server.get("/healthz").status == 200


# ----------------------------------------------------------------------------------- notes


def test_notes_create_list_and_cache_invalidation(start, pg_dsn: str, redis_url: str) -> None:
    migrate(pg_dsn)
    server = start(base_env(pg_dsn, redis_url))
    first = server.post("/notes", {"body": "first", "author": "ann"})
    assert first.status == 201
    row = first.json()
    assert row["body"] == "first" and row["author"] == "ann" and row["id"] > 0
    assert row["created_at"]

    listed = server.get("/notes").json()
    assert (listed["cached"], [n["body"] for n in listed["notes"]]) == (False, ["first"])
    again = server.get("/notes").json()
    assert again == {"notes": listed["notes"], "cached": True}

    assert server.post("/notes", {"body": "second"}).json()["author"] is None
    fresh = server.get("/notes").json()
    assert (fresh["cached"], [n["body"] for n in fresh["notes"]]) == (False, ["second", "first"])

    assert server.post("/notes", {"body": ""}).status == 400
    assert server.post("/notes", ["not", "an", "object"]).status == 400
    assert server.request("DELETE", "/notes").status == 405
    assert server.get("/nope").status == 404


def test_a_slow_reader_cannot_hide_a_committed_note(start, pg_dsn: str, redis_url: str) -> None:
    """A reader that queried before a write and stored its list after the write's invalidation
    (the race several hosts' smoke probes hit) must not make the new note invisible."""
    import redis as redis_lib

    from app.wsgi import NOTES_CACHE_KEY

    migrate(pg_dsn)
    server = start(base_env(pg_dsn, redis_url))
    server.post("/notes", {"body": "old"})
    assert server.get("/notes").json()["cached"] is False
    client = redis_lib.Redis.from_url(redis_url)
    stale = client.hgetall(NOTES_CACHE_KEY)  # what the slow reader is about to store
    assert stale
    assert server.post("/notes", {"body": "new"}).status == 201
    client.hset(NOTES_CACHE_KEY, mapping=stale)  # ... and stores, after the invalidation
    listed = server.get("/notes").json()
    assert [n["body"] for n in listed["notes"]] == ["new", "old"] and listed["cached"] is False
    client.close()


def test_notes_need_the_feature(start, pg_dsn: str, redis_url: str) -> None:
    migrate(pg_dsn)
    server = start(base_env(pg_dsn, redis_url, FEATURES=""))
    assert server.get("/notes").status == 404
    assert server.get("/version").json()["features"] == []


def test_workers_reconnect_once_when_the_database_drops_them(
    start, pg_dsn: str, redis_url: str
) -> None:
    migrate(pg_dsn)
    server = start(base_env(pg_dsn, redis_url))
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(10):
            assert set(pool.map(lambda _: server.get("/readyz").status, range(16))) == {200}
            if len(server.access_pids()) >= 2:
                break
    assert len(server.access_pids()) == 2  # both workers now hold a connection
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        dropped = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert dropped == (2,)
    assert server.post("/notes", {"body": "after the drop"}).status == 201
    assert server.post("/notes", {"body": "and again"}).status == 201
    assert server.get("/readyz").status == 200
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (2,)


def test_log_level_is_honoured(start, pg_dsn: str, redis_url: str) -> None:
    server = start(base_env(pg_dsn, redis_url, LOG_LEVEL="warning"), booted="Booting worker")
    assert server.get("/healthz").status == 200
    assert server.get("/readyz").status == 503
    assert "app.access" not in server.output()
    loud = start(base_env(pg_dsn, redis_url, LOG_LEVEL="info"))
    assert loud.get("/healthz").status == 200
    assert re.search(r"app\.access: GET /healthz 200 [0-9.]+ms", loud.output())


def test_api_key_and_rate_limit(start, pg_dsn: str, redis_url: str) -> None:
    migrate(pg_dsn)
    limit = 3
    env = base_env(
        pg_dsn,
        redis_url,
        REQUIRE_API_KEY="true",
        API_KEYS=",".join(API_KEYS),
        API_RATE_LIMIT=str(limit),
    )
    server = start(env)
    assert server.get("/notes").status == 401
    denied = server.get("/notes", headers={"X-API-Key": "wrong"})
    assert denied.status == 401
    assert API_KEYS[0] not in denied.body.decode()
    assert server.get("/healthz").status == 200  # only /notes is guarded

    # The limit counts per calendar minute: start a burst well inside one.
    left = 60 - time.time() % 60
    if left < 5:
        time.sleep(left + 0.2)
    alpha = {"X-API-Key": API_KEYS[0]}
    statuses = [server.get("/notes", headers=alpha).status for _ in range(limit + 1)]
    assert statuses == [200] * limit + [429]
    limited = server.get("/notes", headers=alpha)
    assert limited.status == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
    # Each key has its own budget.
    assert server.get("/notes", headers={"X-API-Key": API_KEYS[1]}).status == 200
    assert not any(key in server.output() for key in API_KEYS)


# --------------------------------------------------------------------------------- metrics


def test_metrics_add_up_across_workers(start, pg_dsn: str, redis_url: str) -> None:
    migrate(pg_dsn)
    release = "r-metrics-1"
    server = start(base_env(pg_dsn, redis_url, STAGEFLOW_RELEASE=release))
    # Concurrent rounds until both workers have served: then only Redis can hold the true total.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(10):
            list(pool.map(lambda _: server.get("/healthz"), range(40)))
            if len(server.access_pids()) >= 2:
                break
    assert len(server.access_pids()) == 2
    assert server.get("/nope").status == 404
    sent = server.sent

    series = parse_metrics(server.get("/metrics").body.decode())
    assert total(series, "http_requests_total", release=release) == sent
    assert total(series, "http_requests_total", release=release, status="404") == 1
    assert total(series, "http_request_errors_total", release=release) == 0
    assert total(series, "http_request_duration_seconds_count", release=release) == sent
    assert total(series, "http_request_duration_seconds_bucket", le="+Inf") == sent
    assert total(series, "http_request_duration_seconds_sum", release=release) > 0
    assert total(series, "process_resident_memory_bytes", release=release) > 1_000_000
    assert series[("stageflow_metrics_degraded", frozenset())] == 0
    stored = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        # The /metrics request itself was counted after it rendered.
        assert int(stored.hget(f"stageflow:metrics:{release}", "duration_count") or 0) == sent + 1
    finally:
        stored.close()


# ---------------------------------------------------------------------------------- faults


@pytest.mark.parametrize(("after", "status"), [(0, 500), (3600, 200)])
def test_fault_healthz_fail_after(
    start, redis_url: str, pg_dsn: str, after: int, status: int
) -> None:
    server = start(base_env(pg_dsn, redis_url, STAGEFLOW_FAULT=f"healthz-fail-after:{after}"))
    assert server.get("/healthz").status == status


def test_fault_healthz_fail_after_counts_from_the_first_request_after_smoke(
    start, redis_url: str, pg_dsn: str
) -> None:
    """Smoke's probes (however long they take on a busy machine) never start the fault's clock;
    the first other health request (verify's, after the switch) does."""
    server = start(base_env(pg_dsn, redis_url, STAGEFLOW_FAULT="healthz-fail-after:0"))
    smoke = {"X-Stageflow-Probe": "smoke"}
    assert [server.get("/healthz", headers=smoke).status for _ in range(3)] == [200] * 3
    assert server.get("/healthz", headers={"X-Stageflow-Probe": "verify"}).status == 500


@pytest.mark.parametrize(("percent", "failures"), [(100, {40}), (50, {19, 20}), (0, {0})])
def test_fault_error_rate(
    start, pg_dsn: str, redis_url: str, percent: int, failures: set[int]
) -> None:
    migrate(pg_dsn)
    server = start(base_env(pg_dsn, redis_url, STAGEFLOW_FAULT=f"error-rate:{percent}"))
    statuses = [server.get("/notes").status for _ in range(40)]
    assert set(statuses) <= {200, 500}
    # Evenly spaced per worker: 50% of 40 split over two workers fails 19 or 20 times.
    assert statuses.count(500) in failures
    series = parse_metrics(server.get("/metrics").body.decode())
    assert total(series, "http_request_errors_total") == statuses.count(500)
    assert server.get("/healthz").status == 200


def test_bad_setting_stops_gunicorn_with_one_line(
    pg_dsn: str, redis_url: str, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    env = base_env(pg_dsn, redis_url, REQUIRE_API_KEY="maybe")
    # One worker: when two fail at once, gunicorn's own master prints a traceback of its halt.
    argv = [str(GUNICORN), "--bind", f"127.0.0.1:{free_port()}", "--workers", "1"]
    argv += ["--chdir", str(REPO), "app.wsgi:application"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "REQUIRE_API_KEY must be true or false" in done.stderr
    assert "Traceback" not in done.stderr
