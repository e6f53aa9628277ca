"""Deploy-side tasks of an environment namespace: deploy, migrate, smoke, lock, history.

The pipeline and the migration engine (which loads psycopg) are imported inside the tasks that
use them, so `inv --list` stays fast.
"""

from __future__ import annotations

import os

from invoke import task

from deploy.output import print_json, print_table, say, show
from deploy.tasks._common import (
    acting_on,
    actor,
    edge,
    env_name,
    guarded,
    human_on_prod,
    preflight,
    project,
    shell_guard,
    whole,
)


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
    from deploy.engine import deploy_pipeline
    from deploy.policy import promotion

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
    from deploy import releases
    from deploy.engine import deploy_pipeline
    from deploy.policy import guards, promotion

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
    from deploy.engine import group

    return group.primary(proj, name)


def _print_hooks(proj, name):
    from deploy import hooks

    planned = hooks.plan_all(proj, name)
    print_table(
        f"{name} hooks that would run",
        ["point", "hook", "timeout"],
        [(h.point, h.name, f"{h.timeout_s:g}s") for h in planned] or [("-", "none", "")],
    )


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
    from deploy import env_migrations

    name, proj = env_name(c), project()
    version = whole(resolve, "--resolve", minimum=1) if resolve is not None else None
    target = whole(to, "--to", minimum=1) if to is not None else None
    who = actor()
    if not dry_run:
        guarded(proj, name)
        who = human_on_prod(proj, name, "migrate", to=target, resolve=version, mark=mark)
    if version is not None:
        env_migrations.resolve(proj, name, version=version, state=mark, actor=str(who))
        say(f"{name}: migration {resolve} marked {mark}")
        return
    done = env_migrations.migrate(proj, name, target=target, dry_run=dry_run, actor=str(who))
    verb = "would apply" if dry_run else "applied"
    say(f"{name}: {verb} {[f.version for f in done] or 'nothing'}")


@task(help={"json": "print as JSON"})
@edge
def migrations_(c, json=False):
    """Show each migration: applied or pending, when, by whom, drift."""
    from deploy import env_migrations

    name, proj = env_name(c), project()
    if env_migrations.kind_of(proj) == "command":
        _show_tool_revisions(env_migrations.tool_revisions(proj, name), name, json)
        return
    rows = env_migrations.status(proj, name)
    show(
        [r.to_dict() if hasattr(r, "to_dict") else r.__dict__ for r in rows],
        as_json=json,
        title=f"{name} migrations",
        columns=["version", "name", "state", "applied at", "release", "drift"],
        rows=(
            (r.version, r.name, r.state, r.applied_at, r.release, "DRIFT" if r.drift else "")
            for r in rows
        ),
    )


def _show_tool_revisions(revisions: dict[str, str], name: str, as_json: bool) -> None:
    """kind = "command": the revision the service's own tool reports, per app."""
    show(
        [{"app": app, "revision": rev} for app, rev in sorted(revisions.items())],
        as_json=as_json,
        title=f"{name} migrations (the service's current command)",
        columns=["app", "revision"],
        rows=((app or "-", rev) for app, rev in sorted(revisions.items())),
    )


@task(help={"json": "print the probes as JSON"})
@edge
def smoke_(c, json=False):
    """Probe the serving release: health, ready, version, identity, postgres, redis."""
    from deploy.probes import smoke

    name = env_name(c)
    from deploy import staging

    probes = staging.smoke_probes(project(), name, process_env=dict(os.environ))
    show(
        [p.to_dict() for p in probes],
        as_json=json,
        title=f"{name} smoke",
        columns=["probe", "verdict", "ms", "detail"],
        rows=((p.name, "ok" if p.ok else "FAILED", f"{p.ms:.1f}", p.detail) for p in probes),
    )
    smoke.require_passed(probes)


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
    from deploy import state
    from deploy.errors import GuardRefused

    name, proj = env_name(c), project()
    who = actor()
    if release or force:
        shell_guard(proj, name)
    if force and reason.strip():
        # breaking prod's lock can let two deploys race: a human signs it, never CI or an agent
        who = acting_on(proj, name, "lock-force", reason=reason)
        if proj.env(name).environment == "production" and not who.is_human:
            raise GuardRefused(
                f"{who} may not force {name}'s lock: a human signs it with a key prod trusts",
                hint="`inv prod.keys` shows whose keys count",
            )
    dl = state.DeployLock(*_primary(proj, name))
    said = state.use_lock(dl, actor=str(who), release=release, force=force, reason=reason)
    say(f"{name}: {said}")


@task(help={"limit": "how many entries (newest first)", "json": "print as JSON"})
@edge
def history_(c, limit="20", json=False):
    """Deployment history: Date | Version | Type | Status | Rollback | Notes."""
    from deploy import state

    name = env_name(c)
    where = _primary(project(), name)
    entries = state.recent_history(*where, limit=whole(limit, "--limit", minimum=1))
    show(
        entries,
        as_json=json,
        title=f"{name} history",
        columns=state.HISTORY_COLUMNS,
        rows=state.history_rows(entries),
    )


@task(
    help={
        "verify": "check that every record names the hash of the one before it",
        "limit": "how many records (newest first)",
        "json": "print as JSON",
    }
)
@edge
def audit_(c, verify=False, limit="20", json=False):
    """Audit log: who did what; --verify reports the first record that does not chain."""
    from deploy import state
    from deploy.errors import DeployError

    name = env_name(c)
    host, layout = _primary(project(), name)
    if verify:
        out = state.chain_report(host, layout)
        for what, v in out.items():
            json or say(f"{name}: {what}: {'ok' if v['ok'] else 'BROKEN'}: {v['detail']}")
        json and print_json(out)
        broken = [f"{w} {v['detail']}" for w, v in out.items() if not v["ok"]]
        if broken:
            raise DeployError(f"{name}: {broken[0]}", hint="see docs/SECURITY.md, tamper evidence")
        return
    records = state.read_jsonl(host, layout.audit)[-whole(limit, "--limit", minimum=1) :][::-1]
    show(records, as_json=json, title=f"{name} audit", columns=state.AUDIT_COLUMNS,
         rows=state.audit_rows(records))  # fmt: skip


TASKS = [deploy, migrate, migrations_, smoke_, lock, history_, audit_]
