"""Loads env/<env>.env, its secrets file and stageflow.toml into frozen, validated dataclasses."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import tomllib
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from dotenv.parser import parse_stream

from deploy.errors import ConfigError, clip
from deploy.secrets import Secret, redact_url
from deploy.service import Service, about_a_secret, load_service

# The namespaces an operator types, and the ENVIRONMENT each must declare.
NAMESPACES: dict[str, str] = {"dev": "development", "staging": "staging", "prod": "production"}
PRODUCTION_LIKE = ("staging", "production")

# stageflow's own committed keys, with a one-line meaning (docs/ENVIRONMENT.md lists them). Every
# other key belongs to the service and is allowed when stageflow.toml declares it ([service.env]).
ENV_KEYS: dict[str, str] = {
    "ENVIRONMENT": "development | staging | production; must match the file's namespace",
    "COMPOSE_PROJECT_NAME": "compose project name; unique per environment",
    "APP_PORT": "port the service listens on (127.0.0.1 on the native runtime)",
    "POSTGRES_PORT": "port of the environment's own PostgreSQL",
    "REDIS_PORT": "port of the environment's own Redis",
    "DATABASE_URL": "postgresql://USER@HOST:PORT/DB without a password",
    "REDIS_URL": "redis://HOST:PORT/DB without a password",
    "DATA_DIR": "the environment's home on each host (releases, data, state)",
}

# stageflow's own secrets: only a secrets file (or the process environment) may hold them.
SECRET_KEYS: dict[str, str] = {
    "POSTGRES_PASSWORD": "password of the environment's database role",
    "REDIS_PASSWORD": "password of the environment's Redis (requirepass)",
}
SERVICE_SECRET = "the service's own secret ([service.env] secrets in stageflow.toml)"
_SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE|CREDENTIAL)", re.I)
_URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]*:[^@/\s]+@")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# a PostgreSQL duration, as deploy/migrations.py reads one (not imported: `inv --list` stays light)
DURATION = re.compile(r"^\d{1,9}(ms|s|min|h)?$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# libpq keywords a DATABASE_URL's query may carry: none of them changes where the connection goes,
# as whom, or under which application name. Every other keyword (host, hostaddr, port, dbname,
# user, service, passfile, options, application_name, ...) would let the query override the URL
# that isolation was checked on, so it is refused.
SAFE_CONNINFO_KEYS = frozenset(
    {
        "sslmode",
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "gssencmode",
    }
)


@dataclass(frozen=True)
class DbTarget:
    host: str
    port: int
    name: str
    user: str


@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int
    db: int


@dataclass(frozen=True)
class PostureRule:
    """One [posture] rule: what a committed key must hold on a production-like environment."""

    key: str
    one_of: tuple[str, ...] = ()  # the value must be one of these, as written
    min: int | None = None  # with max: the value must be a whole number in range
    max: int | None = None

    def describe(self) -> str:
        if self.one_of:
            if len(self.one_of) == 1:
                return f"{self.key} must be {self.one_of[0]}"
            return f"{self.key} must be one of {', '.join(self.one_of)}"
        bounds = [f">= {self.min}"] if self.min is not None else []
        bounds += [f"<= {self.max}"] if self.max is not None else []
        return f"{self.key} must be a whole number" + (f" {' and '.join(bounds)}" if bounds else "")

    def problem(self, value: str | None) -> str | None:
        """None when value keeps the rule, else what is wrong (values here are never secrets)."""
        if value is None:
            return f"{self.describe()} (it is unset)"
        if self.one_of:
            ok = value in self.one_of
        else:
            ok = _whole(value) and not (
                (self.min is not None and int(value) < self.min)
                or (self.max is not None and int(value) > self.max)
            )
        return None if ok else f"{self.describe()}, not {value!r}"


@dataclass(frozen=True)
class Posture:
    """[posture] of stageflow.toml: rules for staging and production, plus each one's own."""

    common: tuple[PostureRule, ...] = ()
    per_env: tuple[tuple[str, tuple[PostureRule, ...]], ...] = ()  # ("prod", rules)

    def rules_for(self, name: str) -> tuple[PostureRule, ...]:
        """The rules one environment keeps; its own table wins over the common one, key by key."""
        own = dict(self.per_env).get(name, ())
        mine = {r.key for r in own}
        return tuple(r for r in self.common if r.key not in mine) + own


