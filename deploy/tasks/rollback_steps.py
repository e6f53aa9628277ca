"""Rollback-side tasks of an environment namespace: rollback, backup(s), verify, unfreeze."""

from __future__ import annotations

import os

from invoke import task

from deploy.errors import ServiceError, UsageError, VerifyFailed
from deploy.output import print_json, print_table, say
from deploy.tasks._common import actor, edge, env_name, guarded, project


@task(
    help={
        "level": "1 restart, 2 revert to the previous good release, 3 restore the pre-deploy backup",
        "to": "level 2: the release to go back to (default: the previous good one)",
        "backup": "level 3: the backup id to restore (default: the one taken before the deploy)",
        "reason": "why (recorded in history and audit)",
        "yes": "prod: skip typing the environment's name (humans only)",
        "dry_run": "print the plan; change nothing",
        "reset_data": "level 1, dev and staging only: wipe the database, migrate, re-seed",
        "json": "print the result as JSON",
    }
)
@edge
def rollback(
    c,
    level="",
    to=None,
    backup=None,
    reason="",
    yes=False,
    dry_run=False,
    reset_data=False,
    json=False,
):
    """Roll back: --level 1 restart, 2 revert to the previous release, 3 restore a backup."""
    from deploy import rollback as engine
    from deploy.engine import rollback_rules as rules

    name, proj, lvl = env_name(c), project(), rules.parse_level(level)
    result = engine.rollback(proj, name, level=lvl, actor=actor(), to=to, backup_id=backup,
                             reason=reason, yes=yes, dry_run=dry_run, reset_data=reset_data,
                             printer=(lambda _line: None) if json else say,
                             process_env=dict(os.environ), confirm=input)  # fmt: skip
    if json:
        print_json(result)
    elif dry_run:
        say(f"{name}: level {lvl} ({rules.LEVELS[lvl]}) {result['current']} -> {result['target']}")
        print_table(f"{name} rollback plan (nothing changed)", ["step", "does"], result["steps"])
        for line in result.get("commands", []):  # compose: the exact commands, one per line
            say(f"  {line}")
    else:
        say(f"{name}: rollback level {lvl} {result['status']}: {result['release']} serves "
            f"({result['duration_s']:.2f}s)")  # fmt: skip


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
    from deploy import backup as backups
    from deploy import releases
    from deploy import rollback as engine

    name = env_name(c)
    proj = project()
    guarded(proj, name)
    from deploy import rolling

    current = releases.current_release(*rolling.primary(proj, name)) or ""
    info = backups.take(proj, name, actor=str(actor()), release=current, reason=reason)
    checked = engine.verify_backup(proj, name, info["id"]) if verify else None
    if json:
        print_json({**info, "verify": checked})
    else:
        say(
            f"{name}: backup {info['id']} ({info['size_bytes'] / 1e6:.2f} MB, ledger version "
            f"{info['ledger_version']}, release {current or '-'})"
        )
        if checked:
            print_table(
                f"{name} backup {info['id']} restored into a scratch database",
                ["table", "backup rows", "live rows", "verdict"],
                [
                    (r["table"], r["backup"], r["live"], "ok" if r["same"] else "DIFFERS")
                    for r in checked["tables"]
                ],
            )
    if checked and not checked["ok"]:
        raise ServiceError(
            f"backup {info['id']} row counts differ from the live database",
            hint="writes during the backup? take another and verify it",
        )


@task(help={"json": "print as JSON"})
@edge
def backups_(c, json=False):
    """List this environment's backups: id, time, release, ledger version, size."""
    from deploy import backup as backups

    name = env_name(c)
    found = backups.list_backups(project(), name)[::-1]
    if json:
        print_json(found)
        return
    print_table(
        f"{name} backups",
        ["id", "time", "release", "ledger", "size", "actor", "reason"],
        [
            (
                b["id"],
                b.get("time"),
                b.get("release") or "-",
                b.get("ledger_version"),
                f"{b.get('size_bytes', 0) / 1e6:.2f} MB",
                b.get("actor"),
                b.get("reason"),
            )
            for b in found
        ],
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
    try:
        seconds = float(window) if window else None
    except ValueError:
        raise UsageError(
            f"--window {window} is not a number of seconds", hint="e.g. --window 30"
        ) from None
    if seconds is not None and not 0 < seconds <= 3600:
        raise UsageError(f"--window {window} is out of range", hint="give 0 < seconds <= 3600")
    out = engine.verify_serving(project(), name, window_s=seconds)
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
    lifted = engine.unfreeze(project(), name, actor=actor(), reason=reason)
    say(f"{name}: {'unfrozen (audited)' if lifted else 'was not frozen'}")


TASKS = [rollback, backup, backups_, verify, unfreeze]
