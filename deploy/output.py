"""Tables for people, JSON for scripts: the two ways a read command answers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    out = Console(stderr=stderr)
    # a pipe or a CI log has no width of its own: room for the table instead of wrapped cells
    return out if out.is_terminal else Console(stderr=stderr, width=160)


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        table.add_column(col)
    for row in rows:
        # Text, not markup: a cell holding "[service.env]" or a ref like "fix[1]" prints as is
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    console().print(table)


def show(
    data: Any,
    *,
    as_json: bool,
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> None:
    """A read command's answer: data as JSON, or rows as a table. Rows may be a generator, so a
    JSON answer never formats them."""
    if as_json:
        print_json(data)
    else:
        print_table(title, columns, rows)


def mark(ok: bool) -> str:
    return "ok" if ok else "REFUSED"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def progress(*, as_json: bool) -> Callable[[str], None]:
    """Where a long command reports its steps: nowhere when stdout carries its JSON answer."""
    return (lambda _line: None) if as_json else say
