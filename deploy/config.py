"""Loads env/<env>.env, its secrets file and stageflow.toml into frozen, validated dataclasses."""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dotenv.parser import parse_stream

from deploy.errors import ConfigError
from deploy.secrets import Secret
from deploy.service import Service, load_service

# The namespaces an operator types, and the ENVIRONMENT each must declare.
NAMESPACES: dict[str, str] = {"dev": "development", "staging": "staging", "prod": "production"}
PRODUCTION_LIKE = ("staging", "production")

# Every key a committed env file may hold, with a one-line meaning (docs/ENVIRONMENT.md lists them).
ENV_KEYS: dict[str, str] = {
    "ENVIRONMENT": "development | staging | production; must match the file's namespace",
    "COMPOSE_PROJECT_NAME": "compose project name; unique per environment",
    "APP_PORT": "port the service listens on (127.0.0.1 on the native runtime)",
    "POSTGRES_PORT": "port of the environment's own PostgreSQL",
    "REDIS_PORT": "port of the environment's own Redis",
    "DATABASE_URL": "postgresql://USER@HOST:PORT/DB without a password",
    "REDIS_URL": "redis://HOST:PORT/DB without a password",
    "DATA_DIR": "the environment's home on each host (releases, data, state)",
    "FEATURES": "comma-separated feature flags, or 'all'",
    "LOG_LEVEL": "debug | info | warning | error",
    "DEBUG": "true | false; must be false on staging and production",
    "REQUIRE_API_KEY": "true | false; must be true on staging and production",
    "API_RATE_LIMIT": "requests per minute per API key; required > 0 on staging and production",
}
OPTIONAL_ENV_KEYS = frozenset(
    {"FEATURES", "LOG_LEVEL", "DEBUG", "REQUIRE_API_KEY", "API_RATE_LIMIT"}
)

# Keys that only a secrets file (or the process environment) may hold.
SECRET_KEYS: dict[str, str] = {
    "POSTGRES_PASSWORD": "password of the environment's database role",
    "REDIS_PASSWORD": "password of the environment's Redis (requirepass)",
    "API_KEYS": "comma-separated API keys the service accepts",
    "SECRET_KEY": "the service's signing key",
}
LOG_LEVELS = ("debug", "info", "warning", "error")
_SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE|CREDENTIAL)", re.I)
_URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]*:[^@/\s]+@")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


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
    features: tuple[str, ...]
    log_level: str
    debug: bool
    require_api_key: bool
    api_rate_limit: int
    values: tuple[tuple[str, str], ...]  # the committed keys, as written
    secrets: tuple[tuple[str, Secret], ...] = ()
    secrets_file: Path | None = None

    @property
    def production_like(self) -> bool:
        return self.environment in PRODUCTION_LIKE

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


@dataclass(frozen=True)
class Project:
    root: Path
    envs: dict[str, EnvConfig]
    policies: dict[str, EnvPolicy]
    policy: dict[str, Any]  # the raw stageflow.toml, for the gate and promotion sections
    service: Service
    service_user: str = "stageflow"

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
        out[binding.key] = (binding.value, line)
    return out


class _Stream:
    """parse_stream wants a readable; keep the text whole so line numbers hold."""

    def __init__(self, text: str) -> None:
        self._text = text

    def read(self) -> str:
        return self._text


def _port(path: Path, key: str, raw: dict[str, tuple[str, int]]) -> int:
    value, line = raw[key]
    if not value.isdigit() or not 1024 <= int(value) <= 65535:
        raise _err(path, line, f"{key}={value!r} is not a port", "use a number from 1024 to 65535")
    return int(value)


def _bool(path: Path, key: str, raw: dict[str, tuple[str, int]], default: bool) -> bool:
    if key not in raw:
        return default
    value, line = raw[key]
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise _err(path, line, f"{key}={value!r} is not a boolean", "use true or false")


def _db_target(path: Path, raw: dict[str, tuple[str, int]], port: int) -> DbTarget:
    value, line = raw["DATABASE_URL"]
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres"):
        raise _err(path, line, "DATABASE_URL must start with postgresql://")
    try:
        url_port = parts.port
    except ValueError:
        url_port = None
    name = parts.path.lstrip("/")
    if not parts.hostname or not url_port or not name or not parts.username:
        raise _err(
            path,
            line,
            "DATABASE_URL needs user, host, port and database",
            "postgresql://USER@127.0.0.1:PORT/DB",
        )
    if url_port != port:
        raise _err(path, line, f"DATABASE_URL port {url_port} is not POSTGRES_PORT {port}")
    return DbTarget(parts.hostname, url_port, unquote(name), unquote(parts.username))


def _redis_target(path: Path, raw: dict[str, tuple[str, int]], port: int) -> RedisTarget:
    value, line = raw["REDIS_URL"]
    parts = urlsplit(value)
    if parts.scheme != "redis":
        raise _err(path, line, "REDIS_URL must start with redis://")
    try:
        url_port = parts.port
    except ValueError:
        url_port = None
    db = parts.path.lstrip("/") or "0"
    if not parts.hostname or not url_port or not db.isdigit():
        raise _err(
            path, line, "REDIS_URL needs host, port and db number", "redis://127.0.0.1:PORT/0"
        )
    if url_port != port:
        raise _err(path, line, f"REDIS_URL port {url_port} is not REDIS_PORT {port}")
    return RedisTarget(parts.hostname, url_port, int(db))


