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
    from deploy.engine.steps import Step
    from deploy.guards import Check
    from deploy.releases import Release

CheckFn = tuple[str, Callable[[], "Check"]]


class Runtime(Protocol):
    """One environment's runtime, bound to its hosts (a group; one host is a group of one)."""

    kind: str  # "native" or "compose": for messages and the dry run only, never for branching

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
