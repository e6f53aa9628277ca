"""The migration engine: plain SQL files, a ledger table in the target database, an advisory lock.

Files are ``NNNN_slug.up.sql`` with an optional ``NNNN_slug.down.sql`` in one directory, numbered
1, 2, 3... without gaps. Header lines at the top of a file set how it runs::

    -- stageflow: transaction=off
    -- stageflow: phase=expand
    -- stageflow: lock_timeout=2s statement_timeout=30s

The two timeouts bound how long one statement of that file may wait for a lock and run; without
them the caller's (the environment's policy) hold. A deadline (the deploy's overall timeout) bounds
every file on top: a file still running at the deadline is cancelled, so a migration cannot hold
the serving release's tables for longer than the deploy was allowed to take.

A transactional file (the default) runs with its ledger row in one transaction: it is applied
completely or not at all. A ``transaction=off`` file (CREATE INDEX CONCURRENTLY and friends) runs
statement by statement in autocommit; when one fails, the ledger records the version as 'failed'
and every later run refuses until the operator finishes or undoes it by hand and calls
:func:`resolve_failed`.

Ledger rows describe the latest action on a version: a revert keeps the row and marks it
'reverted' (applied_by, applied_at, duration_ms and release then describe the revert), so the
history of a version is never deleted and the next migrate simply applies it again.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from deploy.errors import MigrationError
from deploy.secrets import Secret, scrub

if TYPE_CHECKING:  # psycopg loads where a server is spoken to, not on import (fast `inv --list`)
    import psycopg

LEDGER_TABLE = "stageflow_migrations"
# Fixed key shared by every stageflow process that migrates this database ("STAGEFLW" in ASCII).
LOCK_KEY = 0x5354_4147_4546_4C57
LOCK_POLL_S = 0.1
STATES = ("applied", "failed", "reverted")
PHASES = ("expand", "contract")
TIMEOUT_HEADERS = ("lock_timeout", "statement_timeout")
# a PostgreSQL duration as the headers and the policy accept it: a whole number, unit optional
# (milliseconds without one); "0" turns the timeout off
DURATION = re.compile(r"^\d{1,9}(ms|s|min|h)?$")

_FILE_NAME = re.compile(
    r"^(?P<version>\d{4,})_(?P<slug>[a-z0-9][a-z0-9_]*)\.(?P<kind>up|down)\.sql$"
)
_HEADER = re.compile(r"^--\s*stageflow\s*:(?P<body>.*)$", re.IGNORECASE)
# \x80-\uffff, written as a negated class: a class holding a range above \xff compiles into a
# 64 K-entry map: the three cost every command that imported this module about 0.05 s.
_NON_ASCII = r"[^\x00-\x7f\U00010000-\U0010ffff]"
_DOLLAR_TAG = re.compile(rf"\$(?:(?:[A-Za-z_]|{_NON_ASCII})(?:[A-Za-z0-9_]|{_NON_ASCII})*)?\$")
_WORD = re.compile(rf"(?:[A-Za-z_]|{_NON_ASCII})(?:[A-Za-z0-9_$]|{_NON_ASCII})*")
_IDENT_CHAR = re.compile(rf"[A-Za-z0-9_$]|{_NON_ASCII}")
_TX_CONTROL = re.compile(r"^(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION|END|ABORT)\b", re.IGNORECASE)
# Statements PostgreSQL refuses inside a transaction block: a transactional file holding one
# would fail at deploy time, so discover() says so while the author is still at the keyboard.
_NO_TX = re.compile(
    r"^(CREATE\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY|DROP\s+INDEX\s+CONCURRENTLY|REINDEX\b[^;]*\bCONCURRENTLY"
    r"|ALTER\s+TABLE\b[^;]*\bDETACH\s+PARTITION\b[^;]*\bCONCURRENTLY|VACUUM|CREATE\s+DATABASE"
    r"|DROP\s+DATABASE|ALTER\s+SYSTEM|CREATE\s+TABLESPACE|DROP\s+TABLESPACE)\b",
    re.IGNORECASE,
)
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)

_LEDGER_DDL = f"""
CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    phase       text NULL,
    state       text NOT NULL CHECK (state IN ('applied', 'failed', 'reverted')),
    applied_by  text NOT NULL DEFAULT '',
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL DEFAULT 0,
    release     text NOT NULL DEFAULT '',
    error       text NULL
)
"""
_LEDGER_COLUMNS = (
    "version, name, checksum, phase, state, applied_by, applied_at, duration_ms, release, error"
)
_UPSERT = f"""
INSERT INTO {LEDGER_TABLE} ({_LEDGER_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, now(), %s, %s, %s)
ON CONFLICT (version) DO UPDATE SET
    name = EXCLUDED.name, checksum = EXCLUDED.checksum, phase = EXCLUDED.phase,
    state = EXCLUDED.state, applied_by = EXCLUDED.applied_by, applied_at = EXCLUDED.applied_at,
    duration_ms = EXCLUDED.duration_ms, release = EXCLUDED.release, error = EXCLUDED.error
"""


@dataclass(frozen=True)
class MigrationFile:
    """One version: its up file (required), its down file (optional) and their headers."""

    version: int
    name: str  # the slug: 0003_add_email.up.sql -> "add_email"
    up_path: Path
    down_path: Path | None
    checksum: str  # sha256 of the up file's bytes, hex
    transactional: bool
    phase: str | None
    down_transactional: bool = True
    sql: str = field(default="", repr=False, compare=False)
    down_sql: str = field(default="", repr=False, compare=False)
    lock_timeout: str | None = None  # the file's own header; None: the caller's
    statement_timeout: str | None = None

    @property
    def filename(self) -> str:
        return self.up_path.name

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class MigrationStatus:
    """One version as the files and the ledger see it; state is 'pending' when never applied."""

    version: int
    name: str
    file: MigrationFile | None
    state: str  # pending | applied | failed | reverted
    applied_at: datetime | None = None
    applied_by: str = ""
    duration_ms: int | None = None
    release: str = ""
    error: str | None = None
    drift: bool = False  # applied, and the file's checksum differs from the ledger's

    @property
    def applied(self) -> bool:
        return self.state == "applied"


class MigrationFailed(MigrationError):
    """A file failed while running; `applied` lists the files this run applied before it."""

    def __init__(
        self,
        message: str,
        *,
        file: MigrationFile,
        applied: Sequence[MigrationFile],
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.file = file
        self.applied = list(applied)


@dataclass(frozen=True)
class _Row:
    version: int
    name: str
    checksum: str
    phase: str | None
    state: str
    applied_by: str
    applied_at: datetime | None
    duration_ms: int | None
    release: str
    error: str | None


# --------------------------------------------------------------------------- files (no I/O but reads)


def parse_header(text: str, *, source: str) -> dict[str, str]:
    """Read the ``-- stageflow: key=value`` lines at the top of a SQL file; reject anything unknown."""
    found: dict[str, str] = {}
    at_top = True
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        match = _HEADER.match(line)
        if match is None:
            if line and not line.startswith("--"):
                at_top = False
            continue
        if not at_top:
            raise MigrationError(
                f"{source}:{lineno}: stageflow header below the first SQL statement",
                hint="move the '-- stageflow:' lines to the top of the file",
            )
        tokens = [t for t in re.split(r"[\s,]+", match["body"].strip()) if t]
        if not tokens:
            raise MigrationError(
                f"{source}:{lineno}: empty stageflow header",
                hint="write e.g. '-- stageflow: transaction=off'",
            )
        for token in tokens:
            key, sep, value = token.partition("=")
            key, value = key.lower(), value.lower()
            if not sep or key not in ("transaction", "phase", *TIMEOUT_HEADERS):
                raise MigrationError(
                    f"{source}:{lineno}: unknown stageflow header {token!r}",
                    hint="known headers: transaction=on|off, phase=expand|contract, "
                    "lock_timeout=DURATION, statement_timeout=DURATION",
                )
            if key in TIMEOUT_HEADERS:
                if not DURATION.match(value):
                    raise MigrationError(
                        f"{source}:{lineno}: bad value {token!r}",
                        hint=f"{key} takes a duration such as 500ms, 5s or 2min",
                    )
                allowed: tuple[str, ...] = (value,)
            else:
                allowed = ("on", "off") if key == "transaction" else PHASES
            if value not in allowed:
                raise MigrationError(
                    f"{source}:{lineno}: bad value {token!r}",
                    hint=f"{key} must be one of {', '.join(allowed)}",
                )
            if found.get(key, value) != value:
                raise MigrationError(
                    f"{source}:{lineno}: {key} set twice with different values",
                    hint=f"keep one {key}= header",
                )
            found[key] = value
    return found


def split_sql(sql: str, *, source: str = "SQL") -> list[str]:
    """Split SQL into statements on top-level semicolons (quotes, dollar quotes, comments respected).

    Statements holding only comments are dropped. Like psql, semicolons inside the SQL-standard
    body of CREATE FUNCTION/PROCEDURE (BEGIN ATOMIC ... END, with CASE ... END inside) do not split.
    """
    out: list[str] = []
    start = 0
    has_code = False
    words: list[str] = []  # the statement's first words, to spot CREATE [OR REPLACE] FUNCTION
    depth = 0  # BEGIN/CASE nesting inside such a routine's body
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i, source)
        elif c == "'":
            i = _skip_quoted(sql, i, "'", backslash=_escape_string_at(sql, i), source=source)
            has_code = True
        elif c == '"':
            i = _skip_quoted(sql, i, '"', backslash=False, source=source)
            has_code = True
        elif (
            c == "$"
            and not (i > 0 and _IDENT_CHAR.match(sql[i - 1]))
            and (tag := _DOLLAR_TAG.match(sql, i))
        ):
            i = _skip_dollar_quoted(sql, tag, source)
            has_code = True
        elif c == ";" and depth == 0:
            if has_code:
                out.append(sql[start:i].strip())
            start, has_code, words = i + 1, False, []
            i += 1
        elif (word := _WORD.match(sql, i)) and not (i > 0 and _IDENT_CHAR.match(sql[i - 1])):
            upper = word.group(0).upper()
            if len(words) < 4:
                words.append(upper)
            if _is_routine(words):
                if upper in ("BEGIN", "CASE"):
                    depth += 1
                elif upper == "END" and depth:
                    depth -= 1
            has_code = True
            i = word.end()
        else:
            has_code = has_code or not c.isspace()
            i += 1
    if has_code:
        out.append(sql[start:].strip())
    return out


def _is_routine(words: list[str]) -> bool:
    kind = words[3:4] if words[1:3] == ["OR", "REPLACE"] else words[1:2]
    return words[:1] == ["CREATE"] and kind in (["FUNCTION"], ["PROCEDURE"])


def _escape_string_at(sql: str, i: int) -> bool:
    """The quote at i opens an E'...' string, where backslashes escape (not a word ending in e)."""
    return i > 0 and sql[i - 1] in "eE" and not (i > 1 and bool(_IDENT_CHAR.match(sql[i - 2])))


def _skip_dollar_quoted(sql: str, tag: re.Match[str], source: str) -> int:
    end = sql.find(tag.group(0), tag.end())
    if end < 0:
        raise MigrationError(
            f"{source}: unterminated dollar-quoted string {tag.group(0)}",
            hint=f"close it with {tag.group(0)}",
        )
    return end + len(tag.group(0))


def _skip_block_comment(sql: str, i: int, source: str) -> int:
    depth, i = 1, i + 2  # block comments nest in PostgreSQL
    while depth:
        nxt_open, nxt_close = sql.find("/*", i), sql.find("*/", i)
        if nxt_close < 0:
            raise MigrationError(f"{source}: unterminated /* comment", hint="close it with */")
        if 0 <= nxt_open < nxt_close:
            depth, i = depth + 1, nxt_open + 2
        else:
            depth, i = depth - 1, nxt_close + 2
    return i


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool, source: str) -> int:
    i += 1
    while i < len(sql):
        c = sql[i]
        if backslash and c == "\\":
            i += 2
        elif c == quote:
            if sql.startswith(quote, i + 1):  # doubled quote is an escaped quote
                i += 2
            else:
                return i + 1
        else:
            i += 1
    what = "string" if quote == "'" else "quoted identifier"
    raise MigrationError(f"{source}: unterminated {what}", hint=f"close it with {quote}")


def _strip_leading_comments(stmt: str) -> str:
    while True:
        stmt = stmt.lstrip()
        if stmt.startswith("--"):
            nl = stmt.find("\n")
            stmt = "" if nl < 0 else stmt[nl + 1 :]
        elif stmt.startswith("/*"):
            stmt = stmt[_skip_block_comment(stmt, 0, "SQL") :]
        else:
            return stmt


def _check_statements(sql: str, *, source: str, transactional: bool) -> None:
    for stmt in split_sql(sql, source=source):
        head = _strip_leading_comments(stmt)
        if _TX_CONTROL.match(head):
            raise MigrationError(
                f"{source}: transaction control statement {head.split()[0].upper()!r} in a migration",
                hint="remove it: each file runs in its own transaction, or add "
                "'-- stageflow: transaction=off' to run it statement by statement",
            )
        if transactional and (m := _NO_TX.match(head)):
            raise MigrationError(
                f"{source}: {' '.join(m.group(0).split()).upper()} cannot run inside a transaction",
                hint="add '-- stageflow: transaction=off' at the top of the file",
            )


# Statements that hold a strong lock on a table for as long as they (or their transaction) run,
# blocking the serving release's reads or writes: (rule, pattern, why). The release gate blocks on
# them; a file that must, says so to a reviewer by being split or made concurrent.
LONG_LOCKS = (
    (
        "lock-table",
        re.compile(r"^LOCK\b", re.IGNORECASE),
        "LOCK TABLE holds the table until the transaction ends",
    ),
    (
        "vacuum-full",
        re.compile(r"^VACUUM\s*(\([^)]*\bFULL\b[^)]*\)|FULL\b)", re.IGNORECASE),
        "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE",
    ),
    (
        "cluster",
        re.compile(r"^CLUSTER\b", re.IGNORECASE),
        "CLUSTER rewrites the table under ACCESS EXCLUSIVE",
    ),
    (
        "reindex-blocking",
        re.compile(r"^REINDEX\b(?![^;]*\bCONCURRENTLY\b)", re.IGNORECASE),
        "REINDEX without CONCURRENTLY blocks writes (and reads through the index)",
    ),
    (
        "refresh-blocking",
        re.compile(r"^REFRESH\s+MATERIALIZED\s+VIEW\b(?![^;]*\bCONCURRENTLY\b)", re.IGNORECASE),
        "REFRESH MATERIALIZED VIEW without CONCURRENTLY blocks its readers",
    ),
    (
        "sleep",
        re.compile(r"\bpg_sleep(_for|_until)?\s*\(", re.IGNORECASE),
        "pg_sleep keeps every lock taken before it",
    ),
)


_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")


def long_locks(path: Path) -> list[tuple[str, str]]:
    """(where, rule: why) for each statement of a migration file that holds a table long;
    where is 'file:line'."""
    sql = _read_sql(path)[1]
    found = []
    at = 0
    for stmt in split_sql(sql, source=path.name):
        start = sql.find(stmt, at)
        at = start + len(stmt) if start >= 0 else at
        head = _strip_leading_comments(stmt)
        line = sql.count("\n", 0, max(start, 0) + (len(stmt) - len(head))) + 1
        code = _STRING_LITERAL.sub("''", head)  # a quoted pg_sleep( is text, not a call
        for rule, pattern, why in LONG_LOCKS:
            if pattern.search(code) if rule == "sleep" else pattern.match(code):
                found.append((f"{path.name}:{line}", f"stageflow-{rule}: {why}"))
    return found


def _read_sql(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    try:
        return data, data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MigrationError(
            f"{path.name}: not UTF-8 ({e.reason} at byte {e.start})", hint="save the file as UTF-8"
        ) from None


def discover(directory: Path) -> list[MigrationFile]:
    """Read every migration in directory, check names, headers and numbering; sorted by version."""
    if not directory.is_dir():
        raise MigrationError(
            f"migrations directory {directory} does not exist",
            hint="create it or point the config at the right one",
        )
    ups, downs = _files_by_version(directory)
    for version, (slug, path) in downs.items():
        if version not in ups or ups[version][0] != slug:
            raise MigrationError(
                f"{path.name} has no matching up file",
                hint=f"add {version:04d}_{slug}.up.sql or remove the down file",
            )
    files = [
        _read_migration(version, *ups[version], downs[version][1] if version in downs else None)
        for version in sorted(ups)
    ]
    check_sequence(files)
    return files


def _files_by_version(
    directory: Path,
) -> tuple[dict[int, tuple[str, Path]], dict[int, tuple[str, Path]]]:
    """(up files, down files), each version -> (slug, path); a bad name or a duplicate refuses."""
    ups: dict[int, tuple[str, Path]] = {}
    downs: dict[int, tuple[str, Path]] = {}
    for path in sorted(directory.iterdir()):
        if not path.name.endswith(".sql"):
            continue  # READMEs, package markers and the like live here too
        m = _FILE_NAME.match(path.name)
        if m is None or not path.is_file():
            raise MigrationError(
                f"bad migration file name {path.name}",
                hint="name files NNNN_slug.up.sql / NNNN_slug.down.sql (slug: a-z, 0-9, _)",
            )
        version, slug = int(m["version"]), m["slug"]
        if version == 0:
            raise MigrationError(
                f"{path.name}: version 0 is reserved", hint="number migrations from 0001"
            )
        bucket = ups if m["kind"] == "up" else downs
        if version in bucket:
            raise MigrationError(
                f"duplicate migration version {version}: {bucket[version][1].name} and {path.name}",
                hint="give each migration its own number",
            )
        bucket[version] = (slug, path)
    return ups, downs


def _read_migration(
    version: int, slug: str, up_path: Path, down_path: Path | None
) -> MigrationFile:
    """One version's files read, their headers parsed and their statements checked."""
    data, sql = _read_sql(up_path)
    header = parse_header(sql, source=up_path.name)
    transactional = header.get("transaction", "on") == "on"
    _check_statements(sql, source=up_path.name, transactional=transactional)
    down_sql, down_tx = "", True
    if down_path is not None:
        down_sql = _read_sql(down_path)[1]
        down_tx = parse_header(down_sql, source=down_path.name).get("transaction", "on") == "on"
        _check_statements(down_sql, source=down_path.name, transactional=down_tx)
    return MigrationFile(
        version=version,
        name=slug,
        up_path=up_path,
        down_path=down_path,
        checksum=hashlib.sha256(data).hexdigest(),
        transactional=transactional,
        phase=header.get("phase"),
        down_transactional=down_tx,
        sql=sql,
        down_sql=down_sql,
        lock_timeout=header.get("lock_timeout"),
        statement_timeout=header.get("statement_timeout"),
    )


def check_sequence(files: Sequence[MigrationFile]) -> None:
    """Versions must run 1, 2, 3... with no gap and no duplicate."""
    seen: dict[int, MigrationFile] = {}
    for f in sorted(files, key=lambda f: f.version):
        if f.version in seen:
            raise MigrationError(
                f"duplicate migration version {f.version}: {seen[f.version].filename} and {f.filename}",
                hint="give each migration its own number",
            )
        expected = len(seen) + 1
        if f.version != expected:
            raise MigrationError(
                f"gap in migration numbering: {f.filename} follows version {expected - 1}",
                hint=f"renumber it {expected:04d}",
            )
        seen[f.version] = f


def is_expand_only(files: Sequence[MigrationFile], versions: Sequence[int]) -> bool:
    """True when every one of versions is a known file with phase=expand (unknown -> False)."""
    by_version = {f.version: f for f in files}
    return all(v in by_version and by_version[v].phase == "expand" for v in versions)


# --------------------------------------------------------------------------- database


def _safe(text: str, password: Secret | None) -> str:
    text = scrub(text, [password] if password else [])
    return _PASSWORD_KV.sub(lambda m: m[1] + "[REDACTED]", text)


def _pg_error(e: BaseException, password: Secret | None) -> str:
    diag = getattr(e, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    lines = (primary or str(e)).strip().splitlines()
    return _safe(lines[0] if lines else type(e).__name__, password)


@contextmanager
def _connect(
    conninfo: str, password: Secret | None, connect_timeout: int
) -> Iterator[psycopg.Connection]:
    import psycopg

    kwargs: dict[str, object] = {
        "connect_timeout": connect_timeout,
        "autocommit": True,
        "application_name": "stageflow-migrations",
    }
    if password is not None:
        kwargs["password"] = password.reveal()
    try:
        conn = psycopg.connect(conninfo, **kwargs)  # type: ignore[arg-type]
    except psycopg.Error as e:
        raise MigrationError(
            f"cannot connect to the database: {_pg_error(e, password)}",
            hint="check that PostgreSQL runs and the database URL is right",
        ) from None
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def _advisory_lock(conn: psycopg.Connection, wait_s: float) -> Iterator[None]:
    import psycopg

    deadline = time.monotonic() + max(wait_s, 0.0)
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if row and row[0]:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            # An advisory bigint key shows in pg_locks split into classid (high) and objid (low).
            holder = conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = %s AND objid = %s AND objsubid = 1 LIMIT 1",
                (LOCK_KEY >> 32, LOCK_KEY & 0xFFFF_FFFF),
            ).fetchone()
            who = f" (backend pid {holder[0]})" if holder else ""
            raise MigrationError(
                f"another migration holds the lock{who}; waited {wait_s:g}s",
                hint="let it finish and retry; a stuck holder can be ended with pg_terminate_backend(pid)",
            )
        time.sleep(min(LOCK_POLL_S, remaining))
    try:
        yield
    finally:
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        except psycopg.Error:
            pass  # the connection is gone, and the session lock with it


def _configure(
    conn: psycopg.Connection, lock_timeout: str | int, statement_timeout: str | int
) -> None:
    import psycopg

    for name, value in (("lock_timeout", lock_timeout), ("statement_timeout", statement_timeout)):
        try:
            conn.execute("SELECT set_config(%s, %s, false)", (name, str(value)))
        except psycopg.Error as e:
            raise MigrationError(
                f"bad {name} {str(value)!r}: {_pg_error(e, None)}",
                hint=f"use a PostgreSQL duration such as '5s' or '500ms' for {name}",
            ) from None


def _ledger_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (LEDGER_TABLE,)).fetchone()
    return bool(row and row[0])


