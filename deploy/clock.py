"""Where the engine's time-based rules get the time: a clock is passed in, never read in the rule."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

# A clock answers "now" as a timezone-aware UTC datetime. Rules take the answer (`now`), callers
# take a clock (default: the system's), so a test decides the time by passing a value.
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The machine's time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(now: datetime) -> datetime:
    """now in UTC; a naive datetime is refused, since it would be read in the machine's zone."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{now.isoformat()} has no timezone: a rule's `now` must be aware")
    return now.astimezone(UTC)


def from_epoch(seconds: float) -> datetime:
    """A stored epoch timestamp (lock holders, approvals) as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def stamp(at: datetime) -> str:
    """The records' timestamp text: UTC to the second, `Z` suffix."""
    return as_utc(at).strftime("%Y-%m-%dT%H:%M:%SZ")
