"""What stageflow reads on its own host: only regular files, and of a log only its end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deploy.hosts import Host
from tests import support


def test_a_fifo_planted_where_stageflow_reads_is_refused_not_waited_on(tmp_path: Path) -> None:
    """The service user can write the ready marks' folder: a fifo named like a mark would block
    a read by root for ever (nobody writes to it). Read in a child, so a hang fails the test."""
    fifo = tmp_path / "fail-4242"
    os.mkfifo(fifo)
    code = (
        "from deploy.hosts import Host\n"
        "try:\n"
        f"    Host().read_text({str(fifo)!r})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=support.REPO, capture_output=True, text=True, timeout=60
    )
    assert res.stdout.startswith("HostError") and "not a regular file" in res.stdout, res


def test_a_logs_end_is_read_without_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    with open(log, "wb") as fh:
        fh.write(
            b"x" * (4 * 1024 * 1024) + b"\nTraceback (most recent call last):\nKeyError: 'A'\n"
        )
    tail = Host().read_text(log, last_bytes=1024)
    assert tail is not None and len(tail) <= 1024 and tail.endswith("KeyError: 'A'\n")
    assert Host().read_text(tmp_path / "missing.log", last_bytes=1024) is None
    (tmp_path / "dos.txt").write_bytes(b"a\r\nb\r\n")
    assert Host().read_text(tmp_path / "dos.txt") == "a\nb\n"  # as a text-mode read gave it
