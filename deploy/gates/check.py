"""Gate `check`: the project's own checks (`[gates.check] commands`), by default ruff lint and
ruff format, run on the release's snapshot."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from deploy.errors import ConfigError
from deploy.gates import GateContext, Outcome, first_lines, python_first, run_command

_FOOTER = re.compile(r"^(Found \d+|\[\*\] |No fixes|\d+ files? (would be|already))")
_FOUND = re.compile(r"^Found (\d+) errors?\b")
RUFF = (
    ("ruff", "check", "--output-format=concise", "--no-cache", "."),
    ("ruff", "format", "--check", "--output-format=concise", "--no-cache", "."),
)
_HINT = 'set [gates.check] commands, e.g. [["ruff", "check", "."]], or [] until there is one'


def _commands(ctx: GateContext) -> list[list[str]] | None:
    """The check commands as argvs; None when the project configured none ([] says so)."""
    value = ctx.config.get("commands", [list(c) for c in RUFF])
    if not isinstance(value, list) or not all(
        isinstance(c, list) and c and all(isinstance(a, str) and a for a in c) for c in value
    ):
        raise ConfigError(
            "[gates.check] commands must be a list of commands (each a list of strings)",
            hint=_HINT,
        )
    return [python_first(ctx, c) for c in value] or None


def findings(lines: list[str]) -> int:
    """How many findings a failed check reported: its own count where it prints one (ruff's
    "Found 3 errors."; its default output spends several lines on each), else its lines."""
    counted = [int(m[1]) for ln in lines if (m := _FOUND.match(ln.strip()))]
    if counted:
        return sum(counted)
    return sum(1 for ln in lines if ln.strip() and not _FOOTER.match(ln))


def _name(argv: list[str]) -> str:
    """A command's short name for the report: `ruff check`, `mypy`, `make lint`."""
    head = Path(argv[0]).name
    if head.startswith("python") and argv[1:2] == ["-m"]:
        argv, head = argv[2:], argv[2] if len(argv) > 2 else head
    sub = [a for a in argv[1:2] if not a.startswith("-") and a != "."]
    return " ".join([head, *sub])


def inputs(ctx: GateContext) -> list[Any]:
    commands = _commands(ctx) or []
    tools = sorted({c[0] for c in commands})
    versions = []
    for tool in tools:
        try:
            versions.append(
                run_command([tool, "--version"], cwd=ctx.tree_dir, timeout_s=30).stdout.strip()
            )
        except ConfigError:
            versions.append(f"{Path(tool).name}: missing")  # the run says so in one line
    return [ctx.tree_hash, sys.version, versions, [c[1:] for c in commands]]


def run(ctx: GateContext) -> Outcome:
    commands = _commands(ctx)
    if commands is None:
        return Outcome("skipped", f"no check configured ({_HINT})")
    problems: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for argv in commands:
        done = run_command(
            argv,
            cwd=ctx.tree,
            timeout_s=ctx.timeout_s,
            tool_hint=f"pip install {Path(argv[0]).name} into this venv, or {_HINT}",
        )
        if not done.ok:
            # ruff's own footers ("Found 3 errors.") say less than the offending lines themselves.
            lines = [ln for ln in done.lines() if not _FOOTER.match(ln)]
            problems[_name(argv)] = first_lines(lines, 10)
            counts[_name(argv)] = findings(done.lines())
    names = " and ".join(_name(c) for c in commands)
    if not problems:
        return Outcome("passed", f"{names} {'are' if len(commands) > 1 else 'is'} clean")
    first = next(iter(problems.values()))
    head = first[0] if first else "see details"
    total = sum(counts.values())
    return Outcome(
        "failed",
        f"{' and '.join(problems)}: {total} finding(s), first: {head}",
        {"problems": problems, "counts": counts},
    )
