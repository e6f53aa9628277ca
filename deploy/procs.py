"""Process liveness on this host: a zombie is dead (orphans are not always reaped here)."""

from __future__ import annotations

import os


def alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            # the state follows the command name, which is in parentheses and may hold spaces
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def start_time(stat: str | None) -> str | None:
    """The start time (clock ticks since boot) in a /proc/<pid>/stat text: with the pid, it names
    one process for the life of the machine, where a pid alone is reused."""
    try:
        return (stat or "").rsplit(")", 1)[1].split()[19]
    except IndexError:
        return None


def waiting(stat: str | None) -> int | None:
    """The CPU time (user + system, clock ticks) of a process asleep waiting for something (state
    S: a socket, a timer, a lock), from its /proc/<pid>/stat text; None for one that runs, is
    runnable (if starved), in disk I/O, or unreadable."""
    try:
        fields = (stat or "").rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12]) if fields[0] == "S" else None
    except (IndexError, ValueError):
        return None
