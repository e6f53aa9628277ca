"""Connections to PostgreSQL and Redis: one reused per worker process, short timeouts, one retry."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.config import AppConfig

CONNECT_TIMEOUT_S = 2
STATEMENT_TIMEOUT_MS = 5000
T = TypeVar("T")


class Database:
    """One PostgreSQL connection per process, reopened once when a query finds it broken."""

    def __init__(self, config: AppConfig) -> None:
        self._conninfo = config.database_url
        self._kwargs: dict[str, object] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "autocommit": True,
            # no application_name here: libpq takes the deployer's PGAPPNAME, the name the
            # database side checks this release's sessions by
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        }
        if config.postgres_password:
            self._kwargs["password"] = config.postgres_password.reveal()
        self._conn: psycopg.Connection | None = None
        self._pid = 0
        # gthread workers share the process's one connection: a lock keeps its protocol in order.
        self._lock = threading.Lock()

    def _stale(self) -> bool:
        conn = self._conn
        # After a fork the inherited socket belongs to the parent: never reuse it.
        return conn is None or conn.closed or conn.broken or self._pid != os.getpid()

    def _connection(self) -> psycopg.Connection:
        if self._stale():
            self._conn = None
            self._conn = psycopg.connect(self._conninfo, **self._kwargs)  # type: ignore[arg-type]
            self._pid = os.getpid()
        assert self._conn is not None
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def run(
        self, work: Callable[[psycopg.Connection], T], *, retry: Callable[[], bool] | None = None
    ) -> T:
        """Run work on the process's connection; on a broken connection reconnect and run it once more.

        retry, when given, is asked before the second attempt: a write says no once its COMMIT
        may have reached the server, since running it again could apply it twice.
        """
        with self._lock:
            fresh = self._stale()
            conn = self._connection()
            try:
                return work(conn)
            except psycopg.OperationalError:
                self._discard()
                # A connection opened just now failed on its own: the server is the problem.
                if fresh or (retry is not None and not retry()):
                    raise
            return work(self._connection())

    def close(self) -> None:
        with self._lock:
            self._discard()


def redis_client(config: AppConfig) -> redis.Redis:
    """A Redis client that fails fast: 2 s timeouts and no hidden retries (callers decide)."""
    password = config.redis_password.reveal() if config.redis_password else None
    return redis.Redis.from_url(
        config.redis_url,
        password=password,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
