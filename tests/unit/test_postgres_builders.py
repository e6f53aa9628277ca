"""The PostgreSQL builders return exact argv lists; values with spaces or a leading '-' stay one
argument each, and the one operand a file name can be (pg_restore's dump) follows `--`."""

from __future__ import annotations

from pathlib import Path

from deploy.commands import compose, postgres

BIN = Path("/opt/pg 16/bin")
DSN = "host=/run/pg port=5433 dbname=stageflow_dev user=postgres"


def test_pg_dump_of_a_database_named_by_connection_string():
    assert postgres.pg_dump_dsn(BIN, DSN, "/srv/backups/B1.dump") == [
        "/opt/pg 16/bin/pg_dump",
        "-Fc",
        "-Z",
        "1",
        "--no-owner",
        "-f",
        "/srv/backups/B1.dump",
        "-d",
        DSN,
    ]
    # -f takes its value as an argument: a dashed file name is still the output file
    assert postgres.pg_dump_dsn(BIN, DSN, "-B1.dump")[5:7] == ["-f", "-B1.dump"]


def test_pg_restore_of_a_database_named_by_connection_string():
    assert postgres.pg_restore_dsn(BIN, DSN, "/srv/backups/B1.dump") == [
        "/opt/pg 16/bin/pg_restore",
        "--clean",
        "--if-exists",
        "--exit-on-error",
        "--no-owner",
        "--jobs=2",
        "-d",
        DSN,
        "--",
        "/srv/backups/B1.dump",
    ]
    argv = postgres.pg_restore_dsn(BIN, DSN, "-B1 copy.dump", jobs=4, role="app_dev")
    assert argv[5:7] == ["--role=app_dev", "--jobs=4"]
    assert argv[-2:] == ["--", "-B1 copy.dump"]


def test_the_container_clients_by_role_and_database():
    assert postgres.pg_dump(user="app dev", database="-db", output="/tmp/B1.dump") == [
        "pg_dump",
        "-Fc",
        "-Z",
        "1",
        "--no-owner",
        "-U",
        "app dev",
        "-d",
        "-db",
        "-f",
        "/tmp/B1.dump",
    ]
    assert postgres.pg_restore(user="u", database="d", dump="/tmp/B1.dump", jobs=3) == [
        "pg_restore",
        "--clean",
        "--if-exists",
        "--exit-on-error",
        "--no-owner",
        "--jobs=3",
        "-U",
        "u",
        "-d",
        "d",
        "/tmp/B1.dump",
    ]


def test_psql_gives_each_statement_its_own_c():
    assert postgres.psql(user="u", database="d", statements=["SELECT 1", "-- a comment"]) == [
        "psql",
        "-X",
        "-q",
        "-t",
        "-A",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        "u",
        "-d",
        "d",
        "-c",
        "SELECT 1",
        "-c",
        "-- a comment",
    ]
    assert postgres.psql(user="u", database="d", statements=[])[-2:] == ["-d", "d"]


def test_statements_quote_identifiers():
    assert postgres.quote_ident('a "b" c') == '"a ""b"" c"'
    assert postgres.recreate_database_sql("my db", "-owner") == [
        'DROP DATABASE IF EXISTS "my db" WITH (FORCE)',
        'CREATE DATABASE "my db" OWNER "-owner"',
    ]
    assert postgres.create_database_sql("s t") == ['CREATE DATABASE "s t"']
    assert postgres.drop_database_sql("s t") == ['DROP DATABASE IF EXISTS "s t" WITH (FORCE)']
    (ledger,) = postgres.ledger_rows_sql("my ledger")
    assert "to_regclass('\"my ledger\"')" in ledger
    assert 'jsonb_agg(to_jsonb(l) ORDER BY l.version)::text FROM "my ledger" l' in ledger
    (counts,) = postgres.table_counts_sql()
    assert counts.endswith("SELECT current_setting('stageflow.counts', true)")


def test_compose_names_the_same_builders():
    """Compose callers reach the container's clients through deploy.commands.compose."""
    for name in (
        "pg_dump",
        "pg_restore",
        "psql",
        "quote_ident",
        "recreate_database_sql",
        "create_database_sql",
        "drop_database_sql",
        "ledger_rows_sql",
        "table_counts_sql",
        "sessions_sql",
        "MAINTENANCE_DB",
    ):
        assert getattr(compose, name) is getattr(postgres, name), name


def test_the_ledger_query_in_the_container():
    c = compose.ComposeCommands("p", "env/dev.env", ("compose/compose.yml",))
    assert compose.ledger_in_container(c, user="u", database="d", ledger_table="t") == [
        *c.base(),
        "exec",
        "-T",
        "postgres",
        *postgres.psql(user="u", database="d", statements=postgres.ledger_rows_sql("t")),
    ]


def test_the_sessions_count_in_the_container():
    """A release's sessions on the project's cluster, counted by psql in the postgres container:
    the application name is a quoted literal, psql's own session is left out."""
    c = compose.ComposeCommands("p", "env/dev.env", ("compose/compose.yml",))
    assert postgres.sessions_sql("stageflow:dev:2026'x") == [
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
        "'stageflow:dev:2026''x' AND pid <> pg_backend_pid()"
    ]
    argv = compose.sessions_in_container(
        c, user="app_dev", database="stageflow_dev", application_name="stageflow:dev:r1"
    )
    assert argv == [
        *c.base(),
        "exec",
        "-T",
        "postgres",
        "psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-U", "app_dev",
        "-d", "stageflow_dev",
        "-c",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stageflow:dev:r1' "
        "AND pid <> pg_backend_pid()",
    ]  # fmt: skip
