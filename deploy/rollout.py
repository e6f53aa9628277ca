"""The deploy pipeline as named steps: guards, lock, build, migrate, start, switch, smoke, record."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import guards, hooks, migrations, notify, releases, rolling, smoke
from deploy.actors import Actor
from deploy.config import EnvConfig, Project
from deploy.errors import DeployError, Frozen, NotApproved, RolledBack, UsageError
from deploy.hosts import Host
from deploy.rolling import HostOutcome as HostOutcome  # re-exported: rollback uses them
from deploy.rolling import RolloutError, Target
from deploy.rolling import switch_hosts as switch_hosts
from deploy.runtime.native import NativeServices
from deploy.state import (
    DeployLock,
    HistoryEntry,
    Layout,
    audit,
    new_id,
    record_history,
    utc_now,
)

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
    # the environment's hosts when it rolls (several hosts, or a remote one); empty otherwise
    targets: list[rolling.Target] = field(default_factory=list)
    outcomes: list[rolling.HostOutcome] = field(default_factory=list)
    hook_notes: list[str] = field(default_factory=list)  # post-hook failures, for history
    runtime: Any = None  # a compose environment's ComposeRuntime (deploy.compose_ops)

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
    if policy.runtime == "compose":
        from deploy import compose_ops

        return compose_ops.plan(proj, name, ref=ref)[0]
    if rolling.is_rolling(proj, name):
        return _rolling_plan(proj, name, ref=ref)
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


def _rolling_plan(proj: Project, name: str, *, ref: str) -> list[tuple[str, str]]:
    env = proj.env(name)
    policy = proj.policies[name]
    todo = rolling.targets(proj, name)
    primary = todo[0]
    groups = rolling.batches([t.name for t in todo], policy.batch)
    order = " | ".join(", ".join(g) for g in groups)
    return [
        ("preflight", "environment guards; servers up; every host answers; not frozen"),
        ("lock", f"mkdir {primary.layout.lock} on {primary.name} (the primary)"),
        (
            "build",
            f"git archive {ref} once; upload, extract and venv on {len(todo)} hosts in parallel",
        ),
        ("backup", f"policy {policy.backup!r}: pg_dump -Fc before migrating"),
        ("migrate", f"pending files of app/migrations on {env.database.name}, once"),
        (
            "rollout",
            f"batch {policy.batch!r}: {order}; per host: /readyz in-process, gunicorn "
            f"x{policy.workers} on <bind>:{env.app_port}, switch, health check; "
            "a failure switches the done hosts back",
        ),
        ("verify", f"{policy.verify_window_s:g}s window over every host"),
        ("record", f"history {primary.layout.history} on {primary.name}"),
        ("prune", f"keep {policy.keep_releases} releases on every host"),
        ("unlock", f"rmdir {primary.layout.lock} on {primary.name}"),
    ]


def _hosts_answer(todo: list[Target]) -> guards.Check:
    """Every host answers over SSH before anything changes: a dead host refuses the deploy."""
    results = rolling.parallel(todo, lambda t: t.host.exists("/"))
    down = [f"{t.name} ({rolling.reason_of(exc)})" for t, _, exc, _ in results if exc]
    if down:
        return guards.Check("hosts", False, f"unreachable: {'; '.join(down)}")
    return guards.Check("hosts", True, f"{len(todo)} hosts answer")


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
    compose = policy.runtime == "compose"
    todo = rolling.targets(proj, name) if rolling.is_rolling(proj, name) and not compose else []
    # the primary host holds the lock and the state files
    layout = todo[0].layout if todo else Layout(str(env.data_dir))
    host = todo[0].host if todo else Host(secrets=env.secret_values())
    ctx = Context(proj, env, actor, host, layout, printer, stop_at=stop_at, targets=todo)
    if compose:  # one compose project on the env's first host, local or SSH
        from deploy import compose_ops

        host, layout = compose_ops.place(proj, name)
        ctx.host, ctx.layout = host, layout
        ctx.runtime = compose_ops.runtime_for(proj, name, host=host, layout=layout)

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
    if not dirty:
        migrations.discover_at_commit(proj.root, commit)  # malformed files: refused, nothing built

    def preflight() -> str:
        checks = guards.run_checks(
            [
                *guards.environment_checks(proj, name, process_env or {}),
                *(
                    [
                        ("engine", lambda: compose_ops.engine_check(ctx.runtime)),
                        ("backup", lambda: compose_ops.backup_check(proj, name)),
                    ]
                    if compose
                    else [("servers", lambda: _services_up(env, proj))]
                ),
                *([("hosts", lambda: _hosts_answer(todo))] if todo else []),
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
    # a failing pre-deploy hook refuses here, before the lock: nothing has changed yet
    hooks.run(
        proj,
        name,
        "pre-deploy",
        {
            "commit": commit,
            "ref": ref,
            "actor": actor,
            "previous": _serving(ctx) or "",
            "status": "starting",
        },
        process_env=process_env,
    )
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
        ctx.previous = _serving(ctx)
        entry.previous = ctx.previous
        record_history(host, layout, entry)
        run = _run_compose if compose else _run_rolling if todo else _run_steps
        run(ctx, commit=commit, ref=ref, dirty=dirty, entry=entry, service_env=service_env)
        entry.status = "success"
    except DeployError as err:
        reverted = isinstance(err, RolloutError) and err.reverted
        entry.status = "rolled-back" if isinstance(err, RolledBack) or reverted else "failed"
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
            point = "post-deploy" if entry.status == "success" else "on-failure"
            results = hooks.run(
                proj,
                name,
                point,
                {
                    **_hook_context(ctx, ctx.release, entry.status),
                    "commit": commit,
                    "ref": ref,
                    "reason": entry.notes[:200],
                },
                process_env=process_env,
            )
            ctx.hook_notes.append(
                hooks.record_failures(host, layout, results, actor=str(actor), history_id=entry.id)
            )
            entry.notes = "; ".join(n for n in [entry.notes, *ctx.hook_notes] if n)
            record_history(host, layout, entry)
            notify.send(
                proj,
                name,
                "auto-rollback" if entry.status == "rolled-back" else "deploy",
                actor=str(actor),
                release=entry.release,
                commit=commit,
                ref=ref,
                status=entry.status,
                details={
                    "kind": kind,
                    "previous": ctx.previous,
                    "history_id": entry.id,
                    "duration_s": entry.duration_s,
                    "notes": entry.notes[:500],
                },
            )
            if ctx.outcomes:  # every host's outcome is kept on the primary, not only printed
                audit(
                    host,
                    layout,
                    actor=str(actor),
                    action="rollout",
                    history_id=entry.id,
                    release=entry.release,
                    status=entry.status,
                    hosts=[o.to_dict() for o in ctx.outcomes],
                )
            ctx.step("unlock", lambda: lock.release())
        for t in todo:
            t.host.close()
    result = {
        "release": entry.release,
        "commit": commit,
        "status": entry.status,
        "duration_s": entry.duration_s,
        "steps": ctx.timings,
        "migrations": ctx.applied,
        "previous": ctx.previous,
        "history_id": entry.id,
    }
    if todo:
        result["hosts"] = [o.to_dict() for o in ctx.outcomes]
    return result


def _serving(ctx: Context) -> str | None:
    """The release serving now: the current symlink, or the running app's image tag (compose)."""
    if ctx.runtime is not None:
        from deploy import compose_ops

        return compose_ops.serving(ctx.runtime)
    return releases.current_release(ctx.host, ctx.layout)


