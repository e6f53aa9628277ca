"""Release tasks: the release gate and its maturity stages.

The gate engine (psycopg, rich) is imported inside the gate task, so `inv --list` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, task

from deploy.config import find_root, load_policy_file
from deploy.output import print_json, print_table
from deploy.tasks._common import actor, edge, take_password


@task(
    help={
        "ref": "branch, tag or commit to gate (default: current branch, or the tag at HEAD)",
        "db-url": "target database for the migrations gate; only read, never written",
        "no-cache": "run every gate even when its inputs are unchanged",
        "break-glass": "record failing required gates as overridden, with this reason",
        "json": "print the report JSON to stdout",
        "only": "comma-separated gates to run (a partial run never counts as a pass)",
    }
)
@edge
def gate(c, ref=None, db_url=None, no_cache=False, break_glass=None, json=False, only=None):
    """Run the release gates for a ref's maturity stage; exit 5 when a required gate fails."""
    from deploy.gates import runner, session

    request = session.request_for(find_root(Path.cwd()), actor(), ref=ref, db_url=db_url,
                                  db_password=take_password(), use_cache=not no_cache,
                                  break_glass=break_glass, only=only)  # fmt: skip
    report = session.watch(request, json_on_stdout=json)
    if json:
        print_json(report.to_dict())
    runner.enforce(report)


@task(help={"json": "print the stages as JSON"})
@edge
def stages(c, json=False):
    """Show and validate the maturity stages: ref patterns and each gate's requirement."""
    from deploy.gates.stages import GATE_NAMES, load_stages, stage_rows

    rows = stage_rows(load_stages(load_policy_file(find_root(Path.cwd()))))
    if json:
        print_json(rows)
        return
    gates = [g for g in GATE_NAMES if any(g in r["gates"] for r in rows)]
    columns = ["gate", *(f"{r['stage']}: {' '.join(r['patterns'])}" for r in rows)]
    print_table(
        "stages (a ref takes the first stage, left to right, whose pattern matches)",
        columns,
        [(g, *(r["gates"].get(g, "-") for r in rows)) for g in gates],
    )


ns = Collection("release", gate, stages)
