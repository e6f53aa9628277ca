"""Identity by key: allowed signers in git's format, and `ssh-keygen -Y sign/verify` statements.

Who decides about prod is whoever holds a key that prod trusts, never a name or a kind that a
variable or a terminal claims. A statement is canonical JSON; a signature over it names its key,
and the key names one principal in the allowed-signers file that prod keeps (docs/SECURITY.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import stat
import struct
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import ConfigError, NotApproved, UsageError
from deploy.hosts import run_process

# every stageflow signature is made and checked in this namespace: a key's git commit signatures
# (namespace "git") can never be replayed as a prod approval, nor the other way round
NAMESPACE = "stageflow"
# the repository's allowed-signers file: trusted by prod only once an approved deploy carried it
KEYS_FILE = "prod.keys"
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
SIGN_TIMEOUT_S = 120.0  # a touch-required key waits for its person
VERIFY_TIMEOUT_S = 10.0


def normalise(principal: str) -> str:
    """One person, one spelling: Unicode-folded, case-folded, surrounding space removed."""
    return unicodedata.normalize("NFKC", principal).strip().casefold()


def fingerprint(key_type: str, key_b64: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key."""
    try:
        blob = base64.b64decode(key_b64, validate=True)
    except ValueError:
        raise ConfigError(f"a {key_type} key is not valid base64") from None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


@dataclass(frozen=True)
class Signer:
    """One allowed signer: a person (principal) and one of their public keys."""

    principal: str
    key_type: str
    key_b64: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_type, self.key_b64)

    def line(self) -> str:
        return f'{self.principal} namespaces="{NAMESPACE}" {self.key_type} {self.key_b64}'


@dataclass(frozen=True)
class Identity:
    """A verified signer: what a signature proves, never what a process says about itself."""

    principal: str
    fingerprint: str

    def same_person(self, other: Identity) -> bool:
        return self.principal == other.principal or self.fingerprint == other.fingerprint

    def __str__(self) -> str:
        return f"{self.principal} ({self.fingerprint[:19]}...)"


def parse_signers(text: str, *, source: str) -> tuple[Signer, ...]:
    """git's allowed-signers format, restricted to what names one person per key: no patterns,
    no certificate authorities, one principal per key. Every entry is a human approver."""
    out: list[Signer] = []
    by_key: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            tokens = shlex.split(line)
        except ValueError:
            raise ConfigError(f"{source}:{n}: unbalanced quotes") from None
        at = next((i for i, t in enumerate(tokens) if t in KEY_TYPES), None)
        if at is None or at == 0 or at + 1 >= len(tokens):
            raise ConfigError(
                f"{source}:{n}: not `principal ssh-ed25519 AAAA...`",
                hint="one line per person and key, as in git's gpg.ssh.allowedSignersFile",
            )
        options = " ".join(tokens[1:at]).lower()
        if "cert-authority" in options:
            raise ConfigError(f"{source}:{n}: cert-authority entries are not supported")
        if "namespaces=" in options and NAMESPACE not in options:
            raise ConfigError(f"{source}:{n}: its namespaces exclude {NAMESPACE!r}")
        for principal in tokens[0].split(","):
            name = normalise(principal)
            if not name or any(ch in name for ch in "*?!") or any(ch.isspace() for ch in name):
                raise ConfigError(
                    f"{source}:{n}: principal {principal!r} is not one person",
                    hint="name each person, e.g. alice@example.org; patterns are not allowed",
                )
            signer = Signer(name, tokens[at], tokens[at + 1])
            fp = signer.fingerprint
            if by_key.setdefault(fp, name) != name:
                raise ConfigError(
                    f"{source}:{n}: key {fp} is listed for {by_key[fp]} and {name}",
                    hint="one key belongs to one person",
                )
            out.append(signer)
    return tuple(out)


def by_fingerprint(signers: Sequence[Signer]) -> dict[str, Signer]:
    return {s.fingerprint: s for s in signers}


def canonical(statement: Mapping[str, Any]) -> str:
    """The exact text that is signed: sorted keys, no spaces, ASCII only."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# ssh-keygen decides whose signature counts, so it is never found through PATH (the operator's
# shell, or an agent's, sets PATH): it is the system's own, in a directory only root can write.
SYSTEM_DIRS = ("/usr/bin", "/bin", "/usr/local/bin")
# what ssh-keygen runs with: none of the shell's variables (LD_PRELOAD, a PATH of its own...)
# but what reaches the person's agent or security key when it signs
_SIGNING_ENV = ("SSH_AUTH_SOCK", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "DISPLAY", "HOME",
                "SSH_SK_PROVIDER", "USER", "LOGNAME", "LANG", "LC_ALL")  # fmt: skip


def _root_only(path: str) -> bool:
    """path is root's and only root may change it, nor any folder above it (sticky ones aside)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if (
        st.st_uid != 0
        or st.st_mode & 0o022
        and not (stat.S_ISDIR(st.st_mode) and st.st_mode & 0o1000)
    ):
        return False
    parent = os.path.dirname(path)
    return parent == path or _root_only(parent)


def ssh_keygen() -> str:
    """The system's ssh-keygen, by absolute path; refused when none is root's alone."""
    for folder in SYSTEM_DIRS:
        real = os.path.realpath(os.path.join(folder, "ssh-keygen"))
        if os.path.isfile(real) and _root_only(real):
            return real
    raise NotApproved(
        f"no ssh-keygen that only root can change in {', '.join(SYSTEM_DIRS)}",
        hint="install OpenSSH's client from the system's packages (openssh-client)",
    )


def keygen_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _SIGNING_ENV}
    return {**env, "PATH": ":".join(SYSTEM_DIRS)}


