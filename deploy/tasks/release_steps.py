"""Deploy-side tasks of an environment namespace: deploy, migrate, smoke, lock, history.

The pipeline and the migration engine (which loads psycopg) are imported inside the tasks that
use them, so `inv --list` stays fast.
"""

from __future__ import annotations

import dataclasses
import os

from invoke import task

from deploy import guards
from deploy.errors import RolledBack, UsageError
from deploy.output import print_json, print_table, say
from deploy.tasks._common import actor, edge, env_name, guarded, preflight, project, whole


@task(
    help={
        "ref": "git ref to deploy (default HEAD; prod takes --request instead)",
        "dry_run": "print guards and plan; change nothing",
        "allow_dirty": "dev only: deploy uncommitted changes of tracked files",
        "request": "prod: the approved request id to deploy",
        "break_glass": "prod: deploy during a freeze window, with this reason (audited)",
        "json": "print the result as JSON",
    }
)
@edge
def deploy(
    c, ref="HEAD", dry_run=False, allow_dirty=False, request=None, break_glass="", json=False
):
    """Deploy a git ref: guards, lock, build, migrate, switch, smoke, verify, record."""
    from deploy import promotion
    from deploy.engine import deploy_pipeline

    name, proj = env_name(c), project()
    promotion.check_deploy_flags(name, ref=ref, request=request)
    if dry_run:
        _print_deploy_plan(proj, name, ref=ref, request=request, break_glass=break_glass)
        return
    printer = (lambda _l: None) if json else say
    if request is not None:
        result = promotion.deploy(proj, request, actor=actor(), break_glass=break_glass,
                                  printer=printer, process_env=dict(os.environ))  # fmt: skip
    else:
        result = deploy_pipeline.deploy(proj, name, actor=actor(), ref=ref, allow_dirty=allow_dirty,
                                        printer=printer, process_env=dict(os.environ))  # fmt: skip
    print_json(result) if json else say(f"{name}: deployed {result['release']} in {result['duration_s']:.2f}s")  # fmt: skip


def _print_deploy_plan(proj, name, *, ref, request, break_glass):
    """The dry run: guards (or, for a request, every promotion rule), the steps, the hooks."""
    from deploy import promotion, releases
    from deploy.engine import deploy_pipeline

    if request is not None:
        req = promotion.load(proj, request)
        checks = guards.run_checks(
            promotion.checks(proj, req, actor=actor(), break_glass=break_glass)
        )
        title, ref = "prod promotion", req["commit"]
        plan_title = f"prod deploy plan for request #{req['id']}"
    else:
        checks, title = preflight(proj, name), f"{name} preflight"
        releases.resolve_ref(proj.root, ref)
        plan_title = f"{name} deploy plan for {ref}"
    print_table(
        title,
        ["check", "verdict", "detail"],
        [(ch.name, "ok" if ch.ok else "REFUSED", ch.detail) for ch in checks],
    )
    planned = deploy_pipeline.plan(proj, name, ref=ref, actor=str(actor()))
    print_table(plan_title, ["step", "does"], planned["steps"])
    for line in planned["commands"]:  # where known in advance: the exact commands, one per line
        say(f"  {line}")
    _print_hooks(proj, name)


def _primary(proj, name):
    """The host holding the environment's lock and state files, and its layout there."""
    from deploy import rolling

    return rolling.primary(proj, name)


def _print_hooks(proj, name):
    from deploy import hooks

    planned = hooks.plan_all(proj, name)
    print_table(
        f"{name} hooks that would run",
        ["point", "hook", "timeout"],
        [(h.point, h.name, f"{h.timeout_s:g}s") for h in planned] or [("-", "none", "")],
    )


def _files_and_url(name):
    from deploy import migrations, releases, rolling
    from deploy.rollback import release_migration_files

    proj = project()
    env = proj.env(name)
    host, layout = rolling.primary(proj, name)  # the serving release's files, on the primary
    current = releases.current_release(host, layout)
    if current:
        return proj, env, release_migration_files(host, layout, current)
    return proj, env, migrations.in_release(str(proj.root))


@task(
    help={
        "to": "migrate up to this version only",
        "dry_run": "print the plan; change nothing",
        "resolve": "a failed migration's version: mark it resolved (see --mark)",
        "mark": "with --resolve: applied (you finished it by hand) or reverted (run it again)",
    }
)
@edge
def migrate(c, to=None, dry_run=False, resolve=None, mark=""):
    """Apply pending migrations of the serving release (or the working tree before the first deploy)."""
    from deploy import migrations

    name = env_name(c)
    proj, env, files = _files_and_url(name)
    if not dry_run:
        guarded(proj, name)
    password = env.secret("POSTGRES_PASSWORD")
    if resolve is not None:
        if mark not in ("applied", "reverted"):
            raise UsageError("--resolve needs --mark applied or --mark reverted")
        migrations.resolve_failed(
            env.database_url,
            files,
            version=whole(resolve, "--resolve", minimum=1),
            state=mark,
            applied_by=str(actor()),
            password=password,
        )
        say(f"{name}: migration {resolve} marked {mark}")
        return
    target = whole(to, "--to", minimum=1) if to is not None else None
    done = migrations.migrate(
        env.database_url,
        files,
        target=target,
        dry_run=dry_run,
        applied_by=str(actor()),
        password=password,
    )
    verb = "would apply" if dry_run else "applied"
    say(f"{name}: {verb} {[f.version for f in done] or 'nothing'}")


