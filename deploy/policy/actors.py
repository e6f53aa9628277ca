"""Who is acting: a named human, an agent, or CI (STAGEFLOW_ACTOR, STAGEFLOW_ACTOR_KIND)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from deploy.commands import git as gitcmd
from deploy.errors import UsageError
from deploy.hosts import run_process

KINDS = ("human", "agent", "ci")


@dataclass(frozen=True)
class Actor:
    name: str
    kind: str

    @property
    def is_human(self) -> bool:
        return self.kind == "human"

    def __str__(self) -> str:
        return self.name if self.is_human else f"{self.name} ({self.kind})"


def _git_email() -> str | None:
    try:
        out = run_process(gitcmd.config_get("user.email"), timeout=5)
    except OSError:
        return None
    return (out.stdout.strip() or None) if out.ok else None


def resolve(process_env: Mapping[str, str], *, stdin_is_tty: bool) -> Actor:
    """Default kind: human only when stdin is a terminal; otherwise ci (fail closed for prod)."""
    kind = process_env.get("STAGEFLOW_ACTOR_KIND") or ("human" if stdin_is_tty else "ci")
    if kind not in KINDS:
        raise UsageError(
            f"STAGEFLOW_ACTOR_KIND={kind!r} is not a kind", hint=f"use {', '.join(KINDS)}"
        )
    if process_env.get("CI") and kind == "human" and not process_env.get("STAGEFLOW_ACTOR_KIND"):
        kind = "ci"
    name = (
        process_env.get("STAGEFLOW_ACTOR") or _git_email() or process_env.get("USER") or "unknown"
    )
    return Actor(name=name, kind=kind)
