"""The verify window after a switch: probe health, then judge the release's request counters against
the previous release's with the environment's triggers.

The counters are stageflow's own, the same for any service: each gunicorn worker of a release
writes `<run>/metrics/<release>/<pid>.json` on its host (requests, 5xx errors, statuses, and a
latency histogram over EDGES_MS). Verify sums every worker file of a release on every host.

Readiness is watched beside liveness: the service's ready path (its database and Redis) must not
fail more than N times in a row, and must answer ready on every host when the window closes, so a
database that died after smoke fails verify even when no request errored.

Triggers (seed 002): more than N consecutive failed health checks; an error rate P points or more
over the previous release's; latency (see judge_latency); memory over a limit. A busy machine must
not roll a good release back, so the rate triggers judge only with enough requests behind them and
only on a difference that is unlikely to be chance.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from deploy.config import Project, Thresholds
from deploy.errors import DeployError
from deploy.hosts import Host
from deploy.probes import smoke
from deploy.releases import master_pidfile
from deploy.service import Service
from deploy.state import Layout

# The worker files' latency buckets (ms): counts[i] holds requests at or under EDGES_MS[i] (and
# over the edge before it); the one after the last edge holds the slower ones.
EDGES_MS: tuple[int, ...] = (
    1, 2, 3, 5, 8, 13, 20, 30, 50, 80, 130, 200, 300, 500, 800, 1300, 2000, 3000, 5000, 8000, 13000,
)  # fmt: skip
MIN_REQUESTS = 20  # below this a rate or a share says nothing: only health is judged
MIN_ERRORS = 3  # an error rate is judged on at least this many errors, never on one or two
# The share of a release's requests slower than its own p95: what the same code is expected to
# show again. The latency trigger fires when the new release shows p95_ratio times this share.
EXPECTED_SLOW = 0.05
# Latencies under this never count as slow: on a loaded machine a 3 ms request takes 7 ms, or
# 20, and that is the machine, not the release. An edge of EDGES_MS.
FLOOR_MS = 50
Z_ONE_SIDED = 1.645  # a difference counts when chance would show it less than 5 % of the time
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass(frozen=True)
class Counts:
    """One release's counters, summed over its workers (and hosts)."""

    requests: int = 0
    errors: int = 0
    latency: tuple[int, ...] = (0,) * (len(EDGES_MS) + 1)
    status: tuple[tuple[str, int], ...] = ()
    workers: int = 0
    unreadable: int = 0  # worker files that could not be read as the format

    @property
    def error_pct(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 0.0

    @property
    def timed(self) -> int:
        return sum(self.latency)

    def quantile_ms(self, q: float) -> float | None:
        """The edge at or under which a share q of the timed requests finished (inf: over the
        last edge); None without a timed request."""
        total = self.timed
        if not total:
            return None
        seen = 0
        for edge, n in zip((*EDGES_MS, math.inf), self.latency, strict=True):
            seen += n
            if seen >= q * total:
                return float(edge)
        return math.inf

    def p95_ms(self) -> float | None:
        return self.quantile_ms(0.95)

    @property
    def p95_s(self) -> float | None:
        p95 = self.p95_ms()
        return None if p95 is None else p95 / 1000

    def slower_than(self, edge_ms: float) -> int:
        """Requests slower than edge_ms, which must be one of EDGES_MS."""
        if edge_ms == math.inf:
            return 0
        return sum(self.latency[EDGES_MS.index(int(edge_ms)) + 1 :])

    def within(self, edge_ms: float) -> int:
        """Requests at or under edge_ms, which must be one of EDGES_MS."""
        return self.timed - self.slower_than(edge_ms)

    def __add__(self, other: Counts) -> Counts:
        status: dict[str, int] = dict(self.status)
        for code, n in other.status:
            status[code] = status.get(code, 0) + n
        return Counts(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            latency=tuple(a + b for a, b in zip(self.latency, other.latency, strict=True)),
            status=tuple(sorted(status.items())),
            workers=self.workers + other.workers,
            unreadable=self.unreadable + other.unreadable,
        )


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("not a count")
    return value


def parse_worker(text: str) -> Counts:
    """One worker file; ValueError when it is not the format (other edges, negative counts)."""
    data = json.loads(text)
    if not isinstance(data, dict) or tuple(data.get("edges_ms") or ()) != EDGES_MS:
        raise ValueError("not a worker file with stageflow's latency edges")
    latency = tuple(_count(n) for n in data.get("counts") or ())
    if len(latency) != len(EDGES_MS) + 1:
        raise ValueError(f"counts has {len(latency)} buckets, not {len(EDGES_MS) + 1}")
    status = data.get("status") or {}
    if not isinstance(status, dict):
        raise ValueError("status is not an object")
    return Counts(
        requests=_count(data.get("requests", 0)),
        errors=_count(data.get("errors", 0)),
        latency=latency,
        status=tuple(sorted((str(k), _count(v)) for k, v in status.items())),
        workers=1,
    )


def metrics_dir(layout: Layout, release: str) -> str:
    return f"{layout.run}/metrics/{release}"


def host_counts(host: Host, layout: Layout, release: str) -> Counts:
    """Every worker file of release on one host (local or over SSH)."""
    total = Counts()
    folder = metrics_dir(layout, release)
    for name in host.listdir(folder):
        if not name.endswith(".json"):
            continue  # a writer's temporary file
        try:
            total += parse_worker(host.read_text(f"{folder}/{name}") or "")
        except ValueError:  # json's errors are ValueErrors too; half-written files stay rare
            total += Counts(unreadable=1)
    return total


def read_counts(places: Iterable[tuple[Host, Layout]], release: str | None) -> Counts | None:
    """release's counters summed over every host; None without a release."""
    if not release:
        return None
    total = Counts()
    for host, layout in places:
        total += host_counts(host, layout, release)
    return total


# -- the judgement (pure) ---------------------------------------------------------------------


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    summary: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


def _wilson(hits: int, n: int, z: float) -> tuple[float, float]:
    p = hits / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n)), min(
        1.0, (centre + spread) / (1 + z * z / n)
    )


