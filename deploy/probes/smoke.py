"""Smoke checks against a running service, all from its [service] contract: health, readiness, the
release that answers, its identity, the service's own [[service.smoke]] checks, stageflow's Redis,
and (during all of them) which environments' databases hold the release's sessions.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from deploy.clients import redis_set_get
from deploy.config import EnvConfig, Project
from deploy.probes import sessions
from deploy.service import Service, SmokeCheck

# Set on every response by stageflow's own gunicorn hooks: which release answered, whatever the
# service is. A service that does not send it yet is asked its `version` path instead.
RELEASE_HEADER = "X-Stageflow-Release"
TOKEN = "{token}"


@dataclass(frozen=True)
class Probe:
    name: str
    ok: bool
    detail: str
    ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "ms": round(self.ms, 1)}


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # parsed JSON when the body is JSON, else text
    headers: Mapping[str, str]  # names lower-cased

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is the answer being judged: a health path that redirects to a login page must not
    be reported as the login page's 200."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)
# Every probe names itself to the service: "smoke" before the switch, "verify" and "monitor" after
# it, so a service can tell stageflow's traffic from its users' (in its logs and counters).
PROBE_HEADER = "X-Stageflow-Probe"
# What a TLS-terminating proxy in front of the service tells it: the client asked over HTTPS.
# stageflow's probes ask over plain HTTP on loopback, behind no proxy; a service that redirects
# every plain-HTTP request (Django's SECURE_SSL_REDIRECT, Flask-Talisman) is asked once more the
# way its users reach it (gunicorn trusts the header from 127.0.0.1 by default).
FORWARDED_PROTO = "X-Forwarded-Proto"


def https_redirect(url: str, reply: Reply) -> str | None:
    """The Location of a redirect to the same host and path over HTTPS, else None."""
    location = reply.header("location")
    if not 300 <= reply.status < 400 or not location:
        return None
    asked, to = urlsplit(url), urlsplit(location)
    same = to.hostname == asked.hostname and (to.path or "/") == (asked.path or "/")
    return location if to.scheme == "https" and same else None


def request(
    method: str,
    url: str,
    *,
    body: Any = None,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 3.0,
    probe: str = "smoke",
) -> Reply:
    """One HTTP request, redirects not followed; an HTTP error status is a Reply, not an error.
    body is sent as JSON; raw (already encoded) as it is; the probe's name in PROBE_HEADER. A
    redirect of the same URL to HTTPS is asked again as through a TLS proxy (FORWARDED_PROTO)."""
    reply = _request(method, url, body, raw, headers or {}, timeout, probe)
    if https_redirect(url, reply) and FORWARDED_PROTO not in (headers or {}):
        behind_tls = {**(headers or {}), FORWARDED_PROTO: "https"}
        reply = _request(method, url, body, raw, behind_tls, timeout, probe)
    return reply


def _request(
    method: str,
    url: str,
    body: Any,
    raw: bytes | None,
    headers: Mapping[str, str],
    timeout: float,
    probe: str,
) -> Reply:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json"} if data is not None and raw is None else {}
    hdrs[PROBE_HEADER] = probe
    req = urllib.request.Request(url, data=data, method=method, headers={**hdrs, **headers})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            payload, status, got = resp.read(), resp.status, resp.headers
    except urllib.error.HTTPError as exc:
        payload, status, got = exc.read(), exc.code, exc.headers
    names = {k.lower(): v for k, v in (got or {}).items()}
    try:
        parsed: Any = json.loads(payload or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        parsed = payload.decode(errors="replace")
    return Reply(status, parsed, names)


def http(
    method: str,
    url: str,
    *,
    body: dict | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 3.0,
) -> tuple[int, Any]:
    reply = request(method, url, body=body, headers=headers, timeout=timeout)
    return reply.status, reply.body


def auth_headers(env: EnvConfig, service: Service) -> dict[str, str]:
    """The service's API-key header with the first of the environment's API_KEYS, when the
    service names a header and the environment has keys; never printed."""
    keys = env.secret("API_KEYS")
    if not service.api_key_header or not keys:
        return {}
    first = keys.reveal().split(",")[0].strip()
    return {service.api_key_header: first} if first else {}


def healthy(status: int) -> bool:
    """A health path answers 2xx or 3xx (a redirect is an answer, not followed)."""
    return 200 <= status < 400


def _timed(name: str, fn: Callable[[], tuple[bool, str]]) -> Probe:
    start = time.perf_counter()
    try:
        ok, detail = fn()
    except Exception as exc:  # noqa: BLE001 - a probe that cannot run has failed
        ok, detail = False, f"{exc.__class__.__name__}: {str(exc)[:120]}"
    return Probe(name, ok, detail, (time.perf_counter() - start) * 1000)


def serving_release(base: str, service: Service, *, timeout: float = 2.0) -> str | None:
    """The release that answers at base: the release header of its ready path, else the
    `release` of its version path; None when neither says."""
    reply = request("GET", base + service.ready_path, timeout=timeout)
    named = reply.header(RELEASE_HEADER)
    if named or not service.version:
        return named or None
    if service.version != service.ready_path:
        reply = request("GET", base + service.version, timeout=timeout)
    body = reply.body
    return (
        body["release"] if isinstance(body, dict) and isinstance(body.get("release"), str) else None
    )


def _settle(
    base: str,
    release: str,
    *,
    service: Service | None = None,
    answers: int = 3,
    timeout_s: float = 5.0,
) -> None:
    """Wait until `answers` requests in a row come from release. Just after a switch, a worker
    of the master being drained may still take a request off the shared socket (a good answer
    for a client, a wrong one for a probe of the new release). Gives up silently after
    timeout_s: the release probe then says what answers."""
    svc = service or Service(name="probe", wsgi="probe", health="/version", version="/version")
    deadline = time.monotonic() + timeout_s
    streak = 0
    while streak < answers and time.monotonic() < deadline:
        try:
            seen = serving_release(base, svc)
        except OSError:
            seen = None
        streak = streak + 1 if seen == release else 0
        if streak < answers and not streak:
            time.sleep(0.05)


@dataclass(frozen=True)
class _Target:
    """The running service a smoke run speaks to, and what it should answer."""

    base: str  # http://host:port
    env: EnvConfig
    service: Service
    expect_release: str | None
    token: str  # one random word per smoke run: what a check writes, a later one reads back
    headers: dict[str, str] = field(repr=False)  # the API key, when there is one


def _health(t: _Target) -> tuple[bool, str]:
    url = t.base + t.service.health
    reply = request("GET", url)
    location = https_redirect(url, reply)
    if location:
        return False, (
            f"{t.service.health}: HTTP {reply.status} to {location} even with {FORWARDED_PROTO}: "
            "https from 127.0.0.1: the service answers nothing but a redirect to HTTPS; let it "
            f"trust the proxy's header (Django: SECURE_PROXY_SSL_HEADER = "
            "('HTTP_X_FORWARDED_PROTO', 'https')) or turn the redirect off"
        )
    return healthy(reply.status), f"{t.service.health}: HTTP {reply.status}"


def _ready(t: _Target) -> tuple[bool, str]:
    reply = request("GET", t.base + t.service.ready_path)
    ok = t.service.is_ready(reply.status)
    why = "" if ok else f": {str(reply.body)[:120]}"
    return ok, f"{t.service.ready_path}: HTTP {reply.status}{why}"


def _release(t: _Target) -> tuple[bool, str]:
    reply = request("GET", t.base + t.service.ready_path)
    named = reply.header(RELEASE_HEADER)
    if named:
        if t.expect_release and named != t.expect_release:
            return False, f"serving {named}, expected {t.expect_release}"
        return True, f"release {named} ({RELEASE_HEADER})"
    if t.service.version:
        return _version_release(t)
    if not t.expect_release:
        return True, f"no {RELEASE_HEADER} header and no version path: release not known"
    return False, (
        f"no {RELEASE_HEADER} header and no [service] version path: which release answers "
        "cannot be told"
    )


def _version_release(t: _Target) -> tuple[bool, str]:
    reply = request("GET", t.base + t.service.version)
    if reply.status != 200 or not isinstance(reply.body, dict):
        return False, f"{t.service.version}: HTTP {reply.status}, not a JSON object"
    seen = reply.body.get("release")
    if t.expect_release and seen != t.expect_release:
        return False, f"serving {seen}, expected {t.expect_release}"
    return True, f"release {seen} ({t.service.version})"


def _identity(t: _Target) -> tuple[bool, str]:
    # a staging service wired to prod's database fails here, when its version JSON says so
    reply = request("GET", t.base + t.service.version)
    if not isinstance(reply.body, dict):
        return False, f"{t.service.version}: HTTP {reply.status}, not a JSON object"
    env, body = t.env, reply.body
    problems = []
    if "environment" in body and body["environment"] != env.environment:
        problems.append(f"environment {body['environment']} != {env.environment}")
    if "database" in body and body["database"] != env.database.name:
        problems.append(f"database {body['database']} != {env.database.name}")
    if not problems and not {"environment", "database"} & set(body):
        return True, f"{t.service.version} names no environment or database: not checked"
    return not problems, "; ".join(problems) or f"{env.environment} on {env.database.name}"


def check_name(check: SmokeCheck) -> str:
    return f"{check.method} {check.path}"


def _encoded(body: str) -> tuple[Any, bytes | None]:
    """(JSON value, None) when body parses as JSON, else (None, its bytes as text)."""
    try:
        return json.loads(body), None
    except json.JSONDecodeError:
        return None, body.encode()


def _check(check: SmokeCheck, t: _Target) -> tuple[bool, str]:
    headers = dict(t.headers)
    value: Any = None
    raw: bytes | None = None
    if check.body is not None:
        value, raw = _encoded(check.body.replace(TOKEN, t.token))
        if raw is not None:
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    reply = request(check.method, t.base + check.path, body=value, raw=raw, headers=headers)
    if reply.status != check.expect:
        return False, f"HTTP {reply.status}, expected {check.expect}"
    if check.contains:
        wanted = check.contains.replace(TOKEN, t.token)
        text = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        if wanted not in text:
            # the token is this run's random word: naming it says nothing and is not a secret
            return False, f"HTTP {reply.status} but the body lacks {wanted!r}"
        return True, f"HTTP {reply.status}, body holds {wanted!r}"
    return True, f"HTTP {reply.status}"


def _redis_write_read(t: _Target) -> tuple[bool, str]:
    ok = redis_set_get(t.env, f"stageflow:smoke:{uuid.uuid4().hex[:8]}")
    return ok, "set+get" if ok else "value not read back"


def plan(service: Service) -> list[tuple[str, Callable[[_Target], tuple[bool, str]]]]:
    """The probes in the order they run and are reported, for this service."""
    probes: list[tuple[str, Callable[[_Target], tuple[bool, str]]]] = [
        ("health", _health),
        ("ready", _ready),
        ("release", _release),
    ]
    if service.version:
        probes += [("version", _version_release), ("identity", _identity)]
    probes += [(check_name(c), functools.partial(_check, c)) for c in service.smoke]
    probes.append(("redis", _redis_write_read))
    return probes


def run(
    env: EnvConfig,
    service: Service,
    *,
    expect_release: str | None = None,
    host: str = "127.0.0.1",
    project: Project | None = None,
) -> list[Probe]:
    """The probes of plan(service); with project and expect_release, a last `sessions` probe
    says where the release's database sessions were while the others ran (probes/sessions)."""
    base = f"http://{host}:{env.app_port}"
    if expect_release:
        _settle(base, expect_release, service=service)
    token = f"smoke{secrets.token_hex(5)}"
    target = _Target(base, env, service, expect_release, token, auth_headers(env, service))
    if project is None or not expect_release:
        return [_timed(name, functools.partial(probe, target)) for name, probe in plan(service)]
    watch = sessions.watch(
        env,
        expect_release,
        sessions.neighbours(project, env.name),
        settings=sessions.settings_at(project, env.name),
    )
    try:
        probes = [_timed(name, functools.partial(probe, target)) for name, probe in plan(service)]
    finally:
        verdict = _timed("sessions", watch.stop)
    # the connections' opening is this probe's cost too
    return [*probes, replace(verdict, ms=verdict.ms + watch.opened_ms)]


def failed(probes: list[Probe]) -> list[Probe]:
    return [p for p in probes if not p.ok]


# a 400 to a plain GET is the service refusing the request as a whole (Django's DisallowedHost)
_REFUSED = re.compile(r"\bHTTP 400\b")


def failure_hint(probe: Probe) -> str | None:
    """What to check for a failed probe whose answer says more than its status: a 400 is most
    often an allowed-hosts setting without the names the probes ask as."""
    if not _REFUSED.search(probe.detail):
        return None
    return (
        "the service refused the request as a whole, often for its Host header: the probes ask "
        "as localhost and 127.0.0.1, which an allowed-hosts setting (Django's ALLOWED_HOSTS) "
        "must include; its log (inv <env>.logs) names the refusal"
    )


def require_passed(probes: list[Probe]) -> None:
    """Raise RolledBack (its exit code) naming the first failed probe."""
    bad = failed(probes)
    if bad:
        from deploy.errors import RolledBack

        raise RolledBack(f"smoke failed: {bad[0].name}: {bad[0].detail}", hint=failure_hint(bad[0]))
