"""[service.processes] on the compose runtime, through `inv`, against the recording stand-in for
the Docker engine (tests/fake_docker.py): the reference service's worker runs in a container of
its own (compose service proc-worker, declared in the file the runtime generates and passes as one
more -f) from the release's image with the app's settings; the next deploy starts the new
release's worker beside the old one once the new release serves and then removes the old one;
status shows it; level 1 restarts it; level 2 brings back the previous release's; a command that
exits at once fails the deploy in one line and the previous release keeps serving with its worker;
down removes it.

The tests share one project and run in order: each leaves dev in the state the next expects.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from deploy.config import load_project
from deploy.procs import alive
from tests.e2e.conftest import make_project
from tests.e2e.test_compose_runtime import SECRETS, Engine, _serving, stand_in

WORKER = ["python", "-m", "app.worker"]
TABLE = f"\n[service.processes]\nworker = {json.dumps(WORKER)}\n"


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    proj = make_project("sf-compose-procs-")
    proj.set_policy("dev", runtime='"compose"')
    path = proj.root / "env" / "dev.secrets.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    os.chmod(path, 0o600)
    with open(proj.root / "stageflow.toml", "a") as fh:
        fh.write(TABLE)
    proj.commit("dev on compose; the service runs a worker beside its web workers")
    with stand_in(proj) as e:
        e.inv("dev.up")
        yield e


def override(e: Engine) -> Path:
    return e.proj.root / ".stageflow" / "dev" / "state" / "compose.processes.yml"


def processes(e: Engine) -> list[dict]:
    return json.loads(e.inv("dev.status", "--json").stdout)["app"]["processes"]


def worker(e: Engine) -> dict:
    """The one worker row of `dev.status --json`, which must run."""
    rows = processes(e)
    assert len(rows) == 1 and rows[0]["name"] == "worker" and rows[0]["up"], rows
    return rows[0]


def heartbeat(e: Engine, release: str, *, not_pid: int | None = None) -> dict:
    """The worker's heartbeat in dev's Redis once it names release (and another pid than
    not_pid): the worker beats every second with the settings its container got."""
    env = load_project(e.proj.root, process_env={}).env("dev")
    client = redis.Redis.from_url(
        env.redis_url, password=SECRETS["REDIS_PASSWORD"], decode_responses=True
    )
    beat: dict = {}
    for _ in range(100):
        beat = json.loads(client.get("worker:heartbeat") or "{}")
        if beat.get("release") == release and beat.get("pid") != not_pid:
            return beat
        time.sleep(0.1)
    raise AssertionError(f"no heartbeat of {release}'s worker: {beat}")


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def compose_calls(calls: list[dict]) -> list[dict]:
    return [c for c in calls if c["argv"][1:2] == ["compose"] and "version" not in c["argv"]]


def index(calls: list[dict], *words: str) -> int:
    """The position of the first call whose argv holds every word."""
    return next(i for i, c in enumerate(calls) if all(w in c["argv"] for w in words))


def test_a_deploy_starts_the_worker_in_a_container_of_its_release(engine: Engine) -> None:
    dry = engine.inv("dev.deploy", "--dry-run").stdout
    assert "--scale proc-worker=2 proc-worker" in dry and str(override(engine)) in dry, dry
    engine.new_calls()

    res = json.loads(engine.inv("dev.deploy", "--json").stdout)
    assert res["status"] == "success", res
    a = res["release"]
    calls = engine.new_calls()
    # every compose command names the generated file: its containers are never orphans
    assert all(str(override(engine)) in c["argv"] for c in compose_calls(calls))
    start = index(calls, "--scale", "proc-worker=1")
    assert calls[start]["release"] == a
    assert index(calls, "switch") < start  # once the release serves

    spec = yaml.safe_load(override(engine).read_text())["services"]["proc-worker"]
    assert spec["command"] == WORKER
    assert spec["image"] == "${STAGEFLOW_IMAGE:-stageflow-app}:${STAGEFLOW_RELEASE:-latest}"
    assert spec["env_file"] == ["${STAGEFLOW_SERVICE_ENV:-/dev/null}"]
    assert "ports" not in spec and "healthcheck" not in spec
    assert set(spec["depends_on"]) == {"postgres", "redis"}
    text = override(engine).read_text()
    assert not any(value in text for value in SECRETS.values())

    row = worker(engine)
    assert row["release"] == a and row["container"]
    beat = heartbeat(engine, a)
    seen = environ_of(beat["pid"])
    assert seen["STAGEFLOW_RELEASE"] == a and seen["ENVIRONMENT"] == "development"
    assert "DATABASE_URL" in seen and "REDIS_URL" in seen
    table = engine.inv("dev.status").stdout
    assert "processes" in table and "worker" in table and a in table, table


def test_the_next_deploy_replaces_the_worker(engine: Engine) -> None:
    before = worker(engine)
    old = heartbeat(engine, before["release"])
    (engine.proj.root / "README.md").write_text("release B\n")
    engine.proj.commit("release B")
    engine.new_calls()
    res = json.loads(engine.inv("dev.deploy", "--json").stdout)
    assert res["status"] == "success", res
    b = res["release"]
    calls = engine.new_calls()
    started = index(calls, "--scale", "proc-worker=2")  # beside the old one
    assert calls[started]["release"] == b
    assert index(calls, "stop", before["container"]) > started  # the old one after

    row = worker(engine)  # one worker left: the new release's, in a new container
    assert row["release"] == b and row["container"] != before["container"]
    beat = heartbeat(engine, b)
    assert beat["pid"] != old["pid"] and not alive(old["pid"]) and alive(beat["pid"])


def test_logs_of_the_worker_are_its_containers(engine: Engine) -> None:
    """`--service worker` asks compose for the logs of proc-worker, the process's service."""
    engine.new_calls()
    out = engine.inv("dev.logs", "--service", "worker", "--tail", "20").stdout
    logs = [c["argv"] for c in engine.new_calls() if "logs" in c["argv"]]
    assert logs and logs[-1][-1] == "proc-worker", logs
    assert f"worker of {worker(engine)['release']} started" in out, out