def wilson_low(hits: int, n: int, z: float = Z_ONE_SIDED) -> float:
    """The lower end of the Wilson score interval of hits/n: the smallest rate the count still
    makes likely. 0 without trials."""
    return _wilson(hits, n, z)[0] if n > 0 else 0.0


def wilson_high(hits: int, n: int, z: float = Z_ONE_SIDED) -> float:
    """The upper end of the Wilson score interval of hits/n. 1 without trials."""
    return _wilson(hits, n, z)[1] if n > 0 else 1.0


def judge_errors(t: Thresholds, new: Counts, base: Counts | None) -> tuple[str | None, str]:
    """(reason to roll back or None, what was judged). The rise must reach the limit, rest on
    MIN_ERRORS errors at least, and be unlikely at the baseline's rate."""
    if new.requests < MIN_REQUESTS:
        return None, f"error rate not judged: {new.requests} requests (< {MIN_REQUESTS})"
    trusted = base is not None and base.requests >= MIN_REQUESTS
    base_rate = base.errors / base.requests if trusted and base else 0.0
    rise = new.error_pct - 100 * base_rate
    said = f"error rate {new.error_pct:.1f}% vs baseline {100 * base_rate:.1f}%"
    if not trusted:
        said += " (no baseline with enough requests: 0% assumed)"
    if (
        rise >= t.error_rate_points
        and new.errors >= MIN_ERRORS
        and wilson_low(new.errors, new.requests) > base_rate
    ):
        return f"{said} (limit +{t.error_rate_points:g} points)", said
    return None, said


