"""An environment's home on a host: layout, the deploy lock, history and audit records."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from deploy import procs
from deploy.clock import Clock, as_utc, stamp, system_clock
from deploy.errors import HostError, LockHeld, UsageError, clip
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
    def cluster(self) -> str:
        """Which PostgreSQL cluster the environment's `up` started (its system identifier)."""
        return self._p("state", "cluster.json")

    @property
    def service_env(self) -> str:
        """The compose runtime's env file of the service's settings (mode 0600; secrets inside)."""
        return self._p("state", "service.env")

    @property
    def compose_processes(self) -> str:
        """The compose runtime's file of [service.processes], one compose service each (no secret)."""
        return self._p("state", "compose.processes.yml")

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


def _damaged(path: str | Path, what: str) -> UsageError:
    """One line for a state file that cannot be read: which file, what is wrong, the repair."""
    return UsageError(
        f"{path} {what}",
        hint="restore it from a copy, or move it aside if what it held is not needed",
    )


def read_state_text(host: Host, path: str | Path) -> str | None:
    """A state file's text (None when absent); bytes that are not UTF-8 refuse in one line."""
    try:
        return host.read_text(path)
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"is not UTF-8 (byte {exc.start})") from None
    except IsADirectoryError:
        raise _damaged(path, "is a directory, not a file") from None
    except NotADirectoryError:
        raise _damaged(path, "sits under a file, not a directory") from None


def read_state_record(
    host: Host, path: str | Path, *, keys: Collection[str] = ()
) -> dict[str, Any] | None:
    """One JSON record (a request, a freeze...): None when absent; corrupt, truncated, not UTF-8,
    not an object or lacking one of keys refuses in one line naming the file."""
    text = read_state_text(host, path)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        what = "is empty" if not text.strip() else f"is not JSON (line {exc.lineno}: {exc.msg})"
        raise _damaged(path, what) from None
    if not isinstance(data, dict):
        raise _damaged(path, "holds no JSON object")
    missing = [k for k in keys if k not in data]
    if missing:
        raise _damaged(path, f"lacks {', '.join(missing)}")
    return data


def read_jsonl(host: Host, path: str) -> list[dict[str, Any]]:
    text = read_state_text(host, path) or ""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed writer is skipped, not fatal
        if isinstance(rec, dict):  # a line that is JSON but no record is damage of the same kind
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

# A holder proves it is alive by rewriting its heartbeat file; one that has not beaten for
# HEARTBEAT_STALE_AFTER_S is stale, whatever machine it runs on. Holders written before heartbeats
# existed fall back to the age rule (LOCK_STALE_AFTER_S).
HEARTBEAT_EVERY_S = 2.0
HEARTBEAT_STALE_AFTER_S = 30.0


