"""`inv staging.rollback` levels 1 and 2 (warm) against the bare floor of a rollback (a master of the
other release on the shared socket + switch + one GET, benchmarks/_floor.py), the requests they lose
under constant load, and level 3's restore of a >= 100 MB database against a bare pg_restore of the
same dump (STAGEFLOW_BENCH_RESTORE_RUNS=0 skips level 3)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
import psycopg
from _floor import Floor
from bench_deploy import floor_for
from psycopg import sql

from app import seed
from deploy import backup as backups
from deploy.config import EnvConfig, load_project
from deploy.runtime.native import NativeServices, pg_bin_dir
from deploy.service import with_password
from deploy.state import Layout
from tests.e2e.conftest import Project, destroy, make_project
from tests.support import free_port

ENV = "staging"
RATE = float(os.environ.get("STAGEFLOW_BENCH_RATE", "60"))  # requests per second, >= 50
MIN_DB_BYTES = 100 * 1024 * 1024
LEVEL3_RUNS = int(os.environ.get("STAGEFLOW_BENCH_RESTORE_RUNS", str(min(c.RUNS, 3))))
SCRATCH_DB = "bench_bare_restore"
TARGETS_S = {"level1": 0.8, "level2": 0.9}  # wall, `inv` start-up included


def get(port: int, path: str = "/healthz", timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def serving(port: int) -> str:
    status, body = get(port, "/version")
    if status != 200:
        raise SystemExit(f"/version answered {status}")
    return str(json.loads(body)["release"])


def inv_json(proj: Project, *args: str) -> dict[str, Any]:
    res = c.run([c.INV, *args, "--json"], cwd=proj.root, env=c.inv_env(), timeout=600)
    return json.loads(res.stdout)


def inv(proj: Project, *args: str) -> None:
    c.run([c.INV, *args], cwd=proj.root, env=c.inv_env(), timeout=600)


class LoadGen:
    """tests.loadgen in its own process (so it competes for the CPU like a real client would)."""

    def __init__(self, url: str, rate: float) -> None:
        self.argv = [c.PYTHON, "-m", "tests.loadgen", url, str(rate), "600"]

    def __enter__(self) -> LoadGen:
        self.proc = subprocess.Popen(
            self.argv, cwd=c.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(1.0)  # the load is flowing before the action
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)  # and keeps flowing across the old master's exit
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        if self.proc.returncode != 0 or not out.strip():
            raise SystemExit(f"loadgen failed: {err.strip()[-300:]}")
        self.result: dict[str, Any] = json.loads(out)


def quiet_reference(port: int) -> dict[str, Any]:
    res = subprocess.run(
        [c.PYTHON, "-m", "tests.loadgen", f"http://127.0.0.1:{port}/healthz", str(RATE), "5"],
        cwd=c.REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(res.stdout)


def admin(svc: NativeServices, dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(svc.admin_conninfo(dbname), autocommit=True, connect_timeout=10)


def db_size(svc: NativeServices, dbname: str) -> int:
    with admin(svc) as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (dbname,)).fetchone()
    return int(row[0]) if row else 0


def _pg_password(env: EnvConfig) -> str:
    secret = env.secret("POSTGRES_PASSWORD")
    return secret.reveal() if secret else ""


def fill(env: EnvConfig, svc: NativeServices) -> tuple[int, int, float]:
    """COPY seed notes into staging until the live data alone is >= 100 MB; (rows, bytes, s)."""
    count, start = 1_000_000, time.perf_counter()
    while True:
        deleted, _ = seed.load(with_password(env.database_url, _pg_password(env)), count)
        if deleted:
            with admin(svc, env.database.name) as conn:
                conn.execute("VACUUM FULL notes")  # the rows a reload deleted are not data
        size = db_size(svc, env.database.name)
        if size >= MIN_DB_BYTES:
            return count, size, time.perf_counter() - start
        count = int(count * MIN_DB_BYTES / size * 1.1)


def bare_restore(svc: NativeServices, dump: Path, role: str) -> float:
    """Drop and create a scratch database, then pg_restore the dump into it with the same flags."""
    start = time.perf_counter()
    with admin(svc) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH_DB))
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(SCRATCH_DB), sql.Identifier(role)
            )
        )
    argv = backups.restore_argv(pg_bin_dir(), svc.admin_conninfo(SCRATCH_DB), str(dump), role=role)
    subprocess.run(argv, check=True, capture_output=True, timeout=3600)
    return time.perf_counter() - start


def no_verify_window(proj: Project) -> None:
    """staging's post-switch watch is the deploy's cost, not a rollback's: skip it in setup."""
    path = proj.root / "stageflow.toml"
    lines = path.read_text().splitlines()
    start = lines.index(f"[environments.{ENV}]")
    for i in range(start + 1, len(lines)):
        if lines[i].split("=")[0].strip() == "verify_window_s":
            lines[i] = "verify_window_s = 0"
            break
        if lines[i].startswith("["):
            raise SystemExit(f"no verify_window_s in [environments.{ENV}]")
    path.write_text("\n".join(lines) + "\n")


