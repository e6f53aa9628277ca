"""A release runs the service contract of its commit.

What a release of commit C does on its hosts (its entry point, build steps, processes, migration
commands, smoke requests, the user it runs as) is `[service]` of C's stageflow.toml: the gate, the
staging run and prod's approvers all judged C. The working tree's stageflow.toml is what the
engine reads, so on staging and prod it must say the same; dev is where a contract is tried, and
runs the working tree's as it is.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from deploy.commands import git as gitcmd
from deploy.config import EnvConfig, Project
from deploy.errors import ConfigError
from deploy.hosts import run_process
from deploy.policy.guards import Check
from deploy.service import Service, load_service

GIT_TIMEOUT_S = 30.0


def committed_toml(root: Path, commit: str) -> dict[str, Any] | None:
    """stageflow.toml as commit carries it beside the project's root, parsed; None when the
    commit has none. A file that does not parse is ConfigError."""
    out = run_process(gitcmd.show_file(commit, "./stageflow.toml"), cwd=root, timeout=GIT_TIMEOUT_S)
    if not out.ok:
        return None
    try:
        return tomllib.loads(out.stdout)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"commit {commit[:12]}'s stageflow.toml does not parse: {str(exc).splitlines()[0]}"
        ) from None


# what no deploy runs: `seed` is the data tasks' (staging.init, --reset-data), run as they are asked
NOT_DEPLOYED = ("seed",)


def differences(here: Service, there: Service) -> list[str]:
    """The [service] keys a deploy runs whose values differ, by the contract's names (env_keys
    is `env`)."""
    names = []
    for f in fields(Service):
        if f.name not in NOT_DEPLOYED and getattr(here, f.name) != getattr(there, f.name):
            name = f.name.removesuffix("_keys").removesuffix("_from")
            name = {"user": "[project] service_user", "secret": "env"}.get(name, name)
            if name not in names:
                names.append(name)
    return names


def drift(proj: Project, commit: str) -> str:
    """What of the working tree's [service] is not commit's, or "" when they are the same."""
    short = commit[:12]
    try:
        data = committed_toml(proj.root, commit)
        if data is None:
            return f"commit {short} carries no stageflow.toml"
        committed = load_service(proj.root / "stageflow.toml", data)
    except ConfigError as exc:
        return f"commit {short}'s [service] does not load ({exc.message[:120]})"
    differ = differences(proj.service, committed)
    if not differ:
        return ""
    return f"stageflow.toml [service] here differs from commit {short}'s ({', '.join(differ)})"


def service_contract(proj: Project, env: EnvConfig, commit: str) -> Check:
    """staging and prod run the deployed commit's [service]; dev runs the working tree's."""
    if not env.production_like:
        return Check("contract", True, f"{env.name} runs the working tree's [service]")
    problem = drift(proj, commit)
    if problem:
        short = commit[:12]
        return Check(
            "contract",
            False,
            f"{problem}; {env.name} runs the [service] its commit was gated and staged with: "
            f"commit the change and deploy that commit, or `git checkout {short} -- stageflow.toml`",
        )
    return Check("contract", True, f"[service] is commit {commit[:12]}'s")
