"""Smoke checks against a running service: health, readiness, identity, and real write/read probes."""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploy.clients import redis_client
from deploy.config import EnvConfig


@dataclass(frozen=True)
class Probe:
    name: str
    ok: bool
    detail: str
    ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "ms": round(self.ms, 1)}


def http(
    method: str,
    url: str,
    *,
    body: dict | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 3.0,
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw or b"null")
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def _timed(name: str, fn: Callable[[], tuple[bool, str]]) -> Probe:
    start = time.perf_counter()
    try:
        ok, detail = fn()
    except Exception as exc:  # noqa: BLE001 - a probe that cannot run has failed
        ok, detail = False, f"{exc.__class__.__name__}: {str(exc)[:120]}"
    return Probe(name, ok, detail, (time.perf_counter() - start) * 1000)


def _settle(base: str, release: str, *, answers: int = 3, timeout_s: float = 5.0) -> None:
    """Wait until `answers` requests in a row come from release. Just after a switch, a worker
    of the master being drained may still take a request off the shared socket (a good answer
    for a client, a wrong one for a probe of the new release). Gives up silently after
    timeout_s: the version probe then says what answers."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    while streak < answers and time.monotonic() < deadline:
        try:
            _, body = http("GET", f"{base}/version", timeout=2.0)
        except OSError:
            body = None
        streak = streak + 1 if isinstance(body, dict) and body.get("release") == release else 0
        if streak < answers and not streak:
            time.sleep(0.05)


@dataclass(frozen=True)
class _Service:
    """The running service a smoke probe speaks to, and what it should answer."""

    base: str  # http://host:port
    env: EnvConfig
    expect_release: str | None
    # the API key the service asks for, when it has one; kept out of any repr
    headers: dict[str, str] = field(repr=False)


def _health(svc: _Service) -> tuple[bool, str]:
    status, body = http("GET", f"{svc.base}/healthz")
    return status == 200, f"HTTP {status}"


def _ready(svc: _Service) -> tuple[bool, str]:
    status, body = http("GET", f"{svc.base}/readyz")
    return status == 200, f"HTTP {status}" + ("" if status == 200 else f": {str(body)[:120]}")


def _version(svc: _Service) -> tuple[bool, str]:
    status, body = http("GET", f"{svc.base}/version")
    if status != 200 or not isinstance(body, dict):
        return False, f"HTTP {status}"
    if svc.expect_release and body.get("release") != svc.expect_release:
        return False, f"serving {body.get('release')}, expected {svc.expect_release}"
    return True, f"release {body.get('release')}"


def _identity(svc: _Service) -> tuple[bool, str]:
    # a staging service wired to prod's database fails here
    env = svc.env
    _, body = http("GET", f"{svc.base}/version")
    if not isinstance(body, dict):
        return False, "no /version"
    problems = []
    if body.get("environment") != env.environment:
        problems.append(f"environment {body.get('environment')} != {env.environment}")
    if body.get("database") != env.database.name:
        problems.append(f"database {body.get('database')} != {env.database.name}")
    return not problems, "; ".join(problems) or f"{env.environment} on {env.database.name}"


def _postgres_write_read(svc: _Service) -> tuple[bool, str]:
    token = f"smoke-{uuid.uuid4().hex[:10]}"
    status, _ = http("POST", f"{svc.base}/notes", body={"body": token}, headers=svc.headers)
    if status != 201:
        return False, f"write: HTTP {status}"
    status, listed = http("GET", f"{svc.base}/notes", headers=svc.headers)
    found = isinstance(listed, list | dict) and token in json.dumps(listed)
    return (
        status == 200 and found,
        "note written and read back" if found else "note not read back",
    )


def _redis_write_read(svc: _Service) -> tuple[bool, str]:
    with redis_client(svc.env) as client:
        key = f"stageflow:smoke:{uuid.uuid4().hex[:8]}"
        client.set(key, "1", ex=30)
        ok = client.get(key) == b"1"
        client.delete(key)
    return ok, "set+get" if ok else "value not read back"


# The probes in the order they run and are reported.
_PROBES: tuple[tuple[str, Callable[[_Service], tuple[bool, str]]], ...] = (
    ("health", _health),
    ("ready", _ready),
    ("version", _version),
    ("identity", _identity),
    ("postgres", _postgres_write_read),
    ("redis", _redis_write_read),
)


def run(
    env: EnvConfig, *, expect_release: str | None = None, host: str = "127.0.0.1"
) -> list[Probe]:
    base = f"http://{host}:{env.app_port}"
    if expect_release:
        _settle(base, expect_release)
    api_keys = env.secret("API_KEYS")
    headers = {"X-API-Key": api_keys.reveal().split(",")[0].strip()} if api_keys else {}
    svc = _Service(base, env, expect_release, headers)
    return [_timed(name, functools.partial(probe, svc)) for name, probe in _PROBES]


def failed(probes: list[Probe]) -> list[Probe]:
    return [p for p in probes if not p.ok]


def require_passed(probes: list[Probe]) -> None:
    """Raise RolledBack (its exit code) naming the first failed probe."""
    bad = failed(probes)
    if bad:
        from deploy.errors import RolledBack

        raise RolledBack(f"smoke failed: {bad[0].name}: {bad[0].detail}")
