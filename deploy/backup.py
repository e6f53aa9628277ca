"""Backups of an environment's database: pg_dump -Fc with sha256 and metadata; restore; retention."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from deploy import migrations
from deploy.clock import as_utc
from deploy.commands.postgres import pg_dump_dsn as dump_argv
from deploy.commands.postgres import pg_restore_dsn as restore_argv
from deploy.config import Project
from deploy.errors import ServiceError
from deploy.hosts import Host
from deploy.runtime.native import NativeServices, pg_bin_dir
from deploy.state import Layout, audit, find_backup, sha256_file


def take(
    proj: Project, name: str, *, actor: str, release: str = "", reason: str = ""
) -> dict[str, Any]:
    """Dump the env's database to shared/backups/<id>.dump, write <id>.json beside it (the native
    runtime; compose dumps inside its postgres container: ask the environment's runtime)."""
    env = proj.env(name)
    svc = NativeServices(env, user_name=proj.service_user)
    layout = Layout(str(env.data_dir))
    host = Host(secrets=env.secret_values())
    Path(layout.backups).mkdir(parents=True, exist_ok=True)
    bid = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    out = Path(layout.backups) / f"{bid}.dump"
    start = time.perf_counter()
    host.run(dump_argv(pg_bin_dir(), svc.admin_conninfo(env.database.name), str(out)), timeout=3600)
    version, schema = _schema_now(proj, env, host, layout, release)
    info = {
        "id": bid,
        "env": name,
        "database": env.database.name,
        "file": out.name,
        "sha256": sha256_file(out),
        "size_bytes": out.stat().st_size,
        "release": release,
        "ledger_version": version,
        "schema": schema,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - start, 3),
        "actor": actor,
        "reason": reason,
    }
    (Path(layout.backups) / f"{bid}.json").write_text(json.dumps(info, indent=2))
    os.chmod(out, 0o600)
    from deploy.engine import group

    # the environment's audit is on its primary host; the dump stays beside the database
    primary, state = group.primary(proj, name)
    try:
        audit(primary, state, actor=actor, action="backup", backup=bid, release=release)
    finally:
        primary.close()
    return info


def _schema_now(
    proj: Project, env: Any, host: Host, layout: Layout, release: str
) -> tuple[int | None, str | None]:
    """(ledger version, schema revisions) the dump was taken at. stageflow's SQL files keep a
    ledger; a service's own tool keeps its books itself, so the serving release's recorded
    revisions say where its schema was (None when it recorded none); no migrations, neither."""
    kind = proj.service.migrations.kind
    if kind == "sql":
        password = env.secret("POSTGRES_PASSWORD")
        return migrations.current_version(env.database_url, password=password), None
    if kind != "command" or not release:
        return None, None
    from deploy import env_migrations, releases

    meta = releases.release_meta(host, layout, release)
    revisions = env_migrations.recorded_revisions(meta)
    return None, migrations.describe_revisions(revisions) if revisions else None


def schema_label(info: dict[str, Any]) -> str:
    """Where the backup's schema was, in the words of its kind: "ledger version 3", "schema a1"."""
    if info.get("schema"):
        return f"schema {info['schema']}"
    if info.get("ledger_version") is not None:
        return f"ledger version {info['ledger_version']}"
    return "schema not recorded"


def list_backups(proj: Project, name: str) -> list[dict[str, Any]]:
    """The native runtime's backups of `name`, oldest first."""
    layout = Layout(str(proj.env(name).data_dir))
    out = []
    for meta in sorted(Path(layout.backups).glob("*.json")):
        try:
            out.append(json.loads(meta.read_text()))
        except (OSError, ValueError):  # torn, not JSON or not UTF-8: not a backup to offer
            continue
    return out


def find(proj: Project, name: str, backup_id: str) -> dict[str, Any]:
    return find_backup(list_backups(proj, name), backup_id, env=name)


def _whole_dump(
    proj: Project, name: str, backup_id: str, *, hint: str
) -> tuple[dict[str, Any], Path]:
    """The backup's metadata and dump, refused when the dump is gone or its checksum differs."""
    info = find(proj, name, backup_id)
    dump = Path(Layout(str(proj.env(name).data_dir)).backups) / info["file"]
    if not dump.exists() or sha256_file(dump) != info["sha256"]:
        raise ServiceError(
            f"backup {backup_id} is missing or its checksum does not match", hint=hint
        )
    return info, dump


def restore(proj: Project, name: str, backup_id: str, *, actor: str) -> dict[str, Any]:
    """pg_restore --clean --if-exists --exit-on-error; the dump's checksum is verified first."""
    env = proj.env(name)
    info, dump = _whole_dump(
        proj, name, backup_id, hint="choose another backup with `inv <env>.backups`"
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
    layout = Layout(str(env.data_dir))
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


def remove(proj: Project, name: str, ids: list[str]) -> None:
    """Delete the native runtime's backups with these ids (dump and metadata)."""
    layout = Layout(str(proj.env(name).data_dir))
    for bid in ids:
        for suffix in (".dump", ".json"):
            (Path(layout.backups) / f"{bid}{suffix}").unlink(missing_ok=True)


# -- what `inv <env>.backup` and `inv <env>.backups` answer ---------------------------------------


@dataclass(frozen=True)
class TakenBackup:
    """A backup taken on request, the release that served when it was taken ("" before the first
    deploy) and, when asked for, its restore check (verify_backup)."""

    info: dict[str, Any]
    serving: str
    verify: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.info, "verify": self.verify}

    def summary(self) -> str:
        return (
            f"backup {self.info['id']} ({self.info['size_bytes'] / 1e6:.2f} MB, "
            f"{schema_label(self.info)}, release {self.serving or '-'})"
        )

    def verify_rows(self) -> Iterator[tuple[Any, ...]]:
        for r in (self.verify or {}).get("tables", []):
            yield (r["table"], r["backup"], r["live"], "ok" if r["same"] else "DIFFERS")

    def require_same(self) -> None:
        """Refuse (ServiceError) a backup whose restore check found other row counts."""
        if self.verify and not self.verify["ok"]:
            raise ServiceError(
                f"backup {self.info['id']} row counts differ from the live database",
                hint="writes during the backup? take another and verify it",
            )


BACKUP_COLUMNS = ("id", "time", "release", "schema", "size", "actor", "reason")


def backup_rows(found: list[dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
    """One table row per backup's metadata, in BACKUP_COLUMNS order."""
    for b in found:
        yield (
            b["id"],
            b.get("time"),
            b.get("release") or "-",
            b.get("schema") or b.get("ledger_version"),
            f"{b.get('size_bytes', 0) / 1e6:.2f} MB",
            b.get("actor"),
            b.get("reason"),
        )


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
    import psycopg
    from psycopg import sql

    env = proj.env(name)
    info, dump = _whole_dump(proj, name, backup_id, hint=f"take a new one with `inv {name}.backup`")
    svc = NativeServices(env, user_name=proj.service_user)
    scratch = f"{env.database.name}_verify_{os.getpid()}"
    admin = svc.admin_conninfo()
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        Host(secrets=env.secret_values()).run(
            restore_argv(pg_bin_dir(), svc.admin_conninfo(scratch), str(dump)), timeout=7200
        )
        restored = _table_counts(svc.admin_conninfo(scratch))
        live = _table_counts(svc.admin_conninfo(env.database.name))
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch))
            )
    return compare_counts(backup_id, restored=restored, live=live)


def compare_counts(
    backup_id: str, *, restored: dict[str, int], live: dict[str, int]
) -> dict[str, Any]:
    """A restore check's verdict: every table's row count in the restored copy and the live one."""
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