def _read_ledger(conn: psycopg.Connection) -> dict[int, _Row]:
    if not _ledger_exists(conn):
        return {}
    rows = conn.execute(f"SELECT {_LEDGER_COLUMNS} FROM {LEDGER_TABLE} ORDER BY version").fetchall()
    return {r[0]: _Row(*r) for r in rows}


def _problems(files: Sequence[MigrationFile], ledger: dict[int, _Row]) -> list[tuple[str, str]]:
    by_version = {f.version: f for f in files}
    found: list[tuple[str, str]] = []
    for row in ledger.values():
        f = by_version.get(row.version)
        filename = f.filename if f else f"{row.version:04d}_{row.name}.up.sql"
        if row.state == "failed":
            found.append(
                (
                    f"{filename} failed at {row.applied_at:%Y-%m-%d %H:%M:%S%z}: {row.error or 'no error recorded'}",
                    f"finish or undo its statements by hand, then resolve version {row.version}"
                    " as applied or reverted (resolve_failed)",
                )
            )
        elif row.state == "applied" and f is None:
            found.append(
                (
                    f"applied version {row.version} has no file {filename}",
                    "run from a release that contains it, or revert the database to a version this release knows",
                )
            )
        elif row.state == "applied" and f is not None and f.checksum != row.checksum:
            found.append(
                (
                    f"{filename} changed after it was applied (checksum drift)",
                    "restore the file as it was applied and put the change in a new migration",
                )
            )
    applied = [v for v, r in ledger.items() if r.state == "applied"]
    top = max(applied, default=0)
    for f in files:
        if f.version < top and (f.version not in ledger or ledger[f.version].state == "reverted"):
            found.append(
                (
                    f"{f.filename} is pending but version {top} is already applied",
                    f"renumber it after {top:04d}, or revert the database below {f.version:04d} first",
                )
            )
    return found


