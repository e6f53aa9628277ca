"""The compose runtime through `inv` against a real Docker engine: dev, staging and prod side by side
as three compose projects; a deploy built from a `git archive`; a broken release switched back;
rollback levels 1, 2 and 3; the service's settings inside its container; staging on a loopback
OpenSSH host whose docker is the same engine; no secret in any output, log or container argv; two
deploys under 80 req/s that lose no request.

One project and one engine for the whole module (the image layers are built once and cached):
the live suite stays lean. Without an engine it skips in one line, and fails under
STAGEFLOW_REQUIRE_ALL=1 (tests/live_engine.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import support
from tests.conftest import need
from tests.e2e.conftest import Project, destroy, make_project
from tests.live_engine import image_env, require_engine
from tests.sshd import can_run_sshd, keygen, make_sshd, set_hosts

ENVS = ("dev", "staging", "prod")
SLOW = 1800  # a cold image build installs the service's requirements


class Live:
    """The module's project, its compose project names, secrets and every output seen."""

    def __init__(self, proj: Project, names: dict[str, str], values: list[str]) -> None:
        self.proj, self.names, self.values = proj, names, values
        self.images = image_env()
        self.seen: list[str] = []

    def inv(self, *args: str, code: int = 0, timeout: float = SLOW) -> str:
        res = self.proj.inv(*args, env=self.images, timeout=timeout)
        self.seen += [res.stdout, res.stderr]
        assert res.returncode == code, f"inv {' '.join(args)}: {res.returncode}\n{res.stderr}"
        return res.stdout + res.stderr

    def docker(self, *argv: str) -> str:
        res = subprocess.run(["docker", *argv], capture_output=True, text=True, check=True)
        self.seen.append(res.stdout)
        return res.stdout

    def containers(self, env: str) -> set[str]:
        label = f"label=com.docker.compose.project={self.names[env]}"
        return set(self.docker("ps", "-q", "--no-trunc", "--filter", label).split())

    def volumes(self, env: str) -> set[str]:
        return set(
            self.docker("volume", "ls", "-q", "--filter", f"name={self.names[env]}-").split()
        )

    def version(self, env: str) -> str:
        with urllib.request.urlopen(self.proj.url(env, "/version"), timeout=10) as resp:
            return str(json.load(resp)["release"])

    def sql(self, query: str) -> list[tuple]:
        import psycopg

        pg, pw = self.proj.ports["dev"]["pg"], self.values[0]
        dsn = f"postgresql://app_dev@127.0.0.1:{pg}/stageflow_dev"
        with psycopg.connect(dsn, password=pw, autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    require_engine()
    proj = make_project("sf-live-")
    suffix = secrets.token_hex(3)
    names = {env: f"sflive-{suffix}-{env}" for env in ENVS}
    values: list[str] = []
    for env in ENVS:
        proj.set_policy(env, runtime='"compose"')
        proj.edit(
            f"env/{env}.env",
            f"COMPOSE_PROJECT_NAME=stageflow-{env}",
            f"COMPOSE_PROJECT_NAME={names[env]}",
        )
        path = proj.root / "env" / f"{env}.secrets.env"
        keys = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "API_KEYS", "SECRET_KEY")
        pairs = {k: f"{env}-{k.lower()}-{secrets.token_hex(8)}" for k in keys}
        values += list(pairs.values())
        path.write_text("".join(f"{k}={v}\n" for k, v in pairs.items()))
        os.chmod(path, 0o600)
    proj.set_policy("dev", backup='"always"')
    proj.commit("three environments on the compose runtime")
    state = Live(proj, names, values)
    try:
        yield state
    finally:
        released = {e.get("release") for e in _history(proj)} - {None}  # before the root goes
        destroy(proj)
        for env in ENVS:
            vols = sorted(state.volumes(env))
            if vols:
                subprocess.run(["docker", "volume", "rm", "-f", *vols], capture_output=True)
        for rid in released:
            subprocess.run(["docker", "image", "rm", f"stageflow-app:{rid}"], capture_output=True)


