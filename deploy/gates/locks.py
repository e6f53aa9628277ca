"""What a migration's statements lock, measured on the rehearsal copy, and the lint of the ones that hurt a live service.

squawk reads SQL text; it cannot know that `CREATE INDEX` on a table of ten rows is harmless and on
one of ten million stops every write for minutes. So each pending statement is also run on the
scratch copy inside one transaction (rolled back afterwards): its time, and every lock it took on a
table that existed before, held until that transaction's end, as a deploy would hold it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import ConfigError, MigrationError
from deploy.gates import GateContext, first_lines, run_command

# Lock modes that stop the service's reads or writes on the table while held; the weaker ones
# (AccessShare, RowShare, RowExclusive, ShareUpdateExclusive) let DML through.
BLOCKING_MODES = frozenset(
    {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
)
DEFAULT_MAX_LOCK_S = 5.0  # as long as the engine's own lock_timeout: clients waiting longer fail
DEFAULT_LARGE_TABLE_ROWS = 100_000
# squawk reports nearly everything as a warning; these rules break running clients, so they block.
DEFAULT_BLOCKING_RULES = (
    "ban-drop-database",
    "adding-required-field",
    "changing-column-type",
    "renaming-column",
    "renaming-table",
    "adding-not-nullable-field",
)
_USER = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%%'"
_NAME = r'((?:"[^"]+"|[\w$]+)(?:\s*\.\s*(?:"[^"]+"|[\w$]+))?)'
_TABLE = re.compile(
    r"^\s*(?:ALTER\s+TABLE(?:\s+IF\s+EXISTS)?(?:\s+ONLY)?|LOCK(?:\s+TABLE)?(?:\s+ONLY)?"
    r"|VACUUM\s+FULL|CLUSTER)\s+" + _NAME,
    re.IGNORECASE,
)
_INDEX_ON = re.compile(r"\bON\s+(?:ONLY\s+)?" + _NAME, re.IGNORECASE)
_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("lock-table", re.compile(r"^\s*LOCK\b", re.I), "takes an explicit table lock"),
    (
        "table-rewrite",
        re.compile(
            r"^\s*ALTER\s+TABLE\b.*?\b(ALTER\s+(COLUMN\s+)?\S+\s+(SET\s+DATA\s+)?TYPE\b"
            r"|SET\s+TABLESPACE\b|SET\s+(UN)?LOGGED\b|ADD\s+(COLUMN\s+)?.*\bGENERATED\s+ALWAYS\s+AS\s*\(.*\)\s*STORED"
            r"|ADD\s+(COLUMN\s+)?.*\bDEFAULT\s+(random|clock_timestamp|gen_random_uuid|uuid_generate_v\d)\s*\()",
            re.I | re.S,
        ),
        "rewrites the whole table under an ACCESS EXCLUSIVE lock",
    ),
    (
        "table-rewrite",
        re.compile(r"^\s*(VACUUM\s+FULL|CLUSTER)\b", re.I),
        "rewrites the whole table under an ACCESS EXCLUSIVE lock",
    ),
    (
        "index-without-concurrently",
        re.compile(
            r"^\s*(CREATE\s+(UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY)"
            r"|ALTER\s+TABLE\b.*\bADD\s+(CONSTRAINT\s+\S+\s+)?(PRIMARY\s+KEY|UNIQUE)\s*\()",
            re.I | re.S,
        ),
        "builds an index while blocking writes (use CREATE INDEX CONCURRENTLY)",
    ),
)


@dataclass(frozen=True)
class TableSize:
    rows: int
    bytes: int


def table_sizes(conn: Any) -> dict[str, TableSize]:
    """Every user table's estimated rows and size, from the catalog alone (a read of pg_class,
    never of the tables), keyed by bare and schema-qualified name."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname, GREATEST(c.reltuples, 0)::bigint, pg_relation_size(c.oid) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind IN ('r', 'p') AND {_USER}"
    ).fetchall()
    out: dict[str, TableSize] = {}
    for schema, name, n, size in rows:
        out[f"{schema}.{name}"] = out.setdefault(name, TableSize(int(n), int(size)))
    return out


def _bare(name: str) -> str:
    return re.sub(r"\s+", "", name).replace('"', "")


def statement_table(sql: str) -> str:
    """The table a statement works on, as written (schema kept), or '' when it names none."""
    m = _TABLE.match(sql)
    if m is None and re.match(r"^\s*CREATE\s+(UNIQUE\s+)?INDEX\b", sql, re.I):
        m = _INDEX_ON.search(sql)
    return _bare(m.group(1)) if m else ""


