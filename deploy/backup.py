"""Backups of an environment's database: pg_dump -Fc with sha256 and metadata; restore; retention."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from deploy import migrations
from deploy.clock import Clock, as_utc, system_clock
from deploy.config import Project
from deploy.errors import ServiceError
from deploy.hosts import Host
from deploy.runtime.native import NativeServices, pg_bin_dir
from deploy.state import Layout, audit, find_backup, sha256_file


def _compose(proj: Project, name: str) -> bool:
    return proj.policies[name].runtime == "compose"


def dump_argv(bin_dir: Path, conninfo: str, output: str) -> list[str]:
    return [str(bin_dir / "pg_dump"), "-Fc", "-Z", "1", "--no-owner", "-f", output, "-d", conninfo]


def restore_argv(
    bin_dir: Path, conninfo: str, dump: str, *, jobs: int = 2, role: str | None = None
) -> list[str]:
    # --role: objects come back owned by the app's role, not by the superuser restoring them
    return [
        str(bin_dir / "pg_restore"),
        "--clean",
        "--if-exists",
        "--exit-on-error",
        "--no-owner",
        *([f"--role={role}"] if role else []),
        f"--jobs={jobs}",
        "-d",
        conninfo,
        dump,
    ]


def take(
    proj: Project, name: str, *, actor: str, release: str = "", reason: str = ""
) -> dict[str, Any]:
    """Dump the env's database to shared/backups/<id>.dump, write <id>.json beside it."""
    if _compose(proj, name):  # dumped inside the postgres container, kept on the project's host
        from deploy import compose_ops

        return compose_ops.take_backup(proj, name, actor=actor, release=release, reason=reason)
    env = proj.env(name)
    svc = NativeServices(env, user_name=proj.service_user)
    layout = Layout(str(env.data_dir))
    host = Host(secrets=env.secret_values())
    Path(layout.backups).mkdir(parents=True, exist_ok=True)
    bid = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    out = Path(layout.backups) / f"{bid}.dump"
    start = time.perf_counter()
    host.run(dump_argv(pg_bin_dir(), svc.admin_conninfo(env.database.name), str(out)), timeout=3600)
    version = migrations.current_version(env.database_url, password=env.secret("POSTGRES_PASSWORD"))
    info = {
        "id": bid,
        "env": name,
        "database": env.database.name,
        "file": out.name,
        "sha256": sha256_file(out),
        "size_bytes": out.stat().st_size,
        "release": release,
        "ledger_version": version,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - start, 3),
        "actor": actor,
        "reason": reason,
    }
    (Path(layout.backups) / f"{bid}.json").write_text(json.dumps(info, indent=2))
    os.chmod(out, 0o600)
    from deploy import rolling

    # the environment's audit is on its primary host; the dump stays beside the database
    primary, state = rolling.primary(proj, name)
    try:
        audit(primary, state, actor=actor, action="backup", backup=bid, release=release)
    finally:
        primary.close()
    return info


def list_backups(proj: Project, name: str) -> list[dict[str, Any]]:
    if _compose(proj, name):
        from deploy import compose_ops

        return sorted(compose_ops.list_backups(proj, name), key=lambda b: str(b.get("id")))
    layout = Layout(str(proj.env(name).data_dir))
    out = []
    for meta in sorted(Path(layout.backups).glob("*.json")):
        try:
            out.append(json.loads(meta.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def find(proj: Project, name: str, backup_id: str) -> dict[str, Any]:
    return find_backup(list_backups(proj, name), backup_id, env=name)


def restore(proj: Project, name: str, backup_id: str, *, actor: str) -> dict[str, Any]:
    """pg_restore --clean --if-exists --exit-on-error; the dump's checksum is verified first."""
    env = proj.env(name)
    info = find(proj, name, backup_id)
    layout = Layout(str(env.data_dir))
    dump = Path(layout.backups) / info["file"]
    if not dump.exists() or sha256_file(dump) != info["sha256"]:
        raise ServiceError(
            f"backup {backup_id} is missing or its checksum does not match",
            hint="choose another backup with `inv <env>.backups`",
        )
    svc = NativeServices(env, user_name=proj.service_user)
    host = Host(secrets=env.secret_values())
    start = time.perf_counter()
    host.run(
        restore_argv(
            pg_bin_dir(), svc.admin_conninfo(env.database.name), str(dump), role=env.database.user
        ),
        timeout=7200,
    )
    took = round(time.perf_counter() - start, 3)
    audit(host, layout, actor=actor, action="restore", backup=backup_id, duration_s=took)
    return {**info, "restore_s": took}


def _taken_at(backup: dict[str, Any]) -> datetime | None:
    try:
        at = datetime.fromisoformat(str(backup["time"]))
    except (KeyError, ValueError):
        return None
    return at if at.tzinfo is not None else None


def expired_backups(
    backups: list[dict[str, Any]], *, now: datetime, keep: int, max_age_days: float | None
) -> list[dict[str, Any]]:
    """The retention rule: which of backups (oldest first) to drop.

    All but the newest `keep` (keep 0: no count limit), and, with max_age_days, every backup
    older than that (exactly that old is kept). The newest backup is always kept, and a backup
    whose time cannot be read is never dropped for its age: deleting is the step to fail closed.
    """
    drop = backups[:-keep] if keep > 0 else []
    if max_age_days is None:
        return drop
    limit = timedelta(days=max_age_days)
    for b in backups[:-1]:
        at = _taken_at(b)
        if at is not None and as_utc(now) - at > limit and b not in drop:
            drop.append(b)
    return drop


def prune(
    proj: Project,
    name: str,
    *,
    keep: int = 10,
    max_age_days: float | None = None,
    clock: Clock = system_clock,
) -> list[str]:
    """Retention by count and age (expired_backups); the newest backup is always kept."""
    backups = list_backups(proj, name)
    layout = Layout(str(proj.env(name).data_dir))
    drop = expired_backups(backups, now=clock(), keep=keep, max_age_days=max_age_days)
    if _compose(proj, name):
        from deploy import compose_ops

        compose_ops.remove_backups(proj, name, [b["id"] for b in drop])
        return [b["id"] for b in drop]
    for b in drop:
        for suffix in (".dump", ".json"):
            (Path(layout.backups) / f"{b['id']}{suffix}").unlink(missing_ok=True)
    return [b["id"] for b in drop]
