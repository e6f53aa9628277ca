"""The deploy pipeline as named steps: guards, lock, build, migrate, start, switch, smoke, record."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import guards, migrations, releases, smoke
from deploy.actors import Actor
from deploy.config import EnvConfig, Project
from deploy.errors import DeployError, Frozen, NotApproved, RolledBack, UsageError
from deploy.hosts import Host
from deploy.runtime.native import NativeServices
from deploy.state import DeployLock, HistoryEntry, Layout, new_id, record_history, utc_now

STEPS = (
    "preflight",
    "lock",
    "build",
    "backup",
    "migrate",
    "barrier",
    "start",
    "switch",
    "smoke",
    "verify",
    "record",
    "prune",
    "unlock",
)

Printer = Callable[[str], None]


class VerifyFailed(DeployError):
    """verify found a trigger, and the environment's policy has automatic rollback off."""


def conninfo(env: EnvConfig) -> str:
    return env.database_url


def migration_files(release_dir: str) -> list[migrations.MigrationFile]:
    return migrations.discover(Path(release_dir) / "app" / "migrations")


@dataclass
class Context:
    """What one run of the pipeline knows; steps read and fill it."""

    proj: Project
    env: EnvConfig
    actor: Actor
    host: Host
    layout: Layout
    printer: Printer
    stop_at: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    release: releases.Release | None = None
    previous: str | None = None
    applied: list[int] = field(default_factory=list)
    backup_id: str | None = None
    started_pid: int | None = None
    switched: bool = False

    def step(self, name: str, fn: Callable[[], str | None]) -> None:
        if self.stop_at == name:  # test-only: die here as a SIGKILL would, to prove recovery
            os.kill(os.getpid(), signal.SIGKILL)
        start = time.perf_counter()
        detail = fn()
        took = time.perf_counter() - start
        self.timings[name] = round(took, 3)
        self.printer(f"{self.env.name}: {name:<9} {took:6.2f}s  {detail or 'ok'}")


def plan(proj: Project, name: str, *, ref: str) -> list[tuple[str, str]]:
    """The ordered steps and what each will do, for --dry-run."""
    env = proj.env(name)
    policy = proj.policies[name]
    layout = Layout(str(env.data_dir))
    return [
        ("preflight", "environment guards; servers up; environment not frozen"),
        ("lock", f"mkdir {layout.lock}"),
        ("build", f"git archive {ref} -> {layout.releases}/<id>; venv by lock hash"),
        ("backup", f"policy {policy.backup!r}: pg_dump -Fc before migrating"),
        ("migrate", f"pending files of app/migrations on {env.database.name}"),
        ("barrier", "the new release answers /readyz in-process"),
        ("start", f"gunicorn x{policy.workers} on the shared socket :{env.app_port}"),
        ("switch", f"{layout.current} -> releases/<id>; drain the old master"),
        ("smoke", "health, ready, version, identity, postgres, redis"),
        ("verify", f"{policy.verify_window_s:g}s window against the env's thresholds"),
        ("record", f"history {layout.history}"),
        ("prune", f"keep {policy.keep_releases} releases"),
        ("unlock", f"rmdir {layout.lock}"),
    ]


def _services_up(env: EnvConfig, proj: Project) -> guards.Check:
    down = [s.name for s in NativeServices(env, user_name=proj.service_user).status() if not s.up]
    if down:
        return guards.Check(
            "servers", False, f"{', '.join(down)} not running; run `inv {env.name}.up`"
        )
    return guards.Check("servers", True, "postgres and redis answer")


def _not_frozen(layout: Layout, host: Host) -> guards.Check:
    if host.exists(layout.freeze):
        return guards.Check("frozen", False, "frozen after a level 3 restore")
    return guards.Check("frozen", True, "not frozen")


