"""Test-only entry point: `inv` that SIGKILLs an environment's PostgreSQL when a named step starts.

    python tests/pgkill.py STEP PGDATA TASK [FLAGS...]

The cluster dies as the step starts (its postmaster and every backend, as a crash or an OOM kill
would leave it); the deploy itself runs on. Like killpoint.py, the seam is an observer registered
in this process before invoke runs: nothing a production run reads can make it happen.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def kill_cluster(pgdata: str) -> None:
    master = int(Path(pgdata, "postmaster.pid").read_text().split()[0])
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        children = []
    for pid in [master, *map(int, children)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main() -> None:
    from invoke.main import program

    from deploy.engine import steps

    at, pgdata = sys.argv[1], sys.argv[2]

    def kill_at(name: str) -> None:
        if name == at:
            kill_cluster(pgdata)

    steps.observe(kill_at)
    program.run(["inv", *sys.argv[3:]])


if __name__ == "__main__":
    main()
