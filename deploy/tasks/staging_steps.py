"""staging-only tasks: init (and reset), seed (dev's too), refresh from prod."""

from __future__ import annotations

import os

from invoke import task

from deploy.output import print_json, print_table, progress, say
from deploy.tasks._common import actor, edge, env_name, guarded, project


@task(
    help={
        "reset": "wipe and re-create: stop, down, remove DATA_DIR (state/ kept), up, migrate, "
        "seed (when [service] seed is set)",
        "json": "print the steps as JSON",
    }
)
@edge
def init(c, reset=False, json=False):
    """Prepare staging: directories, config check, servers, migrations, seed data, log files."""
    from deploy import staging

    name = env_name(c)
    steps = staging.init(
        project(), name, actor=str(actor()), reset=reset, process_env=dict(os.environ)
    )
    if json:
        print_json([{"step": s, "result": r} for s, r in steps])
    else:
        print_table(f"{name} init", ["step", "result"], steps)


@task(
    help={
        "size": "a word the service's seed command gets as {size} and STAGEFLOW_SEED_SIZE "
        "(e.g. small, medium, large)",
        "json": "print as JSON",
    }
)
@edge
def seed(c, size="small", json=False):
    """Run the service's seed command ([service] seed): deterministic test data, never on prod."""
    from deploy import seed as seeding

    name = env_name(c)
    proj = project()
    seeding.check_size(size)
    seeding.require_command(proj.service)
    guarded(proj, name)
    result = seeding.run(proj, proj.env(name), size=size, process_env=dict(os.environ))
    if json:
        print_json(result.to_dict())
    else:
        say(
            f"{name}: seed ({size}) in {result.seconds:.2f}s from {result.where}: "
            f"{result.summary or 'done'}"
        )


@task(
    name="refresh",
    help={
        "from_": "the environment to copy from (prod)",
        "anonymize": "apply the [anonymize] rules of stageflow.toml (required unless allow_raw)",
        "fresh": "dump the source now instead of using its latest backup",
        "json": "print the result as JSON",
    },
)
@edge
def refresh(c, from_="prod", anonymize=False, fresh=False, json=False):
    """Replace staging's data with prod's latest backup, anonymized; staging is untouched on failure."""
    from deploy import staging

    name, proj = env_name(c), project()
    guarded(proj, name)
    result = staging.refresh(proj, name, source=from_, anonymize_data=anonymize,
                             actor=str(actor()), fresh=fresh, printer=progress(as_json=json))  # fmt: skip
    if json:
        print_json(result)
        return
    title, rows, leaks = staging.refresh_summary(result)
    print_table(f"{name} {title}", ["table", "rows", "anonymized rows"], rows)
    say(f"{name}: values equal to {result['source']}'s: {leaks}")


TASKS = [init, seed, refresh]
