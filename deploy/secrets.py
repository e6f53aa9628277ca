"""A value that never prints: secrets travel as Secret and are unwrapped only where used."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
# A printed piece of a secret at least this long is the secret, as far as a log is concerned: it
# narrows a guess to nothing, and a truncated line (`cut -c1-12`) would otherwise pass.
MIN_PREFIX = 8


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


# A scheme is short: bounded, the pattern stays linear on a long run of letters (an unbounded one
# backtracked over the whole run at every position: a 100,000-character ref took a minute)
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]{0,31}://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I
)


def redact_url(url: str) -> str:
    """Hide the password part of a URL (postgresql://u:pw@h -> postgresql://u:[REDACTED]@h)."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", url)


def derived_forms(value: str) -> list[str]:
    """value and the forms a program commonly prints it in: base64 (standard and url-safe, padded
    or not) and percent-encoding. Each is scrubbed as a whole and by its prefixes."""
    raw = value.encode("utf-8", "surrogatepass")
    forms = [value, quote(value, safe=""), quote_plus(value, safe="")]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(raw).decode("ascii")
        forms += [text, text.rstrip("=")]
    return list(dict.fromkeys(f for f in forms if f))


def _spans(text: str, form: str) -> list[tuple[int, int]]:
    """Where text holds form, or a prefix of it of MIN_PREFIX characters or more (each run as long
    as it matches); a form shorter than that only whole."""
    head = form[:MIN_PREFIX]
    spans = []
    i = text.find(head)
    while i >= 0:
        end = i + len(head)
        while end - i < len(form) and end < len(text) and text[end] == form[end - i]:
            end += 1
        if len(form) >= MIN_PREFIX or end - i == len(form):
            spans.append((i, end))
        i = text.find(head, i + 1)
    return spans


def scrub(text: str, secrets: Iterable[Secret]) -> str:
    """Replace every secret found in text, and its derived forms (derived_forms, and prefixes of
    MIN_PREFIX characters or more); used on captured output before it is shown or stored."""
    forms = {
        form
        for value in {s.reveal() for s in secrets}
        if len(value) >= 4  # shorter is too short to tell from ordinary text
        for form in derived_forms(value)
    }
    # every form's runs found in the text as given, then merged: forms that share a start (the
    # percent-encoded value begins with the value's first characters) are hidden whole
    spans = sorted(span for form in forms for span in _spans(text, form))
    out, at = [], 0
    for begin, end in spans:
        if end <= at:
            continue
        if begin >= at:
            out += [text[at:begin], REDACTED]
        at = end
    text = "".join([*out, text[at:]])
    return redact_url(text)


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
