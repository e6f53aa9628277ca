"""The service contract: what stageflow deploys, read from `[service]` in stageflow.toml.

Every key is described in docs/YOUR-SERVICE.md. Nothing in the engine is special to one service:
the reference service in app/ is described by the same table as any team's Flask or Django app.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from deploy.errors import ConfigError

MIGRATION_KINDS = ("sql", "command", "none")
SMOKE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# Names stageflow feeds a service; [service.env.from] may map the service's own names to them.
FED_NAMES = (
    "DATABASE_URL",
    "REDIS_URL",
    "PGHOST",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "REDIS_PASSWORD",
    "ENVIRONMENT",
    "STAGEFLOW_RELEASE",
)
_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# A setting about a secret rather than a secret: its last word is a duration, a size, a count or
# a choice (ACCESS_TOKEN_EXPIRE_MINUTES, PASSWORD_MIN_LENGTH, SESSION_TOKEN_TTL, JWT_SECRET_ALGORITHM),
# or the word or kind a token goes with (JWT_TOKEN_PREFIX = "Token", AUTH_TOKEN_TYPE = "bearer")
_ABOUT_A_SECRET = re.compile(
    r"_(?:MS|SECONDS?|SECS?|MINUTES?|MINS?|HOURS?|DAYS?|WEEKS?|TTL|TIMEOUT|EXPIRE|EXPIRES|EXPIRY|"
    r"EXPIRATION|LIFETIME|AGE|LENGTH|LEN|SIZE|BYTES|COUNT|LIMIT|ROUNDS|ALGORITHM|ALGORITHMS|"
    r"ENABLED|DISABLED|HEADER|HEADER_NAME|COOKIE_NAME|PARAM|FIELD|PREFIX|SCHEME|TYPE)$"
)


def about_a_secret(name: str) -> bool:
    """A name that speaks of a secret but holds a plain value: a token's lifetime, a password's
    minimum length, the header a token travels in. It is a setting, not a secret."""
    return bool(_ABOUT_A_SECRET.search(name.upper()))


_PROCESS = re.compile(r"^[a-z][a-z0-9_-]*$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")  # a shell's NAME=value before a command
_WSGI = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*(\(.*\))?)?$")
_SERVICE_KEYS = {
    "name",
    "dir",
    "wsgi",
    "requirements",
    "worker_class",
    "health",
    "ready",
    "version",
    "metrics",
    "api_key_header",
    "seed",
    "build",
    "env",
    "migrations",
    "processes",
    "smoke",
}


@dataclass(frozen=True)
class SmokeCheck:
    """One request the smoke step makes after a switch, and the status it expects."""

    method: str
    path: str
    expect: int = 200
    body: str | None = None  # sent as JSON when it parses as JSON, else as text
    contains: str = ""  # a substring the response body must hold


@dataclass(frozen=True)
class Migrations:
    kind: str = "none"  # sql | command | none
    dir: str = "migrations"  # kind = "sql": the NNNN_name.up.sql / .down.sql folder, under dir
    up: tuple[str, ...] = ()
    down: tuple[str, ...] = ()  # may hold "{target}": the revision to go back to
    current: tuple[str, ...] = ()


@dataclass(frozen=True)
class Service:
    """The service one repository deploys. Paths are relative to `dir` (itself relative to the
    repository's root); the service's commands run there."""

    name: str
    wsgi: str
    dir: str = "."
    requirements: str = "requirements.txt"
    worker_class: str = "sync"
    health: str = "/"
    ready: str = ""
    version: str = ""
    metrics: str = ""
    api_key_header: str = ""
    seed: tuple[str, ...] = ()
    # commands run in each new release once its venv exists, before it migrates or serves
    # (Django's collectstatic, compilemessages): each a list of words
    build: tuple[tuple[str, ...], ...] = ()
    env_keys: tuple[str, ...] = ()
    secret_keys: tuple[str, ...] = ()
    env_from: tuple[tuple[str, str], ...] = ()  # (the service's name, the name stageflow feeds)
    migrations: Migrations = field(default_factory=Migrations)
    processes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    smoke: tuple[SmokeCheck, ...] = ()
    # [project] service_user: when stageflow runs as root, every process of the service (its
    # gunicorn master and workers, [service.processes], build, migrate and seed commands) runs as
    # this user; without root, as the invoking user. Never root (config.load_project refuses it).
    user: str = "stageflow"

    @property
    def ready_path(self) -> str:
        return self.ready or self.health

    @property
    def ready_redirects(self) -> bool:
        """No `ready` of its own: the health path stands in for it and answers as health may, a
        redirect (not followed) included. A ready path of its own must answer 2xx."""
        return not self.ready

    def is_ready(self, status: int) -> bool:
        """The ready path's status says a release may take traffic."""
        return 200 <= status < (400 if self.ready_redirects else 300)

    @property
    def is_asgi(self) -> bool:
        """An ASGI worker class (uvicorn's, say): the barrier and the counters speak ASGI."""
        return "uvicorn" in self.worker_class.lower() or "asgi" in self.worker_class.lower()

    def path_in_release(self, release_dir: str, relative: str = "") -> str:
        """A path of the service inside a release directory (`dir` joined, then relative)."""
        base = PurePosixPath(release_dir)
        if self.dir not in ("", "."):
            base = base / self.dir
        return str(base / relative) if relative else str(base)

    def repo_path(self, relative: str) -> str:
        """A path of the service relative to the repository's root (for git)."""
        if self.dir in ("", "."):
            return relative
        return str(PurePosixPath(self.dir) / relative)


def _fail(
    message: str, hint: str = "see docs/YOUR-SERVICE.md for the [service] keys"
) -> ConfigError:
    return ConfigError(f"stageflow.toml [service]: {message}", hint=hint)


def _str(table: dict[str, Any], key: str, default: str, where: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise _fail(f"{where}{key} must be a string, not {type(value).__name__}")
    if any(ord(c) < 32 for c in value):
        raise _fail(f"{where}{key} holds a control character")
    return value


def _argv(value: Any, what: str) -> tuple[str, ...]:
    """A command as a list of strings (never a shell string: it runs without a shell)."""
    if value in (None, [], ""):
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(f'{what} must be a list of non-empty strings, e.g. ["flask", "db", "upgrade"]')
    return tuple(value)


def _commands(value: Any, what: str) -> tuple[tuple[str, ...], ...]:
    """One command (a list of words) or several (a list of such lists), in the order they run."""
    if value in (None, []):
        return ()
    if isinstance(value, list) and all(isinstance(v, list) for v in value):
        out = tuple(_argv(v, f"{what} #{i}") for i, v in enumerate(value, 1))
        if any(not c for c in out):
            raise _fail(f"{what} holds an empty command")
        return out
    one = _argv(value, what)
    return (one,) if one else ()


def _path(value: str, key: str) -> str:
    if not value.startswith("/"):
        raise _fail(f"{key} = {value!r} must be a URL path starting with '/'")
    return value


def _relative(value: str, key: str) -> str:
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts:
        raise _fail(f"{key} = {value!r} must be a path inside the repository")
    return value


def _keys(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(f'{what} must be a list of variable names, e.g. ["SMTP_HOST"]')
    bad = [v for v in value if not _KEY.match(v)]
    if bad:
        raise _fail(f"{what}: {bad[0]!r} is not an environment variable name (A-Z, 0-9, _)")
    return tuple(value)


def _env(table: Any) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]:
    if table is None:
        return (), (), ()
    if not isinstance(table, dict):
        raise _fail("[service.env] must be a table")
    unknown = set(table) - {"keys", "secrets", "from"}
    if unknown:
        raise _fail(f"[service.env] has unknown key {sorted(unknown)[0]!r}")
    keys = _keys(table.get("keys"), "[service.env] keys")
    secrets = _keys(table.get("secrets"), "[service.env] secrets")
    both = set(keys) & set(secrets)
    if both:
        raise _fail(f"{sorted(both)[0]} is in both [service.env] keys and secrets")
    feeds = table.get("from", {})
    if not isinstance(feeds, dict):
        raise _fail('[service.env.from] must be a table of NAME = "FED_NAME"')
    pairs = []
    for name, source in feeds.items():
        if not _KEY.match(name):
            raise _fail(f"[service.env.from] {name!r} is not an environment variable name")
        if source not in FED_NAMES and source not in keys and source not in secrets:
            raise _fail(
                f"[service.env.from] {name} = {source!r}: stageflow feeds no such name",
                hint=f"use one of {', '.join(FED_NAMES)} or a name in [service.env]",
            )
        pairs.append((name, source))
    return keys, secrets, tuple(pairs)


def _migrations(table: Any) -> Migrations:
    if table is None:
        return Migrations()
    if not isinstance(table, dict):
        raise _fail("[service.migrations] must be a table")
    unknown = set(table) - {"kind", "dir", "up", "down", "current"}
    if unknown:
        raise _fail(f"[service.migrations] has unknown key {sorted(unknown)[0]!r}")
    kind = _str(table, "kind", "sql" if "dir" in table else "command", "[service.migrations] ")
    if kind not in MIGRATION_KINDS:
        raise _fail(
            f"[service.migrations] kind = {kind!r}; use one of {', '.join(MIGRATION_KINDS)}"
        )
    m = Migrations(
        kind=kind,
        dir=_relative(_str(table, "dir", "migrations", "[service.migrations] "), "migrations.dir"),
        up=_argv(table.get("up"), "[service.migrations] up"),
        down=_argv(table.get("down"), "[service.migrations] down"),
        current=_argv(table.get("current"), "[service.migrations] current"),
    )
    if kind == "command" and not (m.up and m.current):
        raise _fail(
            'kind = "command" needs `up` and `current` commands',
            hint='e.g. up = ["flask", "db", "upgrade"], current = ["flask", "db", "current"]',
        )
    return m


def _processes(table: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if table is None:
        return ()
    if not isinstance(table, dict):
        raise _fail("[service.processes] must be a table of name = [command...]")
    out = []
    for name, argv in table.items():
        if not _PROCESS.match(name) or name == "web":
            raise _fail(f"[service.processes] {name!r}: use a lowercase name other than 'web'")
        out.append((name, _argv(argv, f"[service.processes] {name}")))
        if not out[-1][1]:
            raise _fail(f"[service.processes] {name} has an empty command")
        if _ASSIGNMENT.match(out[-1][1][0]):
            first = out[-1][1][0]
            raise _fail(
                f"[service.processes] {name} starts with {first!r}, a variable, not a program",
                hint=f'it runs without a shell: write ["env", "{first}", ...]',
            )
    return tuple(out)


def _smoke(items: Any) -> tuple[SmokeCheck, ...]:
    if items is None:
        return ()
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _fail("[[service.smoke]] must be an array of tables")
    out = []
    for i, item in enumerate(items, 1):
        where = f"[[service.smoke]] #{i} "
        unknown = set(item) - {"method", "path", "expect", "body", "contains"}
        if unknown:
            raise _fail(f"{where}has unknown key {sorted(unknown)[0]!r}")
        method = _str(item, "method", "GET", where).upper()
        if method not in SMOKE_METHODS:
            raise _fail(f"{where}method {method!r}; use one of {', '.join(SMOKE_METHODS)}")
        expect = item.get("expect", 200)
        if not isinstance(expect, int) or isinstance(expect, bool) or not 100 <= expect <= 599:
            raise _fail(f"{where}expect must be an HTTP status such as 200")
        body = item.get("body")
        if body is not None and not isinstance(body, str):
            raise _fail(f"{where}body must be a string (JSON text is sent as JSON)")
        path = _path(_str(item, "path", "", where), f"{where}path")
        out.append(SmokeCheck(method, path, expect, body, _str(item, "contains", "", where)))
    return tuple(out)


def load_service(path: Path, data: dict[str, Any]) -> Service:
    """The [service] table of stageflow.toml; a missing table names the command that writes one."""
    table = data.get("service")
    if table is None:
        raise ConfigError(
            f"{path.name} has no [service] table describing the service to deploy",
            hint="run `stageflow init`, or see docs/YOUR-SERVICE.md",
        )
    if not isinstance(table, dict):
        raise _fail("must be a table")
    unknown = set(table) - _SERVICE_KEYS
    if unknown:
        raise _fail(f"unknown key {sorted(unknown)[0]!r}")
    name = _str(table, "name", "")
    if not re.match(r"^[a-z0-9][a-z0-9_-]*$", name):
        raise _fail("name must be lowercase letters, digits, '-' and '_' (e.g. name = \"shop\")")
    wsgi = _str(table, "wsgi", "")
    if not _WSGI.match(wsgi):
        raise _fail(
            f"wsgi = {wsgi!r} is not an app spec",
            hint='give module:object, e.g. wsgi = "shop.web:app" or "shop.web:create_app()"',
        )
    keys, secrets, feeds = _env(table.get("env"))
    health = _path(_str(table, "health", "/"), "health")
    return Service(
        name=name,
        wsgi=wsgi,
        dir=_relative(_str(table, "dir", ".") or ".", "dir"),
        requirements=_relative(_str(table, "requirements", "requirements.txt"), "requirements"),
        worker_class=_str(table, "worker_class", "sync"),
        health=health,
        # unset: ready_path is the health path, which answers for it as it answers for health
        ready=_path(_str(table, "ready", ""), "ready") if "ready" in table else "",
        version=_str(table, "version", "") and _path(_str(table, "version", ""), "version"),
        metrics=_str(table, "metrics", "") and _path(_str(table, "metrics", ""), "metrics"),
        api_key_header=_str(table, "api_key_header", ""),
        seed=_argv(table.get("seed"), "[service] seed"),
        build=_commands(table.get("build"), "[service] build"),
        env_keys=keys,
        secret_keys=secrets,
        env_from=feeds,
        migrations=_migrations(table.get("migrations")),
        processes=_processes(table.get("processes")),
        smoke=_smoke(table.get("smoke")),
        user=_service_user(data.get("project")),
    )


def _service_user(project: Any) -> str:
    """[project] service_user as written; config.load_project refuses a bad one in one line."""
    user = project.get("service_user", "stageflow") if isinstance(project, dict) else "stageflow"
    return user if isinstance(user, str) else "stageflow"


def with_password(url: str, password: str | None) -> str:
    """url with the password put into its authority (percent-encoded); unchanged without one."""
    if not password:
        return url
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
