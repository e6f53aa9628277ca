"""CLI start-up: wall time of `inv --list` against the bare cost of importing invoke.

Beside the wall time, the CPU seconds (user + sys) of each child: on a shared machine the wall time
follows the load, the CPU time much less, so the ratio of CPU times says whether a change to the
imports helped even when the wall times are noisy. Target: `inv --list` within 2x the import.
"""

from __future__ import annotations

import os
import resource
import statistics

import _common as c

TARGET_RATIO = 2.0


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the child) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    took = c.wall(lambda: c.run(argv, cwd=c.REPO, env=c.inv_env()))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    runs = max(c.RUNS, 7)  # cheap: a few more runs steady the median
    cases = {
        "python_bare": [c.PYTHON, "-c", "pass"],
        "import_invoke": [c.PYTHON, "-c", "import invoke"],
        "inv_list": [c.INV, "--list"],
    }
    for argv in cases.values():  # warm the page cache and .pyc files once
        c.run(argv, cwd=c.REPO, env=c.inv_env())
    load = os.getloadavg()[0]
    out, cpu = {}, {}
    for name, argv in cases.items():
        samples = [timed(argv) for _ in range(runs)]
        out[name] = c.summary([w for w, _ in samples])
        cpu[name] = round(statistics.median(s for _, s in samples), 4)
    overhead = out["inv_list"]["median_s"] - out["import_invoke"]["median_s"]
    ratio = out["inv_list"]["median_s"] / out["import_invoke"]["median_s"]
    c.emit(
        {
            "bench": "cli",
            "command": "inv --list",
            "baseline": "python -c 'import invoke'",
            "loadavg_1m": round(load, 2),
            "results": out,
            "cpu_median_s": cpu,
            "inv_list_over_baseline_s": round(overhead, 4),
            "inv_list_ratio": round(ratio, 2),
            "inv_list_cpu_ratio": round(cpu["inv_list"] / cpu["import_invoke"], 2),
            "target_ratio": TARGET_RATIO,
            "meets_target": ratio <= TARGET_RATIO,
        }
    )


if __name__ == "__main__":
    main()