def _run_compose(
    ctx: Context,
    *,
    commit: str,
    ref: str,
    dirty: bool,
    entry: HistoryEntry,
    service_env: dict[str, str] | None,
) -> None:
    from deploy import compose_ops

    compose_ops.run_deploy(
        ctx, commit=commit, ref=ref, dirty=dirty, entry=entry, service_env=service_env
    )


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
    ctx.step("backup", lambda: _backup(ctx, rel, files, entry))
    ctx.step("migrate", lambda: _migrate(ctx, rel, files))
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
            from deploy import verify

            verdict = _verify_window(
                ctx,
                rel,
                lambda window_s: verify.watch(
                    ctx.proj, env.name, release=rel.id, baseline=ctx.previous, window_s=window_s
                ),
                where="",
            )
            if verdict is None:
                return "no verify window"
            if not verdict.ok:
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


def _run_rolling(
    ctx: Context,
    *,
    commit: str,
    ref: str,
    dirty: bool,
    entry: HistoryEntry,
    service_env: dict[str, str] | None,
) -> None:
    """The pipeline over several hosts: build everywhere, migrate once, roll out in batches."""
    env, policy, todo = ctx.env, ctx.proj.policies[ctx.env.name], ctx.targets

    def build() -> str:
        taken = rolling.parallel(todo, lambda t: t.host.listdir(t.layout.releases))
        rid = releases.new_release_id(
            commit, sorted({r for _, rs, _, _ in taken for r in rs or []})
        )
        releases.archive(ctx.proj, commit)  # once, before the threads upload it

        def one(t: Target) -> str:
            t.previous = releases.current_release(t.host, t.layout)
            releases.build(
                ctx.proj, env, t.host, commit=commit, ref=ref, dirty=dirty, layout=t.layout, rid=rid
            )
            releases.write_app_env(t.host, env, t.layout)
            return "built"

        try:
            rolling.on_every_host(
                todo, one, phase="build", subject=rid, hint="fix that host, then deploy again"
            )
        except RolloutError as err:
            ctx.outcomes = list(err.outcomes)
            _print_outcomes(ctx)
            raise
        ctx.release = releases.Release(rid, commit, ref, dirty)
        entry.release = rid
        return f"{rid} on {len(todo)} hosts" + (" (dirty snapshot)" if dirty else "")

    ctx.step("build", build)
    rel = ctx.release
    assert rel is not None
    # the operator machine reads the migrations from its own copy of the commit
    files = migration_files_of(ctx.proj, commit)
    ctx.step("backup", lambda: _backup(ctx, rel, files, entry))
    ctx.step("migrate", lambda: _migrate(ctx, rel, files))

    def deploy_one(t: Target) -> str:
        releases.health_barrier(t.host, env, t.layout, rel, service_env)
        return rolling.switch_one(env, t, rel.id, workers=policy.workers, extra_env=service_env)

    def rollout() -> str:
        ctx.outcomes = rolling.roll(
            env, todo, deploy_one, batch=policy.batch, printer=ctx.printer, release=rel.id
        )
        failed = [o for o in ctx.outcomes if o.status == rolling.FAILED]
        if failed:
            _switch_back(ctx, why=f"{failed[0].host} failed")
            raise RolloutError(
                f"rollout of {rel.id} stopped: {failed[0].host} failed ({failed[0].reason}); "
                f"{rolling.summary(ctx.outcomes)}",
                outcomes=ctx.outcomes,
                hint=f"every host serves its previous release; fix {failed[0].host} and deploy again",
            )
        groups = len(rolling.batches(todo, policy.batch))
        return f"{len(todo)} hosts serve {rel.id} ({groups} batches, batch {policy.batch!r})"

    def verify_step() -> str:
        verdict = _verify_window(
            ctx,
            rel,
            lambda window_s: rolling.watch(
                ctx.proj,
                env.name,
                todo,
                release=rel.id,
                baseline=ctx.previous,
                window_s=window_s,
            ),
            where=" on every host",
        )
        if verdict is None:
            return "no verify window"
        if not verdict.ok:
            _switch_back(ctx, why="verify failed")
            raise RolloutError(
                f"verify failed: {verdict.reason}; {rolling.summary(ctx.outcomes)}",
                outcomes=ctx.outcomes,
                hint="every host serves its previous release again",
            )
        return verdict.summary

    try:
        ctx.step("rollout", rollout)
        ctx.step("verify", verify_step)
    except (VerifyFailed, RolloutError):
        raise
    except Exception:  # anything unexpected once hosts started: the previous release goes back
        if not ctx.outcomes:
            ctx.outcomes = [
                rolling.HostOutcome(
                    t.name,
                    rolling.FAILED if t.started else rolling.SKIPPED,
                    "interrupted",
                    t.previous,
                )
                for t in todo
            ]
        _switch_back(ctx, why="the deploy failed")
        raise
    ctx.step("record", lambda: "history written")

    def prune() -> str:
        def one(t: Target) -> int:
            protect = {rel.id, t.previous} - {None}
            return len(releases.prune(t.host, t.layout, keep=policy.keep_releases, protect=protect))  # type: ignore[arg-type]

        results = rolling.parallel(todo, one)
        missed = [t.name for t, _, exc, _ in results if exc]
        done = sum(n or 0 for _, n, _, _ in results)
        return f"pruned {done} on {len(todo)} hosts" + (
            f"; not pruned on {', '.join(missed)}" if missed else ""
        )

    ctx.step("prune", prune)