@dataclass(frozen=True)
class EnvConfig:
    """One environment as its env file and secrets file describe it."""

    name: str  # namespace: dev | staging | prod
    environment: str  # development | staging | production
    file: Path
    compose_project: str
    app_port: int
    postgres_port: int
    redis_port: int
    database_url: str
    redis_url: str
    database: DbTarget
    redis: RedisTarget
    data_dir: Path
    values: tuple[tuple[str, str], ...]  # the committed keys, as written
    secrets: tuple[tuple[str, Secret], ...] = ()
    secrets_file: Path | None = None
    # every secret this environment may hold, stageflow's and the service's; production-like
    # environments must hold them all
    declared_secrets: tuple[str, ...] = tuple(SECRET_KEYS)
    posture: tuple[PostureRule, ...] = ()  # [posture] rules for this environment

    @property
    def production_like(self) -> bool:
        return self.environment in PRODUCTION_LIKE

    def value(self, key: str, default: str = "") -> str:
        """A committed key's value as written (the service's own keys are read this way)."""
        return dict(self.values).get(key, default)

    def secret(self, key: str) -> Secret | None:
        return dict(self.secrets).get(key)

    def secret_values(self) -> tuple[Secret, ...]:
        return tuple(s for _, s in self.secrets)

    def service_env(self) -> dict[str, str]:
        """What the service process sees: committed keys plus revealed secrets (never printed)."""
        env = dict(self.values)
        env.update({k: s.reveal() for k, s in self.secrets})
        return env


@dataclass(frozen=True)
class Thresholds:
    """Automatic rollback triggers (seed 002) for one environment."""

    health_failures: int = 3  # consecutive failed health checks
    error_rate_points: float = 5.0  # error rate over the previous release's, in points
    p95_ratio: float = 2.0  # p95 latency over baseline
    memory_mb: int = 512


@dataclass(frozen=True)
class HostSpec:
    """One host of an environment: "local" (this machine) or an SSH destination user@host:port."""

    address: str = "local"
    data_dir: str | None = None  # the environment's home on this host; DATA_DIR when None
    bind: str = "127.0.0.1"  # the address the service listens on there
    identity_file: str | None = None  # SSH private key; the SSH agent and ~/.ssh when None
    known_hosts: str | None = None  # when set, only host keys listed there are accepted

    @property
    def is_local(self) -> bool:
        return self.address == "local"

    @property
    def plain(self) -> bool:
        """The shipped single-host setting: this machine, DATA_DIR, loopback."""
        return self.is_local and self.data_dir is None and self.bind == "127.0.0.1"

    def home(self, env: EnvConfig) -> str:
        return self.data_dir or str(env.data_dir)


LOCAL = HostSpec()


def host_spec(value: object) -> HostSpec:
    """A HostSpec from what a caller holds: a HostSpec, or a plain host string."""
    if isinstance(value, HostSpec):
        return value
    return HostSpec(address=str(value).removeprefix("ssh://"))


_HOST_KEYS = ("address", "data_dir", "bind", "identity_file", "known_hosts")


@dataclass(frozen=True)
class EnvPolicy:
    """One environment's operator policy from stageflow.toml."""

    name: str
    hosts: tuple[HostSpec, ...] = (LOCAL,)
    runtime: str = "native"
    keep_releases: int = 5
    verify_window_s: float = 0.0
    soak_s: float = 0.0
    auto_rollback: bool = True
    backup: str = "pending-migrations"  # never | pending-migrations | always
    allow_dirty: bool = False
    batch: str = "1"
    workers: int = 2
    thresholds: Thresholds = field(default_factory=Thresholds)
    refresh_s: float = 10.0
    # how long one migration statement may wait for a lock, and run (a file's own headers win),
    # and how long a whole deploy may take before it stops and the previous release serves
    lock_timeout: str = "5s"
    statement_timeout: str = "5min"
    deploy_timeout_s: float = 3600.0
    # the keys the environment's table wrote: where a default here differs from a tool's own
    # (a service's migration tool has no statement_timeout unless the operator asks), the
    # caller can tell "unset" from "set to the default"
    written: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Project:
    root: Path
    envs: dict[str, EnvConfig]
    policies: dict[str, EnvPolicy]
    policy: dict[str, Any]  # the raw stageflow.toml, for the gate and promotion sections
    service: Service
    service_user: str = "stageflow"
    posture: Posture = field(default_factory=lambda: Posture())

    def known_secrets(self) -> tuple[Secret, ...]:
        """Every environment's secrets this machine holds: what a hook, an audit record or an
        incident draft of any one environment is scrubbed of (a staging hook may print prod's)."""
        seen: dict[str, Secret] = {}
        for env in self.envs.values():
            for secret in env.secret_values():
                seen.setdefault(secret.reveal(), secret)
        return tuple(seen.values())

    def env(self, name: str) -> EnvConfig:
        if name not in self.envs:
            known = ", ".join(sorted(self.envs))
            raise ConfigError(f"unknown environment {name!r}", hint=f"use one of: {known}")
        return self.envs[name]


