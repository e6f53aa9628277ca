"""Constant HTTP load from a separate process: new connection per request, counts every failure.

usage: python -m tests.loadgen URL RATE SECONDS  (stops early on SIGTERM); prints one JSON line.
"""

from __future__ import annotations

import http.client
import json
import signal
import sys
import threading
import time
from urllib.parse import urlsplit


def run(url: str, rate: float, seconds: float, workers: int = 4) -> dict:
    parts = urlsplit(url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0, "errors": {}}
    latencies: list[float] = []
    interval = workers / rate
    deadline = time.monotonic() + seconds

    def worker(offset: float) -> None:
        next_at = time.monotonic() + offset
        while not stop.is_set() and time.monotonic() < deadline:
            start = time.monotonic()
            try:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                conn.request("GET", parts.path or "/")
                status = conn.getresponse().status
                conn.close()
                err = None if status < 500 else f"HTTP {status}"
            except OSError as exc:
                err = exc.__class__.__name__
            took = time.monotonic() - start
            with lock:
                if err:
                    counts["failed"] += 1
                    counts["errors"][err] = counts["errors"].get(err, 0) + 1
                else:
                    counts["ok"] += 1
                    latencies.append(took)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [
        threading.Thread(target=worker, args=(i * interval / workers,)) for i in range(workers)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else None
    total = counts["ok"] + counts["failed"]
    return {
        **counts,
        "total": total,
        "seconds": round(elapsed, 2),
        "rate": round(total / elapsed, 1) if elapsed else 0.0,
        "p99_ms": round(p99 * 1000, 1) if p99 is not None else None,
    }


if __name__ == "__main__":
    url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    sys.stdout.write(json.dumps(run(url, rate, seconds)) + "\n")
