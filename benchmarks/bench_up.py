"""`inv dev.up` in a temporary project: cold (fresh cluster), warm (restart), and already up."""

from __future__ import annotations

import shutil

import _common as c

from tests.e2e.conftest import destroy, make_project


def main() -> None:
    proj = make_project("sf-bench-up-")
    env = c.inv_env()
    home = proj.root / ".stageflow" / "dev"

    def up() -> None:
        c.run([c.INV, "dev.up"], cwd=proj.root, env=env)

    def down() -> None:
        c.run([c.INV, "dev.down"], cwd=proj.root, env=env)

    try:
        cold, warm, noop = [], [], []
        for _ in range(c.RUNS):
            shutil.rmtree(home, ignore_errors=True)
            cold.append(c.wall(up))  # initdb, start postgres, create role + db, start redis
            down()
        for _ in range(c.RUNS):
            warm.append(c.wall(up))  # cluster exists: start both servers
            down()
        up()
        for _ in range(c.RUNS):
            noop.append(c.wall(up))  # both answer: nothing to do
        baseline = [
            c.wall(lambda: c.run([c.INV, "--list"], cwd=proj.root, env=env)) for _ in range(c.RUNS)
        ]
    finally:
        destroy(proj)
    c.emit(
        {
            "bench": "up",
            "command": "inv dev.up",
            "baseline": "inv --list (start-up cost of any inv command)",
            "results": {
                "cold": c.summary(cold),
                "warm_restart": c.summary(warm),
                "already_up": c.summary(noop),
                "baseline_inv_list": c.summary(baseline),
            },
        }
    )


if __name__ == "__main__":
    main()