def _err(path: Path, line: int | None, message: str, hint: str | None = None) -> ConfigError:
    where = f"{path.name}:{line}" if line else path.name
    return ConfigError(f"{where}: {message}", hint=hint)


def read_env_file(path: Path) -> dict[str, tuple[str, int]]:
    """Parse a dotenv file strictly: key -> (value, line). Malformed or duplicate lines refuse."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist", hint="create it from the documented keys"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc.__class__.__name__}") from None
    out: dict[str, tuple[str, int]] = {}
    for binding in parse_stream(_Stream(text)):
        line = binding.original.line
        if binding.error:
            raise _err(path, line, "malformed line", "write KEY=value, one per line")
        if binding.key is None:
            continue  # blank line or comment
        if binding.value is None:
            raise _err(path, line, f"{binding.key} has no value", f"write {binding.key}=value")
        if binding.key in out:
            raise _err(
                path, line, f"{binding.key} is set twice (first on line {out[binding.key][1]})"
            )
        control = control_character(binding.value)
        if control:
            # a newline would smuggle another setting into the file the service reads
            raise _err(
                path,
                line,
                f"{binding.key} holds {control}",
                "write the value on one line, without control characters",
            )
        out[binding.key] = (binding.value, line)
    return out


_CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\0": "NUL"}


def control_character(value: str) -> str:
    """The first control character in value, named (never the value itself), or "".

    Unicode's line and paragraph separators count: str.splitlines() breaks lines at them."""
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc":
            return _CONTROL_NAMES.get(char, f"the control character U+{ord(char):04X}")
        if category in ("Zl", "Zp"):
            return f"the line separator U+{ord(char):04X}"
    return ""


def _whole(value: str) -> bool:
    """Only ASCII digits: str.isdigit() also takes '²', which int() refuses."""
    return value.isascii() and value.isdigit()


class _Stream:
    """parse_stream wants a readable; keep the text whole so line numbers hold."""

    def __init__(self, text: str) -> None:
        self._text = text

    def read(self) -> str:
        return self._text


def _port(path: Path, key: str, raw: dict[str, tuple[str, int]]) -> int:
    value, line = raw[key]
    if not _whole(value) or not 1024 <= int(value) <= 65535:
        raise _err(path, line, f"{key}={value!r} is not a port", "use a number from 1024 to 65535")
    return int(value)


# postgresql://USER[:PASSWORD]@HOST:PORT/DB with nothing libpq could read two ways: no query, no
# percent-escape, no list of hosts, no socket path, names of plain characters only
_PLAIN_PG_URL = re.compile(
    r"postgres(?:ql)?://(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]{0,62})(?::[A-Za-z0-9_.~-]*)?"
    r"@(?P<host>[A-Za-z0-9][A-Za-z0-9.-]{0,252}):(?P<port>[0-9]{1,5})"
    r"/(?P<db>[A-Za-z0-9_][A-Za-z0-9_.-]{0,62})"
)


