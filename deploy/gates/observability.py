"""Gate `observability`: staging is observed (its metrics path answers or, for a service without
one, stageflow's own request counters are being written) and its logs were written recently."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from deploy.config import read_env_file
from deploy.errors import HostError
from deploy.gates import GateContext, Outcome
from deploy.hosts import Host
from deploy.state import Layout


def inputs(ctx: GateContext) -> list[Any] | None:
    return None  # live state: never cached


def run(ctx: GateContext) -> Outcome:
    # The running staging, so the operator's checkout, not the release's snapshot.
    env = {k: v for k, (v, _) in read_env_file(ctx.root / "env" / "staging.env").items()}
    port = env.get("APP_PORT", "")
    data_dir = Path(env.get("DATA_DIR", ".stageflow/staging"))
    if not data_dir.is_absolute():
        data_dir = ctx.root / data_dir
    max_age_min = float(ctx.config.get("max_log_age_min", 15))
    problems: list[str] = []
    details: dict[str, Any] = {}
    path = _metrics_path(ctx)
    if path:
        _scrape(f"http://127.0.0.1:{port}{path}", ctx, problems, details)
    else:
        _counters(Layout(str(data_dir)), problems, details)
    logs = Path(Layout(str(data_dir)).logs)
    details["log_dir"] = str(logs)
    newest = (
        max((p.stat().st_mtime for p in logs.glob("*") if p.is_file()), default=None)
        if logs.is_dir()
        else None
    )
    if newest is None:
        problems.append(f"no log files in {logs}")
    else:
        age_min = (time.time() - newest) / 60
        details["newest_log_age_min"] = round(age_min, 1)
        if age_min > max_age_min:
            problems.append(
                f"newest log in {logs} is {age_min:.0f} min old (limit {max_age_min:g})"
            )
    if problems:
        return Outcome("failed", "; ".join(problems), details)
    what = "metrics answer" if path else "stageflow's request counters are written"
    return Outcome(
        "passed",
        f"{what} and logs are fresh ({details['newest_log_age_min']} min)",
        details,
    )


def _metrics_path(ctx: GateContext) -> str:
    """[gates.observability] metrics_path, else the service's declared metrics path, else none:
    stageflow then reads its own per-worker request counters."""
    configured = ctx.config.get("metrics_path")
    if configured is not None:
        return str(configured)
    service = ctx.policy.get("service")
    # a policy older than [service] meant the reference service's /metrics
    return str(service.get("metrics", "")) if isinstance(service, dict) else "/metrics"


def _scrape(url: str, ctx: GateContext, problems: list[str], details: dict[str, Any]) -> None:
    details["metrics_url"] = url
    try:
        with urllib.request.urlopen(url, timeout=min(ctx.timeout_s, 5.0)) as resp:
            body = resp.read(65536).decode("utf-8", "replace")
            details["metrics_status"] = resp.status
            details["metrics_lines"] = sum(
                1 for ln in body.splitlines() if ln and not ln.startswith("#")
            )
            if resp.status != 200 or not body.strip():
                problems.append(f"{url} answered {resp.status} with {len(body)} bytes")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        problems.append(f"{url} does not answer ({reason}); is staging up? (inv staging.status)")


def _counters(layout: Layout, problems: list[str], details: dict[str, Any]) -> None:
    """The serving release's worker files (<run>/metrics/<release>/<pid>.json), which every
    gunicorn worker of a stageflow release writes whatever the service is."""
    from deploy.probes.verify import metrics_dir, parse_worker

    current = Path(layout.current)
    release = current.resolve().name if current.is_symlink() else ""
    if not release:
        problems.append(f"staging serves no release ({layout.current} is missing); deploy staging")
        return
    folder = Path(metrics_dir(layout, release))
    details["counters_dir"] = str(folder)
    workers = requests = 0
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            counts = parse_worker(Host().read_text(f) or "")
        except (OSError, ValueError, HostError):
            continue  # a worker rewriting its file, or no regular file; the others still count
        workers += 1
        requests += counts.requests
    details.update(counter_workers=workers, counter_requests=requests)
    if workers == 0:
        problems.append(f"no request counters in {folder}; is staging up? (inv staging.status)")
