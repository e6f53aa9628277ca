"""The service's settings, the 12-factor way: what its processes get as environment variables.

Committed keys of env/<env>.env, the secrets, complete DATABASE_URL and REDIS_URL with their
credentials, the libpq PG* variables, then the service's own names fed from any of those
([service.env.from]). The values go to the service through a private file its launcher reads,
never on a command line and never into a log.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

from deploy.config import EnvConfig
from deploy.errors import ConfigError
from deploy.service import Service, with_password

# inside a compose project's network the servers answer by service name, on their own ports
CONTAINER_POSTGRES = ("postgres", 5432)
CONTAINER_REDIS = ("redis", 6379)


def application_name(env: str, release: str) -> str:
    """The application name a release's sessions carry (PostgreSQL keeps 63 bytes of it)."""
    return f"stageflow:{env}:{release}"[:63]


def service_settings(env: EnvConfig, service: Service, *, release: str = "") -> dict[str, str]:
    out = dict(env.values)
    out.update({k: s.reveal() for k, s in env.secrets})
    pg_password = env.secret("POSTGRES_PASSWORD")
    redis_password = env.secret("REDIS_PASSWORD")
    pg = pg_password.reveal() if pg_password else ""
    out["DATABASE_URL"] = with_password(env.database_url, pg)
    out["REDIS_URL"] = with_password(
        env.redis_url, redis_password.reveal() if redis_password else ""
    )
    out.update(
        PGHOST=env.database.host,
        PGPORT=str(env.database.port),
        PGDATABASE=env.database.name,
        PGUSER=env.database.user,
    )
    if pg:
        out["PGPASSWORD"] = pg
    if release:
        out["STAGEFLOW_RELEASE"] = release
        # libpq names every session the service opens: the database side can then tell which
        # environment and release a connection came from, whatever the service reports itself
        out["PGAPPNAME"] = application_name(env.name, release)
    for name, source in service.env_from:
        if source in out:
            out[name] = out[source]
    return out


def _moved(url: str, host: str, port: int) -> str:
    """url with its host and port replaced; user, path and query kept."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@{host}:{port}" if user else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def container_settings(env: EnvConfig, service: Service, *, release: str = "") -> dict[str, str]:
    """The service's settings as its container in the compose project sees them: the same keys
    as on the native runtime, with PostgreSQL and Redis reached by service name in the network."""
    (pg_host, pg_port), (rd_host, rd_port) = CONTAINER_POSTGRES, CONTAINER_REDIS
    inner = replace(
        env,
        database_url=_moved(env.database_url, pg_host, pg_port),
        redis_url=_moved(env.redis_url, rd_host, rd_port),
        database=replace(env.database, host=pg_host, port=pg_port),
        redis=replace(env.redis, host=rd_host, port=rd_port),
    )
    return service_settings(inner, service, release=release)


def env_file_text(settings: dict[str, str], *, source: str) -> str:
    """settings as an env file compose reads literally: single-quoted values, which it neither
    interpolates nor unescapes. A value holding a single quote cannot be written so: refused."""
    lines = []
    for key, value in sorted(settings.items()):
        if "'" in value or "\n" in value or "\r" in value:
            raise ConfigError(
                f"{source}: {key} holds a quote or a line break, which compose's env file cannot "
                "carry literally",
                hint=f"choose a value for {key} without single quotes",
            )
        lines.append(f"{key}='{value}'")
    return "\n".join(lines) + "\n"