def _db_target(path: Path, raw: dict[str, tuple[str, int]], port: int) -> DbTarget:
    """The database as libpq reads the whole URL (query included), not as its path reads."""
    value, line = raw["DATABASE_URL"]
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres"):
        raise _err(path, line, "DATABASE_URL must start with postgresql://")
    hint = "postgresql://USER@127.0.0.1:PORT/DB, options only from " + ", ".join(
        sorted(SAFE_CONNINFO_KEYS)
    )
    if parts.fragment:
        raise _err(path, line, "DATABASE_URL holds a '#' fragment", hint)
    redirects = sorted(
        {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)} - SAFE_CONNINFO_KEYS
    )
    if redirects:
        raise _err(
            path,
            line,
            f"DATABASE_URL's query sets {', '.join(redirects)}: it would override the URL's "
            "own host, port, database or user",
            hint,
        )
    plain = _PLAIN_PG_URL.fullmatch(value)
    if plain:
        # no query, no escape, one host: libpq reads these four parts exactly as written, and
        # loading its driver costs a task about a tenth of a second
        if int(plain["port"]) != port:
            raise _err(path, line, f"DATABASE_URL port {plain['port']} is not POSTGRES_PORT {port}")
        return DbTarget(plain["host"], int(plain["port"]), plain["db"], plain["user"])
    # the driver's own parser, imported here: loading the task list must not load the driver
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(value)
        bare = conninfo_to_dict(urlunsplit(parts._replace(query="")))
    except ProgrammingError as exc:
        reason = redact_url(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        raise _err(path, line, f"DATABASE_URL is not a URL libpq reads: {reason}", hint) from None
    # what the query changed beyond the safe keys (an alias libpq maps, like ssl=true)
    changed = sorted(k for k in info if k not in SAFE_CONNINFO_KEYS and info.get(k) != bare.get(k))
    if changed:
        raise _err(path, line, f"DATABASE_URL's query changes {', '.join(changed)}", hint)
    host, url_port = info.get("host", ""), info.get("port", "")
    name, user = info.get("dbname", ""), info.get("user", "")
    if not host or not url_port or not name or not user:
        raise _err(path, line, "DATABASE_URL needs user, host, port and database", hint)
    if "," in host or "," in url_port:
        raise _err(path, line, "DATABASE_URL names several hosts", "name exactly one host")
    if not _whole(url_port) or int(url_port) != port:
        raise _err(path, line, f"DATABASE_URL port {url_port} is not POSTGRES_PORT {port}")
    return DbTarget(host, int(url_port), name, user)


def _redis_target(path: Path, raw: dict[str, tuple[str, int]], port: int) -> RedisTarget:
    value, line = raw["REDIS_URL"]
    parts = urlsplit(value)
    if parts.scheme != "redis":
        raise _err(path, line, "REDIS_URL must start with redis://")
    if parts.query or parts.fragment:
        # redis clients read db, host and socket paths from the query: it would override the URL
        raise _err(
            path,
            line,
            "REDIS_URL holds a query or fragment",
            "redis://127.0.0.1:PORT/0 and nothing after the db number",
        )
    try:
        url_port = parts.port
    except ValueError:
        url_port = None
    db = parts.path.lstrip("/") or "0"
    if not parts.hostname or not url_port or not _whole(db) or "," in parts.netloc:
        raise _err(
            path, line, "REDIS_URL needs host, port and db number", "redis://127.0.0.1:PORT/0"
        )
    if url_port != port:
        raise _err(path, line, f"REDIS_URL port {url_port} is not REDIS_PORT {port}")
    return RedisTarget(parts.hostname, url_port, int(db))


def load_secrets(path: Path, *, allowed: Collection[str]) -> dict[str, Secret]:
    """A secrets file must be private to its owner (mode 0600) and hold only declared secrets."""
    if not path.exists():
        return {}
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise _err(path, None, f"is readable by others (mode {mode:04o})", f"chmod 600 {path}")
    raw = read_env_file(path)
    out: dict[str, Secret] = {}
    for key, (value, line) in raw.items():
        if key not in allowed:
            raise _err(
                path,
                line,
                f"unknown secret key {key}",
                f"declare the service's under [service.env] secrets in stageflow.toml "
                f"(known: {', '.join(allowed)})",
            )
        out[key] = Secret(value)
    return out


def load_env(
    root: Path,
    name: str,
    *,
    service: Service | None = None,
    posture: Posture | None = None,
    process_env: dict[str, str] | None = None,
) -> EnvConfig:
    """Load env/<name>.env and env/<name>.secrets.env; secrets may also come from process_env.

    The service's keys and the posture come from stageflow.toml under root unless given."""
    if name not in NAMESPACES:
        raise ConfigError(
            f"unknown environment {name!r}", hint=f"use one of: {', '.join(NAMESPACES)}"
        )
    if service is None or posture is None:
        data = load_policy_file(root)
        if service is None:
            service = load_service(root / "stageflow.toml", data)
        if posture is None:
            posture = load_posture(root / "stageflow.toml", data, service)
    path = root / "env" / f"{name}.env"
    raw = read_env_file(path)
    _check_committed_keys(path, name, raw, service)
    environment = _environment(path, name, raw)
    project = _compose_project(path, raw)
    app_port = _port(path, "APP_PORT", raw)
    pg_port = _port(path, "POSTGRES_PORT", raw)
    redis_port = _port(path, "REDIS_PORT", raw)
    data_dir = _data_dir(root, path, raw)
    declared = (*SECRET_KEYS, *(k for k in service.secret_keys if k not in SECRET_KEYS))
    secrets_path = root / "env" / f"{name}.secrets.env"
    secrets = _env_secrets(secrets_path, name, declared, process_env)
    return EnvConfig(
        name=name,
        environment=environment,
        file=path,
        compose_project=project,
        app_port=app_port,
        postgres_port=pg_port,
        redis_port=redis_port,
        database_url=raw["DATABASE_URL"][0],
        redis_url=raw["REDIS_URL"][0],
        database=_db_target(path, raw, pg_port),
        redis=_redis_target(path, raw, redis_port),
        data_dir=data_dir,
        values=tuple((k, v) for k, (v, _) in raw.items()),
        secrets=tuple(sorted(secrets.items())),
        secrets_file=secrets_path if secrets_path.exists() else None,
        declared_secrets=declared,
        posture=posture.rules_for(name),
    )


def _check_committed_keys(
    path: Path, name: str, raw: dict[str, tuple[str, int]], service: Service
) -> None:
    """A committed env file holds every key of stageflow's, the service's declared keys, no secret."""
    for key, (value, line) in raw.items():
        if key in SECRET_KEYS or key in service.secret_keys:
            raise _err(
                path,
                line,
                f"{key} is a secret in a committed file",
                f"move it to env/{name}.secrets.env (mode 0600)",
            )
        if _SECRETISH.search(key) and not about_a_secret(key):
            # declared under keys or not: a name that says secret is kept out of git
            raise _err(
                path,
                line,
                f"{key} is a secret in a committed file",
                f"declare it under [service.env] secrets in stageflow.toml and set it in "
                f"env/{name}.secrets.env (mode 0600)",
            )
        if key not in ENV_KEYS and key not in service.env_keys:
            raise _err(
                path,
                line,
                f"unknown key {key}",
                "declare the service's own keys under [service.env] keys in stageflow.toml "
                "(docs/YOUR-SERVICE.md); stageflow's are in docs/ENVIRONMENT.md",
            )
        if _URL_WITH_PASSWORD.search(value):
            raise _err(
                path,
                line,
                f"{key} carries a password in a committed file",
                f"drop it from the URL and set POSTGRES_PASSWORD in env/{name}.secrets.env",
            )
    missing = [k for k in ENV_KEYS if k not in raw]
    if missing:
        raise _err(
            path,
            None,
            f"missing key {missing[0]}",
            f"add {missing[0]}=... ({ENV_KEYS[missing[0]]})",
        )


def _environment(path: Path, name: str, raw: dict[str, tuple[str, int]]) -> str:
    environment, line = raw["ENVIRONMENT"]
    if environment != NAMESPACES[name]:
        raise _err(
            path,
            line,
            f"ENVIRONMENT={environment} but this is the {name} file",
            f"{name}.env must say ENVIRONMENT={NAMESPACES[name]}",
        )
    return environment


def _compose_project(path: Path, raw: dict[str, tuple[str, int]]) -> str:
    project, line = raw["COMPOSE_PROJECT_NAME"]
    if not _NAME.match(project):
        raise _err(
            path,
            line,
            f"COMPOSE_PROJECT_NAME={project!r} is not a valid project name",
            "use lowercase letters, digits, '-' and '_'",
        )
    return project


def _data_dir(root: Path, path: Path, raw: dict[str, tuple[str, int]]) -> Path:
    """DATA_DIR resolved as the kernel resolves it (symlinks followed), a relative one taken from
    the project root: two spellings of one directory must compare equal."""
    data_value, line = raw["DATA_DIR"]
    if not data_value.strip():
        raise _err(path, line, "DATA_DIR is empty")
    data_dir = Path(data_value)
    real = Path(os.path.realpath(data_dir if data_dir.is_absolute() else root / data_dir))
    if real == Path("/") or real in (root.resolve(), *root.resolve().parents):
        # a home holding the project (or everything) would be wiped or rewritten with it
        raise _err(
            path,
            line,
            f"DATA_DIR={data_value!r} resolves to {real}, which holds the project itself",
            "give the environment a directory of its own, e.g. .stageflow/<env>",
        )
    return real


def libpq_variables(environ: Collection[str]) -> list[str]:
    """The operator's libpq variables (PGHOST, PGSERVICE, PGOPTIONS, ...): libpq reads them behind
    any URL's back, so a deploy removes them before it connects anywhere."""
    return sorted(k for k in environ if k.startswith("PG"))


def _env_secrets(
    secrets_path: Path, name: str, declared: Collection[str], process_env: dict[str, str] | None
) -> dict[str, Secret]:
    """The secrets file's values; STAGEFLOW_<ENV>_<KEY> in the process environment wins."""
    secrets = load_secrets(secrets_path, allowed=declared)
    for key in declared:
        env_key = f"STAGEFLOW_{name.upper()}_{key}"
        value = (process_env or {}).get(env_key)
        if not value:
            continue
        control = control_character(value)
        if control:
            raise ConfigError(
                f"{env_key} (process environment) holds {control}",
                hint="set the value on one line, without control characters",
            )
        secrets[key] = Secret(value)
    return secrets


# [posture] values: "v" (exactly v), ["a", "b"] (one of them), {min = N, max = N} (a whole number)
_POSTURE_HINT = (
    'write KEY = "value", KEY = ["value", ...] or KEY = { min = 1 } (a whole number >= 1)'
)


def _posture_rule(path: Path, where: str, key: str, value: Any) -> PostureRule:
    if isinstance(value, str):
        return PostureRule(key, one_of=(value,))
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return PostureRule(key, one_of=tuple(value))
    if isinstance(value, dict) and value and set(value) <= {"min", "max"}:
        bounds = dict(value)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in bounds.values()):
            raise _err(path, None, f"{where} {key}: min and max take whole numbers")
        if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
            raise _err(path, None, f"{where} {key}: min is above max")
        return PostureRule(key, min=bounds.get("min"), max=bounds.get("max"))
    raise _err(path, None, f"{where} {key} is not a rule", _POSTURE_HINT)