def deploy_two(proj: Project) -> tuple[str, str]:
    """Releases A then B on staging; returns their ids."""
    port = proj.ports[ENV]["app"]
    no_verify_window(proj)
    proj.commit("release A", tag="v1.0.0")
    inv(proj, f"{ENV}.deploy", "--ref", "v1.0.0")
    a = serving(port)
    proj.commit("release B", tag="v1.1.0")
    inv(proj, f"{ENV}.deploy", "--ref", "v1.1.0")
    b = serving(port)
    if a == b:
        raise SystemExit("the two deploys made one release")
    return a, b


def floor_of_two(proj: Project) -> Floor:
    """The floor beside staging, with releases A (r0) and B (r1) built and B serving."""
    floor = floor_for(proj.root, ENV)
    commits = [
        c.run(["git", "rev-parse", f"{tag}^{{commit}}"], cwd=proj.root).stdout.strip()
        for tag in ("v1.0.0", "v1.1.0")
    ]
    floor.setup(commits[0], free_port())
    floor.deploy(commits[1], "r1")
    return floor


def ratios(stageflow: list[float], floor: list[float], target: float) -> dict[str, Any]:
    med = statistics.median
    return {
        "ratio_to_floor": round(med(stageflow) / med(floor), 2),
        "ratio_to_floor_pairwise_median": round(
            med(x / y for x, y in zip(stageflow, floor, strict=True)), 2
        ),
        "over_floor_s": round(med(stageflow) - med(floor), 3),
        "target_s": target,
        "meets_target": med(stageflow) <= target,
    }


def step_medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {s: round(statistics.median(r.get(s, 0.0) for r in runs), 4) for s in runs[0]}


