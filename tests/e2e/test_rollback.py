"""Rollback through `inv` on a real staging: levels 1-3 under load, schema, backups, freeze, recovery.

The tests share one project and run in order: each leaves staging in the state the next expects.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import psycopg
import pytest

from deploy.config import load_project
from deploy.rollback import interruption

EXPAND = "-- stageflow: phase=expand\n"
CONTRACT = "-- stageflow: phase=contract\n"


def version(project, env="staging"):
    with urllib.request.urlopen(project.url(env, "/version"), timeout=5) as resp:
        return json.loads(resp.read())


def connect(project, env="staging"):
    def read(name):
        path = project.root / "env" / name
        return dict(line.split("=", 1) for line in path.read_text().split() if "=" in line)

    url = read(f"{env}.env")["DATABASE_URL"]
    password = read(f"{env}.secrets.env")["POSTGRES_PASSWORD"]
    return psycopg.connect(url, password=password, autocommit=True)


def columns(project):
    with connect(project) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'"
            )
        }


def ledger(project):
    with connect(project) as conn:
        return dict(
            conn.execute("SELECT version, state FROM stageflow_migrations ORDER BY version")
        )


def user_rows(project):
    """Every note that no smoke probe wrote, with a checksum over them."""
    with connect(project) as conn:
        rows = conn.execute(
            "SELECT id, body FROM notes WHERE body NOT LIKE 'smoke-%' ORDER BY id"
        ).fetchall()
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


def history(project, env="staging"):
    return json.loads(project.ok(f"{env}.history", "--json", "--limit", "50").stdout)


def master_pids(project, env="staging"):
    return json.loads(project.ok(f"{env}.status", "--json").stdout)["app"]["masters"]


def migration(project, version, slug, up, down=None):
    d = project.root / "app/migrations"
    (d / f"{version:04d}_{slug}.up.sql").write_text(up)
    if down is not None:
        (d / f"{version:04d}_{slug}.down.sql").write_text(down)


@dataclass
class Load:
    """GET /healthz on a new connection each time, about 60 per second, counting every failure."""

    port: int
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            began = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/healthz")
                status = conn.getresponse().status
                if 200 <= status < 300:
                    self.ok += 1
                else:
                    self.failures.append(f"HTTP {status}")
            except OSError as exc:
                self.failures.append(f"{exc.__class__.__name__}: {exc}")
            finally:
                conn.close()
            time.sleep(max(0.0, 1 / 60 - (time.monotonic() - began)))

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        while self.ok < 20 and not self.failures:  # the load is flowing before the action
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # keep the load on across the old master's exit
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=20)


@pytest.fixture(scope="module")
def staged(project):
    """staging up and release A deployed; returns A's release id."""
    project.ok("staging.up")
    project.commit("release A", tag="v1.0.0")
    project.ok("staging.deploy", "--ref", "v1.0.0")
    return version(project)["release"]


def test_refusals_before_anything_is_read(project):
    res = project.inv("prod.rollback", "--level", "2", "--yes", kind="agent")
    assert res.returncode == 3 and "automation" in res.stderr and "Traceback" not in res.stderr
    res = project.inv("prod.rollback", "--level", "1", "--reset-data", "--yes")
    assert res.returncode == 2 and "--reset-data is not allowed on prod" in res.stderr
    res = project.inv("staging.rollback")
    assert res.returncode == 2 and "not a rollback level" in res.stderr


def test_level1_and_level2_expand_only_lose_no_request(project, staged):
    a = staged
    migration(
        project,
        4,
        "notes_extra",
        EXPAND + "ALTER TABLE notes ADD COLUMN IF NOT EXISTS extra text;\n",
        "ALTER TABLE notes DROP COLUMN IF EXISTS extra;\n",
    )
    project.commit("release B: expand migration", tag="v1.1.0")
    project.ok("staging.deploy", "--ref", "v1.1.0")
    b = version(project)["release"]
    assert b != a and "extra" in columns(project)

    before = master_pids(project)
    with Load(project.ports["staging"]["app"]) as load:
        out = project.ok(
            "staging.rollback", "--level", "1", "--reason", "restart under load"
        ).stdout
    assert load.failures == [] and load.ok >= 50, (load.ok, load.failures[:5])
    after = master_pids(project)
    assert list(after) == [b] and after[b] != before[b]
    assert "restart" in out and version(project)["release"] == b

    plan = project.ok("staging.rollback", "--level", "2", "--dry-run").stdout
    assert a in plan and "schema stays" in plan and "nothing changed" in plan
    assert version(project)["release"] == b

    with Load(project.ports["staging"]["app"]) as load:
        project.ok("staging.rollback", "--level", "2", "--reason", "B misbehaves")
    assert load.failures == [] and load.ok >= 50, (load.ok, load.failures[:5])
    assert version(project)["release"] == a
    assert "extra" in columns(project) and ledger(project)[4] == "applied"
    assert list(master_pids(project)) == [a]
    newest = history(project)[0]
    assert newest["kind"] == "rollback-2" and newest["status"] == "success"
    assert newest["release"] == a and newest["previous"] == b and newest["duration_s"] > 0
    assert "B misbehaves" in newest["notes"] and "expand-only" in newest["notes"]
    audit = (project.root / ".stageflow/staging/state/audit.jsonl").read_text()
    assert '"action":"rollback-2"' in audit and '"action":"rollback-1"' in audit