def _posture_rules(
    path: Path, where: str, table: dict[str, Any], service: Service | None
) -> tuple[PostureRule, ...]:
    rules = []
    for key, value in table.items():
        if service is not None:
            if key in SECRET_KEYS or key in service.secret_keys:
                raise _err(
                    path,
                    None,
                    f"{where} {key} is a secret: its value is never compared",
                    "staging and production need every declared secret set; drop the rule",
                )
            if key not in ENV_KEYS and key not in service.env_keys:
                raise _err(
                    path,
                    None,
                    f"{where} {key} is not a key of the env files",
                    "declare it under [service.env] keys, or drop the rule",
                )
        texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if any(isinstance(t, str) and control_character(t) for t in texts):
            raise _err(path, None, f"{where} {key} holds a control character")
        rules.append(_posture_rule(path, where, key, value))
    return tuple(rules)


def load_posture(path: Path, data: dict[str, Any], service: Service | None = None) -> Posture:
    """[posture]: KEY = rule for staging and production; [posture.staging] / [posture.prod] add
    rules of their own. Without a service the keys are not checked against the declared ones."""
    table = data.get("posture", {})
    if not isinstance(table, dict):
        raise _err(path, None, "[posture] must be a table", _POSTURE_HINT)
    common: dict[str, Any] = {}
    per_env: list[tuple[str, tuple[PostureRule, ...]]] = []
    for key, value in table.items():
        if key in NAMESPACES:
            if NAMESPACES[key] not in PRODUCTION_LIKE:
                raise _err(
                    path,
                    None,
                    f"[posture.{key}]: {key} is not production-like; posture is for staging "
                    "and prod",
                )
            if not isinstance(value, dict):
                raise _err(path, None, f"[posture.{key}] must be a table", _POSTURE_HINT)
            per_env.append((key, _posture_rules(path, f"[posture.{key}]", value, service)))
        elif _ENV_NAME.match(key):
            common[key] = value
        else:
            raise _err(
                path,
                None,
                f"[posture] {key!r} is neither an env key nor staging or prod",
                _POSTURE_HINT,
            )
    return Posture(_posture_rules(path, "[posture]", common, service), tuple(per_env))


