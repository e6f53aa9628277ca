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
