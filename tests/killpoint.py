"""Test-only entry point: `inv` that dies by SIGKILL when a named step starts.

    python tests/killpoint.py STEP TASK [FLAGS...]

The fault matrix uses it to prove recovery from a process killed at every step boundary. The seam
is an observer registered in this process before invoke runs; production code reads no variable,
file or flag that could make a real deploy stop at a step.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    from invoke.main import program

    from deploy.engine import steps

    at = sys.argv[1]

    def die_at(name: str) -> None:
        if name == at:
            os.kill(os.getpid(), signal.SIGKILL)

    steps.observe(die_at)
    program.run(["inv", *sys.argv[2:]])


if __name__ == "__main__":
    main()
