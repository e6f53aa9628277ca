"""The native runtime for the pipelines: releases as directories with gunicorn masters on a shared
socket, on every host of the environment (this machine alone is a group of one)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from deploy import env_migrations, migrations, releases
from deploy.commands import files as filecmd
from deploy.config import Project
from deploy.engine import group
from deploy.engine.rollback_rules import RollbackPlan
from deploy.engine.steps import Step
from deploy.errors import RolledBack
from deploy.policy import guards
from deploy.probes import cluster, sessions, smoke
from deploy.runtime import native_hosts, native_rollback
from deploy.runtime.native import NativeServices
from deploy.secrets import scrub

if TYPE_CHECKING:
    from deploy.engine.context import Context
    from deploy.runtime.base import CheckFn


def migration_files_of(proj: Project, commit: str) -> list[migrations.MigrationFile]:
    """The commit's migrations, from the archive built for the hosts (no host is read)."""
    return releases.migrations_at_commit(proj, commit)


def services_up(proj: Project, name: str) -> guards.Check:
    """PostgreSQL and Redis of the environment answer (they run on this machine)."""
    env = proj.env(name)
    down = [s.name for s in NativeServices(env, user_name=proj.service_user).status() if not s.up]
    if down:
        return guards.Check(
            "servers", False, f"{', '.join(down)} not running; run `inv {env.name}.up`"
        )
    return guards.Check("servers", True, "postgres and redis answer")


def hosts_answer(todo: list[group.Target]) -> guards.Check:
    """Every host answers over SSH before anything changes: a dead host refuses the operation."""
    results = group.parallel(todo, lambda t: t.host.exists("/"))
    down = [f"{t.name} ({group.reason_of(exc)})" for t, _, exc, _ in results if exc]
    if down:
        return guards.Check("hosts", False, f"unreachable: {'; '.join(down)}")
    return guards.Check("hosts", True, f"{len(todo)} hosts answer")