def test_level_1_restarts_the_worker(engine: Engine) -> None:
    before = worker(engine)
    old = heartbeat(engine, before["release"])
    engine.new_calls()
    res = json.loads(engine.inv("dev.rollback", "--level", "1", "--reason", "t", "--json").stdout)
    assert res["status"] == "success", res
    restart = next(c for c in engine.new_calls() if "restart" in c["argv"])
    assert "proc-worker" in restart["argv"]
    assert worker(engine) == before  # the same container, restarted
    beat = heartbeat(engine, before["release"], not_pid=old["pid"])
    assert not alive(old["pid"]) and alive(beat["pid"])


def test_level_2_brings_back_the_previous_release_worker(engine: Engine) -> None:
    b = worker(engine)
    a = engine.proj.history("dev")[-1]["release"]  # the first deploy
    res = json.loads(
        engine.inv("dev.rollback", "--level", "2", "--reason", "B misbehaves", "--json").stdout
    )
    assert res["status"] == "success", res
    row = worker(engine)
    assert row["release"] == a != b["release"] and row["container"] != b["container"]
    assert _serving(engine.proj) == a
    assert alive(heartbeat(engine, a)["pid"])


def test_a_worker_that_exits_at_once_fails_the_deploy_and_the_old_one_keeps_running(
    engine: Engine,
) -> None:
    p = engine.proj
    serving, before = _serving(p), worker(engine)
    old = heartbeat(engine, before["release"])
    toml = p.root / "stageflow.toml"
    good = toml.read_text()
    toml.write_text(good.replace(json.dumps(WORKER), '["python", "-m", "app.no_such_worker"]'))
    p.commit("a worker command that cannot run")
    try:
        res = p.inv("dev.deploy", env=engine.env)
    finally:
        toml.write_text(good)
        p.commit("the worker command as it was")
    said = res.stdout + res.stderr
    assert res.returncode == 6, said  # rolled back
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert "process worker of release" in line and "No module named app.no_such_worker" in line
    assert "Traceback" not in said
    assert not any(value in said for value in SECRETS.values())
    assert _serving(p) == serving
    assert worker(engine) == before  # the previous release's container, untouched
    assert heartbeat(engine, serving)["pid"] == old["pid"] and alive(old["pid"])
    assert p.history("dev")[0]["status"] != "success"


def test_down_removes_the_worker(engine: Engine) -> None:
    row = worker(engine)
    pid = heartbeat(engine, row["release"])["pid"]
    engine.inv("dev.down")
    assert not alive(pid)
    assert processes(engine) == []
    engine.inv("dev.up")
