"""`inv staging.rollback` levels 1 and 2 (warm) against a bare gunicorn start + switch, the requests
they lose under constant load, and level 3's restore of a >= 100 MB database against a bare
pg_restore of the same dump."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c
import psycopg
from psycopg import sql

from deploy import backup as backups
from deploy import seed
from deploy.config import EnvConfig, load_project
from deploy.runtime.native import NativeServices, pg_bin_dir
from deploy.state import Layout
from tests.e2e.conftest import Project, destroy, make_project
from tests.support import free_port

ENV = "staging"
RATE = float(os.environ.get("STAGEFLOW_BENCH_RATE", "60"))  # requests per second, >= 50
MIN_DB_BYTES = 100 * 1024 * 1024
LEVEL3_RUNS = int(os.environ.get("STAGEFLOW_BENCH_RESTORE_RUNS", str(min(c.RUNS, 3))))
SCRATCH_DB = "bench_bare_restore"


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


def bare_restart(env: EnvConfig, layout: Layout, rid: str, work: Path, n: int) -> float:
    """What a restart must do at least: start gunicorn on the release, wait for its first 200 on
    /healthz, switch a symlink. Returns the wall time; the server is stopped outside it."""
    rdir = layout.release(rid)
    port = free_port()
    child_env = {
        "STAGEFLOW_ENV_FILE": f"{layout.shared}/app.env",
        "STAGEFLOW_RELEASE": rid,
        "STAGEFLOW_APP_DIR": rdir,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    argv = [
        f"{rdir}/.venv/bin/python",  # -m, as the service starts it: a venv copy has no scripts
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--chdir",
        rdir,
        "app.wsgi:application",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=rdir
    )
    try:
        deadline = start + 30
        while True:
            try:
                if get(port, timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise SystemExit("the bare gunicorn never answered /healthz")
            time.sleep(0.01)
        tmp_link = work / "current.tmp"
        os.symlink(rdir, tmp_link)
        os.replace(tmp_link, work / "current")
        took = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return took


def admin(svc: NativeServices, dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(svc.admin_conninfo(dbname), autocommit=True, connect_timeout=10)


def db_size(svc: NativeServices, dbname: str) -> int:
    with admin(svc) as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (dbname,)).fetchone()
    return int(row[0]) if row else 0


def fill(env: EnvConfig, svc: NativeServices) -> tuple[int, int, float]:
    """COPY seed notes into staging until the live data alone is >= 100 MB; (rows, bytes, s)."""
    count, start = 1_000_000, time.perf_counter()
    while True:
        deleted, _ = seed.load(env.database_url, count, password=env.secret("POSTGRES_PASSWORD"))
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


def main() -> None:
    began = time.perf_counter()
    proj = make_project("sf-bench-rollback-")
    work = Path(tempfile.mkdtemp(prefix="sf-bench-bare-"))
    port = proj.ports[ENV]["app"]
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        inv(proj, f"{ENV}.up")
        a, b = deploy_two(proj)
        config = load_project(proj.root, process_env={})
        env = config.env(ENV)
        layout = Layout(str(env.data_dir))
        svc = NativeServices(env, user_name=config.service_user)

        def level1() -> dict[str, Any]:
            return inv_json(proj, f"{ENV}.rollback", "--level", "1", "--reason", "bench")

        def level2() -> dict[str, Any]:
            to = a if serving(port) == b else b
            return inv_json(
                proj, f"{ENV}.rollback", "--level", "2", "--to", to, "--reason", "bench"
            )

        level1()  # warm: the first of each level compiles what the later ones reuse
        level2()
        l1, l2, l1_steps, l2_steps, bare = [], [], [], [], []
        for n in range(c.RUNS):
            out: dict[str, Any] = {}
            l1.append(c.wall(lambda out=out: out.update(level1())))
            l1_steps.append(out["steps"])
            out = {}
            l2.append(c.wall(lambda out=out: out.update(level2())))
            l2_steps.append(out["steps"])
            bare.append(bare_restart(env, layout, serving(port), work, n))

        quiet = quiet_reference(port)
        with LoadGen(url, RATE) as load1:
            l1_loaded = [c.wall(level1) for _ in range(c.RUNS)]
        with LoadGen(url, RATE) as load2:
            l2_loaded = [c.wall(level2) for _ in range(c.RUNS)]

        rows, size, fill_s = fill(env, svc)
        taken = inv_json(proj, f"{ENV}.backup", "--reason", "bench")
        dump = Path(layout.backups) / taken["file"]
        # untimed: from here on every bare restore drops a database as big as level 3 drops
        bare_restore(svc, dump, env.database.user)
        l3, l3_steps, bare3 = [], [], []
        for _ in range(LEVEL3_RUNS):
            out = {}
            l3.append(
                c.wall(
                    lambda out=out: out.update(
                        inv_json(
                            proj,
                            f"{ENV}.rollback",
                            "--level",
                            "3",
                            "--backup",
                            taken["id"],
                            "--reason",
                            "bench",
                        )
                    )
                )
            )
            l3_steps.append(out["steps"])
            inv(proj, f"{ENV}.unfreeze", "--reason", "bench: restored its own backup")
            bare3.append(bare_restore(svc, dump, env.database.user))
        restored_size = db_size(svc, env.database.name)
        bare_size = db_size(svc, SCRATCH_DB)
        with admin(svc) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(SCRATCH_DB)
                )
            )
    finally:
        destroy(proj)
        shutil.rmtree(work, ignore_errors=True)

    def step_medians(runs: list[dict[str, float]]) -> dict[str, float]:
        return {s: round(statistics.median(r.get(s, 0.0) for r in runs), 4) for s in runs[0]}

    med = statistics.median
    l3_restore = [steps["restore"] for steps in l3_steps]
    c.emit(
        {
            "bench": "rollback",
            "environment": ENV,
            "bench_s": round(time.perf_counter() - began, 1),
            "commands": {
                "level1": f"inv {ENV}.rollback --level 1 --reason bench --json",
                "level2": f"inv {ENV}.rollback --level 2 --to <other release> --reason bench --json",
                "level3": f"inv {ENV}.rollback --level 3 --backup <id> --reason bench --json",
            },
            "baselines": {
                "restart": "python -m gunicorn -w 2 on the release + poll GET /healthz to 200 + symlink switch",
                "restore": "DROP/CREATE DATABASE + pg_restore --jobs=2 of the same dump, same flags",
            },
            "results": {
                "level1": c.summary(l1),
                "level1_steps_median_s": step_medians(l1_steps),
                "level2": c.summary(l2),
                "level2_steps_median_s": step_medians(l2_steps),
                "bare_restart": c.summary(bare),
                "level1_over_bare_s": round(med(l1) - med(bare), 3),
                "level2_over_bare_s": round(med(l2) - med(bare), 3),
            },
            "load": {
                "tool": f"python -m tests.loadgen URL {RATE:g} SECONDS (separate process)",
                "no_rollback_5s": quiet,
                "during_level1": {**load1.result, "rollbacks": len(l1_loaded)},
                "during_level2": {**load2.result, "rollbacks": len(l2_loaded)},
                "level1_wall_loaded": c.summary(l1_loaded),
                "level2_wall_loaded": c.summary(l2_loaded),
            },
            "restore": {
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
            },
        }
    )


if __name__ == "__main__":
    sys.exit(main())