_POLICY_KEYS = {
    "hosts": (list,),
    "runtime": (str,),
    "keep_releases": (int,),
    "verify_window_s": (int, float),
    "soak_s": (int, float),
    "auto_rollback": (bool,),
    "backup": (str,),
    "allow_dirty": (bool,),
    "batch": (str, int),
    "workers": (int,),
    "refresh_s": (int, float),
    "thresholds": (dict,),
    "relax_thresholds_from": (str,),
    "relax_factor": (int, float),
    "lock_timeout": (str,),
    "statement_timeout": (str,),
    "deploy_timeout_s": (int, float),
}
# Each numeric key's lower bound, and whether the bound itself is allowed: a value outside loads
# silently today and bites at deploy time (0 workers start nothing, a negative window never ends).
_POLICY_MINIMUMS: dict[str, tuple[float, bool]] = {
    "verify_window_s": (0, True),
    "soak_s": (0, True),
    "workers": (1, True),
    "refresh_s": (0, False),
    "relax_factor": (0, False),
    "deploy_timeout_s": (0, False),
}
_THRESHOLD_KEYS = {
    "health_failures": int,
    "error_rate_points": float,
    "p95_ratio": float,
    "memory_mb": int,
}


def _thresholds(path: Path, env: str, table: dict[str, Any]) -> Thresholds:
    for key, value in table.items():
        if key not in _THRESHOLD_KEYS:
            raise _err(
                path,
                None,
                f"[environments.{env}.thresholds] unknown key {key}",
                f"known: {', '.join(_THRESHOLD_KEYS)}",
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value < math.inf
        ):
            raise _err(
                path, None, f"[environments.{env}.thresholds] {key} must be a positive number"
            )
    return Thresholds(**{k: _THRESHOLD_KEYS[k](v) for k, v in table.items()})


