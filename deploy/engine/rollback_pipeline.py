"""The one rollback pipeline: levels 1-3 as step lists, the same for every runtime and any number
of hosts, inside one lifecycle (hooks, lock, history, notification, audit, unlock).

1 restart: the runtime's restart steps (servers, the serving release again, smoke).
2 revert:  schema (down migrations when the release's files need them), then the runtime's steps
           that put the target release in front.
3 restore: freeze, stop, restore the backup, then the same steps as level 2 for the backup's
           release; nothing is sent back after a restore (the older data is gone).

The runtime decides the plan (what serves, the target, the schema plan, the backup) and does each
step; this module says in what order, and what is recorded. The dry run prints the very list the
run walks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deploy import notify
from deploy.config import Project
from deploy.engine import group
from deploy.engine.context import Context, Printer
from deploy.engine.lifecycle import recorded
from deploy.engine.rollback_rules import (
    Confirm,
    RollbackPlan,
    check_request,
    confirm_prod,
    freeze,
)
from deploy.engine.runtimes import runtime_for
from deploy.engine.steps import Step, rows
from deploy.policy import guards
from deploy.policy.actors import Actor
from deploy.state import HistoryEntry, history, new_id, record_history, utc_now


def rollback(
    proj: Project,
    name: str,
    *,
    level: int,
    actor: Actor,
    to: str | None = None,
    backup_id: str | None = None,
    reason: str = "",
    yes: bool = False,
    dry_run: bool = False,
    reset_data: bool = False,
    printer: Printer = print,
    process_env: Mapping[str, str] | None = None,
    confirm: Confirm | None = None,
) -> dict[str, Any]:
    """Carry out one rollback level under the deploy lock; record history and audit."""
    env = proj.env(name)
    check_request(
        level=level, env=env, actor=actor, yes=yes, dry_run=dry_run, reset_data=reset_data,
        to=to, backup_id=backup_id,
    )  # fmt: skip
    ctx = _context(proj, name, actor=actor, printer=printer, process_env=process_env)
    rt = ctx.runtime
    try:
        rt.refuse_rollback(ctx, level=level, reset_data=reset_data)
        hosts = {t.name: t.host for t in ctx.targets}  # its connections, reused by the guards
        checks = [*guards.environment_checks(proj, name, ctx.process_env, hosts=hosts)]
        guards.require(guards.run_checks(checks + rt.rollback_checks(level, dry_run=dry_run)))
        p = rt.rollback_plan(
            ctx, level=level, to=to, backup_id=backup_id, reset_data=reset_data, dry_run=dry_run
        )
        details: list[str] = []
        steps = level_steps(ctx, p, reason=reason, details=details)
        if dry_run:
            return {"dry_run": True, **p.to_dict(), "steps": rows(steps)}
        rt.check_rollback_target(ctx, p)
        confirm_prod(env, actor=actor, yes=yes, confirm=confirm)
        entry = _entry(ctx, p, reason=reason)
        recorded(
            ctx,
            entry,
            level=level,
            reason=reason,
            process_env=process_env,
            body=lambda notes: _walk(ctx, p, entry, steps, notes, details),
            audit_extra=lambda: rt.audit_extra(ctx),
        )
    finally:
        ctx.close()  # the SSH connections the checks and steps opened go
    return _result(ctx, p, entry)


def _context(
    proj: Project,
    name: str,
    *,
    actor: Actor,
    printer: Printer,
    process_env: Mapping[str, str] | None,
) -> Context:
    runtime, targets = runtime_for(proj, name)
    primary = targets[0]
    ctx = Context(proj, proj.env(name), actor, primary.host, primary.layout, printer)
    ctx.targets, ctx.runtime, ctx.process_env = targets, runtime, dict(process_env or {})
    runtime.bind(ctx)
    return ctx


# -- the steps of each level ------------------------------------------------------------------------


def level_steps(ctx: Context, p: RollbackPlan, *, reason: str, details: list[str]) -> list[Step]:
    """Every step of one level, in order: the dry run prints them, the run walks them. details
    collects what history's notes should say."""
    rt = ctx.runtime
    if p.level == 1:
        return rt.restart_steps(ctx, p, details)
    does = rt.rollback_does(ctx, p)
    if p.level == 2:
        return [
            Step("schema", does["schema"], lambda: rt.revert_schema(ctx, p, details)),
            *rt.switch_steps(ctx, p, restored=False),
        ]
    # frozen first: a restore that dies half-way must not invite the next deploy in
    return [
        Step("freeze", does["freeze"], lambda: _freeze(ctx, p, reason)),
        Step("stop", does["stop"], lambda: rt.stop_service(ctx, p)),
        Step("restore", does["restore"], lambda: rt.restore(ctx, p, details)),
        *rt.switch_steps(ctx, p, restored=True),
    ]


