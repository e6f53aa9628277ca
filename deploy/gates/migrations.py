"""Gate `migrations`: validate, lint pending files with squawk, rehearse them on a scratch copy; never write the target."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from deploy import migrations
from deploy.errors import ConfigError, MigrationError
from deploy.gates import GateContext, Outcome, first_lines, run_command
from deploy.secrets import Secret, scrub

# squawk reports nearly everything as a warning; these rules break running clients, so they block.
DEFAULT_BLOCKING_RULES = (
    "ban-drop-database",
    "adding-required-field",
    "changing-column-type",
    "renaming-column",
    "renaming-table",
    "adding-not-nullable-field",
    *(f"stageflow-{rule}" for rule, _, _ in migrations.LONG_LOCKS),
)
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


def _connect(conninfo: str, password: Secret | None, **override: str) -> psycopg.Connection:
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": 10,
        "application_name": "stageflow-release-gate",
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


def default_dir(policy: Mapping[str, Any]) -> str:
    """The service's SQL migrations folder, as [service] in stageflow.toml places it."""
    service = policy.get("service")
    service = service if isinstance(service, dict) else {}
    table = service.get("migrations")
    folder = str((table if isinstance(table, dict) else {}).get("dir", "migrations"))
    base = str(service.get("dir") or ".")
    return folder if base == "." else f"{base.rstrip('/')}/{folder}"


def _dir_name(ctx: GateContext) -> str:
    return str(ctx.config.get("dir", default_dir(ctx.policy)))


def _dir(ctx: GateContext) -> Path:
    return ctx.tree / _dir_name(ctx)


def inputs(ctx: GateContext) -> list[Any] | None:
    if ctx.db_url is None:
        return ["no-db-url"]  # an error verdict, never cached
    conninfo, password = split_url(ctx.db_url)
    files = sorted(_dir(ctx).glob("*.sql")) if _dir(ctx).is_dir() else []
    with _connect(conninfo, password) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    # Only a database small enough to hash row by row can prove it is unchanged; larger ones
    # are rehearsed on every run rather than trusted on weaker evidence.
    if size is None or size[0] > float(ctx.config.get("cache_max_mb", 64)) * 1024 * 1024:
        return None
    squawk = run_command(
        [ctx.bin("squawk"), "--version"], cwd=ctx.tree, timeout_s=30
    ).stdout.strip()
    return [files, squawk, conninfo, fingerprint(conninfo, password=password)]


def lint(ctx: GateContext, files: list[Path]) -> tuple[list[str], list[str]]:
    """squawk on the pending files: (blocking, warnings), each 'file:line: rule: message'."""
    if not files:
        return [], []
    done = run_command(
        [ctx.bin("squawk"), "--reporter", "json", *[str(f) for f in files]],
        cwd=ctx.tree,
        timeout_s=ctx.timeout_s,
    )
    try:
        findings = json.loads(done.stdout or "[]")
    except ValueError:
        raise MigrationError(
            f"squawk exited {done.exit_code} without a JSON report: "
            f"{(done.lines() or ['no output'])[-1]}"
        ) from None
    rules = set(ctx.config.get("blocking_rules", DEFAULT_BLOCKING_RULES))
    blocking, warnings = [], []
    for f in findings:
        line = f"{Path(f.get('file', '?')).name}:{int(f.get('line', 0)) + 1}: {f.get('rule_name')}: {f.get('message')}"
        (blocking if f.get("level") == "Error" or f.get("rule_name") in rules else warnings).append(
            line
        )
    for path in files:  # what squawk does not see: statements that hold a table for long
        for where, finding in migrations.long_locks(path):
            rule = finding.split(":", 1)[0]
            (blocking if rule in rules else warnings).append(f"{where}: {finding}")
    return blocking, warnings


@contextmanager
def scratch_copy(
    conninfo: str, password: Secret | None, *, label: str, timeout_s: float
) -> Iterator[tuple[str, str]]:
    """A throwaway copy of the target: (conninfo, method); dropped on the way out."""
    target = conninfo_to_dict(conninfo).get("dbname") or "postgres"
    name = f"stageflow_gate_{label}_{uuid.uuid4().hex[:6]}"
    maintenance = {"dbname": "postgres"}
    method = "template"
    with _connect(conninfo, password, **maintenance) as admin:
        try:
            # Instant, but only when nobody (the running service included) is connected to the target.
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(str(target))
                )
            )
        except psycopg.errors.ObjectInUse:
            method = "pg_dump"
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    scratch = make_conninfo(conninfo, dbname=name)
    try:
        if method == "pg_dump":
            _dump_restore(conninfo, scratch, password, timeout_s)
        yield scratch, method
    finally:
        with _connect(conninfo, password, **maintenance) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _dump_restore(source: str, dest: str, password: Secret | None, timeout_s: float) -> None:
    import os

    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = password.reveal()
    secrets = (password,) if password else ()
    with tempfile.TemporaryDirectory(prefix="stageflow-gate-") as tmp:
        dump = Path(tmp) / "target.dump"
        for argv in (
            [
                pg_tool("pg_dump"),
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                f"--file={dump}",
                f"--dbname={source}",
            ],
            [
                pg_tool("pg_restore"),
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                f"--dbname={dest}",
                str(dump),
            ],
        ):
            done = run_command(argv, cwd=Path(tmp), timeout_s=timeout_s, env=env, secrets=secrets)
            if not done.ok:
                raise MigrationError(
                    f"{Path(argv[0]).name} exited {done.exit_code}: "
                    f"{(done.lines() or ['no output'])[-1]}"
                )


