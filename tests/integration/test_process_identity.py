"""Which running process stageflow takes for one of [service.processes] (releases.runs): the
argv it started, read back from /proc, whether the program is a binary or a script the kernel
runs through the interpreter its #! line names (every console script: celery, rq, dramatiq)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.hosts import Host
from deploy.releases import runs


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def _start(procs: list[subprocess.Popen[bytes]], argv: list[str]) -> int:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(proc)
    mine = Path("/proc/self/cmdline").read_bytes()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until exec replaced the forked copy of this process
        if Path(f"/proc/{proc.pid}/cmdline").read_bytes() not in (mine, b""):
            break
        time.sleep(0.01)
    return proc.pid


def test_a_console_script_is_its_own_program(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "jobs"  # as pip writes a console script: #! the venv's interpreter
    script.write_text("#!/bin/sh\nsleep 30\n")
    os.chmod(script, 0o755)
    pid = _start(started, [str(script), "worker", "--queue", "mail"])
    host = Host()
    assert runs(host, pid, ["jobs", "worker", "--queue", "mail"])  # as [service.processes] says
    assert runs(host, pid, [str(script), "worker", "--queue", "mail"])
    assert not runs(host, pid, ["jobs", "worker", "--queue", "other"])
    assert not runs(host, pid, ["other", "worker", "--queue", "mail"])
    assert not runs(host, pid, ["sh", "worker", "--queue", "mail"])  # the interpreter is not it


def test_a_command_run_through_env_is_the_command_env_ran(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "jobs"
    script.write_text("#!/bin/sh\nsleep 30\n")
    os.chmod(script, 0o755)
    pid = _start(started, ["/usr/bin/env", "MODE=1", str(script), "worker"])
    host = Host()
    # [service.processes] worker = ["env", "MODE=1", "jobs", "worker"]: a Procfile's variables
    assert runs(host, pid, ["env", "MODE=1", "jobs", "worker"])
    assert runs(host, pid, ["env", "jobs", "worker"])
    assert not runs(host, pid, ["env", "MODE=1", "jobs", "other"])
    assert not runs(host, pid, ["env", "MODE=1", "other", "worker"])


def test_a_binary_is_what_it_was(
    started: list[subprocess.Popen[bytes]],
) -> None:
    pid = _start(started, ["/bin/sleep", "30"])
    host = Host()
    assert runs(host, pid, ["sleep", "30"]) and runs(host, pid, ["/bin/sleep", "30"])
    assert not runs(host, pid, ["sleep", "31"]) and not runs(host, pid, ["nap", "30"])
    started[-1].kill()
    started[-1].wait()
    assert not runs(host, pid, ["sleep", "30"])  # gone is not running
