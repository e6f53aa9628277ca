"""Clients of an environment's own servers, built from its config in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from deploy.config import EnvConfig

if TYPE_CHECKING:
    import redis


@contextmanager
def redis_client(env: EnvConfig, *, timeout_s: float = 2.0) -> Iterator[redis.Redis]:
    """The env's Redis (REDIS_URL plus REDIS_PASSWORD), closed on exit."""
    import redis

    password = env.secret("REDIS_PASSWORD")
    client = redis.Redis(
        host=env.redis.host,
        port=env.redis.port,
        db=env.redis.db,
        password=password.reveal() if password else None,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
    try:
        yield client
    finally:
        client.close()
