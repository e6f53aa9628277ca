"""Service settings, the 12-factor way: read from the process environment alone.

Whoever runs the service puts its settings there (stageflow's launcher loads them from a private
file; compose passes them to the container); the service reads no file of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from app.schema import migration_versions

KNOWN_FEATURES: tuple[str, ...] = ("notes",)
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


class ConfigInvalid(ValueError):
    """A setting the service cannot run with; the message names the key, never its value."""


class Hidden:
    """A secret setting: it prints as [REDACTED] so it cannot leak through a log or repr."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "[REDACTED]"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class Fault:
    """A deliberate failure for rollback tests: healthz-fail-after:N (health fails N seconds
    after the first health request that is not stageflow's smoke probe), error-rate:P or
    latency:MS."""

    kind: str
    value: float


@dataclass(frozen=True, slots=True)
class AppConfig:
    environment: str
    database_url: str = field(repr=False)  # may carry its password: never printed
    redis_url: str = field(repr=False)
    release: str
    commit: str
    app_dir: Path
    features: tuple[str, ...]
    log_level: str
    require_api_key: bool
    rate_limit_per_minute: int
    schema_versions: tuple[int, ...]
    fault: Fault | None = None
    postgres_password: Hidden = field(default_factory=lambda: Hidden(""), repr=False)
    redis_password: Hidden = field(default_factory=lambda: Hidden(""), repr=False)
    api_keys: tuple[Hidden, ...] = field(default=(), repr=False)

    @property
    def migrations_dir(self) -> Path:
        return self.app_dir / "app" / "migrations"

    @property
    def schema_expected(self) -> int:
        """The highest migration version this code tree ships (0 when none)."""
        return self.schema_versions[-1] if self.schema_versions else 0

    @property
    def database_name(self) -> str:
        return database_name(self.database_url)

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, so text leaving the process can be scrubbed of them."""
        values = [self.postgres_password.reveal(), self.redis_password.reveal()]
        values += [unquote(urlsplit(u).password or "") for u in (self.database_url, self.redis_url)]
        values += [k.reveal() for k in self.api_keys]
        return tuple(v for v in values if v)


def database_name(url: str) -> str:
    """The database part of a postgresql:// URL ('' when it names none)."""
    return unquote(urlsplit(url).path.lstrip("/"))


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigInvalid(f"{key} must be true or false")


def _features(raw: str) -> tuple[str, ...]:
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if "all" in names:
        return KNOWN_FEATURES
    return tuple(dict.fromkeys(names))


def _fault(raw: str) -> Fault | None:
    raw = raw.strip()
    if not raw:
        return None
    kind, _, number = raw.partition(":")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if kind == "healthz-fail-after" and value >= 0:
        return Fault(kind, value)
    if kind == "error-rate" and 0 <= value <= 100:
        return Fault(kind, value)
    if kind == "latency" and 0 <= value <= 60_000:
        return Fault(kind, value)
    raise ConfigInvalid(
        "STAGEFLOW_FAULT must be healthz-fail-after:SECONDS, error-rate:PERCENT (0-100) "
        "or latency:MILLISECONDS (0-60000)"
    )


def load_config(environ: Mapping[str, str] | None = None) -> AppConfig:
    """Build the settings; raise ConfigInvalid naming the key when one is unusable."""
    env = dict(os.environ if environ is None else environ)
    database_url = env.get("DATABASE_URL", "").strip()
    redis_url = env.get("REDIS_URL", "").strip()
    for key, url, schemes in (
        ("DATABASE_URL", database_url, ("postgres", "postgresql")),
        ("REDIS_URL", redis_url, ("redis", "rediss", "unix")),
    ):
        if urlsplit(url).scheme not in schemes:
            raise ConfigInvalid(f"{key} must be a {schemes[-1]}:// URL")

    log_level = env.get("LOG_LEVEL", "info").strip().lower() or "info"
    if log_level not in LOG_LEVELS:
        raise ConfigInvalid(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    try:
        rate_limit = int(env.get("API_RATE_LIMIT", "0").strip() or "0")
    except ValueError:
        rate_limit = -1
    if rate_limit < 0:
        raise ConfigInvalid(
            "API_RATE_LIMIT must be a whole number of requests per minute (0 = off)"
        )

    default_app_dir = Path(__file__).resolve().parent.parent
    app_dir = Path(env.get("STAGEFLOW_APP_DIR") or default_app_dir).resolve()
    api_keys = tuple(Hidden(k.strip()) for k in env.get("API_KEYS", "").split(",") if k.strip())
    return AppConfig(
        environment=env.get("ENVIRONMENT", "development").strip() or "development",
        database_url=database_url,
        redis_url=redis_url,
        release=env.get("STAGEFLOW_RELEASE", "").strip() or "unreleased",
        commit=env.get("STAGEFLOW_COMMIT", "").strip() or "unknown",
        app_dir=app_dir,
        features=_features(env.get("FEATURES", "all")),
        log_level=log_level,
        require_api_key=_flag(env, "REQUIRE_API_KEY", False),
        rate_limit_per_minute=rate_limit,
        schema_versions=tuple(migration_versions(app_dir / "app" / "migrations")),
        fault=_fault(env.get("STAGEFLOW_FAULT", "")),
        postgres_password=Hidden(env.get("POSTGRES_PASSWORD", "")),
        redis_password=Hidden(env.get("REDIS_PASSWORD", "")),
        api_keys=api_keys,
    )