def rehearse(
    scratch: str,
    password: Secret | None,
    files: list[migrations.MigrationFile],
    todo: list[migrations.MigrationFile],
) -> dict[str, Any]:
    """Apply each pending file on the scratch copy, timed; then a down/up round trip where possible."""
    out: dict[str, Any] = {"applied": _apply_timed(scratch, password, files, todo)}
    # The newest pending files that all have a down file can be taken down and up again.
    tail: list[migrations.MigrationFile] = []
    for f in reversed(todo):
        if f.down_path is None:
            break
        tail.insert(0, f)
    if not tail:
        out["round_trip"] = "skipped: no down files"
        return out
    out["round_trip"] = _round_trip(scratch, password, files, tail)
    return out


def _apply_timed(
    scratch: str,
    password: Secret | None,
    files: list[migrations.MigrationFile],
    todo: list[migrations.MigrationFile],
) -> list[dict[str, Any]]:
    """Each pending file applied on its own, with the seconds it took."""
    timings: list[dict[str, Any]] = []
    for f in todo:
        start = time.monotonic()
        try:
            migrations.migrate(
                scratch,
                files,
                target=f.version,
                password=password,
                applied_by="release-gate",
                release="rehearsal",
            )
        except MigrationError as exc:
            raise MigrationError(f"rehearsal of {f.filename} failed: {exc.line()}") from None
        timings.append({"file": f.filename, "seconds": round(time.monotonic() - start, 3)})
    return timings


def _round_trip(
    scratch: str,
    password: Secret | None,
    files: list[migrations.MigrationFile],
    tail: list[migrations.MigrationFile],
) -> dict[str, Any]:
    """Take tail down and up again, timed; the schema must come back exactly as it was."""
    schema_before = _schema(scratch, password)
    start = time.monotonic()
    try:
        migrations.revert(
            scratch,
            files,
            to_version=tail[0].version - 1,
            password=password,
            applied_by="release-gate",
            release="rehearsal",
        )
        down_s = time.monotonic() - start
        start = time.monotonic()
        migrations.migrate(
            scratch, files, password=password, applied_by="release-gate", release="rehearsal"
        )
    except MigrationError as exc:
        raise MigrationError(f"down/up round trip failed: {exc.line()}") from None
    up_s = time.monotonic() - start
    if _schema(scratch, password) != schema_before:
        raise MigrationError(
            "down/up round trip left a different schema",
            hint="make each down file undo exactly its up file",
        )
    return {
        "versions": [f.version for f in tail],
        "down_s": round(down_s, 3),
        "up_s": round(up_s, 3),
    }


def _schema(conninfo: str, password: Secret | None) -> str:
    """Columns, indexes and constraints only: a round trip may legitimately lose data."""
    with _connect(conninfo, password) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 1, 2, 3"
        ).fetchall()
        idx = conn.execute(
            "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3"
        ).fetchall()
    return hashlib.sha256(repr((rows, idx)).encode()).hexdigest()


def run(ctx: GateContext) -> Outcome:
    if ctx.db_url is None:
        return Outcome("error", "needs --db-url (the target database; nothing is written to it)")
    conninfo, password = split_url(ctx.db_url)
    secrets = [s for s in (password, ctx.db_url) if s]
    details: dict[str, Any] = {"dir": _dir_name(ctx)}

    def fail(message: str) -> Outcome:
        return Outcome("failed", scrub(message, secrets), details)

    try:
        files = migrations.discover(_dir(ctx))
        migrations.validate(conninfo, files, password=password)
        todo = migrations.pending(conninfo, files, password=password)
    except MigrationError as exc:
        return fail(f"validate: {exc.line()}")
    details["pending"] = [f.filename for f in todo]
    if not todo:
        return Outcome("passed", f"{len(files)} migration(s), none pending", details)
    lint_files = [f.up_path for f in todo] + [f.down_path for f in todo if f.down_path]
    blocking, warnings = lint(ctx, lint_files)
    details["squawk_blocking"] = first_lines(blocking, 20)
    details["squawk_warnings"] = first_lines(warnings, 20)
    if blocking:
        return fail(f"squawk blocks {len(blocking)} finding(s): {blocking[0]}")
    try:
        with scratch_copy(conninfo, password, label=ctx.commit[:8], timeout_s=ctx.timeout_s) as (
            scratch,
            method,
        ):
            details["scratch_method"] = method
            details["rehearsal"] = rehearse(scratch, password, files, todo)
    except MigrationError as exc:
        return fail(exc.line())
    except psycopg.Error as exc:
        return Outcome(
            "error", scrub(f"database: {str(exc).strip().splitlines()[0]}", secrets), details
        )
    total = sum(t["seconds"] for t in details["rehearsal"]["applied"])
    return Outcome(
        "passed",
        f"{len(todo)} pending migration(s) rehearsed on a {method} copy in {total:.2f}s"
        f"{f'; {len(warnings)} squawk warning(s)' if warnings else ''}",
        details,
    )
