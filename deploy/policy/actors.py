"""Who is acting: a name, a claimed kind, and the key that can prove a human decided.

STAGEFLOW_ACTOR and STAGEFLOW_ACTOR_KIND (or a terminal) only describe the actor for dev and
staging and may only lower its rights. On prod the kind "human" is granted by `signed()`: a
signature made now with the actor's key, verified against the allowed signers prod trusts.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from deploy.clock import Clock, stamp, system_clock
from deploy.commands import git as gitcmd
from deploy.errors import DeployError, UsageError
from deploy.hosts import run_process
from deploy.policy import keys

KINDS = ("human", "agent", "ci")
UNSIGNED = "unsigned"  # claimed human, but no trusted signature proves it: never human on prod


@dataclass(frozen=True)
class Actor:
    name: str
    kind: str
    key: str | None = None  # the signing key (a path, or git's key::...), never its secret half
    identity: keys.Identity | None = None  # set only by a verified signature

    @property
    def is_human(self) -> bool:
        return self.kind == "human"

    @property
    def is_automation(self) -> bool:
        return self.kind in ("agent", "ci")

    def __str__(self) -> str:
        return self.name if self.is_human else f"{self.name} ({self.kind})"


def _git_config(key: str) -> str | None:
    try:
        out = run_process(gitcmd.config_get(key), timeout=5)
    except OSError:
        return None
    return (out.stdout.strip() or None) if out.ok else None


def resolve(process_env: Mapping[str, str], *, stdin_is_tty: bool) -> Actor:
    """Default kind: human only when stdin is a terminal; otherwise ci. This is a description for
    dev and staging; prod asks `signed()`."""
    kind = process_env.get("STAGEFLOW_ACTOR_KIND") or ("human" if stdin_is_tty else "ci")
    if kind not in KINDS:
        raise UsageError(
            f"STAGEFLOW_ACTOR_KIND={kind!r} is not a kind", hint=f"use {', '.join(KINDS)}"
        )
    if process_env.get("CI") and kind == "human" and not process_env.get("STAGEFLOW_ACTOR_KIND"):
        kind = "ci"
    name = (
        process_env.get("STAGEFLOW_ACTOR")
        or _git_config("user.email")
        or process_env.get("USER")
        or "unknown"
    )
    key = keys.signing_key(process_env, git_key=_git_config("user.signingkey"))
    return Actor(name=name, kind=kind, key=key)


def statement(action: str, env: str, *, clock: Clock = system_clock, **fields: object) -> dict:
    """A fresh statement of one action: the nonce makes each signature single-use evidence."""
    return {"action": action, "env": env, "time": stamp(clock()),
            "nonce": secrets.token_hex(8), **fields}  # fmt: skip


def signed(
    actor: Actor, signers: Sequence[keys.Signer], signed_statement: dict
) -> tuple[Actor, keys.Identity]:
    """The actor as prod sees it: human, named by principal, when the signature verifies."""
    identity = keys.verify(signed_statement, signers)
    return replace(actor, name=identity.principal, kind="human", identity=identity), identity


def replace_kind(actor: Actor, kind: str) -> Actor:
    return replace(actor, kind=kind)


def prove(
    actor: Actor, signers: Sequence[keys.Signer], action: str, env: str, **fields: object
) -> Actor:
    """Sign a statement of this action now and verify it: a human actor, or the actor marked
    unsigned (automation keeps its own kind) so that every prod rule refuses it."""
    if actor.is_automation:
        return actor
    try:
        proof = keys.sign(statement(action, env, **fields), key=actor.key)
        return signed(actor, signers, proof)[0]
    except DeployError:
        return replace(actor, kind=UNSIGNED)
