"""The one executor: runs argv lists on the local host (invoke) or a remote one (fabric over SSH).

This is the only module where an argv becomes a shell string (shlex.join). Builders elsewhere
return argv lists and never run anything.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.errors import HostError
from deploy.secrets import Secret, scrub


@dataclass(frozen=True)
class CommandResult:
    host: str
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 3) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-lines:])


def as_user(argv: Sequence[str], user: str | None) -> list[str]:
    """Run argv as user (the unprivileged service user) when we are root; unchanged otherwise."""
    if not user:
        return list(argv)
    return ["runuser", "-u", user, "--", *argv]


def to_shell(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdout: str | None = None,
) -> str:
    cmd = shlex.join(argv)
    if env:
        cmd = shlex.join(["env", *(f"{k}={v}" for k, v in env.items())]) + " " + cmd
    if stdout:
        cmd = f"{cmd} >>{shlex.quote(stdout)} 2>&1 </dev/null"
    if cwd:
        cmd = f"cd {shlex.quote(cwd)} && {cmd}"
    return cmd


@dataclass
class Host:
    """One machine an environment runs on. Local unless `address` names an SSH destination."""

    name: str = "local"
    address: str | None = None  # user@host:port for SSH
    connect_timeout_s: float = 10.0
    secrets: tuple[Secret, ...] = ()
    _conn: Any = field(default=None, repr=False)

    @property
    def is_local(self) -> bool:
        return self.address is None

    # -- commands -----------------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stdout_file: str | Path | None = None,
    ) -> CommandResult:
        """Run argv; output is captured (and scrubbed of secrets) and returned, never streamed."""
        # Locally the environment goes to the process, not into the command line (ps shows argv).
        cmd = to_shell(
            [str(a) for a in argv],
            env=None if self.is_local else env,
            cwd=str(cwd) if cwd else None,
            stdout=str(stdout_file) if stdout_file else None,
        )
        extra = {"env": dict(env)} if (env and self.is_local) else {}
        start = time.monotonic()
        try:
            result = self._runner().run(
                cmd, hide=True, warn=True, timeout=timeout, in_stream=False, **extra
            )
            code, out, err = result.exited, result.stdout, result.stderr
        except Exception as exc:  # timeouts and connection failures are results, not crashes
            code, out, err = 255, "", f"{exc.__class__.__name__}: {exc}"
        res = CommandResult(
            self.name,
            tuple(str(a) for a in argv),
            code,
            scrub(out, self.secrets),
            scrub(err, self.secrets),
            time.monotonic() - start,
        )
        if check and not res.ok:
            raise HostError(
                f"{self.name}: `{argv[0]}` exited {res.exit_code}: {res.tail()}", host=self.name
            )
        return res

    def _runner(self) -> Any:
        if self._conn is None:
            if self.is_local:
                from invoke import Context

                self._conn = Context()
            else:
                self._conn = _ssh_connection(self.address or "", self.connect_timeout_s)
        return self._conn

    # -- files --------------------------------------------------------------------------------
    def path(self, p: str | Path) -> str:
        return str(p)

    def read_text(self, path: str | Path) -> str | None:
        if self.is_local:
            try:
                return Path(path).read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
        res = self.run(["cat", str(path)], check=False)
        return res.stdout if res.ok else None

    def write_text(self, path: str | Path, text: str, *, mode: int = 0o644) -> None:
        """Write atomically: a temp file beside the target, then rename."""
        if self.is_local:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
            return
        import io

        tmp = f"{path}.tmp"
        self.run(["mkdir", "-p", str(Path(path).parent)])
        self._runner().put(io.BytesIO(text.encode()), remote=tmp)
        self.run(["chmod", f"{mode:o}", tmp])
        self.run(["mv", "-f", tmp, str(path)])

    def append_line(self, path: str | Path, line: str) -> None:
        if "\n" in line:
            raise ValueError("one record per line")
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            return
        self.run(
            [
                "sh",
                "-c",
                'mkdir -p "$(dirname "$1")" && printf "%s\\n" "$2" >> "$1"',
                "sh",
                str(path),
                line,
            ]
        )

    def exists(self, path: str | Path) -> bool:
        if self.is_local:
            return os.path.lexists(path)
        return self.run(["test", "-e", str(path)], check=False).ok

    def mkdir_atomic(self, path: str | Path) -> bool:
        """True when this call created the directory: the lock primitive."""
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(path)
                return True
            except FileExistsError:
                return False
        self.run(["mkdir", "-p", str(Path(path).parent)])
        return self.run(["mkdir", str(path)], check=False).ok

    def makedirs(self, *paths: str | Path) -> None:
        if self.is_local:
            for p in paths:
                Path(p).mkdir(parents=True, exist_ok=True)
            return
        self.run(["mkdir", "-p", *map(str, paths)])

    def remove_tree(self, path: str | Path) -> None:
        self.run(["rm", "-rf", "--", str(path)])

    def readlink(self, path: str | Path) -> str | None:
        if self.is_local:
            try:
                return os.readlink(path)
            except OSError:
                return None
        res = self.run(["readlink", str(path)], check=False)
        return res.stdout.strip() if res.ok else None

    def switch_symlink(self, link: str | Path, target: str) -> None:
        """Point link at target atomically: a symlink under a temp name, then rename over."""
        tmp = f"{link}.next"
        if self.is_local:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(target, tmp)
            os.replace(tmp, link)
            return
        self.run(["ln", "-sfn", target, tmp])
        self.run(["mv", "-Tf", tmp, str(link)])

    def listdir(self, path: str | Path) -> list[str]:
        if self.is_local:
            try:
                return sorted(os.listdir(path))
            except FileNotFoundError:
                return []
        res = self.run(["ls", "-1", str(path)], check=False)
        return sorted(res.stdout.split()) if res.ok else []

    def put_file(self, local: str | Path, remote: str | Path) -> None:
        if self.is_local:
            if str(local) != str(remote):
                import shutil

                shutil.copyfile(local, remote)
            return
        self._runner().put(str(local), remote=str(remote))

    def close(self) -> None:
        if self._conn is not None and not self.is_local:
            self._conn.close()
        self._conn = None


def _ssh_connection(address: str, timeout: float) -> Any:
    # fabric (and paramiko) load only when a remote host is used: `inv --list` stays fast.
    from fabric import Config, Connection

    config = Config(overrides={"load_ssh_configs": True, "timeouts": {"connect": timeout}})
    return Connection(address, config=config, connect_timeout=timeout)


def host_from_spec(spec: str, *, secrets: tuple[Secret, ...] = ()) -> Host:
    """'local' is this machine; anything else is an SSH destination (user@host:port)."""
    if spec == "local":
        return Host(name="local", secrets=secrets)
    dest = spec.removeprefix("ssh://")
    return Host(name=dest, address=dest, secrets=secrets)
