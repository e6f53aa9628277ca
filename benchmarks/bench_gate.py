"""`inv release.gate`: wall time against its slowest gate in the same run (are the gates parallel
for real?), and the re-run that every gate's verdict cache answers. The gate is given the project's
dev database as `--db-url`, as an operator gives it a target: without one the migrations gate
errors at once, and the whole gate would be timed without its copy and rehearsal."""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import _common as c

from deploy.config import load_project
from tests.e2e.conftest import Project, destroy, make_project

REF = "v1.0.0"  # matches GA's "v*"


def trim_ga(proj: Project) -> None:
    proj.gate_ga_on_quick_gates()
    proj.commit("gate GA on the quick gates for this benchmark project", tag=REF)


def gate(proj: Project, *flags: str) -> tuple[float, dict[str, Any]]:
    out: dict[str, Any] = {}

    def once() -> None:
        res = c.run([c.INV, "release.gate", "--ref", REF, "--json", *flags], cwd=proj.root, env=env)
        out.update(json.loads(res.stdout))

    env = c.inv_env()
    took = c.wall(once)
    if out.get("verdict") != "passed":
        raise SystemExit(f"release.gate verdict {out.get('verdict')}: {out.get('blocking')}")
    return took, out


def target(proj: Project) -> str:
    """dev's database, up and empty: the reference migrations are pending there. dev's role has
    no password (trust on 127.0.0.1), so the URL holds none."""
    c.run([c.INV, "dev.up"], cwd=proj.root, env=c.inv_env())
    return load_project(proj.root, process_env={}).env("dev").database_url


def main() -> None:
    began = time.perf_counter()
    proj = make_project("sf-bench-gate-")
    try:
        trim_ga(proj)
        db = ("--db-url", target(proj))
        gate(proj, "--no-cache", *db)  # warm: bytecode, the tool caches
        cold: list[tuple[float, dict[str, Any]]] = [
            gate(proj, "--no-cache", *db) for _ in range(c.RUNS)
        ]
        cached = [gate(proj, *db) for _ in range(c.RUNS)]
        inv_list = [
            c.wall(lambda: c.run([c.INV, "--list"], cwd=proj.root, env=c.inv_env()))
            for _ in range(c.RUNS)
        ]
    finally:
        destroy(proj)

    def slowest(report: dict[str, Any]) -> dict[str, Any]:
        return max(report["gates"], key=lambda g: g["duration_s"])

    walls = [w for w, _ in cold]
    runner = [r["duration_s"] for _, r in cold]
    slow = [slowest(r)["duration_s"] for _, r in cold]
    serial = [sum(g["duration_s"] for g in r["gates"]) for _, r in cold]
    last = cold[-1][1]
    med = statistics.median
    c.emit(
        {
            "bench": "gate",
            "bench_s": round(time.perf_counter() - began, 1),
            "command": f"inv release.gate --ref {REF} --no-cache --json --db-url DEV_DATABASE_URL",
            "cached_command": f"inv release.gate --ref {REF} --json --db-url DEV_DATABASE_URL "
            "(every cacheable verdict cached)",
            "baseline": "inv --list in the same project",
            "stage": last["stage"],
            "gates": {
                g["name"]: {
                    "requirement": g["requirement"],
                    "status": g["status"],
                    "duration_s": g["duration_s"],
                    **({} if g["status"] == "passed" else {"summary": g["summary"][:160]}),
                }
                for g in last["gates"]
            },
            "results": {
                "wall": c.summary(walls),
                "runner_duration": c.summary(runner),
                "slowest_gate": c.summary(slow),
                "slowest_gate_name": slowest(last)["name"],
                "sum_of_gates": c.summary(serial),
                "wall_over_slowest_ratio": round(
                    med(w / s for w, s in zip(walls, slow, strict=True)), 3
                ),
                "runner_over_slowest_ratio": round(
                    med(r / s for r, s in zip(runner, slow, strict=True)), 3
                ),
                "wall_minus_inv_list_over_slowest_ratio": round(
                    (med(walls) - med(inv_list)) / med(slow), 3
                ),
                "cached_wall": c.summary([w for w, _ in cached]),
                "cached_runner_duration": c.summary([r["duration_s"] for _, r in cached]),
                "cached_gates": sorted(g["name"] for g in cached[-1][1]["gates"] if g["cached"]),
                "inv_list": c.summary(inv_list),
            },
        }
    )


if __name__ == "__main__":
    sys.exit(main())
