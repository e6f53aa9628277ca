"""What the fault matrices share: the steps a deploy plan lists, `inv` killed at one of them, and
what must hold afterwards (rows, migration ledger against the schema, a stale lock that yields).

The matrices kill `inv` with SIGKILL as a named step starts (tests/killpoint.py), then read the
environment from outside: the database through its env files, the lock through `inv ENV.lock`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from deploy.config import load_project
from deploy.engine import deploy_pipeline
from tests.e2e.conftest import Project, make_project

# -- the plan ---------------------------------------------------------------------------------------


def planned_steps(env: str, configure: Callable[[Project], None]) -> tuple[str, ...]:
    """The step names `deploy_pipeline.plan` lists for env in a throwaway project shaped by
    configure (nothing runs, no host is reached). Read when the matrix is collected, so a step
    added to the pipeline becomes a case without the matrix being edited."""
    proj = make_project("sf-plan-")
    try:
        configure(proj)
        proj.commit("the environment the matrix kills deploys of")
        loaded = load_project(proj.root, process_env={})
        return tuple(name for name, _ in deploy_pipeline.plan(loaded, env, ref="HEAD")["steps"])
    finally:
        shutil.rmtree(proj.root.parent, ignore_errors=True)
        if proj.entry:
            proj.entry.unlink(missing_ok=True)


def after(steps: tuple[str, ...], killed: str, done: str) -> bool:
    """Whether step `done` had finished when the run was killed as step `killed` started."""
    return steps.index(killed) > steps.index(done)


# -- a rollback level's plan ------------------------------------------------------------------------


def rollback_plan(project: Project, name: str, level: int, **inv: Any) -> dict[str, Any]:
    """`inv NAME.rollback --level N --dry-run --json` on the live environment: current, target,
    backup, and the steps, which are the very list a run of that level walks."""
    res = project.ok(f"{name}.rollback", "--level", str(level), "--dry-run", "--json", **inv)
    return json.loads(res.stdout)


def rollback_cases(plan: Mapping[str, Any]) -> tuple[str, ...]:
    """Where a rollback is killed: the lifecycle's lock, every step of the plan, its unlock. Read
    from the dry run, so a step added to a level becomes a case without the matrix changing."""
    return ("lock", *(name for name, _ in plan["steps"]), "unlock")


def dark(steps: tuple[str, ...], killed: str, *, starts: str) -> bool:
    """Level 3 killed after its `stop` ran and before `starts` (the step that puts the backup's
    release in front) ran: nothing serves until the rollback runs again."""
    return after(steps, killed, "stop") and not after(steps, killed, starts)


# -- the environment's database, read from outside --------------------------------------------------


def _read_env(project: Project, name: str) -> dict[str, str]:
    path = project.root / "env" / name
    return dict(line.split("=", 1) for line in path.read_text().split() if "=" in line)


def connect(project: Project, env: str = "staging") -> psycopg.Connection[Any]:
    url = _read_env(project, f"{env}.env")["DATABASE_URL"]
    password = _read_env(project, f"{env}.secrets.env")["POSTGRES_PASSWORD"]
    return psycopg.connect(url, password=password, autocommit=True, connect_timeout=10)


def user_rows(project: Project, env: str = "staging") -> tuple[int, str]:
    """Every note no smoke probe wrote: how many, and a checksum over id and body."""
    with connect(project, env) as conn:
        rows = conn.execute(
            "SELECT id, body FROM notes WHERE body NOT LIKE 'smoke-%' ORDER BY id"
        ).fetchall()
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


def write_rows(project: Project, prefix: str, n: int = 3, env: str = "staging") -> None:
    with connect(project, env) as conn:
        for i in range(n):
            conn.execute("INSERT INTO notes (body) VALUES (%s)", (f"{prefix}-{i}",))


def ledger(project: Project, env: str = "staging") -> dict[int, str]:
    with connect(project, env) as conn:
        return dict(conn.execute("SELECT version, state FROM stageflow_migrations"))


def assert_ledger_matches_schema(
    project: Project, env: str = "staging", *, columns: Mapping[int, str] | None = None
) -> dict[int, str]:
    """The ledger says applied exactly for the migrations whose change the schema shows: the
    shipped 0001-0003, and each of `columns` (version -> the column its up file adds to notes)."""
    columns = columns or {}
    led = ledger(project, env)
    with connect(project, env) as conn:
        cols = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'"
            )
        }
        index = conn.execute("SELECT to_regclass('notes_created_at_idx') IS NOT NULL").fetchone()
    assert "failed" not in led.values(), led
    assert set(led) <= {1, 2, 3, *columns}, led
    assert led.get(1) == "applied" and "body" in cols, led
    assert (led.get(2) == "applied") == bool(index and index[0]), (led, index)
    assert (led.get(3) == "applied") == ("author" in cols), (led, cols)
    for version, column in columns.items():
        assert (led.get(version) == "applied") == (column in cols), (version, led, cols)
    return led


# -- a migration per case ---------------------------------------------------------------------------

FAULT_PREFIX = "fault_"


def fault_columns(project: Project) -> dict[int, str]:
    """Every migration add_fault_migration wrote: version -> the column it adds."""
    out: dict[int, str] = {}
    for path in (project.root / "app" / "migrations").glob(f"*_{FAULT_PREFIX}*.up.sql"):
        version = int(path.name.split("_", 1)[0])
        out[version] = f"{FAULT_PREFIX}{version}"
    return out


def add_fault_migration(project: Project) -> int:
    """The next migration: one nullable column (an expand change any older release ignores), so
    every case's deploy has a backup to take and a migration to apply; its version."""
    d = project.root / "app" / "migrations"
    version = 1 + max(int(p.name.split("_", 1)[0]) for p in d.glob("*.up.sql"))
    column = f"{FAULT_PREFIX}{version}"
    (d / f"{version:04d}_{column}.up.sql").write_text(
        f"-- stageflow: phase=expand\nALTER TABLE notes ADD COLUMN IF NOT EXISTS {column} text;\n"
    )
    return version


# -- the kill and the lock it leaves ----------------------------------------------------------------


def kill_at(
    project: Project, step: str, argv: tuple[str, ...], **inv: Any
) -> subprocess.CompletedProcess[str]:
    """`inv ARGV`, SIGKILLed as `step` starts; it must have died there, not finished or failed.
    A deploy builds and probes before its late steps: on a busy machine that takes minutes."""
    inv.setdefault("timeout", 600)
    res = project.inv(*argv, kill_at=step, **inv)
    assert res.returncode == -signal.SIGKILL, (
        f"{' '.join(argv)} did not die at {step}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    )
    return res


def check_lock_and_force(project: Project, step: str, name: str = "staging", **inv: Any) -> None:
    """Killed before the lock step ran, the lock is free; after, `NAME.lock` reports it stale and
    `--force` releases it."""
    out = project.ok(f"{name}.lock", **inv).stdout
    if step in ("preflight", "lock"):
        assert "lock free" in out, out
        return
    assert "STALE" in out, out
    res = project.inv(
        f"{name}.lock", "--force", "--reason", f"fault matrix: killed at {step}", **inv
    )
    assert res.returncode == 0 and "released (audited)" in res.stdout, res.stdout + res.stderr
