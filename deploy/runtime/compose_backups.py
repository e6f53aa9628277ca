"""The compose runtime's backups: pg_dump, pg_restore and their checks inside the postgres container.

They run as the container's own superuser over its socket: the database port need not be reachable
from here, and the client matches the server's major version. The dump is copied out with
`compose cp` into the backups dir on the project's host, with the native backup's id, metadata
file, checksum and listing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy import migrations
from deploy.backup import compare_counts
from deploy.commands import compose as cmd
from deploy.commands import files as filecmd
from deploy.commands import postgres as pg
from deploy.commands.compose import backup_in_container as backup_argv
from deploy.commands.compose import restore_in_container as restore_argv
from deploy.config import Project
from deploy.errors import GuardRefused, ServiceError
from deploy.hosts import CommandResult, Host
from deploy.runtime.compose_project import ComposeProject, place, project_for
from deploy.state import Layout, audit, find_backup, sha256_file


def role_and_database(rt: ComposeProject) -> tuple[str, str]:
    """The role and database the postgres container was created with (compose.<env>.yml)."""
    return rt.cfg.database.user, rt.cfg.database.name


def _new_backup_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def ledger_argv(c: cmd.ComposeCommands, *, user: str, database: str) -> list[str]:
    return cmd.ledger_in_container(
        c, user=user, database=database, ledger_table=migrations.LEDGER_TABLE
    )


def _exec_pg(rt: ComposeProject, argv: list[str], what: str) -> CommandResult:
    """One command against the postgres container; a stopped container says how to start it."""
    res = rt.run(lambda _c: argv, timeout=7200)
    if not res.ok:
        raise ServiceError(
            f"{rt.cfg.name}: {what} in the postgres container failed (exit {res.exit_code}): "
            f"{rt.scrub(res.tail(1))}",
            hint=f"is it running? `inv {rt.cfg.name}.status`; `inv {rt.cfg.name}.up` starts it",
        )
    return res


def ledger_rows(rt: ComposeProject) -> list[dict[str, Any]]:
    """The migration ledger's rows (ledger_rows_sql), read by psql in the postgres container."""
    user, database = role_and_database(rt)
    res = _exec_pg(
        rt, ledger_argv(rt.commands(), user=user, database=database), "reading the ledger"
    )
    line = (res.stdout.strip().splitlines() or [""])[-1]
    try:
        return migrations.parse_rows(line)
    except ValueError:
        raise ServiceError(
            f"{rt.cfg.name}: the ledger query printed {rt.scrub(line[:80])!r}, not ledger rows",
            hint="check the postgres container's psql",
        ) from None


def applied_of(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """The versions ledger rows mark applied, in order."""
    return sorted(int(r["version"]) for r in rows if r.get("state") == "applied")


def applied_versions(rt: ComposeProject) -> list[int]:
    """The versions the ledger marks applied, read by psql in the postgres container."""
    return applied_of(ledger_rows(rt))


def _file_facts(host: Host, path: str) -> tuple[str, int]:
    """sha256 and size of a file on the host (read there: a remote dump never travels)."""
    if host.is_local:
        return sha256_file(Path(path)), Path(path).stat().st_size
    digest = host.run(filecmd.sha256(path), timeout=3600).stdout.split()
    size = host.run(filecmd.size(path), timeout=60).stdout.strip()
    return (digest[0] if digest else ""), int(size or 0)


def take(
    rt: ComposeProject,
    layout: Layout,
    *,
    actor: str,
    release: str,
    reason: str,
    applied: Sequence[int] | None = None,
) -> dict[str, Any]:
    """A backup of the project's database now, taken in the postgres container; its metadata."""
    host, name = rt.host, rt.cfg.name
    user, database = role_and_database(rt)
    if applied is None:
        applied = applied_versions(rt)
    bid = _new_backup_id()
    host.makedirs(layout.backups)
    dump, copy, clean = backup_argv(
        rt.commands(), user=user, database=database, backup_id=bid, backups_dir=layout.backups
    )
    out = f"{layout.backups}/{bid}.dump"
    start = time.perf_counter()
    try:
        _exec_pg(rt, dump, "pg_dump")
        _exec_pg(rt, copy, "copying the dump out")
    except BaseException:
        host.run(filecmd.remove(out), check=False)  # half a dump must never look like a backup
        raise
    finally:
        rt.run(lambda _c: clean, timeout=300)
    host.run(filecmd.chmod(0o600, out))
    sha, size = _file_facts(host, out)
    info = {
        "id": bid,
        "env": name,
        "database": database,
        "file": f"{bid}.dump",
        "sha256": sha,
        "size_bytes": size,
        "release": release,
        "ledger_version": max(applied, default=0),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - start, 3),
        "actor": actor,
        "reason": reason,
        "runtime": "compose",
    }
    host.write_text(f"{layout.backups}/{bid}.json", json.dumps(info, indent=2), mode=0o600)
    audit(host, layout, actor=actor, action="backup", backup=bid, release=release)
    return info


