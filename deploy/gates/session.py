"""A release gate run as the operator watches it: the request its flags describe, a live board."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
    use_cache: bool = True,
    break_glass: str | None = None,
    only: str | None = None,
) -> runner.GateRequest:
    """The request `inv release.gate` flags describe; `only` is a comma-separated list of gates."""
    return runner.GateRequest(
        root=root,
        ref=ref,
        db_url=Secret(db_url) if db_url else None,
        use_cache=use_cache,
        break_glass=break_glass,
        only=tuple(g.strip() for g in (only or "").split(",") if g.strip()),
        actor=actor.name,
        actor_is_human=actor.is_human,
        sign=_signer(actor) if break_glass is not None and actor.key else None,
        process_env=dict(os.environ),
    )


def with_operator_password(db_url: str | None, password: str | None) -> str | None:
    """--db-url with the operator's PGPASSWORD as its password when it names none (the documented
    way to keep a password out of the command line); a password in the URL wins, and text that is
    no connection string is left for the migrations gate to refuse."""
    if not db_url or not password:
        return db_url
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        if conninfo_to_dict(db_url).get("password"):
            return db_url
        return make_conninfo(db_url, password=password)
    except ProgrammingError:
        return db_url


def _signer(actor: Actor) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Sign an override's statement with the actor's key, as prod's trusted signers will check."""

    def sign(fields: Mapping[str, Any]) -> dict[str, Any]:
        return keys.sign(statement("gate-override", "release", **fields), key=actor.key)

    return sign


def watch(request: runner.GateRequest, *, json_on_stdout: bool = False) -> Report:
    """Run the gates as the operator watches: the stage line, a board while they run, then the
    results table and the verdict; returns the report (a failed gate does not raise:
    runner.enforce does). With json_on_stdout only the board shows, on stderr, so stdout is left
    to the JSON report alone."""
    stage, ref_name, commit, _, gates = runner.plan(request)
    out = sys.stderr if json_on_stdout else sys.stdout
    # rich only for a person watching: a script's run (a pipe, a CI log) gets plain lines
    board = Board(
        gates, console=console(stderr=json_on_stdout) if out.isatty() else None, stream=out
    )
    if not json_on_stdout:
        say(f"release gate: {ref_name} @ {commit[:12]} is stage {stage.name}")
    with board:
        report = runner.run(request, on_start=board.started, on_finish=board.finished)
    if not json_on_stdout:
        (board.console or console()).print(results_table(report))
        say(f"verdict: {report.verdict} (dist/release-gate/{report.stem}.md)")
    if report.overrides and not report.overrides[0].get("signature"):
        print("stageflow: the override is not signed (no signing key): it stands for dev and "
              "staging, never for prod (set STAGEFLOW_SIGNING_KEY)", file=sys.stderr)  # fmt: skip
    return report