def _relaxed(base: Thresholds, factor: float) -> Thresholds:
    """Staging watches the same triggers as prod, each relaxed by factor (seed 001: 2x)."""
    return Thresholds(
        health_failures=int(base.health_failures * factor),
        error_rate_points=base.error_rate_points * factor,
        p95_ratio=base.p95_ratio * factor,
        memory_mb=int(base.memory_mb * factor),
    )


def load_policies(path: Path, data: dict[str, Any]) -> dict[str, EnvPolicy]:
    envs = data.get("environments")
    if not isinstance(envs, dict):
        raise _err(path, None, "missing [environments] table")
    policies: dict[str, EnvPolicy] = {}
    pending_relax: dict[str, tuple[str, float]] = {}
    for name, table in envs.items():
        kwargs = _policy_table(path, name, table)
        if "relax_thresholds_from" in kwargs:
            pending_relax[name] = (
                kwargs.pop("relax_thresholds_from"),
                float(kwargs.pop("relax_factor", 2)),
            )
        kwargs.pop("relax_factor", None)
        policies[name] = _env_policy(path, name, kwargs)
    # thresholds relaxed from another environment's, once every environment's own are known
    for name, (source, factor) in pending_relax.items():
        if source not in policies:
            raise _err(
                path,
                None,
                f"[environments.{name}] relax_thresholds_from={source!r} is not an environment",
            )
        p = policies[name]
        policies[name] = EnvPolicy(
            **{**p.__dict__, "thresholds": _relaxed(policies[source].thresholds, factor)}
        )
    for name in NAMESPACES:
        policies.setdefault(name, EnvPolicy(name=name))
    return policies


def _policy_table(path: Path, name: str, table: dict[str, Any]) -> dict[str, Any]:
    """[environments.<name>]: a known environment, known keys, each of its type."""
    if name not in NAMESPACES:
        raise _err(
            path,
            None,
            f"[environments.{name}] is not an environment",
            f"use {', '.join(NAMESPACES)}",
        )
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _POLICY_KEYS:
            raise _err(path, None, f"[environments.{name}] unknown key {key}")
        if not isinstance(value, _POLICY_KEYS[key]) or (
            isinstance(value, bool) and bool not in _POLICY_KEYS[key]
        ):
            raise _err(path, None, f"[environments.{name}] {key} has the wrong type")
        if key in _POLICY_MINIMUMS:
            _check_minimum(path, f"[environments.{name}] {key}", value, *_POLICY_MINIMUMS[key])
        if key in ("lock_timeout", "statement_timeout") and not DURATION.match(value):
            raise _err(
                path,
                None,
                f"[environments.{name}] {key}={clip(value)!r} is not a duration",
                'write e.g. "5s", "500ms" or "2min" ("0": no timeout)',
            )
        kwargs[key] = value
    return kwargs


def _check_minimum(path: Path, where: str, value: float, low: float, inclusive: bool) -> None:
    """A finite number at or above low (above it when not inclusive); TOML allows inf and nan."""
    if not math.isfinite(value) or value < low or (value == low and not inclusive):
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        raise _err(path, None, f"{where} must be a number {bound}, not {value!r}")


def _env_policy(path: Path, name: str, kwargs: dict[str, Any]) -> EnvPolicy:
    """One environment's policy: thresholds, hosts, runtime, backup, releases kept, batch."""
    kwargs["written"] = frozenset(kwargs)
    kwargs["thresholds"] = _thresholds(path, name, kwargs.get("thresholds", {}))
    kwargs["hosts"] = _host_specs(path, name, kwargs.get("hosts", ["local"]), path.parent)
    if kwargs.get("runtime", "native") not in ("native", "compose"):
        raise _err(path, None, f"[environments.{name}] runtime must be native or compose")
    if kwargs.get("runtime") == "compose" and len(kwargs["hosts"]) > 1:
        # one compose project holds the env's database: several would each hold their own
        raise _err(
            path,
            None,
            f"[environments.{name}] the compose runtime runs on one host, not "
            f"{len(kwargs['hosts'])}",
            'list one host, or use runtime = "native" to roll over several',
        )
    if kwargs.get("backup", "pending-migrations") not in (
        "never",
        "pending-migrations",
        "always",
    ):
        raise _err(
            path,
            None,
            f"[environments.{name}] backup must be never, pending-migrations or always",
        )
    if kwargs.get("keep_releases", 5) < 2:
        raise _err(
            path,
            None,
            f"[environments.{name}] keep_releases must be at least 2",
            "the current and the previous good release are always kept",
        )
    kwargs["batch"] = _batch(path, name, kwargs.get("batch", "1"))
    return EnvPolicy(name=name, **kwargs)