def _validate(files: Sequence[MigrationFile], ledger: dict[int, _Row]) -> None:
    check_sequence(files)
    found = _problems(files, ledger)
    if found:
        message, hint = found[0]
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        raise MigrationError(message + more, hint=hint)


def _plan_up(
    files: Sequence[MigrationFile], ledger: dict[int, _Row], target: int | None
) -> list[MigrationFile]:
    applied = {v for v, r in ledger.items() if r.state == "applied"}
    if target is not None:
        known = {f.version for f in files}
        if target != 0 and target not in known:
            raise MigrationError(
                f"target version {target} has no migration file",
                hint=f"pick one of {min(known, default=0)}..{max(known, default=0)}",
            )
        if applied and target < max(applied):
            raise MigrationError(
                f"target version {target} is below the applied version {max(applied)}",
                hint="use revert to go down",
            )
    return [
        f
        for f in sorted(files, key=lambda f: f.version)
        if f.version not in applied and (target is None or f.version <= target)
    ]


def _plan_down(
    files: Sequence[MigrationFile], ledger: dict[int, _Row], to_version: int
) -> list[MigrationFile]:
    if to_version < 0:
        raise MigrationError(
            f"cannot revert to version {to_version}", hint="use 0 to revert everything"
        )
    by_version = {f.version: f for f in files}
    plan = [
        by_version[v]
        for v in sorted(ledger, reverse=True)
        if v > to_version and ledger[v].state == "applied"
    ]
    missing = [f.filename for f in plan if f.down_path is None]
    if missing:
        raise MigrationError(
            f"cannot revert to version {to_version}: {', '.join(missing)} has no down file;"
            " level 3 (restore) is needed",
            hint="restore the database from the backup taken before the deploy",
        )
    return plan


