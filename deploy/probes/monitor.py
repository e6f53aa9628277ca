"""A live view of one environment: health, request and error rate, p95, memory against its triggers.

Rates are deltas: stageflow's request counters (one file per gunicorn worker of the release, on
every host) are read twice and the difference is divided by the time between the reads. Latency is
over the release's whole life and judged as the verify window judges it; error rate is over the
interval when it saw requests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deploy import releases
from deploy.config import Project, Thresholds
from deploy.engine import group
from deploy.hosts import Host
from deploy.probes import verify
from deploy.probes.smoke import healthy, request
from deploy.state import Layout

OK, WARN, ALERT, UNKNOWN = "ok", "warn", "ALERT", "n/a"


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic() of the read
    wall: str  # UTC time of the read, for people
    release: str | None
    health_ok: bool
    health_ms: float | None
    health_detail: str
    requests: int | None  # None: the counters could not be read
    errors: int | None
    p95_s: float | None
    memory_mb: float
    counts: verify.Counts | None = None  # the release's counters, for the latency judgement
    busy: str = ""  # why the hosts were saturated (verify.busy_reason), "" when they were not


def _health(path: str, port: int, address: str = "127.0.0.1") -> tuple[bool, float | None, str]:
    start = time.perf_counter()
    try:
        status = request(
            "GET", f"http://{address}:{port}{path}", timeout=2.0, probe="monitor"
        ).status
    except OSError as exc:
        return False, None, exc.__class__.__name__
    return healthy(status), (time.perf_counter() - start) * 1000, f"HTTP {status}"


def _previous_release(host: Host, layout: Layout, current: str | None) -> str | None:
    # release ids start with a UTC timestamp: the one sorted just before current is the baseline
    older = sorted(r for r in releases.list_releases(host, layout) if current and r < current)
    return older[-1] if older else None


def _hosts_sample(
    proj: Project, name: str
) -> tuple[str | None, bool, float | None, str, float, verify.Counts | None, str]:
    """Release (the primary's), health of every host on its own address, the largest memory,
    the release's counters summed over the hosts (None: a host's could not be read)."""
    from deploy.runtime import native_hosts

    env = proj.env(name)
    todo = group.targets(proj, name)
    try:
        current = releases.current_release(todo[0].host, todo[0].layout)

        def one(t: group.Target) -> tuple[bool, float | None, str, float]:
            ok, ms, detail = _health(proj.service.health, env.app_port, t.bind)
            return ok, ms, detail, native_hosts.host_memory_mb(t, current) if current else 0.0

        seen = group.parallel(todo, one)
        counts = _counts([(t.host, t.layout) for t in todo], current)
        busy = verify.busy_reason([(t.name, t.host) for t in todo])
    finally:
        for t in todo:
            t.host.close()
    bad = []
    slowest: float | None = None
    memory = 0.0
    for t, out, exc, _ in seen:
        if exc is not None or out is None:
            bad.append(f"{t.name}: {group.reason_of(exc) if exc else 'no answer'}")
            continue
        ok, ms, detail, mb = out
        if not ok:
            bad.append(f"{t.name}: {detail}")
        slowest = ms if slowest is None or (ms is not None and ms > slowest) else slowest
        memory = max(memory, mb)
    detail = "; ".join(bad) if bad else f"{len(todo)} hosts answer"
    return current, not bad, slowest, detail, memory, counts, busy


def _counts(places: list[tuple[Host, Layout]], release: str | None) -> verify.Counts | None:
    try:
        return verify.read_counts(places, release) or verify.Counts()
    except Exception:  # noqa: BLE001 - a host unread: the view shows it, the monitor keeps going
        return None


def take_sample(proj: Project, name: str) -> Sample:
    """One reading; on several hosts health is every host's, memory the largest host's."""

    env = proj.env(name)
    if group.is_rolling(proj, name):
        current, ok, ms, detail, memory, counts, busy = _hosts_sample(proj, name)
    else:
        layout = Layout(str(env.data_dir))
        current = releases.current_release(Host(), layout)
        ok, ms, detail = _health(proj.service.health, env.app_port)
        memory = (
            verify.service_memory_mb(layout, current)
            if current and os.path.exists(layout.run)
            else 0.0
        )
        counts = _counts([(Host(), layout)], current)
        busy = verify.busy_reason([("local", Host())])
    return Sample(
        at=time.monotonic(),
        wall=datetime.now(UTC).isoformat(timespec="seconds"),
        release=current,
        health_ok=ok,
        health_ms=None if ms is None else round(ms, 1),
        health_detail=detail,
        requests=None if counts is None else counts.requests,
        errors=None if counts is None else counts.errors,
        p95_s=None if counts is None else counts.p95_s,
        memory_mb=round(memory, 1),
        counts=counts,
        busy=busy,
    )


def baseline(proj: Project, name: str, release: str | None) -> verify.Counts | None:
    """The counters of the release before `release`, summed over every host."""
    host, layout = group.primary(proj, name)
    try:
        prev = _previous_release(host, layout, release)
    except Exception:  # noqa: BLE001 - no baseline is a reading, not a failure
        return None
    finally:
        host.close()
    if not prev:
        return None
    todo = group.targets(proj, name) if group.is_rolling(proj, name) else []
    try:
        places = [(t.host, t.layout) for t in todo] or [(Host(), layout)]
        return _counts(places, prev)
    finally:
        for t in todo:
            t.host.close()


def reading(
    prev: Sample | None,
    cur: Sample,
    t: Thresholds,
    *,
    base: verify.Counts | None = None,
    consecutive_failures: int = 0,
) -> dict[str, Any]:
    """Pure: one row per signal, each with its value, its limit and a status (ok, warn, ALERT)."""
    out: dict[str, Any] = {"release": cur.release, "time": cur.wall}
    fails = consecutive_failures
    out["health"] = {
        "ok": cur.health_ok,
        "ms": cur.health_ms,
        "detail": cur.health_detail,
        "consecutive_failures": fails,
        "limit": t.health_failures,
        "status": OK if cur.health_ok else (ALERT if fails > t.health_failures else WARN),
    }
    interval, rate, err_pct = _rates(prev, cur)
    out["interval_s"] = None if interval is None else round(interval, 3)
    out["request_rate"] = {
        "per_s": None if rate is None else round(rate, 2),
        "status": UNKNOWN if rate is None else OK,
    }
    # a baseline of too few requests says nothing: judged as if there were none
    trusted = base if base and base.requests >= verify.MIN_REQUESTS else None
    out["error_rate"] = _error_rate_row(err_pct, trusted, t)
    out["p95"] = _p95_row(cur, trusted, t)
    out["memory"] = {
        "mb": cur.memory_mb,
        "limit_mb": t.memory_mb,
        "status": ALERT if cur.memory_mb > t.memory_mb else OK,
    }
    out["ok"] = (
        all(out[k]["status"] != ALERT for k in ("health", "error_rate", "p95", "memory"))
        and cur.health_ok
    )
    return out


def _rates(prev: Sample | None, cur: Sample) -> tuple[float | None, float | None, float | None]:
    """(interval, requests per second, error %) between two reads of the same release's counters."""
    if not (
        prev
        and cur.requests is not None
        and prev.requests is not None
        and cur.release == prev.release
    ):
        return None, None, None
    interval = max(cur.at - prev.at, 1e-6)
    delta = max(cur.requests - prev.requests, 0)
    err_pct = None
    if delta:
        err_pct = 100.0 * max((cur.errors or 0) - (prev.errors or 0), 0) / delta
    return interval, delta / interval, err_pct


