"""What the deploy lock's heartbeat costs a deploy (target: nothing measurable on its wall time).

A holder rewrites its heartbeat file every HEARTBEAT_EVERY_S (2 s) from a thread of its own, so a
warm local deploy (about 1 s) may end before the first beat: what it always pays is the thread's
start and its join at release. Measured in this process, interleaved, on one warm project:

- `default`: deploys as they run, the heartbeat every 2 s;
- `no_heartbeat`: the same deploys with the heartbeat thread replaced by nothing (the baseline;
  a measurement only, production code has no way to turn it off);
- `beat_every_50ms`: the heartbeat forced to beat 20 times a second, the worst a long deploy
  could see per second of its run;
- `one_beat`: a single beat alone (read the holder file, rewrite the heartbeat), median of 200.

The verdict compares the default's median with the baseline's, against the baseline's own spread
(its interquartile range): a difference inside the spread is not measurable.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import _common as c

from deploy import state
from deploy.config import load_project
from deploy.engine import deploy_pipeline
from deploy.hosts import Host
from deploy.policy.actors import Actor
from tests.e2e.conftest import destroy, make_project

RUNS = 7
BEATS = 200


class _NoHeartbeat:
    def __init__(self, lock: Any, token: str) -> None:
        pass

    def halt(self) -> None:
        pass


def _quiet(_line: str) -> None:
    return None


def _iqr(xs: list[float]) -> float:
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def main() -> None:
    proj = make_project("sf-bench-lock-")
    try:
        env = c.inv_env()
        c.run([c.INV, "dev.up"], cwd=proj.root, env=env)
        c.run([c.INV, "dev.deploy"], cwd=proj.root, env=env)
        actor = Actor(name="bench@example.com", kind="human")
        real = state._Heartbeat  # noqa: SLF001 - the measurement swaps it, nothing else may
        every = state.HEARTBEAT_EVERY_S

        def deploy(n: int) -> float:
            (proj.root / "README.md").write_text(f"bench lock {n}\n")
            proj.commit(f"bench lock {n}")
            project = load_project(proj.root, process_env={})
            start = time.perf_counter()
            result = deploy_pipeline.deploy(project, "dev", actor=actor, printer=_quiet)
            wall = time.perf_counter() - start
            assert result["status"] == "success", result
            return wall

        variants: dict[str, Callable[[], None]] = {
            "default": lambda: None,
            "no_heartbeat": lambda: setattr(state, "_Heartbeat", _NoHeartbeat),
            "beat_every_50ms": lambda: setattr(state, "HEARTBEAT_EVERY_S", 0.05),
        }
        walls: dict[str, list[float]] = {k: [] for k in variants}
        n = 0
        deploy(n)  # the first in-process deploy loads what the others reuse
        for _ in range(RUNS):
            for name, setup in variants.items():
                setup()
                try:
                    n += 1
                    walls[name].append(deploy(n))
                finally:
                    state._Heartbeat = real  # noqa: SLF001
                    state.HEARTBEAT_EVERY_S = every

        # one beat alone, as the thread does it, on a lock this process holds
        layout = state.Layout(str(load_project(proj.root, process_env={}).env("dev").data_dir))
        lock = state.DeployLock(Host(), layout)
        lock.acquire(who=actor.name, command="bench", release="beat")
        beat_walls = []
        try:
            for _ in range(BEATS):
                start = time.perf_counter()
                if lock.token in (lock.host.read_text(lock.holder_path) or ""):
                    lock.host.write_text(lock.heartbeat_path, lock.now_epoch_text())
                beat_walls.append(time.perf_counter() - start)
        finally:
            lock.release()
        c.run([c.INV, "dev.down"], cwd=proj.root, env=env)
    finally:
        destroy(proj)

    med = {k: statistics.median(v) for k, v in walls.items()}
    spread = _iqr(walls["no_heartbeat"])
    delta = med["default"] - med["no_heartbeat"]
    c.emit(
        {
            "bench": "lock_heartbeat",
            "command": f"a warm `dev.deploy` in-process, {RUNS} of each variant interleaved",
            "baseline": "no_heartbeat: the heartbeat thread replaced by nothing",
            "results": {
                **{k: c.summary(v, digits=4) for k, v in walls.items()},
                "one_beat": c.summary(beat_walls, digits=6),
                "default_minus_baseline_s": round(delta, 4),
                "default_over_baseline": round(med["default"] / med["no_heartbeat"], 3),
                "beat_every_50ms_over_baseline": round(
                    med["beat_every_50ms"] / med["no_heartbeat"], 3
                ),
                "baseline_iqr_s": round(spread, 4),
                "measurable": abs(delta) > spread,
            },
        }
    )


if __name__ == "__main__":
    main()