def _record(
    conn: psycopg.Connection,
    f: MigrationFile,
    *,
    state: str,
    applied_by: str,
    duration_ms: int,
    release: str,
    error: str | None = None,
) -> None:
    conn.execute(
        _UPSERT,
        (f.version, f.name, f.checksum, f.phase, state, applied_by, duration_ms, release, error),
    )


def duration_ms(value: str | int) -> int:
    """A PostgreSQL duration (or whole milliseconds) in milliseconds; 0 is "no timeout"."""
    if isinstance(value, int):
        return value
    m = DURATION.match(value.strip().lower())
    if m is None:
        raise MigrationError(
            f"bad duration {value!r}", hint="use a PostgreSQL duration such as 500ms, 5s or 2min"
        )
    unit = {"": 1, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}[m[1] or ""]
    return int(value.strip().lower().removesuffix(m[1] or "")) * unit


@dataclass(frozen=True)
class Limits:
    """How long a statement may wait for a lock and run, unless its file says otherwise; and the
    monotonic deadline (None: none) past which no file may run."""

    lock_timeout: str | int = "5s"
    statement_timeout: str | int = "0"
    deadline: float | None = None

    def for_file(self, lock: str | None, statement: str | None) -> tuple[int, int]:
        """(lock_timeout, statement_timeout) in ms for one file: its headers over these, and the
        statement never allowed past the deadline."""
        lock_ms = duration_ms(lock or self.lock_timeout)
        stmt_ms = duration_ms(statement or self.statement_timeout)
        if self.deadline is not None:
            left = max(1, int((self.deadline - time.monotonic()) * 1000))
            stmt_ms = left if stmt_ms == 0 else min(stmt_ms, left)
            lock_ms = left if lock_ms == 0 else min(lock_ms, left)
        return lock_ms, stmt_ms

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