def _error_rate_row(
    err_pct: float | None, base: verify.Counts | None, t: Thresholds
) -> dict[str, Any]:
    base_pct = base.error_pct if base else 0.0
    limit_pct = base_pct + t.error_rate_points
    return {
        "pct": None if err_pct is None else round(err_pct, 2),
        "baseline_pct": round(base_pct, 2),
        "limit_pct": round(limit_pct, 2),
        "status": UNKNOWN if err_pct is None else (ALERT if err_pct > limit_pct else OK),
    }


def _p95_row(cur: Sample, base: verify.Counts | None, t: Thresholds) -> dict[str, Any]:
    p95_s = cur.p95_s
    base_p95 = base.p95_s if base else None
    limit_p95 = base_p95 * t.p95_ratio if base_p95 else None
    if p95_s is None:
        status = UNKNOWN
    elif limit_p95 is None:
        status = OK  # no baseline to compare with: shown, never alerting
    elif cur.counts is not None and base is not None:
        # the verify window's judgement: the share of slow requests, not one p95 against another
        status = ALERT if verify.judge_latency(t, cur.counts, base, busy=cur.busy)[0] else OK
    else:
        over = p95_s > limit_p95 and p95_s > verify.FLOOR_MS / 1000
        status = ALERT if over else OK
    return {
        "ms": None if p95_s is None else round(p95_s * 1000, 1),
        "baseline_ms": None if base_p95 is None else round(base_p95 * 1000, 1),
        "limit_ms": None if limit_p95 is None else round(limit_p95 * 1000, 1),
        "status": status,
    }


