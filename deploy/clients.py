"""Clients of an environment's own servers, built from its config in one place."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploy.config import EnvConfig
from deploy.errors import ServiceError
from deploy.secrets import scrub

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


def redis_set_get(env: EnvConfig, key: str, *, timeout_s: float = 2.0) -> bool:
    """SET key (30 s), GET it back and DEL it on the env's Redis, AUTH and SELECT as redis_client
    does, in one round trip of the Redis protocol: the smoke probe's write and read. Every deploy
    and rollback runs it, and importing redis-py alone costs more than the probe (0.1 s).
    True when the value came back; a refused command is a ServiceError with Redis's own words."""
    password = env.secret("REDIS_PASSWORD")
    commands: list[Sequence[str]] = []
    if password:
        commands.append(("AUTH", password.reveal()))
    if env.redis.db:
        commands.append(("SELECT", str(env.redis.db)))
    commands += [("SET", key, "1", "EX", "30"), ("GET", key), ("DEL", key)]
    answers = _exchange(env, commands, timeout_s)
    refused = next((a for a in answers if isinstance(a, _RespError)), None)
    if refused is not None and _NO_PASSWORD in refused.text:
        raise ServiceError(
            f"{env.name}'s redis has no password and its secrets give one (generated after it "
            f"started?): `inv {env.name}.up` sets it"
        )
    if refused is not None:
        text = scrub(refused.text, env.secret_values())  # Redis's words; scrubbed all the same
        raise ServiceError(f"redis refused a command: {text[:120]}")
    return answers[-2] == b"1"


def redis_password_matches(env: EnvConfig, *, timeout_s: float = 2.0) -> str:
    """Whether the env's running Redis takes the password its secrets give: "ok", "unset" (the
    secrets give one, the server has none: `up` may set it live) or "other" (the server wants
    another, or one where the secrets give none)."""
    password = env.secret("REDIS_PASSWORD")
    commands: list[Sequence[str]] = [("AUTH", password.reveal())] if password else []
    commands.append(("PING",))
    refused = [a.text for a in _exchange(env, commands, timeout_s) if isinstance(a, _RespError)]
    if not refused:
        return "ok"
    if password and _NO_PASSWORD in refused[0]:
        return "unset"
    return "other"


def redis_set_password(env: EnvConfig, *, timeout_s: float = 2.0) -> None:
    """Give the env's running Redis, which has no password, the one its secrets hold (over the
    socket: never on a command line)."""
    password = env.secret("REDIS_PASSWORD")
    if not password:
        return
    (answer,) = _exchange(env, [("CONFIG", "SET", "requirepass", password.reveal())], timeout_s)
    if isinstance(answer, _RespError):
        text = scrub(answer.text, env.secret_values())
        raise ServiceError(f"redis refused its new password: {text[:120]}")


# what Redis answers AUTH with when it has no password at all
_NO_PASSWORD = "without any password configured"


def _exchange(
    env: EnvConfig, commands: Sequence[Sequence[str]], timeout_s: float
) -> list[bytes | int | None | _RespError]:
    """commands sent to env's Redis in one round trip; their replies, in order."""
    with socket.create_connection((env.redis.host, env.redis.port), timeout=timeout_s) as sock:
        sock.sendall(b"".join(_resp_command(c) for c in commands))
        with sock.makefile("rb") as replies:
            return [_resp_reply(replies) for _ in commands]


@dataclass(frozen=True)
class _RespError:
    """An error reply ("-ERR ..."): Redis's words, which never repeat a command's arguments."""

    text: str


def _resp_command(argv: Sequence[str]) -> bytes:
    parts = [f"*{len(argv)}\r\n".encode()]
    for arg in argv:
        raw = arg.encode()
        parts += [f"${len(raw)}\r\n".encode(), raw, b"\r\n"]
    return b"".join(parts)


def _resp_reply(replies: io.BufferedReader) -> bytes | int | None | _RespError:
    """One reply: a status or bulk string as bytes, an integer, None for a missing value."""
    line = replies.readline()
    if not line.endswith(b"\r\n"):
        raise ServiceError("redis closed the connection mid-reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body
    if kind == b"-":
        return _RespError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        return replies.read(size + 2)[:size]
    raise ServiceError(f"redis sent a reply this probe does not read ({kind!r})")
