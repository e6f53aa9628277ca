"""A release gate run as the operator watches it: the request its flags describe, a live board."""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from deploy.gates import runner
from deploy.gates.report import Board, Report, results_table
from deploy.output import console, say
from deploy.policy import keys
from deploy.policy.actors import Actor, statement
from deploy.secrets import Secret


def request_for(
    root: Path,
    actor: Actor,
    *,
    ref: str | None = None,
    db_url: str | None = None,
    db_password: str | None = None,
    use_cache: bool = True,
    break_glass: str | None = None,
    only: str | None = None,
) -> runner.GateRequest:
    """The request `inv release.gate` flags describe; `only` is a comma-separated list of gates.
    db_password (the operator's PGPASSWORD) is --db-url's password when the URL holds none."""
    return runner.GateRequest(
        root=root,
        ref=ref,
        db_url=target_url(db_url, db_password),
        use_cache=use_cache,
        break_glass=break_glass,
        only=tuple(g.strip() for g in (only or "").split(",") if g.strip()),
        actor=actor.name,
        actor_is_human=actor.is_human,
        sign=_signer(actor) if break_glass is not None and actor.key else None,
    )


def target_url(db_url: str | None, password: str | None) -> Secret | None:
    """--db-url as one secret conninfo, with the password given apart unless the URL has one."""
    if not db_url:
        return None
    if not password:
        return Secret(db_url)
    try:
        parts = conninfo_to_dict(db_url)
    except psycopg.ProgrammingError:
        return Secret(db_url)  # the migrations gate names what is wrong with it
    if parts.get("password"):
        return Secret(db_url)
    return Secret(make_conninfo(db_url, password=password))


def _signer(actor: Actor):
    """Sign an override's statement with the actor's key, as prod's trusted signers will check."""

    def sign(fields):
        return keys.sign(statement("gate-override", "release", **fields), key=actor.key)

    return sign


def watch(request: runner.GateRequest, *, json_on_stdout: bool = False) -> Report:
    """Run the gates as the operator watches: the stage line, a board while they run, then the
    results table and the verdict; returns the report (a failed gate does not raise:
    runner.enforce does). With json_on_stdout only the board shows, on stderr, so stdout is left
    to the JSON report alone."""
    stage, ref_name, commit, _, gates = runner.plan(request)
    board = Board(gates, console=console(stderr=json_on_stdout))
    if not json_on_stdout:
        say(f"release gate: {ref_name} @ {commit[:12]} is stage {stage.name}")
    with board:
        report = runner.run(request, on_start=board.started, on_finish=board.finished)
    if not json_on_stdout:
        board.console.print(results_table(report))
        say(f"verdict: {report.verdict} (dist/release-gate/{report.stem}.md)")
    if report.overrides and not report.overrides[0].get("signature"):
        print("stageflow: the override is not signed (no signing key): it stands for dev and "
              "staging, never for prod (set STAGEFLOW_SIGNING_KEY)", file=sys.stderr)  # fmt: skip
    return report
