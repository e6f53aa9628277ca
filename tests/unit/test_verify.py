"""The verify window's judgement without servers: counters from worker files, and each trigger at
its edges (too few requests, a floor in ms, chance, a busy machine)."""

from __future__ import annotations

import math
from pathlib import Path

from deploy.config import Thresholds
from deploy.hosts import Host
from deploy.probes.verify import (
    EDGES_MS,
    MIN_REQUESTS,
    Counts,
    evaluate,
    judge_errors,
    judge_latency,
    read_counts,
    wilson_high,
    wilson_low,
)
from deploy.state import Layout
from tests.worker_counters import write_requests

PROD = Thresholds(health_failures=3, error_rate_points=5.0, p95_ratio=2.0, memory_mb=512)
STAGING = Thresholds(health_failures=6, error_rate_points=10.0, p95_ratio=4.0, memory_mb=1024)


def counts(*groups: tuple[int, float], errors: int = 0) -> Counts:
    """Counters of (how many, latency ms) groups of requests, `errors` of them 5xx."""
    latency = [0] * (len(EDGES_MS) + 1)
    total = 0
    for n, ms in groups:
        latency[next((i for i, e in enumerate(EDGES_MS) if ms <= e), len(EDGES_MS))] += n
        total += n
    return Counts(requests=total, errors=errors, latency=tuple(latency), workers=1)


def judge(new: Counts, base: Counts | None, t: Thresholds = PROD, busy: str = ""):
    return evaluate(t, new=new, base=base, consecutive_failures=0, memory_mb=10.0, busy=busy)


def test_worker_files_of_a_release_are_summed_and_a_bad_one_is_counted_not_trusted(tmp_path: Path):
    layout = Layout(str(tmp_path))
    metrics = Path(layout.run) / "metrics"
    write_requests(metrics, "r1", 11, [(200, 2.0)] * 5 + [(500, 40.0)])
    write_requests(metrics, "r1", 12, [(200, 2.5), (404, 9000.0), (200, 20000.0)])
    write_requests(metrics, "r0", 13, [(200, 1.0)] * 7)  # another release: not summed
    (metrics / "r1" / "14.json").write_text('{"edges_ms": [1, 2, 3], "counts": [1]}')
    (metrics / "r1" / "15.tmp").write_text("half a file")
    got = read_counts([(Host(), layout)], "r1")
    assert got is not None
    assert (got.requests, got.errors, got.workers, got.unreadable) == (9, 1, 2, 1)
    assert dict(got.status) == {"200": 7, "404": 1, "500": 1}
    assert got.latency[EDGES_MS.index(2)] == 5 and got.latency[EDGES_MS.index(3)] == 1
    assert got.latency[-1] == 1  # over the last edge
    assert read_counts([(Host(), layout)], "r9") == Counts()
    assert read_counts([(Host(), layout)], None) is None


def test_too_few_requests_judge_health_only_and_say_so():
    v = judge(counts((MIN_REQUESTS - 1, 3000), errors=MIN_REQUESTS - 1), counts((500, 2)))
    assert v.ok and "too few to judge" in v.summary and "health only" in v.summary


def test_health_fires_first():
    v = evaluate(PROD, new=counts((100, 2)), base=None, consecutive_failures=4, memory_mb=1)
    assert not v.ok and "health check failed 4 times" in v.reason


def test_an_error_rise_of_the_limit_fires_with_enough_errors_behind_it():
    base = counts((1000, 5), errors=10)  # 1 %
    assert judge_errors(PROD, counts((200, 5), errors=12), base)[0]  # 6 %: +5 points
    assert judge_errors(PROD, counts((200, 5), errors=11), base)[0] is None  # +4.5 points
    # 2 errors of 20 is 10 %, but two errors are not a rate
    assert judge_errors(PROD, counts((20, 5), errors=2), None)[0] is None
    # the same rise against no baseline of enough requests: 0 % assumed
    assert judge_errors(PROD, counts((100, 5), errors=8), counts((5, 5)))[0]
    # staging's relaxed limit (+10 points)
    assert judge_errors(STAGING, counts((200, 5), errors=12), base)[0] is None


