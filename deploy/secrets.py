"""A value that never prints: secrets travel as Secret and are unwrapped only where used."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from deploy.redact import MIN_PREFIX, REDACTED, derived_forms, hide, redact_url

__all__ = [
    "MIN_PREFIX",
    "REDACTED",
    "Secret",
    "derived_forms",
    "redact_url",
    "scrub",
    "scrub_value",
]


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def scrub(text: str, secrets: Iterable[Secret]) -> str:
    """Replace every secret found in text, and its derived forms (derived_forms, however they
    are escaped, and runs of MIN_PREFIX characters or more of them); used on captured output
    before it is shown or stored."""
    return hide(text, (s.reveal() for s in secrets))


def scrub_value(value: Any, secrets: Iterable[Secret]) -> Any:
    """value with scrub applied to every string in it, keys included (dicts, lists and tuples
    walked): a structure is scrubbed before it is encoded, so an escaped form (JSON's \\uXXXX
    of a non-ASCII secret, a Markdown table's escaped bar) never slips past."""
    hidden = tuple(secrets)
    if not hidden:
        return value
    if isinstance(value, str):
        return scrub(value, hidden)
    if isinstance(value, dict):
        return {scrub_value(k, hidden): scrub_value(v, hidden) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub_value(v, hidden) for v in value)
    return value
