"""An environment's home on a host: layout, the deploy lock, history and audit records."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from deploy import procs
from deploy.clock import Clock, as_utc, stamp, system_clock
from deploy.errors import LockHeld, UsageError
from deploy.hosts import Host

LOCK_STALE_AFTER_S = 3600.0


def utc_now() -> str:
    return stamp(system_clock())


@dataclass(frozen=True)
class Layout:
    """Paths under <DATA_DIR> on one host (DESIGN.md, "State on a host")."""

    home: str

    def _p(self, *parts: str) -> str:
        return str(PurePosixPath(self.home, *parts))

    @property
    def releases(self) -> str:
        return self._p("releases")

    def release(self, release_id: str) -> str:
        return self._p("releases", release_id)

    @property
    def current(self) -> str:
        return self._p("current")

    @property
    def shared(self) -> str:
        return self._p("shared")

    @property
    def pgdata(self) -> str:
        return self._p("shared", "pgdata")

    @property
    def redis_dir(self) -> str:
        return self._p("shared", "redis")

    @property
    def logs(self) -> str:
        return self._p("shared", "logs")

    @property
    def backups(self) -> str:
        return self._p("shared", "backups")

    @property
    def venvs(self) -> str:
        return self._p("shared", "venvs")

    @property
    def run(self) -> str:
        return self._p("run")

    @property
    def state(self) -> str:
        return self._p("state")

    @property
    def history(self) -> str:
        return self._p("state", "history.jsonl")

    @property
    def audit(self) -> str:
        return self._p("state", "audit.jsonl")

    @property
    def lock(self) -> str:
        return self._p("state", "lock")

    @property
    def freeze(self) -> str:
        return self._p("state", "frozen.json")

    @property
    def requests(self) -> str:
        return self._p("state", "requests")

    @property
    def marker(self) -> str:
        """Names the environment that owns this home, so two environments never share one."""
        return self._p(".stageflow-env")


def read_jsonl(host: Host, path: str) -> list[dict[str, Any]]:
    text = host.read_text(path) or ""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed writer is skipped, not fatal
        if isinstance(rec, dict):
            rec.pop("prev", None)  # the chain is for verify_chain; readers see the record
            out.append(rec)
    return out


GENESIS = "0" * 64  # what the first record of a chain names as the one before it


def line_hash(line: str) -> str:
    return hashlib.sha256(line.strip().encode()).hexdigest()


def _last_line(host: Host, path: str) -> str | None:
    lines = [line for line in (host.read_text(path) or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def append_jsonl(host: Host, path: str, record: dict[str, Any]) -> None:
    """Append a record that names the hash of the line before it ("prev"): an edited, removed or
    inserted record breaks the chain at the first record after it (`verify_chain`)."""
    if host.is_local:
        private_file(path)
    last = _last_line(host, path)
    chained = {**record, "prev": line_hash(last) if last else GENESIS}
    host.append_line(path, json.dumps(chained, sort_keys=True, separators=(",", ":")))


@dataclass(frozen=True)
class ChainVerdict:
    records: int
    legacy: int  # records written before chaining began, at the head of the file
    broken_at: int | None  # 1-based line number of the first record that does not chain
    detail: str

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify_lines(lines: list[str]) -> ChainVerdict:
    """Walk a JSONL file's lines; the first that does not name its predecessor's hash breaks it."""
    prev: str | None = None
    legacy = 0
    chained = False
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            names = rec.get("prev") if isinstance(rec, dict) else None
        except json.JSONDecodeError:
            names = None
            rec = None
        if rec is None:
            return ChainVerdict(n - 1, legacy, n, f"line {n} is not a record")
        if names is None and not chained:
            legacy += 1  # records from before chaining: reported, never relied on
        elif names != (prev if prev is not None else GENESIS):
            return ChainVerdict(
                n - 1, legacy, n, f"line {n} does not chain to line {n - 1}: edited or removed"
            )
        else:
            chained = True
        prev = line_hash(line)
    return ChainVerdict(len(lines), legacy, None, f"{len(lines)} records chain")


def verify_chain(host: Host, path: str) -> ChainVerdict:
    lines = [line.strip() for line in (host.read_text(path) or "").splitlines() if line.strip()]
    return verify_lines(lines)


def chain_report(host: Host, layout: Layout) -> dict[str, dict[str, Any]]:
    """What `<env>.audit --verify` shows: each record file's chain verdict."""
    out = {}
    for what, path in (("audit", layout.audit), ("history", layout.history)):
        v = verify_chain(host, path)
        out[what] = {"ok": v.ok, "records": v.records, "legacy": v.legacy,
                     "broken_at": v.broken_at, "detail": v.detail}  # fmt: skip
    return out


