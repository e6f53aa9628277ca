"""CLI start-up: wall time of `inv --list` against the bare cost of importing invoke."""

from __future__ import annotations

import _common as c


def main() -> None:
    runs = max(c.RUNS, 7)  # cheap: a few more runs steady the median
    cases = {
        "python_bare": [c.PYTHON, "-c", "pass"],
        "import_invoke": [c.PYTHON, "-c", "import invoke"],
        "inv_list": [c.INV, "--list"],
    }
    for argv in cases.values():  # warm the page cache and .pyc files once
        c.run(argv, cwd=c.REPO, env=c.inv_env())
    out = {}
    for name, argv in cases.items():
        samples = [
            c.wall(lambda argv=argv: c.run(argv, cwd=c.REPO, env=c.inv_env())) for _ in range(runs)
        ]
        out[name] = c.summary(samples)
    overhead = out["inv_list"]["median_s"] - out["import_invoke"]["median_s"]
    c.emit(
        {
            "bench": "cli",
            "command": "inv --list",
            "baseline": "python -c 'import invoke'",
            "results": out,
            "inv_list_over_baseline_s": round(overhead, 4),
            "inv_list_ratio": round(
                out["inv_list"]["median_s"] / out["import_invoke"]["median_s"], 2
            ),
        }
    )


if __name__ == "__main__":
    main()
