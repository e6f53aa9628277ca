"""Gate `check`: ruff lint and ruff format, run on the release's snapshot."""

from __future__ import annotations

import re
from typing import Any

from deploy.gates import GateContext, Outcome, first_lines, run_command

_FOOTER = re.compile(r"^(Found \d+|\[\*\] |No fixes|\d+ files? (would be|already))")


def _commands(ctx: GateContext) -> list[list[str]]:
    ruff = ctx.bin("ruff")
    return [
        [ruff, "check", "--output-format=concise", "--no-cache", "."],
        [ruff, "format", "--check", "--output-format=concise", "--no-cache", "."],
    ]


def inputs(ctx: GateContext) -> list[Any]:
    version = run_command([ctx.bin("ruff"), "--version"], cwd=ctx.tree, timeout_s=30).stdout.strip()
    return [ctx.tree_hash, version, _commands(ctx)[0][1:], _commands(ctx)[1][1:]]


def run(ctx: GateContext) -> Outcome:
    problems: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for argv in _commands(ctx):
        done = run_command(argv, cwd=ctx.tree, timeout_s=ctx.timeout_s)
        if not done.ok:
            # ruff's own footers ("Found 3 errors.") say less than the offending lines themselves.
            lines = [ln for ln in done.lines() if not _FOOTER.match(ln)]
            problems[argv[1]] = first_lines(lines, 10)
            counts[argv[1]] = len(lines)
    if not problems:
        return Outcome("passed", "ruff check and ruff format --check are clean")
    first = next(iter(problems.values()))
    head = first[0] if first else "see details"
    total = sum(counts.values())
    return Outcome(
        "failed",
        f"ruff {' and '.join(problems)}: {total} finding(s), first: {head}",
        {"problems": problems, "counts": counts},
    )