def _switch_back(ctx: Context, *, why: str) -> None:
    ctx.outcomes = rolling.switch_back(
        ctx.env,
        ctx.targets,
        ctx.outcomes,
        workers=ctx.proj.policies[ctx.env.name].workers,
        printer=ctx.printer,
        why=why,
    )
    _print_outcomes(ctx)


def _print_outcomes(ctx: Context) -> None:
    ctx.printer(f"{ctx.env.name}: hosts")
    for line in rolling.table(ctx.outcomes):
        ctx.printer(line)


def migration_files_of(proj: Project, commit: str) -> list[migrations.MigrationFile]:
    """The commit's migrations, from the archive built for the hosts (no host is read)."""
    import tarfile
    import tempfile

    tarball = releases.archive(proj, commit)
    with tempfile.TemporaryDirectory(prefix="stageflow-migrations-") as tmp:
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("app/migrations/")]
            tar.extractall(tmp, members=members, filter="data")
        return migrations.discover(Path(tmp) / "app" / "migrations")


def _backup(
    ctx: Context, rel: releases.Release, files: list[migrations.MigrationFile], entry: HistoryEntry
) -> str:
    env, policy = ctx.env, ctx.proj.policies[ctx.env.name]
    password = env.secret("POSTGRES_PASSWORD")
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


