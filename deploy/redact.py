"""Secrets hidden in text: the matching itself, standard library only, so the launcher shipped into
every release (which writes the service's logs) hides them exactly as the engine does."""

from __future__ import annotations

import base64
import bisect
import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
# A printed piece of a secret at least this long is the secret, as far as a log is concerned: it
# narrows a guess to nothing, and a truncated line (`cut -c1-12`) would otherwise pass.
MIN_PREFIX = 8
_ANCHOR = MIN_PREFIX // 2  # a run of MIN_PREFIX holds an aligned piece this long


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
    or not). Escaped forms of each (percent-encoding, a backslash, an HTML entity) are matched
    by reading the text's escapes (_readable), not listed here."""
    raw = value.encode("utf-8", "surrogatepass")
    forms = [value]
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(raw).decode("ascii")
        forms += [text, text.rstrip("=")]
    return list(dict.fromkeys(f for f in forms if f))


# How programs escape a character when they print it: percent-encoding (either case, a run of
# bytes), JSON's and repr's backslash escapes, HTML entities, a shell's quoting; and a line break
# with its indent where a long line was wrapped. Each is read back to what it stands for before
# matching.
_ESCAPE = re.compile(
    r"(?P<pct>(?:%[0-9A-Fa-f]{2})+)"
    r"|(?P<uni>(?:\\u[0-9A-Fa-f]{4})+)"
    r"|(?P<hex>(?:\\x[0-9A-Fa-f]{2})+)"
    r"|\\(?P<char>[\\'\"/])"
    r"|&(?P<entity>#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|quot|amp|apos|lt|gt);"
    r"|(?P<quote>'\"'\"'|'\\'')"  # a single quote inside a shell's single-quoted word
    r"|(?P<wrap>\r?\n[ \t]*)"
)
_ENTITIES = {"quot": '"', "amp": "&", "apos": "'", "lt": "<", "gt": ">"}
# '+' stands for a space in a form's query-string encoding: both read as one character
_PLUS_IS_SPACE = str.maketrans("+", " ")


def _unescape(m: re.Match[str]) -> str:
    kind, text = m.lastgroup, m.group(m.lastgroup or 0)
    if kind == "pct":
        return bytes.fromhex(text.replace("%", "")).decode("utf-8", "replace")
    if kind == "uni":
        units = "".join(chr(int(text[i + 2 : i + 6], 16)) for i in range(0, len(text), 6))
        return units.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if kind == "hex":
        raw = bytes.fromhex(text.replace("\\x", ""))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    if kind == "entity":
        if text[0] != "#":
            return _ENTITIES[text]
        code = int(text[2:], 16) if text[1] in "xX" else int(text[1:])
        return chr(code) if code < 0x110000 else "\ufffd"
    if kind == "quote":
        return "'"
    return "" if kind == "wrap" else text


class _Readable:
    """text with its escapes read back (_ESCAPE), and the way back from a position in that
    reading to a position in text: a span that touches an escape covers all of it."""

    def __init__(self, text: str) -> None:
        pieces: list[str] = []
        # (position in the reading, position in text, length in text, verbatim or escape)
        self._marks: list[tuple[int, int, int, bool]] = []
        at = read = 0
        for m in _ESCAPE.finditer(text):
            for piece, start, end, verbatim in (
                (text[at : m.start()], at, m.start(), True),
                (_unescape(m), m.start(), m.end(), False),
            ):
                self._marks.append((read, start, end - start, verbatim))
                pieces.append(piece)
                read += len(piece)
            at = m.end()
        self._marks.append((read, at, len(text) - at, True))
        pieces.append(text[at:])
        self.text = "".join(pieces).translate(_PLUS_IS_SPACE)
        self._starts = [mark[0] for mark in self._marks]

    def origin(self, pos: int, *, end: bool) -> int:
        """Where the reading's position pos comes from in text (a span's end when end)."""
        i = bisect.bisect_right(self._starts, pos if not end else pos - 1) - 1
        read, start, length, verbatim = self._marks[max(i, 0)]
        if verbatim:
            return start + (pos - read)
        return start + length if end else start


def _spans(text: str, form: str) -> list[tuple[int, int]]:
    """Where text holds form, or a run of MIN_PREFIX of its characters or more (a prefix, a
    middle or an end: a log that cuts a value short, or elides its middle, still prints a piece
    that narrows a guess to nothing); a form shorter than that only whole."""
    if len(form) < MIN_PREFIX:
        return [(i, i + len(form)) for i in _find_all(text, form)]
    # every such run holds one of the form's pieces of _ANCHOR characters that start at a
    # multiple of _ANCHOR: each piece found is grown both ways as far as text and form agree
    spans = []
    for k in range(0, len(form) - _ANCHOR + 1, _ANCHOR):
        for i in _find_all(text, form[k : k + _ANCHOR]):
            begin, end = i, i + _ANCHOR
            while begin > 0 and begin - i + k > 0 and text[begin - 1] == form[begin - i + k - 1]:
                begin -= 1
            while end < len(text) and end - i + k < len(form) and text[end] == form[end - i + k]:
                end += 1
            if end - begin >= MIN_PREFIX:
                spans.append((begin, end))
    return spans


def _find_all(text: str, piece: str) -> list[int]:
    found, i = [], text.find(piece)
    while i >= 0:
        found.append(i)
        i = text.find(piece, i + 1)
    return found


def hide(text: str, values: Iterable[str]) -> str:
    """Replace every value found in text, and its derived forms (derived_forms, however they
    are escaped, and runs of MIN_PREFIX characters or more of them); then any URL's password."""
    forms = {
        form.translate(_PLUS_IS_SPACE)
        for value in set(values)
        if len(value) >= 4  # shorter is too short to tell from ordinary text
        for form in derived_forms(value)
    }
    if forms:
        text = _hide(text, forms)
    return redact_url(text)


def _hide(text: str, forms: Iterable[str]) -> str:
    # every form's runs found in the reading, mapped back to text and merged: runs that overlap
    # (a value and its base64 share nothing, a value's pieces share much) are hidden as one
    readable = _Readable(text)
    spans = sorted(
        (readable.origin(begin, end=False), readable.origin(end, end=True))
        for form in forms
        for begin, end in _spans(readable.text, form)
    )
    out, at = [], 0
    for begin, end in spans:
        if end <= at:
            continue
        if begin >= at:
            out += [text[at:begin], REDACTED]
        at = end
    return "".join([*out, text[at:]])
