"""The one deploy pipeline: the same steps for every runtime and any number of hosts.

preflight, lock, build, backup, migrate, the rollout over the group, verify, record, prune, unlock.
The runtime says how each is done; this module says in what order, what a failure sends back, and
what is recorded. A group of one host walks that host's steps (start, switch, smoke for the
native runtime) as steps of the pipeline; a larger group runs them per host inside one `rollout`
step, batch by batch behind the first-host barrier. The dry run prints the very list the run walks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from deploy import hooks, notify, releases
from deploy.config import Project
from deploy.engine import group
from deploy.engine.context import Context, Printer
from deploy.engine.runtimes import runtime_for
from deploy.engine.steps import Step, rows
from deploy.errors import DeployError, Frozen, NotApproved, RolledBack, UsageError, VerifyFailed
from deploy.policy import contract, guards
from deploy.policy.actors import Actor
from deploy.state import HistoryEntry, audit, new_id, record_history, utc_now

# the steps a deploy of a single-host native environment walks, in order
STEPS = (
    "preflight",
    "lock",
    "build",
    "backup",
    "migrate",
    "start",
    "switch",
    "smoke",
    "verify",
    "record",
    "prune",
    "unlock",
)


# -- the plan ---------------------------------------------------------------------------------------


def steps(ctx: Context, *, commit: str, ref: str, dirty: bool, entry: HistoryEntry) -> list[Step]:
    """Every step of one deploy, in order: the dry run prints these, the run walks them."""
    rt, lock = ctx.runtime, ctx.lock
    does = rt.describe(ctx, ref)
    return [
        Step("preflight", does["preflight"], lambda: _preflight(ctx, commit)),
        Step("lock", does["lock"], lambda: _lock(ctx, lock, ref)),
        Step(
            "build", does["build"], lambda: _build(ctx, entry, commit=commit, ref=ref, dirty=dirty)
        ),
        Step("backup", does["backup"], lambda: _backup(ctx, entry.kind)),
        Step("migrate", does["migrate"], lambda: _migrate(ctx)),
        *_rollout_steps(ctx, does),
        Step("verify", does["verify"], lambda: _verify(ctx)),
        Step("record", f"history {ctx.layout.history}", lambda: "history written"),
        Step("prune", does["prune"], lambda: rt.prune(ctx)),
        Step("unlock", f"rmdir {ctx.layout.lock}", lambda: lock.release()),
    ]


def _rollout_steps(ctx: Context, does: dict[str, str]) -> list[Step]:
    if len(ctx.targets) == 1:  # a group of one: the host's own steps are the pipeline's
        return ctx.runtime.host_steps(ctx, ctx.targets[0])
    return [Step("rollout", does["rollout"], lambda: _roll(ctx))]


def plan(proj: Project, name: str, *, ref: str, actor: str = "<actor>") -> dict[str, Any]:
    """The dry run: every step and, where known in advance, the exact commands; runs nothing."""
    commit = releases.resolve_ref(proj.root, ref)
    ctx = _context(proj, name, actor=Actor(actor, "human"), printer=print)
    try:
        entry = HistoryEntry(
            id="", time="", env=name, release="", commit=commit, ref=ref, actor=actor,
            kind="deploy", status="planned",
        )  # fmt: skip
        walked = steps(ctx, commit=commit, ref=ref, dirty=False, entry=entry)
        return {"steps": rows(walked), "commands": ctx.runtime.dry_run_commands(ctx, ref)}
    finally:
        ctx.close()


# -- the run ----------------------------------------------------------------------------------------


def deploy(
    proj: Project,
    name: str,
    *,
    actor: Actor,
    ref: str = "HEAD",
    allow_dirty: bool = False,
    printer: Printer = print,
    kind: str = "deploy",
    process_env: dict[str, str] | None = None,
    notes: str = "",
    extra_checks: list[tuple[str, Callable[[], guards.Check]]] | None = None,
) -> dict[str, Any]:
    """Carry ref to a healthy, verified release on env `name`; the previous one serves on failure."""
    env = proj.env(name)
    if env.environment == "production" and extra_checks is None:
        raise NotApproved(
            "production deploys only through an approved request",
            hint="inv prod.request --ref REF; inv prod.approve ID; inv prod.deploy --request ID",
        )
    ctx = _context(proj, name, actor=actor, printer=printer)
    ctx.process_env = process_env or {}
    ctx.extra_checks = extra_checks or []
    try:
        commit, dirty = _resolve(ctx, ref, allow_dirty=allow_dirty)
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
        walked = steps(ctx, commit=commit, ref=ref, dirty=dirty, entry=entry)
        _run(ctx, walked, entry)
    finally:
        ctx.close()
    return _result(ctx, entry)


def _context(proj: Project, name: str, *, actor: Actor, printer: Printer) -> Context:
    runtime, targets = runtime_for(proj, name)
    primary = targets[0]
    ctx = Context(proj, proj.env(name), actor, primary.host, primary.layout, printer)
    ctx.targets, ctx.runtime = targets, runtime
    runtime.bind(ctx)
    return ctx


def _resolve(ctx: Context, ref: str, *, allow_dirty: bool) -> tuple[str, bool]:
    """The commit to deploy, refused here (before any change) when the ref or tree is bad."""
    proj, name = ctx.proj, ctx.env.name
    commit = releases.resolve_ref(proj.root, ref)
    if ref == "HEAD" and releases.working_tree_dirty(proj.root):
        if allow_dirty and ctx.policy.allow_dirty:
            return releases.snapshot_dirty(proj.root), True
        if allow_dirty:
            raise UsageError(
                f"--allow-dirty is not allowed on {name}",
                hint="commit your changes; only dev may deploy a dirty tree",
            )
        ctx.printer(
            f"{name}: note: uncommitted changes are not deployed; deploying HEAD {commit[:12]}"
        )
    releases.migrations_at_commit(proj, commit)  # malformed files: refused, nothing built
    return commit, False


def _run(ctx: Context, walked: list[Step], entry: HistoryEntry) -> None:
    """Walk the steps inside the lifecycle: the pre-deploy hook after preflight, history from the
    lock on, and whatever happens the post hooks, history, notification, audit and unlock."""
    first, lock_step, *body, unlock_step = walked
    ctx.walker.walk([first])
    ctx.previous = ctx.runtime.serving()  # for the hook; read again under the lock below
    # a failing pre-deploy hook refuses here, before the lock: nothing has changed yet
    hooks.run(
        ctx.proj,
        ctx.env.name,
        "pre-deploy",
        {**ctx.hook_context("starting"), "commit": entry.commit, "ref": entry.ref},
        process_env=ctx.process_env,
    )
    started = time.perf_counter()
    lock = ctx.lock
    try:
        ctx.walker.walk([lock_step])
        ctx.previous = entry.previous = ctx.runtime.serving()
        record_history(ctx.host, ctx.layout, entry)
        _walk_body(ctx, body)
        entry.status = "success"
    except DeployError as err:
        reverted = isinstance(err, group.RolloutError) and err.reverted
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
        entry.migrations, entry.backup = ctx.applied, ctx.backup_id
        if lock.held:
            _close_out(ctx, entry)
            ctx.walker.walk([unlock_step])


def _within_deadline(ctx: Context, step: Step) -> Step:
    """step, refused when the deploy's timeout has passed: the deploy stops there, fails closed."""

    def run() -> str | None:
        if ctx.deadline is not None and time.monotonic() >= ctx.deadline:
            raise DeployError(
                f"the deploy ran past deploy_timeout_s={ctx.policy.deploy_timeout_s:g} "
                f"before {step.name}",
                hint="find the slow step in the output above; raise deploy_timeout_s if it is "
                "expected",
            )
        return step.run()

    return Step(step.name, step.does, run)