def _migrate(ctx: Context, rel: releases.Release, files: list[migrations.MigrationFile]) -> str:
    env = ctx.env
    applied = migrations.migrate(
        conninfo(env),
        files,
        release=rel.id,
        applied_by=str(ctx.actor),
        password=env.secret("POSTGRES_PASSWORD"),
    )
    ctx.applied = [f.version for f in applied]
    results = hooks.run(ctx.proj, env.name, "post-migrate", _hook_context(ctx, rel, "running"))
    ctx.hook_notes.append(
        hooks.record_failures(ctx.host, ctx.layout, results, actor=str(ctx.actor))
    )
    return f"applied {ctx.applied}" if applied else "schema up to date"


def _hook_context(ctx: Context, rel: releases.Release | None, status: str) -> dict[str, Any]:
    return {
        "release": rel.id if rel else "",
        "commit": rel.commit if rel else "",
        "ref": rel.ref if rel else "",
        "actor": ctx.actor,
        "previous": ctx.previous or "",
        "status": status,
    }


def _verify_window(
    ctx: Context, rel: releases.Release, watch: Callable[[float], Any], *, where: str
) -> Any:
    """The verify window's verdict (None when the env has none). With auto_rollback off a trigger
    raises VerifyFailed and the new release keeps serving; otherwise the caller rolls back."""
    policy = ctx.proj.policies[ctx.env.name]
    if policy.verify_window_s <= 0:
        return None
    verdict = watch(policy.verify_window_s)
    if not verdict.ok and not policy.auto_rollback:
        raise VerifyFailed(
            f"verify failed: {verdict.reason}; auto_rollback is off, {rel.id} still serves{where}",
            hint=f"`inv {ctx.env.name}.rollback --level 2` to go back",
        )
    return verdict


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