class NativeRuntime:
    """gunicorn releases on the environment's hosts; PostgreSQL and Redis on this machine."""

    kind = "native"

    def __init__(
        self, proj: Project, name: str, targets: list[group.Target], *, rolling_hosts: bool
    ) -> None:
        self.proj, self.name, self.targets = proj, name, targets
        self.rolling_hosts = rolling_hosts  # several hosts, or a remote one: every host is asked
        self.ctx: Context | None = None
        self._files: list[migrations.MigrationFile] | None = None

    @property
    def reports_hosts(self) -> bool:
        """Results and audit carry one outcome per host when each host is driven on its own."""
        return self.rolling_hosts

    def bind(self, ctx: Context) -> None:
        self.ctx = ctx

    # -- the environment's servers ------------------------------------------------------------

    def _servers(self) -> NativeServices:
        return NativeServices(self.proj.env(self.name), user_name=self.proj.service_user)

    def up(self) -> list[str]:
        return self._servers().up()

    def down(self) -> list[str]:
        return native_hosts.stop_service(self.proj, self.name) + self._servers().down()

    def logs(self, *, tail: int, service: str) -> str:
        """The last lines of the native log files on the primary (secrets scrubbed)."""
        host, layout = self.targets[0].host, self.targets[0].layout
        names = [n for n in host.listdir(layout.logs) if n.endswith(".log")]
        if service:  # app, postgres, redis or a process: each writes <name>.log
            names = [n for n in names if n == f"{service}.log"]
        out = []
        for fname in names:
            lines = (host.read_text(f"{layout.logs}/{fname}") or "").splitlines()[-tail:]
            out += [f"==> {fname} <==", *lines]
        return scrub("\n".join(out), self.proj.env(self.name).secret_values())

    def take_backup(self, *, actor: str, release: str, reason: str) -> dict[str, Any]:
        from deploy import backup as backups

        return backups.take(self.proj, self.name, actor=actor, release=release, reason=reason)

    def list_backups(self) -> list[dict[str, Any]]:
        from deploy import backup as backups

        return backups.list_backups(self.proj, self.name)

    def remove_backups(self, ids: list[str]) -> None:
        from deploy import backup as backups

        backups.remove(self.proj, self.name, ids)

    def verify_backup(self, backup_id: str) -> dict[str, Any]:
        from deploy import backup as backups

        return backups.verify_backup(self.proj, self.name, backup_id)

    def servers_status(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """PostgreSQL and Redis as `status` shows them, and the service on every host."""
        env = self.proj.env(self.name)
        st = {s.name: s for s in self._servers().status()}
        servers = {
            "postgres": {
                "up": st["postgres"].up,
                "port": env.postgres_port,
                "pid": st["postgres"].pid,
            },
            "redis": {"up": st["redis"].up, "port": env.redis_port, "pid": st["redis"].pid},
        }
        return servers, native_hosts.service_status(self.proj, self.name)

    # -- reading ------------------------------------------------------------------------------

    def checks(self) -> list[CheckFn]:
        ctx = self.ctx
        assert ctx is not None
        out: list[CheckFn] = [
            ("servers", lambda: services_up(ctx.proj, ctx.env.name)),
            ("cluster", lambda: cluster.check(ctx.proj, ctx.env.name)),
        ]
        if self.rolling_hosts:
            out.append(("hosts", lambda: hosts_answer(self.targets)))
        return out

    def probe_serving(self) -> list[smoke.Probe]:
        return native_hosts.probe_serving(self.proj, self.name)

    def serving(self) -> str | None:
        primary = self.targets[0]
        return releases.current_release(primary.host, primary.layout)

    def describe(self, ctx: Context, ref: str) -> dict[str, str]:
        env, policy, layout = ctx.env, ctx.policy, ctx.layout
        many = len(self.targets) > 1
        where = f" on {self.targets[0].name} (the primary)" if self.rolling_hosts else ""
        order = " | ".join(
            ", ".join(t.name for t in g) for g in group.batches(self.targets, policy.batch)
        )
        return {
            "preflight": "environment guards; servers up; "
            + ("every host answers; " if self.rolling_hosts else "")
            + "not frozen",
            "lock": f"mkdir {layout.lock}{where}",
            "build": (
                f"git archive {ref} once; upload, extract and venv on {len(self.targets)} hosts "
                "in parallel"
                if self.rolling_hosts
                else f"git archive {ref} -> {layout.releases}/<id>; venv by requirements hash"
            ),
            "backup": f"policy {policy.backup!r}: pg_dump -Fc before migrating",
            "migrate": migrate_does(ctx.proj, env.database.name)
            + (", once" if self.rolling_hosts else ""),
            "rollout": f"batch {policy.batch!r}: {order}; per host: gunicorn x{policy.workers} on "
            f"<bind>:{env.app_port}, each worker answering {ctx.proj.service.ready_path} "
            "in-process first, switch, health check; "
            "a failure switches the done hosts back",
            "verify": f"{policy.verify_window_s:g}s window "
            + ("over every host" if many else "against the env's thresholds"),
            "prune": f"keep {policy.keep_releases} releases" + (" on every host" if many else ""),
        }

    def dry_run_commands(self, ctx: Context, ref: str) -> list[str]:
        return []

    # -- acting -------------------------------------------------------------------------------

    def build(self, ctx: Context, *, commit: str, ref: str, dirty: bool) -> tuple[Any, str]:
        taken = group.parallel(self.targets, lambda t: t.host.listdir(t.layout.releases))
        rid = releases.new_release_id(
            commit, sorted({r for _, rs, _, _ in taken for r in rs or []})
        )
        releases.archive(ctx.proj, commit)  # once, before the threads upload it

        def one(t: group.Target) -> str:
            t.previous = releases.current_release(t.host, t.layout)
            releases.build(
                ctx.proj,
                ctx.env,
                t.host,
                commit=commit,
                ref=ref,
                dirty=dirty,
                layout=t.layout,
                rid=rid,
            )
            return "built"

        on_every_host(ctx, one, phase="build", subject=rid, hint="fix that host, then deploy again")
        rel = releases.Release(rid, commit, ref, dirty)
        if len(self.targets) == 1:
            return rel, rid
        return rel, f"{rid} on {len(self.targets)} hosts"

    def _migration_files(self, ctx: Context) -> list[migrations.MigrationFile]:
        if self._files is None:
            self._files = migration_files_of(ctx.proj, ctx.built.commit)
        return self._files

    def pending(self, ctx: Context) -> list[int] | list[str]:
        env, kind = ctx.env, ctx.proj.service.migrations.kind
        if kind == "command":  # the tool keeps its own books: what changed since the serving one
            prev = ctx.previous
            rel = native_rollback.release_of(ctx.host, ctx.layout, prev) if prev else None
            return env_migrations.pending_by_changes(
                ctx.proj, rel.commit if rel else None, ctx.built.commit, first=rel is None
            )
        if kind == "none":
            return []
        return migrations.pending_of(self._migration_files(ctx), env_migrations.ledger_rows(env))

    def backup(self, ctx: Context, *, reason: str) -> dict[str, Any]:
        return self.take_backup(actor=str(ctx.actor), release=ctx.previous or "", reason=reason)

    def migrate(self, ctx: Context) -> list[int] | list[str]:
        env, kind = ctx.env, ctx.proj.service.migrations.kind
        if kind == "command":
            return migrate_with_tool(ctx, self.targets)
        if kind == "none":
            return []
        files, password = self._migration_files(ctx), env.secret("POSTGRES_PASSWORD")
        rows = env_migrations.ledger_rows(env)
        if not migrations.pending_of(files, rows):
            # nothing to apply: the engine's checks on the rows, without its session and lock
            migrations.validate_rows(files, rows)
            return []
        applied = migrations.migrate(
            env.database_url,
            files,
            release=ctx.built.id,
            applied_by=str(ctx.actor),
            password=password,
            **env_migrations.timeouts(ctx.proj, env.name, deadline=ctx.deadline),
        )
        return [f.version for f in applied]

    def host_steps(self, ctx: Context, target: group.Target) -> list[Step]:
        env, policy = ctx.env, ctx.policy
        on = f" on {target.name}" if len(self.targets) > 1 else ""
        ready = ctx.proj.service.ready_path
        return [
            Step(
                "start",
                f"gunicorn x{policy.workers} on the shared socket :{env.app_port}{on}; each "
                f"worker answers {ready} in-process before it accepts a request"
                + _processes_line(ctx.proj),
                lambda: _start(ctx, target),
            ),
            Step(
                "switch",
                f"{target.layout.current} -> releases/<id>; drain the old master",
                lambda: _switch(ctx, target),
            ),
            Step(
                "smoke",
                "health, ready, version, identity, postgres, redis",
                lambda: _smoke(ctx, target),
            ),
        ]

    def revert(self, ctx: Context, target: group.Target) -> str | None:
        t = target
        if t.previous and t.host.exists(t.layout.release(t.previous)):
            native_hosts.switch_one(
                ctx.env, ctx.proj, t, t.previous, workers=ctx.policy.workers, check=False
            )
            return t.previous
        releases.retire_others(t.host, t.layout, keep="")
        if t.switched:
            t.host.run(filecmd.remove(t.layout.current), check=False)
        return None

    def watch(self, ctx: Context, *, window_s: float) -> Any:
        return native_hosts.watch(
            ctx.proj,
            ctx.env.name,
            self.targets,
            release=ctx.built.id,
            baseline=ctx.previous,
            window_s=window_s,
        )

    def prune(self, ctx: Context) -> str:
        keep, rid = ctx.policy.keep_releases, ctx.built.id

        def one(t: group.Target) -> int:
            protect = {rid, t.previous} - {None}
            return len(releases.prune(t.host, t.layout, keep=keep, protect=protect))  # type: ignore[arg-type]

        results = group.parallel(self.targets, one)
        done = sum(n or 0 for _, n, _, _ in results)
        if len(self.targets) == 1:
            return f"pruned {done}"
        missed = [t.name for t, _, exc, _ in results if exc]
        return f"pruned {done} on {len(self.targets)} hosts" + (
            f"; not pruned on {', '.join(missed)}" if missed else ""
        )

    # -- rollback -----------------------------------------------------------------------------

    def refuse_rollback(self, ctx: Context, *, level: int, reset_data: bool) -> None:
        return None  # every level and --reset-data are the native runtime's

    def rollback_checks(self, level: int, *, dry_run: bool) -> list[CheckFn]:
        ctx = self.ctx
        assert ctx is not None
        out: list[CheckFn] = []
        if level > 1:  # level 1 brings servers back itself; 2 and 3 read the ledger first
            out.append(("servers", lambda: services_up(ctx.proj, ctx.env.name)))
            out.append(("cluster", lambda: cluster.check(ctx.proj, ctx.env.name)))
        if self.rolling_hosts:
            out.append(("hosts", lambda: hosts_answer(self.targets)))
        return out

    def rollback_plan(
        self,
        ctx: Context,
        *,
        level: int,
        to: str | None,
        backup_id: str | None,
        reset_data: bool,
        dry_run: bool,
    ) -> RollbackPlan:
        return native_rollback.make_plan(
            ctx.proj,
            ctx.env.name,
            level=level,
            to=to,
            backup_id=backup_id,
            reset_data=reset_data,
            targets=ctx.targets,
        )

    def rollback_does(self, ctx: Context, p: RollbackPlan) -> dict[str, str]:
        env, many = ctx.env, self.rolling_hosts
        order = native_rollback.order(ctx.proj, env.name) if many else ""
        info = p.backup or {}
        return {
            "schema": (p.schema.describe() if p.schema else "")
            + (" (once, from this machine)" if many else ""),
            "freeze": f"write {ctx.layout.freeze}{' on the primary' if many else ''}: deploys "
            "refused until unfreeze",
            "stop": f"stop the service on every host: {order}"
            if many
            else "stop the service's masters and listener",
            "restore": f"drop and recreate {env.database.name}; pg_restore {info.get('id')}",
        }

    def restart_steps(self, ctx: Context, p: RollbackPlan, details: list[str]) -> list[Step]:
        return native_rollback.restart_steps(ctx, p, details)

    def revert_schema(self, ctx: Context, p: RollbackPlan, details: list[str]) -> str:
        return native_rollback.revert_schema(ctx, p, details)

    def switch_steps(self, ctx: Context, p: RollbackPlan, *, restored: bool) -> list[Step]:
        return native_rollback.switch_steps(ctx, p, restored=restored)

    def stop_service(self, ctx: Context, p: RollbackPlan) -> str:
        return "; ".join(native_hosts.stop_service(ctx.proj, ctx.env.name)) or "not running"

    def restore(self, ctx: Context, p: RollbackPlan, details: list[str]) -> str:
        return native_rollback.restore(ctx, p, details)

    def check_rollback_target(self, ctx: Context, p: RollbackPlan) -> None:
        return None  # make_plan already found the target's release directory on every host

    def release_of(self, ctx: Context, rid: str) -> releases.Release:
        return native_rollback.release_of(ctx.host, ctx.layout, rid)

    def audit_extra(self, ctx: Context) -> dict[str, Any]:
        return {"hosts": [o.to_dict() for o in ctx.outcomes]} if ctx.outcomes else {}


def _processes_line(proj: Project) -> str:
    names = [name for name, _ in proj.service.processes]
    if not names:
        return ""
    return (
        f"; then {', '.join(names)} from the release's venv, each up until it waits for work "
        f"({releases.PROCESS_SETTLE_S:g}s at least, {releases.PROCESS_SETTLE_MAX_S:g}s at most)"
    )


def migrate_does(proj: Project, database: str) -> str:
    m = proj.service.migrations
    if m.kind == "command":
        return f"`{shlex.join(m.up)}` in the release's venv on {database}, under the migration lock"
    if m.kind == "none":
        return "nothing (migrations kind none)"
    return f"pending files of {proj.service.repo_path(m.dir)} on {database}"


def migrate_with_tool(ctx: Context, targets: list[group.Target]) -> list[str]:
    """The service's `up` once, on the primary, between two `current`s; both revisions go into
    the release's RELEASE.json on every host and into history's notes."""
    primary = targets[0]
    tool = env_migrations.MigrationTool(
        ctx.proj, ctx.env.name, primary.host, primary.layout, ctx.built.id, deadline=ctx.deadline
    )
    serving = (
        releases.release_meta(primary.host, primary.layout, ctx.previous) if ctx.previous else None
    )
    unchanged = env_migrations.unchanged_schema(
        ctx.proj, serving, ctx.built.commit, dirty=ctx.built.dirty
    )
    change = env_migrations.migrate_command(tool, unchanged_from=unchanged)
    for t in targets:
        releases.update_meta(t.host, t.layout, ctx.built.id, **change.meta())
    ctx.hook_notes.append(f"schema {change.describe()}")
    return [change.describe()] if change.changed else []


def on_every_host(ctx: Context, fn: Any, *, phase: str, subject: str, hint: str) -> None:
    """A step that must pass on every host before anything switches. A group of one raises the
    host's own error; a larger group one RolloutError carrying every host's outcome."""
    if len(ctx.targets) == 1:
        fn(ctx.targets[0])
        return
    try:
        group.on_every_host(ctx.targets, fn, phase=phase, subject=subject, hint=hint)
    except group.RolloutError as err:
        ctx.outcomes = list(err.outcomes)
        ctx.print_outcomes()
        raise


def _start(ctx: Context, t: group.Target) -> str:
    t.started = True
    sessions.preload()  # smoke's watch of the database sessions opens connections next
    pid = releases.start(
        t.host,
        ctx.env,
        ctx.proj.service,
        t.layout,
        ctx.built,
        workers=ctx.policy.workers,
        bind=t.bind,
    )
    return releases.started(t.host, t.layout, ctx.built.id, pid)


def _switch(ctx: Context, t: group.Target) -> str:
    rid = ctx.built.id
    releases.switch(t.host, t.layout, rid)
    t.switched = True
    retired = releases.retire_others(t.host, t.layout, keep=rid)
    return f"serving {rid}" + (f"; drained {', '.join(retired)}" if retired else "")


def _smoke(ctx: Context, t: group.Target) -> str:
    probes = smoke.run(
        ctx.env, ctx.proj.service, expect_release=ctx.built.id, host=t.bind, project=ctx.proj
    )
    bad = smoke.failed(probes)
    if bad:
        raise RolledBack(
            f"smoke failed ({bad[0].name}: {bad[0].detail})", hint=smoke.failure_hint(bad[0])
        )
    return f"{len(probes)} probes passed in {sum(p.ms for p in probes):.0f} ms"
