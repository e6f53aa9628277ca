"""Staging as a rehearsal of prod, through `inv`: init, deploy, seed, smoke, refresh, monitor, reset."""

from __future__ import annotations

import json

import psycopg
import pytest

from deploy import staging
from deploy.config import load_project
from deploy.errors import GuardRefused
from tests import support
from tests.e2e.conftest import Project

PROD_ROWS = [
    (f"customer {i} asked about invoice {1000 + i}", f"user{i % 7}@example.com") for i in range(40)
] + [("a note without an author", None)]


def dsn(project: Project, env: str, dbname: str | None = None) -> str:
    port = project.ports[env]["pg"]
    return (
        f"postgresql://app_{env}:pg-{env}-s3cret-value@127.0.0.1:{port}/"
        f"{dbname or 'stageflow_' + env}"
    )


def fingerprint(project: Project, env: str) -> tuple:
    """Which database (its oid), its schema, and every row of it."""
    with psycopg.connect(dsn(project, env)) as conn:
        oid = conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        schema = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY 1, 2"
        ).fetchall()
        notes = conn.execute(
            "SELECT md5(string_agg(id || body || coalesce(author, '') || created_at, ',' ORDER BY id))"
            " FROM notes"
        ).fetchone()
        ledger = conn.execute(
            "SELECT string_agg(version::text || checksum, ',' ORDER BY version)"
            " FROM stageflow_migrations"
        ).fetchone()
    return oid, schema, notes, ledger


def test_the_engine_refuses_production_whatever_calls_it():
    proj = load_project(support.REPO, process_env={})
    with pytest.raises(GuardRefused, match="production"):
        staging.init(proj, "prod", actor="test", reset=True)
    with pytest.raises(GuardRefused, match="production"):
        staging.refresh(proj, "prod", source="staging", anonymize_data=True, actor="test")


def test_fresh_clone_init_deploy_seed_smoke(project: Project):
    first = project.ok("staging.init", "--json")
    steps = {s["step"]: s["result"] for s in json.loads(first.stdout)}
    assert "applied [1, 2, 3]" in steps["migrate"]
    assert "small seed" in steps["seed"] and "inserted 10000" in steps["seed"]
    # idempotent: a second run finds everything in place
    again = {
        s["step"]: s["result"] for s in json.loads(project.ok("staging.init", "--json").stdout)
    }
    assert again["migrate"] == "up to date" and "kept the data already there" in again["seed"]
    assert "already running" in again["servers"]

    project.ok("staging.deploy")
    with psycopg.connect(dsn(project, "staging"), autocommit=True) as conn:
        conn.execute("INSERT INTO notes (body, author) VALUES ('written by a tester', 'tess')")
    seeded = json.loads(project.ok("staging.seed", "--size", "small", "--json").stdout)
    assert (seeded["deleted"], seeded["inserted"]) == (10000, 10000)
    with psycopg.connect(dsn(project, "staging")) as conn:
        assert conn.execute("SELECT count(*) FROM notes WHERE author = 'tess'").fetchone()[0] == 1

    probes = {p["name"]: p for p in json.loads(project.ok("staging.smoke", "--json").stdout)}
    for name in ("environment", "config", "directories", "features", "thresholds", "services",
                 "isolation", "health", "identity"):  # fmt: skip
        assert probes[name]["ok"], probes[name]
    assert probes["thresholds"]["detail"] == "staging = prod x 2"

    status = json.loads(project.ok("staging.status", "--json").stdout)
    assert ["health_failures", "6", "3", "x2"] in status["thresholds"]
    assert "staging thresholds" in project.ok("staging.status").stdout

    missing = project.inv("prod.init")
    assert missing.returncode != 0 and "prod.init" in missing.stderr

    reading = json.loads(project.ok("staging.monitor", "--once", "--json").stdout)
    assert reading["health"]["status"] == "ok" and reading["memory"]["limit_mb"] == 1024
    assert reading["request_rate"]["per_s"] is not None
    assert reading["release"] == status["app"]["release"]


