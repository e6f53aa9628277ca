"""Data tasks for a service through `inv`: without a seed command, and a data reset that fails
midway (its seed, then one of its migrations) while the previous data stay and keep being served.

The tests share one project and run in order: each leaves staging in the state the next expects.
"""

from __future__ import annotations

import json
import urllib.request

import psycopg

from tests.e2e.conftest import Project

SEED_LINE = 'seed = ["python", "-m", "app.seed", "--size", "{size}"]'
NEEDS_ROWS = """\
-- stageflow: phase=expand
-- A backfill written for the data prod has: on an empty database it stops.
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM notes) THEN
    RAISE EXCEPTION 'backfill needs existing notes';
  END IF;
END $$;
"""


def connect(project: Project, dbname: str = "stageflow_staging") -> psycopg.Connection:
    port = project.ports["staging"]["pg"]
    return psycopg.connect(
        f"postgresql://app_staging:pg-staging-s3cret-value@127.0.0.1:{port}/{dbname}",
        autocommit=True,
    )


def set_seed(project: Project, line: str) -> None:
    path = project.root / "stageflow.toml"
    lines = path.read_text().splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("seed = "))
    lines[at] = line
    path.write_text("\n".join(lines) + "\n")


def state(project: Project) -> tuple:
    """The live database (its oid), its rows that people wrote, and its migration ledger."""
    with connect(project) as conn:
        oid = conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        ).fetchone()[0]
        rows = conn.execute(
            "SELECT id, body, author FROM notes WHERE body NOT LIKE 'smoke%' ORDER BY id"
        ).fetchall()
        ledger = conn.execute(
            "SELECT version, state FROM stageflow_migrations ORDER BY version"
        ).fetchall()
    return oid, rows, ledger


def leftovers(project: Project) -> list[str]:
    with connect(project) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'stageflow_staging_%'"
            )
        ]


def serving(project: Project) -> str:
    with urllib.request.urlopen(project.url("staging", "/healthz"), timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(project.url("staging", "/version"), timeout=5) as resp:
        return json.loads(resp.read())["release"]


def write_rows(project: Project, n: int) -> None:
    with connect(project) as conn:
        conn.cursor().executemany(
            "INSERT INTO notes (body, author) VALUES (%s, %s)",
            [(f"kept note {i}", "tess") for i in range(n)],
        )


def test_a_service_without_a_seed_inits_and_its_seed_task_refuses(project: Project):
    set_seed(project, "seed = []")
    steps = {
        s["step"]: s["result"] for s in json.loads(project.ok("staging.init", "--json").stdout)
    }
    assert steps["migrate"] == "applied [1, 2, 3]"
    assert steps["seed"] == "none: [service] seed is empty"
    refused = project.inv("staging.seed")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "[service] seed is empty" in refused.stderr
    project.ok("staging.deploy")
    assert state(project)[1] == []


def test_a_reset_without_a_seed_recreates_the_schema_by_migrations(project: Project):
    write_rows(project, 5)
    release = serving(project)
    out = project.ok("staging.rollback", "--level", "1", "--reset-data", "--reason", "t").stdout
    assert "skipped: [service] seed is empty" in out
    _, rows, ledger = state(project)
    assert rows == [] and ledger == [(1, "applied"), (2, "applied"), (3, "applied")]
    assert serving(project) == release and leftovers(project) == []


def test_a_reset_whose_seed_fails_keeps_the_data_and_the_service(project: Project):
    set_seed(project, 'seed = ["python", "-c", "import sys; sys.exit(\'seed data missing\')"]')
    write_rows(project, 7)
    before, release = state(project), serving(project)
    res = project.inv("staging.rollback", "--level", "1", "--reset-data", "--reason", "t")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "seed data missing" in res.stderr and "still serves" in res.stderr
    assert state(project) == before and len(before[1]) == 7
    assert serving(project) == release and leftovers(project) == []
    assert "lock free" in project.ok("staging.lock").stdout


def test_a_reset_whose_migration_fails_keeps_the_data_and_the_service(project: Project):
    set_seed(project, SEED_LINE)
    (project.root / "app/migrations/0004_backfill_needs_rows.up.sql").write_text(NEEDS_ROWS)
    (project.root / "app/migrations/0004_backfill_needs_rows.down.sql").write_text("SELECT 1;\n")
    project.commit("a backfill that needs rows")
    project.ok("staging.deploy")  # the live database has rows: the backfill passes there
    before, release = state(project), serving(project)
    assert (4, "applied") in before[2] and len(before[1]) == 7
    res = project.inv("staging.rollback", "--level", "1", "--reset-data", "--reason", "t")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "backfill needs existing notes" in res.stderr and "still serves" in res.stderr
    assert state(project) == before
    assert serving(project) == release and leftovers(project) == []
