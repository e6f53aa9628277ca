"""A value that never prints: secrets travel as Secret and are unwrapped only where used."""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"


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


_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I
)


def redact_url(url: str) -> str:
    """Hide the password part of a URL (postgresql://u:pw@h -> postgresql://u:[REDACTED]@h)."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", url)


def scrub(text: str, secrets: list[Secret] | tuple[Secret, ...]) -> str:
    """Replace every secret value found in text; used on captured command output."""
    for s in secrets:
        value = s.reveal()
        if value and len(value) >= 4:
            text = text.replace(value, REDACTED)
    return redact_url(text)
