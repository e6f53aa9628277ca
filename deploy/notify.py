"""Webhook notifications: one JSON event per deploy, rollback, approval, break-glass and freeze.

Configuration (stageflow.toml)::

    [notify]
    urls = ["https://chat.example/hooks/deploys"]      # every environment
    [notify.prod]
    urls = ["https://pager.example/hooks/prod"]         # replaces [notify] urls for prod

Each event is POSTed as one JSON object (Content-Type: application/json) to every URL of its
environment. Schema, version 1 (fields are only ever added; a removal or a change of meaning
raises schema_version)::

    schema_version  1
    id              unique per event (hex); a receiver may see one event twice after a retry
    event           deploy | rollback | auto-rollback | approval | break-glass | freeze | unfreeze
    env             dev | staging | prod
    environment     development | staging | production
    time            UTC, 2026-11-22T04:07:23Z
    actor           who acted: a name, "(agent)" or "(ci)" appended for automation
    release         the release id the event is about ("" when none)
    commit          the full commit sha ("" when none)
    ref             the ref as the operator gave it ("" when none)
    status          success | failed | rolled-back | approved | frozen | ... ("" when none)
    details         an object: event-specific extras (level, reason, previous, history_id, ...)

No secret value is ever sent: every string in an event is scrubbed against the environment's
secrets first. Delivery runs on background threads: send() returns at once, each URL gets up to
ATTEMPTS tries with TIMEOUT_S each and BACKOFF_S between them, and a delivery that still fails
is written to the environment's audit log (action "notify-failed") with the URL cut down to
scheme, host and path. Nothing here raises into the operation that sent the event; flush() lets
the task edge wait a bounded time for deliveries before the process exits.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from deploy.config import NAMESPACES, Project
from deploy.errors import ConfigError
from deploy.hosts import Host
from deploy.secrets import Secret, scrub
from deploy.state import Layout, audit, utc_now

SCHEMA_VERSION = 1
EVENTS = ("deploy", "rollback", "auto-rollback", "approval", "break-glass", "freeze", "unfreeze")
FIELDS = ("actor", "release", "commit", "ref", "status", "details")
TIMEOUT_S = 2.0
ATTEMPTS = 3
BACKOFF_S = (0.5, 1.0)  # waits before the 2nd and 3rd attempt
_TOKENISH = 16  # a path segment this long is taken for a token (chat webhooks carry one there)


def urls(proj: Project, env: str) -> list[str]:
    """The webhook URLs of env: [notify.<env>] urls when set, else [notify] urls."""
    table = proj.policy.get("notify", {})
    where = "stageflow.toml [notify]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    for key in table:
        if key != "urls" and key not in NAMESPACES:
            raise ConfigError(
                f"{where}: unknown key {key!r}", hint="use urls = [...] and [notify.<env>] urls"
            )
    own = table.get(env, {})
    if not isinstance(own, dict) or any(k != "urls" for k in own):
        raise ConfigError(f"{where}.{env} takes only urls = [...]")
    found = own.get("urls", table.get("urls", []))
    if not isinstance(found, list) or not all(isinstance(u, str) for u in found):
        raise ConfigError(f"{where}: urls must be a list of strings")
    for url in found:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{where}: {safe_url(url)!r} is not an http(s) URL",
                hint='write urls = ["https://host/path"]',
            )
    return list(found)


def safe_url(url: str) -> str:
    """scheme://host:port/path without credentials, query, fragment or token-like segments."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable url)"
    segments = [s if len(s) < _TOKENISH else "***" for s in parts.path.split("/")]
    return f"{parts.scheme}://{host}{port}{'/'.join(segments)}"


