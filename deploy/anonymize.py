"""Anonymization rules from stageflow.toml, the SQL that applies them, and the check that proves it.

[anonymize] allow_raw (default false) and one [anonymize.<table>] table per table, column = method:
  hash  a salted sha256 token ("anon:" + 16 hex). The salt is random per run and never stored, so
        equal values stay equal inside one refresh (grouping and joins still work) but cannot be
        looked up in a dictionary of guesses, and differ between refreshes.
  fake  plausible filler words derived from the same salted hash (same shape of data, no meaning)
  null  NULL (refused on a NOT NULL column)
  keep  copied as is; stating it is how a column is declared safe
The tables and columns are the service's own; stageflow assumes none. With no [anonymize.<table>]
at all there is no rule, so any text-like column refuses the refresh.
Fail closed: a text-like column of a restored table that no rule names refuses the refresh, and so
does a rule naming a table or column the database does not have (a typo would copy data raw).
Both are checked against the source's schema before anything is copied, and again, exactly, on the
restored copy before a value is rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from deploy.errors import ConfigError, GuardRefused

METHODS = ("hash", "fake", "null", "keep")
CHANGING = ("hash", "fake", "null")
# the migration ledger is the tool's own bookkeeping, copied as is so the schema stays in step
IGNORED_TABLES = frozenset({"stageflow_migrations"})
TEXT_TYPES = frozenset({"text", "character varying", "character", "citext"})
# types whose values may carry personal data but that hash/fake cannot produce
OPAQUE_TYPES = frozenset({"json", "jsonb", "bytea", "xml", "ARRAY", "USER-DEFINED"})
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
REF_TABLE = "stageflow_anon_reference"
_FAKE_WORDS = (
    "alpha", "amber", "anchor", "apple", "arrow", "autumn", "basil", "beacon", "birch", "bloom",
    "breeze", "cedar", "cobalt", "comet", "coral", "crimson", "delta", "ember", "falcon", "fern",
    "garnet", "harbor", "indigo", "ivory", "jasper", "juniper", "lagoon", "lantern", "maple",
    "meadow", "nimbus", "orchid", "pebble", "quartz", "raven", "saffron", "sierra", "summit",
    "tundra", "willow",
)  # fmt: skip


@dataclass(frozen=True)
class Rules:
    """The parsed [anonymize] section: table -> column -> method."""

    tables: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    allow_raw: bool = False

    def changing(self) -> list[tuple[str, str, str]]:
        """(table, column, method) for every column a refresh rewrites."""
        return [
            (t, c, m)
            for t, cols in sorted(self.tables.items())
            for c, m in sorted(cols.items())
            if m in CHANGING
        ]


@dataclass(frozen=True)
class Column:
    table: str
    name: str
    data_type: str
    nullable: bool = True
    max_length: int | None = None


def load_rules(policy: Mapping[str, Any]) -> Rules:
    """Parse the [anonymize] section of stageflow.toml (no table named: no rule at all)."""
    where = "stageflow.toml [anonymize]"
    section = policy.get("anonymize", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a table")
    allow_raw = section.get("allow_raw", False)
    if not isinstance(allow_raw, bool):
        raise ConfigError(f"{where} allow_raw must be true or false")
    tables: dict[str, dict[str, str]] = {}
    for table, cols in section.items():
        if table == "allow_raw":
            continue
        if not isinstance(cols, dict):
            raise ConfigError(
                f"{where} unknown key {table!r}",
                hint='name a table as [anonymize.<table>] with column = "hash|fake|null|keep"',
            )
        if not _IDENT.match(table):
            raise ConfigError(f"{where}: {table!r} is not a plain lowercase table name")
        tables[table] = {}
        for col, method in cols.items():
            if not _IDENT.match(col):
                raise ConfigError(f"[anonymize.{table}] {col!r} is not a plain column name")
            if method not in METHODS:
                raise ConfigError(
                    f"[anonymize.{table}] {col} = {method!r} is not a method",
                    hint=f"use one of: {', '.join(METHODS)}",
                )
            tables[table][col] = method
    return Rules(tables=tables, allow_raw=allow_raw)


def _by_table(columns: Iterable[Column]) -> dict[str, dict[str, Column]]:
    out: dict[str, dict[str, Column]] = {}
    for col in columns:
        out.setdefault(col.table, {})[col.name] = col
    return out


def problems(
    rules: Rules, columns: Iterable[Column], *, known: Iterable[Column] | None = None
) -> list[str]:
    """Pure: everything that stops rules from covering this schema (empty when they do).

    Every text-like column of `columns` needs a rule; every rule must name a table and column of
    `known` (default: `columns`), which may hold more (the other side of a refresh).
    """
    by_table = _by_table(columns)
    named_here = by_table if known is None else _by_table(known)
    out: list[str] = []
    for table, cols in sorted(rules.tables.items()):
        if table not in named_here:
            out.append(f"[anonymize.{table}] names a table the database does not have")
            continue
        for name, method in sorted(cols.items()):
            col = named_here[table].get(name)
            if col is None:
                out.append(f"[anonymize.{table}] {name}: no such column")
            elif method in ("hash", "fake") and col.data_type not in TEXT_TYPES:
                out.append(
                    f"[anonymize.{table}] {name} is {col.data_type}: {method} works on text"
                    " columns only (use null or keep)"
                )
            elif method == "null" and not col.nullable:
                out.append(f"[anonymize.{table}] {name} is NOT NULL: use hash or fake")
    for table, cols in sorted(by_table.items()):
        if table in IGNORED_TABLES:
            continue
        named = rules.tables.get(table, {})
        for name, col in sorted(cols.items()):
            sensitive = col.data_type in TEXT_TYPES or col.data_type in OPAQUE_TYPES
            if sensitive and name not in named:
                out.append(
                    f"{table}.{name} ({col.data_type}) has no rule: add {name} = "
                    f'"hash", "fake", "null" or "keep" to [anonymize.{table}]'
                )
    return out


def require_coverage(
    rules: Rules, columns: Iterable[Column], *, known: Iterable[Column] | None = None
) -> None:
    found = problems(rules, columns, known=known)
    if found:
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        raise GuardRefused(
            f"anonymization rules do not cover the data: {found[0]}{more}",
            hint="fix [anonymize] in stageflow.toml; staging was not touched",
        )


def _fake_function() -> sql.Composed:
    words = sql.SQL(", ").join(sql.Literal(w) for w in _FAKE_WORDS)
    n = len(_FAKE_WORDS)
    picks = sql.SQL(", ").join(
        sql.SQL("w[1 + get_byte(h, {}) % {}]").format(sql.Literal(i), sql.Literal(n))
        for i in range(8)
    )
    # 3 to 8 words, picked by bytes of the salted hash: a filler sentence of a plausible length.
    # plpgsql, not sql: a sql function this shape is not inlined, and its per-call start-up
    # costs three times as much as plpgsql's cached plan.
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION pg_temp.stageflow_fake(h bytea) RETURNS text"
        " LANGUAGE plpgsql IMMUTABLE STRICT AS $fn$"
        " DECLARE w text[] := ARRAY[{words}];"
        " BEGIN RETURN array_to_string((ARRAY[{picks}])[1:3 + get_byte(h, 31) % 6], ' '); END"
        " $fn$"
    ).format(picks=picks, words=words)


def _salted(col: sql.Composable, tag: str) -> sql.Composed:
    return sql.SQL("sha256(convert_to({} || {} || {}::text, 'UTF8'))").format(
        sql.Placeholder("salt"), sql.Literal(tag), col
    )


def column_expression(method: str, col: Column) -> sql.Composable:
    """The SQL value a column is set to; %(salt)s is the run's secret salt."""
    ident = sql.Identifier(col.name)
    if method == "null":
        return sql.NULL
    if method == "hash":
        expr: sql.Composable = sql.SQL("'anon:' || left(encode({}, 'hex'), 16)").format(
            _salted(ident, "h")
        )
    elif method == "fake":
        expr = sql.SQL("pg_temp.stageflow_fake({})").format(_salted(ident, "f"))
    else:
        raise ValueError(f"{method} changes nothing")
    if col.max_length:
        expr = sql.SQL("left({}, {})").format(expr, sql.Literal(col.max_length))
    return expr