def test_refresh_copies_prod_rows_without_a_raw_value(project: Project):
    project.ok("prod.up")
    project.trust(project.actor)  # prod's database changes outside a deploy are signed
    project.ok("prod.migrate")
    with psycopg.connect(dsn(project, "prod")) as conn:
        conn.cursor().executemany("INSERT INTO notes (body, author) VALUES (%s, %s)", PROD_ROWS)
        conn.commit()
    prod_before = fingerprint(project, "prod")

    refused = project.inv("staging.refresh", "--from", "prod")
    assert refused.returncode == 3 and "refused by policy" in refused.stderr

    out = json.loads(
        project.ok("staging.refresh", "--from", "prod", "--anonymize", "--json").stdout
    )
    assert out["fresh_dump"] is True and out["leaks"] == {"notes.author": 0, "notes.body": 0}
    assert out["rows"]["notes"] == len(PROD_ROWS)

    with psycopg.connect(dsn(project, "prod")) as conn:
        prod = conn.execute("SELECT body, author FROM notes").fetchall()
    with psycopg.connect(dsn(project, "staging")) as conn:
        stage = conn.execute("SELECT body, author FROM notes").fetchall()
        scratch = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'stageflow_staging_%'"
        ).fetchall()
    assert len(stage) == len(prod) and scratch == []
    assert not {b for b, _ in stage} & {b for b, _ in prod}
    assert not {a for _, a in stage if a} & {a for _, a in prod if a}
    assert sum(a is None for _, a in stage) == 1
    assert fingerprint(project, "prod") == prod_before  # nothing was written to prod

    # the serving release reconnects to the swapped-in database
    probes = {p["name"]: p for p in json.loads(project.ok("staging.smoke", "--json").stdout)}
    assert probes["GET /notes"]["ok"], probes["GET /notes"]  # reads back what smoke wrote


def test_refresh_with_prod_down_leaves_staging_untouched(project: Project):
    project.ok("prod.up")
    before = fingerprint(project, "staging")
    project.ok("prod.down")
    try:
        # the latest backup is readable, but the check against prod is not: refused
        from_backup = project.inv("staging.refresh", "--from", "prod", "--anonymize")
        assert from_backup.returncode != 0
        assert "cannot read prod" in from_backup.stderr and "Traceback" not in from_backup.stderr
        fresh = project.inv("staging.refresh", "--from", "prod", "--anonymize", "--fresh")
        assert fresh.returncode != 0 and "cannot dump prod" in fresh.stderr
        assert fingerprint(project, "staging") == before
        with psycopg.connect(dsn(project, "staging")) as conn:
            left = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'stageflow_staging_%'"
            ).fetchall()
        assert left == []
        assert "lock free" in project.ok("staging.lock").stdout
    finally:
        project.ok("prod.up")


def test_reset_rebuilds_staging_from_scratch(project: Project):
    with psycopg.connect(dsn(project, "staging"), autocommit=True) as conn:
        conn.execute("INSERT INTO notes (body, author) VALUES ('left from before', 'tess')")
    history_before = project.history("staging")
    steps = json.loads(project.ok("staging.init", "--reset", "--json").stdout)
    got = {s["step"]: s["result"] for s in steps}
    assert "removed (state/ kept)" in got["reset"] and "initialised" in got["servers"]
    assert got["migrate"] == "applied [1, 2, 3]"
    with psycopg.connect(dsn(project, "staging")) as conn:
        rows = conn.execute("SELECT count(*), count(*) FILTER (WHERE author = 'tess') FROM notes")
        assert rows.fetchone() == (10000, 0)
    assert project.history("staging") == history_before  # the audit trail outlives a reset
    refused = project.inv("prod.init", "--reset")
    assert refused.returncode != 0
