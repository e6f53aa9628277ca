"""The verify window after a switch: probes health and reads metrics against the env's triggers.

Triggers (seed 002): more than N consecutive failed health checks; error rate up more than P points
over the previous release; p95 latency over R times the previous release's; memory over a limit.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from deploy.clients import redis_client
from deploy.config import EnvConfig, Project, Thresholds
from deploy.hosts import Host
from deploy.probes import smoke
from deploy.releases import master_pidfile
from deploy.state import Layout

MIN_REQUESTS = 20  # below this a rate or a percentile says nothing
# Latency buckets are coarse (5, 10, 25, 50, 100 ms ...) and a new release's first requests are
# cold: a p95 under this floor never triggers, whatever its ratio to the baseline.
P95_FLOOR_S = 0.1
METRICS_KEY = "stageflow:metrics:"


@dataclass(frozen=True)
class Stats:
    requests: int
    errors: int
    p95_s: float | None

    @property
    def error_pct(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 0.0


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    summary: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


def stats_from_hash(raw: dict[str, int]) -> Stats:
    requests = raw.get("duration_count", 0)
    errors = raw.get("errors", 0)
    buckets = sorted(
        (
            (math.inf if k[7:] == "+Inf" else float(k[7:]), v)
            for k, v in raw.items()
            if k.startswith("bucket:")
        ),
        key=lambda b: b[0],
    )
    p95 = None
    if requests:
        need, seen = 0.95 * requests, 0
        for bound, count in buckets:
            seen += count
            if seen >= need:
                p95 = bound
                break
    return Stats(requests, errors, p95)


def release_stats(env: EnvConfig, release: str | None) -> Stats | None:
    if not release:
        return None
    with redis_client(env) as client:
        raw = client.hgetall(METRICS_KEY + release)
    return stats_from_hash({k.decode(): int(v) for k, v in raw.items()})


def service_memory_mb(layout: Layout, release: str) -> float:
    """Resident memory of the release's master and workers (local host, from /proc)."""
    host = Host()
    text = host.read_text(master_pidfile(layout, release)) or ""
    try:
        master = int(text.split()[0])
    except (IndexError, ValueError):
        return 0.0
    pids = [master]
    try:
        children = open(f"/proc/{master}/task/{master}/children").read().split()
        pids += [int(p) for p in children]
    except OSError:
        pass
    total_kb = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def evaluate(
    t: Thresholds, *, new: Stats, base: Stats | None, consecutive_failures: int, memory_mb: float
) -> Verdict:
    """Pure: the first trigger that fires, with its numbers."""
    numbers: dict[str, Any] = {
        "requests": new.requests,
        "error_pct": round(new.error_pct, 2),
        "p95_s": new.p95_s,
        "memory_mb": round(memory_mb, 1),
        "health_failures": consecutive_failures,
    }
    if base:
        numbers.update(baseline_error_pct=round(base.error_pct, 2), baseline_p95_s=base.p95_s)
    if consecutive_failures > t.health_failures:
        return Verdict(
            False,
            f"health check failed {consecutive_failures} times in a row "
            f"(limit {t.health_failures})",
            numbers=numbers,
        )
    if new.requests >= MIN_REQUESTS:
        base_pct = base.error_pct if base and base.requests >= MIN_REQUESTS else 0.0
        if new.error_pct - base_pct > t.error_rate_points:
            return Verdict(
                False,
                f"error rate {new.error_pct:.1f}% vs baseline {base_pct:.1f}% "
                f"(limit +{t.error_rate_points:g} points)",
                numbers=numbers,
            )
        if (
            base
            and base.requests >= MIN_REQUESTS
            and base.p95_s
            and new.p95_s
            and new.p95_s > P95_FLOOR_S
            and new.p95_s > t.p95_ratio * base.p95_s
        ):
            return Verdict(
                False,
                f"p95 latency {new.p95_s * 1000:.0f} ms vs baseline "
                f"{base.p95_s * 1000:.0f} ms (limit {t.p95_ratio:g}x)",
                numbers=numbers,
            )
    if memory_mb > t.memory_mb:
        return Verdict(
            False, f"memory {memory_mb:.0f} MB over the limit {t.memory_mb} MB", numbers=numbers
        )
    return Verdict(
        True,
        summary=f"{new.requests} requests, {new.error_pct:.1f}% errors, {memory_mb:.0f} MB",
        numbers=numbers,
    )


def watch(
    proj: Project,
    name: str,
    *,
    release: str,
    baseline: str | None,
    window_s: float,
    interval_s: float = 0.25,
) -> Verdict:
    """Probe for window_s; stop early on a health trigger; then judge the metrics."""
    env = proj.env(name)
    t = proj.policies[name].thresholds
    layout = Layout(str(env.data_dir))
    base_url = f"http://127.0.0.1:{env.app_port}"
    keys = env.secret("API_KEYS")
    headers = {"X-API-Key": keys.reveal().split(",")[0]} if keys else {}
    consecutive = worst = 0
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        try:
            status, _ = smoke.http("GET", f"{base_url}/healthz", timeout=2)
        except OSError:
            status = 0
        consecutive = consecutive + 1 if status != 200 else 0
        worst = max(worst, consecutive)
        if worst > t.health_failures:
            break
        try:
            smoke.http("GET", f"{base_url}/notes", headers=headers, timeout=2)
        except OSError:
            pass
        time.sleep(interval_s)
    new = release_stats(env, release) or Stats(0, 0, None)
    base = release_stats(env, baseline)
    mem = service_memory_mb(layout, release) if os.path.exists(layout.run) else 0.0
    return evaluate(t, new=new, base=base, consecutive_failures=worst, memory_mb=mem)
