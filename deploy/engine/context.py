"""What one run of a pipeline knows: the environment, its hosts, the actor; steps read and fill it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploy.config import EnvConfig, Project
from deploy.engine import group
from deploy.engine.steps import Walker
from deploy.errors import DeployError
from deploy.hosts import Host
from deploy.policy.actors import Actor
from deploy.state import DeployLock, Layout

if TYPE_CHECKING:
    from deploy.releases import Release

Printer = Callable[[str], None]


@dataclass
class Context:
    """One operation on one environment. `targets` is the environment's group of hosts (primary
    first); `host` and `layout` are the primary's, which hold the lock and the state files."""

    proj: Project
    env: EnvConfig
    actor: Actor
    host: Host
    layout: Layout
    printer: Printer
    targets: list[group.Target] = field(default_factory=list)
    release: Release | None = None
    previous: str | None = None
    applied: list[int] = field(default_factory=list)
    backup_id: str | None = None
    outcomes: list[group.HostOutcome] = field(default_factory=list)
    hook_notes: list[str] = field(default_factory=list)  # post-hook failures, for history
    runtime: Any = None
    process_env: dict[str, str] = field(default_factory=dict)
    extra_checks: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)
    deadline: float | None = None  # time.monotonic() past which the operation stops (fail closed)
    walker: Walker = field(init=False)
    lock: DeployLock = field(init=False)

    def __post_init__(self) -> None:
        self.walker = Walker(self.env.name, self.printer)
        self.lock = DeployLock(self.host, self.layout)

    @property
    def built(self) -> Release:
        """The release this operation built or acts on; steps after the build read it."""
        if self.release is None:
            raise DeployError("no release yet: the build step runs first")
        return self.release

    @property
    def timings(self) -> dict[str, float]:
        return self.walker.timings

    @property
    def policy(self) -> Any:
        return self.proj.policies[self.env.name]

    def step(self, name: str, fn: Callable[[], str | None]) -> None:
        self.walker.step(name, fn)

    def print_outcomes(self) -> None:
        """Every host's outcome as a table, after a step over the group stopped or finished."""
        self.printer(f"{self.env.name}: hosts")
        for line in group.table(self.outcomes):
            self.printer(line)

    def hook_context(self, status: str) -> dict[str, Any]:
        rel = self.release
        return {
            "release": rel.id if rel else "",
            "commit": rel.commit if rel else "",
            "ref": rel.ref if rel else "",
            "actor": self.actor,
            "previous": self.previous or "",
            "status": status,
        }

    def close(self) -> None:
        for t in self.targets:
            t.host.close()
        self.host.close()
