"""`make bench`: run every bench_*.py script here and print their results as one JSON document,
with `targets`: each figure the project set a target for, beside the bare floor measured in the
same script (the floor's median, `ratio_to_floor`) and whether it meets the target. The same rows
go to stderr as a table."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common as c

# (row, script, path to the figure's median, path to its floor's median, target seconds or ratio;
# None: a figure reported beside its floor, with no target of its own)
TARGETS: tuple[tuple[str, str, str, str | None, float | None], ...] = (
    ("warm inv dev.deploy", "deploy", "results.warm_deploy.median_s", "results.floor.median_s", 1.0),
    ("deploy, one SSH host", "hosts", "one_host.deploy.median_s", "one_host.deploy_floor.median_s", 1.4),
    ("rollback level 1", "rollback", "results.level1.median_s", "results.floor.median_s", 0.8),
    ("rollback level 2", "rollback", "results.level2.median_s", "results.floor.median_s", 0.9),
    ("level 2, one SSH host", "hosts", "one_host.level2.median_s", "one_host.level2_floor.median_s", 1.4),
    ("inv --list / import invoke", "cli", "inv_list_ratio", None, 2.0),
    ("prod.preflight --request", "preflight", "results.preflight_request.median_s", "results.inv_list.median_s", 0.5),
    ("verify 10,000-record chain", "preflight", "results.chain_10k.median_s", "results.chain_floor.median_s", 1.0),
    ("release.gate, cached re-run", "gate", "results.cached_wall.median_s", "results.inv_list.median_s", 1.0),
    ("release.gate / slowest gate", "gate", "results.wall_over_slowest_ratio", None, 1.15),
    ("migrations gate, 100 MB copy", "rehearsal", "results.gate.median_s", "results.floor.median_s", None),
    ("Flask warm deploy / ref's", "service", "results.flask_over_reference_ratio", None, 1.1),
    ("request, hooks / none", "service", "results.hooks.hooks_over_none_ratio", None, 1.02),
    ("compose warm deploy", "compose", "results.warm_deploy.median_s", "results.recreate.median_s", 10.0),
    ("compose failed req, switch", "compose", "results.failed_per_deploy_max", None, 0.0),
)  # fmt: skip


def dig(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: the figure, its floor and ratio, and the verdict (None: not measured,
    or no target)."""
    rows = []
    for name, script, figure, floor, target in TARGETS:
        value = dig(doc.get(script), figure)
        base = dig(doc.get(script), floor) if floor else None
        rows.append(
            {
                "figure": name,
                "value": value,
                "floor_s": base,
                "ratio_to_floor": round(value / base, 2) if value and base else None,
                "target": target,
                "meets_target": None if value is None or target is None else value <= target,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [f"{'figure':28} {'value':>6} {'floor':>6} {'ratio':>6} {'target':>6}  verdict"]
    for r in rows:
        verdict = {None: "not measured", True: "meets", False: "MISSES"}[r["meets_target"]]
        if r["value"] is not None and r["target"] is None:
            verdict = "reported"
        lines.append(
            f"{r['figure']:28} {num(r['value']):>6} {num(r['floor_s']):>6} "
            f"{num(r['ratio_to_floor']):>6} {num(r['target']):>6}  {verdict}"
        )
    return "\n".join(lines)


def main() -> int:
    here = Path(__file__).resolve().parent
    doc: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": c.machine(),
        "runs_per_measure": c.RUNS,
    }
    failed = []
    started = time.perf_counter()
    for script in sorted(here.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        res = subprocess.run(
            [sys.executable, str(script)],
            cwd=c.REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        try:
            doc[name] = json.loads(res.stdout) if res.returncode == 0 else None
        except json.JSONDecodeError:
            doc[name] = None
        if doc[name] is None:
            failed.append(name)
            doc[name] = {"error": (res.stderr.strip().splitlines() or ["no output"])[-1]}
        print(f"bench {name}: {'ok' if name not in failed else 'FAILED'}", file=sys.stderr)
    doc["total_s"] = round(time.perf_counter() - started, 1)
    doc["targets"] = targets(doc)
    print(table(doc["targets"]), file=sys.stderr)
    c.emit(doc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
