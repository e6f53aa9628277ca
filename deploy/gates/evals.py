"""Gate `eval`: a configured evaluation command, run only when files it watches changed since the previous tag."""

from __future__ import annotations

import fnmatch
from typing import Any

from deploy.commands import git as gitcmd
from deploy.errors import ConfigError
from deploy.gates import GateContext, Outcome, first_lines, git, python_first, run_command


def previous_tag(ctx: GateContext) -> str | None:
    res = git(gitcmd.previous_tag(ctx.commit, repo=ctx.root))
    return res.stdout.strip() if res.exit_code == 0 and res.stdout.strip() else None


def changed_files(ctx: GateContext, since: str | None) -> list[str]:
    if since is None:  # no earlier tag: everything in the release is new
        res = git(gitcmd.ls_tree_names(ctx.commit, recursive=True, repo=ctx.root))
    else:
        res = git(gitcmd.diff_names(f"{since}..{ctx.commit}", repo=ctx.root))
    return [ln for ln in res.stdout.splitlines() if ln]


def _config(ctx: GateContext) -> tuple[list[str] | None, list[str]]:
    command = ctx.config.get("command")
    paths = ctx.config.get("paths", [])
    if command is not None and (
        not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command)
    ):
        raise ConfigError("[gates.eval] command must be a non-empty list of strings")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ConfigError("[gates.eval] paths must be a list of globs")
    return command, paths


def _watched(ctx: GateContext) -> tuple[str | None, list[str]]:
    _, paths = _config(ctx)
    since = previous_tag(ctx)
    hits = [f for f in changed_files(ctx, since) if any(fnmatch.fnmatchcase(f, p) for p in paths)]
    return since, hits


def inputs(ctx: GateContext) -> list[Any]:
    command, paths = _config(ctx)
    since, hits = _watched(ctx)
    return [ctx.tree_hash, since, hits, command, paths]


def run(ctx: GateContext) -> Outcome:
    command, paths = _config(ctx)
    if not command or not paths:
        return Outcome("skipped", "no eval configured ([gates.eval] command and paths)")
    since, hits = _watched(ctx)
    details: dict[str, Any] = {"since": since, "changed": hits[:50]}
    if not hits:
        return Outcome(
            "skipped", f"no watched paths changed since {since or 'the first commit'}", details
        )
    argv = python_first(ctx, command)
    done = run_command(
        argv,
        cwd=ctx.tree,
        timeout_s=ctx.timeout_s,
        tool_hint="set [gates.eval] command to the project's evaluation",
    )
    details["exit_code"] = done.exit_code
    details["output"] = first_lines(done.lines()[-10:], 10)
    if done.ok:
        return Outcome("passed", f"eval passed ({len(hits)} watched file(s) changed)", details)
    tail = done.lines()[-1] if done.lines() else ""
    return Outcome("failed", f"eval exited {done.exit_code}: {tail}", details)