@task(help={"json": "print as JSON"})
@edge
def migrations_(c, json=False):
    """Show each migration: applied or pending, when, by whom, drift."""
    from deploy import migrations

    name = env_name(c)
    proj, env, files = _files_and_url(name)
    rows = migrations.status(env.database_url, files, password=env.secret("POSTGRES_PASSWORD"))
    if json:
        print_json([r.to_dict() if hasattr(r, "to_dict") else r.__dict__ for r in rows])
        return
    print_table(
        f"{name} migrations",
        ["version", "name", "state", "applied at", "release", "drift"],
        [
            (r.version, r.name, r.state, r.applied_at, r.release, "DRIFT" if r.drift else "")
            for r in rows
        ],
    )


def _smoke_addresses(proj, name):
    """(label, address) of every host to probe: ("", loopback) on a single local host."""
    from deploy import rolling

    if not rolling.is_rolling(proj, name):
        return [("", "127.0.0.1")]
    return [(t.name, t.bind) for t in rolling.targets(proj, name)]


@task(help={"json": "print the probes as JSON"})
@edge
def smoke_(c, json=False):
    """Probe the serving release: health, ready, version, identity, postgres, redis."""
    from deploy import releases, smoke

    name = env_name(c)
    proj = project()
    env = proj.env(name)
    current = releases.current_release(*_primary(proj, name))
    # each host on its own address, from this machine: a probe that misses a host proves nothing
    probes = [
        dataclasses.replace(p, name=f"{where}: {p.name}") if where else p
        for where, bind in _smoke_addresses(proj, name)
        for p in smoke.run(env, expect_release=current, host=bind)
    ]
    if name == "staging":
        from deploy.staging import profile_checks

        probes += profile_checks(proj, name, process_env=dict(os.environ))
    if json:
        print_json([p.to_dict() for p in probes])
    else:
        print_table(
            f"{name} smoke",
            ["probe", "verdict", "ms", "detail"],
            [(p.name, "ok" if p.ok else "FAILED", f"{p.ms:.1f}", p.detail) for p in probes],
        )
    bad = smoke.failed(probes)
    if bad:
        raise RolledBack(f"smoke failed: {bad[0].name}: {bad[0].detail}")


@task(
    help={
        "release": "release the lock you hold",
        "force": "break a lock held by someone else",
        "reason": "why breaking the lock is safe (required with --force; audited)",
    }
)
@edge
def lock(c, release=False, force=False, reason=""):
    """Show who holds the deploy lock; --force --reason breaks a stale one (audited)."""
    from deploy.state import DeployLock

    name = env_name(c)
    dl = DeployLock(*_primary(project(), name))
    info = dl.holder()
    if force:
        if not reason.strip():
            raise UsageError(
                "--force needs --reason TEXT", hint="say why the lock is safe to break"
            )
        broken = dl.force_release(actor=str(actor()), reason=reason)
        say(f"{name}: lock {'released (audited)' if broken else 'was not held'}")
        return
    if release:
        if info and info.who != str(actor()) and not dl.is_stale(info):
            raise UsageError(
                f"the lock is {info.describe()}", hint="use --force --reason if it is stuck"
            )
        dl.force_release(actor=str(actor()), reason="released by holder") if info else None
        say(f"{name}: lock released")
        return
    if info is None:
        say(f"{name}: lock free")
    else:
        stale = (
            " (STALE: its process is gone; --force --reason releases it)"
            if dl.is_stale(info)
            else ""
        )
        say(f"{name}: lock {info.describe()}{stale}")


@task(help={"limit": "how many entries (newest first)", "json": "print as JSON"})
@edge
def history_(c, limit="20", json=False):
    """Deployment history: Date | Version | Type | Status | Rollback | Notes."""
    from deploy.state import history

    name = env_name(c)
    entries = history(*_primary(project(), name))[-whole(limit, "--limit", minimum=1) :][::-1]
    if json:
        print_json(entries)
        return
    print_table(
        f"{name} history",
        ["Date", "Version", "Type", "Status", "Rollback", "Duration", "Notes"],
        [
            (
                e.get("time", ""),
                f"{e.get('release') or '-'} ({(e.get('ref') or '')[:20]})",
                e.get("kind", ""),
                e.get("status", ""),
                "yes" if str(e.get("kind", "")).startswith("rollback") else "N/A",
                f"{e.get('duration_s', 0):.2f}s",
                (f"migrations {e['migrations']} " if e.get("migrations") else "")
                + (e.get("notes") or ""),
            )
            for e in entries
        ],
    )


TASKS = [deploy, migrate, migrations_, smoke_, lock, history_]
