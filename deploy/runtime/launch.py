"""Starts one of the service's processes from a release (stdlib only; shipped into each release's
.stageflow folder): the service's settings file becomes its environment, and no value of it is on
any command line. Three ways:

- a gunicorn master: `--control SOCKET`, the listener's socket becomes its bind ({fd} in argv);
  detached as below (the launcher, not gunicorn, writes its pid file);
- a command of the service (migrations, seed, build): `--cwd DIR --venv DIR`, exec'd in the
  foreground, its output the caller's;
- a process of [service.processes]: `--detach --pidfile FILE --log FILE` as well, run in a session
  of its own, its pid in the pidfile, its output appended to the log.

Run as root with `--user NAME`, the launcher does what needs root (reads the settings, takes the
socket, writes the pid file, opens the log) and then becomes NAME before the service's code runs:
nothing of the service ever runs as root. Without root, `--user` changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import sys
from dataclasses import dataclass

# What the service inherits from the process that starts it; everything else it gets comes from
# its settings file, so an operator's shell (a stray VIRTUAL_ENV, PYTHONPATH...) never leaks in.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
NOT_FOUND = 127  # as a shell says of a program it cannot find


class LaunchError(Exception):
    """Why the master was not started; one line, never a settings value."""


def read_settings(path: str) -> dict[str, str]:
    """The service's environment: a JSON object of names to strings, from a file only its owner
    reads (it holds the secrets). An error names the file, never a value."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise LaunchError(f"cannot read the settings file {path}: {exc.strerror}") from None
    except ValueError:
        raise LaunchError(f"the settings file {path} is not JSON") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise LaunchError(f"the settings file {path} must map names to strings")
    return data


def environment(
    settings: dict[str, str], runtime: dict[str, str], inherited: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in inherited.items() if k in _INHERITED}
    env.update(settings)
    env.update(runtime)  # the hooks' own names last: a setting cannot redirect the marks
    return env


def in_venv(env: dict[str, str], venv: str) -> dict[str, str]:
    """The release's venv first on PATH: the service's `python`, `alembic`, `flask` are its own."""
    out = dict(env)
    out["PATH"] = f"{venv}/bin:{env.get('PATH') or SYSTEM_PATH}"
    out["VIRTUAL_ENV"] = venv
    return out


def fetch_socket(control: str) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        try:
            ctl.connect(control)
        except OSError as exc:
            raise LaunchError(f"no listener at {control}: {exc.strerror}") from None
        _, fds, _, _ = socket.recv_fds(ctl, 16, 1)
    if not fds:
        raise LaunchError("the listener sent no socket")
    os.set_inheritable(fds[0], True)
    return fds[0]


@dataclass(frozen=True)
class Account:
    """The unprivileged user the service's code runs as when the launcher starts as root."""

    name: str
    uid: int
    gid: int


def account(name: str) -> Account | None:
    """The account to become: None when there is none to switch to (not root, or no --user)."""
    if not name or os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise LaunchError(f"the service user {name!r} does not exist") from None
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise LaunchError(f"the service user {name!r} is root: the service never runs as root")
    return Account(name, pw.pw_uid, pw.pw_gid)


def become(who: Account) -> None:
    """Drop root for good: the user's own groups (none of root's), then its gid, then its uid."""
    os.initgroups(who.name, who.gid)
    os.setgid(who.gid)
    os.setuid(who.uid)
    if os.getuid() != who.uid or os.geteuid() != who.uid or 0 in os.getgroups():
        raise LaunchError(f"could not become the service user {who.name!r}")


def as_account(env: dict[str, str], who: Account | None, files: str) -> dict[str, str]:
    """The names that say who runs: the service user's, with its files dir as its home."""
    if who is None:
        return env
    out = {**env, "USER": who.name, "LOGNAME": who.name}
    out["HOME"] = files or "/nonexistent"
    return out


