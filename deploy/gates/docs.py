"""Gate `docs-freshness`: the project's own docs check (`[gates.docs-freshness] command`), or
stageflow's (deploy.docs_check) on the release's snapshot: tasks, targets, links and keys exist,
and with `[docs] complete` every one is described (this repository's own docs)."""

from __future__ import annotations

from typing import Any

from deploy.docs_check import check_docs
from deploy.gates import GateContext, Outcome, configured_command, first_lines, run_command


def inputs(ctx: GateContext) -> list[Any]:
    # Tasks are discovered from the snapshot's code, so the whole tree is an input.
    return [ctx.tree_hash, configured_command(ctx)]


def run(ctx: GateContext) -> Outcome:
    argv = configured_command(ctx)
    if argv is not None:
        done = run_command(
            argv,
            cwd=ctx.tree,
            timeout_s=ctx.timeout_s,
            tool_hint="set [gates.docs-freshness] command to the project's docs check",
        )
        details = {"exit_code": done.exit_code, "output": first_lines(done.lines()[-20:], 20)}
        if done.ok:
            return Outcome("passed", "the project's docs check passed", details)
        tail = done.lines()[-1] if done.lines() else ""
        return Outcome("failed", f"docs check exited {done.exit_code}: {tail}", details)
    problems = [str(p) for p in check_docs(ctx.tree, python=ctx.python)]
    if problems:
        return Outcome(
            "failed",
            f"{len(problems)} problem(s): {problems[0]}",
            {"problems": first_lines(problems, 50)},
        )
    return Outcome("passed", "docs name only existing tasks, targets, links and keys")