def sign_argv(key: str) -> list[str]:
    return [ssh_keygen(), "-q", "-Y", "sign", "-f", key, "-n", NAMESPACE]


def verify_argv(allowed: str, principal: str, signature: str) -> list[str]:
    return [ssh_keygen(), "-Y", "verify", "-f", allowed, "-I", principal, "-n", NAMESPACE,
            "-s", signature]  # fmt: skip


def public_of_argv(key: str) -> list[str]:
    return [ssh_keygen(), "-y", "-f", key]


def signature_fingerprint(signature: str) -> str:
    """The fingerprint of the key an SSHSIG signature names (checked by verify, read here)."""
    try:
        body = "".join(
            line for line in signature.strip().splitlines() if not line.startswith("-----")
        )
        blob = base64.b64decode(body, validate=True)
        if not blob.startswith(b"SSHSIG"):
            raise ValueError("no SSHSIG magic")
        (size,) = struct.unpack(">I", blob[10:14])
        key = blob[14 : 14 + size]
        if len(key) != size:
            raise ValueError("truncated")
    except (ValueError, struct.error):
        raise NotApproved("a signature is not an SSH signature") from None
    return "SHA256:" + base64.b64encode(hashlib.sha256(key).digest()).decode().rstrip("=")


def signing_key(process_env: Mapping[str, str], *, git_key: str | None) -> str | None:
    """The actor's key: STAGEFLOW_SIGNING_KEY, else git's user.signingKey. A public key (.pub, or
    git's `key::ssh-...`) means the private half is in ssh-agent or on a security key."""
    return process_env.get("STAGEFLOW_SIGNING_KEY") or git_key or None


def _key_file(key: str, tmp: Path) -> str:
    if key.startswith("key::"):
        path = tmp / "literal.pub"
        path.write_text(key[len("key::") :].strip() + "\n")
        return str(path)
    return os.path.expanduser(key)


def sign(statement: Mapping[str, Any], *, key: str | None) -> dict[str, Any]:
    """{statement, signature}: the statement signed with the actor's key (a touch-required key
    asks its person here; a passphrase prompt reaches the operator's terminal)."""
    if not key:
        raise NotApproved(
            "no signing key: a prod decision is signed with your SSH key",
            hint="set STAGEFLOW_SIGNING_KEY=~/.ssh/id_ed25519 (or git's user.signingKey); "
            "`inv prod.keys` shows whose keys prod trusts",
        )
    with tempfile.TemporaryDirectory(prefix="stageflow-sign-") as tmp:
        argv = sign_argv(_key_file(key, Path(tmp)))
        out = run_process(argv, input=canonical(statement), timeout=SIGN_TIMEOUT_S,
                          env=keygen_env(), new_session=False)  # fmt: skip
    if not out.ok or "BEGIN SSH SIGNATURE" not in out.stdout:
        why = out.stderr.strip().splitlines()[-1:] or ["no signature"]
        raise NotApproved(
            f"signing with {key} failed: {why[0][:160]}",
            hint="check the key path, ssh-agent, or touch the security key when it blinks",
        )
    return {"statement": dict(statement), "signature": out.stdout.strip()}


def public_key(key: str | None) -> tuple[str, str] | None:
    """(type, base64) of the actor's public key, read without signing (no touch, no prompt)."""
    if not key:
        return None
    with tempfile.TemporaryDirectory(prefix="stageflow-key-") as tmp:
        path = _key_file(key, Path(tmp))
        text = ""
        for candidate in (path, path + ".pub"):
            try:
                first = Path(candidate).read_text(errors="replace").strip()
            except OSError:
                continue
            if first.split(" ", 1)[0] in KEY_TYPES:
                text = first
                break
        if not text:
            out = run_process(public_of_argv(path), timeout=VERIFY_TIMEOUT_S, env=keygen_env())
            text = out.stdout.strip() if out.ok else ""
    parts = text.split()
    return (parts[0], parts[1]) if len(parts) >= 2 and parts[0] in KEY_TYPES else None


def verify(signed: Mapping[str, Any], signers: Sequence[Signer]) -> Identity:
    """Who signed this {statement, signature}: refused unless a trusted key signed exactly it."""
    statement, signature = signed.get("statement"), signed.get("signature")
    if not isinstance(statement, dict) or not isinstance(signature, str):
        raise NotApproved("the record carries no signed statement")
    fp = signature_fingerprint(signature)
    signer = by_fingerprint(signers).get(fp)
    if signer is None:
        raise NotApproved(f"signed by key {fp}, which prod does not trust")
    with tempfile.TemporaryDirectory(prefix="stageflow-verify-") as tmp:
        allowed, sig = Path(tmp) / "allowed_signers", Path(tmp) / "statement.sig"
        allowed.write_text(signer.line() + "\n")
        sig.write_text(signature.strip() + "\n")
        out = run_process(verify_argv(str(allowed), signer.principal, str(sig)),
                          input=canonical(statement), timeout=VERIFY_TIMEOUT_S,
                          env=keygen_env())  # fmt: skip
    if not out.ok:
        raise NotApproved(f"the signature of {signer.principal} does not match its statement")
    return Identity(signer.principal, fp)


def require_fields(statement: Mapping[str, Any], expected: Mapping[str, Any], *, what: str) -> None:
    """Each expected field of a verified statement holds; the first that differs is named."""
    for key, value in expected.items():
        if statement.get(key) != value:
            raise NotApproved(
                f"{what} was signed for {key} {str(statement.get(key))[:40]!r}, "
                f"not {str(value)[:40]!r}"
            )


def check_principal_flag(principal: str) -> str:
    name = normalise(principal)
    if not name:
        raise UsageError("an empty principal names nobody")
    return name