def _give(path: str, who: Account, *, mode: int | None = None, create_dir: bool = False) -> None:
    """path (a directory or a regular file, never a symlink) becomes who's. O_NOFOLLOW and the
    fd's own chown: a name swapped for a symlink meanwhile makes it fail, never follow."""
    if create_dir:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise LaunchError(f"cannot hand {path} to {who.name}: {exc.strerror}") from None
    try:
        kind = os.fstat(fd).st_mode
        if not (stat.S_ISDIR(kind) or stat.S_ISREG(kind)):
            raise LaunchError(f"{path} is neither a directory nor a file")
        os.fchown(fd, who.uid, who.gid)
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


# A release being built is the service user's while its build command runs (collectstatic writes
# into it), except what root runs from it: the launcher's folder and the venv link. The top folder
# stays root's, sticky, writable by the user's group: the user adds entries but can neither
# rename nor replace root's. Afterwards everything in it is root's again, readable, not writable.
ROOT_ENTRIES = (".stageflow", ".venv")


def open_tree(top: str, who: Account) -> None:
    """Bottom up, the top folder last: a folder becomes who's only once everything under it is,
    so a process of who's (a compromised worker) can never swap a path that is still to walk."""
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        names = [*dirnames, *filenames]
        if dirpath == top:
            names = [n for n in names if n not in ROOT_ENTRIES]
        for name in names:
            os.chown(os.path.join(dirpath, name), who.uid, who.gid, follow_symlinks=False)
    os.chown(top, 0, who.gid, follow_symlinks=False)
    os.chmod(top, 0o1770)


def seal(top: str) -> None:
    """Every entry under top root's, directories 0755, files 0644 (0755 if executable): walked by
    file descriptor without following a symlink, so a process of the service user renaming
    things meanwhile redirects nothing."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _seal_dir(fd)
    finally:
        os.close(fd)


def _seal_dir(fd: int) -> None:
    os.fchown(fd, 0, 0)
    os.fchmod(fd, 0o755)
    for entry in os.scandir(fd):
        if entry.is_symlink():
            os.chown(entry.name, 0, 0, dir_fd=fd, follow_symlinks=False)
            continue
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            child = os.open(entry.name, flags, dir_fd=fd)
        except OSError:
            _drop(fd, entry.name)  # a socket, or a symlink swapped in: nothing a release needs
            continue
        try:
            mode = os.fstat(child).st_mode
            if stat.S_ISDIR(mode):
                _seal_dir(child)
            elif stat.S_ISREG(mode) and os.fstat(child).st_nlink > 1:
                _drop(fd, entry.name)  # a hard link: maybe to a file that is not the build's
            elif stat.S_ISREG(mode):
                os.fchown(child, 0, 0)
                os.fchmod(child, 0o755 if mode & 0o111 else 0o644)
            else:
                _drop(fd, entry.name)  # a fifo or device the build left
        finally:
            os.close(child)


def _drop(fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass


def build_in(tree: str, who: Account, command: list[str], env: dict[str, str]) -> int:
    """A build command as who, in a release being built that is who's while it runs; the tree is
    root's again when the command exits, whatever it did. Returns the command's exit code."""
    open_tree(tree, who)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                become(who)
                os.execve(command[0], command, env)
            except (OSError, LaunchError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else str(exc)
                sys.stderr.write(f"launch: cannot run {command[0]!r}: {why}\n")
            os._exit(NOT_FOUND)
        # a timeout stops the command's whole process group: the launcher outlives it and seals
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        _, status = os.waitpid(pid, 0)
    finally:
        seal(tree)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--env {text!r}: give NAME=VALUE")
    return name, value


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise LaunchError("usage: launch.py --settings FILE ... -- COMMAND...")
    cut = argv.index("--")
    p = argparse.ArgumentParser(prog="launch.py")
    p.add_argument("--control", default="")
    p.add_argument("--settings", required=True)
    p.add_argument("--ready-dir", default="")
    p.add_argument("--ready-path", default="/")
    p.add_argument("--ready-redirects", action="store_true")
    p.add_argument("--release", default="")
    p.add_argument("--metrics-dir", default="")
    p.add_argument("--asgi", action="store_true")
    p.add_argument("--cwd", default="")
    p.add_argument("--venv", default="")
    p.add_argument("--env", type=_pair, action="append", default=[])
    p.add_argument("--detach", action="store_true")
    p.add_argument("--pidfile", default="")
    p.add_argument("--log", default="")
    p.add_argument("--secret", action="append", default=[])
    p.add_argument("--user", default="")
    p.add_argument("--files", default="")
    p.add_argument("--build-tree", default="")
    args = p.parse_args(argv[:cut])
    command = argv[cut + 1 :]
    if not command:
        raise LaunchError("launch.py: no command after --")
    if args.detach and not (args.pidfile and args.log):
        raise LaunchError("launch.py: --detach needs --pidfile and --log")
    return args, command


def resolve(command: list[str], env: dict[str, str]) -> list[str]:
    """command with its program as an absolute path found on env's PATH: the process's
    /proc/<pid>/cmdline then names the release's venv, which is how stageflow knows it later."""
    found = shutil.which(command[0], path=env.get("PATH", SYSTEM_PATH))
    if found is None:
        raise LaunchError(f"cannot run {command[0]!r}: not found on the release's PATH")
    return [os.path.abspath(found), *command[1:]]


