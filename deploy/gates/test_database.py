"""`[gates.test] database = true`: the test command gets a PostgreSQL database of its own.

A throwaway cluster (the migrations gate's), its empty database migrated with the service's own
`up` (or stageflow's engine for SQL files), and the names a deploy feeds pointed at it:
`DATABASE_URL`, `PG*` and the names `[service.env.from]` maps (`POSTGRES_SERVER`...). The
service's declared secrets the shell does not set get throwaway values, and `REDIS_URL` an empty
Redis of the cluster's own. Tests that empty their
tables between runs never reach a database the operator's shell points at; the cluster is
stopped and deleted whatever happened.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

from deploy import migrations
from deploy.config import libpq_variables
from deploy.errors import ConfigError, MigrationError
from deploy.gates import GateContext, python_first, run_command, scratch_cluster
from deploy.service import Migrations, load_service


def wanted(ctx: GateContext) -> bool:
    """[gates.test] database: true gives the tests a database of their own."""
    value = ctx.config.get("database", False)
    if not isinstance(value, bool):
        raise ConfigError(
            f"[gates.test] database = {value!r} must be true or false",
            hint="true gives the test command a migrated PostgreSQL database of its own",
        )
    return value


def _env(ctx: GateContext, cluster: scratch_cluster.ScratchCluster, base: Mapping[str, str]):
    """base without the operator's libpq variables, with the fed names at the scratch database."""
    env = {k: v for k, v in base.items() if k not in libpq_variables(base)}
    env.update(cluster.tool_env())
    # the scratch cluster's own empty Redis: tests that flush it never reach the shell's
    if "service" in ctx.policy:
        service = load_service(Path("stageflow.toml"), dict(ctx.policy))
        env.update({k: token_urlsafe(24) for k in service.secret_keys if k not in env})
        env.update({name: env[src] for name, src in service.env_from if src in env})
    return env


def _migrations(ctx: GateContext) -> tuple[Migrations, str]:
    if "service" not in ctx.policy:
        return Migrations(kind="sql"), "."
    service = load_service(Path("stageflow.toml"), dict(ctx.policy))
    return service.migrations, service.dir


def _migrate(ctx: GateContext, cluster: Any, env: Mapping[str, str]) -> str:
    """Bring the empty database to the commit's schema; what ran, for the report."""
    m, service_dir = _migrations(ctx)
    if m.kind == "none":
        return "no migrations"
    if m.kind == "sql":
        files = migrations.discover(ctx.tree / service_dir / m.dir)
        applied = migrations.migrate(cluster.conninfo(), files, password=cluster.password)
        return f"{len(applied)} SQL migration(s) applied"
    done = run_command(
        python_first(ctx, m.up),
        cwd=ctx.tree / service_dir,
        env=env,
        timeout_s=ctx.timeout_s,
        secrets=(cluster.password, cluster.url()),
        tool_hint="the service's up command ([service.migrations]); install the service's "
        "requirements into this venv",
    )
    if not done.ok:
        from deploy.releases import raised_in

        said = raised_in(done.lines()) or (done.lines() or ["no output"])[-1]
        raise MigrationError(
            f"the test database: `{' '.join(m.up)}` exited {done.exit_code}: {said[:300]}",
            hint="the tests need the schema its migrations make; fix them, or set "
            "[gates.test] database = false",
        )
    return f"`{' '.join(m.up)}` applied"


@contextmanager
def database(ctx: GateContext, base: Mapping[str, str]) -> Iterator[tuple[dict[str, str], str]]:
    """(the test command's environment, what migrated the database) for one run."""
    user = str(ctx.policy.get("project", {}).get("service_user", "stageflow"))
    with scratch_cluster.started(user_name=user, timeout_s=ctx.timeout_s) as cluster:
        env = _env(ctx, cluster, base)
        yield env, _migrate(ctx, cluster, env)