def _scrubbed(value: Any, secrets: tuple[Secret, ...]) -> Any:
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, Mapping):
        return {str(k): _scrubbed(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrubbed(v, secrets) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(str(value), secrets)  # Actor, Path, ...: their printed form


def event(proj: Project, env: str, name: str, **fields: Any) -> dict[str, Any]:
    """Build one event as the schema says, scrubbed; a wrong name or field is the caller's bug."""
    if name not in EVENTS:
        raise ValueError(f"unknown event {name!r}; known: {EVENTS}")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown event fields {unknown}; known: {FIELDS}")
    cfg = proj.env(env)
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": uuid.uuid4().hex,
        "event": name,
        "env": env,
        "environment": cfg.environment,
        "time": utc_now(),
        **{k: "" if fields.get(k) is None else fields[k] for k in FIELDS if k != "details"},
        "details": dict(fields.get("details") or {}),
    }
    return _scrubbed(body, cfg.secret_values())


class Notifier:
    """Background delivery with bounded retries; one thread per (event, URL)."""

    def __init__(
        self,
        *,
        timeout_s: float = TIMEOUT_S,
        attempts: int = ATTEMPTS,
        backoff_s: tuple[float, ...] = BACKOFF_S,
    ) -> None:
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._pending: set[threading.Thread] = set()
        self._guard = threading.Lock()

    def send(self, proj: Project, env: str, name: str, **fields: Any) -> int:
        """Queue the event for env's URLs and return at once; how many deliveries were queued."""
        body = event(proj, env, name, **fields)

        def where() -> tuple[Host, Layout]:
            # the environment's audit is on its primary host; reached only when a delivery fails
            from deploy.engine import group

            return group.primary(proj, env)

        try:
            targets = urls(proj, env)
        except ConfigError as err:  # a notification never stops an operation; the audit says why
            self._failed(where, body, url="(config)", error=err.line(), attempts=0)
            return 0
        payload = json.dumps(body, sort_keys=True).encode()
        for url in targets:
            thread = threading.Thread(
                target=self._deliver,
                args=(url, payload, body, where),
                name=f"stageflow-notify-{name}",
                daemon=True,  # an undelivered event must not keep the operator's shell waiting
            )
            with self._guard:
                self._pending.add(thread)
            thread.start()
        return len(targets)

    def flush(self, timeout_s: float) -> bool:
        """Wait at most timeout_s for queued deliveries; True when none is left."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._guard:
                pending = [t for t in self._pending if t.is_alive()]
                self._pending = set(pending)
            if not pending:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pending[0].join(left)

    def _post(self, url: str, payload: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "stageflow-notify/1"}
        parts = urlsplit(url)
        if parts.username is not None:
            # urllib does not take user:password@ from a URL; send it as Basic auth instead
            user, password = unquote(parts.username), unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
            netloc = parts.netloc.rsplit("@", 1)[1]
            url = urlunsplit(parts._replace(netloc=netloc))
        req = urllib.request.Request(url, data=payload, method="POST", headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            resp.read(1024)

    def _deliver(
        self,
        url: str,
        payload: bytes,
        body: dict[str, Any],
        where: Callable[[], tuple[Host, Layout]],
    ) -> None:
        error = ""
        tried = 0
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s[min(attempt - 1, len(self.backoff_s) - 1)])
            tried += 1
            try:
                self._post(url, payload)
                return
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break  # the receiver refuses this event; asking again will not change that
            except (OSError, ValueError) as exc:  # refused, timed out, DNS, TLS, bad URL
                reason = getattr(exc, "reason", None) or exc
                error = f"{exc.__class__.__name__}: {reason}"
        shown = safe_url(url)
        self._failed(where, body, url=shown, error=error.replace(url, shown), attempts=tried)

    def _failed(
        self,
        where: Callable[[], tuple[Host, Layout]],
        body: dict[str, Any],
        *,
        url: str,
        error: str,
        attempts: int,
    ) -> None:
        try:
            host, layout = where()
        except Exception:  # an unreadable hosts table must not break the operation either
            return
        try:
            audit(
                host,
                layout,
                actor=str(body.get("actor") or "stageflow"),
                action="notify-failed",
                event=body["event"],
                event_id=body["id"],
                url=url,
                error=scrub(error, host.secrets)[:300],
                attempts=attempts,
            )
        except Exception:  # an unwritable audit log must not break the operation
            pass
        finally:
            host.close()


# The task edge flushes whatever any engine call queued, without a notifier threaded through
# every signature: one process-wide instance, holding only in-flight deliveries.
_default = Notifier()


def send(proj: Project, env: str, name: str, **fields: Any) -> int:
    """Queue one event for env's webhooks; returns at once and never raises for delivery."""
    return _default.send(proj, env, name, **fields)


def flush(timeout_s: float) -> bool:
    """Wait at most timeout_s for queued deliveries (the task edge calls it before exiting)."""
    return _default.flush(timeout_s)
