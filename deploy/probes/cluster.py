"""Which PostgreSQL cluster an environment's DATABASE_URL reaches, asked of the server itself.

Comparing URLs (policy/guards.isolation) cannot see two addresses that reach one server, or a port
that forwards to another environment's. The cluster's system identifier can: a random number
initdb gave it, the same through every address. The environment's own `up` records it (any role
may read it); every deploy and rollback asks the server again, through the
URL the service gets, and refuses a cluster that is not the one recorded or that another
environment recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from deploy import psql
from deploy.config import EnvConfig, Project
from deploy.errors import ConfigError, ServiceError, clip
from deploy.policy.guards import Check
from deploy.state import Layout

IDENTIFIER_SQL = "SELECT system_identifier::text FROM pg_control_system()"


def record_path(env: EnvConfig) -> Path:
    return Path(Layout(str(env.data_dir)).cluster)


def record(env: EnvConfig, identifier: str) -> None:
    """What `up` saw, mode 0600, replaced whole (a new cluster after a wipe is a new record)."""
    path = record_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"system_identifier": identifier, "port": env.postgres_port}, fh)
    os.replace(tmp, path)


def recorded(env: EnvConfig) -> str | None:
    """The identifier `up` recorded, None before the first `up`; a damaged record is bad input."""
    path = record_path(env)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} cannot be read ({exc.__class__.__name__})",
            hint=f"remove it and run `inv {env.name}.up` to record the cluster again",
        ) from None
    value = data.get("system_identifier") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.isdigit():
        raise ConfigError(
            f"{path} holds no cluster identifier",
            hint=f"remove it and run `inv {env.name}.up` to record the cluster again",
        )
    return value


def reached(env: EnvConfig, *, timeout_s: int = 5) -> str:
    """The identifier of the cluster env's DATABASE_URL reaches, as the environment's role; a
    ServiceError saying why (one line, no secret) when the server cannot be asked. Asked with
    psql where there is one (deploy.psql), with the driver where there is none."""
    if not psql.available():
        return _reached_by_driver(env, timeout_s)
    value = psql.query(
        env.database_url,
        IDENTIFIER_SQL,
        password=env.secret("POSTGRES_PASSWORD"),
        timeout_s=timeout_s,
        application="stageflow-cluster-check",
    )
    if not value.isdigit():
        raise ServiceError(f"the server answered {clip(value, 40)!r}, not a cluster identifier")
    return value


def _reached_by_driver(env: EnvConfig, timeout_s: int) -> str:
    import psycopg

    password = env.secret("POSTGRES_PASSWORD")
    extra = {"password": password.reveal()} if password else {}
    try:
        with psycopg.connect(env.database_url, connect_timeout=timeout_s, **extra) as conn:
            row = conn.execute(IDENTIFIER_SQL).fetchone()
    except psycopg.Error as exc:
        raise ServiceError(exc.__class__.__name__) from None
    return str(row[0]) if row else ""


def check(proj: Project, name: str) -> Check:
    """The environment's URL reaches the cluster its `up` started, and no other's."""
    env = proj.env(name)
    mine = recorded(env)
    if mine is None:
        return Check(
            "cluster", False,
            f"no record of the cluster `inv {name}.up` started: run `inv {name}.up`",
        )  # fmt: skip
    try:
        actual = reached(env)
    except ServiceError as exc:
        return Check(
            "cluster", False,
            f"{name}'s DATABASE_URL cannot say which cluster it reaches "
            f"({exc}): run `inv {name}.up`",
        )  # fmt: skip
    if actual != mine:
        return Check(
            "cluster", False,
            f"{name}'s DATABASE_URL reaches cluster {actual}, not {mine}, the one "
            f"`inv {name}.up` started",
        )  # fmt: skip
    for other in sorted(set(proj.envs) - {name}):
        if recorded(proj.env(other)) == actual:
            return Check("cluster", False, f"{name}'s DATABASE_URL reaches {other}'s cluster")
    return Check("cluster", True, f"cluster {actual} is {name}'s own")