def once(proj: Project, name: str, *, gap_s: float = 1.0) -> dict[str, Any]:
    """Two samples gap_s apart (a rate needs two), judged against the env's thresholds."""
    first = take_sample(proj, name)
    time.sleep(gap_s)
    second = take_sample(proj, name)
    fails = 0 if second.health_ok else (1 if first.health_ok else 2)
    return {
        "env": name,
        **reading(
            first,
            second,
            proj.policies[name].thresholds,
            base=baseline(proj, name, second.release),
            consecutive_failures=fails,
        ),
    }


def _cell(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def render(name: str, r: dict[str, Any], refresh_s: float) -> Any:
    """The dashboard as a rich Table."""
    from rich.table import Table

    colour = {OK: "green", WARN: "yellow", ALERT: "bold red", UNKNOWN: "dim"}
    every = f"every {refresh_s:g}s, Ctrl-C to stop" if refresh_s > 0 else "one reading"
    title = f"{name} monitor - release {r['release'] or '-'} - {r['time']} ({every})"
    table = Table(title=title, title_justify="left", header_style="bold")
    for col in ("signal", "value", "limit", "status"):
        table.add_column(col)
    h, rr, er, p, m = r["health"], r["request_rate"], r["error_rate"], r["p95"], r["memory"]
    rows = [
        ("health", f"{h['detail']} ({_cell(h['ms'], ' ms')})",
         f"> {h['limit']} failures in a row", h["status"]),
        ("request rate", _cell(rr["per_s"], " req/s"), "-", rr["status"]),
        ("error rate", _cell(er["pct"], " %"),
         f"{er['limit_pct']:g} % (baseline {er['baseline_pct']:g} %)", er["status"]),
        ("p95 latency", _cell(p["ms"], " ms"), _cell(p["limit_ms"], " ms"), p["status"]),
        ("memory", f"{m['mb']:g} MB", f"{m['limit_mb']} MB", m["status"]),
    ]  # fmt: skip
    for signal, value, limit, status in rows:
        table.add_row(signal, value, limit, f"[{colour[status]}]{status}[/]")
    return table


def live(
    proj: Project,
    name: str,
    *,
    refresh_s: float | None = None,
    samples: int = 0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Refresh the dashboard every refresh_s (the env's policy) until Ctrl-C or `samples` updates."""
    from rich.console import Console
    from rich.live import Live

    every = refresh_s or proj.policies[name].refresh_s
    t = proj.policies[name].thresholds
    prev = take_sample(proj, name)
    base = baseline(proj, name, prev.release)
    fails = 0 if prev.health_ok else 1
    last = reading(None, prev, t, base=base, consecutive_failures=fails)
    done = 0
    try:
        with Live(render(name, last, every), console=Console(), auto_refresh=False) as view:
            view.refresh()
            while not samples or done < samples:
                sleep(every)
                cur = take_sample(proj, name)
                fails = 0 if cur.health_ok else fails + 1
                if cur.release != prev.release:
                    base = baseline(proj, name, cur.release)
                last = reading(prev, cur, t, base=base, consecutive_failures=fails)
                view.update(render(name, last, every), refresh=True)
                prev, done = cur, done + 1
    except KeyboardInterrupt:
        pass  # stopping the view is how it ends
    return {"env": name, **last}
