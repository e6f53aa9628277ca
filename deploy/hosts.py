"""The one executor: runs argv lists on the local host (invoke) or a remote one (fabric over SSH).

This is the only module where an argv becomes a shell string (shlex.join). Builders elsewhere
return argv lists and never run anything. `run_process` is the one runner of the engine's own local
tools (git, hooks, gate commands): no shell, its own process group, a timeout that kills them all.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

from deploy.config import HostSpec, host_spec
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
    timed_out: bool = False  # run_process killed it at its timeout; exit_code is then TIMEOUT_EXIT

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 3) -> str:
        """The last lines that say something: click's usage errors end `Usage: ... | (blank) |
        Error: ...`, and a blank line would use up the one line a message has room for; pip's
        warnings (an index it cannot reach, a deprecation) give way to its error."""
        text = [ln.strip() for ln in (self.stderr.strip() or self.stdout.strip()).splitlines()]
        said = [ln for ln in text if ln]
        errors = [ln for ln in said if not ln.startswith(_PIP_NOISE)]
        return " | ".join((errors or said)[-lines:])


# what pip says besides its error, which would crowd the error out of a one-line message
_PIP_NOISE = ("WARNING: ", "DEPRECATION: ", "[notice] ")
log = logging.getLogger("stageflow.exec")
TIMEOUT_EXIT = 124  # as timeout(1): the command was stopped, this is not its own verdict
KILL_GRACE_S = 2.0  # between TERM and KILL of a timed-out process group
# The longest one wait for a child's output lasts. A Ctrl-C the kernel hands to another thread of
# this process (it may pick any thread that does not block the signal) is raised by the main
# thread only once its wait returns: without slices, a 10-minute command ignored it that long.
WAIT_SLICE_S = 0.5


def run_process(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    input: str | None = None,
    secrets: Sequence[Secret] = (),
    check: bool = False,
    new_session: bool = True,
    stdout: IO[Any] | int | None = None,
    merge_stderr: bool = False,
    kill_grace_s: float = KILL_GRACE_S,
) -> CommandResult:
    """Run argv on this machine, without a shell, and wait for it.

    Output is captured as text (undecodable bytes replaced) unless `stdout` is a file or descriptor
    to stream it to; `merge_stderr` sends stderr where stdout goes, as one transcript. env, when
    given, is the child's whole environment. With new_session the child leads its own process
    group, so a timeout or an interrupt stops it and everything it started: TERM, kill_grace_s,
    then KILL, and the child is always reaped. A timeout is a result (TIMEOUT_EXIT, timed_out),
    not an exception; a program that cannot start raises OSError. check=True turns either, and any
    non-zero exit, into one HostError line.

    Output comes back as the program wrote it (`git show` must return the file as committed): the
    caller scrubs what it shows. The logged argv and any error message are scrubbed of secrets.
    """
    args, env = pinned_git([os.fspath(a) for a in argv], env)
    hide = tuple(secrets)
    log.debug("run %s%s", scrub(shlex.join(args), hide), f" in {cwd}" if cwd else "")
    start = time.monotonic()
    with _interrupt_deferred() as interrupted:
        proc = _spawn(
            args, cwd=cwd, env=env, input=input, stdout=stdout, merge_stderr=merge_stderr,
            new_session=new_session, check=check, hide=hide,
        )  # fmt: skip
    timed_out = False
    try:
        if interrupted:
            raise KeyboardInterrupt  # Ctrl-C while the child started: it is stopped below
        out, err = _communicate(proc, input, timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        out, err = _stop(proc, group=new_session, grace_s=kill_grace_s)
    except BaseException:  # Ctrl-C included: the child is in its own session and would not see it
        _stop(proc, group=new_session, grace_s=kill_grace_s)
        raise
    code = TIMEOUT_EXIT if timed_out else proc.returncode
    took = time.monotonic() - start
    res = CommandResult("local", tuple(args), code, out or "", err or "", took, timed_out=timed_out)
    killed = " (timed out, group killed)" if timed_out else ""
    log.debug("%s exited %d after %.2fs%s", scrub(args[0], hide), code, took, killed)
    if check and not res.ok:
        what = f"ran longer than {timeout:g}s and was killed" if timed_out else f"exited {code}: {res.tail()}"  # fmt: skip
        raise HostError(scrub(f"local: `{args[0]}` {what}", hide))
    return res


def _communicate(
    proc: subprocess.Popen[str], input: str | None, timeout: float | None
) -> tuple[str | None, str | None]:
    """proc.communicate(input, timeout) in waits of at most WAIT_SLICE_S: a pending Ctrl-C is
    raised between two of them (a retry loses no output). With input, one wait: a retry of
    communicate cannot go on sending it."""
    if input is not None:
        return proc.communicate(input, timeout=timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return proc.communicate(
                input, timeout=WAIT_SLICE_S if left is None else min(left, WAIT_SLICE_S)
            )
        except subprocess.TimeoutExpired:
            if left is not None and left <= WAIT_SLICE_S:
                raise


def _read_regular(path: Path, last_bytes: int | None) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):  # as reading one always said
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(info.st_mode):
            raise HostError(f"{path} is not a regular file: refusing to read it")
        if last_bytes is not None and info.st_size > last_bytes:
            fh.seek(info.st_size - last_bytes)
        text = fh.read().decode("utf-8", errors="replace" if last_bytes is not None else "strict")
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it


@contextlib.contextmanager
def _interrupt_deferred() -> Iterator[list[int]]:
    """Hold a Ctrl-C that lands while a child starts (after its fork, before its Popen is ours:
    raised there, it would leave the child and its group running), and give it back once the
    caller can stop the child. Only the main thread receives it, and only Python's own handler
    is replaced; the yielded list is non-empty when one came."""
    caught: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield caught
        return
    signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# What git reads besides the repository it runs in, named by the operator's shell: another
# repository, object store, index, namespace, config or replace-ref base. A replace ref swaps an
# object's content while every id an approval signs stays the same, so the engine's git never
# follows one, from the shell or from the repository's own config. Who commits is kept.
_GIT_KEPT = ("GIT_AUTHOR_", "GIT_COMMITTER_", "GIT_SSH", "GIT_ASKPASS", "GIT_TERMINAL_PROMPT")


def pinned_git(args: list[str], env: Mapping[str, str] | None) -> tuple[list[str], dict | None]:
    """args and env as run: for git, without the shell's GIT_* redirections and replace refs."""
    if not args or os.path.basename(args[0]) != "git":
        return args, dict(env) if env is not None else None
    base = os.environ if env is None else env
    clean = {k: v for k, v in base.items() if not k.startswith("GIT_") or k.startswith(_GIT_KEPT)}
    clean["GIT_NO_REPLACE_OBJECTS"] = "1"
    return [args[0], "-c", "core.useReplaceRefs=false", *args[1:]], clean


def _spawn(
    args: list[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    input: str | None,
    stdout: IO[Any] | int | None,
    merge_stderr: bool,
    new_session: bool,
    check: bool,
    hide: tuple[Secret, ...],
) -> subprocess.Popen[str]:
    try:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
            start_new_session=new_session,
        )
    except OSError as exc:
        if check:
            raise HostError(
                scrub(f"local: cannot run `{args[0]}`: {exc.strerror or exc}", hide),
                hint="check that it is installed and on PATH",
            ) from None
        raise


def _stop(
    proc: subprocess.Popen[str], *, group: bool, grace_s: float
) -> tuple[str | None, str | None]:
    """TERM the child (and its group), KILL what is left after grace_s, reap it; return the output
    that could still be read."""
    _signal(proc, signal.SIGTERM, group=group)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    # children that ignored TERM, or outlived their leader, go too
    _signal(proc, signal.SIGKILL, group=group)
    try:
        return proc.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        # a process that left the group still holds the pipe: give up on the rest of the output
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
        return None, None


def _signal(proc: subprocess.Popen[str], sig: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            # the group outlives its reaped leader under the same id, and no other group can
            # take that id while any member is alive
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


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
    identity_file: str | None = None  # SSH: this key only, instead of the agent and ~/.ssh
    known_hosts: str | None = None  # SSH: accept only the host keys listed in this file
    _conn: Any = field(default=None, repr=False)
    _sftp_client: Any = field(default=None, repr=False)

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
        if self.is_local:
            return self._run_local(
                argv, check=check, timeout=timeout, env=env, cwd=cwd, stdout_file=stdout_file
            )
        cmd = to_shell(
            [str(a) for a in argv],
            env=env,
            cwd=str(cwd) if cwd else None,
            stdout=str(stdout_file) if stdout_file else None,
        )
        start = time.monotonic()
        try:
            result = self._runner().run(cmd, hide=True, warn=True, timeout=timeout, in_stream=False)
            code, out, err = result.exited, result.stdout, result.stderr
        except Exception as exc:  # timeouts are results, not crashes
            from invoke.exceptions import CommandTimedOut

            if not isinstance(exc, CommandTimedOut):
                # no command ran: "exit 255" would read as the command's own verdict
                self._sftp_client = None
                raise HostError(
                    f"{self.name}: cannot run `{argv[0]}`: {scrub(_describe(exc), self.secrets)}",
                    host=self.name,
                    hint="check that the host is up and reachable over SSH",
                ) from None
            code, out, err = 255, "", _describe(exc)  # scrubbed below with the output
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

    def _run_local(
        self,
        argv: Sequence[str],
        *,
        check: bool,
        timeout: float | None,
        env: Mapping[str, str] | None,
        cwd: str | Path | None,
        stdout_file: str | Path | None,
    ) -> CommandResult:
        """This machine: the one local runner, run_process (no shell in between; at a timeout the
        whole process group stops). env adds to this process's environment and never goes on the
        command line (ps shows argv). A program or directory that is not there answers as a
        shell would (127, 1) instead of raising."""
        args = [str(a) for a in argv]
        if cwd is not None and not os.path.isdir(cwd):
            res = CommandResult(self.name, tuple(args), 1, "", f"cd: {cwd}: No such directory", 0.0)
        else:
            full_env = {**os.environ, **env} if env else None
            if cwd is not None:  # as `cd` would: a program that reads PWD sees where it runs
                full_env = {**(full_env or os.environ), "PWD": os.path.abspath(cwd)}
            try:
                if stdout_file is None:
                    res = run_process(args, cwd=cwd, env=full_env, timeout=timeout)
                else:
                    with open(stdout_file, "a") as out:
                        res = run_process(
                            args, cwd=cwd, env=full_env, timeout=timeout, stdout=out,
                            merge_stderr=True,
                        )  # fmt: skip
            except OSError as exc:
                why = f"{args[0]}: {exc.strerror or exc}"
                res = CommandResult(self.name, tuple(args), 127, "", why, 0.0)
        out, err = scrub(res.stdout, self.secrets), scrub(res.stderr, self.secrets)
        if res.timed_out:
            err = f"{err.rstrip()}\nstopped after {timeout:g}s: it ran too long".lstrip()
        res = replace(res, host=self.name, stdout=out, stderr=err)
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
                self._conn = _ssh_connection(
                    self.address or "",
                    self.connect_timeout_s,
                    identity_file=self.identity_file,
                    known_hosts=self.known_hosts,
                )
        if not self.is_local and not self._conn.is_connected:
            self._conn.open()
            _no_delay(self._conn)
        return self._conn

    # -- files --------------------------------------------------------------------------------
    # Remotely, file operations go over SFTP on the open connection: no shell, no process per
    # call, which is what makes a rolling deploy over many hosts affordable.
    def _sftp(self) -> Any:
        if self._sftp_client is None:
            conn = self._runner()  # reconnects after a lost connection; fabric's sftp() would not
            self._sftp_client = conn.client.open_sftp()
        return self._sftp_client

    def _remote(self, what: str, fn: Any) -> Any:
        """Run fn(sftp); a lost or refused connection is a HostError naming this host."""
        try:
            return fn(self._sftp())
        except (FileNotFoundError, HostError):
            raise  # an answer, not a lost connection
        except Exception as exc:  # paramiko raises socket, SSH and EOF errors alike
            self._sftp_client = None
            raise HostError(
                f"{self.name}: {what} failed: {scrub(_describe(exc), self.secrets)}",
                host=self.name,
                hint="check that the host is up and reachable over SSH",
            ) from None

    def path(self, p: str | Path) -> str:
        return str(p)

    def read_text(self, path: str | Path, *, last_bytes: int | None = None) -> str | None:
        """The file's text, None when it does not exist; last_bytes: only its end (a log's tail).
        Only a regular file is read, here or over SFTP: a fifo or device planted where stageflow
        reads (a ready mark, a pid file) would block it or feed it forever: a HostError."""
        if self.is_local:
            return _read_regular(Path(path), last_bytes)

        def read(sftp: Any) -> str | None:
            try:
                # as on this machine: opening a fifo would block the host's SFTP server for ever
                if not stat.S_ISREG(sftp.stat(str(path)).st_mode or 0):
                    raise HostError(
                        f"{self.name}: {path} is not a regular file: refusing to read it",
                        host=self.name,
                    )
                with sftp.open(str(path), "r") as fh:
                    if last_bytes is not None:
                        fh.seek(max(0, fh.stat().st_size - last_bytes))
                    errors = "replace" if last_bytes is not None else "strict"
                    return fh.read().decode("utf-8", errors=errors)
            except FileNotFoundError:
                return None

        return self._remote(f"reading {path}", read)

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
        remote = PurePosixPath(str(path))
        self.makedirs(remote.parent)
        tmp = str(remote.with_name(f".{remote.name}.{os.getpid()}.tmp"))

        def write(sftp: Any) -> None:
            with sftp.open(tmp, "w") as fh:
                fh.chmod(mode)  # before the secret goes in: never readable by others
                fh.write(text.encode("utf-8"))
            sftp.posix_rename(tmp, str(remote))

        self._remote(f"writing {path}", write)

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
        self.makedirs(PurePosixPath(str(path)).parent)

        def append(sftp: Any) -> None:
            with sftp.open(str(path), "a") as fh:  # O_APPEND on the server: one write, one line
                # history and audit name actors, commands and hook output: private there as here
                # (state.private_file), narrowed before the line goes in, whatever the umask
                fh.chmod(0o600)
                fh.write((line + "\n").encode("utf-8"))

        self._remote(f"appending to {path}", append)

    def exists(self, path: str | Path) -> bool:
        if self.is_local:
            return os.path.lexists(path)

        def lstat(sftp: Any) -> bool:
            try:
                sftp.lstat(str(path))
                return True
            except FileNotFoundError:
                return False

        return bool(self._remote(f"checking {path}", lstat))

    def mkdir_atomic(self, path: str | Path) -> bool:
        """True when this call created the directory: the lock primitive."""
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(path)
                return True
            except FileExistsError:
                return False
        self.makedirs(PurePosixPath(str(path)).parent)

        def mkdir(sftp: Any) -> bool:
            try:
                sftp.mkdir(str(path))  # mkdir(2) on the server: atomic, fails if it exists
                return True
            except OSError:
                if self.exists(path):
                    return False
                raise

        return bool(self._remote(f"creating {path}", mkdir))

    def makedirs(self, *paths: str | Path) -> None:
        if self.is_local:
            for p in paths:
                Path(p).mkdir(parents=True, exist_ok=True)
            return

        def mkdirs(sftp: Any) -> None:
            for p in paths:
                missing: list[str] = []
                cur = PurePosixPath(str(p))
                while str(cur) not in ("/", "."):
                    try:
                        sftp.stat(str(cur))
                        break
                    except FileNotFoundError:
                        missing.append(str(cur))
                        cur = cur.parent
                for d in reversed(missing):
                    try:
                        sftp.mkdir(d)
                    except OSError:
                        sftp.stat(d)  # made by a racing writer: fine if it is there now

        self._remote(f"creating {', '.join(map(str, paths))}", mkdirs)

    def remove_tree(self, path: str | Path) -> None:
        """rm -rf path. A missing path, a file, a link or a small flat directory costs no command
        (on a remote host every command starts a login shell; here a shell and rm cost more than
        the few unlinks); only a real tree needs rm."""
        if self.is_local:
            if os.path.isdir(path) and not os.path.islink(path):
                if not _remove_flat_dir(str(path)):
                    self.run(["rm", "-rf", "--", str(path)])
            elif os.path.lexists(path):
                os.unlink(path)
            return

        def remove(sftp: Any) -> bool:
            try:
                st = sftp.lstat(str(path))
            except FileNotFoundError:
                return True
            if not stat.S_ISDIR(st.st_mode or 0):
                sftp.remove(str(path))
                return True
            entries = sftp.listdir_attr(str(path))
            if len(entries) > FLAT_DIR_ENTRIES or any(
                stat.S_ISDIR(e.st_mode or 0) for e in entries
            ):
                return False  # a real tree: one rm beats a round trip per entry
            for e in entries:
                sftp.remove(f"{path}/{e.filename}")
            sftp.rmdir(str(path))
            return True

        if not self._remote(f"removing {path}", remove):
            self.run(["rm", "-rf", "--", str(path)])

    def symlink(self, target: str, link: str | Path) -> None:
        """ln -sfn target link, through the atomic switch."""
        self.switch_symlink(link, target)

    def rename(self, src: str | Path, dst: str | Path) -> None:
        """rename(2): dst appears whole or not at all; a non-empty dst directory refuses."""
        if self.is_local:
            os.rename(src, dst)
            return
        self._remote(f"renaming {src}", lambda sftp: sftp.posix_rename(str(src), str(dst)))

    def readlink(self, path: str | Path) -> str | None:
        if self.is_local:
            try:
                return os.readlink(path)
            except OSError:
                return None

        def readlink(sftp: Any) -> str | None:
            try:
                return sftp.readlink(str(path))
            except OSError:
                return None

        return self._remote(f"reading link {path}", readlink)

    def switch_symlink(self, link: str | Path, target: str) -> None:
        """Point link at target atomically: a symlink under a temp name, then rename over."""
        tmp = f"{link}.next"
        if self.is_local:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(target, tmp)
            os.replace(tmp, link)
            return

        def switch(sftp: Any) -> None:
            try:
                sftp.remove(tmp)
            except FileNotFoundError:
                pass
            sftp.symlink(target, tmp)
            sftp.posix_rename(tmp, str(link))  # rename(2): readers see the old or the new link

        self._remote(f"switching {link}", switch)

    def listdir(self, path: str | Path) -> list[str]:
        if self.is_local:
            try:
                return sorted(os.listdir(path))
            except FileNotFoundError:
                return []

        def listdir(sftp: Any) -> list[str]:
            try:
                return sorted(sftp.listdir(str(path)))
            except FileNotFoundError:
                return []

        return list(self._remote(f"listing {path}", listdir))

    def put_file(self, local: str | Path, remote: str | Path) -> None:
        if self.is_local:
            if str(local) != str(remote):
                import shutil

                shutil.copyfile(local, remote)
            return
        self.makedirs(PurePosixPath(str(remote)).parent)
        self._remote(f"uploading {remote}", lambda sftp: sftp.put(str(local), str(remote)))

    def close(self) -> None:
        if self._conn is not None and not self.is_local:
            self._conn.close()
        self._conn = None
        self._sftp_client = None


FLAT_DIR_ENTRIES = 32  # a directory of at most this many files and no subdirectory is "flat"


def _remove_flat_dir(path: str) -> bool:
    """Remove a small directory of files (a worker's ready marks, say) without a process; False
    when it holds a subdirectory or many entries, or an entry will not go: rm -rf does those."""
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except FileNotFoundError:
        return True
    if len(entries) > FLAT_DIR_ENTRIES or any(e.is_dir(follow_symlinks=False) for e in entries):
        return False
    try:
        for e in entries:
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile: gone as asked
                os.unlink(e.path)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path)
    except OSError:
        return False  # an entry appeared, or one cannot go: rm -rf decides and reports
    return True


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:160]
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _ssh_connection(
    address: str,
    timeout: float,
    *,
    identity_file: str | None = None,
    known_hosts: str | None = None,
) -> Any:
    # fabric (and paramiko) load only when a remote host is used: `inv --list` stays fast.
    from fabric import Config, Connection

    config = Config(overrides={"load_ssh_configs": True, "timeouts": {"connect": timeout}})
    connect_kwargs: dict[str, Any] = {"banner_timeout": timeout, "auth_timeout": timeout}
    if identity_file:
        connect_kwargs.update(key_filename=[identity_file], look_for_keys=False, allow_agent=False)
    conn = Connection(
        address, config=config, connect_timeout=timeout, connect_kwargs=connect_kwargs
    )
    if known_hosts:
        from paramiko import RejectPolicy

        # fabric trusts any host key by default; a known_hosts file makes an unknown key fatal
        conn.client.load_host_keys(known_hosts)
        conn.client.set_missing_host_key_policy(RejectPolicy())
    return conn


def _no_delay(conn: Any) -> None:
    """Send each SSH packet at once (TCP_NODELAY). Opening a channel for a command is a few small
    packets each way; with Nagle's algorithm on, each waited for the peer's delayed ACK: 48 ms a
    command here against 12 ms without. A proxy in between (ssh_config's ProxyCommand) is no
    socket and is left as it is."""
    sock = getattr(conn.client.get_transport(), "sock", None)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def host_from_spec(spec: str | HostSpec, *, secrets: tuple[Secret, ...] = ()) -> Host:
    """'local' is this machine; anything else is an SSH destination (user@host:port)."""
    hs = host_spec(spec)
    if hs.is_local:
        return Host(name="local", secrets=secrets)
    return Host(
        name=hs.address,
        address=hs.address,
        secrets=secrets,
        identity_file=hs.identity_file,
        known_hosts=hs.known_hosts,
    )
