"""The native runtime's rollback: the plan read from the hosts' release directories and the
migration ledger, and the steps of each level (restart, revert the schema, switch, stop, restore)
on this machine alone or on every host of the group, batch by batch."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from deploy import env_migrations, migrations, releases, scratch
from deploy.clients import redis_client
from deploy.commands import files as filecmd
from deploy.config import EnvConfig, Project
from deploy.engine import group
from deploy.engine.context import Context
from deploy.engine.group import RolloutError, Target
from deploy.engine.rollback_rules import (
    RollbackPlan,
    ToolSchemaPlan,
    backup_for,
    interrupted,
    previous_good,
    schema_plan,
)
from deploy.engine.steps import Step
from deploy.errors import DeployError, GuardRefused, ServiceError, UsageError
from deploy.hosts import Host
from deploy.probes import sessions, smoke
from deploy.runtime import native_hosts
from deploy.runtime.native import NativeServices
from deploy.service import Service
from deploy.state import Layout, history


def _many(ctx: Context) -> bool:
    """Several hosts, or a remote one: each host is driven over SSH and reported on its own."""
    return bool(ctx.runtime.rolling_hosts)


def _host(env: EnvConfig) -> Host:
    return Host(secrets=env.secret_values())


def make_plan(
    proj: Project,
    name: str,
    *,
    level: int,
    to: str | None = None,
    backup_id: str | None = None,
    reset_data: bool = False,
    targets: Sequence[Target] | None = None,
) -> RollbackPlan:
    """Read the environment and decide every change; refuse here, before anything changes.

    targets: the operation's own hosts, primary first, whose connections the plan reads through
    and leaves open for the steps (over SSH each new connection costs a handshake); without
    them the plan opens and closes its own."""
    if targets:
        host, layout = targets[0].host, targets[0].layout
    else:
        host, layout = group.primary(proj, name)  # the plain setting: this machine, DATA_DIR
    try:
        return _make_plan(
            proj,
            name,
            host,
            layout,
            level=level,
            to=to,
            backup_id=backup_id,
            reset_data=reset_data,
            targets=targets,
        )
    finally:
        if not targets and not host.is_local:
            host.close()


def _make_plan(
    proj: Project,
    name: str,
    host: Host,
    layout: Layout,
    *,
    level: int,
    to: str | None,
    backup_id: str | None,
    reset_data: bool,
    targets: Sequence[Target] | None,
) -> RollbackPlan:
    current = releases.current_release(host, layout)
    if current is None:
        raise UsageError(
            f"{name} has no deployed release to roll back",
            hint=f"deploy one with `inv {name}.deploy`",
        )
    entries = history(host, layout)
    dead = interrupted(entries)
    resumes = dead.get("id") if dead and dead.get("kind") == f"rollback-{level}" else None
    p = RollbackPlan(level, name, current, current, resumes=resumes, reset_data=reset_data)
    if level == 1:
        return p
    if level == 2:
        _plan_revert(
            proj, name, host, layout, p, entries, to=to, dead=dead if resumes else None,
            targets=targets,
        )  # fmt: skip
    else:
        if not backup_id and resumes and dead and dead.get("backup"):
            backup_id = str(dead["backup"])
        _plan_restore(proj, name, host, layout, p, entries, backup_id=backup_id, targets=targets)
    return p


def _plan_revert(
    proj: Project,
    name: str,
    host: Host,
    layout: Layout,
    p: RollbackPlan,
    entries: list[dict[str, Any]],
    *,
    to: str | None,
    dead: Mapping[str, Any] | None,
    targets: Sequence[Target] | None,
) -> None:
    """Level 2: the target (--to, the release a killed level 2 was going to, or the previous good
    one) and what the schema must do to serve it; refused when a down file is missing."""
    env, current = proj.env(name), p.current or ""
    existing = (
        _on_every_host(proj, name, targets)
        if group.is_rolling(proj, name)
        else set(releases.list_releases(host, layout))
    )
    p.target = _level2_target(existing, entries, current=current, to=to, dead=dead)
    if proj.service.migrations.kind != "sql":
        _plan_tool_revert(proj, name, host, layout, p)
        return
    files = env_migrations.release_migration_files(proj, host, layout, current)
    target_files = env_migrations.release_migration_files(proj, host, layout, p.target)
    target_version = max((f.version for f in target_files), default=0)
    rows = migrations.status(env.database_url, files, password=env.secret("POSTGRES_PASSWORD"))
    p.schema = schema_plan(
        files, [r.version for r in rows if r.state == "applied"], target_version=target_version
    )
    if p.schema.refused:
        raise GuardRefused(
            f"level 2 cannot go back to {p.target}: {', '.join(p.schema.missing_down)} "
            "has no down file; level 3 (restore) is needed",
            hint=f"`inv {name}.rollback --level 3` restores the backup taken before the deploy",
        )


def _plan_tool_revert(
    proj: Project, name: str, host: Host, layout: Layout, p: RollbackPlan
) -> None:
    """Level 2 when the service's own tool migrates: `down` (run in the serving release, the one
    that knows the newer revisions) to what the target release recorded at its deploy."""
    target = p.target or ""
    serving = env_migrations.MigrationTool(proj, name, host, layout, p.current or "")
    wanted = env_migrations.recorded_revisions(releases.release_meta(host, layout, target))
    p.schema = env_migrations.down_plan(serving, wanted, target=target)
    p.commands = [shlex.join(argv) for argv in p.schema.commands]
    if p.schema.refused:
        raise GuardRefused(
            f"level 2 cannot go back to {target}: {p.schema.refusal}; level 3 (restore) is needed",
            hint=f"`inv {name}.rollback --level 3` restores the backup taken before the deploy",
        )


def _plan_restore(
    proj: Project,
    name: str,
    host: Host,
    layout: Layout,
    p: RollbackPlan,
    entries: list[dict[str, Any]],
    *,
    backup_id: str | None,
    targets: Sequence[Target] | None,
) -> None:
    """Level 3: the backup (--backup, or the one taken before the serving release's deploy) and
    the release it matches, which must still be on every host."""
    from deploy import backup as backups

    current, multi = p.current or "", group.is_rolling(proj, name)
    chosen = (
        backups.find(proj, name, backup_id)
        if backup_id
        else backup_for(entries, backups.list_backups(proj, name), current=current)
    )
    if chosen is None:
        raise GuardRefused(
            f"no backup of {name} was taken before {current}",
            hint=f"list them with `inv {name}.backups`; pick one with --backup ID",
        )
    target = chosen.get("release") or ""
    present = (
        target in _on_every_host(proj, name, targets)
        if multi
        else host.exists(layout.release(target))
    )
    if not target or not present:
        gone = "is missing on some host" if multi else "is gone"
        raise GuardRefused(
            f"backup {chosen['id']} matches release {target or '(none)'}, whose directory {gone}",
            hint="redeploy that release's commit, then restore with --backup ID",
        )
    p.backup, p.target = chosen, target


def order(proj: Project, name: str) -> str:
    """The batches hosts go in, primary first and alone: "a | b, c"."""
    todo = [t.name for t in group.targets(proj, name)]
    groups = group.batches(todo, proj.policies[name].batch)
    return " | ".join(", ".join(g) for g in groups) + f" (batch {proj.policies[name].batch!r})"


def _on_every_host(proj: Project, name: str, targets: Sequence[Target] | None) -> set[str]:
    """The releases present on every host: only those can serve everywhere. Read through the
    operation's targets when given (left open), else through connections of its own (closed)."""
    todo = list(targets) if targets else group.targets(proj, name)
    results = group.parallel(todo, lambda t: releases.list_releases(t.host, t.layout))
    if not targets:
        for t in todo:
            t.host.close()
    down = [f"{t.name} ({group.reason_of(exc)})" for t, _, exc, _ in results if exc]
    if down:
        raise ServiceError(
            f"cannot read the releases of {'; '.join(down)}",
            hint="every host must answer over SSH before a rollback",
        )
    sets = [set(rs or []) for _, rs, _, _ in results]
    return set.intersection(*sets) if sets else set()


def _level2_target(
    existing: set[str],
    entries: Sequence[Mapping[str, Any]],
    *,
    current: str,
    to: str | None,
    dead: Mapping[str, Any] | None,
) -> str:
    if to:
        if to not in existing:
            raise UsageError(
                f"no release {to!r} on this host",
                hint="`inv <env>.history` lists releases; pruned ones cannot come back",
            )
        if to == current:
            raise UsageError(f"{to} is already serving", hint="level 1 restarts it")
        return to
    if dead and dead.get("release") in existing:
        return str(dead["release"])  # finish what the killed rollback started
    target = previous_good(entries, current=current, existing=frozenset(existing))
    if target is None:
        raise GuardRefused(
            f"no previous good release of {current} is left on this host",
            hint="name one with --to RELEASE, or restore with --level 3",
        )
    return target


# -- acting --------------------------------------------------------------------------------------


def retiring_pidfile(layout: Layout, rid: str, pid: int) -> str:
    # still named app-*.pid so running_masters() tracks (and later drains) a master a kill orphaned
    return f"{layout.run}/app-{rid}~{pid}.pid"


def restart_release(
    host: Host,
    env: EnvConfig,
    service: Service,
    layout: Layout,
    rel: releases.Release,
    *,
    workers: int,
    bind: str = "127.0.0.1",
) -> tuple[int | None, int]:
    """A second master of the same release on the shared socket, then drain the first one.

    gunicorn refuses to start while its pidfile names a live master, so the old pidfile moves
    aside first; the listener keeps one accept queue, so no request is lost. The release's
    processes ([service.processes]) stop first and start again with the new master."""
    releases.stop_processes(host, layout, only=rel.id)
    old = releases.running_masters(host, layout).get(rel.id)
    if old:
        host.run(
            filecmd.move(
                releases.master_pidfile(layout, rel.id), retiring_pidfile(layout, rel.id, old)
            )
        )
        started = releases.started_file(layout, rel.id)
        if host.exists(started):  # its record of which process it is goes along
            host.rename(started, releases.started_file(layout, f"{rel.id}~{old}"))
    new = releases.start(host, env, service, layout, rel, workers=workers, bind=bind)
    releases.retire_others(host, layout, keep=rel.id)
    return old, new


def recreate_database(svc: NativeServices, env: EnvConfig) -> None:
    """Drop the env's database (ending its sessions) and create it empty, owned by the app role."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(svc.admin_conninfo(), autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(env.database.name)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(env.database.name), sql.Identifier(env.database.user)
            )
        )


def flush_redis(env: EnvConfig) -> None:
    with redis_client(env, timeout_s=5) as client:
        client.flushdb()


def release_of(host: Host, layout: Layout, rid: str) -> releases.Release:
    meta = releases.release_meta(host, layout, rid) or {}
    return releases.Release(
        rid, meta.get("commit", ""), meta.get("ref", ""), bool(meta.get("dirty"))
    )


def _smoke(env: EnvConfig, proj: Project, rid: str) -> str:
    probes = smoke.run(env, proj.service, expect_release=rid, project=proj)
    bad = smoke.failed(probes)
    if bad:
        raise ServiceError(
            f"smoke failed after the rollback ({bad[0].name}: {bad[0].detail})",
            hint="see the app log; try the next rollback level",
        )
    return f"{len(probes)} probes passed"


def target_release(ctx: Context, p: RollbackPlan) -> releases.Release:
    """The release the level leaves serving, read when a step first needs it."""
    if ctx.release is None:
        ctx.release = release_of(ctx.host, ctx.layout, p.target or "")
    return ctx.release


def _services(ctx: Context) -> NativeServices:
    # PostgreSQL and Redis run on this machine even when the app runs on other hosts
    return NativeServices(ctx.env, user_name=ctx.proj.service_user, host=_host(ctx.env))


def restart_steps(ctx: Context, p: RollbackPlan, details: list[str]) -> list[Step]:
    env, workers = ctx.env, ctx.policy.workers
    steps = [
        Step(
            "services",
            "start PostgreSQL or Redis only if one is down",
            lambda: "; ".join(_services(ctx).restart_unhealthy()) or "postgres and redis healthy",
        )
    ]
    if p.reset_data:
        steps += _reset_steps(ctx, p, details)
    if _many(ctx):
        return [
            *steps,
            Step(
                "restart",
                f"on {order(ctx.proj, env.name)}: a new master of {p.current} (x{workers}) on "
                "each host's shared socket, drain the old one, health check",
                lambda: _restart_hosts(ctx, target_release(ctx, p)),
            ),
        ]
    return [
        *steps,
        Step(
            "restart",
            f"a new master of {p.current} (x{workers}), then drain the old one",
            lambda: _restart_here(ctx, target_release(ctx, p)),
        ),
        Step("smoke", _SMOKE, lambda: _smoke(env, ctx.proj, p.target or "")),
    ]


_SMOKE = "health, ready, version, identity, postgres, redis"


RESET_SUFFIX = "_reset"


def _reset_steps(ctx: Context, p: RollbackPlan, details: list[str]) -> list[Step]:
    """--reset-data: a new database built beside the live one, swapped in only once complete.

    The live database serves until the swap, so a migration or seed that fails leaves the
    previous data in place and the service serving it; the half-built copy is dropped.
    """
    env = ctx.env
    live = env.database.name
    fresh = scratch.on_database(env, live + RESET_SUFFIX)
    name = fresh.database.name
    seed_cmd = ctx.proj.service.seed
    return [
        Step("reset", f"an empty {name} beside {live}, which serves on", lambda: _reset(ctx, name)),
        Step(
            "migrate",
            f"every migration of the serving release, into {name}",
            lambda: _or_drop(ctx, name, lambda: _remigrate(ctx, p, fresh)),
        ),
        Step(
            "seed",
            f"the service's seed command (size small), into {name}"
            if seed_cmd
            else "none: [service] seed is empty",
            lambda: _or_drop(ctx, name, lambda: _seed(ctx, fresh)),
        ),
        Step(
            "swap",
            f"{name} takes {live}'s place in one transaction; flush Redis db {env.redis.db}",
            lambda: _swap_in(ctx, name, details),
        ),
    ]


def _reset(ctx: Context, name: str) -> str:
    svc = _services(ctx)
    scratch.drop(svc, name)  # what a reset that died before its swap left
    scratch.create(svc, name)
    return f"{name} created empty"


def _or_drop(ctx: Context, name: str, fn: Callable[[], str]) -> str:
    """Run a step on the new database; when it fails, drop that database and say the data stay."""
    try:
        return fn()
    except BaseException as exc:
        try:
            scratch.drop(_services(ctx), name)
        except Exception:  # noqa: BLE001 - the first failure is the one to report
            pass
        if isinstance(exc, DeployError):
            exc.hint = f"{ctx.env.database.name} was not touched and still serves; " + (
                exc.hint or "fix the cause and reset again"
            )
        raise


def _swap_in(ctx: Context, name: str, details: list[str]) -> str:
    env = ctx.env
    scratch.swap(_services(ctx), env.database.name, name)
    flush_redis(env)
    details.append("data reset")
    return f"{env.database.name} replaced by the new database; redis db {env.redis.db} flushed"


def _limits(ctx: Context) -> dict[str, Any]:
    """The environment's lock_timeout and statement_timeout, as a deploy's migrations get them:
    a rollback waiting on a lock the service holds would keep the outage going. A rollback has
    no deploy deadline; its migrations end within deploy_timeout_s of starting all the same."""
    deadline = ctx.deadline
    if deadline is None:
        deadline = time.monotonic() + ctx.policy.deploy_timeout_s
    return env_migrations.timeouts(ctx.proj, ctx.env.name, deadline=deadline)


def _remigrate(ctx: Context, p: RollbackPlan, env: EnvConfig | None = None) -> str:
    env, rel = env or ctx.env, target_release(ctx, p)
    kind = ctx.proj.service.migrations.kind
    if kind != "sql":
        return (
            _remigrate_with_tool(ctx, rel.id, env) if kind == "command" else "nothing (kind none)"
        )
    done = migrations.migrate(
        env.database_url,
        env_migrations.release_migration_files(ctx.proj, ctx.host, ctx.layout, rel.id),
        release=rel.id,
        applied_by=str(ctx.actor),
        password=env.secret("POSTGRES_PASSWORD"),
        **_limits(ctx),
    )
    ctx.applied = [f.version for f in done]
    return f"applied {ctx.applied}"


def _remigrate_with_tool(ctx: Context, rid: str, env: EnvConfig) -> str:
    tool = env_migrations.MigrationTool(
        ctx.proj, ctx.env.name, ctx.host, ctx.layout, rid, target=env,
        deadline=_limits(ctx)["deadline"],
    )  # fmt: skip
    change = env_migrations.migrate_command(tool)
    return f"schema {change.describe()}"


def _seed(ctx: Context, env: EnvConfig) -> str:
    from deploy import seed

    if not ctx.proj.service.seed:
        return "skipped: [service] seed is empty"
    result = seed.run(ctx.proj, env, size="small")
    return f"seeded (small) from {result.where}: {result.summary}"


def _restart_here(ctx: Context, rel: releases.Release) -> str:
    sessions.preload()  # smoke's watch of the database sessions opens connections next
    old, new = restart_release(
        ctx.host, ctx.env, ctx.proj.service, ctx.layout, rel, workers=ctx.policy.workers
    )
    return f"master {new} serves {rel.id}" + (f"; drained {old}" if old else "")


def _restart_hosts(ctx: Context, rel: releases.Release) -> str:
    """Level 1 over every host: a new master of the same release on each, batch by batch."""
    sessions.preload()
    env, todo, policy = ctx.env, ctx.targets, ctx.policy

    def restart_one(t: Target) -> str:
        t.previous = rel.id
        old, new = restart_release(
            t.host, env, ctx.proj.service, t.layout, rel, workers=policy.workers, bind=t.bind
        )
        drained = f"; drained {old}" if old else ""
        return (
            f"master {new} serves {rel.id}{drained}; {native_hosts.probe(env, ctx.proj, t, rel.id)}"
        )

    ctx.outcomes = group.roll(
        env.name, todo, restart_one, batch=policy.batch, printer=ctx.printer, release=rel.id
    )
    failed = [o for o in ctx.outcomes if o.status == group.FAILED]
    if failed:
        ctx.print_outcomes()
        raise RolloutError(
            f"restart of {rel.id} stopped: {failed[0].host} failed ({failed[0].reason}); "
            f"{group.summary(ctx.outcomes)}",
            outcomes=ctx.outcomes,
            hint=f"fix {failed[0].host}, then run the same rollback again",
        )
    groups = len(group.batches(todo, policy.batch))
    return f"{len(todo)} hosts restarted {rel.id} ({groups} batches, batch {policy.batch!r})"


def revert_schema(ctx: Context, p: RollbackPlan, details: list[str]) -> str:
    env, schema = ctx.env, p.schema
    assert schema is not None
    if isinstance(schema, ToolSchemaPlan):
        return _revert_with_tool(ctx, p, schema, details)
    if not schema.revert:
        if schema.since:
            details.append(f"schema kept (expand-only {list(schema.since)})")
        return schema.describe()
    # the serving release's files: the target predates the files whose downs must run
    done = migrations.revert(
        env.database_url,
        env_migrations.release_migration_files(ctx.proj, ctx.host, ctx.layout, p.current or ""),
        to_version=schema.target_version,
        release=target_release(ctx, p).id,
        applied_by=str(ctx.actor),
        password=env.secret("POSTGRES_PASSWORD"),
        **_limits(ctx),
    )
    reverted = [f.version for f in done]
    details.append(f"reverted migrations {reverted}")
    return f"reverted {reverted}"


def _revert_with_tool(
    ctx: Context, p: RollbackPlan, schema: ToolSchemaPlan, details: list[str]
) -> str:
    """The plan's `down` commands in the serving release, under the migration lock."""
    if not schema.revert:
        return schema.describe()
    serving = env_migrations.MigrationTool(
        ctx.proj, ctx.env.name, ctx.host, ctx.layout, p.current or "",
        deadline=_limits(ctx)["deadline"],
    )  # fmt: skip
    change = env_migrations.migrate_down(serving, schema)
    details.append(f"schema {change.describe()}")
    return f"schema {change.describe()}"


def switch_steps(ctx: Context, p: RollbackPlan, *, restored: bool) -> list[Step]:
    """Levels 2 and 3 once the data is done: the target release in front on every host."""
    env, layout, workers, target = ctx.env, ctx.layout, ctx.policy.workers, p.target
    ready = f"each worker answering {ctx.proj.service.ready_path} in-process first"
    if _many(ctx):
        how = (
            f"gunicorn x{workers} of {target} on each host's shared socket :{env.app_port}, "
            f"{ready}, in batches, health check; a failing host is left stopped"
            if restored
            else f"on {order(ctx.proj, env.name)}: gunicorn x{workers} of {target} on each "
            f"host's shared socket :{env.app_port}, {ready}, switch, drain {p.current}, health "
            "check; a failure switches the moved hosts back"
        )
        return [Step("switch", how, lambda: _switch_hosts(ctx, p, restored=restored))]
    on = f":{env.app_port}" if restored else f"the shared socket :{env.app_port}"
    drain = "" if restored else f"; drain {p.current}"
    return [
        Step(
            "start",
            f"gunicorn x{workers} of {target} on {on}, {ready}",
            lambda: _start_here(ctx, p),
        ),
        Step(
            "switch", f"{layout.current} -> releases/{target}{drain}", lambda: _switch_here(ctx, p)
        ),
        Step("smoke", _SMOKE, lambda: _smoke(env, ctx.proj, target or "")),
    ]


def _start_here(ctx: Context, p: RollbackPlan) -> str:
    rel = target_release(ctx, p)
    pid = releases.start(
        ctx.host, ctx.env, ctx.proj.service, ctx.layout, rel, workers=ctx.policy.workers
    )
    return releases.started(ctx.host, ctx.layout, rel.id, pid)


def _switch_here(ctx: Context, p: RollbackPlan) -> str:
    rid = target_release(ctx, p).id
    releases.switch(ctx.host, ctx.layout, rid)
    retired = releases.retire_others(ctx.host, ctx.layout, keep=rid)
    return f"serving {rid}" + (f"; drained {', '.join(retired)}" if retired else "")


def _retry(ctx: Context, p: RollbackPlan) -> str:
    return f"fix that host, then `inv {ctx.env.name}.rollback --level {p.level}` again"


def _switch_hosts(ctx: Context, p: RollbackPlan, *, restored: bool) -> str:
    """Switch in batches, the first host alone: each host's workers answer the ready path
    in-process before its master takes a request. Level 2: a failing host sends the
    hosts already moved back to what they served. Level 3 (restored): nothing goes back, because
    the release before the restore expects data that is gone; a failing host is left stopped and
    the freeze stays until a human looks."""
    env, todo, policy, rel = ctx.env, ctx.targets, ctx.policy, target_release(ctx, p)

    def remember(t: Target) -> None:
        # where a failure sends the host back; after a restore there is no such place
        t.previous = None if restored else releases.current_release(t.host, t.layout)

    group.parallel(todo, remember)
    try:
        ctx.outcomes = native_hosts.switch_hosts(
            ctx.proj, env.name, rel.id, hosts=todo, batch=policy.batch, printer=ctx.printer
        )
    except RolloutError as err:
        failed = [o for o in err.outcomes if o.status == group.FAILED]
        culprit = failed[0] if failed else err.outcomes[0]
        if restored:
            ctx.outcomes = list(err.outcomes)
            what = f"{env.name} is restored but {culprit.host} failed to start {rel.id}"
            after = "it stays frozen"
        else:
            ctx.outcomes = native_hosts.switch_back(
                env, ctx.proj, todo, err.outcomes, workers=policy.workers,
                printer=ctx.printer,
                why=f"{culprit.host} failed",
            )  # fmt: skip
            kept = "; the schema stays reverted" if p.schema and p.schema.revert else ""
            what = f"rollback of {env.name} to {rel.id} stopped: {culprit.host} failed"
            after = f"the hosts already moved were switched back{kept}"
        ctx.print_outcomes()
        raise RolloutError(
            f"{what} ({culprit.reason}); {after}; {group.summary(ctx.outcomes)}",
            outcomes=ctx.outcomes,
            hint=_retry(ctx, p).replace("that host", culprit.host),
        ) from None
    groups = len(group.batches(todo, policy.batch))
    return f"{len(todo)} hosts serve {rel.id} ({groups} batches, batch {policy.batch!r})"


def restore(ctx: Context, p: RollbackPlan, details: list[str]) -> str:
    from deploy import backup as backups

    info = p.backup or {}
    recreate_database(_services(ctx), ctx.env)
    done = backups.restore(ctx.proj, ctx.env.name, info["id"], actor=str(ctx.actor))
    details.append(f"restored backup {info['id']}; frozen")
    return f"{info['id']} restored in {done['restore_s']:.2f}s ({backups.schema_label(info)})"