def judge_latency(
    t: Thresholds, new: Counts, base: Counts | None, *, busy: str = ""
) -> tuple[str | None, str]:
    """(reason to roll back or None, what was judged). Two readings of the whole distribution,
    never one p95 against another:

    - the body: q of the baseline's requests finished within B ms (B its median, q a half; or
      more of them within FLOOR_MS when the median is under it). Fewer than q / p95_ratio of the
      new release's requests finishing within B, significantly fewer than q, fires. A busy
      machine stretches every request's tail but leaves the fastest ones near where they were; a
      release that is really slower moves them all.
    - the tail: about EXPECTED_SLOW of the same code's requests are over the baseline's p95
      (never under FLOOR_MS); p95_ratio times that share, more than chance explains, fires. Only
      judged when the hosts are not saturated (busy says why they are): a loaded machine fakes it.
    """
    if base is None or base.timed < MIN_REQUESTS:
        return None, "latency not judged: no baseline with enough requests"
    if new.timed < MIN_REQUESTS:
        return None, f"latency not judged: {new.timed} requests (< {MIN_REQUESTS})"
    mid, p95 = base.quantile_ms(0.5), base.quantile_ms(0.95)
    if mid is None or p95 is None or mid == math.inf:
        return None, f"latency not judged: the baseline's median is over {EDGES_MS[-1]} ms"
    bar = max(mid, float(FLOOR_MS))
    q = max(0.5, base.within(float(FLOOR_MS)) / base.timed)
    within = new.within(bar)
    need = q / t.p95_ratio
    said = (
        f"{100 * within / new.timed:.0f}% of requests within {bar:g} ms "
        f"(the baseline: {100 * q:.0f}%; median {mid:g} ms, floor {FLOOR_MS} ms)"
    )
    if within / new.timed < need and wilson_high(within, new.timed) < q:
        return f"latency: {said}, under {100 * need:.0f}% ({t.p95_ratio:g}x slower)", said
    if busy:
        return None, f"{said}; tail not judged: {busy}"
    if p95 == math.inf:
        return None, f"{said}; tail not judged: the baseline's p95 is over {EDGES_MS[-1]} ms"
    tail_bar = max(p95, float(FLOOR_MS))
    slow = new.slower_than(tail_bar)
    limit = EXPECTED_SLOW * t.p95_ratio
    expected = base.slower_than(tail_bar) / base.timed
    tail = (
        f"{100 * slow / new.timed:.0f}% of requests over {tail_bar:g} ms (the baseline's p95 "
        f"{p95:g} ms) vs {100 * expected:.0f}% for the baseline"
    )
    if slow / new.timed > limit and wilson_low(slow, new.timed) > max(expected, EXPECTED_SLOW):
        return f"latency: {tail} (limit {100 * limit:g}% = {t.p95_ratio:g} x 5%)", tail
    return None, f"{said}; {tail}"


def _numbers(
    new: Counts, base: Counts | None, memory_mb: float, health_failures: int, not_ready: int
) -> dict[str, Any]:
    """What a verdict reports, whichever trigger fires."""
    numbers: dict[str, Any] = {
        "requests": new.requests,
        "errors": new.errors,
        "error_pct": round(new.error_pct, 2),
        "p95_ms": new.p95_ms(),
        "memory_mb": round(memory_mb, 1),
        "health_failures": health_failures,
        "ready_failures": not_ready,
        "workers": new.workers,
    }
    if new.unreadable:
        numbers["unreadable_worker_files"] = new.unreadable
    if base:
        numbers.update(
            baseline_requests=base.requests,
            baseline_error_pct=round(base.error_pct, 2),
            baseline_p95_ms=base.p95_ms(),
        )
    return numbers


def _readiness_reason(
    t: Thresholds, not_ready: int, unready_at_end: Sequence[str], ready_path: str
) -> str | None:
    """Why the release is not ready (its database or Redis), or None when it is."""
    if unready_at_end:
        return (
            f"{ready_path} not ready on {', '.join(unready_at_end)} when the window closed "
            "(its database or Redis does not answer)"
        )
    if not_ready > t.health_failures:
        return f"{ready_path} not ready {not_ready} times in a row (limit {t.health_failures})"
    return None


