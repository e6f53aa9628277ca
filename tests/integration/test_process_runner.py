"""run_process against real processes: group kill on timeout and interrupt, redacted logs, results."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.errors import HostError
from deploy.hosts import TIMEOUT_EXIT, Host, run_process
from deploy.secrets import Secret

SECRET = "hunter2-process-secret"

# The shell records its own pid and its background child's, says so, and waits for the child.
FAMILY = (
    "echo $$ > shell.pid\n"
    "sleep 60 &\n"
    "echo $! > child.pid\n"
    "(trap '' TERM; sleep 60) &\n"
    "echo $! > stubborn.pid\n"
    "echo started\n"
    "wait\n"
)


def _exists(pid: int) -> bool:
    """True while pid is a process, a zombie included: os.kill(pid, 0) succeeds on both."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running(pid: int) -> bool:
    """Running, not a zombie: an orphan's zombie is its new parent's to reap, not ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + 10  # KILL is asynchronous: wait for it, do not time it
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _running(p)]


@pytest.fixture(autouse=True)
def _ctrl_c_as_a_terminal_gives_it() -> Iterator[None]:
    """Python's own SIGINT handler, as an operator's terminal leaves it: a test run started in
    the background by a shell without job control inherits SIGINT ignored, and no interrupt
    would ever be raised."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture
def family(tmp_path: Path) -> Iterator[Path]:
    """A directory for FAMILY's pid files; whatever of it still runs afterwards is killed."""
    yield tmp_path
    for name in ("shell", "child", "stubborn"):
        try:
            pid = int((tmp_path / f"{name}.pid").read_text())
        except (FileNotFoundError, ValueError):
            continue
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


def _pids(root: Path, *names: str) -> list[int]:
    return [int((root / f"{n}.pid").read_text()) for n in names]


def test_a_timeout_kills_the_whole_group_and_is_a_result(family: Path) -> None:
    res = run_process(["sh", "-c", FAMILY], cwd=family, timeout=2)
    shell, child, stubborn = _pids(family, "shell", "child", "stubborn")
    # our own child is reaped before run_process returns: not even a zombie is left
    assert not _exists(shell)
    # the child that ignores TERM is gone as well: the KILL went to the whole group
    assert _wait_gone([child, stubborn]) == []
    assert res.timed_out and res.exit_code == TIMEOUT_EXIT and not res.ok
    assert res.stdout == "started\n"  # what it wrote before the kill is kept