@contextmanager
def _watchdog(conn: psycopg.Connection, limits: Limits) -> Iterator[None]:
    """Cancel whatever conn runs when the deadline passes: a file of many statements, each within
    its statement_timeout, still stops there (and with it every lock it holds)."""
    if limits.deadline is None:
        yield
        return
    import threading

    timer = threading.Timer(max(0.0, limits.deadline - time.monotonic()), conn.cancel)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@dataclass(frozen=True)
class _FileRun:
    """One migration file run one way (up or down), and how its outcome goes into the ledger."""

    conn: psycopg.Connection
    file: MigrationFile
    down: bool
    applied_by: str
    release: str
    password: Secret | None
    done: Sequence[MigrationFile]  # applied by this run before this file
    limits: Limits = field(default_factory=Limits)
    started: float = field(default_factory=time.monotonic)

    def set_timeouts(self, *, local: bool) -> None:
        """The file's timeouts on the session (local: until the transaction ends)."""
        if self.limits.past_deadline():
            raise MigrationFailed(
                f"{self.filename} did not start: the deploy's timeout has passed",
                file=self.file,
                applied=self.done,
                hint="raise deploy_timeout_s in stageflow.toml, or split the migration",
            )
        lock_ms, stmt_ms = self.limits.for_file(self.file.lock_timeout, self.file.statement_timeout)
        self.conn.execute(
            "SELECT set_config('lock_timeout', %s, %s), set_config('statement_timeout', %s, %s)",
            (f"{lock_ms}ms", local, f"{stmt_ms}ms", local),
        )

    def why(self, e: BaseException) -> str:
        said = _pg_error(e, self.password)
        if self.limits.past_deadline():
            return f"{said} (cancelled: the deploy's timeout passed)"
        return said

    @property
    def sql(self) -> str:
        return self.file.down_sql if self.down else self.file.sql

    @property
    def filename(self) -> str:
        f = self.file
        return f.down_path.name if self.down and f.down_path else f.filename

    @property
    def transactional(self) -> bool:
        return self.file.down_transactional if self.down else self.file.transactional

    def record(self, state: str, error: str | None = None) -> None:
        _record(
            self.conn,
            self.file,
            state=state,
            applied_by=self.applied_by,
            duration_ms=int((time.monotonic() - self.started) * 1000),
            release=self.release,
            error=error,
        )


