"""The compose switch on the real engine: a warm `inv dev.deploy` of a new commit (target: at most
10 s) and the requests that fail at 80 req/s while it switches (target: none), against the switch
compose does by itself in the same run: the app container recreated in place with the new tag
(`up -d --wait --no-deps --force-recreate app`, what a deploy did before the front), under the
same load. Skips in one JSON line where no Docker engine answers."""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import _common as c

from deploy.config import load_project
from deploy.runtime.compose_project import APP_SERVICE, project_for
from tests.e2e.conftest import Project, destroy, make_project
from tests.live_engine import engine_problem, image_env

RATE = "80"  # requests per second, a new connection each (tests/loadgen.py)


class Load:
    """tests/loadgen.py on the app port from another process, for as long as the block runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.result: dict[str, Any] = {}

    def __enter__(self) -> Load:
        self.proc = subprocess.Popen(
            [c.PYTHON, "-m", "tests.loadgen", self.url, RATE, "300"],
            cwd=c.REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        self.result = json.loads(out)


def setup(env: dict[str, str]) -> Project:
    """dev on the compose runtime under a project name of its own, with its secrets; up, and
    deployed once (the cold image build)."""
    proj = make_project("sf-bench-compose-")
    proj.set_policy("dev", runtime='"compose"')
    proj.edit(
        "env/dev.env",
        "COMPOSE_PROJECT_NAME=stageflow-dev",
        f"COMPOSE_PROJECT_NAME=sfbench-{secrets.token_hex(3)}-dev",
    )
    path = proj.root / "env" / "dev.secrets.env"
    keys = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "API_KEYS", "SECRET_KEY")
    path.write_text("".join(f"{k}={secrets.token_hex(12)}\n" for k in keys))
    os.chmod(path, 0o600)
    proj.commit("dev on the compose runtime")
    c.run([c.INV, "dev.up"], cwd=proj.root, env=env, timeout=600)
    c.run([c.INV, "dev.deploy"], cwd=proj.root, env=env, timeout=1800)
    return proj


def deploy(
    proj: Project, env: dict[str, str], i: int
) -> tuple[float, dict[str, float], dict[str, Any]]:
    """A new commit deployed under load: wall seconds, its steps' seconds, the load's result."""
    (proj.root / f"BENCH-{i}").write_text(f"bench {i}\n")
    proj.commit(f"bench change {i}")
    out: dict[str, Any] = {}
    with Load(proj.url("dev", "/healthz")) as load:
        took = c.wall(
            lambda: out.update(
                json.loads(c.run([c.INV, "dev.deploy", "--json"], cwd=proj.root, env=env).stdout)
            )
        )
    return took, out["steps"], load.result


def recreate(proj: Project, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """compose's own switch: the serving tag's app container recreated in place, under load."""
    saved = dict(os.environ)
    os.environ.update(env)  # the engine's image names, as an operator's shell has them
    try:
        rt = project_for(load_project(proj.root, process_env={}), "dev")
        release = rt.current_release() or ""
        argv = ["up", "-d", "--wait", "--no-deps", "--force-recreate", APP_SERVICE]
        with Load(proj.url("dev", "/healthz")) as load:
            took = c.wall(
                lambda: rt.run(lambda cc: [*cc.base(), *argv], release=release, check=True)
            )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return took, load.result


def main() -> None:
    problem = engine_problem()
    if problem:
        c.emit({"bench": "compose", "skipped": problem})
        return
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    env = {**c.inv_env(), **image_env()}
    proj = setup(env)
    try:
        deploy(proj, env, 0)  # warm: the checkout's bytecode, the image layers
        deploys = [deploy(proj, env, i) for i in range(1, c.RUNS + 1)]
        recreates = [recreate(proj, env) for _ in range(c.RUNS)]
    finally:
        c.run([c.INV, "dev.down"], cwd=proj.root, env=env, timeout=300)
        name = load_project(proj.root, process_env={}).env("dev").compose_project
        subprocess.run(
            ["docker", "volume", "rm", f"{name}-pgdata", f"{name}-redisdata"], capture_output=True
        )
        destroy(proj)
    failed = [load["failed"] for _, _, load in deploys]
    failed_recreate = [load["failed"] for _, load in recreates]
    c.emit(
        {
            "bench": "compose",
            "bench_s": round(time.perf_counter() - began, 1),
            "command": "inv dev.deploy --json of a new commit (compose runtime, real engine), "
            f"under {RATE} req/s of GET health, a new connection each; against `up -d --wait "
            "--no-deps --force-recreate app` under the same load",
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "results": {
                "warm_deploy": c.summary([w for w, _, _ in deploys]),
                "switch": c.summary([float(s.get("start", 0.0)) for _, s, _ in deploys]),
                "steps_median_s": {
                    name: round(statistics.median(s.get(name, 0.0) for _, s, _ in deploys), 3)
                    for name in deploys[0][1]
                },
                "failed_per_deploy": failed,
                "failed_per_deploy_max": max(failed),
                "requests_per_deploy_median": statistics.median(
                    load["total"] for _, _, load in deploys
                ),
                "recreate": c.summary([w for w, _ in recreates]),
                "failed_per_recreate": failed_recreate,
                "failed_per_recreate_median": statistics.median(failed_recreate),
            },
        }
    )


if __name__ == "__main__":
    sys.exit(main())