def evaluate(
    t: Thresholds,
    *,
    new: Counts,
    base: Counts | None,
    consecutive_failures: int,
    memory_mb: float,
    service_numbers: Mapping[str, float] | None = None,
    busy: str = "",
    not_ready: int = 0,
    unready_at_end: Sequence[str] = (),
    ready_path: str = "the ready path",
) -> Verdict:
    """Pure: the first trigger that fires, with its numbers. busy: why the hosts were saturated
    during the window ("" when they were not). not_ready: the longest run of failed readiness
    probes; unready_at_end: the hosts whose ready path failed when the window closed."""
    numbers = _numbers(new, base, memory_mb, consecutive_failures, not_ready)
    if service_numbers:
        numbers["service"] = dict(service_numbers)
    if consecutive_failures > t.health_failures:
        return Verdict(
            False,
            f"health check failed {consecutive_failures} times in a row "
            f"(limit {t.health_failures})",
            numbers=numbers,
        )
    unready = _readiness_reason(t, not_ready, unready_at_end, ready_path)
    if unready:
        return Verdict(False, unready, numbers=numbers)
    if busy:
        numbers["busy"] = busy
    judged = []
    for reason, said in (judge_errors(t, new, base), judge_latency(t, new, base, busy=busy)):
        judged.append(said)
        if reason:
            return Verdict(False, reason, numbers=numbers)
    numbers["judged"] = judged
    if memory_mb > t.memory_mb:
        return Verdict(
            False, f"memory {memory_mb:.0f} MB over the limit {t.memory_mb} MB", numbers=numbers
        )
    if new.requests < MIN_REQUESTS:
        summary = (
            f"{new.requests} requests: too few to judge errors or latency "
            f"(< {MIN_REQUESTS}), health only; {memory_mb:.0f} MB"
        )
    else:
        summary = f"{new.requests} requests, {new.error_pct:.1f}% errors, {memory_mb:.0f} MB"
    return Verdict(True, summary=summary, numbers=numbers)


# -- the window ------------------------------------------------------------------------------


class Place(Protocol):
    """One host serving the release (engine.group.Target is one)."""

    @property
    def name(self) -> str: ...
    @property
    def bind(self) -> str: ...

    host: Host
    layout: Layout


@dataclass
class LocalPlace:
    host: Host
    layout: Layout
    name: str = "local"
    bind: str = "127.0.0.1"


def traffic_paths(service: Service) -> list[str]:
    """What the window asks besides health: the ready path and the service's GET smoke checks
    (safe to repeat), so a quiet service still has requests to judge."""
    paths = [service.ready_path] if service.ready_path != service.health else []
    for check in service.smoke:
        if check.method == "GET" and smoke.TOKEN not in check.path and check.path not in paths:
            paths.append(check.path)
    return paths


BUSY_LOAD_PER_CPU = 1.0  # a run queue on every core: latency is the machine's as much as the code's


def busy_reason(places: Sequence[tuple[str, Host]]) -> str:
    """Why the hosts were saturated over the last minute (1-min load average per CPU), or ""."""
    found = []
    for name, host in places:
        try:
            load = float((host.read_text("/proc/loadavg") or "").split()[0])
            cpus = sum(
                line.startswith("processor")
                for line in (host.read_text("/proc/cpuinfo") or "").splitlines()
            )
        except (IndexError, ValueError, OSError, DeployError):
            continue  # no /proc there: judged as not busy
        if cpus and load / cpus >= BUSY_LOAD_PER_CPU:
            found.append(f"{name} at load {load:.1f} on {cpus} CPUs")
    return "; ".join(found)


def service_metrics(base_url: str, path: str) -> dict[str, float]:
    """The service's own Prometheus counters at path, summed by name over their labels (only
    `*_total` series); reported beside stageflow's numbers, never judged."""
    reply = smoke.request("GET", base_url + path, timeout=2, probe="verify")
    if reply.status != 200 or not isinstance(reply.body, str):
        return {}
    sums: dict[str, float] = {}
    for line in reply.body.splitlines():
        named = _METRIC_NAME.match(line)
        if not named or not named.group().endswith("_total"):
            continue  # comments, blank lines, gauges and histograms
        rest = line[named.end() :]
        if rest.startswith("{"):
            rest = rest[rest.rfind("}") + 1 :]
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        sums[named.group()] = sums.get(named.group(), 0.0) + value
    return dict(sorted(sums.items())[:20])


def _status(url: str, headers: Mapping[str, str], timeout: float = 2) -> int:
    try:
        return smoke.request("GET", url, headers=headers, timeout=timeout, probe="verify").status
    except OSError:
        return 0