AUDIT_COLUMNS = ("time", "actor", "action", "details")


def audit_rows(records: list[dict[str, Any]]) -> Iterator[tuple[str, ...]]:
    hidden = ("time", "actor", "action", "signature", "statement")
    for r in records:
        details = ", ".join(f"{k}={v}" for k, v in sorted(r.items()) if k not in hidden)
        yield (str(r.get("time", "")), str(r.get("actor", "")), str(r.get("action", "")), details)


def chained_records(host: Host, path: str) -> list[tuple[str, dict[str, Any]]]:
    """(hash of its line, record) for every record, oldest first: what a signature can name."""
    out = []
    for line in (host.read_text(path) or "").splitlines():
        if not line.strip():
            continue
        try:
            out.append((line_hash(line), json.loads(line)))
        except json.JSONDecodeError:
            continue
    return out


def private_file(path: str) -> None:
    """path exists and only its owner reads it (0600): history and audit name actors, commands
    and hook output; a file an older version made world-readable is narrowed too."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def audit(host: Host, layout: Layout, *, actor: str, action: str, **details: Any) -> None:
    append_jsonl(
        host, layout.audit, {"time": utc_now(), "actor": actor, "action": action, **details}
    )


# -- history ---------------------------------------------------------------------------------


@dataclass
class HistoryEntry:
    id: str
    time: str
    env: str
    release: str
    commit: str
    ref: str
    actor: str
    kind: str  # deploy | rollback-1 | rollback-2 | rollback-3 | emergency | restart
    status: str  # success | failed | rolled-back | running
    duration_s: float = 0.0
    migrations: list[int] | None = None
    backup: str | None = None
    gate_report: str | None = None
    previous: str | None = None
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]


def record_history(host: Host, layout: Layout, entry: HistoryEntry) -> None:
    append_jsonl(host, layout.history, entry.to_dict())


def history(host: Host, layout: Layout) -> list[dict[str, Any]]:
    """Entries oldest first; a later line with the same id supersedes an earlier one."""
    by_id: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl(host, layout.history):
        by_id[rec.get("id", "")] = {**by_id.get(rec.get("id", ""), {}), **rec}
    return list(by_id.values())


# -- the deploy lock -------------------------------------------------------------------------


@dataclass(frozen=True)
class LockInfo:
    who: str
    pid: int
    host: str
    command: str
    release: str
    time: str
    since: float

    def describe(self) -> str:
        return (
            f"held by {self.who} (pid {self.pid} on {self.host}) since {self.time} "
            f"for `{self.command}` {self.release}".rstrip()
        )


def held_too_long(
    info: LockInfo, *, now: datetime, stale_after_s: float = LOCK_STALE_AFTER_S
) -> bool:
    """The lock's age rule: held for more than stale_after_s (exactly that long is not stale yet).

    A holder without a start time (since 0: torn or unreadable holder file) never ages out:
    its staleness is for the process check, or for a human to judge.
    """
    if not info.since:
        return False
    # epoch seconds on both sides: a holder file's odd `since` cannot make the check itself fail
    return as_utc(now).timestamp() - info.since > stale_after_s


class DeployLock:
    """An atomic mkdir on the primary host: works with the database down, reports stale holders."""

    def __init__(self, host: Host, layout: Layout, *, clock: Clock = system_clock) -> None:
        self.host = host
        self.layout = layout
        self.clock = clock
        self.held = False

    @property
    def _info_path(self) -> str:
        return str(PurePosixPath(self.layout.lock, "holder.json"))

    def holder(self) -> LockInfo | None:
        if not self.host.exists(self.layout.lock):
            return None
        text = self.host.read_text(self._info_path)
        try:
            data = json.loads(text or "")
            return LockInfo(**data)
        except (json.JSONDecodeError, TypeError):
            # mkdir happened, holder file not yet (or torn): report as unknown but held
            return LockInfo("unknown", 0, "unknown", "unknown", "", "unknown", 0.0)

    def is_stale(self, info: LockInfo) -> bool:
        """Stale: the holder's process is gone (same machine), or it is older than an hour."""
        if held_too_long(info, now=self.clock()):
            return True
        if info.host == socket.gethostname() and info.pid > 0:
            return not procs.alive(info.pid)
        return False

    def acquire(self, *, who: str, command: str, release: str = "") -> None:
        if not self.host.mkdir_atomic(self.layout.lock):
            info = self.holder()
            stale = info is not None and self.is_stale(info)
            desc = info.describe() if info else "held"
            raise LockHeld(
                f"the deploy lock is {desc}{' (stale: its process is gone)' if stale else ''}",
                hint=(
                    "release it with --force --reason TEXT"
                    if stale
                    else "wait for it to finish, or inspect with `inv <env>.lock`"
                ),
            )
        at = self.clock()  # one reading: the text and the epoch name the same moment
        info = LockInfo(
            who=who,
            pid=os.getpid(),
            host=socket.gethostname(),
            command=command,
            release=release,
            time=stamp(at),
            since=as_utc(at).timestamp(),
        )
        self.host.write_text(self._info_path, json.dumps(asdict(info)))
        self.held = True

    def release(self) -> None:
        if self.held:
            self.host.remove_tree(self.layout.lock)
            self.held = False

    def force_release(self, *, actor: str, reason: str) -> LockInfo | None:
        if not reason.strip():
            raise UsageError(
                "--force needs --reason TEXT", hint="say why the lock is safe to break"
            )
        info = self.holder()
        if info is None:
            return None
        self.host.remove_tree(self.layout.lock)
        audit(
            self.host,
            self.layout,
            actor=actor,
            action="lock-force-release",
            reason=reason,
            holder=asdict(info),
        )
        return info

    def __enter__(self) -> DeployLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def sha256_file(path: Path) -> str:
    """A file's sha256 read on this machine, a MiB at a time (backups are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_backup(backups: list[dict[str, Any]], backup_id: str, *, env: str) -> dict[str, Any]:
    """The backup with this id among an environment's backups; refused with the way to list them."""
    for b in backups:
        if b.get("id") == backup_id:
            return b
    raise UsageError(
        f"no backup {backup_id!r} in {env}", hint=f"list them with `inv {env}.backups`"
    )


