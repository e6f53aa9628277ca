"""The monitor's judgement without I/O: rates from two samples, each signal against its limit."""

from __future__ import annotations

from deploy.config import Thresholds
from deploy.probes.monitor import ALERT, OK, UNKNOWN, WARN, Sample, reading
from deploy.probes.verify import EDGES_MS, Counts

T = Thresholds(health_failures=3, error_rate_points=5.0, p95_ratio=2.0, memory_mb=512)


def sample(at: float, requests: int | None, errors: int | None, **kw) -> Sample:
    base = dict(
        at=at, wall="2026-01-01T00:00:00+00:00", release="r1", health_ok=True, health_ms=1.0,
        health_detail="HTTP 200", requests=requests, errors=errors, p95_s=0.05, memory_mb=100.0,
    )  # fmt: skip
    return Sample(**{**base, **kw})


def test_rate_is_the_delta_of_requests_over_the_time_between_samples():
    r = reading(sample(10.0, 100, 1), sample(12.0, 140, 3), T)
    assert r["request_rate"] == {"per_s": 20.0, "status": OK}
    assert r["error_rate"]["pct"] == 5.0 and r["error_rate"]["status"] == OK
    assert r["ok"] is True


def test_errors_over_the_limit_alert():
    r = reading(sample(0.0, 100, 0), sample(1.0, 120, 3), T)
    assert r["error_rate"]["pct"] == 15.0 and r["error_rate"]["status"] == ALERT
    assert r["ok"] is False


def test_a_first_sample_or_unreadable_counters_have_no_rate():
    assert reading(None, sample(0.0, 5, 0), T)["request_rate"]["status"] == UNKNOWN
    r = reading(sample(0.0, None, None), sample(1.0, None, None), T)
    assert r["request_rate"]["per_s"] is None and r["error_rate"]["status"] == UNKNOWN


def test_p95_alerts_only_against_a_baseline_and_above_the_floor():
    slow = sample(1.0, 200, 0, p95_s=0.5)
    assert reading(sample(0.0, 100, 0), slow, T)["p95"]["status"] == OK  # no baseline
    at_100ms = [0] * (len(EDGES_MS) + 1)
    at_100ms[EDGES_MS.index(130)] = 100
    base = Counts(requests=100, errors=0, latency=tuple(at_100ms))  # p95 at the 130 ms edge
    r = reading(sample(0.0, 100, 0), slow, T, base=base)
    assert r["p95"]["limit_ms"] == 260.0 and r["p95"]["status"] == ALERT


def test_health_warns_then_alerts_past_the_limit_and_memory_has_a_ceiling():
    down = sample(1.0, 0, 0, health_ok=False, health_detail="ConnectionRefusedError")
    assert reading(None, down, T, consecutive_failures=2)["health"]["status"] == WARN
    assert reading(None, down, T, consecutive_failures=4)["health"]["status"] == ALERT
    fat = sample(1.0, 0, 0, memory_mb=600.0)
    assert reading(None, fat, T)["memory"]["status"] == ALERT