def test_level2_runs_the_down_files_of_a_contract_migration(project, staged):
    a = staged
    migration(
        project,
        5,
        "drop_created_index",
        CONTRACT + "DROP INDEX IF EXISTS notes_created_at_idx;\n",
        "CREATE INDEX IF NOT EXISTS notes_created_at_idx ON notes (created_at);\n",
    )
    project.commit("release C: contract migration with a down file", tag="v1.2.0")
    project.ok("staging.deploy", "--ref", "v1.2.0")
    c = version(project)["release"]

    def has_index():
        with connect(project) as conn:
            return conn.execute(
                "SELECT to_regclass('notes_created_at_idx') IS NOT NULL"
            ).fetchone()[0]

    assert not has_index() and ledger(project)[5] == "applied"
    project.ok("staging.rollback", "--level", "2", "--reason", "contract went wrong")
    assert version(project)["release"] == a
    assert has_index() and "extra" not in columns(project)
    led = ledger(project)
    assert led[4] == "reverted" and led[5] == "reverted" and led[3] == "applied"
    newest = history(project)[0]
    assert newest["previous"] == c and "reverted migrations [5, 4]" in newest["notes"]


def test_no_down_file_refuses_level2_and_level3_restores_then_freezes(project, staged):
    a = staged
    with connect(project) as conn:
        for i in range(5):
            conn.execute("INSERT INTO notes (body) VALUES (%s)", (f"before-{i}",))
    before = user_rows(project)
    migration(
        project,
        6,
        "body_not_blank",
        CONTRACT + "ALTER TABLE notes ADD CONSTRAINT notes_body_not_blank CHECK (body <> '');\n",
    )
    project.commit("release D: contract migration without a down file", tag="v1.3.0")
    project.ok("staging.deploy", "--ref", "v1.3.0")
    d = version(project)["release"]
    with connect(project) as conn:
        conn.execute("INSERT INTO notes (body) VALUES ('written-after-the-backup')")
    assert user_rows(project)[0] == before[0] + 1

    res = project.inv("staging.rollback", "--level", "2")
    assert res.returncode == 3, res.stderr
    assert "0006_body_not_blank.up.sql has no down file" in res.stderr and "level 3" in res.stderr
    assert version(project)["release"] == d and ledger(project)[6] == "applied"

    out = project.ok("staging.rollback", "--level", "3", "--reason", "D corrupted notes").stdout
    assert "restore" in out
    assert version(project)["release"] == a
    assert user_rows(project) == before  # every row before the backup, none after it
    led = ledger(project)
    assert 6 not in led and led[5] == "reverted" and "extra" not in columns(project)
    newest = history(project)[0]
    assert newest["kind"] == "rollback-3" and newest["status"] == "success"
    assert newest["previous"] == d and newest["backup"]
    frozen = json.loads((project.root / ".stageflow/staging/state/frozen.json").read_text())
    assert frozen["who"] == project.actor and frozen["why"] == "D corrupted notes"
    assert frozen["backup"] == newest["backup"]

    res = project.inv("staging.deploy", "--ref", "v1.3.0")
    assert res.returncode == 7 and "frozen" in res.stderr
    res = project.inv("staging.unfreeze")
    assert res.returncode == 2 and "--reason" in res.stderr
    project.ok("staging.unfreeze", "--reason", "notes checked after the restore")
    assert not (project.root / ".stageflow/staging/state/frozen.json").exists()
    audit = (project.root / ".stageflow/staging/state/audit.jsonl").read_text()
    assert '"action":"unfreeze"' in audit and "notes checked after the restore" in audit
    # later releases may revert 0006 at level 2
    (project.root / "app/migrations/0006_body_not_blank.down.sql").write_text(
        "ALTER TABLE notes DROP CONSTRAINT IF EXISTS notes_body_not_blank;\n"
    )
    project.commit("down file for 0006")


