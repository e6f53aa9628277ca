"""An environment's secrets file: written (missing secrets get random values, set ones are kept),
and read raw for every secret this machine holds, to scrub what leaves a process."""

from __future__ import annotations

import os
import re
import secrets as pysecrets
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from deploy.config import NAMESPACES, load_secrets, read_env_file
from deploy.secrets import Secret

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


def known_secrets(root: Path, *, process_env: Mapping[str, str]) -> tuple[Secret, ...]:
    """Every secret this machine holds for the project at root: each environment's secrets file,
    every value in it, and STAGEFLOW_<ENV>_<KEY> of the process environment. Read without the
    project's configuration (a release gate runs on a checkout whose env files may be absent or
    broken, and must still scrub its report); a secrets file that cannot be read is an error:
    what it holds cannot be hidden unless it is known."""
    values = []
    for name in NAMESPACES:
        path = root / "env" / f"{name}.secrets.env"
        if path.exists():
            values += [v for v, _ in read_env_file(path).values()]
        prefix = f"STAGEFLOW_{name.upper()}_"
        values += [v for k, v in process_env.items() if k.startswith(prefix)]
    return tuple(Secret(v) for v in dict.fromkeys(values) if v)
