"""Tables for people, JSON for scripts: the two ways a read command answers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console = Console()
    if not console.is_terminal:
        # a pipe or a CI log has no width of its own: room for the table instead of wrapped cells
        console = Console(width=160)
    console.print(table)


def mark(ok: bool) -> str:
    return "ok" if ok else "REFUSED"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
