"""`make bench`: run every bench_*.py script here and print their results as one JSON document."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import _common as c


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
    c.emit(doc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