def test_milliseconds_under_the_floor_never_count():
    # a 3 ms service at 7 ms, or at 30 ms on a busy machine: all under the floor
    base = counts((500, 3))
    assert judge(counts((300, 7)), base).ok
    assert judge(counts((250, 30), (50, 45)), base).ok


def test_a_release_twice_as_slow_fires_on_the_body_even_on_a_busy_machine():
    base = counts((400, 62), (20, 95))  # median and p95 in (50, 80] and (80, 130]
    reason, _ = judge_latency(PROD, counts((300, 124)), base, busy="load 9 on 2 CPUs")
    assert reason and "within 80 ms" in reason and "2x slower" in reason
    # staging (ratio 4) still sees no request within the baseline's median
    assert judge_latency(STAGING, counts((300, 124)), base)[0]


def test_a_good_release_on_a_busy_machine_keeps_its_fastest_requests():
    # the baseline's median 80 ms; load stretches most requests past it, a third stay within
    base = counts((400, 62))
    busy_new = counts((100, 70), (150, 110), (50, 180))
    assert judge(busy_new, base, busy="load 9.8 on 2 CPUs").ok
    # the same numbers on an idle machine: the tail says slower (61 % over the p95 of 80 ms)
    v = judge(busy_new, base)
    assert not v.ok and "over 80 ms" in v.reason


def test_the_tail_fires_beyond_ratio_times_five_percent_and_beyond_chance():
    base = counts((950, 10), (50, 60))  # p95 at 13 ms: the floor's 50 ms bar counts
    assert judge_latency(PROD, counts((88, 10), (12, 100)), base)[0]  # 12 % over 50 ms
    assert judge_latency(PROD, counts((92, 10), (8, 100)), base)[0] is None  # 8 %
    # 3 of 25 is 12 %, but chance at 5 % still explains it
    assert judge_latency(PROD, counts((22, 10), (3, 100)), base)[0] is None


def test_latency_is_not_judged_without_a_baseline_or_past_the_last_edge():
    new = counts((100, 5000))
    assert judge_latency(PROD, new, None)[0] is None
    assert judge_latency(PROD, new, counts((5, 2)))[0] is None
    _, said = judge_latency(PROD, new, counts((100, 20000)))
    assert "not judged" in said


def test_counts_quantiles_and_confidence_bounds():
    c = counts((50, 2), (45, 20), (5, 20000))
    assert (c.quantile_ms(0.5), c.p95_ms(), c.quantile_ms(0.99)) == (2.0, 20.0, math.inf)
    assert c.slower_than(20.0) == 5 and c.within(2.0) == 50
    assert wilson_low(0, 100) == 0.0 and 0.0 < wilson_low(10, 100) < 0.1 < wilson_high(10, 100)
    assert Counts().p95_ms() is None and wilson_high(0, 0) == 1.0


def test_a_release_not_ready_when_the_window_closes_fails_even_without_errors() -> None:
    quiet = counts((100, 0))
    v = evaluate(
        PROD, new=quiet, base=None, consecutive_failures=0, memory_mb=1,
        unready_at_end=["local"], ready_path="/readyz",
    )  # fmt: skip
    assert not v.ok and v.reason.startswith("/readyz not ready on local when the window closed")
    assert evaluate(PROD, new=quiet, base=None, consecutive_failures=0, memory_mb=1).ok


def test_readiness_failing_in_a_row_past_the_limit_fails() -> None:
    quiet = counts((100, 0))
    at_limit = evaluate(
        PROD, new=quiet, base=None, consecutive_failures=0, memory_mb=1,
        not_ready=PROD.health_failures,
    )  # fmt: skip
    past = evaluate(
        PROD, new=quiet, base=None, consecutive_failures=0, memory_mb=1,
        not_ready=PROD.health_failures + 1, ready_path="/readyz",
    )  # fmt: skip
    assert at_limit.ok and not past.ok and "/readyz not ready" in past.reason
