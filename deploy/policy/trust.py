"""Whose keys prod trusts: the allowed-signers file kept on prod's primary host.

Never the file of the commit being deployed (that commit could add its own approver): the first
file is installed once by a person (`inv prod.keys --trust FILE`), and after that only an approved
prod deploy replaces it, with the prod.keys of the commit the trusted approvers signed for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from deploy.commands import git as gitcmd
from deploy.config import Project
from deploy.engine import group
from deploy.errors import ConfigError, NotApproved, UsageError
from deploy.hosts import run_process
from deploy.policy import keys
from deploy.state import Layout, audit

PROD = "prod"


def path(layout: Layout) -> str:
    return str(PurePosixPath(layout.state, "allowed_signers"))


def _text(proj: Project) -> str | None:
    host, layout = group.primary(proj, PROD)
    return host.read_text(path(layout))


def trusted(proj: Project) -> tuple[keys.Signer, ...]:
    """The signers prod trusts now; refused (never empty) when none were installed."""
    text = _text(proj)
    if not text or not text.strip():
        raise NotApproved(
            "prod trusts no keys yet",
            hint="a person installs the first allowed signers: `inv prod.keys --trust FILE`",
        )
    signers = keys.parse_signers(text, source="prod's allowed signers")
    if not signers:
        raise NotApproved("prod's allowed signers list nobody", hint="see docs/SECURITY.md")
    return signers


def digest(proj: Project) -> str:
    return hashlib.sha256((_text(proj) or "").encode()).hexdigest()


def bootstrap(proj: Project, source: Path, *, actor: str) -> tuple[keys.Signer, ...]:
    """Install the first allowed-signers file; later changes go through an approved deploy."""
    if _text(proj):
        raise UsageError(
            "prod already trusts an allowed-signers file",
            hint=f"change {keys.KEYS_FILE} in the repository and deploy it through an approved "
            "request: the approvers prod trusts now approve who may approve",
        )
    try:
        text = source.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    signers = keys.parse_signers(text, source=str(source))
    if not signers:
        raise ConfigError(f"{source} lists nobody", hint="one `principal ssh-ed25519 AAAA...` line")
    host, layout = group.primary(proj, PROD)
    host.makedirs(layout.state)
    host.write_text(path(layout), text, mode=0o644)
    audit(host, layout, actor=actor, action="trust-signers",
          sha256=hashlib.sha256(text.encode()).hexdigest(),
          principals=sorted({s.principal for s in signers}))  # fmt: skip
    return signers


def at_commit(root: Path, commit: str) -> str | None:
    """The commit's own prod.keys, or None when it has none."""
    out = run_process(gitcmd.show_file(commit, keys.KEYS_FILE), cwd=root, timeout=30)
    return out.stdout if out.ok else None


def adopt_from_release(proj: Project, commit: str, *, actor: str) -> bool:
    """After an approved deploy: the deployed commit's prod.keys becomes what prod trusts."""
    text = at_commit(proj.root, commit)
    if text is None or text == _text(proj):
        return False
    try:
        signers = keys.parse_signers(text, source=f"{commit[:12]}:{keys.KEYS_FILE}")
    except ConfigError:
        return False  # a broken file never replaces a working one; the gate reports it
    if not signers:
        return False
    host, layout = group.primary(proj, PROD)
    host.write_text(path(layout), text, mode=0o644)
    audit(host, layout, actor=actor, action="trust-signers", commit=commit,
          sha256=hashlib.sha256(text.encode()).hexdigest(),
          principals=sorted({s.principal for s in signers}))  # fmt: skip
    return True