def _probe_round(
    places: Sequence[Place],
    port: int,
    service: Service,
    headers: Mapping[str, str],
    consecutive: dict[str, int],
    unready: dict[str, int] | None = None,
) -> int:
    """One round over every host: health (counted), then the traffic paths, the ready path among
    them (counted in unready); the worst run of failed health checks."""
    unready = {} if unready is None else unready
    for p in places:
        base_url = f"http://{p.bind}:{port}"
        status = _status(base_url + service.health, {})
        consecutive[p.name] = 0 if smoke.healthy(status) else consecutive.get(p.name, 0) + 1
        if service.ready_path == service.health:
            unready[p.name] = 0 if service.is_ready(status) else unready.get(p.name, 0) + 1
        for path in traffic_paths(service):
            answer = _status(base_url + path, headers)
            if path == service.ready_path:
                unready[p.name] = 0 if service.is_ready(answer) else unready.get(p.name, 0) + 1
    return max(consecutive.values(), default=0)


# a final readiness probe that fails is asked again this many times, a second apart, before it
# counts: a busy machine's slow answer is not a dead database
FINAL_READY_TRIES = 3


def unready_hosts(
    places: Sequence[Place], port: int, service: Service, headers: Mapping[str, str]
) -> list[str]:
    """The hosts whose ready path does not answer ready now (after FINAL_READY_TRIES asks)."""
    left = list(places)
    for attempt in range(FINAL_READY_TRIES):
        if attempt:
            time.sleep(1.0)
        left = [
            p
            for p in left
            if not service.is_ready(
                _status(f"http://{p.bind}:{port}{service.ready_path}", headers, 5)
            )
        ]
        if not left:
            break
    return [p.name for p in left]


def watch_places(
    service: Service,
    t: Thresholds,
    places: Sequence[Place],
    *,
    port: int,
    headers: Mapping[str, str],
    release: str,
    baseline: str | None,
    window_s: float,
    interval_s: float = 0.25,
    memory_mb: Callable[[], float] = lambda: 0.0,
) -> Verdict:
    """Probe every host's health for window_s (stop early on the health trigger), then judge the
    release's counters from every host against the baseline's. headers: the API key, when the
    service asks for one (smoke.auth_headers)."""
    consecutive: dict[str, int] = {}
    unready: dict[str, int] = {}
    worst = not_ready = 0
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline and max(worst, not_ready) <= t.health_failures:
        worst = max(worst, _probe_round(places, port, service, headers, consecutive, unready))
        not_ready = max(not_ready, *unready.values(), 0)
        time.sleep(interval_s)
    at_end = unready_hosts(places, port, service, headers) if worst <= t.health_failures else []
    where = [(p.host, p.layout) for p in places]
    new = read_counts(where, release) or Counts()
    base = read_counts(where, baseline)
    extra: dict[str, float] = {}
    if service.metrics and places:
        try:
            extra = service_metrics(f"http://{places[0].bind}:{port}", service.metrics)
        except OSError:
            extra = {}
    return evaluate(
        t,
        new=new,
        base=base,
        consecutive_failures=worst,
        memory_mb=memory_mb(),
        service_numbers=extra,
        busy=busy_reason([(p.name, p.host) for p in places]),
        not_ready=not_ready,
        unready_at_end=at_end,
        ready_path=service.ready_path,
    )


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


def watch(
    proj: Project,
    name: str,
    *,
    release: str,
    baseline: str | None,
    window_s: float,
    interval_s: float = 0.25,
) -> Verdict:
    """verify on this machine's one host: watch_places over the environment's own layout."""
    env = proj.env(name)
    layout = Layout(str(env.data_dir))
    return watch_places(
        proj.service,
        proj.policies[name].thresholds,
        [LocalPlace(Host(), layout)],
        port=env.app_port,
        headers=smoke.auth_headers(env, proj.service),
        release=release,
        baseline=baseline,
        window_s=window_s,
        interval_s=interval_s,
        memory_mb=lambda: service_memory_mb(layout, release) if os.path.exists(layout.run) else 0.0,
    )
