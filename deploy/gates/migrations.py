"""Gate `migrations`: validate, lint and rehearse the pending migrations on a copy of the target
in a throwaway cluster; the target itself is only read (a read-only role is all it needs).

The target (`--db-url`, prod's own database with a read-only role) is read three ways: its catalog
(table sizes), a `pg_dump` (its schema and rows, or with `copy = "schema"` its schema and the
migration ledgers alone) and, for the verdict cache, a fingerprint of its rows. Everything else
happens in a PostgreSQL cluster the gate starts for the run and deletes after: validation against
the ledger, each pending statement's time and locks, the migrations applied, a down/up round trip.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from deploy import migrations
from deploy.errors import ConfigError, MigrationError
from deploy.gates import (
    GateContext,
    Outcome,
    first_lines,
    locks,
    migrations_command,
    run_command,
    scratch_cluster,
)
from deploy.gates.scratch_cluster import ScratchCluster
from deploy.secrets import Secret, scrub
from deploy.service import Migrations, load_service

_USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%%'"
)


def split_url(url: Secret) -> tuple[str, Secret | None]:
    """A conninfo without its password, and the password apart, so argv and errors never hold it."""
    try:
        parts = conninfo_to_dict(url.reveal())
    except psycopg.ProgrammingError:
        raise ConfigError(
            "--db-url is not a PostgreSQL URL",
            hint="postgresql://USER@HOST:PORT/DB (password in PGPASSWORD)",
        ) from None
    password = parts.pop("password", None)
    return make_conninfo(**{k: str(v) for k, v in parts.items()}), Secret(
        str(password)
    ) if password else None


_NO_PASSWORD = ("no password supplied", "password authentication failed")


def database_says(exc: psycopg.Error) -> str:
    """The driver's first line, and for a role the target did not let in, how to give its
    password (never on a command line: the URL's, or PGPASSWORD's)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if any(s in first for s in _NO_PASSWORD):
        first += "; give the role's password in PGPASSWORD, or in --db-url after its user name"
    return f"database: {first}"


def _connect(conninfo: str, password: Secret | None, **override: str) -> psycopg.Connection:
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": 10,
        "application_name": "stageflow-release-gate",
        # every session the gate opens on the target refuses to write, whatever the role may do
        "options": "-c default_transaction_read_only=on",
        **override,
    }
    if password:
        kwargs["password"] = password.reveal()
    return psycopg.connect(conninfo, **kwargs)


def fingerprint(conninfo: str, *, password: Secret | None = None) -> str:
    """sha256 over the schema (columns, indexes, constraints) and every row of every table."""
    parts: list[str] = []
    with _connect(conninfo, password) as conn:
        cols = conn.execute(
            "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), "
            "a.attnotnull, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            f"WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm') AND {_USER_SCHEMAS} "
            "ORDER BY 1, 2, a.attnum"
        ).fetchall()
        parts.append(repr(cols))
        parts.append(
            repr(
                conn.execute(
                    "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3"
                ).fetchall()
            )
        )
        parts.append(
            repr(
                conn.execute(
                    "SELECT n.nspname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
                    f"JOIN pg_namespace n ON n.oid = c.connamespace WHERE {_USER_SCHEMAS} ORDER BY 1, 2, 3"
                ).fetchall()
            )
        )
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMAS} ORDER BY 1, 2"
        ).fetchall()
        for schema, table in tables:
            q = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                "FROM {} t"
            ).format(sql.Identifier(schema, table))
            parts.append(f"{schema}.{table}:{conn.execute(q).fetchone()!r}")
        parts.append(str(conn.info.server_version))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def pg_tool(name: str) -> str:
    """pg_dump / pg_restore from the same PostgreSQL the runtime uses (the embedded wheel first)."""
    from deploy.runtime.native import pg_bin_dir

    return str(pg_bin_dir() / name)


