"""The Runtime protocol: what the pipelines ask of a runtime, and nothing else.

A runtime runs releases of the service on an environment's hosts: the native one as gunicorn masters
on a shared socket per host, the compose one as image tags of a docker compose project. The deploy
pipeline (deploy.engine.deploy_pipeline) calls only these methods, so a change to how a release is
built, started or verified is made in one runtime and holds for one host or sixteen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from deploy.engine.context import Context
    from deploy.engine.group import Target
    from deploy.engine.rollback_rules import RollbackPlan
    from deploy.engine.steps import Step
    from deploy.policy.guards import Check
    from deploy.probes.smoke import Probe
    from deploy.releases import Release

CheckFn = tuple[str, Callable[[], "Check"]]


class Runtime(Protocol):
    """One environment's runtime, bound to its hosts (a group; one host is a group of one)."""

    kind: str  # "native" or "compose": for messages and the dry run only, never for branching
    reports_hosts: bool  # results and audit carry one outcome per host

    # -- the environment's servers ------------------------------------------------------------

    def up(self) -> list[str]:
        """Start the environment's PostgreSQL and Redis (idempotent); one line per server."""
        ...

    def down(self) -> list[str]:
        """Stop the service on every host, then PostgreSQL and Redis; data stays."""
        ...

    def logs(self, *, tail: int, service: str) -> str:
        """The last lines of the environment's logs, secrets scrubbed."""
        ...

    def take_backup(self, *, actor: str, release: str, reason: str) -> dict[str, Any]:
        """A backup of the environment's database now, labelled with release; its metadata."""
        ...

    def list_backups(self) -> list[dict[str, Any]]:
        """The environment's backups' metadata."""
        ...

    def remove_backups(self, ids: list[str]) -> None:
        """Delete these backups (retention)."""
        ...

    def verify_backup(self, backup_id: str) -> dict[str, Any]:
        """Restore into a scratch database, compare row counts with the live one, drop it."""
        ...

    def servers_status(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(PostgreSQL and Redis, the service) as `status` shows them."""
        ...

    def probe_serving(self) -> list[Probe]:
        """`inv <env>.smoke`: the serving release's probes, with its database sessions asked
        where this machine reaches its cluster."""
        ...

    # -- deploy -------------------------------------------------------------------------------

    def bind(self, ctx: Context) -> None:
        """Called once with the operation's context, before any other method."""
        ...

    def checks(self) -> list[CheckFn]:
        """Preflight checks of what must answer before anything changes (servers, engine, hosts)."""
        ...

    def serving(self) -> str | None:
        """The release serving now on the primary host, or None."""
        ...

    def describe(self, ctx: Context, ref: str) -> dict[str, str]:
        """What each step will do, in the operator's words, for the dry run."""
        ...

    def build(self, ctx: Context, *, commit: str, ref: str, dirty: bool) -> tuple[Release, str]:
        """The release built on every host (nothing switched); the release and a detail line. It
        sets each target's `previous` (what that host served before)."""
        ...

    def pending(self, ctx: Context) -> list[int]:
        """The migration versions the release ships that the database has not applied."""
        ...

    def backup(self, ctx: Context, *, reason: str) -> dict[str, Any]:
        """A backup of the environment's database now; its metadata (id, size_bytes...)."""
        ...

    def migrate(self, ctx: Context) -> list[int]:
        """Apply the release's pending migrations once; the versions applied."""
        ...

    def host_steps(self, ctx: Context, target: Target) -> list[Step]:
        """The steps that move one host to the release, in order (the last one checks it)."""
        ...

    def revert(self, ctx: Context, target: Target) -> str | None:
        """Put the host's previous release back in front (returned), or stop the new one (None)."""
        ...

    def watch(self, ctx: Context, *, window_s: float) -> Any:
        """The verify window over every host; a verdict with ok, reason and summary."""
        ...

    def prune(self, ctx: Context) -> str:
        """Drop what falls out of the environment's keep_releases; a detail line."""
        ...

    def dry_run_commands(self, ctx: Context, ref: str) -> list[str]:
        """The exact commands the steps will run, where they are known in advance."""
        ...

    # -- rollback -----------------------------------------------------------------------------

    def refuse_rollback(self, ctx: Context, *, level: int, reset_data: bool) -> None:
        """Refuse what this runtime cannot do, before any check runs."""
        ...

    def rollback_checks(self, level: int, *, dry_run: bool) -> list[CheckFn]:
        """What must answer before a rollback of this level plans or acts."""
        ...

    def rollback_plan(
        self,
        ctx: Context,
        *,
        level: int,
        to: str | None,
        backup_id: str | None,
        reset_data: bool,
        dry_run: bool,
    ) -> RollbackPlan:
        """What serves, the target, the schema plan and the backup; refuses before any change."""
        ...

    def rollback_does(self, ctx: Context, p: RollbackPlan) -> dict[str, str]:
        """What schema, freeze, stop and restore will do, for the dry run."""
        ...

    def restart_steps(self, ctx: Context, p: RollbackPlan, details: list[str]) -> list[Step]:
        """Level 1: the serving release restarted (servers first), then checked."""
        ...

    def revert_schema(self, ctx: Context, p: RollbackPlan, details: list[str]) -> str:
        """Level 2: the down migrations the target needs, once, or nothing (expand-only)."""
        ...

    def switch_steps(self, ctx: Context, p: RollbackPlan, *, restored: bool) -> list[Step]:
        """Levels 2 and 3: the target release in front on every host, then checked."""
        ...

    def stop_service(self, ctx: Context, p: RollbackPlan) -> str:
        """Level 3: the service stopped everywhere before the restore."""
        ...

    def restore(self, ctx: Context, p: RollbackPlan, details: list[str]) -> str:
        """Level 3: the database replaced by the plan's backup."""
        ...

    def check_rollback_target(self, ctx: Context, p: RollbackPlan) -> None:
        """Refuse, before any change, a target that cannot serve (a dump or an image gone)."""
        ...

    def release_of(self, ctx: Context, rid: str) -> Release:
        """A release's id, commit and ref, as this runtime recorded them."""
        ...

    def audit_extra(self, ctx: Context) -> dict[str, Any]:
        """What the rollback's audit record adds (every host's outcome, the runtime)."""
        ...
