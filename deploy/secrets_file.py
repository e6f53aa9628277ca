"""Writes an environment's secrets file: missing secrets get random values, set ones are kept."""

from __future__ import annotations

import os
import re
import secrets as pysecrets
import tempfile
from collections.abc import Sequence
from pathlib import Path

from deploy.config import load_secrets

# Values made only of these go unquoted; any other is single-quoted, so a space, '#' or quote in
# a value set by hand reads back the same.
_PLAIN = re.compile(r"^[A-Za-z0-9_.,:/+=@-]*$")


def dotenv_line(key: str, value: str) -> str:
    """KEY=value as the dotenv reader gives value back (single quotes escape only \\ and ')."""
    if _PLAIN.match(value):
        return f"{key}={value}\n"
    return "{}='{}'\n".format(key, value.replace("\\", "\\\\").replace("'", "\\'"))


def fill_missing(path: Path, keys: Sequence[str]) -> list[str]:
    """Give every key of keys that path lacks a random url-safe value; return their names.

    The file is replaced whole (written beside it, then renamed), mode 0600 from the start: a
    crash leaves the old file or the new one, never half of one, and no value is readable by
    others at any moment. Values are never returned or printed.
    """
    have = {k: s.reveal() for k, s in load_secrets(path, allowed=keys).items()}
    missing = [k for k in keys if not have.get(k)]  # an empty value is not a secret
    if not missing:
        return []
    for key in missing:
        have[key] = pysecrets.token_urlsafe(24)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(dotenv_line(k, v) for k, v in have.items()))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.chmod(path, 0o600)
    return missing
