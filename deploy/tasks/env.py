"""Tasks of one environment namespace (dev, staging, prod): the same tasks, bound to one env."""

from __future__ import annotations

import copy
import os

from invoke import Collection, Task, task

from deploy.config import EnvConfig
from deploy.output import mark, print_json, print_table, say, show
from deploy.policy import guards
from deploy.tasks._common import actor, edge, env_name, guarded, project


@task(
    help={
        "json": "print the checks as JSON",
        "request": "prod: also every promotion rule for this request id",
        "break_glass": "prod: the break-glass reason a deploy would carry",
    }
)
@edge
def preflight_(c, json=False, request=None, break_glass=""):
    """Run this environment's guards and print them as a table; changes nothing."""
    from deploy.policy import promotion

    name = env_name(c)
    checks = promotion.preflight(project(), name, os.environ, request=request,
                                 actor=actor() if request is not None else None,  # its rules only
                                 break_glass=break_glass)  # fmt: skip
    show(
        [ch.to_dict() for ch in checks],
        as_json=json,
        title=f"{name} preflight",
        columns=["check", "verdict", "detail"],
        rows=((ch.name, mark(ch.ok), ch.detail) for ch in checks),
    )
    guards.require(checks)


@task
@edge
def up(c):
    """Start this environment's PostgreSQL and Redis (idempotent; compose: their containers)."""
    from deploy import environment

    name = env_name(c)
    proj = project()
    guarded(proj, name)
    for line in environment.up(proj, name):
        say(f"{name}: {line}")


@task
@edge
def down(c):
    """Stop this environment's service, PostgreSQL and Redis."""
    from deploy import environment

    name = env_name(c)
    proj = project()
    # stopping needs no isolation verdict (it is how a clash gets fixed), only the right shell
    guards.require([guards.shell_environment(proj.env(name), os.environ)])
    for line in environment.down(proj, name):
        say(f"{name}: {line}")


@task(help={"json": "print the status as JSON"})
@edge
def status(c, json=False):
    """Show this environment's servers, ports, release and data directory."""
    from deploy import environment

    proj, name = project(), env_name(c)
    rows = [environment.status(proj, name)]
    if name == "staging":
        from deploy.staging import threshold_rows

        rows[0]["thresholds"] = threshold_rows(proj, name)
    if json:
        print_json(rows[0])
    else:
        environment.print_status(rows)
        if name == "staging":
            cols = ["trigger", "staging", "prod", "staging vs prod"]
            print_table("staging thresholds (relaxed from prod)", cols, rows[0]["thresholds"])


@task(
    help={
        "tail": "how many lines per service or log file (default 100)",
        "service": "only this one: app, postgres, redis or a process of [service.processes]",
    }
)
@edge
def logs(c, tail="100", service=""):
    """Print the last lines of this environment's logs (compose: docker compose logs)."""
    from deploy import environment
    from deploy.tasks._common import whole

    name = env_name(c)
    text = environment.logs(project(), name, tail=whole(tail, "--tail", minimum=1), service=service)
    say(text.rstrip("\n") or f"{name}: no logs yet")


@task(help={"generate": "create missing secrets with random values (file mode 0600)"})
@edge
def secrets(c, generate=False):
    """List which secrets are set for this environment (never their values)."""
    from deploy import environment

    name = env_name(c)
    proj = project()
    if generate:
        guards.require([guards.shell_environment(proj.env(name), os.environ)])
        for line in environment.generate_secrets(proj, name, actor=str(actor())):
            say(f"{name}: {line}")
        proj = project()
    print_table(f"{name} secrets", ["key", "set", "meaning"], _secret_rows(proj.env(name)))


def _secret_rows(env: EnvConfig) -> list[tuple[str, str, str]]:
    """stageflow's secrets, then the service's declared ones: set or not, never a value."""
    from deploy.config import SECRET_KEYS, SERVICE_SECRET

    return [
        (k, "yes" if env.secret(k) else "no", SECRET_KEYS.get(k, SERVICE_SECRET))
        for k in env.declared_secrets
    ]


TASKS = [preflight_, up, down, status, logs, secrets]


def _own_copy(t: Task, env: str) -> Task:
    """A task object per namespace: invoke dedupes tasks of equal name and code, so
    `inv dev.up staging.up` would otherwise run only the first."""
    twin = copy.copy(t)
    twin._name = f"{env}.{t.name}"
    # invoke consumes a task's help dict while building its parser: each twin needs its own
    twin.help = dict(t.help)
    return twin


def env_collection(name: str) -> Collection:
    from deploy.tasks import (
        observe_steps,
        promotion_steps,
        release_steps,
        rollback_steps,
        staging_steps,
    )

    ns = Collection(name)
    # dev loads the service's seed data too; prod never does
    only = {
        "prod": promotion_steps.TASKS,
        "staging": staging_steps.TASKS,
        "dev": [staging_steps.seed],
    }.get(name, [])
    every = TASKS + release_steps.TASKS + rollback_steps.TASKS + observe_steps.TASKS
    for t in every + only:
        ns.add_task(_own_copy(t, name), name=t.name.strip("_").replace("_", "-"))
    ns.configure({"stageflow": {"env": name}})
    return ns