def _host_specs(path: Path, env: str, hosts: list[Any], root: Path) -> tuple[HostSpec, ...]:
    """Plain strings ("local", "user@host:port") or inline tables {address = ..., ...}."""
    where = f"[environments.{env}] hosts"
    if not hosts:
        raise _err(path, None, f"{where} must be a non-empty list", 'write hosts = ["local"]')
    specs: list[HostSpec] = []
    for item in hosts:
        if isinstance(item, str) and item.strip():
            specs.append(host_spec(item.strip()))
            continue
        if not isinstance(item, dict):
            raise _err(path, None, f"{where}: each host is a string or a table", '"user@host:port"')
        unknown = [k for k in item if k not in _HOST_KEYS]
        if unknown:
            raise _err(
                path, None, f"{where}: unknown key {unknown[0]}", f"known: {', '.join(_HOST_KEYS)}"
            )
        if not all(isinstance(v, str) and v.strip() for v in item.values()):
            raise _err(path, None, f"{where}: every host key takes a non-empty string")
        address = item.get("address")
        if not address:
            raise _err(path, None, f"{where}: a host table needs address", 'address = "user@host"')
        data_dir = item.get("data_dir")
        if data_dir is not None and not data_dir.startswith("/"):
            raise _err(
                path, None, f"{where}: data_dir {data_dir!r} is not absolute", "use a full path"
            )
        if data_dir is not None and _host_home(address, data_dir) == "/":
            raise _err(path, None, f"{where}: data_dir {data_dir!r} is the root directory")
        bind = item.get("bind", "127.0.0.1")
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise _err(path, None, f"{where}: bind {bind!r} is not an IP address") from None
        files = {k: item.get(k) for k in ("identity_file", "known_hosts")}
        for key, value in files.items():
            if value is not None and not value.startswith("/"):
                files[key] = str(root / value)  # relative to the project, like DATA_DIR
        specs.append(
            HostSpec(
                address=address.removeprefix("ssh://"),
                data_dir=_host_home(address, data_dir) if data_dir else None,
                bind=bind,
                **files,
            )
        )
    seen: set[str] = set()
    for spec in specs:
        if spec.address in seen:
            raise _err(path, None, f"{where}: {spec.address} is listed twice")
        seen.add(spec.address)
    return tuple(specs)


def _host_home(address: str, data_dir: str) -> str:
    """A host's data_dir: symlinks resolved on this machine; another host's can only be normalised
    here (the isolation guard resolves it on that host)."""
    local = address.removeprefix("ssh://") == "local"
    return os.path.realpath(data_dir) if local else os.path.normpath(data_dir)


def _batch(path: Path, env: str, value: str | int) -> str:
    text = str(value).strip()
    digits = text[:-1] if text.endswith("%") else text
    if not digits.isdigit() or int(digits) < 1 or (text.endswith("%") and int(digits) > 100):
        raise _err(
            path,
            None,
            f"[environments.{env}] batch={value!r} is not a batch size",
            'give a number of hosts (batch = 2) or a percentage (batch = "25%")',
        )
    return text


def load_policy_file(root: Path) -> dict[str, Any]:
    path = root / "stageflow.toml"
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist", hint="run inv from the project's root"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"stageflow.toml: {exc}", hint="fix the TOML syntax") from None


def find_root(start: Path) -> Path:
    for candidate in (start, *start.parents):
        if (candidate / "stageflow.toml").is_file():
            return candidate
    raise ConfigError(
        f"no stageflow.toml in {start} or above", hint="run inv from the project's root"
    )


def load_project(
    root: Path, *, process_env: dict[str, str] | None = None, only: str | None = None
) -> Project:
    """Load every environment (isolation is checked across all of them, not only the target)."""
    root = root.resolve()
    data = load_policy_file(root)
    policies = load_policies(root / "stageflow.toml", data)
    service = load_service(root / "stageflow.toml", data)
    posture = load_posture(root / "stageflow.toml", data, service)
    names = [only] if only else list(NAMESPACES)
    envs = {
        name: load_env(root, name, service=service, posture=posture, process_env=process_env)
        for name in names
    }
    user = data.get("project", {}).get("service_user", "stageflow")
    if not isinstance(user, str) or not _NAME.match(user):
        raise _err(
            root / "stageflow.toml", None, "[project] service_user must be a plain user name"
        )
    if user == "root":
        # the servers run as this user so that a compromised service cannot own the machine
        raise _err(
            root / "stageflow.toml",
            None,
            "[project] service_user must not be root",
            "name an unprivileged user, e.g. stageflow",
        )
    return Project(
        root=root,
        envs=envs,
        policies=policies,
        policy=data,
        service=service,
        service_user=user,
        posture=posture,
    )
