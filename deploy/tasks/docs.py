"""Docs tasks: freshness of README.md and docs/*.md against tasks, make targets, links and env keys."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, task

from deploy.config import find_root
from deploy.errors import UsageError
from deploy.output import say
from deploy.tasks._common import edge


@task
@edge
def freshness(c):
    """Check that the docs name only existing tasks, targets, links, anchors and env keys."""
    from deploy.docs_check import check_docs

    problems = check_docs(find_root(Path.cwd()))
    for problem in problems:
        say(str(problem))
    if problems:
        raise UsageError(f"{len(problems)} docs problem(s)", hint="fix the lines above")
    say("docs are fresh")


ns = Collection("docs", freshness)
