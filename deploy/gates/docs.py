"""Gate `docs-freshness`: deploy.docs_check on the release's snapshot."""

from __future__ import annotations

from typing import Any

from deploy.docs_check import check_docs
from deploy.gates import GateContext, Outcome, first_lines


def inputs(ctx: GateContext) -> list[Any]:
    # Tasks are discovered from the snapshot's code, so the whole tree is an input.
    return [ctx.tree_hash]


def run(ctx: GateContext) -> Outcome:
    problems = [str(p) for p in check_docs(ctx.tree, python=ctx.python)]
    if problems:
        return Outcome(
            "failed",
            f"{len(problems)} problem(s): {problems[0]}",
            {"problems": first_lines(problems, 50)},
        )
    return Outcome("passed", "docs name only existing tasks, targets, links and keys")
