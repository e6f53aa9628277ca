"""The compose runtime through `inv`: its dry-run plans, its refusal without an engine, and the
exact docker argv of a deploy, a deploy whose `up` fails, rollback level 2, backups taken in the
postgres container and a level 3 restore.

No Docker engine runs here. The argv test puts tests/fake_docker.py first on PATH as `docker`: the
stand-in for the engine (and only for it). It records every call and does what the engine would
with the real parts: PostgreSQL and Redis as the native runtime runs them, the app under
gunicorn from the image's files, the migration engine in the image's directory, the wheel's
pg_dump, pg_restore and psql for the postgres container. Smoke is HTTP against APP_PORT, as on a
real engine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from deploy.commands.compose import FRONT_BOOT
from deploy.procs import alive
from tests import support
from tests.conftest import need
from tests.e2e.conftest import Project, destroy, make_project
from tests.sshd import can_run_sshd, keygen, make_sshd, set_hosts
from tests.unit.test_compose_builders import WITH_SECRETS

REPO = Path(__file__).resolve().parents[2]
SECRETS = {
    "POSTGRES_PASSWORD": "pg-compose-dev-s3cret-9f1",
    "REDIS_PASSWORD": "redis-compose-dev-s3cret-4a7",
    "API_KEYS": "key-compose-dev-s3cret-c2e",
    "SECRET_KEY": "sign-compose-dev-s3cret-77b",
}
BASE = WITH_SECRETS  # the exact prefix the builders are tested for
ENGINE = [
    ["docker", "info", "--format", "{{.ServerVersion}}"],
    ["docker", "compose", "version", "--short"],
]
PS = [*BASE, "ps", "--all", "--format", "json"]
# a one-off container of a release image running the migration engine
MIGRATE = [*BASE, "run", "--rm", "-T", "--no-deps", "app", "python", "-m", "deploy.compose_migrate"]
# the environment's lock_timeout, statement_timeout and deploy_timeout_s (the defaults here)
LIMITS = ["--lock-timeout", "5s", "--statement-timeout", "5min", "--deadline-s", "3600"]
UP_SERVERS = [
    *BASE,
    "up",
    "-d",
    "--wait",
    "--wait-timeout",
    "120",
    "--remove-orphans",
    "postgres",
    "redis",
]
UP = [*BASE, "up", "-d", "--wait", "--wait-timeout", "120", "--remove-orphans"]
UP_FRONT = [*UP, "postgres", "redis", "front"]
FRONT = [*BASE, "exec", "-T", "front", "python", "-c", FRONT_BOOT]


def _beside(count: int) -> list[str]:
    return [*BASE, "up", "-d", "--no-deps", "--no-recreate", "--scale", f"app={count}", "app"]


def _front_switch(number: int) -> list[str]:
    """The front moved to the project's number-th app container (by its id, as the engine's DNS
    answers it), once /healthz and /readyz answer."""
    return [*FRONT, "switch", f"fakeapp{number:04d}:8000", "5", "30", "/healthz", "/readyz"]


def _switch(
    *, count: int, number: int, old: Sequence[str] = (), stopped: Sequence[str] = ()
) -> list[list[str]]:
    """A switch: servers and front up, stopped app containers removed, the number-th app container
    beside the count - 1 running ones, the front moved to it, the old ones stopped (SIGTERM) and
    removed, what runs read."""
    out = [UP_FRONT, PS, *([["docker", "rm", *stopped]] if stopped else [])]
    out += [_beside(count), PS, _front_switch(number)]
    if old:
        out += [["docker", "stop", "--time", "30", *old], ["docker", "rm", *old]]
    return [*out, PS]


def _switch_shown(env: str) -> list[str]:
    """The switch as a plan prints it: the containers are named as they will be known."""
    new, old = "'<new app container>:8000'", "'<old app container>'"
    boot = shlex.quote(FRONT_BOOT)
    return [
        f"start:   {env} {' '.join(UP_FRONT)}",
        f"start:   {env} {' '.join(_beside(2))}",
        f"start:   {' '.join(FRONT[:-1])} {boot} switch {new} 5 30 /healthz /readyz",
        f"start:   docker stop --time 30 {old}",
        f"start:   docker rm {old}",
    ]


def _engine_answers() -> bool:
    import subprocess

    if shutil.which("docker") is None:
        return False
    res = subprocess.run(["docker", "info"], capture_output=True, check=False)
    return res.returncode == 0


@pytest.fixture(scope="module")
def compose() -> Project:
    proj = make_project("sf-compose-")
    proj.set_policy("dev", runtime='"compose"')
    path = proj.root / "env" / "dev.secrets.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    os.chmod(path, 0o600)
    proj.commit("dev runs on the compose runtime")
    try:
        yield proj
    finally:
        destroy(proj)


def _no_secret(*texts: str) -> None:
    for text in texts:
        for value in SECRETS.values():
            assert value not in text


def _rid(commit: str) -> str:
    return r"\d{8}T\d{6}Z-" + commit[:8]


def test_dry_run_prints_the_exact_docker_commands(compose: Project) -> None:
    commit = compose.git("rev-parse", "HEAD")
    res = compose.ok("dev.deploy", "--dry-run")
    lines = [line.strip() for line in res.stdout.splitlines()]
    home = compose.root / ".stageflow" / "dev"
    build = next(line for line in lines if line.startswith("build:"))
    m = re.fullmatch(
        rf"build: +docker build --tag stageflow-app:(?P<rid>{_rid(commit)}) "
        rf"--file {home}/releases/(?P=rid)/.stageflow-image/Dockerfile "
        rf"--build-arg STAGEFLOW_BASE_IMAGE {home}/releases/(?P=rid)",
        build,
    )
    assert m, build
    rid = m["rid"]
    env = f"STAGEFLOW_IMAGE=stageflow-app STAGEFLOW_RELEASE={rid}"
    settings = f"STAGEFLOW_SERVICE_ENV={home}/state/service.env"
    migrate = [line for line in lines if line.startswith("migrate:")]
    assert migrate == [
        f"migrate: {env} {settings} {' '.join(UP_SERVERS)}",
        f"migrate: STAGEFLOW_IMAGE=stageflow-app {shlex.join(_ledger())}",
        f"migrate: {env} {settings} {' '.join(BASE)} run --rm -T --no-deps app python -m "
        f"deploy.compose_migrate up --dir app/migrations --release {rid} "
        f"--applied-by alice@example.com {' '.join(LIMITS)}",
    ]
    start = [line for line in lines if line.startswith("start:")]
    assert start == _switch_shown(f"{env} STAGEFLOW_COMMIT={commit} {settings}")
    _no_secret(res.stdout, res.stderr)
    assert not (home / "state" / "history.jsonl").exists()  # a plan changes nothing


@pytest.mark.skipif(_engine_answers(), reason="a Docker engine answers here; this is the refusal")
def test_without_an_engine_deploy_and_up_fail_closed_in_one_line(compose: Project) -> None:
    res = compose.inv("dev.deploy")
    assert res.returncode == 3, res.stdout + res.stderr
    line = res.stderr.strip()
    assert "\n" not in line
    assert line.startswith(
        'stageflow: guard engine refused: no Docker engine answers at local; use runtime = "native" (or '
    )
    home = compose.root / ".stageflow" / "dev"
    assert not (home / "state" / "lock").exists()
    assert compose.history("dev") == []
    assert not (home / "releases").exists() or not os.listdir(home / "releases")
    assert not list((compose.root / ".stageflow").glob("build/*.tar"))  # not even archived

    res = compose.inv("dev.up")
    assert res.returncode == 1, res.stdout + res.stderr
    line = res.stderr.strip()
    assert "\n" not in line
    assert line.startswith(
        'stageflow: no Docker engine answers at local; use runtime = "native" (or '
    )
    _no_secret(res.stdout, res.stderr)


# -- against the stand-in engine --------------------------------------------------------------------


class Engine:
    """The stand-in's PATH entry and its record of calls."""

    def __init__(self, proj: Project) -> None:
        self.dir = proj.root.parent / "fake-docker"  # outside the repository: never committed
        self.bin = proj.root.parent / "fake-bin"
        self.bin.mkdir(exist_ok=True)
        script = self.bin / "docker"
        script.write_text(
            f'#!/bin/sh\nexec {sys.executable} {REPO / "tests" / "fake_docker.py"} "$@"\n'
        )
        script.chmod(0o755)
        self.env = {"PATH": f"{self.bin}:{os.environ['PATH']}", "FAKE_DOCKER_DIR": str(self.dir)}
        self.seen = 0
        self.proj = proj
        self.outputs: list[str] = []  # everything inv printed, for the secret scan

    def inv(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        """`inv args` with the stand-in first on PATH; its exit code must be `code`."""
        res = self.proj.inv(*args, env=self.env)
        self.outputs.extend([res.stdout, res.stderr])
        assert res.returncode == code, (
            f"inv {' '.join(args)}: {res.returncode}\n{res.stdout}\n{res.stderr}"
        )
        return res

    def calls(self) -> list[dict]:
        path = self.dir / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def new_calls(self) -> list[dict]:
        """The calls since the last time this was asked."""
        calls = self.calls()
        out, self.seen = calls[self.seen :], len(calls)
        return out

    def fail(self, subcommand: str, *, commit: str) -> None:
        (self.dir / "fail.json").write_text(
            json.dumps({"subcommand": subcommand, "commit": commit})
        )

    def heal(self) -> None:
        (self.dir / "fail.json").unlink(missing_ok=True)


@contextmanager
def stand_in(proj: Project) -> Iterator[Engine]:
    """The stand-in engine for proj's dev; afterwards dev is taken down and the project removed."""
    e = Engine(proj)
    try:
        yield e
    finally:
        e.heal()
        proj.inv("dev.down", env=e.env)
        destroy(proj)


def _argv(calls: list[dict]) -> list[list[str]]:
    return [c["argv"] for c in calls]


def _build(home: Path, rid: str) -> list[str]:
    ctx = f"{home}/releases/{rid}"
    dockerfile = f"{ctx}/.stageflow-image/Dockerfile"
    tag = f"stageflow-app:{rid}"
    base = ["--build-arg", "STAGEFLOW_BASE_IMAGE"]
    return ["docker", "build", "--tag", tag, "--file", dockerfile, *base, ctx]


def _migrate_up(rid: str, actor: str) -> list[str]:
    return [
        *MIGRATE,
        "up",
        "--dir",
        "app/migrations",
        "--release",
        rid,
        "--applied-by",
        actor,
        *LIMITS,
    ]


def _deploy_argv(home: Path, rid: str, actor: str, *, pending: bool = True) -> list[list[str]]:
    """What a deploy runs before start: engine checks, what serves (hook and lock), build, the
    ledger read, and the migrations' one-off container only when some are pending."""
    migrate = [_migrate_up(rid, actor)] if pending else []
    return [*ENGINE, PS, PS, _build(home, rid), UP_SERVERS, _ledger(), *migrate]


def _last(proj: Project) -> dict:
    return proj.history("dev")[0]  # `history --json` lists the newest first


def _serving(proj: Project) -> str:
    """The release the app on APP_PORT reports: what an operator's browser would see."""
    import urllib.request

    with urllib.request.urlopen(proj.url("dev", "/version"), timeout=5) as resp:
        return json.load(resp)["release"]


def test_deploy_failed_up_and_rollback_run_these_docker_commands(compose: Project) -> None:
    engine = Engine(compose)
    home = compose.root / ".stageflow" / "dev"
    actor = compose.actor
    inv = engine.inv

    try:
        inv("dev.up")
        assert _argv(engine.new_calls()) == [*ENGINE, UP_SERVERS]

        # first deploy: nothing served before it
        commit_a = compose.git("rev-parse", "HEAD")
        inv("dev.deploy")
        a = _last(compose)
        assert (a["status"], a["commit"], a["migrations"]) == ("success", commit_a, [1, 2, 3])
        rid_a = a["release"]
        assert re.fullmatch(_rid(commit_a), rid_a)
        calls = engine.new_calls()
        assert _argv(calls) == [*_deploy_argv(home, rid_a, actor), *_switch(count=1, number=1)]
        start = calls[-6]
        assert (start["release"], start["commit"]) == (rid_a, commit_a)
        assert {"STAGEFLOW_IMAGE", "STAGEFLOW_RELEASE", "POSTGRES_PASSWORD"} <= set(start["env"])
        assert _serving(compose) == rid_a

        # second deploy ships a migration with a down file (contract: level 2 runs its down)
        mig = compose.root / "app" / "migrations"
        (mig / "0004_compose_probe.up.sql").write_text("CREATE TABLE compose_probe (id int);\n")
        (mig / "0004_compose_probe.down.sql").write_text("DROP TABLE compose_probe;\n")
        commit_b = compose.commit("a contract migration")
        inv("dev.deploy")
        b = _last(compose)
        assert (b["status"], b["previous"], b["migrations"]) == ("success", rid_a, [4])
        rid_b = b["release"]
        assert _argv(engine.new_calls()) == [
            *_deploy_argv(home, rid_b, actor),
            *_switch(count=2, number=2, old=["fakeapp0001"]),
        ]
        assert _serving(compose) == rid_b

        # the plan of level 2 names the previous tag and the down migration, in B's image
        res = inv("dev.rollback", "--level", "2", "--dry-run")
        assert f"dev: level 2 (revert) {rid_b} -> {rid_a}" in res.stdout
        lines = [
            line.strip()
            for line in res.stdout.splitlines()
            if line.strip().startswith(("schema:", "start:"))
        ]
        settings = f"STAGEFLOW_SERVICE_ENV={home}/state/service.env"
        env_b = f"STAGEFLOW_IMAGE=stageflow-app STAGEFLOW_RELEASE={rid_b} {settings}"
        assert lines == [
            f"schema:  {env_b} {' '.join(UP_SERVERS)}",
            f"schema:  {env_b} {' '.join(BASE)} run --rm -T --no-deps app python -m "
            f"deploy.compose_migrate down --dir app/migrations --to 3 --release {rid_a} "
            "--applied-by alice@example.com",
            *_switch_shown(
                f"STAGEFLOW_IMAGE=stageflow-app STAGEFLOW_RELEASE={rid_a} "
                f"STAGEFLOW_COMMIT={commit_a} {settings}"
            ),
        ]
        assert engine.new_calls() == []  # a plan asks no engine

        # a deploy whose `up` fails: B is started again, history says rolled-back, lock released
        (compose.root / "README.md").write_text("a release whose container never gets healthy\n")
        commit_c = compose.commit("release C")
        engine.fail("up", commit=commit_c)
        res = inv("dev.deploy", code=6)
        assert f"{rid_b} serves again" in res.stderr and "\n" not in res.stderr.strip()
        c = _last(compose)
        assert (c["status"], c["previous"]) == ("rolled-back", rid_b)
        rid_c = c["release"]
        calls = engine.new_calls()
        # C's switch fails before the front moves; B, serving alone, is kept and pointed at
        assert _argv(calls) == [
            *_deploy_argv(home, rid_c, actor, pending=False),  # C ships no migration
            UP_FRONT,
            UP_FRONT,
            PS,
            _front_switch(2),
            PS,
        ]
        assert [(x["release"], x["commit"]) for x in calls[-5:-3]] == [
            (rid_c, commit_c),
            (rid_b, commit_b),
        ]
        assert not (home / "state" / "lock").exists()
        assert _serving(compose) == rid_b
        engine.heal()

        # level 2: B's image reverts migration 4, then A's tag starts
        inv("dev.rollback", "--level", "2", "--reason", "compose e2e")
        r = _last(compose)
        assert (r["kind"], r["status"], r["release"], r["previous"]) == (
            "rollback-2",
            "success",
            rid_a,
            rid_b,
        )
        assert "reverted migrations [4]" in r["notes"]
        calls = engine.new_calls()
        down = list(MIGRATE)
        down += ["down", "--dir", "app/migrations", "--to", "3", "--release", rid_a]
        down += ["--applied-by", actor]
        switch = _switch(count=2, number=3, old=["fakeapp0002"])
        assert _argv(calls) == [*ENGINE, PS, UP_SERVERS, down, *switch]
        assert [x["release"] for x in calls[3:6]] == [rid_b, rid_b, rid_a]
        assert _serving(compose) == rid_a
        assert not (home / "state" / "lock").exists()

        status = json.loads(inv("dev.status", "--json").stdout)
        assert (status["app"]["release"], status["postgres"]["up"], status["redis"]["up"]) == (
            rid_a,
            True,
            True,
        )
        inv("dev.logs", "--tail", "5")
    finally:
        engine.heal()
        compose.inv("dev.down", env=engine.env)
    assert _argv(engine.new_calls())[-1] == [*BASE, "down", "--remove-orphans"]
    recorded = (engine.dir / "calls.jsonl").read_text()
    _no_secret(recorded, *engine.outputs)


# -- backups and level 3 ----------------------------------------------------------------------------

PG = ["exec", "-T", "postgres"]
PSQL = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-U", "app_dev"]


def _ledger() -> list[str]:
    from deploy.commands.compose import ledger_rows_sql

    return [
        *BASE,
        *PG,
        *PSQL,
        "-d",
        "stageflow_dev",
        "-c",
        *ledger_rows_sql("stageflow_migrations"),
    ]


def _backup(home: Path, bid: str) -> list[list[str]]:
    tmp = f"/tmp/{bid}.dump"
    return [
        [*BASE, *PG, "pg_dump", "-Fc", "-Z", "1", "--no-owner", "-U", "app_dev"]
        + ["-d", "stageflow_dev", "-f", tmp],
        [*BASE, "cp", f"postgres:{tmp}", f"{home}/shared/backups/{bid}.dump"],
        [*BASE, *PG, "rm", "-f", tmp],
    ]


def _restore(home: Path, bid: str) -> list[list[str]]:
    tmp = f"/tmp/{bid}.dump"
    return [
        [*BASE, "cp", f"{home}/shared/backups/{bid}.dump", f"postgres:{tmp}"],
        [*BASE, *PG, *PSQL, "-d", "postgres"]
        + ["-c", 'DROP DATABASE IF EXISTS "stageflow_dev" WITH (FORCE)']
        + ["-c", 'CREATE DATABASE "stageflow_dev" OWNER "app_dev"'],
        [*BASE, *PG, "pg_restore", "--clean", "--if-exists", "--exit-on-error", "--no-owner"]
        + ["--jobs=2", "-U", "app_dev", "-d", "stageflow_dev", tmp],
        [*BASE, *PG, "rm", "-f", tmp],
    ]


def _sql(proj: Project, query: str) -> list[tuple]:
    """What the app's role sees in dev's database (the stand-in publishes it on loopback)."""
    import psycopg

    dsn = f"postgresql://app_dev@127.0.0.1:{proj.ports['dev']['pg']}/stageflow_dev"
    with psycopg.connect(dsn, password=SECRETS["POSTGRES_PASSWORD"], autocommit=True) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


def test_backups_and_level_3_restore_run_in_the_postgres_container(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hashlib

    proj = make_project("sf-compose-l3-")
    proj.set_policy("dev", runtime='"compose"', backup='"pending-migrations"')
    path = proj.root / "env" / "dev.secrets.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    os.chmod(path, 0o600)
    commit_a = proj.commit("dev runs on compose and backs up before pending migrations")
    engine = Engine(proj)
    home = proj.root / ".stageflow" / "dev"
    inv = engine.inv

    def newest() -> dict:
        """The newest history entry, read as `inv dev.history` reads it (without its start-up)."""
        from deploy.hosts import Host
        from deploy.state import Layout, history

        return history(Host(), Layout(str(home)))[-1]

    try:
        res = inv("dev.deploy", "--dry-run")
        env_img = "STAGEFLOW_IMAGE=stageflow-app"
        assert [
            line.strip() for line in res.stdout.splitlines() if line.strip().startswith("backup:")
        ] == [
            f"backup:  {env_img} {shlex.join(argv)}"
            for argv in [UP_SERVERS, _ledger(), *_backup(home, "<id>")]
        ]
        # A: the backup step starts postgres; 1-3 are pending on an empty database, so it dumps
        inv("dev.deploy")
        a = newest()
        rid_a = a["release"]
        assert a["backup"] and a["commit"] == commit_a
        # that backup holds no release to go back to: level 3 refuses before anything changes
        res = inv("dev.rollback", "--level", "3", "--dry-run", code=3)
        assert f"no backup of dev was taken before {rid_a}" in res.stderr
        _sql(proj, "INSERT INTO notes (body) VALUES ('written under A')")

        mig = proj.root / "app" / "migrations"
        (mig / "0004_compose_probe.up.sql").write_text("CREATE TABLE compose_probe (id int);\n")
        (mig / "0004_compose_probe.down.sql").write_text("DROP TABLE compose_probe;\n")
        proj.commit("B ships migration 4")
        engine.new_calls()
        inv("dev.deploy")
        b = newest()
        rid_b, bid = b["release"], b["backup"]
        assert (b["status"], b["migrations"], b["previous"]) == ("success", [4], rid_a)
        img = {"STAGEFLOW_IMAGE"}
        calls = engine.new_calls()
        assert _argv(calls) == [
            *ENGINE,
            PS,
            PS,
            _build(home, rid_b),
            UP_SERVERS,  # once per deploy: the ledger, the backup and the migration need them
            _ledger(),
            *_backup(home, bid),
            _migrate_up(rid_b, proj.actor),
            *_switch(count=2, number=2, old=["fakeapp0001"]),
        ]
        assert calls[5]["release"] is None and img <= set(calls[5]["env"])
        dump = home / "shared" / "backups" / f"{bid}.dump"
        meta = json.loads((home / "shared" / "backups" / f"{bid}.json").read_text())
        assert meta["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
        assert dump.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
        assert (dump.stat().st_mode & 0o777, meta["size_bytes"]) == (0o600, dump.stat().st_size)
        assert (meta["id"], meta["release"], meta["ledger_version"], meta["database"]) == (
            bid,
            rid_a,
            3,
            "stageflow_dev",
        )
        assert not list((engine.dir / "containers" / "postgres" / "tmp").iterdir())
        # by hand: recorded under the tag the app container runs
        manual = json.loads(inv("dev.backup", "--reason", "by hand", "--json").stdout)
        assert (manual["release"], manual["ledger_version"], manual["reason"]) == (
            rid_b,
            4,
            "by hand",
        )
        assert _argv(engine.new_calls())[-3:] == _backup(home, manual["id"])
        listed = json.loads(inv("dev.backups", "--json").stdout)
        assert [x["id"] for x in listed] == [manual["id"], bid, a["backup"]]  # newest first

        # verify (the native result): restored into a scratch database beside the live one
        from deploy.config import load_project
        from deploy.runtime import compose_backups

        for key, value in engine.env.items():
            monkeypatch.setenv(key, value)
        checked = compose_backups.verify_backup(load_project(proj.root, process_env={}), "dev", bid)
        tables = {t["table"]: (t["backup"], t["live"]) for t in checked["tables"]}
        assert tables["stageflow_migrations"] == (3, 4) and tables["compose_probe"] == (None, 0)
        assert tables["notes"][1] == tables["notes"][0] + 1  # B's smoke wrote one since
        assert not checked["ok"]
        databases = _sql(proj, "SELECT datname FROM pg_database WHERE datname LIKE '%verify%'")
        assert databases == []  # the scratch database is gone
        assert engine.new_calls()[-1]["argv"][len(BASE) :] == [*PG, "rm", "-f", f"/tmp/{bid}.dump"]

        _sql(proj, "INSERT INTO notes (body) VALUES ('written under B')")
        res = inv("dev.rollback", "--level", "3", "--dry-run")
        assert f"dev: level 3 (restore) {rid_b} -> {rid_a}" in res.stdout
        planned = [
            line.strip()
            for line in res.stdout.splitlines()
            if line.strip().startswith(("stop:", "restore:", "start:"))
        ]
        assert planned == [
            f"stop:    STAGEFLOW_IMAGE=stageflow-app STAGEFLOW_RELEASE={rid_b} "
            f"STAGEFLOW_SERVICE_ENV={home}/state/service.env {' '.join(BASE)} stop app",
            *(
                f"restore: STAGEFLOW_IMAGE=stageflow-app {shlex.join(argv)}"
                for argv in _restore(home, bid)
            ),
            *_switch_shown(
                f"STAGEFLOW_IMAGE=stageflow-app STAGEFLOW_RELEASE={rid_a} "
                f"STAGEFLOW_COMMIT={commit_a} STAGEFLOW_SERVICE_ENV={home}/state/service.env"
            ),
        ]
        assert engine.new_calls() == []  # a plan asks no engine

        inv("dev.rollback", "--level", "3", "--reason", "compose e2e restore")
        r = newest()
        assert (r["kind"], r["status"], r["release"], r["previous"], r["backup"]) == (
            "rollback-3",
            "success",
            rid_a,
            rid_b,
            bid,
        )
        calls = engine.new_calls()
        assert _argv(calls) == [
            *ENGINE,
            PS,
            ["docker", "image", "inspect", "--format", "{{.Id}}", f"stageflow-app:{rid_a}"],
            [*BASE, "stop", "app"],
            *_restore(home, bid),
            # B's container, stopped for the restore, is removed; A's starts in its place
            *_switch(count=1, number=3, stopped=["fakeapp0002"]),
        ]
        assert next(c for c in calls if c["argv"] == UP_FRONT)["release"] == rid_a
        assert _sql(proj, "SELECT body FROM notes WHERE body LIKE 'written%'") == [
            ("written under A",)
        ]
        assert _sql(proj, "SELECT to_regclass('compose_probe') IS NULL") == [(True,)]
        assert _serving(proj) == rid_a
        assert json.loads((home / "state" / "frozen.json").read_text())["backup"] == bid

        res = inv("dev.deploy", code=7)
        assert "dev is frozen after a level 3 restore" in res.stderr
        assert "\n" not in res.stderr.strip()
        assert newest()["id"] == r["id"]  # refused before the lock: no history row
        inv("dev.unfreeze", "--reason", "notes checked after the restore")
        assert not (home / "state" / "frozen.json").exists()
        kept = ("backup", "freeze", "restore", "rollback-3", "unfreeze")
        audit = [
            json.loads(line) for line in (home / "state" / "audit.jsonl").read_text().splitlines()
        ]
        assert [x["action"] for x in audit if x["action"] in kept] == [
            "backup",
            "backup",
            "backup",
            "freeze",
            "restore",
            "rollback-3",
            "unfreeze",
        ]
    finally:
        proj.inv("dev.down", env=engine.env)
        recorded = (engine.dir / "calls.jsonl").read_text()
        destroy(proj)
    _no_secret(recorded, *engine.outputs)


def test_a_compose_environment_on_an_ssh_host() -> None:
    """The compose project on a real OpenSSH host: files uploaded there, the secrets file only
    read there, every docker command run there, smoke against that host's published port with the
    release's database sessions counted in its postgres container there; the service's worker runs
    in a container of each release, replaced by the next deploy. A release whose compose file
    points the app at staging's cluster (on this machine) is rolled back at smoke."""
    # the processes' helpers live with their own tests, which import this module
    from tests.e2e.test_compose_processes import TABLE, heartbeat, worker

    ok, why = can_run_sshd()
    need(ok, why)
    base = support.public_tmpdir("sf-sshd-compose-")
    proj = make_project("sf-compose-ssh-")
    engine = Engine(proj)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    # the stand-in engine is what `docker` finds in that host's sessions
    server = make_sshd(
        base,
        "127.0.0.70",
        keygen(base / "client_key"),
        env={"PATH": f"{engine.bin}:{os.environ['PATH']}", "FAKE_DOCKER_DIR": str(engine.dir)},
    )
    server.start()
    try:
        [home] = set_hosts(proj.root, "dev", [server], runtime="compose")
        with open(proj.root / "stageflow.toml", "a") as fh:
            fh.write(TABLE)
        secrets = "".join(f"{k}={v}\n" for k, v in SECRETS.items())
        local = proj.root / "env" / "dev.secrets.env"
        local.write_text(secrets)
        os.chmod(local, 0o600)
        proj.commit("dev runs on compose on one SSH host, with a worker")

        res = proj.inv("dev.up")  # the host has no secrets file yet: refused, nothing started
        assert res.returncode != 0 and "dev.secrets.env is missing on" in res.stderr, res.stderr
        assert engine.new_calls() == []  # refused before any docker command ran there
        remote = home / "compose" / "env" / "dev.secrets.env"
        remote.write_text(secrets)
        os.chmod(remote, 0o600)

        engine.inv("dev.up")
        dry = engine.inv("dev.deploy", "--dry-run").stdout
        count = [ln for ln in dry.splitlines() if ln.strip().startswith("smoke:")]
        assert len(count) == 1 and "exec -T postgres psql -X" in count[0], dry
        assert (
            "pg_stat_activity WHERE application_name" in count[0] and "stageflow:dev:" in count[0]
        )
        said = engine.inv("dev.deploy").stdout
        a = _last(proj)
        assert a["status"] == "success", said
        assert _serving(proj) == a["release"]
        # the release's sessions, counted in the postgres container on the host; the other
        # environments' clusters are asked from here (not up yet: not checked)
        assert re.search(rf"sessions: [1-9]\d* session\(s\) of {a['release']} on dev's", said), said
        assert "prod, staging's not reachable, not checked" in said, said
        # what the host ran: the project, env files and tag of this environment, from its files
        for rel in ("compose/compose.yml", "compose/compose.dev.yml", "env/dev.env"):
            assert (home / "compose" / rel).read_text() == (proj.root / rel).read_text()
        calls = engine.new_calls()
        ups = [c for c in calls if "up" in c["argv"]]
        assert ups and all(c["argv"][:4] == BASE[:4] for c in ups)
        assert any(c["release"] == a["release"] for c in ups)
        asked = [
            c["argv"] for c in calls if "psql" in c["argv"] and "pg_stat_activity" in c["argv"][-1]
        ]
        assert asked and f"'stageflow:dev:{a['release']}'" in asked[-1][-1], asked
        assert asked[-1][asked[-1].index("exec") :][:3] == ["exec", "-T", "postgres"]
        # the worker runs in a container of the release, from the file written on the host
        assert (home / "state" / "compose.processes.yml").is_file()
        first = worker(engine)
        assert first["release"] == a["release"]
        old = heartbeat(engine, a["release"])
        logs = engine.inv("dev.logs", "--service", "worker", "--tail", "20").stdout
        assert f"worker of {a['release']} started" in logs, logs
        # `inv dev.smoke` asks as the deploy did: on the host, where the port is published
        smoked = engine.inv("dev.smoke", "--json").stdout
        probes = {p["name"]: p for p in json.loads(smoked)}
        assert probes["http"]["ok"] and "answered on root@127.0.0.70:" in probes["http"]["detail"]
        assert probes["sessions"]["ok"] and "on dev's database" in probes["sessions"]["detail"]

        (proj.root / "README.md").write_text("release B\n")
        proj.commit("release B")
        b = json.loads(engine.inv("dev.deploy", "--json").stdout)
        assert _serving(proj) == b["release"]
        row = worker(engine)  # one worker: the new release's, in a new container
        assert row["release"] == b["release"] and row["container"] != first["container"]
        beat = heartbeat(engine, b["release"])
        assert beat["pid"] != old["pid"] and not alive(old["pid"]) and alive(beat["pid"])
        back = json.loads(engine.inv("dev.rollback", "--level", "2", "--yes", "--json").stdout)
        assert back["release"] == a["release"] and _serving(proj) == a["release"]
        _no_secret(*(json.dumps(c) for c in engine.calls()), *engine.outputs)
        _on_staging_cluster(proj, engine, home, serving=a["release"])
    finally:
        proj.inv("dev.down", env=engine.env, timeout=120)
        server.stop()
        destroy(proj)
        shutil.rmtree(base, ignore_errors=True)


def _on_staging_cluster(proj: Project, engine: Engine, home: Path, *, serving: str) -> None:
    """dev's compose file points the app at staging's cluster on this machine (every URL
    stageflow knows is still dev's): the deploy on the SSH host is rolled back at smoke, and
    `inv dev.smoke` fails on the release serving again under the same file."""
    engine.inv("staging.up", "staging.migrate")  # staging's schema is current: the app is ready
    lines = (proj.root / "env" / "staging.secrets.env").read_text().splitlines()
    password = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("POSTGRES_PASSWORD="))
    declared = 'secrets = ["API_KEYS", "SECRET_KEY"]'
    proj.edit("stageflow.toml", declared, declared[:-1] + ', "STAGING_PASSWORD"]')
    for path in (proj.root / "env" / "dev.secrets.env", home / "compose/env/dev.secrets.env"):
        path.write_text(path.read_text() + f"STAGING_PASSWORD={password}\n")
    port = proj.ports["staging"]["pg"]
    proj.edit(
        "compose/compose.dev.yml",
        "      DATABASE_URL: postgresql://app_dev@postgres:5432/stageflow_dev\n",
        # the URL's path names dev's database, so the service's own report says dev
        f"      DATABASE_URL: postgresql://app_staging@127.0.0.1:{port}/stageflow_dev"
        "?dbname=stageflow_staging\n"
        "      POSTGRES_PASSWORD: ${STAGING_PASSWORD:?set it in env/dev.secrets.env}\n",
    )
    proj.commit("dev's app reads staging's database")
    res = engine.inv("dev.deploy", code=6)
    out = res.stdout + res.stderr
    assert "smoke failed (sessions: a session of dev's release" in out, out
    assert "is on staging's database cluster" in out, out
    # the advice names where a compose service's settings come from: the compose file here
    assert "an environment: of compose/compose.yml or compose/compose.dev.yml" in out, out
    assert _last(proj)["status"] == "rolled-back" and _serving(proj) == serving
    res = engine.inv("dev.smoke", code=6)
    out = res.stdout + res.stderr
    assert f"a session of dev's release {serving} is on staging's database cluster" in out, out
    assert password not in "".join(engine.outputs)
    _no_secret(*engine.outputs)
