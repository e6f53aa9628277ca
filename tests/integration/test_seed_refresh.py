"""The reference service's seed and anonymization against a real PostgreSQL: idempotence,
coverage, the leak check."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from app import seed
from deploy import anonymize, migrations
from deploy.errors import GuardRefused
from tests import support
from tests.conftest import fresh_database

MIGRATIONS = Path(support.REPO) / "app" / "migrations"
RULES = anonymize.Rules(tables={"notes": {"body": "fake", "author": "hash"}})
KNOWN = [
    ("call the bank about the mortgage", "alice@example.com"),
    ("alice's phone is 555-0100", "alice@example.com"),
    ("bob's birthday on the 3rd", "bob@example.com"),
    ("no author on this one", None),
    ("", "carol@example.com"),
]


def _migrated(dsn: str) -> str:
    migrations.migrate(dsn, migrations.discover(MIGRATIONS), applied_by="test")
    return dsn


def _fingerprint(conn: psycopg.Connection, where: str = "true") -> str:
    row = conn.execute(
        "SELECT md5(coalesce(string_agg(body || '|' || coalesce(author, '-') || '|' ||"
        f" created_at::text, E'\\n' ORDER BY body, author, created_at), '')) FROM notes WHERE {where}"
    ).fetchone()
    return row[0]


def _insert_known(conn: psycopg.Connection) -> None:
    conn.cursor().executemany("INSERT INTO notes (body, author) VALUES (%s, %s)", KNOWN)


@pytest.fixture
def second_db(pg_server):
    with fresh_database(pg_server) as dsn:
        yield dsn


def test_seed_replaces_only_its_own_rows_and_is_deterministic(pg_dsn):
    dsn = _migrated(pg_dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO notes (body, author) VALUES ('a real note', 'dana')")
        conn.execute("INSERT INTO notes (body) VALUES ('no author')")
        others = _fingerprint(conn, "NOT starts_with(coalesce(author, ''), 'seed:')")

    assert seed.load(dsn, 2000) == (0, 2000)
    with psycopg.connect(dsn) as conn:
        first = _fingerprint(conn, "starts_with(author, 'seed:')")
    assert seed.load(dsn, 2000) == (2000, 2000)
    with psycopg.connect(dsn) as conn:
        assert _fingerprint(conn, "starts_with(author, 'seed:')") == first
        assert _fingerprint(conn, "NOT starts_with(coalesce(author, ''), 'seed:')") == others
        assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 2002
        # realistic rather than uniform: several authors, a spread of dates, varied bodies
        authors, bodies, days = conn.execute(
            "SELECT count(DISTINCT author), count(DISTINCT body), count(DISTINCT created_at::date)"
            " FROM notes WHERE starts_with(author, 'seed:')"
        ).fetchone()
    assert authors > 20 and bodies > 500 and days > 200
    assert seed.count_seed_rows(dsn) == 2000


def test_seed_refuses_a_database_without_the_author_column(pg_dsn):
    migrations.migrate(pg_dsn, migrations.discover(MIGRATIONS), target=2, applied_by="test")
    with pytest.raises(Exception, match="author column"):
        seed.load(pg_dsn, 10)


def test_anonymize_rewrites_every_value_and_the_check_finds_none(pg_dsn):
    dsn = _migrated(pg_dsn)
    with psycopg.connect(dsn) as conn:
        _insert_known(conn)
        conn.commit()
        before = conn.execute("SELECT id, body, author FROM notes ORDER BY id").fetchall()
        with conn.transaction():
            anonymize.start_reference(conn, RULES)
            updated = anonymize.apply(conn, RULES, salt="s3")
        assert updated == {"notes": len(KNOWN)}
        assert anonymize.leaks(conn, RULES) == {"notes.author": 0, "notes.body": 0}
        after = conn.execute("SELECT id, body, author FROM notes ORDER BY id").fetchall()
    originals_body = {b for _, b, _ in before}
    originals_author = {a for _, _, a in before if a}
    assert len(after) == len(before)
    for (i, _body, author), (j, new_body, new_author) in zip(before, after, strict=True):
        assert i == j
        assert new_body not in originals_body and 3 <= len(new_body.split()) <= 8
        if author is None:
            assert new_author is None
        else:
            assert new_author.startswith("anon:") and new_author not in originals_author
    # the same author maps to the same token within one run, so grouping survives
    alice = [a for (_, _, a0), (_, _, a) in zip(before, after, strict=True) if a0 == KNOWN[0][1]]
    assert len(alice) == 2 and alice[0] == alice[1]


def test_the_check_reports_a_value_that_still_equals_the_source(pg_dsn, second_db):
    dsn = _migrated(pg_dsn)
    source = _migrated(second_db)
    with psycopg.connect(source, autocommit=True) as src:
        src.execute("INSERT INTO notes (body, author) VALUES ('only on the source', 'eve')")
    with psycopg.connect(dsn, autocommit=True) as conn:
        _insert_known(conn)
        with conn.transaction():
            anonymize.start_reference(conn, RULES)
            anonymize.apply(conn, RULES, salt="s4")
        # a raw value of the restored copy coming back is caught ...
        conn.execute(
            "UPDATE notes SET body = %s WHERE id = (SELECT min(id) FROM notes)", (KNOWN[1][0],)
        )
        assert anonymize.leaks(conn, RULES)["notes.body"] == 1
        # ... and so is a value only the live source holds, read through a read-only session
        conn.execute("UPDATE notes SET author = 'eve' WHERE id = (SELECT max(id) FROM notes)")
        assert anonymize.leaks(conn, RULES)["notes.author"] == 0
        with psycopg.connect(
            source, autocommit=True, options="-c default_transaction_read_only=on"
        ) as src:
            assert anonymize.add_reference(conn, src, RULES) == 2
        found = anonymize.leaks(conn, RULES)
        assert found == {"notes.author": 1, "notes.body": 1}
        with pytest.raises(GuardRefused, match="notes.author"):
            anonymize.require_no_leaks(found)


def test_apply_refuses_a_text_column_without_a_rule(pg_dsn):
    dsn = _migrated(pg_dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, email text)")
        conn.execute("INSERT INTO customers VALUES (1, 'x@example.com')")
        conn.commit()
        with pytest.raises(GuardRefused, match=r"customers.email \(text\) has no rule"):
            anonymize.apply(conn, RULES, salt="s5")
        conn.rollback()
        null_rule = anonymize.Rules(tables={**RULES.tables, "customers": {"email": "null"}})
        anonymize.start_reference(conn, null_rule)
        assert anonymize.apply(conn, null_rule, salt="s5") == {"customers": 1, "notes": 0}
        assert anonymize.leaks(conn, null_rule)["customers.email"] == 0
