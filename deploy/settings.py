"""The service's settings, the 12-factor way: what its processes get as environment variables.

Committed keys of env/<env>.env, the secrets, complete DATABASE_URL and REDIS_URL with their
credentials, the libpq PG* variables, then the service's own names fed from any of those
([service.env.from]). The values go to the service through a private file its launcher reads,
never on a command line and never into a log.
"""

from __future__ import annotations

from deploy.config import EnvConfig
from deploy.service import Service, with_password


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