def _run(
    conn: psycopg.Connection,
    f: MigrationFile,
    *,
    down: bool,
    applied_by: str,
    release: str,
    password: Secret | None,
    done: Sequence[MigrationFile],
    limits: Limits,
) -> None:
    run = _FileRun(conn, f, down, applied_by, release, password, done, limits)
    with _watchdog(conn, limits):
        if run.transactional:
            _run_in_transaction(run)
        else:
            try:
                _run_statement_by_statement(run)
            finally:  # the session's own timeouts again for the next file and the ledger
                _configure(conn, limits.lock_timeout, limits.statement_timeout)


def _run_in_transaction(run: _FileRun) -> None:
    """The whole file and its ledger row in one transaction: applied completely or not at all."""
    import psycopg

    conn = run.conn
    try:
        with conn.transaction():
            run.set_timeouts(local=True)
            if split_sql(run.sql, source=run.filename):
                # One piece: the server parses the file, so the splitter's limits don't apply.
                conn.execute(run.sql)  # type: ignore[call-overload]
            run.record("reverted" if run.down else "applied")
    except psycopg.Error as e:
        raise MigrationFailed(
            f"{run.filename} failed and was rolled back: {run.why(e)}",
            file=run.file,
            applied=run.done,
            hint="fix the file and run again; nothing of it was kept",
        ) from None


def _run_statement_by_statement(run: _FileRun) -> None:
    """transaction=off: each statement commits; a failure leaves the version 'failed' in the ledger."""
    import psycopg

    statements = split_sql(run.sql, source=run.filename)
    run.set_timeouts(local=False)
    for number, stmt in enumerate(statements, start=1):
        try:
            run.conn.execute(stmt)  # type: ignore[call-overload]
        except psycopg.Error as e:
            error = f"statement {number} of {len(statements)}: {run.why(e)}"
            note = ""
            try:
                run.record("failed", ("down: " if run.down else "") + error)
            except psycopg.Error as e2:
                note = f" (and the ledger could not record it: {_pg_error(e2, run.password)})"
            raise MigrationFailed(
                f"{run.filename} failed at {error}{note}",
                file=run.file,
                applied=run.done,
                hint="statements before it stay applied (transaction=off); finish or undo them by "
                "hand, then resolve the version (resolve_failed)",
            ) from None
    run.record("reverted" if run.down else "applied")


# --------------------------------------------------------------------------- public API


def status(
    conninfo: str,
    files: Sequence[MigrationFile],
    *,
    password: Secret | None = None,
    connect_timeout: int = 10,
) -> list[MigrationStatus]:
    """Every version known to the files or the ledger, read-only (the ledger is never created)."""
    with _connect(conninfo, password, connect_timeout) as conn:
        ledger = _read_ledger(conn)
    by_version = {f.version: f for f in files}
    out = []
    for version in sorted(set(by_version) | set(ledger)):
        f, row = by_version.get(version), ledger.get(version)
        if row is None:
            assert f is not None
            out.append(MigrationStatus(version=version, name=f.name, file=f, state="pending"))
            continue
        out.append(
            MigrationStatus(
                version=version,
                name=f.name if f else row.name,
                file=f,
                state=row.state,
                applied_at=row.applied_at,
                applied_by=row.applied_by,
                duration_ms=row.duration_ms,
                release=row.release,
                error=row.error,
                drift=row.state == "applied" and f is not None and f.checksum != row.checksum,
            )
        )
    return out


def validate(
    conninfo: str,
    files: Sequence[MigrationFile],
    *,
    password: Secret | None = None,
    connect_timeout: int = 10,
) -> None:
    """Refuse drift, applied versions without a file, failed rows, gaps and out-of-order files."""
    with _connect(conninfo, password, connect_timeout) as conn:
        _validate(files, _read_ledger(conn))


def _rows_as_ledger(rows: Iterable[Mapping[str, Any]]) -> dict[int, _Row]:
    names = [f.name for f in fields(_Row)]
    ledger: dict[int, _Row] = {}
    for r in rows:  # psql's JSON names every column; only the timestamp comes as text
        values = {n: r.get(n) for n in names}
        at = values["applied_at"]
        values["applied_at"] = datetime.fromisoformat(at) if at else None
        ledger[int(values["version"])] = _Row(**values)
    return ledger


def validate_rows(files: Sequence[MigrationFile], rows: Iterable[Mapping[str, Any]]) -> None:
    """validate's checks against ledger rows read elsewhere (psql's JSON of the ledger in a
    container): the same refusals and messages without a connection from here."""
    _validate(files, _rows_as_ledger(rows))


def pending_of(files: Sequence[MigrationFile], rows: Iterable[Mapping[str, Any]]) -> list[int]:
    """The versions of files that ledger rows do not mark applied, in order."""
    applied = {int(r["version"]) for r in rows if r.get("state") == "applied"}
    return sorted(f.version for f in files if f.version not in applied)


def parse_rows(line: str) -> list[dict[str, Any]]:
    """The ledger's rows from the one JSON line ledger_rows_sql prints; ValueError otherwise."""
    rows = json.loads(line)
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("version"), int) for r in rows
    ):
        raise ValueError(line)
    return rows


