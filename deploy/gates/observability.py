"""Gate `observability`: staging's /metrics answers and its log directory was written to recently."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from deploy.config import read_env_file
from deploy.gates import GateContext, Outcome
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
    url = f"http://127.0.0.1:{port}{ctx.config.get('metrics_path', '/metrics')}"
    problems: list[str] = []
    details: dict[str, Any] = {"metrics_url": url}
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
    return Outcome(
        "passed",
        f"metrics answer and logs are fresh ({details['newest_log_age_min']} min)",
        details,
    )
