"""[service.processes] through `inv`: the reference service's worker started with its release,
replaced by the next deploy, restarted by level 1, sent back by level 2, refused when it crashes
at start, stopped by down, shown by status; a planted pid file is never signalled.

The tests share one project and run in order: each leaves dev in the state the next expects.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from deploy.config import load_project
from deploy.procs import alive
from deploy.state import Layout
from tests.e2e.conftest import Project, destroy, make_project

WORKER = '\n[service.processes]\nworker = ["python", "-m", "app.worker"]\n'
CRASH = 'raise SystemExit("worker: cannot reach the queue")\n'


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    proj = make_project("sf-e2e-procs-")
    try:
        with open(proj.root / "stageflow.toml", "a") as fh:
            fh.write(WORKER)
        proj.commit("the service runs a worker beside its web workers")
        proj.ok("dev.up")
        yield proj
    finally:
        destroy(proj)


def run_dir(project: Project) -> Path:
    env = load_project(project.root, process_env={}).env("dev")
    return Path(Layout(str(env.data_dir)).run)


def status(project: Project) -> dict:
    return json.loads(project.ok("dev.status", "--json").stdout)


def workers(project: Project) -> list[dict]:
    """The worker rows of `dev.status --json`."""
    return [p for p in status(project)["app"]["processes"] if p["name"] == "worker"]


def up_worker(project: Project) -> dict:
    rows = [p for p in workers(project) if p["up"]]
    assert len(rows) == 1, workers(project)
    return rows[0]


def serving(project: Project) -> str:
    with urllib.request.urlopen(project.url("dev", "/version"), timeout=5) as resp:
        return json.loads(resp.read())["release"]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def heartbeat(project: Project, release: str) -> dict:
    """The worker's heartbeat in dev's Redis, once it names release (the worker beats every
    second; a bound of its own keeps a broken worker from hanging the test)."""
    env = load_project(project.root, process_env={}).env("dev")
    secret = env.secret("REDIS_PASSWORD")
    client = redis.Redis.from_url(
        env.redis_url, password=secret.reveal() if secret else None, decode_responses=True
    )
    beat: dict = {}
    for _ in range(200):
        beat = json.loads(client.get("worker:heartbeat") or "{}")
        if beat.get("release") == release:
            return beat
        time.sleep(0.1)
    return beat


def test_a_deploy_starts_the_worker_with_its_release(project: Project) -> None:
    out = project.ok("dev.deploy").stdout
    a = serving(project)
    row = up_worker(project)
    assert row["release"] == a and alive(row["pid"])
    assert environ_of(row["pid"])["STAGEFLOW_RELEASE"] == a
    assert heartbeat(project, a)["pid"] == row["pid"]
    assert "worker pid" in out
    assert (run_dir(project) / f"proc-worker-{a}.pid").exists()
    table = project.ok("dev.status").stdout
    assert "processes" in table and "worker" in table and a in table


def test_logs_of_one_process(project: Project) -> None:
    """`--service NAME` of a declared process prints its log file and no other; a name that is
    neither a server nor a declared process is refused in one line that names the choices."""
    out = project.ok("dev.logs", "--service", "worker").stdout
    assert "==> worker.log <==" in out and f"worker of {serving(project)} started" in out, out
    assert "app.log" not in out and "postgres.log" not in out, out
    res = project.inv("dev.logs", "--service", "beat")
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert "'beat' is not a service" in res.stderr and "worker" in res.stderr, res.stderr


def test_the_next_deploy_replaces_the_worker(project: Project) -> None:
    before = up_worker(project)
    project.commit("release B")
    project.ok("dev.deploy")
    b = serving(project)
    row = up_worker(project)
    assert row["release"] == b != before["release"]
    assert environ_of(row["pid"])["STAGEFLOW_RELEASE"] == b
    assert not alive(before["pid"])  # the retired release's worker stopped
    assert [p["release"] for p in workers(project)] == [b]


def test_level1_restarts_the_worker_of_the_serving_release(project: Project) -> None:
    before = up_worker(project)
    project.ok("dev.rollback", "--level", "1", "--reason", "restart the worker")
    row = up_worker(project)
    assert row["release"] == before["release"] == serving(project)
    assert row["pid"] != before["pid"] and not alive(before["pid"])


def test_level2_sends_the_worker_back_with_the_web_release(project: Project) -> None:
    b = serving(project)
    a = project.history("dev")[-1]["release"]  # the first deploy
    assert a != b
    before = up_worker(project)
    out = project.ok("dev.rollback", "--level", "2", "--to", a, "--reason", "B misbehaves").stdout
    row = up_worker(project)
    assert serving(project) == a and row["release"] == a
    assert f"worker pid {row['pid']}" in out, out  # the start step says what it started
    assert environ_of(row["pid"])["STAGEFLOW_RELEASE"] == a
    assert not alive(before["pid"])
    assert heartbeat(project, a)["pid"] == row["pid"]


def test_a_worker_crashing_at_start_fails_the_deploy_and_the_old_one_keeps_running(
    project: Project,
) -> None:
    a, before = serving(project), up_worker(project)
    res = project.inv_on_broken("app/worker.py", CRASH, "a worker that cannot start", "dev.deploy")
    assert res.returncode != 0, res.stdout
    said = res.stdout + res.stderr
    assert "process worker" in said and "did not start" in said
    assert "cannot reach the queue" in said and "Traceback" not in res.stderr
    assert serving(project) == a
    row = up_worker(project)
    assert row == before and alive(before["pid"])
    assert project.history("dev")[0]["status"] != "success"


def test_a_web_release_that_cannot_boot_leaves_no_worker_of_its_own(project: Project) -> None:
    """The worker starts while the web master boots: when the master fails, the worker started
    for that release is stopped with it, and the serving release keeps its own."""
    a, before = serving(project), up_worker(project)
    cannot = 'raise SystemExit("web: cannot load")\n'
    res = project.inv_on_broken(
        "app/wsgi.py", cannot, "a web release that cannot load", "dev.deploy"
    )
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr
    # the worker's exit is the verdict (not the wait for an answer that never comes), with the
    # reason the service's log gives
    assert "a worker exited before it answered the ready path: web: cannot load" in res.stderr
    assert serving(project) == a
    assert workers(project) == [before] and alive(before["pid"])
    leftovers = [p.name for p in run_dir(project).glob("proc-worker-*.pid") if a not in p.name]
    assert leftovers == []


def test_a_planted_pid_file_is_not_signalled_and_down_stops_the_worker(project: Project) -> None:
    run, row = run_dir(project), up_worker(project)
    b = next(
        r for r in sorted(p.name for p in run.parent.joinpath("releases").iterdir())
        if r != row["release"]
    )  # fmt: skip
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (run / f"proc-worker-{b}.pid").write_text(f"{stranger.pid}\n")
        planted = [p for p in workers(project) if p["release"] == b]
        assert planted == [{"name": "worker", "release": b, "pid": stranger.pid, "up": False}]
        project.ok("dev.down")
        assert stranger.poll() is None and alive(stranger.pid)  # never signalled
        assert not alive(row["pid"])
        assert not list(run.glob("proc-*.pid"))
    finally:
        stranger.kill()
        stranger.wait()
        project.ok("dev.up")
    assert os.path.exists(run)