def ledger_rows_by_driver(
    conninfo: str, *, password: Secret | None = None, connect_timeout: int = 10
) -> list[dict[str, Any]]:
    """The ledger's rows as parse_rows gives them, read through the driver: read-only, no lock."""
    with _connect(conninfo, password, connect_timeout) as conn:
        return [
            {**vars(r), "applied_at": r.applied_at.isoformat() if r.applied_at else None}
            for r in _read_ledger(conn).values()
        ]


def pending(
    conninfo: str,
    files: Sequence[MigrationFile],
    *,
    password: Secret | None = None,
    connect_timeout: int = 10,
) -> list[MigrationFile]:
    """Files not applied yet (never run, failed or reverted), in order; read-only, no validation."""
    with _connect(conninfo, password, connect_timeout) as conn:
        ledger = _read_ledger(conn)
    return [
        f
        for f in sorted(files, key=lambda f: f.version)
        if f.version not in ledger or ledger[f.version].state != "applied"
    ]


def current_version(
    conninfo: str, *, password: Secret | None = None, connect_timeout: int = 10
) -> int:
    """The highest applied version; 0 when nothing was applied or there is no ledger."""
    with _connect(conninfo, password, connect_timeout) as conn:
        ledger = _read_ledger(conn)
    return max((v for v, r in ledger.items() if r.state == "applied"), default=0)


def migrate(
    conninfo: str,
    files: Sequence[MigrationFile],
    *,
    target: int | None = None,
    release: str = "",
    applied_by: str = "",
    password: Secret | None = None,
    lock_timeout: str | int = "5s",
    statement_timeout: str | int = "0",
    lock_wait_s: float = 30.0,
    connect_timeout: int = 10,
    dry_run: bool = False,
    deadline: float | None = None,
) -> list[MigrationFile]:
    """Apply pending files up to target (all when None) under the advisory lock; returns them.

    With dry_run, validates and returns the plan without taking the lock or creating the ledger.
    Integer timeouts are milliseconds, as in PostgreSQL; a file's own headers override them.
    deadline (time.monotonic()) cancels a file still running then, and starts none after it.
    """
    limits = Limits(lock_timeout, statement_timeout, deadline)
    with _connect(conninfo, password, connect_timeout) as conn:
        if dry_run:
            ledger = _read_ledger(conn)
            _validate(files, ledger)
            return _plan_up(files, ledger, target)
        _configure(conn, lock_timeout, statement_timeout)
        with _advisory_lock(conn, lock_wait_s):
            conn.execute(_LEDGER_DDL)  # type: ignore[call-overload]
            ledger = _read_ledger(conn)
            _validate(files, ledger)
            done: list[MigrationFile] = []
            for f in _plan_up(files, ledger, target):
                _run(
                    conn,
                    f,
                    down=False,
                    applied_by=applied_by,
                    release=release,
                    password=password,
                    done=done,
                    limits=limits,
                )
                done.append(f)
            return done


def revert(
    conninfo: str,
    files: Sequence[MigrationFile],
    *,
    to_version: int,
    release: str = "",
    applied_by: str = "",
    password: Secret | None = None,
    lock_timeout: str | int = "5s",
    statement_timeout: str | int = "0",
    lock_wait_s: float = 30.0,
    connect_timeout: int = 10,
    dry_run: bool = False,
    deadline: float | None = None,
) -> list[MigrationFile]:
    """Run the down files of applied versions above to_version, newest first; returns them.

    Rows are kept and marked 'reverted' (the next migrate applies them again). When any of them
    has no down file, refuses before changing anything: level 3 (restore) is needed.
    """
    limits = Limits(lock_timeout, statement_timeout, deadline)
    with _connect(conninfo, password, connect_timeout) as conn:
        if dry_run or not _ledger_exists(conn):
            ledger = _read_ledger(conn)
            _validate(files, ledger)
            return _plan_down(files, ledger, to_version)
        _configure(conn, lock_timeout, statement_timeout)
        with _advisory_lock(conn, lock_wait_s):
            ledger = _read_ledger(conn)
            _validate(files, ledger)
            done: list[MigrationFile] = []
            for f in _plan_down(files, ledger, to_version):
                _run(
                    conn,
                    f,
                    down=True,
                    applied_by=applied_by,
                    release=release,
                    password=password,
                    done=done,
                    limits=limits,
                )
                done.append(f)
            return done


def resolve_failed(
    conninfo: str,
    files: Sequence[MigrationFile],
    *,
    version: int,
    state: Literal["applied", "reverted"],
    applied_by: str = "",
    release: str = "",
    password: Secret | None = None,
    lock_wait_s: float = 30.0,
    connect_timeout: int = 10,
) -> bool:
    """After fixing a failed transaction=off file by hand, mark it applied (done) or reverted (retry).

    The file is not needed: a failed version's file is usually in the release that failed, not in
    the one serving. Without it the ledger keeps the name and checksum it recorded at the failure.
    Returns whether the file was at hand (for the audit record)."""
    if state not in ("applied", "reverted"):
        raise MigrationError(f"cannot resolve to state {state!r}", hint="use applied or reverted")
    by_version = {f.version: f for f in files}
    with _connect(conninfo, password, connect_timeout) as conn, _advisory_lock(conn, lock_wait_s):
        row = _read_ledger(conn).get(version)
        if row is None or row.state != "failed":
            raise MigrationError(
                f"version {version} is not failed (state: {row.state if row else 'none'})",
                hint="only a failed version can be resolved",
            )
        f = by_version.get(version)
        conn.execute(
            _UPSERT,
            (
                version,
                f.name if f else row.name,
                f.checksum if f else row.checksum,  # a file fixed by hand is the one kept
                f.phase if f else row.phase,
                state,
                applied_by,
                row.duration_ms or 0,
                release or row.release,
                None,
            ),
        )
        return f is not None


def in_release(release_dir: str, *, directory: str) -> list[MigrationFile]:
    """The migration files a release directory ships in directory (relative to it)."""
    return discover(Path(release_dir) / directory)