def _write_pid(path: str, pid: int) -> None:
    tmp = f"{path}.{pid}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(f"{pid}\n")
    os.replace(tmp, path)


def hidden_writer(log: int, values: list[str], who: Account | None) -> int:
    """A process beside the service that appends what the service prints to log, a line at a
    time, each with the values hidden (the service's secrets: a worker that prints its
    environment, a traceback quoting a DSN); returns the pipe's end the service writes to.
    It holds nothing else of the launcher's, and ends when every writer has closed the pipe."""
    read_end, write_end = os.pipe()
    if os.fork() != 0:
        os.close(read_end)
        return write_end
    code = 0
    try:
        os.dup2(read_end, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)  # nothing of the invoking command's: its caller waits for their end
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # drain until the end
            signal.signal(sig, signal.SIG_IGN)
        if who is not None:
            become(who)
        copy_hidden(0, 1, values)
    except BaseException:  # nothing of the service is written unhidden, ever
        code = 1
    os._exit(code)


def copy_hidden(src: int, dst: int, values: list[str]) -> None:
    """src to dst, whole lines hidden by redact.hide (a long run without a newline in pieces)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from redact import hide  # shipped beside this file

    pending = b""
    while chunk := os.read(src, 65536):
        pending += chunk
        cut = pending.rfind(b"\n") + 1 if len(pending) < (1 << 20) else len(pending)
        if cut:
            text = pending[:cut].decode("utf-8", "surrogateescape")
            os.write(dst, hide(text, values).encode("utf-8", "surrogateescape"))
            pending = pending[cut:]
    if pending:
        text = pending.decode("utf-8", "surrogateescape")
        os.write(dst, hide(text, values).encode("utf-8", "surrogateescape"))


def open_log(log: str, hidden: list[str], who: Account | None) -> int:
    """Where the process's output goes: log, or with values to hide the pipe to a hidden_writer
    appending to it (forked here, before the process is: a sibling of it, never its child)."""
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    if not hidden:
        return out
    try:
        return hidden_writer(out, hidden, who)
    finally:
        os.close(out)


def detach(
    command: list[str],
    env: dict[str, str],
    *,
    pidfile: str,
    log: str,
    who: Account | None = None,
    hidden: list[str] | None = None,
) -> int:
    """Double fork: the process leads a session of its own (no terminal, no SSH session holds it),
    its output goes to log (through hidden_writer when there are values to hide), its pid to
    pidfile before the exec (both written by the invoking user, then it becomes who). A pipe
    closed by the exec tells this launcher whether the program started; it prints the pid and
    returns at once."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    first = os.fork()
    if first == 0:  # the intermediate child: a new session, then gone
        os.close(read_end)
        os.setsid()
        try:
            out = open_log(log, hidden or [], who)
        except OSError as exc:
            os.write(write_end, f"cannot open the log {log}: {exc.strerror}".encode())
            os._exit(NOT_FOUND)
        if os.fork() != 0:
            os._exit(0)
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            _write_pid(pidfile, os.getpid())
            if who is not None:
                become(who)
            os.execve(command[0], command, env)
        except OSError as exc:
            os.write(write_end, f"cannot run {command[0]!r}: {exc.strerror}".encode())
        except LaunchError as err:
            os.write(write_end, str(err).encode())
        os._exit(NOT_FOUND)
    os.close(write_end)
    os.waitpid(first, 0)
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    os.close(read_end)
    if chunks:
        try:
            os.unlink(pidfile)  # it names a process that never ran the program
        except OSError:
            pass
        raise LaunchError(b"".join(chunks).decode("utf-8", "replace"))
    with open(pidfile, encoding="ascii") as fh:
        sys.stdout.write(fh.read())
    return 0