def _walk_body(ctx: Context, body: list[Step]) -> None:
    """build .. prune; once a host started the new release, any failure sends every started host
    back to what it served (unless verify failed with auto_rollback off)."""
    ctx.deadline = time.monotonic() + ctx.policy.deploy_timeout_s
    # once verified, recording and pruning finish whatever the clock says
    body = [s if s.name in ("record", "prune") else _within_deadline(ctx, s) for s in body]
    try:
        ctx.walker.walk(body)
    except VerifyFailed:
        raise  # the operator chose no automatic rollback: the new release keeps serving
    except group.RolloutError:
        raise  # the group already sent its hosts back, host by host
    except Exception as err:
        if not any(t.started for t in ctx.targets):
            raise
        reason = getattr(err, "message", err.__class__.__name__)
        back = _send_back(ctx, reason=reason)
        if back and not isinstance(err, RolledBack):
            # the failure's own advice where it has some (a setting to give, a path to fix)
            hint = getattr(err, "hint", None) or f"inspect with `inv {ctx.env.name}.logs`"
            raise RolledBack(f"{reason}; {back} serves again", hint=hint) from None
        raise


def _close_out(ctx: Context, entry: HistoryEntry) -> None:
    proj, name, actor = ctx.proj, ctx.env.name, str(ctx.actor)
    point = "post-deploy" if entry.status == "success" else "on-failure"
    results = hooks.run(
        proj,
        name,
        point,
        {
            **ctx.hook_context(entry.status),
            "commit": entry.commit,
            "ref": entry.ref,
            "reason": entry.notes[:200],
        },
        process_env=ctx.process_env,
    )
    ctx.hook_notes.append(
        hooks.record_failures(ctx.host, ctx.layout, results, actor=actor, history_id=entry.id)
    )
    entry.notes = "; ".join(n for n in [entry.notes, *ctx.hook_notes] if n)
    record_history(ctx.host, ctx.layout, entry)
    notify.send(
        proj,
        name,
        "auto-rollback" if entry.status == "rolled-back" else "deploy",
        actor=actor,
        release=entry.release,
        commit=entry.commit,
        ref=entry.ref,
        status=entry.status,
        details={
            "kind": entry.kind,
            "previous": ctx.previous,
            "history_id": entry.id,
            "duration_s": entry.duration_s,
            "notes": entry.notes[:500],
        },
    )
    if len(ctx.targets) > 1 and ctx.outcomes:  # every host's outcome is kept on the primary
        audit(
            ctx.host,
            ctx.layout,
            actor=actor,
            action="rollout",
            history_id=entry.id,
            release=entry.release,
            status=entry.status,
            hosts=[o.to_dict() for o in ctx.outcomes],
        )


