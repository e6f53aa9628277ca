"""Tasks across environments: the status of all of them, and the demo of the operator's day."""

from __future__ import annotations

from invoke import task

from deploy.config import NAMESPACES
from deploy.output import print_json
from deploy.tasks._common import edge, project


@task(help={"json": "print as JSON"})
@edge
def status(c, json=False):
    """Every environment at a glance: servers, ports, serving release, data directory."""
    from deploy import environment

    proj = project()
    rows = [environment.status(proj, name) for name in NAMESPACES]
    if json:
        print_json(rows)
    else:
        environment.print_status(rows)


@task(help={"keep": "leave the environments running at the end"})
@edge
def demo(c, keep=False):
    """Run the operator's day on this machine: dev -> staging -> prod, then a rollback."""
    from deploy import demo as run_demo

    run_demo.run(project(), keep=keep)
