"""What an operator reads and settles after a rollback: the serving release against the previous
one, a backup restored into a scratch database, an interrupted operation, the freeze to lift."""

from __future__ import annotations

import json
from typing import Any

from deploy import notify, releases
from deploy.commands import files as filecmd
from deploy.config import Project
from deploy.engine import group
from deploy.engine.rollback_rules import previous_good
from deploy.errors import GuardRefused, UsageError
from deploy.policy.actors import Actor
from deploy.runtime import native_hosts
from deploy.state import DeployLock, audit, history


def unfreeze(proj: Project, name: str, *, actor: Actor, reason: str) -> dict[str, Any] | None:
    """Lift the freeze a level 3 restore left; the reason and the freeze it lifts are audited."""
    if not reason.strip():
        raise UsageError(
            "unfreeze needs --reason TEXT", hint="say what was checked after the restore"
        )
    env = proj.env(name)
    if env.environment == "production" and not actor.is_human:
        raise GuardRefused(f"{actor} may not unfreeze {name}", hint="a human lifts a prod freeze")
    host, layout = group.primary(proj, name)
    text = host.read_text(layout.freeze)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = {"raw": text[:200]}
    host.run(filecmd.remove(layout.freeze))
    audit(host, layout, actor=str(actor), action="unfreeze", reason=reason, freeze=record)
    notify.send(
        proj, name, "unfreeze", actor=str(actor), status="unfrozen", details={"reason": reason}
    )
    return record


# -- read-side helpers for the tasks --------------------------------------------------------------


def verify_serving(proj: Project, name: str, *, window_s: float | None = None) -> dict[str, Any]:
    """Watch the serving release against the previous good one; the verdict with its numbers."""
    from deploy.probes import verify

    host, layout = group.primary(proj, name)
    current = releases.current_release(host, layout)
    if current is None:
        raise UsageError(f"{name} serves no release", hint=f"deploy one with `inv {name}.deploy`")
    baseline = previous_good(
        history(host, layout),
        current=current,
        existing=frozenset(releases.list_releases(host, layout)),
    )
    window = window_s if window_s is not None else (proj.policies[name].verify_window_s or 5.0)
    if group.is_rolling(proj, name):
        verdict = native_hosts.watch(
            proj,
            name,
            group.targets(proj, name),
            release=current,
            baseline=baseline,
            window_s=float(window),
        )
    else:
        verdict = verify.watch(
            proj, name, release=current, baseline=baseline, window_s=float(window)
        )
    return {
        "release": current,
        "baseline": baseline,
        "window_s": window,
        "ok": verdict.ok,
        "reason": verdict.reason,
        "summary": verdict.summary,
        "numbers": verdict.numbers,
    }


def interruption(proj: Project, name: str) -> dict[str, Any] | None:
    """What a deploy or rollback that is running, or was killed, left behind: for `status`."""
    host, layout = group.primary(proj, name)
    lock = DeployLock(host, layout)
    info = lock.holder()
    entries = history(host, layout)
    host.close()  # the reads are done; a remote primary's connection goes
    # only the newest entry counts: an older one left running was closed by whoever came after
    last = entries[-1] if entries and entries[-1].get("status") == "running" else None
    if info is None and last is None:
        return None
    stale = info is not None and lock.is_stale(info)
    what = f"{last['kind']} of {last.get('release') or '?'}" if last else "a command"
    if info is None:
        text = f"{what} never finished and holds no lock; run it again"
    elif stale:
        text = (
            f"{what} was killed: the lock is {info.describe()} (stale: its process is gone); "
            f"`inv {name}.lock --force --reason TEXT`, then run it again"
        )
    else:
        text = f"{what} is in progress: the lock is {info.describe()}"
    return {
        "entry": last,
        "lock_stale": stale,
        "explain": text,
        "lock": info.describe() if info else None,
    }
