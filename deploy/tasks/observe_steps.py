"""Tasks of every environment for watching and recording: monitor, incident."""

from __future__ import annotations

from invoke import task

from deploy.output import print_json, say
from deploy.tasks._common import edge, env_name, project


@task(
    help={
        "once": "take one reading (two samples 1 s apart) and exit",
        "json": "with --once: print the reading as JSON",
        "samples": "stop after this many refreshes (0: until Ctrl-C)",
    }
)
@edge
def monitor(c, once=False, json=False, samples=0):
    """Live dashboard: health, request rate, error rate, p95, memory against the thresholds."""
    from deploy.probes import monitor as engine

    name = env_name(c)
    proj = project()
    if once:
        reading = engine.once(proj, name)
        if json:
            print_json(reading)
        else:
            from rich.console import Console

            Console().print(engine.render(name, reading, 0))
        return
    last = engine.live(proj, name, samples=int(samples))
    if json:
        print_json(last)


@task(
    help={
        "since": "history id to start from (default: the last good deploy before the latest "
        "rollback or failed entry)",
    }
)
@edge
def incident(c, since=None):
    """Draft docs/incidents/<date>-<env>.md from history and audit; prints its path."""
    from deploy import incident as incidents

    proj = project()
    path = incidents.draft(proj, env_name(c), since=since)
    say(str(path.relative_to(proj.root)))
    return path


TASKS: list = [monitor, incident]
