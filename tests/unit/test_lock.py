"""The deploy lock belongs to its holder: an owner token, a heartbeat, --force only on a stale
lock, and one line (never a traceback) for a holder file that is damaged."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deploy.errors import LockHeld, UsageError
from deploy.hosts import Host
from deploy.state import (
    HEARTBEAT_STALE_AFTER_S,
    DeployLock,
    Layout,
    clip,
    read_state_record,
    settled,
    use_lock,
)

LATER = timedelta(seconds=HEARTBEAT_STALE_AFTER_S * 10)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def lock_at(tmp_path: Path, clock: Clock | None = None) -> DeployLock:
    return DeployLock(Host(), Layout(str(tmp_path)), clock=clock or Clock())


def test_a_second_runs_lock_survives_the_first_runs_release(tmp_path: Path) -> None:
    clock = Clock()
    first = lock_at(tmp_path, clock)
    first.acquire(who="ann@example.com", command="staging.deploy", release="r1")
    first._heartbeat.halt()  # the first run hangs: it beats no more
    breaker = Clock()
    breaker.now = clock.now + LATER
    assert use_lock(lock_at(tmp_path, breaker), actor="bob", force=True, reason="hung") == (
        "lock released (audited)"
    )
    second = lock_at(tmp_path)
    second.acquire(who="bob@example.com", command="staging.deploy", release="r2")
    try:
        first.release()  # the hung run wakes up and finishes
        info = second.holder()
        assert info is not None and info.who == "bob@example.com"
        assert info.token == second.token and not second.is_stale(info)
    finally:
        second.release()
    assert second.holder() is None


def test_force_refuses_a_live_lock_and_breaks_a_silent_one(tmp_path: Path) -> None:
    clock = Clock()
    held = lock_at(tmp_path, clock)
    held.acquire(who="ann@example.com", command="prod.deploy", release="r1")
    try:
        with pytest.raises(LockHeld, match="and alive") as refused:
            lock_at(tmp_path, clock).force_release(actor="bob", reason="looks stuck")
        assert "signed human action" in refused.value.line()
        assert held.holder() is not None
        later = Clock()
        later.now = clock.now + LATER
        assert lock_at(tmp_path, later).force_release(actor="bob", reason="silent") is not None
        assert held.holder() is None
    finally:
        held.release()
    audit = (tmp_path / "state" / "audit.jsonl").read_text()
    assert "lock-force-release" in audit and held.token not in audit


def test_a_holding_run_beats(tmp_path: Path) -> None:
    clock = Clock()
    held = lock_at(tmp_path, clock)
    held.acquire(who="ann@example.com", command="dev.deploy")
    try:
        first = held.holder()
        assert first is not None and first.beat
        clock.now += timedelta(seconds=5)
        deadline = time.monotonic() + 60  # a bound on waiting, not a measurement
        while (info := held.holder()) is not None and info.beat == first.beat:
            assert time.monotonic() < deadline, "no heartbeat in 60 s"
            time.sleep(0.1)
        assert info is not None and info.beat == clock.now.timestamp()
    finally:
        held.release()
    assert not (tmp_path / "state" / "lock").exists()


def test_a_taken_lock_refuses_the_next_run_and_leaves_no_leftovers(tmp_path: Path) -> None:
    held = lock_at(tmp_path)
    held.acquire(who="ann@example.com", command="dev.deploy", release="r1")
    try:
        with pytest.raises(LockHeld, match="held by ann@example.com"):
            lock_at(tmp_path).acquire(who="bob@example.com", command="dev.deploy")
        assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["lock"]
    finally:
        held.release()


DAMAGE = {
    "plain-file": ("lock is a file", None),
    "not-utf8": ("is not UTF-8", b"\xff\xfe{"),
    "not-json": ("is not a holder record", b'{"who": "ann", "pid": '),
    "missing-keys": ("is not a holder record", b'{"who": "ann"}'),
    "wrong-types": (
        "is not a holder record",
        json.dumps(
            {
                "who": "ann",
                "pid": "12",
                "host": "h",
                "command": "c",
                "release": "r",
                "time": "t",
                "since": 1.0,
            }
        ).encode(),
    ),  # fmt: skip
    "a-list": ("is not a holder record", b"[1, 2]"),
    "empty-dir": ("holder.json is missing", None),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_holder_is_one_line_stale_and_breakable(tmp_path: Path, kind: str) -> None:
    needle, content = DAMAGE[kind]
    lock_dir = tmp_path / "state" / "lock"
    lock_dir.parent.mkdir(parents=True)
    if kind == "plain-file":
        lock_dir.write_text("not a directory\n")
    else:
        lock_dir.mkdir()
        if content is not None:
            (lock_dir / "holder.json").write_bytes(content)
    lock = lock_at(tmp_path)
    info = lock.holder()
    assert info is not None and needle in info.describe() and lock.is_stale(info)
    shown = use_lock(lock, actor="bob")
    assert needle in shown and "STALE" in shown
    with pytest.raises(LockHeld, match=needle):
        lock.acquire(who="bob@example.com", command="dev.deploy")
    assert use_lock(lock, actor="bob", force=True, reason="damaged") == "lock released (audited)"
    lock.acquire(who="bob@example.com", command="dev.deploy")
    lock.release()


def test_a_long_ref_is_clipped_in_the_holders_description(tmp_path: Path) -> None:
    lock = lock_at(tmp_path)
    lock.acquire(who="ann@example.com", command="dev.deploy", release="x" * 100_000)
    try:
        info = lock.holder()
        assert info is not None and len(info.describe()) < 300
        assert "(100000 characters)" in info.describe()
    finally:
        lock.release()
    assert clip("short") == "short"


def test_killed_runs_read_as_interrupted(tmp_path: Path) -> None:
    lock = lock_at(tmp_path)
    entries = [{"id": "1", "status": "running"}, {"id": "2", "status": "running"}]
    assert [e["status"] for e in settled(entries, lock)] == ["interrupted", "interrupted"]
    lock.acquire(who="ann@example.com", command="dev.deploy")
    try:
        assert [e["status"] for e in settled(entries, lock)] == ["interrupted", "running"]
    finally:
        lock.release()


STATE_DAMAGE = {
    "not-utf8": (b"\xff\xfe", "is not UTF-8 (byte 0)"),
    "truncated": (b'{"id": 1, "ref"', "is not JSON (line 1"),
    "empty": (b"", "is empty"),
    "not-an-object": (b'"text"', "holds no JSON object"),
    "missing-keys": (b'{"id": 1}', "lacks commit"),
}


@pytest.mark.parametrize("kind", list(STATE_DAMAGE))
def test_a_damaged_state_record_names_the_file_and_the_repair(tmp_path: Path, kind: str) -> None:
    content, needle = STATE_DAMAGE[kind]
    path = tmp_path / "7.json"
    path.write_bytes(content)
    with pytest.raises(UsageError) as err:
        read_state_record(Host(), path, keys=("id", "commit"))
    assert str(path) in err.value.line() and needle in err.value.line()
    assert "move it aside" in err.value.line()
    assert read_state_record(Host(), tmp_path / "absent.json") is None
