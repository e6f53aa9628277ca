"""argv builders for PostgreSQL's clients (pg_dump, pg_restore, psql) and the SQL they carry.

Two ways to reach a database: by connection string with the binaries of one bin dir (an
environment's own cluster, native runtime), or by role and database over the server's own socket
with the clients on PATH (inside the postgres container, whose socket trusts its superuser: no
password on a command line).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

MAINTENANCE_DB = "postgres"


# -- a database named by connection string, with the binaries of bin_dir ------------------------


def pg_dump_dsn(bin_dir: Path, dsn: str, output: str) -> list[str]:
    """The backup format: custom (-Fc), fast compression, no ownership."""
    return [str(bin_dir / "pg_dump"), "-Fc", "-Z", "1", "--no-owner", "-f", output, "-d", dsn]


def pg_restore_dsn(
    bin_dir: Path, dsn: str, dump: str, *, jobs: int = 2, role: str | None = None
) -> list[str]:
    # --role: objects come back owned by the app's role, not by the superuser restoring them.
    # The dump is pg_restore's one operand: after `--` a file name is never read as an option.
    return [
        str(bin_dir / "pg_restore"),
        "--clean",
        "--if-exists",
        "--exit-on-error",
        "--no-owner",
        *([f"--role={role}"] if role else []),
        f"--jobs={jobs}",
        "-d",
        dsn,
        "--",
        dump,
    ]


def psql_dsn(program: Path, dsn: str, query: str) -> list[str]:
    """One query by connection string: unaligned rows, no psqlrc, stop at the first error. The
    password never rides on argv: the caller hands it to libpq in PGPASSWORD."""
    return [str(program), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", query]


# -- a database named by role and database, clients on PATH (the postgres container) -------------


def pg_dump(*, user: str, database: str, output: str) -> list[str]:
    """The native backup's format: custom (-Fc), fast compression, no ownership."""
    return ["pg_dump", "-Fc", "-Z", "1", "--no-owner", "-U", user, "-d", database, "-f", output]


def pg_restore(*, user: str, database: str, dump: str, jobs: int = 2) -> list[str]:
    # --no-owner: objects come back owned by the role restoring them, the environment's own
    return [
        "pg_restore",
        "--clean",
        "--if-exists",
        "--exit-on-error",
        "--no-owner",
        f"--jobs={jobs}",
        "-U",
        user,
        "-d",
        database,
        dump,
    ]


def psql(*, user: str, database: str, statements: Sequence[str]) -> list[str]:
    """Each statement a -c of its own (its own transaction); unaligned rows, no psqlrc."""
    argv = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", database]
    for statement in statements:
        argv += ["-c", statement]
    return argv


# -- statements ----------------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def recreate_database_sql(database: str, owner: str) -> list[str]:
    """Drop the database (ending its sessions) and create it empty: run against MAINTENANCE_DB."""
    return [
        f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)",
        f"CREATE DATABASE {quote_ident(database)} OWNER {quote_ident(owner)}",
    ]


def create_database_sql(database: str) -> list[str]:
    return [f"CREATE DATABASE {quote_ident(database)}"]


def drop_database_sql(database: str) -> list[str]:
    return [f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)"]


def ledger_rows_sql(ledger_table: str) -> list[str]:
    """One line: the migration ledger's rows as a JSON array ordered by version (every column,
    by name); `[]` when there is no ledger. Enough to tell what is pending and to check the
    ledger against a release's files (failed rows, drift) without running the release.

    PL/pgSQL plans its SELECT only when it reaches it, so a database without the ledger table
    answers instead of failing; both statements run in one transaction (one -c)."""
    table = quote_ident(ledger_table)
    return [
        "DO $stageflow$ BEGIN "
        f"IF to_regclass('{table}') IS NOT NULL THEN "
        "PERFORM set_config('stageflow.ledger', coalesce((SELECT jsonb_agg(to_jsonb(l) ORDER BY l.version)::text "
        f"FROM {table} l), '[]'), true); "
        "END IF; END $stageflow$; "
        "SELECT coalesce(nullif(current_setting('stageflow.ledger', true), ''), '[]')"
    ]


def sessions_sql(application_name: str) -> list[str]:
    """One line: how many sessions of the cluster carry application_name, psql's own left out
    (pg_stat_activity shows every role's application name to any role)."""
    return [
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
        f"{quote_literal(application_name)} AND pid <> pg_backend_pid()"
    ]


def table_counts_sql() -> list[str]:
    """One line: {"table": rows, ...} for every table of the public schema, as JSON."""
    return [
        "DO $stageflow$ DECLARE t text; n bigint; counts jsonb := '{}'; BEGIN "
        "FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename "
        "LOOP EXECUTE format('SELECT count(*) FROM public.%I', t) INTO n; "
        "counts := counts || jsonb_build_object(t, n); END LOOP; "
        "PERFORM set_config('stageflow.counts', counts::text, true); END $stageflow$; "
        "SELECT current_setting('stageflow.counts', true)"
    ]
