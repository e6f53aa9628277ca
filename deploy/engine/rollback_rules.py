"""What a rollback may do, decided from history and the request alone: levels, the previous good
release, the schema plan, the backup that matches a release, and the checks of the request."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deploy import migrations
from deploy.config import EnvConfig
from deploy.errors import GuardRefused, UsageError
from deploy.hosts import Host
from deploy.migrations import MigrationFile
from deploy.policy.actors import Actor
from deploy.state import Layout, audit, utc_now

LEVELS = {1: "restart", 2: "revert", 3: "restore"}
# releases a later rollback may go back to; a rollback-3 target carries restored data, not a verdict
GOOD_KINDS = ("deploy", "emergency", "rollback-2")
Confirm = Callable[[str], str]


def parse_level(level: object) -> int:
    """--level as the operator typed it: 1, 2 or 3 (check_request refuses other numbers)."""
    try:
        return int(str(level).strip())
    except ValueError:
        raise UsageError(
            f"--level {level or '(missing)'} is not a rollback level",
            hint="--level 1 restart, 2 revert to the previous release, 3 restore a backup",
        ) from None


# -- pure selection logic (no I/O; unit-tested) ------------------------------------------------


def interrupted(entries: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest history entry when it is a rollback still marked running: its process died."""
    if not entries:
        return None
    last = entries[-1]
    if str(last.get("kind", "")).startswith("rollback-") and last.get("status") == "running":
        return last
    return None


def previous_good(
    entries: Sequence[Mapping[str, Any]],
    *,
    current: str | None,
    existing: set[str] | frozenset[str],
) -> str | None:
    """The newest release that succeeded before the current one, was never rolled back from, and
    still has its directory; None when there is none."""
    rolled_back_from = {
        e.get("previous")
        for e in entries
        if e.get("kind") in ("rollback-2", "rollback-3") and e.get("status") == "success"
    }
    anchor = len(entries)
    for i in range(len(entries) - 1, -1, -1):
        if current and entries[i].get("release") == current:
            anchor = i
            break
    for e in reversed(entries[:anchor]):
        rid = e.get("release")
        if (
            e.get("status") == "success"
            and e.get("kind") in GOOD_KINDS
            and rid
            and rid != current
            and rid not in rolled_back_from
            and rid in existing
        ):
            return str(rid)
    return None


@dataclass(frozen=True)
class SchemaPlan:
    """What level 2 does to the schema on the way back to a release that ships target_version."""

    target_version: int
    since: tuple[int, ...]  # versions applied above target_version
    expand_only: bool
    missing_down: tuple[str, ...]  # files among `since` that have no down file

    @property
    def revert(self) -> bool:
        return bool(self.since) and not self.expand_only

    @property
    def refused(self) -> bool:
        return self.revert and bool(self.missing_down)

    def describe(self) -> str:
        if not self.since:
            return f"schema already at version {self.target_version}"
        listed = ", ".join(str(v) for v in self.since)
        if self.expand_only:
            return f"schema stays: {listed} expand-only"
        if self.missing_down:
            return f"refused: {', '.join(self.missing_down)} has no down file"
        return f"run down files of {', '.join(str(v) for v in reversed(self.since))}"


@dataclass(frozen=True)
class ToolSchemaPlan:
    """What level 2 does to a schema the service's own tool manages (kind "command", or nothing
    for kind "none"): the `down` commands to the revisions the target release recorded."""

    now: dict[str, str] = field(default_factory=dict)
    wanted: dict[str, str] | None = None  # what the target release recorded; None: nothing
    commands: tuple[tuple[str, ...], ...] = ()
    refusal: str = ""  # why level 2 cannot go back, when it cannot
    kind: str = "command"

    @property
    def revert(self) -> bool:
        return bool(self.commands) and not self.refusal

    @property
    def refused(self) -> bool:
        return bool(self.refusal)

    @property
    def since(self) -> tuple[int, ...]:
        return ()  # no expand-only versions to keep: the tool's revisions are all or nothing

    def describe(self) -> str:
        if self.kind == "none":
            return "schema not managed (migrations kind none)"
        if self.refusal:
            return f"refused: {self.refusal}"
        if not self.commands:
            return f"schema already at {migrations.describe_revisions(self.now)}"
        return "; ".join(shlex.join(argv) for argv in self.commands)


