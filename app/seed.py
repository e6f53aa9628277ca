"""The reference service's seed command: deterministic notes for a non-production environment.

    python -m app.seed --size small|medium|large

stageflow runs it as `[service] seed` with the service's settings in the environment
(DATABASE_URL carries the password). Seed rows are marked by their author: every one starts with
SEED_MARK ("seed:"). Seeding again deletes exactly those rows and loads the same set anew with COPY
in one transaction, so rows that people or smoke probes wrote are never touched. The last line
printed is a JSON object: {"deleted": n, "inserted": n, "seconds": s, "rows_per_s": r}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import psycopg

SIZES: dict[str, int] = {"small": 10_000, "medium": 100_000, "large": 1_000_000}
SEED_MARK = "seed:"
RANDOM_SEED = 20260401  # fixed: the same size always yields the same rows
# created_at is spread over the year before this instant (fixed, so the data never drifts with "now")
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
COPY_SQL = "COPY notes (body, created_at, author) FROM STDIN"

_FIRST = (
    "ada", "alan", "barbara", "claude", "donald", "edsger", "frances", "grace", "hedy", "ivan",
    "jean", "ken", "linus", "margaret", "niklaus", "radia", "sophie", "tim", "ursula", "yukihiro",
)  # fmt: skip
_LAST = (
    "lovelace", "turing", "liskov", "shannon", "knuth", "dijkstra", "allen", "hopper", "lamarr",
    "sutherland", "sammet", "thompson", "torvalds", "hamilton", "wirth", "perlman", "wilson",
    "berners-lee", "franklin", "matsumoto",
)  # fmt: skip
_OPENERS = (
    "Remember to", "Todo:", "Note:", "Idea:", "Follow up:", "Ask the team to", "Don't forget to",
    "Check whether we can", "Meeting notes -", "Reminder:",
)  # fmt: skip
_VERBS = (
    "review", "update", "deploy", "measure", "document", "rename", "archive", "benchmark",
    "refactor", "test", "migrate", "back up", "rotate", "monitor", "plan",
)  # fmt: skip
_OBJECTS = (
    "the release notes", "the staging database", "the login page", "the invoice export",
    "the onboarding email", "the API keys", "the dashboard", "the search index",
    "the quarterly report", "the on-call rota", "the payment webhook", "the cache settings",
    "the error budget", "the signup form", "the mobile layout",
)  # fmt: skip
_TAILS = (
    "", "", "", " before Friday.", " next sprint.", " with Sam.", " (blocked on review).",
    " - see ticket.", " asap!", " after the freeze.", " and tell support.",
)  # fmt: skip


class SeedFailed(Exception):
    """What went wrong, in one line (never a connection string)."""


def rows(count: int, *, seed: int = RANDOM_SEED) -> Iterator[tuple[str, datetime, str]]:
    """(body, created_at, author) for count notes; the same count and seed give the same rows."""
    rnd = random.Random(seed)
    span_s = 365 * 24 * 3600
    authors = [f"{SEED_MARK}{f}.{last}" for f in _FIRST for last in _LAST]
    for _ in range(count):
        body = (
            f"{rnd.choice(_OPENERS)} {rnd.choice(_VERBS)} {rnd.choice(_OBJECTS)}"
            f"{rnd.choice(_TAILS)}"
        )
        created = EPOCH - timedelta(seconds=rnd.randrange(span_s))
        # a few authors write most notes, as in real data
        author = authors[min(int(rnd.paretovariate(1.2)) - 1, len(authors) - 1)]
        yield body, created, author


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


def load(conninfo: str, count: int) -> tuple[int, int]:
    """Replace the seed rows with count fresh ones in one transaction; returns (deleted, inserted)."""
    try:
        conn = psycopg.connect(conninfo, connect_timeout=10, application_name="notes-seed")
    except psycopg.Error as exc:
        raise SeedFailed(f"cannot connect to the database: {_first_line(exc)}") from None
    with conn:
        has_author = conn.execute(
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'notes'"
            " AND column_name = 'author'"
        ).fetchone()
        if not has_author:
            raise SeedFailed("the notes table is missing or has no author column: migrate first")
        try:
            with conn.transaction():
                deleted = conn.execute(
                    "DELETE FROM notes WHERE starts_with(author, %s)", (SEED_MARK,)
                ).rowcount
                inserted = 0
                with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
                    for row in rows(count):
                        copy.write_row(row)
                        inserted += 1
        except psycopg.Error as exc:
            raise SeedFailed(f"seeding failed, nothing was changed: {_first_line(exc)}") from None
    return deleted, inserted


def count_seed_rows(conninfo: str) -> int:
    """How many seed rows the database holds now (0 when notes or its author column is missing)."""
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        try:
            row = conn.execute(
                "SELECT count(*) FROM notes WHERE starts_with(author, %s)", (SEED_MARK,)
            ).fetchone()
        except psycopg.Error:
            return 0
    return int(row[0]) if row else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.seed", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default=os.environ.get("STAGEFLOW_SEED_SIZE", "small"))
    args = parser.parse_args(argv)
    if args.size not in SIZES:
        print(f"unknown seed size {args.size!r}: use one of {', '.join(SIZES)}", file=sys.stderr)
        return 2
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        deleted, inserted = load(url, SIZES[args.size])
    except SeedFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    report = {
        "deleted": deleted,
        "inserted": inserted,
        "seconds": round(seconds, 3),
        "rows_per_s": round(inserted / seconds) if seconds else 0,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