@contextmanager
def holding_lock(
    conninfo: str,
    *,
    password: Secret | None = None,
    lock_wait_s: float = 30.0,
    connect_timeout: int = 10,
) -> Iterator[psycopg.Connection]:
    """The migration lock, held on a connection of its own while another program migrates: a
    service's own tool then never runs beside stageflow's engine or a second deploy. Yields that
    connection (autocommit), for reads that need no tool."""
    with _connect(conninfo, password, connect_timeout) as conn, _advisory_lock(conn, lock_wait_s):
        yield conn


def alembic_table_shows(conn: Any, revisions: Mapping[str, str], current: Sequence[str]) -> bool:
    """Whether alembic's own table holds exactly the one revision given, for a `current`
    command that is alembic's (alembic itself, or Flask-Migrate's `flask db`). It answers what
    that command would print without a Python start importing the service; any doubt (another
    tool, no such table, several heads, a revision that differs) is False, and the command runs."""
    import psycopg

    names = [PurePosixPath(a).name for a in current]
    if set(revisions) != {SINGLE} or not ("alembic" in names or {"flask", "db"} <= set(names)):
        return False
    try:
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except psycopg.Error:
        return False
    return [r[0] for r in rows] == [revisions[SINGLE]]


# --------------------------------------------------------------------------- a service's own tool
# kind = "command": the service's tool (alembic, Flask-Migrate, Django) migrates; stageflow only
# reads what its `current` command prints. A revision map is app -> revision; a tool with one
# line of history (alembic) is keyed by SINGLE.

SINGLE = ""
BASE = "base"  # nothing applied: alembic's name for it, which `downgrade base` understands
ZERO = "zero"  # an app with nothing applied: Django's name for it, which `migrate app zero` takes
COMMAND_LOCK_TIMEOUT_MS = 5000  # as the SQL engine's default lock_timeout
COMMAND_STATEMENT_TIMEOUT_MS = 0
# Django's showmigrations: "[X]  app.0002_name" (--plan) or " [X] 0002_name" under an app line
_SHOWN = re.compile(r"^(?P<indent>\s*)\[(?P<mark>[ X-])\]\s+(?P<name>\S+)")
_APP_LINE = re.compile(r"^[A-Za-z_][\w.]*$")
_LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\b")
# a revision as a tool's `current` prints it: one word, then labels such as "(head)"
_REVISION = re.compile(r"^\s*([\w.:-]+?)\s*(?:\([\w ]+\)\s*)*$")


def parse_revisions(output: str) -> dict[str, str]:
    """What a `current` command printed, as app -> revision.

    Django's showmigrations (plain or --plan): each app's last applied migration, "zero" for an
    app with none. Anything else (alembic, Flask-Migrate): one revision, the last line that is
    one word and its labels (`3f2a1c9b (head)`), labels dropped; no such line means nothing
    applied ("base"). Log lines, and what the app printed as the tool imported it (` * Loaded
    plugin ...`), are not revisions.
    """
    lines = output.splitlines()
    if any(_SHOWN.match(line) for line in lines):
        return _parse_showmigrations(lines)
    found = [
        m[1] for line in lines if not _LOG_LINE.match(line.strip()) and (m := _REVISION.match(line))
    ]
    return {SINGLE: found[-1] if found else BASE}


def _parse_showmigrations(lines: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    app = ""
    for line in lines:
        m = _SHOWN.match(line)
        if m is None:
            if _APP_LINE.match(line):
                app = line.strip()  # the plain form names the app on a line of its own
            continue
        if m["indent"] or "." not in m["name"]:
            owner, name = app, m["name"]
        else:
            owner, _, name = m["name"].partition(".")
        if not owner:
            continue
        out.setdefault(owner, ZERO)
        if m["mark"] == "X":
            out[owner] = name
    return out


def describe_revisions(revisions: Mapping[str, str]) -> str:
    """One line for logs and history: "3f2a1c" or "auth 0012_x, shop 0002_y"."""
    if set(revisions) == {SINGLE}:
        return revisions[SINGLE]
    return ", ".join(f"{app} {rev}" for app, rev in sorted(revisions.items())) or BASE


def describe_change(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """ "a1 -> b2" for one history; for one per app (Django), only the apps that moved, as
    "polls 0001_initial -> 0002_closed": the others would bury the change."""
    if set(before) | set(after) <= {SINGLE}:
        return f"{describe_revisions(before)} -> {describe_revisions(after)}"
    moved = [
        f"{app} {before.get(app, ZERO)} -> {after.get(app, ZERO)}"
        for app in sorted(set(before) | set(after))
        if before.get(app) != after.get(app)
    ]
    return ", ".join(moved) or f"unchanged at {describe_revisions(after)}"


def revision_steps(now: Mapping[str, str], wanted: Mapping[str, str]) -> list[tuple[str, str]]:
    """(app, revision) for each app whose revision differs from wanted's; an app wanted does not
    name had nothing applied then (zero, or base for a single history)."""
    if set(now) | set(wanted) <= {SINGLE}:
        target = wanted.get(SINGLE, BASE)
        return [] if now.get(SINGLE, BASE) == target else [(SINGLE, target)]
    steps = []
    for app in sorted(set(now) | set(wanted)):
        target = wanted.get(app, ZERO)
        if now.get(app, ZERO) != target:
            steps.append((app, target))
    return steps


def fill(argv: Sequence[str], *, target: str, app: str = "") -> list[str]:
    """A `down` command with {target} and {app} filled in, each in its own argv word."""
    return [word.replace("{target}", target).replace("{app}", app) for word in argv]


def pg_options(*, lock_timeout_ms: int, statement_timeout_ms: int) -> str:
    """PGOPTIONS for a libpq-based tool: the same timeouts the SQL engine sets on its session."""
    return f"-c lock_timeout={lock_timeout_ms} -c statement_timeout={statement_timeout_ms}"