def faulty_release(project, tag):
    """A release whose /healthz starts failing 2 s after its workers boot."""
    project.set_fault("healthz-fail-after:2")
    return project.commit("release E: health fails after 2 s", tag=tag)


def test_failing_health_after_the_switch_is_rolled_back_automatically(project, staged):
    a = staged
    project.set_policy("staging", verify_window_s=6)
    faulty_release(project, "v1.4.0")
    res = project.inv("staging.deploy", "--ref", "v1.4.0")
    assert res.returncode == 6, res.stdout + res.stderr
    assert version(project)["release"] == a
    newest = history(project)[0]
    assert newest["kind"] == "deploy" and newest["status"] == "rolled-back"
    assert "health check failed" in newest["notes"] and "limit" in newest["notes"]


def test_verify_task_and_a_killed_rollback_that_a_second_one_completes(project, staged):
    a = staged
    out = project.ok("staging.verify", "--window", "1").stdout
    assert "ok" in out and a in out
    project.set_policy("staging", auto_rollback="false")
    res = project.inv("staging.deploy", "--ref", "v1.4.0")
    assert res.returncode == 1 and "auto_rollback is off" in res.stderr
    e = version(project)["release"]
    assert e != a
    res = project.inv("staging.verify", "--window", "4")
    assert res.returncode != 0 and "health check failed" in res.stderr

    killed = project.inv(
        "staging.rollback",
        "--level",
        "2",
        "--reason",
        "E fails health",
        kill_at="switch",
    )
    assert killed.returncode == -signal.SIGKILL
    assert "STALE" in project.ok("staging.lock").stdout
    left = interruption(load_project(project.root, process_env={}), "staging")
    assert (
        left
        and left["lock_stale"]
        and "rollback-2" in left["explain"]
        and "--force" in left["explain"]
    )
    newest = history(project)[0]
    assert newest["kind"] == "rollback-2" and newest["status"] == "interrupted"
    assert newest["release"] == a and newest["previous"] == e
    res = project.inv("staging.rollback", "--level", "2")
    assert res.returncode == 4 and "stale" in res.stderr
    project.ok("staging.lock", "--force", "--reason", "rollback was killed in a test")
    project.ok("staging.rollback", "--level", "2", "--reason", "finish it")
    assert interruption(load_project(project.root, process_env={}), "staging") is None
    assert version(project)["release"] == a and list(master_pids(project)) == [a]
    entries = history(project)
    assert entries[0]["status"] == "success" and "completes interrupted" in entries[0]["notes"]
    dead = next(x for x in entries if x["id"] == newest["id"])
    assert dead["status"] == "failed" and "interrupted" in dead["notes"]
    assert set(ledger(project).items()) >= {(4, "reverted"), (5, "reverted"), (6, "reverted")}


def test_backup_verify_list_then_level1_restarts_redis_and_resets_data(project, staged):
    a = staged
    out = project.ok("staging.backup", "--verify").stdout
    assert "notes" in out and "DIFFERS" not in out
    listed = json.loads(project.ok("staging.backups", "--json").stdout)
    assert listed[0]["release"] == a and len(listed[0]["sha256"]) == 64
    assert listed[0]["reason"] == "manual"
    assert listed[0]["id"] in project.ok("staging.backups").stdout

    # level 1 starts a server that died, and only that one
    pidfile = project.root / ".stageflow/staging/shared/redis/redis.pid"
    redis_pid = int(pidfile.read_text().split()[0])
    os.kill(redis_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{redis_pid}") and time.monotonic() < deadline:
        time.sleep(0.05)

    out = project.ok(
        "staging.rollback", "--level", "1", "--reset-data", "--reason", "fresh data"
    ).stdout
    assert "inserted 10000" in out  # a new database, migrated, seeded small, swapped in
    assert "redis started" in out and "postgres started" not in out
    with connect(project) as conn:
        seeded = conn.execute("SELECT count(*) FROM notes WHERE author LIKE 'seed:%'").fetchone()[0]
    assert user_rows(project)[0] == seeded == 10_000
    assert ledger(project) == {1: "applied", 2: "applied", 3: "applied"}
    assert version(project)["release"] == a
