"""The one place a runtime is chosen: from the environment's policy, bound to its hosts."""

from __future__ import annotations

from deploy.config import Project
from deploy.engine import group
from deploy.engine.group import Target
from deploy.runtime.base import Runtime
from deploy.runtime.native_runtime import NativeRuntime


def runtime_for(proj: Project, name: str) -> tuple[Runtime, list[Target]]:
    """The environment's runtime and its group of hosts, primary first."""
    targets = group.targets(proj, name)
    if proj.policies[name].runtime == "compose":  # one project on the first host (config checks)
        # loaded only here: a native environment's commands need none of the compose modules
        from deploy.runtime.compose_runtime import ComposeRuntime

        return ComposeRuntime(proj, name, targets[:1]), targets[:1]
    return NativeRuntime(proj, name, targets, rolling_hosts=group.is_rolling(proj, name)), targets


def close(targets: list[Target]) -> None:
    """The SSH connections a runtime's hosts opened go (a local host has none)."""
    for t in targets:
        t.host.close()