def _result(ctx: Context, entry: HistoryEntry) -> dict[str, Any]:
    result = {
        "release": entry.release,
        "commit": entry.commit,
        "status": entry.status,
        "duration_s": entry.duration_s,
        "steps": ctx.timings,
        "migrations": ctx.applied,
        "previous": ctx.previous,
        "history_id": entry.id,
    }
    if len(ctx.targets) > 1:
        result["hosts"] = [o.to_dict() for o in ctx.outcomes]
    return result


# -- the steps --------------------------------------------------------------------------------------


def _preflight(ctx: Context, commit: str) -> str:
    proj, name = ctx.proj, ctx.env.name
    hosts = {t.name: t.host for t in ctx.targets}  # the deploy's connections, reused by the guards
    checks = guards.run_checks(
        [
            *guards.environment_checks(proj, name, ctx.process_env, hosts=hosts),
            *ctx.runtime.checks(),
            ("contract", lambda: contract.service_contract(proj, ctx.env, commit)),
            ("frozen", lambda: _not_frozen(ctx)),
            *ctx.extra_checks,
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


def _not_frozen(ctx: Context) -> guards.Check:
    if ctx.host.exists(ctx.layout.freeze):
        return guards.Check("frozen", False, "frozen after a level 3 restore")
    return guards.Check("frozen", True, "not frozen")


def _lock(ctx: Context, lock: Any, ref: str) -> str:
    who = str(ctx.actor)
    return lock.acquire(who=who, command=f"{ctx.env.name}.deploy", release=ref) or f"held by {who}"


def _build(ctx: Context, entry: HistoryEntry, *, commit: str, ref: str, dirty: bool) -> str:
    rel, detail = ctx.runtime.build(ctx, commit=commit, ref=ref, dirty=dirty)
    ctx.release = rel
    # on record before anything starts it: a run killed from here on leaves its release and
    # commit in history, where the next deploy finds them to start that release again
    entry.release = rel.id
    record_history(ctx.host, ctx.layout, entry)
    return detail + (" (dirty snapshot)" if dirty else "")


def _backup(ctx: Context, kind: str) -> str:
    policy = ctx.policy.backup
    if policy == "never":  # nothing to decide: the database is not even asked
        return "skipped (policy never)"
    rel = ctx.built
    pending = ctx.runtime.pending(ctx)
    if policy == "pending-migrations" and not pending:
        return f"skipped (policy {policy}, 0 pending)"
    info = ctx.runtime.backup(ctx, reason=f"before {kind} of {rel.id}")
    ctx.backup_id = info["id"]
    return f"{info['id']} ({info['size_bytes'] / 1e6:.1f} MB)"


def _migrate(ctx: Context) -> str:
    ctx.applied = ctx.runtime.migrate(ctx)
    results = hooks.run(ctx.proj, ctx.env.name, "post-migrate", ctx.hook_context("running"))
    ctx.hook_notes.append(
        hooks.record_failures(ctx.host, ctx.layout, results, actor=str(ctx.actor))
    )
    return f"applied {ctx.applied}" if ctx.applied else "schema up to date"


def _roll(ctx: Context) -> str:
    """The rollout of a group of several hosts: each host walks its steps, batch by batch; a
    failing host stops the group and every host already started goes back."""
    rel, policy = ctx.built, ctx.policy

    def one(t: group.Target) -> str:
        detail = ""
        for s in ctx.runtime.host_steps(ctx, t):
            detail = s.run() or detail
        return detail

    ctx.outcomes = group.roll(
        ctx.env.name, ctx.targets, one, batch=policy.batch, printer=ctx.printer, release=rel.id
    )
    failed = [o for o in ctx.outcomes if o.status == group.FAILED]
    if failed:
        _switch_group_back(ctx, why=f"{failed[0].host} failed")
        raise group.RolloutError(
            f"rollout of {rel.id} stopped: {failed[0].host} failed ({failed[0].reason}); "
            f"{group.summary(ctx.outcomes)}",
            outcomes=ctx.outcomes,
            hint=f"every host serves its previous release; fix {failed[0].host} and deploy again",
        )
    batches = len(group.batches(ctx.targets, policy.batch))
    return f"{len(ctx.targets)} hosts serve {rel.id} ({batches} batches, batch {policy.batch!r})"


def _verify(ctx: Context) -> str:
    rel, policy = ctx.built, ctx.policy
    if policy.verify_window_s <= 0:
        return "no verify window"
    verdict = ctx.runtime.watch(ctx, window_s=policy.verify_window_s)
    if verdict.ok:
        return verdict.summary
    where = " on every host" if len(ctx.targets) > 1 else ""
    if not policy.auto_rollback:
        raise VerifyFailed(
            f"verify failed: {verdict.reason}; auto_rollback is off, {rel.id} still serves{where}",
            hint=f"`inv {ctx.env.name}.rollback --level 2` to go back",
        )
    if len(ctx.targets) == 1:
        raise RolledBack(f"verify failed: {verdict.reason}")  # sent back by _walk_body
    _switch_group_back(ctx, why="verify failed")
    raise group.RolloutError(
        f"verify failed: {verdict.reason}; {group.summary(ctx.outcomes)}",
        outcomes=ctx.outcomes,
        hint="every host serves its previous release again",
    )


# -- going back -------------------------------------------------------------------------------------


def _send_back(ctx: Context, *, reason: str) -> str | None:
    """A group of one: its previous release in front again (or the new one stopped); a larger
    group: every started host back, each host's outcome kept. Returns what serves again."""
    if len(ctx.targets) > 1:
        if not ctx.outcomes:
            ctx.outcomes = [
                group.HostOutcome(
                    t.name,
                    group.FAILED if t.started else group.SKIPPED,
                    "interrupted",
                    t.previous,
                )
                for t in ctx.targets
            ]
        _switch_group_back(ctx, why="the deploy failed")
        return None
    target, rel = ctx.targets[0], ctx.built
    back = ctx.runtime.revert(ctx, target)
    if back:
        ctx.printer(f"{ctx.env.name}: revert    {back} serves again ({reason})")
    else:
        ctx.printer(f"{ctx.env.name}: revert    no previous release; {rel.id} stopped ({reason})")
    return back


def _switch_group_back(ctx: Context, *, why: str) -> None:
    """Every started host of the group back to its previous release, in parallel; outcomes kept."""
    started = [t for t in ctx.targets if t.started]
    results = {
        t.name: (detail, exc)
        for t, detail, exc, _ in group.parallel(started, lambda t: ctx.runtime.revert(ctx, t))
    }
    ctx.outcomes = [_reverted(o, results.get(o.host), why) for o in ctx.outcomes]
    for o in ctx.outcomes:
        if o.host in results:
            ctx.printer(f"{ctx.env.name}: revert    {o.host} {o.status}: {o.reason}")
    ctx.print_outcomes()


def _reverted(
    o: group.HostOutcome, result: tuple[str | None, BaseException | None] | None, why: str
) -> group.HostOutcome:
    if result is None:
        return o
    back, exc = result
    if exc is not None:
        was = f"{o.reason}; " if o.status == group.FAILED else ""
        reason = f"{was}switching back failed: {group.reason_of(exc)}"
        return group.HostOutcome(o.host, group.FAILED, reason, None, o.seconds)
    detail = f"switched back to {back}" if back else "no previous release; the new one was stopped"
    if o.status == group.FAILED:
        return group.HostOutcome(o.host, group.FAILED, f"{o.reason}; {detail}", back, o.seconds)
    return group.HostOutcome(o.host, group.REVERTED, f"{detail} ({why})", back, o.seconds)
