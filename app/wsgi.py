"""The WSGI entry point (app.wsgi:application): routes, API keys, rate limits, faults, access log."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import redis

from app.config import KNOWN_FEATURES, AppConfig, ConfigInvalid, load_config
from app.metrics import Metrics
from app.schema import LEDGER_TABLE
from app.store import Database, redis_client

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

NOTES_LIMIT = 50
NOTES_CACHE_KEY = "stageflow:notes:latest"
# Bumped after every committed write. A list is cached with the generation read before its query,
# and only an entry of the current generation is served: a reader that queried before a write
# and stored its list after the write's invalidation can never hide that write.
NOTES_GENERATION_KEY = "stageflow:notes:generation"
NOTES_CACHE_TTL_S = 5.0
MAX_BODY_BYTES = 64 * 1024
MAX_NOTE_CHARS = 10_000
MAX_AUTHOR_CHARS = 200
RATE_KEY_PREFIX = "stageflow:ratelimit:"
# Columns that exist from migration 0003 on; older code trees must not name them.
AUTHOR_SCHEMA_VERSION = 3

_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


def json_response(
    status: int, payload: object, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = (json.dumps(payload, separators=(",", ":"), default=str) + "\n").encode()
    return Response(status, body, headers or [])


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"error": message}, headers)


def _printable(text: str, limit: int = 200) -> str:
    """Text safe for one log line: control characters escaped, length capped."""
    return text[:limit].encode("unicode_escape").decode("ascii")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def configure_logging(level: str) -> logging.Logger:
    """The service's logger on stderr at LOG_LEVEL; separate from the server's own logs."""
    logger = logging.getLogger("app")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
        )
        logger.addHandler(handler)
    logger.propagate = False
    return logger


class Service:
    """The WSGI application: one instance per worker process."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.db = Database(config)
        self.redis = redis_client(config)
        self.metrics = Metrics(release=config.release, client=self.redis)
        self.log = configure_logging(config.log_level)
        self.access_log = self.log.getChild("access")
        # the fault's clock: from the first health request that is not stageflow's smoke probe
        # (after the switch, that is verify's), so it fires after the switch however long the
        # deploy's steps before it took on a busy machine
        self.fault_since: float | None = None
        self._fault_lock = threading.Lock()
        self._fault_requests = 0
        self._secrets = config.secrets()
        self._api_keys = tuple(k.reveal().encode() for k in config.api_keys)
        self.routes: dict[str, dict[str, Callable[[Environ], Response]]] = {
            "/healthz": {"GET": self.healthz},
            "/readyz": {"GET": self.readyz},
            "/version": {"GET": self.version},
            "/metrics": {"GET": self.metrics_text},
            "/notes": {"GET": self.list_notes, "POST": self.create_note},
        }
        self.log.info(
            "service starting: release=%s environment=%s schema_expected=%d features=%s",
            config.release,
            config.environment,
            config.schema_expected,
            ",".join(config.features) or "-",
        )

    # --- plumbing -------------------------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        began = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        fault = self.config.fault
        if fault and fault.kind == "latency":
            time.sleep(fault.value / 1000)  # every answer this much later: a slow dependency
        try:
            response = self.dispatch(method, path, environ)
        except Exception:
            self.log.exception("unhandled error on %s %s", method, _printable(path))
            response = _error(500, "internal error")
        elapsed = time.perf_counter() - began
        # Counted before the reply leaves so a client's next request already sees it in /metrics.
        self.metrics.observe(response.status, elapsed)
        self.access_log.info(
            "%s %s %d %.1fms", method, _printable(path), response.status, elapsed * 1000
        )
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-store"),
            *response.headers,
        ]
        start_response(f"{response.status} {_REASONS.get(response.status, '')}".rstrip(), headers)
        return [response.body]

    def dispatch(self, method: str, path: str, environ: Environ) -> Response:
        handlers = self.routes.get(path.rstrip("/") or "/")
        if handlers is None:
            return _error(404, f"no such path: {_printable(path, 80)}")
        handler = handlers.get(method)
        if handler is None:
            return _error(405, f"{method} not allowed", [("Allow", ", ".join(sorted(handlers)))])
        return handler(environ)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        return text

    # --- health ---------------------------------------------------------------------------

    def healthz(self, environ: Environ) -> Response:
        fault = self.config.fault
        if fault and fault.kind == "healthz-fail-after":
            if self.fault_since is None and environ.get("HTTP_X_STAGEFLOW_PROBE") != "smoke":
                self.fault_since = time.monotonic()
            if self.fault_since is not None and time.monotonic() - self.fault_since >= fault.value:
                return json_response(
                    500, {"status": "failing", "reason": "injected fault: healthz-fail-after"}
                )
        return json_response(200, {"status": "ok"})

    def _applied_versions(self) -> set[int] | None:
        """Versions the ledger marks applied; None when there is no ledger table yet."""

        def query(conn: psycopg.Connection) -> set[int] | None:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (LEDGER_TABLE,)).fetchone()
            if not row or not row[0]:
                return None
            rows = conn.execute(
                f"SELECT version FROM {LEDGER_TABLE} WHERE state = 'applied'"
            ).fetchall()
            return {int(r[0]) for r in rows}

        return self.db.run(query)

    def readyz(self, environ: Environ) -> Response:
        checks: dict[str, str] = {}
        reasons: list[str] = []
        expected = self.config.schema_versions
        applied: set[int] | None = set()
        try:
            applied = self._applied_versions()
            checks["postgres"] = "ok"
        except psycopg.Error as exc:
            applied = None
            checks["postgres"] = "down"
            reasons.append(f"postgres: {self._scrub(_first_line(exc))}")
        try:
            self.redis.ping()
            checks["redis"] = "ok"
        except (redis.RedisError, OSError) as exc:
            checks["redis"] = "down"
            reasons.append(f"redis: {self._scrub(_first_line(exc))}")

        applied_max = max(applied) if applied else 0
        if checks["postgres"] != "ok":
            checks["schema"] = "unknown"
        elif applied is None and expected:
            checks["schema"] = "missing"
            reasons.append(f"schema: no {LEDGER_TABLE} table; run the migrations")
        else:
            missing = [v for v in expected if v not in (applied or set())]
            if missing:
                checks["schema"] = "behind"
                reasons.append(
                    f"schema: this release expects version {self.config.schema_expected}, "
                    f"missing {', '.join(str(v) for v in missing)}"
                )
            else:
                checks["schema"] = "ok"
        payload: dict[str, object] = {
            "checks": checks,
            "schema_expected": self.config.schema_expected,
            "schema_applied": applied_max,
        }
        if reasons:
            return json_response(
                503, {"status": "unavailable", "reason": "; ".join(reasons), **payload}
            )
        return json_response(200, {"status": "ready", **payload})

    def version(self, environ: Environ) -> Response:
        c = self.config
        return json_response(
            200,
            {
                "release": c.release,
                "commit": c.commit,
                "environment": c.environment,
                "database": c.database_name,
                "features": list(c.features),
                "known_features": list(KNOWN_FEATURES),
                "schema_expected": c.schema_expected,
            },
        )

    def metrics_text(self, environ: Environ) -> Response:
        body = self.metrics.render().encode()
        return Response(200, body, content_type="text/plain; version=0.0.4; charset=utf-8")

    # --- notes ----------------------------------------------------------------------------

    def _notes_gate(self, environ: Environ) -> Response | None:
        """The refusal for a /notes request (feature off, fault, key, rate), or None to serve it."""
        if "notes" not in self.config.features:
            return _error(404, "the notes feature is not enabled in FEATURES")
        fault = self.config.fault
        if fault and fault.kind == "error-rate" and self._fault_fires(fault.value):
            return _error(500, "injected fault: error-rate")
        supplied = str(environ.get("HTTP_X_API_KEY", ""))
        if self.config.require_api_key:
            given = supplied.encode()
            # Compare against every key so the time taken does not say which one nearly matched.
            matches = [hmac.compare_digest(given, key) for key in self._api_keys]
            if not supplied or not any(matches):
                return _error(401, "missing or invalid X-API-Key header")
            # The limiter's key names a hash, never the API key itself.
            subject = "key:" + hashlib.sha256(given).hexdigest()[:16]
        else:
            subject = "addr:" + str(environ.get("REMOTE_ADDR", "-"))
        return self._rate_limited(subject)

    def _fault_fires(self, percent: float) -> bool:
        # Evenly spaced rather than random: exactly percent% of each worker's requests fail.
        with self._fault_lock:
            self._fault_requests += 1
            n = self._fault_requests
        return math.floor(n * percent / 100) > math.floor((n - 1) * percent / 100)

    def _rate_limited(self, subject: str) -> Response | None:
        limit = self.config.rate_limit_per_minute
        if limit <= 0:
            return None
        now = time.time()
        key = f"{RATE_KEY_PREFIX}{subject}:{int(now // 60)}"
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, 120)
            count = int(pipe.execute()[0])
        except (redis.RedisError, OSError):
            # Fail closed: an unenforceable limit is no limit.
            return _error(503, "rate limiter unavailable (redis down)")
        if count > limit:
            retry_after = str(60 - int(now) % 60)
            return _error(
                429, f"rate limit of {limit} per minute exceeded", [("Retry-After", retry_after)]
            )
        return None

    @property
    def _with_author(self) -> bool:
        return self.config.schema_expected >= AUTHOR_SCHEMA_VERSION

    def _row(self, row: tuple[Any, ...]) -> dict[str, object]:
        note: dict[str, object] = {"id": row[0], "body": row[1]}
        if self._with_author:
            note["author"] = row[3]
        created: datetime = row[2]
        note["created_at"] = created.isoformat()
        return note

    def list_notes(self, environ: Environ) -> Response:
        refused = self._notes_gate(environ)
        if refused:
            return refused
        # Releases with different schemas may share this Redis during a switch: one field each.
        cache_field = f"v{self.config.schema_expected}"
        generation: int | None = None
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.get(NOTES_GENERATION_KEY)
            pipe.hget(NOTES_CACHE_KEY, cache_field)
            raw_generation, cached = pipe.execute()
            generation = int(raw_generation or 0)
            if cached:
                entry = json.loads(str(cached))
                fresh = time.time() - float(entry["at"]) < NOTES_CACHE_TTL_S
                if fresh and entry.get("generation") == generation:
                    return json_response(200, {"notes": entry["notes"], "cached": True})
        except (redis.RedisError, OSError, ValueError, KeyError, TypeError):
            self.log.debug("notes cache unreadable; reading the database")
        columns = "id, body, created_at" + (", author" if self._with_author else "")
        sql = f"SELECT {columns} FROM notes ORDER BY created_at DESC, id DESC LIMIT {NOTES_LIMIT}"
        try:
            rows = self.db.run(lambda conn: conn.execute(sql).fetchall())
        except psycopg.Error as exc:
            return self._database_error(exc)
        notes = [self._row(r) for r in rows]
        if generation is None:  # redis did not answer: nothing to cache against
            return json_response(200, {"notes": notes, "cached": False})
        try:
            entry = {"at": time.time(), "generation": generation, "notes": notes}
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(NOTES_CACHE_KEY, cache_field, json.dumps(entry))
            pipe.expire(NOTES_CACHE_KEY, math.ceil(NOTES_CACHE_TTL_S) * 2)
            pipe.execute()
        except (redis.RedisError, OSError):
            self.log.debug("notes cache not written: redis unavailable")
        return json_response(200, {"notes": notes, "cached": False})

    def _database_error(self, exc: psycopg.Error) -> Response:
        """503 for a database that is down or behind this release's schema; anything else is a bug."""
        if isinstance(exc, psycopg.OperationalError):
            self.log.warning("notes: database unavailable: %s", self._scrub(_first_line(exc)))
            return _error(503, "database unavailable")
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
            self.log.warning("notes: schema behind this release: %s", _first_line(exc))
            return _error(503, "database schema is behind this release; run the migrations")
        raise exc

    def _read_json(self, environ: Environ) -> dict[str, Any] | Response:
        try:
            length = int(environ.get("CONTENT_LENGTH") or "-1")
        except ValueError:
            length = -1
        if length < 0:
            return _error(411, "send a Content-Length header")
        if length > MAX_BODY_BYTES:
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            payload = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        if not isinstance(payload, dict):
            return _error(400, 'send a JSON object such as {"body": "..."}')
        return payload

    def create_note(self, environ: Environ) -> Response:
        refused = self._notes_gate(environ)
        if refused:
            return refused
        payload = self._read_json(environ)
        if isinstance(payload, Response):
            return payload
        body, author = payload.get("body"), payload.get("author")
        if not isinstance(body, str) or not body.strip():
            return _error(400, '"body" must be a non-empty string')
        if len(body) > MAX_NOTE_CHARS:
            return _error(400, f'"body" is over {MAX_NOTE_CHARS} characters')
        if author is not None and (not isinstance(author, str) or len(author) > MAX_AUTHOR_CHARS):
            return _error(
                400, f'"author" must be a string of at most {MAX_AUTHOR_CHARS} characters'
            )

        if self._with_author:
            sql = (
                "INSERT INTO notes (body, author) VALUES (%s, %s)"
                " RETURNING id, body, created_at, author"
            )
            params: tuple[object, ...] = (body, author)
        else:
            sql = "INSERT INTO notes (body) VALUES (%s) RETURNING id, body, created_at"
            params = (body,)
        committing = False

        def insert(conn: psycopg.Connection) -> tuple[Any, ...] | None:
            nonlocal committing
            committing = False
            with conn.transaction():
                row = conn.execute(sql, params).fetchone()
                committing = True  # leaving this block sends COMMIT
            return row

        try:
            row = self.db.run(insert, retry=lambda: not committing)
        except psycopg.Error as exc:
            return self._database_error(exc)
        if row is None:
            return _error(500, "insert returned no row")
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.incr(NOTES_GENERATION_KEY)
            pipe.delete(NOTES_CACHE_KEY)
            pipe.execute()
        except (redis.RedisError, OSError):
            self.log.warning(
                "notes cache not invalidated: redis unavailable (stale up to %ss)",
                NOTES_CACHE_TTL_S,
            )
        return json_response(201, self._row(row))


def create_app(config: AppConfig | None = None) -> Service:
    """Build the service from config (default: the environment, see app.config.load_config)."""
    return Service(config if config is not None else load_config())


def _boot() -> Service:
    try:
        return create_app()
    except ConfigInvalid as exc:
        try:
            from gunicorn.errors import AppImportError
        except ImportError:  # another WSGI server: let it report the error its own way
            raise exc from None
        # gunicorn prints this one line and stops the master rather than respawning workers.
        raise AppImportError(f"stageflow app: {exc}") from None


def __getattr__(name: str) -> Service:
    # Built on first access, so importing this module has no side effects; gunicorn's worker
    # reads the attribute at boot, so a bad setting stops the server before it takes traffic.
    if name == "application":
        service = _boot()
        globals()["application"] = service
        return service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
