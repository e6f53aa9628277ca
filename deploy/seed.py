"""Deterministic test data for non-production environments, loaded with COPY through the app's schema.

Seed rows are marked by their author: every one starts with SEED_MARK ("seed:"). Seeding again
deletes exactly those rows and loads the same set anew in one transaction, so rows that people or
smoke probes wrote (no author, or any other author) are never touched.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from deploy.config import EnvConfig
from deploy.errors import GuardRefused, ServiceError, UsageError
from deploy.secrets import Secret

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


@dataclass(frozen=True)
class SeedResult:
    env: str
    size: str
    deleted: int
    inserted: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.inserted / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "size": self.size,
            "deleted": self.deleted,
            "inserted": self.inserted,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_per_s),
        }


def size_rows(size: str) -> int:
    if size not in SIZES:
        raise UsageError(f"unknown seed size {size!r}", hint=f"use one of: {', '.join(SIZES)}")
    return SIZES[size]


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


def connect(env: EnvConfig) -> Any:
    """A connection as the environment's app role (DATABASE_URL + POSTGRES_PASSWORD)."""
    return _connect(env.database_url, env.secret("POSTGRES_PASSWORD"))


def _connect(conninfo: str, password: Secret | None) -> Any:
    import psycopg

    kwargs: dict[str, Any] = {"connect_timeout": 10, "application_name": "stageflow-seed"}
    if password is not None:
        kwargs["password"] = password.reveal()
    try:
        return psycopg.connect(conninfo, **kwargs)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["connection failed"])[0]
        if password is not None:
            first = first.replace(password.reveal(), "[REDACTED]")
        raise ServiceError(
            f"cannot connect to the database: {first}",
            hint="start it with `inv <env>.up` and migrate with `inv <env>.migrate`",
        ) from None


def load(conninfo: str, count: int, *, password: Secret | None = None) -> tuple[int, int]:
    """Replace the seed rows with count fresh ones in one transaction; returns (deleted, inserted)."""
    import psycopg

    with _connect(conninfo, password) as conn:
        has_author = conn.execute(
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'notes'"
            " AND column_name = 'author'"
        ).fetchone()
        if not has_author:
            raise ServiceError(
                "the notes table is missing or has no author column",
                hint="apply the migrations first: `inv <env>.migrate`",
            )
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
            first = (str(exc).strip().splitlines() or ["error"])[0]
            raise ServiceError(f"seeding failed: {first}", hint="nothing was changed") from None
    return deleted, inserted


def seed(env: EnvConfig, *, size: str = "small") -> SeedResult:
    """Seed a non-production environment's notes; production is refused whatever the caller."""
    if env.environment == "production":
        raise GuardRefused(
            f"{env.name} is production: seed data is never written there",
            hint="seed staging or dev; prod data reaches staging only through refresh --anonymize",
        )
    count = size_rows(size)
    start = time.perf_counter()
    deleted, inserted = load(env.database_url, count, password=env.secret("POSTGRES_PASSWORD"))
    return SeedResult(env.name, size, deleted, inserted, time.perf_counter() - start)


def count_seed_rows(conninfo: str, *, password: Secret | None = None) -> int:
    """How many seed rows the database holds now (0 when notes or its author column is missing)."""
    import psycopg

    with _connect(conninfo, password) as conn:
        try:
            row = conn.execute(
                "SELECT count(*) FROM notes WHERE starts_with(author, %s)", (SEED_MARK,)
            ).fetchone()
        except psycopg.Error:
            return 0
    return int(row[0]) if row else 0