def short(sql: str, limit: int = 160) -> str:
    one = " ".join(sql.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def profile(conn: Any, statements: Sequence[str], *, source: str) -> list[dict[str, Any]]:
    """Run statements in one transaction on the scratch copy and roll it back: per statement its
    seconds and the blocking locks held after it on tables that existed before, each with how
    long it was held (from the start of the statement that took it to the transaction's end)."""
    before = {r[0] for r in conn.execute(_OIDS).fetchall()}
    since: dict[tuple[str, str], int] = {}  # (table, mode) -> the statement that took it
    rows: list[dict[str, Any]] = []
    starts: list[float] = []
    conn.execute("BEGIN")
    try:
        for i, stmt in enumerate(statements):
            start = time.monotonic()
            try:
                conn.execute(stmt)
            except Exception as exc:  # psycopg's errors: the rehearsal's verdict on this statement
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise MigrationError(
                    f"rehearsal of {source} failed at statement {i + 1} ({short(stmt, 80)}): {first}"
                ) from None
            starts.append(start)
            held = sorted(
                (rel, mode)
                for oid, rel, mode in conn.execute(_HELD).fetchall()
                if oid in before and mode in BLOCKING_MODES
            )
            for key in held:
                since.setdefault(key, i)
            rows.append(
                {
                    "statement": short(stmt),
                    "seconds": round(time.monotonic() - start, 4),
                    "locks": [{"table": t, "mode": m} for t, m in held],
                }
            )
        end = time.monotonic()
    finally:
        conn.execute("ROLLBACK")
    # a lock is held from the statement that took it to the end of the transaction
    for row in rows:
        for lock in row["locks"]:
            lock["held_s"] = round(end - starts[since[(lock["table"], lock["mode"])]], 4)
    return rows


_OIDS = (
    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind IN ('r', 'p', 'm') AND {_USER}"
)
_HELD = (
    "SELECT l.relation, n.nspname || '.' || c.relname, l.mode FROM pg_locks l "
    "JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE l.pid = pg_backend_pid() AND l.granted AND l.locktype = 'relation'"
)


def lint(
    statements: Sequence[tuple[str, str]],
    measured: Mapping[str, Mapping[str, Any]],
    sizes: Mapping[str, TableSize],
    *,
    max_lock_s: float = DEFAULT_MAX_LOCK_S,
    large_rows: int = DEFAULT_LARGE_TABLE_ROWS,
) -> tuple[list[str], list[str]]:
    """(blocking, warnings) for statements that take long locks, each "source: rule: statement:
    what it does; measured ...". statements are (source, sql); measured maps a statement's short
    form to its profile row. An index built without CONCURRENTLY blocks on a large table only;
    every other rule blocks when the rehearsal held its lock max_lock_s or longer."""
    blocking: list[str] = []
    warnings: list[str] = []
    for source, sql in statements:
        table = statement_table(sql)
        size = sizes.get(table) or sizes.get(table.rsplit(".", 1)[-1])
        row = measured.get(short(sql))
        held = max((lk["held_s"] for lk in (row or {}).get("locks", [])), default=None)
        for rule, pattern, what in _RULES:
            if not pattern.match(sql):
                continue
            if rule == "index-without-concurrently" and (size is None or size.rows < large_rows):
                break  # a small (or new) table: the index is built before anyone notices
            seen = (
                f"; held {row['locks'][0]['mode']} for {held:.3f}s in the rehearsal"
                if row and held is not None and row["locks"]
                else ""
            )
            rows = f" ({size.rows} rows)" if size else ""
            line = f"{source}: {rule}: {short(sql, 80)}: {what} on {table or '?'}{rows}{seen}"
            big = rule == "index-without-concurrently" or (held is not None and held >= max_lock_s)
            (blocking if big else warnings).append(line)
            break
    return blocking, warnings


def number(ctx: GateContext, key: str, default: float) -> float:
    value = ctx.config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"[gates.migrations] {key} must be a number >= 0")
    return float(value)


def squawk_lint(ctx: GateContext, files: list[Path]) -> tuple[list[str], list[str]]:
    """squawk on SQL files: (blocking, warnings), each 'file:line: rule: message'."""
    if not files:
        return [], []
    done = run_command(
        [ctx.bin("squawk"), "--reporter", "json", *[str(f) for f in files]],
        cwd=ctx.tree,
        timeout_s=ctx.timeout_s,
        tool_hint="it lints the migrations: pip install squawk-cli, then approve it for the deps gate",
    )
    try:
        findings = json.loads(done.stdout or "[]")
    except ValueError:
        raise MigrationError(
            f"squawk exited {done.exit_code} without a JSON report: "
            f"{(done.lines() or ['no output'])[-1]}"
        ) from None
    rules = set(ctx.config.get("blocking_rules", DEFAULT_BLOCKING_RULES))
    blocking, warnings = [], []
    for f in findings:
        line = f"{Path(f.get('file', '?')).name}:{int(f.get('line', 0)) + 1}: {f.get('rule_name')}: {f.get('message')}"
        (blocking if f.get("level") == "Error" or f.get("rule_name") in rules else warnings).append(
            line
        )
    return blocking, warnings


def lock_lint(
    ctx: GateContext,
    statements: list[tuple[str, str]],
    measured: Mapping[str, Mapping[str, Any]],
    sizes: Mapping[str, TableSize],
    details: dict[str, Any],
) -> list[str]:
    """The long-lock findings into details; the blocking ones returned."""
    blocking, warnings = lint(
        statements,
        measured,
        sizes,
        max_lock_s=number(ctx, "max_lock_s", DEFAULT_MAX_LOCK_S),
        large_rows=int(number(ctx, "large_table_rows", DEFAULT_LARGE_TABLE_ROWS)),
    )
    details["lock_blocking"] = first_lines(blocking, 20)
    details["lock_warnings"] = first_lines(warnings, 20)
    return blocking
