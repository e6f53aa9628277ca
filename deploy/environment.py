"""Bring an environment's servers up and down, and read its status: the engine behind dev.up etc."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from deploy.backup import TakenBackup, expired_backups
from deploy.clock import Clock, system_clock
from deploy.config import Project
from deploy.errors import UsageError
from deploy.hosts import Host
from deploy.secrets_file import fill_missing
from deploy.state import DeployLock, Layout, audit, history

T = TypeVar("T")


def _on_runtime(proj: Project, name: str, act: Callable[[Any], T]) -> T:
    """act(runtime) with the environment's runtime; its hosts' connections go afterwards."""
    from deploy.engine import runtimes

    runtime, targets = runtimes.runtime_for(proj, name)
    try:
        return act(runtime)
    finally:
        runtimes.close(targets)


def up(proj: Project, name: str) -> list[str]:
    return _on_runtime(proj, name, lambda rt: rt.up())


def down(proj: Project, name: str) -> list[str]:
    return _on_runtime(proj, name, lambda rt: rt.down())


def logs(proj: Project, name: str, *, tail: int = 100, service: str = "") -> str:
    """The last lines of the environment's logs: compose's, or the native log files; service
    narrows them to one: app, postgres, redis or a process of [service.processes]."""
    known = ("app", "postgres", "redis", *(n for n, _ in proj.service.processes))
    if service and service not in known:
        raise UsageError(f"--service {service!r} is not a service", hint=", ".join(known))
    return _on_runtime(proj, name, lambda rt: rt.logs(tail=tail, service=service))


# -- backups, through the runtime that holds the database ----------------------------------------


def take_backup(
    proj: Project, name: str, *, actor: str, release: str = "", reason: str = ""
) -> dict[str, Any]:
    return _on_runtime(
        proj, name, lambda rt: rt.take_backup(actor=actor, release=release, reason=reason)
    )


def list_backups(proj: Project, name: str) -> list[dict[str, Any]]:
    """The environment's backups, oldest first."""
    found = _on_runtime(proj, name, lambda rt: rt.list_backups())
    return sorted(found, key=lambda b: str(b.get("id")))


def verify_backup(proj: Project, name: str, backup_id: str) -> dict[str, Any]:
    """Restore a backup into a scratch database and compare row counts with the live one."""
    return _on_runtime(proj, name, lambda rt: rt.verify_backup(backup_id))


def prune_backups(
    proj: Project,
    name: str,
    *,
    keep: int = 10,
    max_age_days: float | None = None,
    clock: Clock = system_clock,
) -> list[str]:
    """Retention by count and age (backup.expired_backups); the newest backup is always kept."""

    def prune(rt: Any) -> list[str]:
        drop = expired_backups(rt.list_backups(), now=clock(), keep=keep, max_age_days=max_age_days)
        rt.remove_backups([b["id"] for b in drop])
        return [b["id"] for b in drop]

    return _on_runtime(proj, name, prune)


def take_now(
    proj: Project, name: str, *, actor: str, reason: str, verify: bool = False
) -> TakenBackup:
    """Back up `name` now, labelled with its serving release; with verify, restore the dump into
    a scratch database and compare row counts with the live one."""

    def take(rt: Any) -> TakenBackup:
        current = rt.serving() or ""
        info = rt.take_backup(actor=actor, release=current, reason=reason)
        checked = rt.verify_backup(info["id"]) if verify else None
        return TakenBackup(info=info, serving=current, verify=checked)

    return _on_runtime(proj, name, take)


def status(proj: Project, name: str) -> dict[str, Any]:
    from deploy.engine import group

    env = proj.env(name)
    servers, app = _on_runtime(proj, name, lambda rt: rt.servers_status())
    # lock, history and freeze live on the primary (this machine, DATA_DIR, in the plain setting)
    host, layout = group.primary(proj, name)
    lock = DeployLock(host, layout)
    holder = lock.holder()
    entries = history(host, layout)
    frozen = host.exists(layout.freeze)
    stale = holder is not None and lock.is_stale(holder)
    if not host.is_local:
        host.close()
    last = entries[-1] if entries else None
    if last and last.get("status") == "running" and (holder is None or stale):
        last = {**last, "status": "interrupted"}  # its process died: the lock says so, or is gone
    return {
        "env": name,
        "environment": env.environment,
        "compose_project": env.compose_project,
        **servers,
        "app": app,
        "data_dir": str(env.data_dir),
        "frozen": frozen,
        "lock": None if holder is None else {"holder": holder.describe(), "stale": stale},
        "last": None
        if last is None
        else {k: last.get(k) for k in ("id", "time", "kind", "status", "release", "notes")},
    }


def _updown(flag: bool, port: int) -> str:
    return f"{'up' if flag else 'down'} :{port}"


def _last(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    return f"{last['kind']} {last['status']} {last['time']}"


def _lock(lock: dict[str, Any] | None) -> str:
    if not lock:
        return "free"
    return ("STALE: " if lock["stale"] else "held: ") + lock["holder"]


def print_status(rows: list[dict[str, Any]]) -> None:
    from deploy.output import print_table

    print_table(
        "environments",
        ["env", "postgres", "redis", "app", "release", "last operation", "lock", "data dir"],
        [
            (
                r["env"] + (" (frozen)" if r["frozen"] else ""),
                _updown(r["postgres"]["up"], r["postgres"]["port"]),
                _updown(r["redis"]["up"], r["redis"]["port"]),
                _updown(r["app"]["up"], r["app"]["port"]),
                r["app"].get("release") or "-",
                _last(r["last"]),
                _lock(r["lock"]),
                r["data_dir"],
            )
            for r in rows
        ],
    )
    processes = [
        (
            r["env"],
            p.get("host", ""),
            p["name"],
            p["release"],
            p["pid"],
            "up" if p["up"] else "down",
        )
        for r in rows
        for p in r["app"].get("processes") or []
    ]
    if processes:  # the service's other processes ([service.processes]), each on its host
        print_table("processes", ["env", "host", "name", "release", "pid", "state"], processes)
    for r in rows:  # a compose environment whose engine does not answer says why it shows down
        if r.get("engine"):
            from deploy.output import say

            say(f"{r['env']}: {r['engine']}")


def generate_secrets(proj: Project, name: str, *, actor: str) -> list[str]:
    """Fill missing secrets with random values in env/<name>.secrets.env (mode 0600)."""
    env = proj.env(name)
    path = proj.root / "env" / f"{name}.secrets.env"
    # only what the file holds: secrets injected through the process environment stay out of it;
    # stageflow's secrets and the service's declared ones alike
    missing = fill_missing(path, env.declared_secrets)
    if not missing:
        return ["every secret is already set"]
    audit_layout = Layout(str(env.data_dir))
    os.makedirs(audit_layout.state, exist_ok=True)
    audit(Host(), audit_layout, actor=actor, action="secrets-generated", keys=missing)
    return [f"generated {', '.join(missing)} in {path.name} (mode 0600)"]
