"""Warm `inv dev.deploy`: wall and per-step time against the bare floor of a zero-downtime switch
(benchmarks/_floor.py), and the requests lost and p99 latency under constant load (new connection
per request) during back-to-back deploys."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _common as c
from _floor import Floor, venv_of

from deploy.config import load_project
from deploy.state import Layout
from tests.e2e.conftest import destroy, make_project
from tests.support import free_port

RATE = float(os.environ.get("STAGEFLOW_BENCH_RATE", "60"))  # requests per second
PATH = "/healthz"
TARGET_S = 1.0  # warm `inv dev.deploy`, wall, `inv` start-up included


def get(port: int, path: str = PATH, timeout: float = 10.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class Load:
    """Open-loop load: one request every 1/RATE s, each on a new connection, latency counted
    from the moment it was due (so a stalled server shows up, not hides)."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.rate = port, rate
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=64)
        self.thread = threading.Thread(target=self._schedule, daemon=True)

    def _one(self, due: float) -> None:
        try:
            status = get(self.port)
            error = None if status == 200 else f"http {status}"
        except OSError as exc:
            error = exc.__class__.__name__
        took = time.perf_counter() - due
        with self.lock:
            if error:
                self.failures[error] = self.failures.get(error, 0) + 1
            else:
                self.latencies.append(took)

    def _schedule(self) -> None:
        due = time.perf_counter()
        while not self.stop.is_set():
            self.pool.submit(self._one, due)
            due += 1 / self.rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)

    def __enter__(self) -> Load:
        self.started = time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.pool.shutdown(wait=True)
        self.seconds = time.perf_counter() - self.started

    def report(self) -> dict[str, Any]:
        ok, failed = len(self.latencies), sum(self.failures.values())
        return {
            "path": PATH,
            "target_rate_per_s": self.rate,
            "achieved_rate_per_s": round((ok + failed) / self.seconds, 1),
            "seconds": round(self.seconds, 2),
            "requests": ok + failed,
            "failed": failed,
            "failures": self.failures,
            "p50_ms": round(c.percentile(self.latencies, 50) * 1000, 1),
            "p99_ms": round(c.percentile(self.latencies, 99) * 1000, 1),
            "max_ms": round(max(self.latencies, default=0) * 1000, 1),
        }


def deploy(root: Path, env: dict[str, str]) -> dict[str, Any]:
    res = c.run([c.INV, "dev.deploy", "--json"], cwd=root, env=env)
    return json.loads(res.stdout)


def floor_for(root: Path, env_name: str = "dev") -> Floor:
    """The bare floor beside the environment: its venv, the service's settings, worker count."""
    proj = load_project(root, process_env={})
    env, layout = proj.env(env_name), Layout(str(proj.env(env_name).data_dir))
    return Floor(
        root=root,
        env=env,
        service=proj.service,
        home=Path(tempfile.mkdtemp(prefix="sf-bench-floor-")),
        venv=venv_of(layout),
        workers=proj.policies[env_name].workers,
    )


def head(root: Path) -> str:
    return c.run(["git", "rev-parse", "HEAD"], cwd=root).stdout.strip()


def main() -> None:
    proj = make_project("sf-bench-deploy-")
    env = c.inv_env()
    port = proj.ports["dev"]["app"]
    floor: Floor | None = None
    load_before = os.getloadavg()[0]
    try:
        c.run([c.INV, "dev.up"], cwd=proj.root, env=env)
        first_wall = c.wall(lambda: deploy(proj.root, env))  # builds the venv once
        floor = floor_for(proj.root)
        commit = head(proj.root)
        floor.setup(commit, free_port())

        walls, cpus, steps, floors = [], [], [], []
        for n in range(c.RUNS):  # interleaved: each pair shares the machine's mood
            out: dict[str, Any] = {}
            took, cpu = c.wall_and_cpu(lambda out=out: out.update(deploy(proj.root, env)))
            walls.append(took)
            cpus.append(cpu)
            steps.append(out["steps"])
            floors.append(floor.deploy(commit, f"r{n + 1}"))

        with Load(port, RATE) as quiet:  # the same load with no deploy: the reference p99
            time.sleep(5)
        deploy_walls = []
        with Load(port, RATE) as loaded:
            time.sleep(1)
            for _ in range(c.RUNS):
                deploy_walls.append(c.wall(lambda: deploy(proj.root, env)))
            time.sleep(1)
    finally:
        if floor is not None:
            floor.stop()
            shutil.rmtree(floor.home, ignore_errors=True)
        destroy(proj)

    med = statistics.median
    step_names = list(steps[0])
    step_medians = {s: round(med(run[s] for run in steps), 4) for s in step_names}
    c.emit(
        {
            "bench": "deploy",
            "command": "inv dev.deploy --json (warm: venv and servers exist)",
            "floor": "by hand, same argv builders: git archive + tar x + venv link + gunicorn "
            "master on a shared listener socket + ready marks + symlink switch + drain the old "
            "master + one GET /version answering from the new release",
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "results": {
                "first_deploy_s": round(first_wall, 3),
                "warm_deploy": c.summary(walls),
                # `inv` and what it waited for (git, tar, the launcher); not the service's daemons
                "warm_deploy_controller_cpu": c.summary(cpus),
                "warm_deploy_steps_median_s": step_medians,
                "warm_deploy_steps_total_s": round(sum(step_medians.values()), 3),
                "floor": c.summary(floors),
                "ratio_to_floor": round(med(walls) / med(floors), 2),
                "ratio_to_floor_pairwise_median": round(
                    med(w / f for w, f in zip(walls, floors, strict=True)), 2
                ),
                "warm_over_floor_s": round(med(walls) - med(floors), 3),
                "target_s": TARGET_S,
                "meets_target": med(walls) <= TARGET_S,
            },
            "load": {
                "no_deploy": quiet.report(),
                "during_deploys": {
                    **loaded.report(),
                    "deploys": len(deploy_walls),
                    "deploy_wall": c.summary(deploy_walls),
                },
            },
        }
    )


if __name__ == "__main__":
    main()
