"""stageflow's per-worker request counters for tests: a writer of the worker file format, and (this
file given to gunicorn as --config) hooks that count every request of each worker into it.

As gunicorn config it reads STAGEFLOW_METRICS_DIR (the `<run>/metrics` folder) and
STAGEFLOW_RELEASE from the environment and writes `<dir>/<release>/<pid>.json` after each request.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deploy.probes.verify import EDGES_MS


def empty(release: str, pid: int) -> dict[str, Any]:
    return {
        "release": release,
        "pid": pid,
        "requests": 0,
        "errors": 0,
        "status": {},
        "edges_ms": list(EDGES_MS),
        "counts": [0] * (len(EDGES_MS) + 1),
        "updated": time.time(),
    }


def count(record: dict[str, Any], status: int, ms: float) -> None:
    """Add one finished request to a worker record."""
    record["requests"] += 1
    record["errors"] += status >= 500
    record["status"][str(status)] = record["status"].get(str(status), 0) + 1
    bucket = next((i for i, edge in enumerate(EDGES_MS) if ms <= edge), len(EDGES_MS))
    record["counts"][bucket] += 1
    record["updated"] = time.time()


def write(folder: Path, record: dict[str, Any]) -> Path:
    """Write a worker record where verify reads it, atomically (rename over the old one)."""
    target = folder / record["release"] / f"{record['pid']}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, target)
    return target


def write_requests(
    folder: Path, release: str, pid: int, requests: Iterable[tuple[int, float]]
) -> Path:
    """A worker file of release holding the given (status, ms) requests."""
    record = empty(release, pid)
    for status, ms in requests:
        count(record, status, ms)
    return write(folder, record)


# -- gunicorn server hooks ----------------------------------------------------------------------


def post_fork(server: Any, worker: Any) -> None:
    worker.stageflow_counts = empty(os.environ.get("STAGEFLOW_RELEASE", "unreleased"), os.getpid())


def pre_request(worker: Any, req: Any) -> None:
    worker.stageflow_began = time.perf_counter()


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    ms = (time.perf_counter() - worker.stageflow_began) * 1000
    count(worker.stageflow_counts, int(resp.status_code or 0), ms)
    write(Path(os.environ["STAGEFLOW_METRICS_DIR"]), worker.stageflow_counts)