def _await_family(family: Path) -> None:
    """Until FAMILY's last member wrote its pid file (30 s at most: a bound, not a timing)."""
    deadline = time.monotonic() + 30
    while not (family / "stubborn.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_an_interrupt_kills_the_whole_group_and_propagates(family: Path) -> None:
    def interrupt_once_started() -> None:
        _await_family(family)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does to the operator's process

    timer = threading.Thread(target=interrupt_once_started)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_process(["sh", "-c", FAMILY], cwd=family, timeout=60)
    finally:
        timer.join()
    shell, child, stubborn = _pids(family, "shell", "child", "stubborn")
    assert not _exists(shell)
    assert _wait_gone([child, stubborn]) == []


def test_an_interrupt_another_thread_received_still_stops_the_group_at_once(family: Path) -> None:
    """The kernel may hand a process's SIGINT to any of its threads; Python runs the handler in
    the main thread, which sees it only when its wait for the child returns."""
    sent: list[float] = []

    def interrupt_through_this_thread() -> None:
        _await_family(family)
        sent.append(time.monotonic())
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    timer = threading.Thread(target=interrupt_through_this_thread)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_process(["sh", "-c", FAMILY], cwd=family, timeout=120)
    finally:
        timer.join()
    # before: the wait went on until the children's `sleep 60` ended, and only then the
    # interrupt was raised
    assert time.monotonic() - sent[0] < 30
    assert _wait_gone(_pids(family, "shell", "child", "stubborn")) == []


def test_an_interrupt_while_the_child_starts_still_stops_its_group(
    family: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the fork, before the Popen is run_process's (on a busy machine the child can
    run its first lines by then): the child and its group are stopped all the same."""
    import subprocess

    real = subprocess.Popen

    def popen_then_interrupted(*args: object, **kwargs: object) -> subprocess.Popen[str]:
        proc = real(*args, **kwargs)  # type: ignore[call-overload]
        _await_family(family)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs here, inside the spawn
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_process(["sh", "-c", FAMILY], cwd=family, timeout=60)
    monkeypatch.undo()
    shell, child, stubborn = _pids(family, "shell", "child", "stubborn")
    assert _wait_gone([shell, child, stubborn]) == []


def test_without_a_session_only_the_child_is_stopped() -> None:
    # the child shares our process group: a group kill would take the test run down with it
    res = run_process(["sleep", "60"], timeout=0.5, new_session=False)
    assert res.timed_out and res.exit_code == TIMEOUT_EXIT


def test_the_argv_is_logged_at_debug_with_secrets_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="stageflow.exec")
    res = run_process(["echo", "--password", SECRET], secrets=(Secret(SECRET),))
    assert res.ok
    records = [r for r in caplog.records if r.name == "stageflow.exec"]
    assert records and all(r.levelno == logging.DEBUG for r in records)
    assert "echo --password [REDACTED]" in caplog.text
    assert SECRET not in caplog.text


def test_nothing_is_logged_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    run_process(["true"])
    run_process(["false"])
    assert not [r for r in caplog.records if r.name == "stageflow.exec"]


def test_a_non_zero_exit_is_data() -> None:
    res = run_process(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (res.exit_code, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert not res.ok and not res.timed_out
    assert res.host == "local" and res.argv[0] == "sh"


def test_check_raises_one_redacted_line() -> None:
    script = f"echo first >&2; echo 'bad password {SECRET}' >&2; exit 2"
    with pytest.raises(HostError) as info:
        run_process(["sh", "-c", script], secrets=(Secret(SECRET),), check=True)
    line = info.value.line()
    assert "\n" not in line
    assert "`sh` exited 2" in line and "bad password [REDACTED]" in line
    assert SECRET not in line


def test_check_turns_a_timeout_into_one_line() -> None:
    with pytest.raises(HostError) as info:
        run_process(["sleep", "60"], timeout=0.5, check=True)
    assert info.value.line() == "local: `sleep` ran longer than 0.5s and was killed"


def test_a_program_that_cannot_start(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-tool")
    with pytest.raises(FileNotFoundError):
        run_process([missing])
    with pytest.raises(HostError) as info:
        run_process([missing], check=True)
    assert "cannot run" in info.value.line() and "\n" not in info.value.line()


def test_input_larger_than_a_pipe_reaches_a_slow_reader_whole() -> None:
    # the child reads only after a second, longer than one of the waits a run without input is
    # cut into (WAIT_SLICE_S): a retried wait would stop sending the input
    text = "".join(f"line {i:07d}\n" for i in range(60_000))  # 780 kB, far over a pipe's buffer
    res = run_process(["sh", "-c", "sleep 1; cat"], input=text, timeout=60)
    assert res.ok and res.stdout == text


def test_input_env_and_cwd_reach_the_child(tmp_path: Path) -> None:
    assert run_process(["cat"], input="hello\n").stdout == "hello\n"
    env = {"PATH": os.defpath, "ONLY": "this"}
    res = run_process(["sh", "-c", 'echo "$ONLY $HOME"; pwd'], env=env, cwd=tmp_path)
    assert res.stdout == f"this \n{tmp_path}\n"  # env is the whole environment: no HOME


def test_output_streams_to_a_file_or_merges_into_one_transcript(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with target.open("wb") as fh:
        res = run_process(["sh", "-c", "printf 'a\\000b'; echo oops >&2"], stdout=fh)
    assert target.read_bytes() == b"a\x00b"  # bytes as written: a tar streams the same way
    assert (res.stdout, res.stderr) == ("", "oops\n")
    merged = run_process(["sh", "-c", "echo one; echo two >&2; echo three"], merge_stderr=True)
    assert merged.stdout == "one\ntwo\nthree\n" and merged.stderr == ""


def test_undecodable_output_is_replaced_not_fatal() -> None:
    res = run_process(["printf", "ok \\377\\n"])
    assert res.ok and res.stdout == "ok \ufffd\n"


# -- a local Host runs through run_process ----------------------------------------------------------


def test_a_local_hosts_command_times_out_as_a_group_and_says_so(family: Path) -> None:
    """Host.run on this machine is run_process: no shell between it and the command, the whole
    group stopped at the timeout, and the result says why it ended."""
    res = Host().run(["sh", "-c", FAMILY], cwd=family, timeout=2, check=False)
    shell, child, stubborn = _pids(family, "shell", "child", "stubborn")
    assert not _exists(shell) and _wait_gone([child, stubborn]) == []
    assert res.timed_out and res.exit_code == TIMEOUT_EXIT and res.host == "local"
    assert "stopped after 2s" in res.stderr and res.stdout == "started\n"


def test_a_local_hosts_command_answers_as_a_shell_would(tmp_path: Path) -> None:
    """A missing program is 127 and a missing directory 1, as results; env adds to this
    process's environment; a stdout file is appended to, stderr with it; secrets are scrubbed."""
    host = Host(secrets=(Secret(SECRET),))
    missing = host.run(["no-such-program-here"], check=False)
    assert missing.exit_code == 127 and "no-such-program-here" in missing.stderr
    gone = host.run(["true"], cwd=tmp_path / "gone", check=False)
    assert gone.exit_code == 1 and "gone" in gone.stderr
    with pytest.raises(HostError) as err:
        host.run(["no-such-program-here"])
    assert "exited 127" in str(err.value)
    code = "import os, sys; e = os.environ; print(e['SF_ADDED'], e['HOME']); sys.exit(e['PWD'])"
    res = host.run(
        [sys.executable, "-c", code], env={"SF_ADDED": SECRET}, cwd=tmp_path, check=False
    )
    assert res.stdout == f"[REDACTED] {os.environ['HOME']}\n" and res.stderr == f"{tmp_path}\n"
    log = tmp_path / "out.log"
    log.write_text("before\n")
    host.run(["sh", "-c", "echo out; echo err >&2"], stdout_file=log)
    assert log.read_text() == "before\nout\nerr\n"