def _history(proj: Project) -> list[dict]:
    path = proj.root / ".stageflow" / "dev" / "state" / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_three_environments_side_by_side_and_down_leaves_the_others(live: Live) -> None:
    for env in ENVS:
        live.inv(f"{env}.up", timeout=600)
    before = {env: live.containers(env) for env in ENVS}
    assert all(len(ids) == 2 for ids in before.values())  # postgres and redis each
    assert len(set().union(*before.values())) == 6  # nothing shared
    vols = {env: live.volumes(env) for env in ENVS}
    for env in ENVS:
        assert vols[env] == {f"{live.names[env]}-pgdata", f"{live.names[env]}-redisdata"}

    live.inv("staging.down", timeout=300)
    assert live.containers("staging") == set()
    assert live.volumes("staging") == vols["staging"]  # its data stays
    assert {env: live.containers(env) for env in ("dev", "prod")} == {
        env: before[env] for env in ("dev", "prod")
    }
    live.inv("prod.down", timeout=300)
    assert live.containers("dev") == before["dev"]


def _app_env(live: Live, env: str) -> dict[str, str]:
    """The app container's environment, read apart from live.seen: it holds secrets, as compose
    passes them (environment, never argv)."""
    ids = live.docker(
        "ps", "-q", "--filter", f"label=com.docker.compose.project={live.names[env]}",
        "--filter", "label=com.docker.compose.service=app",
    ).split()  # fmt: skip
    assert len(ids) == 1, ids
    res = subprocess.run(["docker", "inspect", "--format", "{{json .Config.Env}}", ids[0]],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return dict(item.split("=", 1) for item in json.loads(res.stdout))


def test_deploy_a_broken_release_and_rollback_levels_one_two_three(live: Live) -> None:
    proj = live.proj
    live.inv("dev.deploy")
    a = _history(proj)[-1]
    assert a["status"] == "success" and live.version("dev") == a["release"]
    # the service's settings reach its container from the runtime's private env file: keys only
    # that file carries, with the servers by service name inside the project network
    settings = proj.root / ".stageflow" / "dev" / "state" / "service.env"
    assert settings.stat().st_mode & 0o777 == 0o600
    app_env = _app_env(live, "dev")
    assert app_env["PGAPPNAME"] == f"stageflow:dev:{a['release']}"
    assert (app_env["PGHOST"], app_env["PGPORT"]) == ("postgres", "5432")
    assert live.sql("SELECT count(*) FROM stageflow_migrations")[0][0] >= 3

    (proj.root / "README.md").write_text("release B\n")
    proj.commit("release B")
    live.inv("dev.deploy")
    b = _history(proj)[-1]
    assert (b["status"], b["previous"]) == ("success", a["release"])
    assert b["backup"]  # taken before B (policy always), holding A's data
    live.sql("INSERT INTO notes (body) VALUES ('written after the backup')")

    # C cannot boot: compose's --wait fails, and B is started again
    wsgi = proj.root / "app" / "wsgi.py"
    wsgi.write_text(wsgi.read_text() + "\nraise RuntimeError('release C cannot start')\n")
    proj.commit("release C")
    live.inv("dev.deploy", code=6)
    c = _history(proj)[-1]
    assert (c["status"], c["previous"]) == ("rolled-back", b["release"])
    assert live.version("dev") == b["release"]

    live.inv("dev.rollback", "--level", "1", "--reason", "live level 1")
    assert live.version("dev") == b["release"]
    live.inv("dev.rollback", "--level", "2", "--reason", "live level 2")
    assert live.version("dev") == a["release"]
    assert live.sql("SELECT count(*) FROM notes WHERE body = 'written after the backup'") == [(1,)]

    live.inv("dev.rollback", "--level", "3", "--backup", b["backup"], "--reason", "live level 3")
    assert live.sql("SELECT count(*) FROM notes WHERE body = 'written after the backup'") == [(0,)]
    live.inv("dev.unfreeze", "--reason", "data checked after the restore")


def test_no_secret_in_any_output_log_or_container_argv(live: Live) -> None:
    live.inv("dev.logs", "--tail", "200")
    for cid in live.containers("dev"):
        # argv and labels of every container; compose passes secrets as environment, never argv
        live.docker(
            "inspect",
            "--format",
            "{{json .Args}} {{json .Config.Cmd}} {{json .Config.Labels}}",
            cid,
        )
        live.docker("logs", cid)
    leaked = [v for v in live.values if any(v in text for text in live.seen)]
    assert leaked == []


def test_compose_on_an_ssh_host_that_talks_to_the_engine(live: Live) -> None:
    """staging's compose project on a real OpenSSH host (loopback) whose docker is this engine:
    files and the secrets file there, the image built from the release there, smoke run there."""
    ok, why = can_run_sshd()
    need(ok, why)
    proj = live.proj
    base = support.public_tmpdir("sf-sshd-live-")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    # the host's sessions find docker, and the image names an operator there would export
    env = {"PATH": os.environ["PATH"], **live.images}
    server = make_sshd(base, "127.0.0.71", keygen(base / "client_key"), env=env)
    server.start()
    try:
        [home] = set_hosts(proj.root, "staging", [server], runtime="compose")
        # the service as the module's first commit had it (a test above broke app/wsgi.py)
        first = proj.git("rev-list", "--max-parents=0", "HEAD")
        proj.git("checkout", first, "--", "app/wsgi.py")
        proj.commit("staging runs on compose on one SSH host")
        remote = home / "compose" / "env" / "staging.secrets.env"
        remote.parent.mkdir(parents=True, exist_ok=True)
        remote.write_text((proj.root / "env" / "staging.secrets.env").read_text())
        os.chmod(remote, 0o600)
        live.inv("staging.up", timeout=600)
        live.inv("staging.deploy")
        entry = proj.history("staging")[0]
        assert (entry["kind"], entry["status"]) == ("deploy", "success"), entry
        assert live.version("staging") == entry["release"]
        assert len(live.containers("staging")) == 4  # app, front, postgres, redis
        # the settings file was written on the host, privately, and the container read it
        settings = home / "state" / "service.env"
        assert settings.stat().st_mode & 0o777 == 0o600
        assert _app_env(live, "staging")["PGAPPNAME"] == f"stageflow:staging:{entry['release']}"
        live.inv("staging.down", timeout=300)
        assert live.containers("staging") == set()
    finally:
        proj.inv("staging.down", env=live.images, timeout=300)  # while the host still answers
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_two_deploys_under_load_lose_no_request(live: Live) -> None:
    """80 req/s from another process, a new connection each, while two deploys switch dev's
    release: the front keeps the port, the new container starts beside the old one and takes new
    connections once ready, the old one finishes its own and stops. Not one request fails."""
    proj = live.proj
    # the service as the module's first commit had it (a test above broke app/wsgi.py)
    first = proj.git("rev-list", "--max-parents=0", "HEAD")
    proj.git("checkout", first, "--", "app/wsgi.py")
    proj.commit("dev serves again")
    live.inv("dev.deploy")  # the starting point: a release serving, without load
    load = subprocess.Popen(
        [sys.executable, "-m", "tests.loadgen", proj.url("dev", "/healthz"), "80", "600"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(support.REPO),
    )
    try:
        time.sleep(1.0)
        for i in range(2):
            (proj.root / f"CHANGES-{i}").write_text(f"change {i}\n")
            proj.commit(f"change {i} under load")
            live.inv("dev.deploy")
            assert live.version("dev") == _history(proj)[-1]["release"]
        time.sleep(1.0)
    finally:
        load.send_signal(signal.SIGTERM)
        out, _ = load.communicate(timeout=60)
    result = json.loads(out)
    assert result["failed"] == 0, result
    assert result["total"] > 100, result
