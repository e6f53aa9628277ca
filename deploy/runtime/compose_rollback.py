"""The compose runtime's rollback plan: what history says about the image tags, the target, schema
plan, backup and exact commands of each level, refused before anything changes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from deploy import env_migrations, releases
from deploy.commands.compose import migrate as migrate_argv
from deploy.commands.compose import restore_in_container as restore_argv
from deploy.config import Project
from deploy.engine.rollback_rules import (
    RollbackPlan,
    SchemaPlan,
    ToolSchemaPlan,
    backup_for,
    interrupted,
    previous_good,
    schema_plan,
)
from deploy.errors import GuardRefused, UsageError
from deploy.runtime.compose_backups import list_backups, role_and_database
from deploy.runtime.compose_project import (
    APP_SERVICE,
    SERVER_SERVICES,
    ComposeProject,
    release_env,
    shown,
    switch_shown,
)
from deploy.runtime.compose_tool import ComposeTool
from deploy.state import Layout, find_backup

# The kinds whose release served successfully (what serves now; what prune keeps).
SERVED_KINDS = ("deploy", "emergency", "rollback-1", "rollback-2", "rollback-3")


# -- what history says -----------------------------------------------------------------------------


def migrations_dir(proj: Project) -> str:
    """The service's SQL migrations folder as the image sees it: relative to the image's working
    directory, which is the service's root (compose_image.dockerfile)."""
    return proj.service.migrations.dir