def _freeze(ctx: Context, p: RollbackPlan, reason: str) -> str:
    info, rid, actor = p.backup or {}, p.target, str(ctx.actor)
    record = freeze(
        ctx.host, ctx.layout, actor=actor, reason=reason, backup=info.get("id"), release=rid
    )
    notify.send(
        ctx.proj, ctx.env.name, "freeze", actor=actor, release=rid, status="frozen", details=record
    )
    return str(record["when"])


# -- history ----------------------------------------------------------------------------------------


def _entry(ctx: Context, p: RollbackPlan, *, reason: str) -> HistoryEntry:
    target = ctx.runtime.release_of(ctx, p.target or "")
    ctx.release = target
    return HistoryEntry(
        id=new_id(),
        time=utc_now(),
        env=ctx.env.name,
        release=target.id,
        commit=target.commit,
        ref=target.ref,
        actor=str(ctx.actor),
        kind=f"rollback-{p.level}",
        status="running",
        previous=p.current,
        backup=p.backup.get("id") if p.backup else None,
        notes=f"reason: {reason}" if reason else "",
    )


def _walk(
    ctx: Context,
    p: RollbackPlan,
    entry: HistoryEntry,
    steps: list[Step],
    notes: list[str],
    details: list[str],
) -> None:
    """The level's steps under the lock; a dead run's entry is closed first."""
    host, layout = ctx.host, ctx.layout
    # we hold the lock, so a newest entry still marked running belongs to a dead process
    before = history(host, layout)
    if before and before[-1].get("status") == "running":
        dead = before[-1]
        completes = dead.get("id") == p.resumes
        # what the dead run rolled back from, so previous_good never returns to it
        entry.previous = (dead.get("previous") or p.current) if completes else p.current
        record_history(host, layout, _superseded(dead, by=entry.id, completes=completes))
        notes.append(f"{'completes' if completes else 'supersedes'} interrupted {dead.get('id')}")
    record_history(host, layout, entry)
    try:
        ctx.walker.walk(steps)
    finally:
        notes.extend(details)
    if ctx.outcomes:
        notes.append(f"hosts: {group.summary(ctx.outcomes)}")


def _superseded(old: Mapping[str, Any], *, by: str, completes: bool) -> HistoryEntry:
    """The dead run's entry, closed as failed and pointing at the run that took over."""
    known = {k: old.get(k) for k in HistoryEntry.__dataclass_fields__ if k in old}
    rec = HistoryEntry(**known)  # type: ignore[arg-type]
    rec.status = "failed"
    verb = "completed" if completes else "superseded"
    rec.notes = "; ".join(
        x for x in [rec.notes, f"interrupted (its process died); {verb} by {by}"] if x
    )
    return rec


def _result(ctx: Context, p: RollbackPlan, entry: HistoryEntry) -> dict[str, Any]:
    result = {
        "level": p.level,
        "kind": entry.kind,
        "status": entry.status,
        "previous": p.current,
        "release": entry.release,
        "duration_s": entry.duration_s,
        "steps": ctx.timings,
        "history_id": entry.id,
        "notes": entry.notes,
        "backup": entry.backup,
    }
    if ctx.runtime.reports_hosts:
        result["hosts"] = [o.to_dict() for o in ctx.outcomes]
    return result
