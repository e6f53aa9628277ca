"""Rollback-side tasks of an environment namespace: rollback, backup(s), verify, unfreeze."""

from __future__ import annotations

import os

from invoke import task

from deploy.errors import UsageError, VerifyFailed
from deploy.output import print_json, print_table, say, show
from deploy.tasks._common import (
    acting_on,
    actor,
    edge,
    env_name,
    guarded,
    project,
    seconds,
    shell_guard,
)


@task(
    help={
        "level": "1 restart, 2 revert to the previous good release, 3 restore the pre-deploy backup",
        "to": "level 2: the release to go back to (default: the previous good one)",
        "backup": "level 3: the backup id to restore (default: the one taken before the deploy)",
        "reason": "why (recorded in history and audit)",
        "yes": "prod: skip typing the environment's name (humans only)",
        "dry_run": "print the plan; change nothing",
        "reset_data": "level 1, dev and staging only: a new database by migrations (and the "
        "service's seed), swapped in only once complete",
        "json": "print the result as JSON",
    }
)
@edge
def rollback(c, level="", to=None, backup=None, reason="", yes=False, dry_run=False,
             reset_data=False, json=False):  # fmt: skip
    """Roll back: --level 1 restart, 2 revert to the previous release, 3 restore a backup."""
    from deploy.engine import rollback_pipeline
    from deploy.engine import rollback_rules as rules

    name, proj, lvl = env_name(c), project(), rules.parse_level(level)
    dry_run or shell_guard(proj, name)
    who = acting_on(proj, name, "rollback", dry_run=dry_run, level=lvl, reason=reason)
    result = rollback_pipeline.rollback(proj, name, level=lvl, actor=who, to=to, backup_id=backup,
                             reason=reason, yes=yes, dry_run=dry_run, reset_data=reset_data,
                             printer=(lambda _line: None) if json else say,
                             process_env=dict(os.environ), confirm=input)  # fmt: skip
    if json:
        print_json(result)
    elif dry_run:
        _print_rollback_plan(name, lvl, result)
    else:
        say(f"{name}: rollback level {lvl} {result['status']}: {result['release']} serves "
            f"({result['duration_s']:.2f}s)")  # fmt: skip


def _print_rollback_plan(name, lvl, result):
    from deploy.engine import rollback_rules as rules

    say(f"{name}: level {lvl} ({rules.LEVELS[lvl]}) {result['current']} -> {result['target']}")
    print_table(f"{name} rollback plan (nothing changed)", ["step", "does"], result["steps"])
    for line in result.get("commands", []):  # where known: the exact commands, one per line
        say(f"  {line}")


@task(
    help={
        "verify": "restore into a scratch database and compare row counts with the live one",
        "reason": "why (recorded with the backup)",
        "json": "print the backup as JSON",
    }
)
@edge
def backup(c, verify=False, reason="manual", json=False):
    """Take a backup of this environment's database now (pg_dump -Fc, sha256, metadata)."""
    from deploy import environment

    name = env_name(c)
    proj = project()
    guarded(proj, name)
    taken = environment.take_now(proj, name, actor=str(actor()), reason=reason, verify=verify)
    if json:
        print_json(taken.to_dict())
    else:
        say(f"{name}: {taken.summary()}")
        if taken.verify:
            print_table(
                f"{name} backup {taken.info['id']} restored into a scratch database",
                ["table", "backup rows", "live rows", "verdict"],
                taken.verify_rows(),
            )
    taken.require_same()


@task(help={"json": "print as JSON"})
@edge
def backups_(c, json=False):
    """List this environment's backups: id, time, release, schema (ledger version or the tool's
    revisions), size."""
    from deploy import backup as backups
    from deploy import environment

    name = env_name(c)
    found = environment.list_backups(project(), name)[::-1]
    show(
        found,
        as_json=json,
        title=f"{name} backups",
        columns=backups.BACKUP_COLUMNS,
        rows=backups.backup_rows(found),
    )


@task(
    help={
        "window": "seconds to watch (default: the environment's verify window, or 5)",
        "json": "print the verdict as JSON",
    }
)
@edge
def verify(c, window=None, json=False):
    """Watch the serving release against the previous one; non-zero exit on a trigger."""
    from deploy import rollback as engine

    name = env_name(c)
    window_s = seconds(window, "--window", maximum=3600) if window else None
    out = engine.verify_serving(project(), name, window_s=window_s)
    if json:
        print_json(out)
    else:
        say(
            f"{name}: verify {out['release']} against {out['baseline'] or 'no baseline'} "
            f"for {out['window_s']:g}s: {'ok' if out['ok'] else 'TRIGGERED'}"
        )
        print_table(None, ["number", "value"], sorted(out["numbers"].items()))
    if not out["ok"]:
        raise VerifyFailed(
            f"verify: {out['reason']}",
            hint=f"`inv {name}.rollback --level 2` goes back to the previous release",
        )


@task(help={"reason": "what was checked after the restore (required; audited)"})
@edge
def unfreeze(c, reason=""):
    """Lift the freeze a level 3 restore left, so deploys may run again (audited)."""
    from deploy import rollback as engine

    name = env_name(c)
    if not reason.strip():
        raise UsageError(
            "unfreeze needs --reason TEXT", hint="say what was checked after the restore"
        )
    proj = project()
    shell_guard(proj, name)
    who = acting_on(proj, name, "unfreeze", reason=reason)
    lifted = engine.unfreeze(proj, name, actor=who, reason=reason)
    say(f"{name}: {'unfrozen (audited)' if lifted else 'was not frozen'}")


TASKS = [rollback, backup, backups_, verify, unfreeze]
