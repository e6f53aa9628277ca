"""Rollback of a three-host staging over real OpenSSH hosts: every host goes back, state on the primary.

The tests share one fleet and run in order: each leaves staging serving one release everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from deploy.config import load_project
from deploy.engine import group, rollback_pipeline
from deploy.errors import ExitCode
from deploy.policy.actors import Actor
from deploy.state import DeployLock
from tests import support
from tests.conftest import need
from tests.e2e.conftest import Project, destroy, make_project
from tests.sshd import (
    Sshd,
    StopsAfterPrimary,
    can_run_sshd,
    fleet,
    kill_served,
    seed_venv,
    set_hosts,
    shared_venv,
)

HOSTS = 3
EXPAND = "-- stageflow: phase=expand\n"


def wait_until(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


class Staging:
    def __init__(self, project: Project, hosts: list[Sshd], dirs: list[Path]) -> None:
        self.project = project
        self.hosts = hosts
        self.dirs = dirs  # each host's data dir; the first is the primary's
        self.releases: dict[str, str] = {}  # "A", "B": release ids

    def serving(self) -> list[str | None]:
        """What each host answers on its own bind address (None: nothing answers)."""
        out: list[str | None] = []
        for h in self.hosts:
            url = f"http://{h.address}:{self.project.ports['staging']['app']}/version"
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    out.append(json.loads(resp.read())["release"])
            except OSError:
                out.append(None)
        return out

    def state(self, name: str) -> Path:
        return self.dirs[0] / "state" / name

    def history(self) -> list[dict[str, Any]]:
        """The primary's history file read directly, newest first, one record per id."""
        by_id: dict[str, dict[str, Any]] = {}
        for line in self.state("history.jsonl").read_text().splitlines():
            rec = json.loads(line)
            by_id[rec["id"]] = {**by_id.get(rec["id"], {}), **rec}
        return list(by_id.values())[::-1]

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.state("audit.jsonl").read_text().splitlines()]

    def masters(self, rid: str) -> list[int]:
        """The master pid of release rid on each host, from the host's pid file."""
        return [int((d / "run" / f"app-{rid}.pid").read_text().split()[0]) for d in self.dirs]

    def _env(self, name: str) -> dict[str, str]:
        text = (self.project.root / "env" / name).read_text()
        return dict(line.split("=", 1) for line in text.split() if "=" in line)

    def _dsn(self) -> str:
        return self._env("staging.env")["DATABASE_URL"]

    def _password(self) -> str:
        return self._env("staging.secrets.env")["POSTGRES_PASSWORD"]

    def ledger(self) -> dict[int, str]:
        """The staging database's migration ledger: version -> state."""
        return {int(v): st for v, st in self.sql("SELECT version, state FROM stageflow_migrations")}

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        """One statement on the staging database; the rows it returns, if any."""
        with psycopg.connect(self._dsn(), password=self._password(), autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []

    def engine(self, **kw: Any) -> dict[str, Any]:
        """The rollback engine in this process, so a test can act between two batches."""
        proj = load_project(self.project.root, process_env={})
        actor = Actor(name=self.project.actor, kind="human")
        return rollback_pipeline.rollback(proj, "staging", actor=actor, yes=True, **kw)


@pytest.fixture(scope="module")
def staging() -> Iterator[Staging]:
    ok, why = can_run_sshd()
    need(ok, why)
    base = support.public_tmpdir("sf-sshd-rb-")
    project = make_project("sf-e2e-rolling-rollback-")
    try:
        # addresses of their own, apart from the other SSH tests' fleets
        with fleet(base, HOSTS, first=40) as servers:
            dirs = set_hosts(project.root, "staging", servers, batch="1", verify_window_s=0)
            project.commit("staging on 3 hosts")
            lock = project.root / "app" / "requirements.lock"
            venv = shared_venv(lock)
            for d in dirs:  # the rolling tests build a venv over SSH for real; here none does
                seed_venv(d, venv, lock)
            project.ok("staging.up")
            s = Staging(project, servers, dirs)
            try:
                yield s
            finally:
                destroy(project)  # `down` stops the service on every host while sshd still runs
                for d in dirs:
                    kill_served(d)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(project.root.parent, ignore_errors=True)


def test_level2_sends_every_host_back_and_the_primary_records_it(staging: Staging) -> None:
    p = staging.project
    p.commit("release A")
    staging.releases["A"] = json.loads(p.ok("staging.deploy", "--json").stdout)["release"]
    # B ships an expand migration: the plan reads its phase from the primary's copy of B, and
    # keeps the column (A ignores it, and B finds its schema when the last test returns to it)
    d = p.root / "app" / "migrations"
    (d / "0004_rr_tag.up.sql").write_text(EXPAND + "ALTER TABLE notes ADD COLUMN rr_tag text;\n")
    (d / "0004_rr_tag.down.sql").write_text("ALTER TABLE notes DROP COLUMN rr_tag;\n")
    p.commit("release B: an expand migration")
    staging.releases["B"] = json.loads(p.ok("staging.deploy", "--json").stdout)["release"]
    a, b = staging.releases["A"], staging.releases["B"]
    assert staging.serving() == [b] * HOSTS and staging.ledger()[4] == "applied"

    plan = p.ok("staging.rollback", "--level", "2", "--dry-run").stdout
    assert a in plan and staging.hosts[0].destination in plan, plan

    res = p.ok("staging.rollback", "--level", "2", "--yes")
    assert staging.serving() == [a] * HOSTS, res.stdout
    assert staging.ledger()[4] == "applied"
    newest = staging.history()[0]
    assert "schema kept (expand-only [4])" in newest["notes"], newest
    assert newest["kind"] == "rollback-2" and newest["status"] == "success"
    assert newest["release"] == a and newest["previous"] == b
    assert all(f"{h.destination} ok" in newest["notes"] for h in staging.hosts), newest
    record = staging.audit()[-1]
    assert record["action"] == "rollback-2" and record["status"] == "success"
    assert [(o["host"], o["status"]) for o in record["hosts"]] == [
        (h.destination, "ok") for h in staging.hosts
    ]
    # lock and state live on the primary only: the other hosts and DATA_DIR hold none
    assert not any((d / "state").exists() for d in staging.dirs[1:])
    assert not (p.root / ".stageflow" / "staging" / "state" / "history.jsonl").exists()
    # `history` reads the primary
    shown = json.loads(p.ok("staging.history", "--json").stdout)
    assert shown[0]["id"] == newest["id"] and shown[0]["kind"] == "rollback-2"
    table = p.ok("staging.history").stdout
    assert "rollback-2" in table and a in table


def test_lock_is_read_and_taken_on_the_primary(staging: Staging) -> None:
    p = staging.project
    assert "lock free" in p.ok("staging.lock").stdout
    host, layout = group.primary(load_project(p.root, process_env={}), "staging")
    held = DeployLock(host, layout)
    held.acquire(who="carol@example.com", command="by hand", release="")
    try:
        assert "carol@example.com" in p.ok("staging.lock").stdout
        res = p.inv("staging.rollback", "--level", "1", "--yes")
        assert res.returncode == ExitCode.LOCK_HELD, res.stdout + res.stderr
        assert "carol@example.com" in res.stderr
    finally:
        held.release()
        host.close()
    assert "lock free" in p.ok("staging.lock").stdout


def test_level1_restarts_the_release_on_every_host(staging: Staging) -> None:
    p = staging.project
    current = staging.serving()[0]
    assert current and staging.serving() == [current] * HOSTS
    before = staging.masters(current)
    res = p.ok("staging.rollback", "--level", "1", "--yes")
    after = staging.masters(current)
    assert all(x != y for x, y in zip(before, after, strict=True)), (before, after)
    assert staging.serving() == [current] * HOSTS
    batches = [ln for ln in res.stdout.splitlines() if "(batch " in ln]
    for i, h in enumerate(staging.hosts):  # one host per batch, the primary alone first
        assert h.destination in batches[i] and f"(batch {i + 1}/{HOSTS})" in batches[i]
    assert staging.history()[0]["kind"] == "rollback-1"


def test_level3_restores_once_and_every_host_serves_the_backups_release(
    staging: Staging,
) -> None:
    p = staging.project
    a = staging.releases["A"]
    assert staging.serving() == [a] * HOSTS
    staging.sql("INSERT INTO notes (body) VALUES ('before-c')")
    # C ships a migration, so staging's backup policy dumps the database first (release A)
    d = p.root / "app" / "migrations"
    (d / "0005_rr_flag.up.sql").write_text(EXPAND + "ALTER TABLE notes ADD COLUMN rr_flag int;\n")
    (d / "0005_rr_flag.down.sql").write_text("ALTER TABLE notes DROP COLUMN rr_flag;\n")
    p.commit("release C: another migration")
    c = json.loads(p.ok("staging.deploy", "--json").stdout)["release"]
    assert staging.serving() == [c] * HOSTS and staging.ledger()[5] == "applied"
    staging.sql("INSERT INTO notes (body) VALUES ('after-the-backup')")

    plan = p.ok("staging.rollback", "--level", "3", "--dry-run").stdout
    assert "restore" in plan and a in plan and staging.hosts[2].destination in plan, plan
    res = p.ok("staging.rollback", "--level", "3", "--yes", "--reason", "C broke notes")
    # one restore, then every host serves the backup's release on the data of that moment
    assert staging.serving() == [a] * HOSTS, res.stdout
    # (smoke probes write notes of their own: count the two rows this test wrote)
    marks = "SELECT body FROM notes WHERE body IN ('before-c', 'after-the-backup')"
    assert staging.sql(marks) == [("before-c",)]
    assert 5 not in staging.ledger()
    newest = staging.history()[0]
    assert newest["kind"] == "rollback-3" and newest["status"] == "success", newest
    assert newest["release"] == a and newest["previous"] == c and newest["backup"]
    assert all(f"{h.destination} ok" in newest["notes"] for h in staging.hosts), newest
    # frozen on the primary: the next deploy is refused until a human lifts it
    frozen = json.loads(staging.state("frozen.json").read_text())
    assert frozen["why"] == "C broke notes" and frozen["backup"] == newest["backup"]
    res = p.inv("staging.deploy")
    assert res.returncode == ExitCode.FROZEN and "frozen" in res.stderr, res.stderr
    assert staging.serving() == [a] * HOSTS and not staging.state("lock").exists()
    p.ok("staging.unfreeze", "--reason", "notes checked on every host")
    assert not staging.state("frozen.json").exists()


def test_smoke_monitor_and_incident_read_every_host(staging: Staging) -> None:
    p = staging.project
    current = staging.serving()[0]
    probes = json.loads(p.ok("staging.smoke", "--json").stdout)
    for h in staging.hosts:  # every host probed on its own address
        mine = [x for x in probes if x["name"].startswith(f"{h.destination}: ")]
        assert mine and all(x["ok"] for x in mine), probes
    reading = json.loads(p.ok("staging.monitor", "--once", "--json").stdout)
    assert reading["release"] == current and reading["health"]["ok"], reading
    assert f"{HOSTS} hosts answer" in reading["health"]["detail"]
    # the incident draft comes from the primary's history: the level 3 restore is in it
    path = p.ok("staging.incident").stdout.strip().splitlines()[-1]
    assert "rollback-3" in (p.root / path).read_text()

    # one host stops serving: smoke and monitor name it, and smoke fails
    run = staging.dirs[2] / "run"
    for pidfile in (run / f"app-{current}.pid", run / "listener.pid"):
        os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
    try:
        wait_until(lambda: staging.serving()[2] is None)
        res = p.inv("staging.smoke")
        assert res.returncode != 0 and staging.hosts[2].destination in res.stdout + res.stderr
        reading = json.loads(p.ok("staging.monitor", "--once", "--json").stdout)
        assert not reading["health"]["ok"]
        assert staging.hosts[2].destination in reading["health"]["detail"], reading
    finally:
        p.ok("staging.rollback", "--level", "1", "--yes")
    assert staging.serving() == [current] * HOSTS


def test_a_host_failing_after_a_restore_is_left_stopped_and_the_freeze_stays(
    staging: Staging,
) -> None:
    a = staging.releases["A"]
    assert staging.serving() == [a] * HOSTS
    # restored, the primary serves: the second host's sshd dies
    with StopsAfterPrimary(staging.hosts[0], staging.hosts[1]) as printer:
        with pytest.raises(group.RolloutError) as info:
            staging.engine(level=3, reason="restore drill", printer=printer)
    err = info.value
    first, second, third = (h.destination for h in staging.hosts)
    assert [(o.host, o.status) for o in err.outcomes] == [
        (first, "ok"),
        (second, "failed"),
        (third, "skipped"),
    ]
    assert "stays frozen" in err.message and second in err.message
    # nothing went back to a release that expects the data before the restore
    assert staging.serving() == [a, None, None]
    assert staging.state("frozen.json").exists() and not staging.state("lock").exists()
    newest = staging.history()[0]
    assert newest["kind"] == "rollback-3" and newest["status"] == "failed"
    # the same command again, once the host is back, finishes the job
    res = staging.project.ok("staging.rollback", "--level", "3", "--yes", "--reason", "again")
    assert staging.serving() == [a] * HOSTS, res.stdout
    staging.project.ok("staging.unfreeze", "--reason", "drill over")


def test_a_host_failing_mid_rollback_sends_the_moved_hosts_back(staging: Staging) -> None:
    a, b = staging.releases["A"], staging.releases["B"]
    # staging serves A; go to B with --to so the failure has somewhere to send hosts back from
    staging.engine(level=2, to=b, printer=lambda _line: None)
    assert staging.serving() == [b] * HOSTS
    # the primary passed its health check on A: the second host's sshd dies before its turn
    with StopsAfterPrimary(staging.hosts[0], staging.hosts[1]) as printer:
        with pytest.raises(group.RolloutError) as info:
            staging.engine(level=2, to=a, printer=printer)
    err = info.value
    statuses = [(o.host, o.status) for o in err.outcomes]
    first, second, third = (h.destination for h in staging.hosts)
    assert statuses == [(first, "reverted"), (second, "failed"), (third, "skipped")], statuses
    assert err.exit_code == ExitCode.ROLLED_BACK and second in err.message
    assert staging.serving() == [b] * HOSTS
    newest = staging.history()[0]
    assert newest["kind"] == "rollback-2" and newest["status"] == "failed"
    assert f"{first} reverted" in newest["notes"] and f"{second} failed" in newest["notes"]
    record = staging.audit()[-1]
    assert record["status"] == "failed" and len(record["hosts"]) == HOSTS
    assert not staging.state("lock").exists()
