"""Shared by the bench scripts: repo path, timing, medians and percentiles, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the scripts borrow the e2e harness's temporary projects
    sys.path.insert(0, str(REPO))

PYTHON = sys.executable
INV = str(Path(sys.executable).with_name("inv"))
RUNS = int(os.environ.get("STAGEFLOW_BENCH_RUNS", "5"))


def wall(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def children_cpu_s() -> float:
    """CPU seconds (user + sys) of every child this process waited for so far."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def wall_and_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall seconds of fn, and the CPU seconds of the commands it ran and waited for (an `inv`
    and its own children; not the daemons it left running). Load moves CPU much less than wall."""
    cpu = children_cpu_s()
    took = wall(fn)
    return took, children_cpu_s() - cpu


def summary(samples: Sequence[float], *, digits: int = 4) -> dict[str, Any]:
    """Median first (what the docs quote), then the spread, in seconds."""
    ordered = sorted(samples)
    return {
        "median_s": round(statistics.median(ordered), digits),
        "min_s": round(ordered[0], digits),
        "max_s": round(ordered[-1], digits),
        "runs": len(ordered),
    }


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run(
    argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run argv and fail loudly: a benchmark of a failing command measures nothing."""
    res = subprocess.run(
        list(argv),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()[-400:]}")
    return res


def inv_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEFLOW_")}
    env.pop("ENVIRONMENT", None)
    # an operator's checkout keeps its bytecode after the first command: a warm figure must not
    # pay for compiling the engine on every run because this shell turned bytecode off
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        {"STAGEFLOW_ACTOR": "bench@example.com", "STAGEFLOW_ACTOR_KIND": "human", "NO_COLOR": "1"}
    )
    return env


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def emit(doc: dict[str, Any]) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
