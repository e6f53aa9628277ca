"""What a pip requirements file pulls in besides packages: the files it includes (`-r`, `-c`)
and the lines that install from the repository itself (`.`, `-e .`, `./libs/x`, `file:`)."""

from __future__ import annotations

import re

_INCLUDE = re.compile(r"^(?:--requirement|--constraint|-r|-c)(?:\s*=\s*|\s*)(\S+)")
_LOCAL = re.compile(r"^(?:(?:-e|--editable)(?:\s*=\s*|\s+))?(?:\.|/|file:)")


def _lines(text: str) -> list[str]:
    """The file's logical lines, continuations joined and comments dropped, as pip reads them."""
    joined = text.replace("\\\n", " ")
    return [re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip() for line in joined.splitlines()]


def includes(text: str, *, constraints: bool = True) -> list[str]:
    """The paths of the files a requirements file includes, as written (relative to its folder):
    `-r` ones, and `-c` ones unless constraints is false (they pin, they install nothing); a URL
    is left out: there is no file of the repository to read."""
    found = (_INCLUDE.match(line) for line in _lines(text))
    return [
        m.group(1)
        for m in found
        if m and "://" not in m.group(1) and (constraints or m.group(0).startswith(("-r", "--r")))
    ]


def installs_a_local_path(text: str) -> bool:
    """A line installs from the repository's own files: pip needs them beside the requirements."""
    return any(_LOCAL.match(line) for line in _lines(text))


def local_paths(text: str) -> list[str]:
    """The paths of the repository's own folders or files the lines install (`./libs/x[extra]`
    gives `./libs/x`), as written: relative to the folder pip runs in."""
    out = []
    for line in _lines(text):
        if not _LOCAL.match(line):
            continue
        word = re.sub(r"^(?:-e|--editable)(?:\s*=\s*|\s+)", "", line)
        word = re.sub(r"^file:(?://)?", "", word)
        out.append(re.split(r"[\s;\[#]", word, maxsplit=1)[0] or ".")
    return out