# -- what `inv <env>.lock` and `inv <env>.history` answer --------------------------------------


def use_lock(
    lock: DeployLock, *, actor: str, release: bool = False, force: bool = False, reason: str = ""
) -> str:
    """Show the lock, release the caller's own (release), or break anyone's (force, audited);
    returns what happened, as the operator reads it."""
    if force:
        broken = lock.force_release(actor=actor, reason=reason)  # refuses a blank reason first
        return f"lock {'released (audited)' if broken else 'was not held'}"
    info = lock.holder()
    if release:
        # someone else's live lock is theirs: only --force (with its audited reason) breaks it
        if info and info.who != actor and not lock.is_stale(info):
            raise UsageError(
                f"the lock is {info.describe()}", hint="use --force --reason if it is stuck"
            )
        if info:
            lock.force_release(actor=actor, reason="released by holder")
        return "lock released"
    if info is None:
        return "lock free"
    stale = " (STALE: its process is gone; --force --reason releases it)"
    return f"lock {info.describe()}{stale if lock.is_stale(info) else ''}"


def recent_history(host: Host, layout: Layout, *, limit: int) -> list[dict[str, Any]]:
    """The last `limit` entries, newest first."""
    return history(host, layout)[-limit:][::-1]


HISTORY_COLUMNS = ("Date", "Version", "Type", "Status", "Rollback", "Duration", "Notes")


def history_rows(entries: list[dict[str, Any]]) -> Iterator[tuple[str, ...]]:
    """One table row per entry, in HISTORY_COLUMNS order."""
    for e in entries:
        notes = (f"migrations {e['migrations']} " if e.get("migrations") else "") + (
            e.get("notes") or ""
        )
        yield (
            e.get("time", ""),
            f"{e.get('release') or '-'} ({(e.get('ref') or '')[:20]})",
            e.get("kind", ""),
            e.get("status", ""),
            "yes" if str(e.get("kind", "")).startswith("rollback") else "N/A",
            f"{e.get('duration_s', 0):.2f}s",
            notes,
        )
