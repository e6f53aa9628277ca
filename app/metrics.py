"""Request metrics in Prometheus text format, summed across worker processes in one Redis hash."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import Counter
from collections.abc import Mapping

import redis

# Prometheus' default latency buckets (seconds).
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KEY_PREFIX = "stageflow:metrics:"
KEY_TTL_S = 30 * 24 * 3600
# After Redis fails, requests skip it this long so an outage does not cost every request a timeout.
REDIS_COOLDOWN_S = 5.0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def resident_memory_bytes() -> int:
    """This process's resident set size now (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def request_fields(status: int, seconds: float) -> Counter[str]:
    """The hash fields one request adds to: its status, error count, one bucket, sum and count."""
    bucket = next((b for b in BUCKETS if seconds <= b), float("inf"))
    fields: Counter[str] = Counter(
        {
            f"requests:{status}": 1,
            f"bucket:{_le(bucket)}": 1,
            "duration_count": 1,
            # Integer microseconds: HINCRBY is exact where a float sum would drift.
            "duration_sum_us": max(0, round(seconds * 1_000_000)),
        }
    )
    if status >= 500:
        fields["errors"] = 1
    return fields


class Metrics:
    """Counts requests locally and in Redis; renders Redis' totals, or this process's if Redis is down."""

    def __init__(self, *, release: str, client: redis.Redis) -> None:
        self.release = release
        self.key = KEY_PREFIX + release
        self._client = client
        self._lock = threading.Lock()
        self._local: Counter[str] = Counter()
        # Counts not yet in Redis: kept through an outage and added once it answers again.
        self._pending: Counter[str] = Counter()
        self._skip_until = 0.0

    def observe(self, status: int, seconds: float) -> None:
        """Record one finished request (one Redis round trip, none while Redis cools down)."""
        fields = request_fields(status, seconds)
        with self._lock:
            self._local.update(fields)
            self._pending.update(fields)
        self.flush()

    def flush(self) -> bool:
        """Send pending counts to Redis in one MULTI/EXEC; False when Redis is unavailable."""
        if time.monotonic() < self._skip_until:
            return False
        with self._lock:
            batch, self._pending = self._pending, Counter()
        if not batch:
            return True
        try:
            pipe = self._client.pipeline(transaction=True)
            for field, amount in batch.items():
                pipe.hincrby(self.key, field, amount)
            pipe.expire(self.key, KEY_TTL_S)
            pipe.execute()
            return True
        except (redis.RedisError, OSError):
            with self._lock:
                self._pending.update(batch)
            self._skip_until = time.monotonic() + REDIS_COOLDOWN_S
            return False

    def totals(self) -> tuple[dict[str, int], bool]:
        """(counts, degraded): every worker's counts from Redis, else this process's own."""
        if self.flush():
            try:
                raw = self._client.hgetall(self.key)
                return {str(k): int(v) for k, v in raw.items()}, False
            except (redis.RedisError, OSError, ValueError):
                self._skip_until = time.monotonic() + REDIS_COOLDOWN_S
        with self._lock:
            return dict(self._local), True

    def render(self) -> str:
        """The Prometheus text exposition of the totals, each series labelled with the release."""
        counts, degraded = self.totals()
        return render_text(self.release, counts, degraded, resident_memory_bytes())


def render_text(release: str, counts: Mapping[str, int], degraded: bool, rss: int) -> str:
    """Format counts (the hash fields of request_fields) as Prometheus text."""
    rel = f'release="{_label(release)}"'
    lines = [
        "# HELP http_requests_total HTTP requests served, by status code.",
        "# TYPE http_requests_total counter",
    ]
    statuses = sorted(k.split(":", 1)[1] for k in counts if k.startswith("requests:"))
    for status in statuses:
        lines.append(
            f'http_requests_total{{{rel},status="{_label(status)}"}} {counts[f"requests:{status}"]}'
        )
    lines += [
        "# HELP http_request_errors_total HTTP requests answered with a 5xx status.",
        "# TYPE http_request_errors_total counter",
        f"http_request_errors_total{{{rel}}} {counts.get('errors', 0)}",
        "# HELP http_request_duration_seconds Time from request start to response start.",
        "# TYPE http_request_duration_seconds histogram",
    ]
    cumulative = 0
    for bound in (*BUCKETS, float("inf")):
        cumulative += counts.get(f"bucket:{_le(bound)}", 0)
        lines.append(
            f'http_request_duration_seconds_bucket{{{rel},le="{_le(bound)}"}} {cumulative}'
        )
    total_s = counts.get("duration_sum_us", 0) / 1_000_000
    lines += [
        f"http_request_duration_seconds_sum{{{rel}}} {total_s:.6f}",
        f"http_request_duration_seconds_count{{{rel}}} {counts.get('duration_count', 0)}",
        "# HELP process_resident_memory_bytes Resident memory of the worker that answered.",
        "# TYPE process_resident_memory_bytes gauge",
        f"process_resident_memory_bytes{{{rel}}} {rss}",
        "# HELP stageflow_metrics_degraded 1 when Redis is down and counts are this worker's only.",
        "# TYPE stageflow_metrics_degraded gauge",
        f"stageflow_metrics_degraded {1 if degraded else 0}",
    ]
    return "\n".join(lines) + "\n"