@dataclass(frozen=True)
class LockInfo:
    who: str
    pid: int
    host: str
    command: str
    release: str
    time: str
    since: float
    token: str = ""  # the holder's own: only the run that holds it removes the lock
    beat: float = 0.0  # the last heartbeat, epoch seconds (0: none read)
    unreadable: str = ""  # why the holder file could not be read ("" when it could)

    def describe(self) -> str:
        if self.unreadable:
            return f"held by an unreadable holder ({self.unreadable})"
        return (
            f"held by {self.who} (pid {self.pid} on {self.host}) since {self.time} "
            f"for `{self.command}` {clip(self.release)}".rstrip()
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


def _unreadable(why: str) -> LockInfo:
    return LockInfo("unknown", 0, "unknown", "unknown", "", "unknown", 0.0, unreadable=why)


class _Heartbeat:
    """Rewrites the heartbeat file every HEARTBEAT_EVERY_S while its run holds the lock.

    It beats from a thread of its own, over a connection of its own for a remote primary (one
    SFTP session is not safe to share between threads), and stops for good the moment the holder
    file no longer carries its token: a lock broken and taken by another run is not kept alive.
    """

    def __init__(self, lock: DeployLock, token: str) -> None:
        self.lock = lock
        self.token = token
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stageflow-lock-heartbeat")
        self.thread.daemon = True  # a killed run stops beating: that is what makes it stale
        self.thread.start()

    def _run(self) -> None:
        lock = self.lock
        host = (
            lock.host if lock.host.is_local else replace(lock.host, _conn=None, _sftp_client=None)
        )
        try:
            while not self.stop.wait(HEARTBEAT_EVERY_S):
                try:
                    if self.token not in (host.read_text(lock.holder_path) or ""):
                        return
                    host.write_text(lock.heartbeat_path, lock.now_epoch_text())
                except Exception:  # noqa: BLE001 - a missed beat is only a late one
                    continue
        finally:
            if host is not lock.host:
                host.close()

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


class DeployLock:
    """The lock on the primary host: works with the database down, names its holder, beats.

    Taken by renaming a directory that already holds the holder file and the first heartbeat onto
    state/lock (rename(2) refuses a non-empty target), so the lock never exists without its
    holder: a holder that cannot be read is damage, not a run that is still writing it.
    """

    def __init__(self, host: Host, layout: Layout, *, clock: Clock = system_clock) -> None:
        self.host = host
        self.layout = layout
        self.clock = clock
        self.held = False
        self.token = ""
        self._heartbeat: _Heartbeat | None = None

    @property
    def holder_path(self) -> str:
        return str(PurePosixPath(self.layout.lock, "holder.json"))

    _info_path = holder_path  # the name older callers used

    @property
    def heartbeat_path(self) -> str:
        return str(PurePosixPath(self.layout.lock, "heartbeat"))

    def now_epoch_text(self) -> str:
        return repr(as_utc(self.clock()).timestamp())

    def holder(self) -> LockInfo | None:
        if not self.host.exists(self.layout.lock):
            return None
        try:
            text = self.host.read_text(self.holder_path)
        except NotADirectoryError:
            return _unreadable(f"{self.layout.lock} is a file, not the lock directory")
        except UnicodeDecodeError:
            return _unreadable(f"{self.holder_path} is not UTF-8")
        except OSError as exc:
            return _unreadable(f"{self.holder_path}: {exc.strerror or exc.__class__.__name__}")
        if text is None:
            return _unreadable(f"{self.holder_path} is missing")
        try:
            data = json.loads(text)
            info = LockInfo(**{**data, "beat": 0.0, "unreadable": ""})
            texts = (info.who, info.host, info.command, info.release, info.time, info.token)
            if not all(isinstance(t, str) for t in texts) or not isinstance(info.pid, int):
                raise TypeError
            if isinstance(info.since, bool) or not isinstance(info.since, int | float):
                raise TypeError
        except (json.JSONDecodeError, TypeError):
            return _unreadable(f"{self.holder_path} is not a holder record")
        return replace(info, beat=self._beat())

    def _beat(self) -> float:
        try:
            return float((self.host.read_text(self.heartbeat_path) or "").strip() or 0)
        except (OSError, UnicodeDecodeError, ValueError):
            return 0.0

    def is_stale(self, info: LockInfo) -> bool:
        """Stale, as a fact: the holder's process is gone (same machine), or its heartbeat stopped;
        a holder that cannot be read, or never beat, proves no live run either."""
        if info.host == socket.gethostname() and info.pid > 0 and not procs.alive(info.pid):
            return True
        now = as_utc(self.clock()).timestamp()
        if info.beat:
            return now - info.beat > HEARTBEAT_STALE_AFTER_S
        if info.since and not info.token and not info.unreadable:
            return held_too_long(info, now=self.clock())  # a holder from before heartbeats
        return True

    def acquire(self, *, who: str, command: str, release: str = "") -> None:
        at = self.clock()  # one reading: the text and the epoch name the same moment
        token = uuid.uuid4().hex
        info = LockInfo(
            who=who,
            pid=os.getpid(),
            host=socket.gethostname(),
            command=command,
            release=release,
            time=stamp(at),
            since=as_utc(at).timestamp(),
            token=token,
        )
        record = {k: v for k, v in asdict(info).items() if k not in ("beat", "unreadable")}
        ready = f"{self.layout.lock}.{token}"  # filled first, then renamed into place whole
        self.host.makedirs(ready)
        try:
            self.host.write_text(f"{ready}/holder.json", json.dumps(record), mode=0o600)
            self.host.write_text(f"{ready}/heartbeat", repr(info.since), mode=0o600)
            if not self._rename_into_place(ready):
                self._refuse_held()
        finally:
            self.host.remove_tree(ready)  # gone already when the rename took it
        self.token = token
        self.held = True
        self._heartbeat = _Heartbeat(self, token)

    def _rename_into_place(self, ready: str) -> bool:
        if self.host.exists(self.layout.lock):
            return False  # rename(2) would replace an empty directory: damage is for --force
        try:
            self.host.rename(ready, self.layout.lock)
            return True
        except (OSError, HostError):
            if self.host.exists(self.layout.lock):
                return False  # someone holds it (or a file sits there): refused below
            raise

    def _refuse_held(self) -> None:
        info = self.holder()
        stale = info is not None and self.is_stale(info)
        desc = info.describe() if info else "held"
        raise LockHeld(
            f"the deploy lock is {desc}{' (stale: its holder is gone)' if stale else ''}",
            hint=(
                "release it with --force --reason TEXT"
                if stale
                else "wait for it to finish, or inspect with `inv <env>.lock`"
            ),
        )

    def release(self) -> None:
        """Remove the lock if it is still this run's own: one broken as stale and taken by another
        run since is that run's, and stays."""
        if not self.held:
            return
        if self._heartbeat is not None:
            self._heartbeat.halt()
            self._heartbeat = None
        self.held = False
        info = self.holder()
        if info is not None and info.token == self.token:
            self.host.remove_tree(self.layout.lock)

    def force_release(self, *, actor: str, reason: str) -> LockInfo | None:
        if not reason.strip():
            raise UsageError(
                "--force needs --reason TEXT", hint="say why the lock is safe to break"
            )
        info = self.holder()
        if info is None:
            return None
        if not self.is_stale(info):
            ago = as_utc(self.clock()).timestamp() - info.beat
            alive = f"its heartbeat {max(0.0, ago):.0f}s ago" if info.beat else "not an hour old"
            raise LockHeld(
                f"the deploy lock is {info.describe()} and alive ({alive})",
                hint="wait for it, or stop that run; --force breaks only a stale lock, "
                "a live one only a signed human action",
            )
        self.host.remove_tree(self.layout.lock)
        audit(
            self.host,
            self.layout,
            actor=actor,
            action="lock-force-release",
            reason=reason,
            holder={k: v for k, v in asdict(info).items() if k != "token"},
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
        # refuses a blank reason first, then a live holder: only a stale lock is broken
        broken = lock.force_release(actor=actor, reason=reason)
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
    stale = " (STALE: its holder is gone; --force --reason releases it)"
    return f"lock {info.describe()}{stale if lock.is_stale(info) else ''}"


def settled(entries: list[dict[str, Any]], lock: DeployLock) -> list[dict[str, Any]]:
    """History as the operator reads it: an entry still marked running is "interrupted" unless it
    is the newest and a live holder has the lock (a killed run never wrote its end)."""
    info = lock.holder() if entries else None
    live = info is not None and not lock.is_stale(info)
    last = len(entries) - 1
    return [
        {**e, "status": "interrupted"}
        if e.get("status") == "running" and not (live and i == last)
        else e
        for i, e in enumerate(entries)
    ]


def recent_history(host: Host, layout: Layout, *, limit: int) -> list[dict[str, Any]]:
    """The last `limit` entries, newest first, killed runs read as interrupted."""
    return settled(history(host, layout), DeployLock(host, layout))[-limit:][::-1]


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
