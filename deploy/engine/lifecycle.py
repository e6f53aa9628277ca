"""The lifecycle every rollback runs inside, whatever its runtime: the pre-rollback hook, the lock,
the post-rollback or on-failure hook, history, the notification, the audit record, the unlock."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from deploy import hooks, notify
from deploy.engine.context import Context
from deploy.errors import DeployError
from deploy.state import DeployLock, HistoryEntry, audit, record_history


def recorded(
    ctx: Context,
    entry: HistoryEntry,
    *,
    level: int,
    reason: str,
    process_env: Mapping[str, str] | None,
    body: Callable[[list[str]], None],
    audit_extra: Callable[[], dict[str, Any]] = dict,
) -> None:
    """Run body under the deploy lock as one rollback, whatever the runtime: the pre-rollback hook
    (fails closed), the lock, then the post-rollback or on-failure hook, history, the notification
    and the audit record, and the unlock. body appends what history's notes should say."""
    proj, name, host, layout, actor = ctx.proj, ctx.env.name, ctx.host, ctx.layout, ctx.actor
    hook_ctx = {
        "actor": actor,
        "previous": entry.previous or "",
        "reason": reason,
        "release": entry.release,
        "commit": entry.commit,
        "ref": entry.ref,
    }
    hooks.run(proj, name, "pre-rollback", hook_ctx, process_env=process_env)
    lock = DeployLock(host, layout)
    details: list[str] = []
    started = time.perf_counter()
    ctx.step(
        "lock",
        lambda: (
            lock.acquire(
                who=str(actor), command=f"{name}.rollback --level {level}", release=entry.release
            )
            or f"held by {actor}"
        ),
    )
    try:
        body(details)
        entry.status = "success"
    except DeployError as err:
        entry.status = "failed"
        details.append(err.message[: 300 if not ctx.outcomes else 1000])
        raise
    except BaseException as err:
        entry.status = "failed"
        details.append(f"{err.__class__.__name__}: {str(err)[:200]}")
        raise
    finally:
        entry.duration_s = round(time.perf_counter() - started, 3)
        point = "post-rollback" if entry.status == "success" else "on-failure"
        results = hooks.run(
            proj, name, point, {**hook_ctx, "status": entry.status}, process_env=process_env
        )
        details.append(
            hooks.record_failures(host, layout, results, actor=str(actor), history_id=entry.id)
        )
        entry.notes = "; ".join(x for x in [entry.notes, *details] if x)
        if lock.held:
            _close_out(ctx, entry, level=level, reason=reason, audit_extra=audit_extra())
            ctx.step("unlock", lambda: lock.release())


def _close_out(
    ctx: Context, entry: HistoryEntry, *, level: int, reason: str, audit_extra: dict[str, Any]
) -> None:
    """History, the notification and the audit record of a rollback that held the lock."""
    proj, name, host, layout, actor = ctx.proj, ctx.env.name, ctx.host, ctx.layout, str(ctx.actor)
    record_history(host, layout, entry)
    notify.send(
        proj,
        name,
        "rollback",
        actor=actor,
        release=entry.release,
        commit=entry.commit,
        ref=entry.ref,
        status=entry.status,
        details={
            "level": level,
            "reason": reason,
            "previous": entry.previous,
            "history_id": entry.id,
        },
    )
    audit(
        host,
        layout,
        actor=actor,
        action=entry.kind,
        status=entry.status,
        reason=reason,
        previous=entry.previous,
        target=entry.release,
        history_id=entry.id,
        **audit_extra,
    )
