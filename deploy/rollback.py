"""What an operator reads and settles after a rollback: the serving release against the previous
one, a backup restored into a scratch database, an interrupted operation, the freeze to lift."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from deploy import notify, releases, rolling
from deploy.actors import Actor
from deploy.config import Project
from deploy.engine.rollback_rules import previous_good
from deploy.errors import GuardRefused, ServiceError, UsageError
from deploy.hosts import Host
from deploy.runtime.native import NativeServices
from deploy.state import DeployLock, Layout, audit, history, sha256_file


def unfreeze(proj: Project, name: str, *, actor: Actor, reason: str) -> dict[str, Any] | None:
    """Lift the freeze a level 3 restore left; the reason and the freeze it lifts are audited."""
    if not reason.strip():
        raise UsageError(
            "unfreeze needs --reason TEXT", hint="say what was checked after the restore"
        )
    env = proj.env(name)
    if env.environment == "production" and not actor.is_human:
        raise GuardRefused(f"{actor} may not unfreeze {name}", hint="a human lifts a prod freeze")
    host, layout = rolling.primary(proj, name)
    text = host.read_text(layout.freeze)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = {"raw": text[:200]}
    host.run(["rm", "-f", layout.freeze])
    audit(host, layout, actor=str(actor), action="unfreeze", reason=reason, freeze=record)
    notify.send(
        proj, name, "unfreeze", actor=str(actor), status="unfrozen", details={"reason": reason}
    )
    return record


# -- read-side helpers for the tasks --------------------------------------------------------------


def verify_serving(proj: Project, name: str, *, window_s: float | None = None) -> dict[str, Any]:
    """Watch the serving release against the previous good one; the verdict with its numbers."""
    from deploy import verify

    host, layout = rolling.primary(proj, name)
    current = releases.current_release(host, layout)
    if current is None:
        raise UsageError(f"{name} serves no release", hint=f"deploy one with `inv {name}.deploy`")
    baseline = previous_good(
        history(host, layout),
        current=current,
        existing=frozenset(releases.list_releases(host, layout)),
    )
    window = window_s if window_s is not None else (proj.policies[name].verify_window_s or 5.0)
    if rolling.is_rolling(proj, name):
        verdict = rolling.watch(
            proj,
            name,
            rolling.targets(proj, name),
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


def _table_counts(dsn: str) -> dict[str, int]:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
        ]
        return {
            t: int(
                conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
                ).fetchone()[0]
            )
            for t in tables
        }  # type: ignore[index]


def verify_backup(proj: Project, name: str, backup_id: str) -> dict[str, Any]:
    """Restore a backup into a scratch database and compare its tables' row counts with the live
    database's; the scratch database is always dropped."""
    if proj.policies[name].runtime == "compose":  # the same, inside the postgres container
        from deploy import compose_ops

        return compose_ops.verify_backup(proj, name, backup_id)
    import psycopg
    from psycopg import sql

    from deploy import backup as backups
    from deploy.runtime.native import pg_bin_dir

    env = proj.env(name)
    info = backups.find(proj, name, backup_id)
    layout = Layout(str(env.data_dir))
    dump = Path(layout.backups) / info["file"]
    if not dump.exists() or sha256_file(dump) != info["sha256"]:
        raise ServiceError(
            f"backup {backup_id} is missing or its checksum does not match",
            hint=f"take a new one with `inv {name}.backup`",
        )
    svc = NativeServices(env, user_name=proj.service_user)
    scratch = f"{env.database.name}_verify_{os.getpid()}"
    admin = svc.admin_conninfo()
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        Host(secrets=env.secret_values()).run(
            backups.restore_argv(pg_bin_dir(), svc.admin_conninfo(scratch), str(dump)), timeout=7200
        )
        restored = _table_counts(svc.admin_conninfo(scratch))
        live = _table_counts(svc.admin_conninfo(env.database.name))
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch))
            )
    rows = [
        {
            "table": t,
            "backup": restored.get(t),
            "live": live.get(t),
            "same": restored.get(t) == live.get(t),
        }
        for t in sorted(set(restored) | set(live))
    ]
    return {"id": backup_id, "ok": all(r["same"] for r in rows), "tables": rows}


def interruption(proj: Project, name: str) -> dict[str, Any] | None:
    """What a deploy or rollback that is running, or was killed, left behind: for `status`."""
    host, layout = rolling.primary(proj, name)
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