def deploy(
    proj: Project,
    name: str,
    *,
    actor: Actor,
    ref: str = "HEAD",
    allow_dirty: bool = False,
    printer: Printer = print,
    stop_at: str | None = None,
    kind: str = "deploy",
    process_env: dict[str, str] | None = None,
    notes: str = "",
    extra_checks: list[tuple[str, Callable[[], guards.Check]]] | None = None,
    service_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Carry ref to a healthy, verified release on env `name`; the previous one serves on failure."""
    env = proj.env(name)
    if env.environment == "production" and extra_checks is None:
        raise NotApproved(
            "production deploys only through an approved request",
            hint="inv prod.request --ref REF; inv prod.approve ID; inv prod.deploy --request ID",
        )
    policy = proj.policies[name]
    layout = Layout(str(env.data_dir))
    host = Host(secrets=env.secret_values())
    ctx = Context(proj, env, actor, host, layout, printer, stop_at=stop_at)

    # resolve before any change: a bad ref or a dirty tree is refused here
    commit = releases.resolve_ref(proj.root, ref)
    dirty = False
    if ref == "HEAD" and releases.working_tree_dirty(proj.root):
        if allow_dirty and policy.allow_dirty:
            commit, dirty = releases.snapshot_dirty(proj.root), True
        elif allow_dirty:
            raise UsageError(
                f"--allow-dirty is not allowed on {name}",
                hint="commit your changes; only dev may deploy a dirty tree",
            )
        else:
            printer(
                f"{name}: note: uncommitted changes are not deployed; deploying HEAD {commit[:12]}"
            )

    def preflight() -> str:
        checks = guards.run_checks(
            [
                *guards.environment_checks(proj, name, process_env or {}),
                ("servers", lambda: _services_up(env, proj)),
                ("frozen", lambda: _not_frozen(layout, host)),
                *(extra_checks or []),
            ]
        )
        failed = [c for c in checks if not c.ok]
        if failed and failed[0].name == "frozen":
            raise Frozen(
                f"{name} is frozen after a level 3 restore",
                hint=f"inspect, then `inv {name}.unfreeze --reason TEXT`",
            )
        guards.require(checks)
        return f"{len(checks)} checks passed"

    ctx.step("preflight", preflight)
    lock = DeployLock(host, layout)
    entry = HistoryEntry(
        id=new_id(),
        time=utc_now(),
        env=name,
        release="",
        commit=commit,
        ref=ref,
        actor=str(actor),
        kind=kind,
        status="running",
        notes=notes,
    )
    started = time.perf_counter()
    try:
        ctx.step(
            "lock",
            lambda: (
                lock.acquire(who=str(actor), command=f"{name}.deploy", release=ref)
                or f"held by {actor}"
            ),
        )
        ctx.previous = releases.current_release(host, layout)
        entry.previous = ctx.previous
        record_history(host, layout, entry)
        _run_steps(ctx, commit=commit, ref=ref, dirty=dirty, entry=entry, service_env=service_env)
        entry.status = "success"
    except DeployError as err:
        entry.status = "rolled-back" if isinstance(err, RolledBack) else "failed"
        entry.notes = (entry.notes + " " if entry.notes else "") + err.message[:300]
        raise
    except BaseException as err:
        entry.status = "failed"
        entry.notes = f"{err.__class__.__name__}: {str(err)[:200]}"
        raise
    finally:
        entry.duration_s = round(time.perf_counter() - started, 3)
        entry.release = ctx.release.id if ctx.release else ""
        entry.migrations = ctx.applied
        entry.backup = ctx.backup_id
        if lock.held:
            record_history(host, layout, entry)
            ctx.step("unlock", lambda: lock.release())
    return {
        "release": entry.release,
        "commit": commit,
        "status": entry.status,
        "duration_s": entry.duration_s,
        "steps": ctx.timings,
        "migrations": ctx.applied,
        "previous": ctx.previous,
        "history_id": entry.id,
    }


def _run_steps(
    ctx: Context,
    *,
    commit: str,
    ref: str,
    dirty: bool,
    entry: HistoryEntry,
    service_env: dict[str, str] | None,
) -> None:
    env, host, layout, policy = ctx.env, ctx.host, ctx.layout, ctx.proj.policies[ctx.env.name]

    def build() -> str:
        ctx.release = releases.build(ctx.proj, env, host, commit=commit, ref=ref, dirty=dirty)
        entry.release = ctx.release.id
        return ctx.release.id + (" (dirty snapshot)" if dirty else "")

    ctx.step("build", build)
    rel = ctx.release
    assert rel is not None
    files = migration_files(layout.release(rel.id))
    password = env.secret("POSTGRES_PASSWORD")

    def backup() -> str:
        pending = migrations.pending(conninfo(env), files, password=password)
        wanted = policy.backup == "always" or (policy.backup == "pending-migrations" and pending)
        if not wanted:
            return f"skipped (policy {policy.backup}, {len(pending)} pending)"
        from deploy import backup as backups

        info = backups.take(
            ctx.proj,
            env.name,
            actor=str(ctx.actor),
            release=ctx.previous or "",
            reason=f"before {entry.kind} of {rel.id}",
        )
        ctx.backup_id = info["id"]
        return f"{info['id']} ({info['size_bytes'] / 1e6:.1f} MB)"

    ctx.step("backup", backup)

    def migrate() -> str:
        applied = migrations.migrate(
            conninfo(env), files, release=rel.id, applied_by=str(ctx.actor), password=password
        )
        ctx.applied = [f.version for f in applied]
        return f"applied {ctx.applied}" if applied else "schema up to date"

    ctx.step("migrate", migrate)
    releases.write_app_env(host, env, layout)
    ctx.step(
        "barrier", lambda: releases.health_barrier(host, env, layout, rel, service_env) or "ready"
    )

    def start() -> str:
        ctx.started_pid = releases.start(
            host, env, layout, rel, workers=policy.workers, extra_env=service_env
        )
        return f"master pid {ctx.started_pid}"

    try:
        ctx.step("start", start)

        def switch() -> str:
            releases.switch(host, layout, rel.id)
            ctx.switched = True
            retired = releases.retire_others(host, layout, keep=rel.id)
            return f"serving {rel.id}" + (f"; drained {', '.join(retired)}" if retired else "")

        ctx.step("switch", switch)

        def smoke_step() -> str:
            probes = smoke.run(env, expect_release=rel.id)
            bad = smoke.failed(probes)
            if bad:
                raise RolledBack(f"smoke failed ({bad[0].name}: {bad[0].detail})")
            return f"{len(probes)} probes passed in {sum(p.ms for p in probes):.0f} ms"

        ctx.step("smoke", smoke_step)

        def verify_step() -> str:
            if policy.verify_window_s <= 0:
                return "no verify window"
            from deploy import verify

            verdict = verify.watch(
                ctx.proj,
                env.name,
                release=rel.id,
                baseline=ctx.previous,
                window_s=policy.verify_window_s,
            )
            if not verdict.ok:
                if not policy.auto_rollback:
                    raise VerifyFailed(
                        f"verify failed: {verdict.reason}; auto_rollback is off, "
                        f"{rel.id} still serves",
                        hint=f"`inv {env.name}.rollback --level 2` to go back",
                    )
                raise RolledBack(f"verify failed: {verdict.reason}")
            return verdict.summary

        ctx.step("verify", verify_step)
    except VerifyFailed:
        raise  # the operator chose no automatic rollback: the new release keeps serving
    except RolledBack as err:
        _revert_to_previous(ctx, rel, reason=err.message)
        raise
    except Exception as err:  # any failure after start: the previous release goes back in front
        _revert_to_previous(ctx, rel, reason=getattr(err, "message", err.__class__.__name__))
        raise
    ctx.step("record", lambda: "history written")
    protect = {rel.id, ctx.previous} - {None}
    ctx.step(
        "prune",
        lambda: (
            f"pruned {len(releases.prune(host, layout, keep=policy.keep_releases, protect=protect))}"
        ),
    )  # type: ignore[arg-type]


def _revert_to_previous(ctx: Context, rel: releases.Release, *, reason: str) -> None:
    """Put the previous release back in front of traffic and retire the new one."""
    host, layout, env = ctx.host, ctx.layout, ctx.env
    prev = ctx.previous
    if prev and host.exists(layout.release(prev)):
        meta = releases.release_meta(host, layout, prev) or {}
        prev_rel = releases.Release(prev, meta.get("commit", ""), meta.get("ref", ""))
        releases.start(host, env, layout, prev_rel, workers=ctx.proj.policies[env.name].workers)
        releases.switch(host, layout, prev)
        releases.retire_others(host, layout, keep=prev)
        ctx.printer(f"{env.name}: revert    {prev} serves again ({reason})")
    elif ctx.started_pid:
        releases.retire_others(host, layout, keep="")
        if ctx.switched:
            host.run(["rm", "-f", layout.current], check=False)
        ctx.printer(f"{env.name}: revert    no previous release; {rel.id} stopped ({reason})")