def schema_plan(
    files: Sequence[MigrationFile], applied: Sequence[int], *, target_version: int
) -> SchemaPlan:
    """files: the serving release's (the target lacks newer files); applied: the ledger's versions."""
    since = tuple(sorted(v for v in applied if v > target_version))
    by_version = {f.version: f for f in files}
    missing = tuple(
        by_version[v].filename if v in by_version else f"version {v} (no file)"
        for v in since
        if v not in by_version or by_version[v].down_path is None
    )
    return SchemaPlan(target_version, since, migrations.is_expand_only(files, since), missing)


def backup_for(
    entries: Sequence[Mapping[str, Any]],
    backups: Sequence[Mapping[str, Any]],
    *,
    current: str | None,
) -> Mapping[str, Any] | None:
    """The backup taken before the current release's deploy: its history entry names it; else the
    newest backup taken while another release served; else the newest taken while the current one
    served (after a level 2 back to it). A backup taken before the first release (no release served
    it, an empty database) has no release to restore under and is never chosen."""
    by_id = {b.get("id"): b for b in backups if b.get("release")}
    # a restore put its release back on the backup's data: restoring again goes to the same point
    kinds = (*GOOD_KINDS, "rollback-3")
    for e in reversed(entries):
        if e.get("release") == current and e.get("kind") in kinds and e.get("backup") in by_id:
            return by_id[e["backup"]]
    older = [b for b in by_id.values() if b.get("release") != current]
    same = [b for b in by_id.values() if b.get("release") == current]
    return max(older or same, key=lambda b: str(b.get("id")), default=None)


def check_request(
    *,
    level: int,
    env: EnvConfig,
    actor: Actor,
    yes: bool,
    dry_run: bool,
    reset_data: bool,
    to: str | None,
    backup_id: str | None,
) -> None:
    """Refuse a request that no state could make right, before anything is read or changed."""
    if level not in LEVELS:
        raise UsageError(
            f"--level {level} is not a rollback level",
            hint="1 restart, 2 revert to the previous release, 3 restore a backup",
        )
    prod = env.environment == "production"
    if reset_data and (level != 1 or prod):
        raise UsageError(
            f"--reset-data is not allowed on {env.name}"
            if prod
            else "--reset-data goes with --level 1",
            hint="prod data is never wiped; use level 3 to restore a backup"
            if prod
            else f"`inv {env.name}.rollback --level 1 --reset-data`",
        )
    if to and level != 2:
        raise UsageError("--to goes with --level 2", hint="level 3 takes --backup ID")
    if backup_id and level != 3:
        raise UsageError("--backup goes with --level 3", hint="level 2 takes --to RELEASE")
    if prod and not dry_run and not actor.is_human:
        raise GuardRefused(
            f"{actor} may not roll back {env.name}: automation never acts on prod",
            hint="a human signs it with a key prod trusts (`inv prod.keys`)",
        )


def freeze(
    host: Host, layout: Layout, *, actor: str, reason: str, backup: str | None, release: str | None
) -> dict[str, Any]:
    record = {
        "who": actor,
        "when": utc_now(),
        "why": reason or "level 3 restore",
        "backup": backup,
        "release": release,
    }
    host.makedirs(layout.state)
    host.write_text(layout.freeze, json.dumps(record, indent=2) + "\n")
    audit(host, layout, actor=actor, action="freeze", **record)
    return record


def confirm_prod(env: EnvConfig, *, actor: Actor, yes: bool, confirm: Confirm | None) -> None:
    """prod: the operator types the environment's name, unless a human passed --yes."""
    if env.environment != "production" or (yes and actor.is_human):
        return
    answer = ""
    if confirm is not None:
        try:
            answer = confirm(f"type {env.name!r} to roll back {env.name}: ").strip()
        except EOFError:
            answer = ""
    if answer != env.name:
        raise GuardRefused(
            f"rollback of {env.name} not confirmed",
            hint=f"type {env.name!r} at the prompt, or pass --yes",
        )


@dataclass
class RollbackPlan:
    """What a rollback will do, decided before anything changes; the dry run shows it."""

    level: int
    env: str
    current: str | None
    target: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)
    schema: SchemaPlan | ToolSchemaPlan | None = None
    backup: Mapping[str, Any] | None = None
    resumes: str | None = None  # history id of an interrupted rollback this one completes
    reset_data: bool = False
    commands: list[str] = field(default_factory=list)  # the exact commands, where known

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "kind": LEVELS[self.level],
            "env": self.env,
            "current": self.current,
            "target": self.target,
            "steps": self.steps,
            "schema": self.schema.describe() if self.schema else None,
            "backup": self.backup.get("id") if self.backup else None,
            "resumes": self.resumes,
            "commands": self.commands,
        }
