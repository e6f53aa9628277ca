"""What the identity and isolation checks add to a deploy (target: 50 ms or less): the guards that
compare every environment's URLs and homes, the cluster check that asks PostgreSQL which cluster
the URL reaches, and smoke's watch of the release's database sessions on every cluster this
machine reaches (opened before smoke's requests, closed after them). The floor is the least any
question to the server costs: one `SELECT 1` through the same psql."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import _common as c

from deploy import psql
from deploy.config import load_project
from deploy.policy import guards
from deploy.probes import cluster, sessions
from tests.e2e.conftest import destroy, make_project

SAMPLES = 20
TARGET_S = 0.05


def timed(fn: Callable[[], Any]) -> dict[str, Any]:
    walls = []
    for _ in range(SAMPLES):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    return c.summary(walls, digits=5)


def main() -> None:
    proj = make_project("sf-bench-identity-")
    try:
        env = c.inv_env()
        c.run([c.INV, "dev.up", "staging.up"], cwd=proj.root, env=env)
        c.run([c.INV, "dev.deploy"], cwd=proj.root, env=env)
        project = load_project(proj.root, process_env={})
        dev = project.env("dev")
        for check in (guards.isolation(project, "dev"), cluster.check(project, "dev")):
            if not check.ok:
                raise SystemExit(f"{check.name}: {check.detail}")

        def watch() -> None:
            sessions.watch(dev, "r-bench", sessions.neighbours(project, "dev")).stop()

        watch()  # loads the driver once, as the deploy does while its release boots
        watched = len(sessions.neighbours(project, "dev"))
        results = {
            "isolation": timed(lambda: guards.isolation(project, "dev")),
            "home_marker": timed(lambda: guards.home_marker(project, "dev")),
            "cluster": timed(lambda: cluster.check(project, "dev")),
            "session_watch": timed(watch),
            "floor_select_1": timed(lambda: psql.query(dev.database_url, "SELECT 1")),
        }
    finally:
        destroy(proj)
    med = {k: v["median_s"] for k, v in results.items()}
    added = med["isolation"] + med["home_marker"] + med["cluster"] + med["session_watch"]
    c.emit(
        {
            "bench": "identity",
            "command": "the checks in-process, each median of 20, in a warm project (dev and "
            "staging up, dev deployed once)",
            "floor": "one `SELECT 1` through psql, as the cluster check asks",
            "results": {
                **results,
                "added_to_a_deploy_s": round(added, 4),
                "cluster_over_floor": round(med["cluster"] / med["floor_select_1"], 2),
                "other_clusters_watched": watched,
                "target_s": TARGET_S,
                "meets_target": added <= TARGET_S,
            },
        }
    )


if __name__ == "__main__":
    main()
