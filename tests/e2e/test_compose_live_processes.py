"""[service.processes] on the compose runtime against a real Docker engine, through `inv`: the
reference service's worker runs in a container of the release's image (compose service
proc-worker) with the service's settings, so its heartbeat reaches the project's own Redis with
the password it was given; the next deploy replaces it with the new release's, and down removes
it. Without an engine it skips in one line (fails under STAGEFLOW_REQUIRE_ALL=1,
tests/live_engine.py).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from tests.e2e.conftest import Project
from tests.e2e.test_compose_live_tool import inv, live_dev_project, remove_live
from tests.live_engine import require_engine


@pytest.fixture(scope="module")
def proj() -> Iterator[Project]:
    require_engine()
    name = f"sfliveprocs-{secrets.token_hex(3)}-dev"
    p = live_dev_project("sf-live-procs-", name)
    with open(p.root / "stageflow.toml", "a") as fh:
        fh.write('\n[service.processes]\nworker = ["python", "-m", "app.worker"]\n')
    p.commit("dev on compose; the service runs a worker")
    try:
        yield p
    finally:
        remove_live(p, name)


def _values(p: Project, rel: str) -> dict[str, str]:
    lines = (p.root / rel).read_text().splitlines()
    return dict(ln.split("=", 1) for ln in lines if "=" in ln and not ln.startswith("#"))


def heartbeat(p: Project, release: str) -> dict:
    """The worker's heartbeat in the project's Redis (published on loopback) once it names
    release: the worker reached Redis with the URL and password of its container's settings."""
    port = _values(p, "env/dev.env")["REDIS_PORT"]
    password = _values(p, "env/dev.secrets.env")["REDIS_PASSWORD"]
    client = redis.Redis(host="127.0.0.1", port=int(port), password=password)
    beat: dict = {}
    for _ in range(150):
        beat = json.loads(client.get("worker:heartbeat") or "{}")
        if beat.get("release") == release:
            return beat
        time.sleep(0.2)
    raise AssertionError(f"no heartbeat of {release}'s worker: {beat}")


def workers(p: Project) -> list[tuple[str, str]]:
    """(image, state) of every proc-worker container of the project, as the engine lists them."""
    project = _values(p, "env/dev.env")["COMPOSE_PROJECT_NAME"]
    labels = [f"com.docker.compose.project={project}", "com.docker.compose.service=proc-worker"]
    argv = ["docker", "ps", "-a", "--format", "{{.Image}} {{.State}}"]
    for label in labels:
        argv += ["--filter", f"label={label}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def test_the_worker_runs_in_the_release_image_is_replaced_and_removed(proj: Project) -> None:
    p = proj
    inv(p, "dev.up")
    a = json.loads(inv(p, "dev.deploy", "--json"))
    assert a["status"] == "success", a
    assert heartbeat(p, a["release"])["release"] == a["release"]
    assert workers(p) == [(f"stageflow-app:{a['release']}", "running")]

    (p.root / "README.md").write_text("release B\n")
    p.commit("release B")
    b = json.loads(inv(p, "dev.deploy", "--json"))
    assert b["status"] == "success", b
    heartbeat(p, b["release"])
    assert workers(p) == [(f"stageflow-app:{b['release']}", "running")]  # A's is gone
    rows = json.loads(inv(p, "dev.status", "--json"))["app"]["processes"]
    assert [(r["name"], r["release"], r["up"]) for r in rows] == [("worker", b["release"], True)]
    logs = inv(p, "dev.logs", "--service", "worker")  # the engine's log of the proc-worker service
    assert f"worker of {b['release']} started" in logs, logs

    inv(p, "dev.down")
    assert workers(p) == []