def service_migrations(policy: Mapping[str, Any]) -> tuple[Migrations, str]:
    """[service.migrations] and the service's dir; a policy without [service] (an older
    stageflow.toml) keeps the SQL files of `migrations/`."""
    if "service" not in policy:
        return Migrations(kind="sql"), "."
    service = load_service(Path("stageflow.toml"), dict(policy))
    return service.migrations, service.dir


def default_dir(policy: Mapping[str, Any]) -> str:
    """The service's migrations folder, as [service] in stageflow.toml places it."""
    m, base = service_migrations(policy)
    return m.dir if base in ("", ".") else f"{base.rstrip('/')}/{m.dir}"


def _dir_name(ctx: GateContext) -> str:
    return str(ctx.config.get("dir", default_dir(ctx.policy)))


def _dir(ctx: GateContext) -> Path:
    return ctx.tree / _dir_name(ctx)


def inputs(ctx: GateContext) -> list[Any] | None:
    if ctx.db_url is None:
        return ["no-db-url"]  # an error verdict, never cached
    conninfo, password = split_url(ctx.db_url)
    folder = _dir(ctx)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    try:
        with _connect(conninfo, password) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    except psycopg.Error as exc:  # the verdict is run's to say; nothing to cache it under
        raise ConfigError(database_says(exc)) from None
    # Only a database small enough to hash row by row can prove it is unchanged; larger ones
    # are rehearsed on every run rather than trusted on weaker evidence.
    if size is None or size[0] > locks.number(ctx, "cache_max_mb", 64) * 1024 * 1024:
        return None
    squawk = _version(ctx, "squawk")
    m, base = service_migrations(ctx.policy)
    return [
        [str(p.relative_to(folder)) for p in files],
        files,
        squawk,
        [m.kind, m.up, m.down, m.current, base],
        conninfo,
        fingerprint(conninfo, password=password),
    ]


def _version(ctx: GateContext, tool: str) -> str:
    try:
        return run_command(
            [ctx.bin(tool), "--version"], cwd=ctx.tree_dir, timeout_s=30
        ).stdout.strip()
    except ConfigError:
        return "missing"  # the run says so in one line; the key only has to differ


# -- the copy of the target -------------------------------------------------------------------

# The ledgers whose rows say what is applied: stageflow's, alembic's, Django's.
LEDGERS = (migrations.LEDGER_TABLE, "alembic_version", "django_migrations")


def copy_mode(ctx: GateContext, db_bytes: int) -> str:
    """data: the target's schema and rows; schema: its schema and the ledgers' rows only."""
    mode = str(ctx.config.get("copy", "auto"))
    if mode not in ("auto", "data", "schema"):
        raise ConfigError('[gates.migrations] copy must be "auto", "data" or "schema"')
    if mode != "auto":
        return mode
    limit = locks.number(ctx, "copy_data_max_mb", 1024) * 1024 * 1024
    return "data" if db_bytes <= limit else "schema"


def copy_target(
    conninfo: str,
    password: Secret | None,
    cluster: ScratchCluster,
    *,
    mode: str,
    tables: list[str],
    timeout_s: float,
) -> dict[str, Any]:
    """pg_dump the target (one read-only snapshot; it waits at most 5 s for a lock, so it never
    queues behind a DDL and stalls the service), pg_restore it into the scratch cluster."""
    env = dict(os.environ)
    env["PGOPTIONS"] = "-c default_transaction_read_only=on"
    if password:
        env["PGPASSWORD"] = password.reveal()
    secrets = (password,) if password else ()
    skip = [
        f"--exclude-table-data={_pattern(t)}"
        for t in tables
        if mode == "schema" and t.rsplit(".", 1)[-1] not in LEDGERS
    ]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stageflow-gate-") as tmp:
        dump = Path(tmp) / "target.dump"
        dump_argv = [pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                     "--no-publications", "--no-subscriptions", "--lock-wait-timeout=5000",
                     *skip, f"--file={dump}", f"--dbname={conninfo}"]  # fmt: skip
        restore_argv = [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                        f"--dbname={cluster.admin_conninfo()}", str(dump)]  # fmt: skip
        restore_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        for argv, what, with_env in (
            (dump_argv, "reading the target", env),
            (restore_argv, "restoring the copy", restore_env),
        ):
            done = run_command(
                argv, cwd=Path(tmp), timeout_s=timeout_s, env=with_env, secrets=secrets
            )
            if not done.ok:
                lines = done.lines()
                # its first error line says why; the last is often the failing statement's tail
                why = next((ln for ln in lines if "error:" in ln), lines[-1] if lines else "")
                raise MigrationError(
                    f"{what}: {Path(argv[0]).name} exited {done.exit_code}: {why or 'no output'}"
                )
        size = dump.stat().st_size
    return {"mode": mode, "seconds": round(time.monotonic() - start, 3), "dump_bytes": size}