def load_secrets(path: Path) -> dict[str, Secret]:
    """A secrets file must be private to its owner (mode 0600) and hold only secret keys."""
    if not path.exists():
        return {}
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise _err(path, None, f"is readable by others (mode {mode:04o})", f"chmod 600 {path}")
    raw = read_env_file(path)
    out: dict[str, Secret] = {}
    for key, (value, line) in raw.items():
        if key not in SECRET_KEYS:
            raise _err(path, line, f"unknown secret key {key}", f"known: {', '.join(SECRET_KEYS)}")
        out[key] = Secret(value)
    return out


def load_env(root: Path, name: str, *, process_env: dict[str, str] | None = None) -> EnvConfig:
    """Load env/<name>.env and env/<name>.secrets.env; secrets may also come from process_env."""
    if name not in NAMESPACES:
        raise ConfigError(
            f"unknown environment {name!r}", hint=f"use one of: {', '.join(NAMESPACES)}"
        )
    path = root / "env" / f"{name}.env"
    raw = read_env_file(path)
    _check_committed_keys(path, name, raw)
    environment = _environment(path, name, raw)
    project = _compose_project(path, raw)
    app_port = _port(path, "APP_PORT", raw)
    pg_port = _port(path, "POSTGRES_PORT", raw)
    redis_port = _port(path, "REDIS_PORT", raw)
    level = _log_level(path, raw)
    rate, line = raw.get("API_RATE_LIMIT", ("0", 0))
    if not rate.isdigit():
        raise _err(path, line, f"API_RATE_LIMIT={rate!r} is not a whole number")
    data_dir = _data_dir(root, path, raw)
    features_raw = raw.get("FEATURES", ("", 0))[0]
    features = tuple(f.strip() for f in features_raw.split(",") if f.strip())
    secrets_path = root / "env" / f"{name}.secrets.env"
    secrets = _env_secrets(secrets_path, name, process_env)
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
        data_dir=Path(os.path.normpath(data_dir)),
        features=features,
        log_level=level,
        debug=_bool(path, "DEBUG", raw, False),
        require_api_key=_bool(path, "REQUIRE_API_KEY", raw, False),
        api_rate_limit=int(rate),
        values=tuple((k, v) for k, (v, _) in raw.items()),
        secrets=tuple(sorted(secrets.items())),
        secrets_file=secrets_path if secrets_path.exists() else None,
    )


def _check_committed_keys(path: Path, name: str, raw: dict[str, tuple[str, int]]) -> None:
    """A committed env file holds every required key, only known keys, and no secret."""
    for key, (value, line) in raw.items():
        if key in SECRET_KEYS or (key not in ENV_KEYS and _SECRETISH.search(key)):
            raise _err(
                path,
                line,
                f"{key} is a secret in a committed file",
                f"move it to env/{name}.secrets.env (mode 0600)",
            )
        if key not in ENV_KEYS:
            raise _err(path, line, f"unknown key {key}", "see docs/ENVIRONMENT.md for the keys")
        if _URL_WITH_PASSWORD.search(value):
            raise _err(
                path,
                line,
                f"{key} carries a password in a committed file",
                f"drop it from the URL and set POSTGRES_PASSWORD in env/{name}.secrets.env",
            )
    missing = [k for k in ENV_KEYS if k not in raw and k not in OPTIONAL_ENV_KEYS]
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


def _log_level(path: Path, raw: dict[str, tuple[str, int]]) -> str:
    level, line = raw.get("LOG_LEVEL", ("info", 0))
    if level not in LOG_LEVELS:
        raise _err(
            path, line, f"LOG_LEVEL={level!r} is not a level", f"use one of {', '.join(LOG_LEVELS)}"
        )
    return level


def _data_dir(root: Path, path: Path, raw: dict[str, tuple[str, int]]) -> Path:
    """DATA_DIR as given, a relative one taken from the project root."""
    data_value, line = raw["DATA_DIR"]
    if not data_value.strip():
        raise _err(path, line, "DATA_DIR is empty")
    data_dir = Path(data_value)
    return data_dir if data_dir.is_absolute() else root / data_dir


def _env_secrets(
    secrets_path: Path, name: str, process_env: dict[str, str] | None
) -> dict[str, Secret]:
    """The secrets file's values; STAGEFLOW_<ENV>_<KEY> in the process environment wins."""
    secrets = load_secrets(secrets_path)
    for key in SECRET_KEYS:
        env_key = f"STAGEFLOW_{name.upper()}_{key}"
        if process_env and process_env.get(env_key):
            secrets[key] = Secret(process_env[env_key])
    return secrets


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
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
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
        kwargs[key] = value
    return kwargs


def _env_policy(path: Path, name: str, kwargs: dict[str, Any]) -> EnvPolicy:
    """One environment's policy: thresholds, hosts, runtime, backup, releases kept, batch."""
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
                data_dir=os.path.normpath(data_dir) if data_dir else None,
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
    names = [only] if only else list(NAMESPACES)
    envs = {name: load_env(root, name, process_env=process_env) for name in names}
    user = data.get("project", {}).get("service_user", "stageflow")
    if not isinstance(user, str) or not _NAME.match(user):
        raise _err(
            root / "stageflow.toml", None, "[project] service_user must be a plain user name"
        )
    return Project(
        root=root, envs=envs, policies=policies, policy=data, service=service, service_user=user
    )