def update_statement(
    table: str, methods: Mapping[str, str], columns: Mapping[str, Column]
) -> sql.Composed | None:
    """One UPDATE per table setting every changing column (None when all are kept)."""
    sets = [
        sql.SQL("{} = {}").format(sql.Identifier(c), column_expression(m, columns[c]))
        for c, m in sorted(methods.items())
        if m in CHANGING
    ]
    if not sets:
        return None
    return sql.SQL("UPDATE {} SET {}").format(sql.Identifier(table), sql.SQL(", ").join(sets))


def read_columns(conn: Any) -> list[Column]:
    rows = conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable = 'YES', character_maximum_length"
        " FROM information_schema.columns c"
        " JOIN information_schema.tables t USING (table_schema, table_name)"
        " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
        " ORDER BY table_name, ordinal_position"
    ).fetchall()
    return [Column(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]


def table_counts(conn: Any) -> dict[str, int]:
    tables = conn.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1"
    ).fetchall()
    return {
        t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
        for (t,) in tables
    }


def _digest(col: str) -> sql.Composed:
    return sql.SQL("sha256(convert_to({}::text, 'UTF8'))").format(sql.Identifier(col))


def reference_query(table: str, col: str) -> sql.Composed:
    """Digests of every distinct value of a column: what a leak check compares against."""
    return sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} IS NOT NULL").format(
        _digest(col), sql.Identifier(table), sql.Identifier(col)
    )


