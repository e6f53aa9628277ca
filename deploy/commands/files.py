"""argv builders for files on a host: remove, move, copy, checksum, size, mode.

Every path comes after `--`: a path starting with '-' stays a path, never an option.
"""

from __future__ import annotations


def remove(*paths: str) -> list[str]:
    """rm -f: a missing path is no error."""
    return ["rm", "-f", "--", *paths]


def move(source: str, destination: str) -> list[str]:
    """mv -f: replaces destination, never asks."""
    return ["mv", "-f", "--", source, destination]


def rename_onto(source: str, destination: str) -> list[str]:
    """mv -T: source becomes destination itself, never destination/source; fails when
    destination is a directory that is not empty, so of two racing renames one wins."""
    return ["mv", "-T", "--", source, destination]


def copy_tree(source: str, destination: str) -> list[str]:
    """cp -a: modes, times and links kept."""
    return ["cp", "-a", "--", source, destination]


def link_tree(source: str, destination: str) -> list[str]:
    """cp -al: the same tree of new directories whose files are hard links to source's; fails
    (and the caller copies instead) where the two are on different filesystems."""
    return ["cp", "-al", "--", source, destination]


def realpaths(*paths: str) -> list[str]:
    """Each path with every symlink resolved, as the host opens it; a missing tail is kept
    (-m: a home not made yet still resolves). NUL after each (-z): a path may hold a newline."""
    return ["realpath", "-m", "-z", "--", *paths]


def sha256(path: str) -> list[str]:
    """Prints `<hex digest>  <path>`."""
    return ["sha256sum", "--", path]


def size(path: str) -> list[str]:
    """Prints the size in bytes."""
    return ["stat", "-c", "%s", "--", path]


def chmod(mode: int, *paths: str) -> list[str]:
    """chmod to an octal mode given as a number: chmod(0o600, path)."""
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"{mode!r} is not a file mode")
    return ["chmod", format(mode, "o"), "--", *paths]


# A venv's console scripts (alembic, flask, celery...) name their python by absolute path in
# their first line; a venv copied from the host's cache must point them at its own python.
RETARGET_CODE = """
import os, sys
bin_dir, python = sys.argv[1], sys.argv[2]
for name in os.listdir(bin_dir):
    path = os.path.join(bin_dir, name)
    if os.path.islink(path) or not os.path.isfile(path):
        continue
    with open(path, "rb") as fh:
        data = fh.read()
    first, sep, rest = data.partition(b"\\n")
    if first.startswith(b"#!") and b"python" in first and b" " not in first.strip():
        with open(path + ".tmp", "wb") as fh:
            fh.write(b"#!" + python.encode() + sep + rest)
        os.chmod(path + ".tmp", os.stat(path).st_mode)
        os.replace(path + ".tmp", path)
"""


def retarget_scripts(python: str, bin_dir: str, venv_python: str) -> list[str]:
    """Point every script of bin_dir whose first line runs a python at venv_python (symlinks and
    binaries are left alone). Paths follow `-c CODE`, so python never reads them as options."""
    return [python, "-c", RETARGET_CODE, bin_dir, venv_python]