def _runtime(args: argparse.Namespace) -> dict[str, str]:
    """The names the launcher itself sets: a master's marks, or the command's --env pairs."""
    if args.control:
        runtime = {
            "STAGEFLOW_READY_DIR": args.ready_dir,
            "STAGEFLOW_READY_PATH": args.ready_path,
            "STAGEFLOW_READY_REDIRECTS": "1" if args.ready_redirects else "",
            "STAGEFLOW_RELEASE_ID": args.release,
            "STAGEFLOW_METRICS_DIR": args.metrics_dir,
            "STAGEFLOW_ASGI": "1" if args.asgi else "",
        }
    else:
        runtime = dict(args.env)
    if args.files:
        runtime["STAGEFLOW_FILES_DIR"] = args.files
    return runtime


def _prepare(args: argparse.Namespace, who: Account | None) -> None:
    """What the service user is given before it runs: its files dir; for a master, the marks
    and counters its workers write and the log gunicorn opens. Nothing else."""
    if who is None:
        if args.files:
            os.makedirs(args.files, exist_ok=True)
        return
    if args.files:
        _give(args.files, who, mode=0o700, create_dir=True)
    if args.control:
        for path in (args.ready_dir, args.metrics_dir):
            if path:
                _give(path, who)
        if args.log:
            os.close(
                os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o640)
            )
            _give(args.log, who)


def main(argv: list[str]) -> int:
    command: list[str] = []
    who: Account | None = None
    try:
        args, command = parse(argv)
        who = account(args.user)
        settings = read_settings(args.settings)
        env = as_account(environment(settings, _runtime(args), dict(os.environ)), who, args.files)
        if args.venv:
            env = in_venv(env, args.venv)
        _prepare(args, who)
        # never the operator's directory, which the service user may not reach (a clone under
        # /root): gunicorn checks its default --chdir, the working directory, before --chdir
        # applies; without --cwd, the release this launcher ships in (<release>/.stageflow)
        where = args.cwd or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            os.chdir(where)
        except OSError as exc:
            raise LaunchError(f"cannot enter {where}: {exc.strerror}") from None
        env["PWD"] = where
        if args.control:
            fd = fetch_socket(args.control)
            command = [part.replace("{fd}", str(fd)) for part in command]
        else:
            command = resolve(command, env)
        if args.detach:
            # every value of a setting named by --secret is hidden from the log
            hidden = [settings[k] for k in args.secret if settings.get(k)]
            return detach(command, env, pidfile=args.pidfile, log=args.log, who=who, hidden=hidden)
        if who is not None and args.build_tree:
            return build_in(args.build_tree, who, command, env)
        if who is not None:
            become(who)
        os.execve(command[0], command, env)
    except LaunchError as err:
        sys.stderr.write(f"launch: {err}\n")
        return 2
    except OSError as exc:  # the exec itself: a program that is not executable, say
        whom = f" as the service user {who.name}" if who is not None else ""
        sys.stderr.write(f"launch: cannot run {command[0]!r}{whom}: {exc.strerror}\n")
        return NOT_FOUND
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