def start_reference(conn: Any, rules: Rules) -> None:
    """Record the digests of the values about to be rewritten (the restored copy, before anything)."""
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} (tbl text, col text, digest bytea)").format(
            sql.Identifier(REF_TABLE)
        )
    )
    for table, col, method in rules.changing():
        if method == "null":
            continue
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT {}, {}, d FROM ({}) AS s(d)").format(
                sql.Identifier(REF_TABLE), sql.Literal(table), sql.Literal(col),
                reference_query(table, col),
            )
        )  # fmt: skip


def add_reference(conn: Any, source_conn: Any, rules: Rules) -> int:
    """Copy the source's live digests (read-only queries there) into the reference table."""
    copied = 0
    for table, col, method in rules.changing():
        if method == "null":
            continue
        query = sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(reference_query(table, col))
        target = sql.SQL("COPY {} (digest) FROM STDIN (FORMAT binary)").format(
            sql.Identifier(REF_TABLE + "_in")
        )
        conn.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (digest bytea)").format(
                sql.Identifier(REF_TABLE + "_in")
            )
        )
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(REF_TABLE + "_in")))
        with source_conn.cursor().copy(query) as out, conn.cursor().copy(target) as into:
            for chunk in out:
                into.write(chunk)
        copied += conn.execute(
            sql.SQL("INSERT INTO {} SELECT {}, {}, digest FROM {}").format(
                sql.Identifier(REF_TABLE), sql.Literal(table), sql.Literal(col),
                sql.Identifier(REF_TABLE + "_in"),
            )
        ).rowcount  # fmt: skip
    return copied


def apply(conn: Any, rules: Rules, *, salt: str) -> dict[str, int]:
    """Rewrite every changing column; returns rows updated per table. The caller owns the transaction."""
    columns = read_columns(conn)
    require_coverage(rules, columns)
    by_name = {(c.table, c.name): c for c in columns}
    conn.execute(_fake_function())
    updated: dict[str, int] = {}
    for table, methods in sorted(rules.tables.items()):
        stmt = update_statement(table, methods, {c: by_name[(table, c)] for c in methods})
        if stmt is not None:
            updated[table] = conn.execute(stmt, {"salt": salt}).rowcount
    return updated


def leaks(conn: Any, rules: Rules) -> dict[str, int]:
    """table.column -> how many of its values still equal an original (or are not NULL for null)."""
    out: dict[str, int] = {}
    for table, col, method in rules.changing():
        if method == "null":
            query = sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL").format(
                sql.Identifier(table), sql.Identifier(col)
            )
            row = conn.execute(query).fetchone()
        else:
            query = sql.SQL(
                "SELECT count(*) FROM {} WHERE {} IN (SELECT digest FROM {} WHERE tbl = %s AND col = %s)"
            ).format(sql.Identifier(table), _digest(col), sql.Identifier(REF_TABLE))
            row = conn.execute(query, (table, col)).fetchone()
        out[f"{table}.{col}"] = int(row[0]) if row else 0
    return out


def require_no_leaks(found: Mapping[str, int]) -> None:
    bad = {k: v for k, v in found.items() if v}
    if bad:
        first = next(iter(bad))
        raise GuardRefused(
            f"anonymization check failed: {bad[first]} value(s) of {first} equal a source value",
            hint="staging was not touched; report this rule to the team",
        )