def levels(proj: Project, floor: Floor, a: str, b: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Levels 1 and 2 interleaved with the rollback floor; then both under load."""
    port = proj.ports[ENV]["app"]
    url = f"http://127.0.0.1:{port}/healthz"

    def level1() -> dict[str, Any]:
        return inv_json(proj, f"{ENV}.rollback", "--level", "1", "--reason", "bench")

    def level2() -> dict[str, Any]:
        to = a if serving(port) == b else b
        return inv_json(proj, f"{ENV}.rollback", "--level", "2", "--to", to, "--reason", "bench")

    def floor_back() -> float:
        assert floor.serving is not None
        return floor.rollback("r1" if floor.serving[0] == "r0" else "r0")

    level1()  # warm: the first of each level compiles what the later ones reuse
    level2()
    floor_back()
    l1, l2, l1_steps, l2_steps, floors = [], [], [], [], []
    l1_cpu, l2_cpu = [], []
    for _ in range(c.RUNS):  # interleaved: each level and its floor share the machine's mood
        out: dict[str, Any] = {}
        took, cpu = c.wall_and_cpu(lambda out=out: out.update(level1()))
        l1.append(took)
        l1_cpu.append(cpu)
        l1_steps.append(out["steps"])
        out = {}
        took, cpu = c.wall_and_cpu(lambda out=out: out.update(level2()))
        l2.append(took)
        l2_cpu.append(cpu)
        l2_steps.append(out["steps"])
        floors.append(floor_back())

    quiet = quiet_reference(port)
    with LoadGen(url, RATE) as load1:
        l1_loaded = [c.wall(level1) for _ in range(c.RUNS)]
    with LoadGen(url, RATE) as load2:
        l2_loaded = [c.wall(level2) for _ in range(c.RUNS)]
    results = {
        "level1": {**c.summary(l1), **ratios(l1, floors, TARGETS_S["level1"])},
        "level1_steps_median_s": step_medians(l1_steps),
        "level1_controller_cpu": c.summary(l1_cpu),
        "level2": {**c.summary(l2), **ratios(l2, floors, TARGETS_S["level2"])},
        "level2_steps_median_s": step_medians(l2_steps),
        "level2_controller_cpu": c.summary(l2_cpu),
        "floor": c.summary(floors),
    }
    load = {
        "tool": f"python -m tests.loadgen URL {RATE:g} SECONDS (separate process)",
        "no_rollback_5s": quiet,
        "during_level1": {**load1.result, "rollbacks": len(l1_loaded)},
        "during_level2": {**load2.result, "rollbacks": len(l2_loaded)},
        "level1_wall_loaded": c.summary(l1_loaded),
        "level2_wall_loaded": c.summary(l2_loaded),
    }
    return results, load


def restore(proj: Project, env: EnvConfig, layout: Layout, svc: NativeServices) -> dict[str, Any]:
    """Level 3 of a >= 100 MB database against a bare pg_restore of the same dump."""
    rows, size, fill_s = fill(env, svc)
    taken = inv_json(proj, f"{ENV}.backup", "--reason", "bench")
    dump = Path(layout.backups) / taken["file"]
    # untimed: from here on every bare restore drops a database as big as level 3 drops
    bare_restore(svc, dump, env.database.user)
    l3, l3_steps, bare3 = [], [], []
    level3 = (f"{ENV}.rollback", "--level", "3", "--backup", taken["id"], "--reason", "bench")
    for _ in range(LEVEL3_RUNS):
        out: dict[str, Any] = {}
        l3.append(c.wall(lambda out=out: out.update(inv_json(proj, *level3))))
        l3_steps.append(out["steps"])
        inv(proj, f"{ENV}.unfreeze", "--reason", "bench: restored its own backup")
        bare3.append(bare_restore(svc, dump, env.database.user))
    restored_size = db_size(svc, env.database.name)
    bare_size = db_size(svc, SCRATCH_DB)
    with admin(svc) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH_DB))
        )
    med = statistics.median
    l3_restore = [steps["restore"] for steps in l3_steps]
    return {
        "notes_rows": rows,
        "fill_s": round(fill_s, 1),
        "db_bytes_before_backup": size,
        "db_mb_before_backup": round(size / 2**20, 1),
        "db_mb_after_level3": round(restored_size / 2**20, 1),
        "db_mb_after_bare": round(bare_size / 2**20, 1),
        "dump_mb": round(taken["size_bytes"] / 2**20, 1),
        "backup_s": taken["duration_s"],
        "level3_wall": c.summary(l3),
        "level3_steps_median_s": step_medians(l3_steps),
        "level3_restore_step": c.summary(l3_restore),
        "bare_pg_restore": c.summary(bare3),
        "restore_step_over_bare_ratio": round(med(l3_restore) / med(bare3), 3),
        # each level 3 ran right before its bare restore: the pairs share the machine's mood
        "restore_step_over_bare_ratio_pairwise_median": round(
            med(x / y for x, y in zip(l3_restore, bare3, strict=True)), 3
        ),
        "level3_wall_over_bare_ratio": round(med(l3) / med(bare3), 3),
    }


def main() -> None:
    began = time.perf_counter()
    doc: dict[str, Any] = {
        "bench": "rollback",
        "environment": ENV,
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
        "commands": {
            "level1": f"inv {ENV}.rollback --level 1 --reason bench --json",
            "level2": f"inv {ENV}.rollback --level 2 --to <other release> --reason bench --json",
            "level3": f"inv {ENV}.rollback --level 3 --backup <id> --reason bench --json",
        },
        "baselines": {
            "floor": "by hand, same argv builders: a gunicorn master of the other release on "
            "the shared listener socket + ready marks + symlink switch + drain the old master + "
            "one GET /version answering from it (level 1's floor too: the same processes)",
            "restore": "DROP/CREATE DATABASE + pg_restore --jobs=2 of the same dump, same flags",
        },
    }
    proj = make_project("sf-bench-rollback-")
    floor: Floor | None = None
    try:
        inv(proj, f"{ENV}.up")
        a, b = deploy_two(proj)
        config = load_project(proj.root, process_env={})
        env = config.env(ENV)
        floor = floor_of_two(proj)
        doc["results"], doc["load"] = levels(proj, floor, a, b)
        if LEVEL3_RUNS:
            svc = NativeServices(env, user_name=config.service_user)
            doc["restore"] = restore(proj, env, Layout(str(env.data_dir)), svc)
    finally:
        if floor is not None:
            floor.stop()
            shutil.rmtree(floor.home, ignore_errors=True)
        destroy(proj)
    doc["bench_s"] = round(time.perf_counter() - began, 1)
    doc["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    c.emit(doc)


if __name__ == "__main__":
    sys.exit(main())