def _pattern(table: str) -> str:
    """A pg_dump table pattern naming exactly schema.table (quoted: no wildcards)."""
    schema, _, name = table.partition(".")
    return f'"{schema}"."{name}"'


# -- kind = "sql": stageflow's own files ------------------------------------------------------


def _apply_timed(
    cluster: ScratchCluster,
    files: list[migrations.MigrationFile],
    todo: list[migrations.MigrationFile],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Each pending file profiled (its statements' time and locks) then applied, timed; and the
    profile rows by statement, for the lock lint."""
    scratch = cluster.admin_conninfo()
    timings: list[dict[str, Any]] = []
    measured: dict[str, dict[str, Any]] = {}
    for f in todo:
        entry: dict[str, Any] = {"file": f.filename}
        if f.transactional:
            with scratch_cluster.connect(cluster) as conn:
                rows = locks.profile(conn, migrations.split_sql(f.sql), source=f.filename)
            entry["statements"] = rows
            measured.update({r["statement"]: r for r in rows})
        else:
            entry["statements"] = "not profiled: the file runs outside a transaction"
        start = time.monotonic()
        try:
            migrations.migrate(
                scratch, files, target=f.version, applied_by="release-gate", release="rehearsal"
            )
        except MigrationError as exc:
            raise MigrationError(f"rehearsal of {f.filename} failed: {exc.line()}") from None
        entry["seconds"] = round(time.monotonic() - start, 3)
        timings.append(entry)
    return timings, measured


def rehearse(
    cluster: ScratchCluster,
    files: list[migrations.MigrationFile],
    todo: list[migrations.MigrationFile],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Apply each pending file on the scratch copy, timed; then a down/up round trip where possible."""
    applied, measured = _apply_timed(cluster, files, todo)
    out: dict[str, Any] = {"applied": applied}
    # The newest pending files that all have a down file can be taken down and up again.
    tail: list[migrations.MigrationFile] = []
    for f in reversed(todo):
        if f.down_path is None:
            break
        tail.insert(0, f)
    out["round_trip"] = _round_trip(cluster, files, tail) if tail else "skipped: no down files"
    return out, measured


def _round_trip(
    cluster: ScratchCluster,
    files: list[migrations.MigrationFile],
    tail: list[migrations.MigrationFile],
) -> dict[str, Any]:
    """Take tail down and up again, timed; the schema must come back exactly as it was."""
    scratch = cluster.admin_conninfo()
    schema_before = scratch_cluster.schema_hash(cluster)
    start = time.monotonic()
    try:
        migrations.revert(
            scratch,
            files,
            to_version=tail[0].version - 1,
            applied_by="release-gate",
            release="rehearsal",
        )
        down_s = time.monotonic() - start
        start = time.monotonic()
        migrations.migrate(scratch, files, applied_by="release-gate", release="rehearsal")
    except MigrationError as exc:
        raise MigrationError(f"down/up round trip failed: {exc.line()}") from None
    up_s = time.monotonic() - start
    if scratch_cluster.schema_hash(cluster) != schema_before:
        raise MigrationError(
            "down/up round trip left a different schema",
            hint="make each down file undo exactly its up file",
        )
    return {
        "versions": [f.version for f in tail],
        "down_s": round(down_s, 3),
        "up_s": round(up_s, 3),
    }


def _sql_gate(
    ctx: GateContext,
    cluster: ScratchCluster,
    sizes: Mapping[str, locks.TableSize],
    details: dict[str, Any],
) -> Outcome:
    scratch = cluster.admin_conninfo()
    try:
        files = migrations.discover(_dir(ctx))
        migrations.validate(scratch, files)
        todo = migrations.pending(scratch, files)
    except MigrationError as exc:
        return Outcome("failed", f"validate: {exc.line()}", details)
    details["pending"] = [f.filename for f in todo]
    if not todo:
        return Outcome("passed", f"{len(files)} migration(s), none pending", details)
    lint_files = [f.up_path for f in todo] + [f.down_path for f in todo if f.down_path]
    blocking, warnings = locks.squawk_lint(ctx, lint_files)
    details["squawk_blocking"] = first_lines(blocking, 20)
    details["squawk_warnings"] = first_lines(warnings, 20)
    if blocking:
        return Outcome(
            "failed", f"squawk blocks {len(blocking)} finding(s): {blocking[0]}", details
        )
    details["rehearsal"], measured = rehearse(cluster, files, todo)
    statements = [(f.filename, s) for f in todo for s in migrations.split_sql(f.sql)]
    held = locks.lock_lint(ctx, statements, measured, sizes, details)
    if held:
        return Outcome("failed", f"{len(held)} long lock(s): {held[0]}", details)
    total = sum(t["seconds"] for t in details["rehearsal"]["applied"])
    notes = [f"{n} {what}" for n, what in ((len(warnings), "squawk warning(s)"),
             (len(details["lock_warnings"]), "lock warning(s)")) if n]  # fmt: skip
    return Outcome(
        "passed",
        f"{len(todo)} pending migration(s) rehearsed on a copy in {total:.2f}s"
        + (f"; {', '.join(notes)}" if notes else ""),
        details,
    )


# -- the gate -----------------------------------------------------------------------------------


def run(ctx: GateContext) -> Outcome:
    if ctx.db_url is None:
        return Outcome(
            "error",
            "needs --db-url (the target database, read with a read-only role; nothing is written)",
        )
    conninfo, password = split_url(ctx.db_url)
    secrets = [s for s in (password, ctx.db_url) if s]
    m, _ = service_migrations(ctx.policy)
    details: dict[str, Any] = {"kind": m.kind, "dir": _dir_name(ctx)}
    if m.kind == "none":
        return Outcome("skipped", 'no migrations ([service.migrations] kind = "none")', details)
    user = str(ctx.policy.get("project", {}).get("service_user", "stageflow"))
    try:
        with _connect(conninfo, password) as conn:
            sizes = locks.table_sizes(conn)
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        tables = sorted(k for k in sizes if "." in k)
        with scratch_cluster.started(user_name=user, timeout_s=ctx.timeout_s) as cluster:
            mode = copy_mode(ctx, int(row[0]) if row else 0)
            details["scratch_method"] = "pg_dump"  # into a cluster of its own, never the target's
            details["copy"] = copy_target(
                conninfo, password, cluster, mode=mode, tables=tables, timeout_s=ctx.timeout_s
            )
            if m.kind == "sql":
                outcome = _sql_gate(ctx, cluster, sizes, details)
            else:
                outcome = migrations_command.gate(ctx, m, cluster, sizes, details)
    except MigrationError as exc:
        return Outcome("failed", scrub(exc.line(), secrets), details)
    except psycopg.Error as exc:
        return Outcome("error", scrub(database_says(exc), secrets), details)
    return Outcome(outcome.status, scrub(outcome.summary, secrets), outcome.details)
