"""Release tasks: the release gate and its maturity stages."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, task

from deploy.config import find_root, load_policy_file
from deploy.output import print_json, print_table, say
from deploy.secrets import Secret
from deploy.tasks._common import actor, edge


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
    # the gate engine imports psycopg and rich: load it when a gate runs, not for `inv --list`
    from deploy.gates import runner
    from deploy.gates.report import Board, results_table

    who = actor()
    request = runner.GateRequest(
        root=find_root(Path.cwd()),
        ref=ref,
        db_url=Secret(db_url) if db_url else None,
        use_cache=not no_cache,
        break_glass=break_glass,
        only=tuple(g.strip() for g in (only or "").split(",") if g.strip()),
        actor=who.name,
        actor_is_human=who.is_human,
    )
    stage, ref_name, commit, _, gates = runner.plan(request)
    board = Board(gates, console=_console(stderr=json))
    if not json:
        say(f"release gate: {ref_name} @ {commit[:12]} is stage {stage.name}")
    with board:
        report = runner.run(request, on_start=board.started, on_finish=board.finished)
    if json:
        print_json(report.to_dict())
    else:
        board.console.print(results_table(report))
        say(f"verdict: {report.verdict} (dist/release-gate/{report.stem}.md)")
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


def _console(*, stderr: bool):
    from rich.console import Console

    console = Console(stderr=stderr)
    # Piped output still deserves readable summaries rather than rich's 80-column default.
    return console if console.is_terminal else Console(stderr=stderr, width=160)


ns = Collection("release", gate, stages)