def take_backup(
    proj: Project, name: str, *, actor: str, release: str = "", reason: str = ""
) -> dict[str, Any]:
    """A backup now (`inv <env>.backup`); release defaults to the tag the app container runs."""
    host, layout = place(proj, name)
    try:
        rt = project_for(proj, name, host=host, layout=layout)
        return take(
            rt, layout, actor=actor, release=release or rt.current_release() or "", reason=reason
        )
    finally:
        host.close()


def list_backups(proj: Project, name: str) -> list[dict[str, Any]]:
    """Every backup's metadata in the backups dir on the project's host, oldest first."""
    host, layout = place(proj, name)
    out = []
    try:
        for file in host.listdir(layout.backups):
            if not file.endswith(".json"):
                continue
            try:
                out.append(json.loads(host.read_text(f"{layout.backups}/{file}") or ""))
            except json.JSONDecodeError:
                continue
    finally:
        host.close()
    return out


def remove_backups(proj: Project, name: str, ids: Sequence[str]) -> None:
    """Retention's deletes (deploy.backup.prune decides which), on the project's host."""
    host, layout = place(proj, name)
    try:
        for bid in ids:
            host.run(
                filecmd.remove(f"{layout.backups}/{bid}.dump", f"{layout.backups}/{bid}.json"),
                check=False,
            )
    finally:
        host.close()


def check_dump(host: Host, layout: Layout, info: Mapping[str, Any], *, name: str) -> None:
    """Refuse before anything changes when the dump is gone or differs from its checksum."""
    path = f"{layout.backups}/{info['file']}"
    ok = host.exists(path) and _file_facts(host, path)[0] == info.get("sha256")
    if not ok:
        raise GuardRefused(
            f"backup {info['id']} is missing or its checksum does not match",
            hint=f"choose another with `inv {name}.backups` and --backup ID",
        )


def restore(rt: ComposeProject, layout: Layout, info: Mapping[str, Any], *, actor: str) -> str:
    user, database = role_and_database(rt)
    copy_in, recreate, restore, clean = restore_argv(
        rt.commands(),
        user=user,
        database=database,
        backup_id=info["id"],
        backups_dir=layout.backups,
    )
    start = time.perf_counter()
    try:
        _exec_pg(rt, copy_in, "copying the dump in")
        _exec_pg(rt, recreate, "recreating the database")
        _exec_pg(rt, restore, "pg_restore")
    finally:
        rt.run(lambda _c: clean, timeout=300)
    took = round(time.perf_counter() - start, 3)
    audit(rt.host, layout, actor=actor, action="restore", backup=info["id"], duration_s=took)
    return f"{info['id']} restored in {took:.2f}s (ledger version {info.get('ledger_version')})"


def verify_backup(proj: Project, name: str, backup_id: str) -> dict[str, Any]:
    """Restore a backup into a scratch database in the postgres container and compare its tables'
    row counts with the live database's (the native verify's result); the scratch always goes."""
    host, layout = place(proj, name)
    try:
        rt = project_for(proj, name, host=host, layout=layout)
        info = find_backup(list_backups(proj, name), backup_id, env=name)
        check_dump(host, layout, info, name=name)
        user, database = role_and_database(rt)
        scratch = f"{database}_verify_{os.getpid()}"
        tmp = cmd.container_dump(backup_id)
        c = rt.commands()

        def psql(db: str, statements: list[str]) -> list[str]:
            return c.exec(cmd.PG_SERVICE, pg.psql(user=user, database=db, statements=statements))

        def counts(db: str) -> dict[str, int]:
            res = _exec_pg(rt, psql(db, pg.table_counts_sql()), "counting rows")
            return {str(k): int(v) for k, v in json.loads(res.stdout.strip() or "{}").items()}

        _exec_pg(
            rt,
            c.cp(f"{layout.backups}/{info['file']}", cmd.in_container(cmd.PG_SERVICE, tmp)),
            "copying the dump in",
        )
        try:
            _exec_pg(rt, psql(pg.MAINTENANCE_DB, pg.create_database_sql(scratch)), "create")
            _exec_pg(
                rt,
                c.exec(cmd.PG_SERVICE, pg.pg_restore(user=user, database=scratch, dump=tmp)),
                "pg_restore",
            )
            restored, live = counts(scratch), counts(database)
        finally:
            rt.run(lambda _c: psql(pg.MAINTENANCE_DB, pg.drop_database_sql(scratch)))
            rt.run(lambda _c: c.exec(cmd.PG_SERVICE, cmd.remove_file(tmp)))
    finally:
        host.close()
    return compare_counts(backup_id, restored=restored, live=live)


def pending_versions(shipped: Sequence[int], applied: Sequence[int]) -> list[int]:
    """The release's versions the ledger does not mark applied (never run, failed, reverted)."""
    done = set(applied)
    return sorted(v for v in shipped if v not in done)


def wants_backup(policy: str, pending: Sequence[int]) -> bool:
    """The native rule: "always", or "pending-migrations" with something to migrate."""
    return policy == "always" or (policy == "pending-migrations" and bool(pending))