def releases_in(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every release history names, oldest first, once each."""
    return list(dict.fromkeys(str(e["release"]) for e in entries if e.get("release")))


def served(entries: Sequence[Mapping[str, Any]]) -> str | None:
    """The release the newest successful operation left serving (when no engine can be asked)."""
    for e in reversed(entries):
        if e.get("status") == "success" and e.get("kind") in SERVED_KINDS and e.get("release"):
            return str(e["release"])
    return None


def commit_of(entries: Sequence[Mapping[str, Any]], release: str) -> str:
    """The commit history recorded for release (its image was built from it)."""
    for e in reversed(entries):
        if e.get("release") == release and e.get("commit"):
            return str(e["commit"])
    raise UsageError(
        f"history names no commit for release {release}",
        hint="name another release with --to, or deploy that commit again",
    )


# -- the plan of each level ------------------------------------------------------------------------


def _level3_plan(
    proj: Project,
    rt: ComposeProject,
    entries: Sequence[Mapping[str, Any]],
    *,
    current: str,
    backup_id: str | None,
    layout: Layout,
) -> dict[str, Any]:
    """The backup to restore (native choice rules) and the tag it was taken under."""
    name, c = rt.cfg.name, rt.commands()
    chosen = (
        find_backup(list_backups(proj, name), backup_id, env=name)
        if backup_id
        else backup_for(entries, list_backups(proj, name), current=current)
    )
    if chosen is None:
        raise GuardRefused(
            f"no backup of {name} was taken before {current}",
            hint=f"list them with `inv {name}.backups`; pick one with --backup ID",
        )
    target = str(chosen.get("release") or "")
    if not target or target not in set(releases_in(entries)):
        raise GuardRefused(
            f"backup {chosen['id']} matches release {target or '(none)'}, which history does "
            "not know as an image tag",
            hint=f"pick another with --backup ID (`inv {name}.backups` lists them)",
        )
    user, database = role_and_database(rt)
    env_img = release_env(rt, None)
    restore = restore_argv(
        c, user=user, database=database, backup_id=chosen["id"], backups_dir=layout.backups
    )
    commands = [
        f"stop:    {shown(c.stop(services=rt.with_processes(APP_SERVICE)), release_env(rt, current))}",
        *(f"restore: {shown(argv, env_img)}" for argv in restore),
        *(f"start:   {line}" for line in switch_shown(rt, target, commit_of(entries, target))),
    ]
    return {
        "target": target,
        "backup": chosen["id"],
        "backup_info": chosen,
        "commands": commands,
    }


def make_plan(
    proj: Project,
    rt: ComposeProject,
    entries: Sequence[Mapping[str, Any]],
    *,
    level: int,
    current: str,
    to: str | None,
    actor: str,
    backup_id: str | None = None,
    layout: Layout | None = None,
) -> RollbackPlan:
    """The rollback's target, schema plan, backup and exact commands; refuses before anything
    changes. A rollback of the same level whose process died is completed: its target (level 2)
    or its backup (level 3), whatever serves now."""
    dead = interrupted(entries)
    resumes = str(dead["id"]) if dead and dead.get("kind") == f"rollback-{level}" else None
    p = RollbackPlan(level, rt.cfg.name, current, current, resumes=resumes)
    if level == 3:
        assert layout is not None
        if not backup_id and resumes and dead and dead.get("backup"):
            backup_id = str(dead["backup"])
        d = _level3_plan(proj, rt, entries, current=current, backup_id=backup_id, layout=layout)
        p.target, p.backup, p.commands = d["target"], d["backup_info"], d["commands"]
    elif level == 1:
        c = rt.commands()
        start = c.up(wait=True, wait_timeout_s=rt.wait_timeout_s)
        env_cur = release_env(rt, current, commit_of(entries, current))
        p.commands = [
            f"restart: {shown(c.restart(), env_cur)}",
            f"restart: {shown(start, env_cur)}",
        ]
    else:
        p.target = _level2_target(
            rt.cfg.name, entries, current=current, to=to, dead=dead if resumes else None
        )
        if proj.service.migrations.kind == "command":
            assert layout is not None
            p.schema = _level2_tool_schema(proj, rt, layout, current=current, target=p.target)
        else:
            p.schema = _level2_schema(proj, rt.cfg.name, entries, current=current, target=p.target)
        p.commands = _level2_commands(proj, rt, entries, p, actor=actor)
    return p


def _level2_tool_schema(
    proj: Project, rt: ComposeProject, layout: Layout, *, current: str, target: str
) -> ToolSchemaPlan:
    """The service's `down` to the revisions the target release recorded (its RELEASE.json on
    the host), from what `current` prints in the serving release's image; refused, before
    anything changes, without a recorded revision or a `down` command."""
    name = rt.cfg.name
    wanted = env_migrations.recorded_revisions(releases.release_meta(rt.host, layout, target))
    serving = ComposeTool(proj, name, rt, current)
    schema = env_migrations.down_plan(serving, wanted, target=target)
    if schema.refused:
        raise GuardRefused(
            f"level 2 cannot go back to {target}: {schema.refusal}; level 3 (restore) is needed",
            hint=f"`inv {name}.rollback --level 3` restores the backup taken before the deploy",
        )
    return schema


def _level2_target(
    name: str,
    entries: Sequence[Mapping[str, Any]],
    *,
    current: str,
    to: str | None,
    dead: Mapping[str, Any] | None = None,
) -> str:
    """--to (a release history knows), the release a killed level 2 was going to, or the previous
    good one."""
    known = set(releases_in(entries))
    if to:
        if to not in known:
            raise UsageError(
                f"history names no release {to!r}", hint=f"`inv {name}.history` lists them"
            )
        if to == current:
            raise UsageError(f"{to} is already serving", hint="level 1 restarts it")
        return to
    if dead and dead.get("release"):
        # finish what the killed rollback started: once its tag runs, the newest entry naming
        # the current release is the dead one, and the previous good one would be the release
        # it was rolling back from
        return str(dead["release"])
    found = previous_good(entries, current=current, existing=frozenset(known))
    if found is None:
        raise GuardRefused(
            f"no previous good release of {current} is in history",
            hint="name one with --to RELEASE",
        )
    return found


def _level2_schema(
    proj: Project, name: str, entries: Sequence[Mapping[str, Any]], *, current: str, target: str
) -> SchemaPlan:
    files = releases.migrations_at_commit(proj, commit_of(entries, current))
    target_files = releases.migrations_at_commit(proj, commit_of(entries, target))
    target_version = max((f.version for f in target_files), default=0)
    # the serving release applied every file it ships; the engine re-reads the ledger to act
    schema = schema_plan(files, [f.version for f in files], target_version=target_version)
    if schema.refused:
        raise GuardRefused(
            f"level 2 cannot go back to {target}: {', '.join(schema.missing_down)} has no down file",
            hint=f"`inv {name}.rollback --level 3` restores the backup taken before the deploy",
        )
    return schema


def _level2_commands(
    proj: Project,
    rt: ComposeProject,
    entries: Sequence[Mapping[str, Any]],
    p: RollbackPlan,
    *,
    actor: str,
) -> list[str]:
    c, schema, target = rt.commands(), p.schema, p.target or ""
    assert schema is not None
    commands = []
    if isinstance(schema, ToolSchemaPlan):
        if schema.revert:
            down = ComposeTool(proj, rt.cfg.name, rt, p.current or "").argv(down=schema.commands)
            env_cur = release_env(rt, p.current)
            commands.append(f"schema:  {shown(c.run(APP_SERVICE, down, no_deps=True), env_cur)}")
    elif schema.revert:
        down = migrate_argv(
            "down",
            release=target,
            applied_by=actor,
            to=schema.target_version,
            directory=migrations_dir(proj),
        )
        env_cur = release_env(rt, p.current)
        servers = c.up(services=SERVER_SERVICES, wait_timeout_s=rt.wait_timeout_s)
        commands += [
            f"schema:  {shown(servers, env_cur)}",
            f"schema:  {shown(c.run(APP_SERVICE, down, no_deps=True), env_cur)}",
        ]
    start = switch_shown(rt, target, commit_of(entries, target))
    return [*commands, *(f"start:   {line}" for line in start)]
