"""Starts one of the service's processes from a release (stdlib only; shipped into each release's
.stageflow folder): the service's settings file becomes its environment, and no value of it is on
any command line. Three ways:

- a gunicorn master: `--control SOCKET`, the listener's socket becomes its bind ({fd} in argv);
- a command of the service (migrations, seed): `--cwd DIR --venv DIR`, exec'd in the foreground,
  its output the caller's;
- a process of [service.processes]: `--detach --pidfile FILE --log FILE` as well, run in a session
  of its own, its pid in the pidfile, its output appended to the log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys

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
    p.add_argument("--release", default="")
    p.add_argument("--metrics-dir", default="")
    p.add_argument("--asgi", action="store_true")
    p.add_argument("--cwd", default="")
    p.add_argument("--venv", default="")
    p.add_argument("--env", type=_pair, action="append", default=[])
    p.add_argument("--detach", action="store_true")
    p.add_argument("--pidfile", default="")
    p.add_argument("--log", default="")
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


def detach(command: list[str], env: dict[str, str], *, pidfile: str, log: str) -> int:
    """Double fork: the process leads a session of its own (no terminal, no SSH session holds it),
    its output goes to log, its pid to pidfile before the exec. A pipe closed by the exec tells
    this launcher whether the program started; it prints the pid and returns at once."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    first = os.fork()
    if first == 0:  # the intermediate child: a new session, then gone
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        try:
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            _write_pid(pidfile, os.getpid())
            os.execve(command[0], command, env)
        except OSError as exc:
            os.write(write_end, f"cannot run {command[0]!r}: {exc.strerror}".encode())
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


def main(argv: list[str]) -> int:
    command: list[str] = []
    try:
        args, command = parse(argv)
        settings = read_settings(args.settings)
        if args.control:
            runtime = {
                "STAGEFLOW_READY_DIR": args.ready_dir,
                "STAGEFLOW_READY_PATH": args.ready_path,
                "STAGEFLOW_RELEASE_ID": args.release,
                "STAGEFLOW_METRICS_DIR": args.metrics_dir,
                "STAGEFLOW_ASGI": "1" if args.asgi else "",
            }
        else:
            runtime = dict(args.env)
        env = environment(settings, runtime, dict(os.environ))
        if args.venv:
            env = in_venv(env, args.venv)
        if args.cwd:
            try:
                os.chdir(args.cwd)
            except OSError as exc:
                raise LaunchError(f"cannot enter {args.cwd}: {exc.strerror}") from None
        if not args.control:
            command = resolve(command, env)
            if args.detach:
                return detach(command, env, pidfile=args.pidfile, log=args.log)
            os.execve(command[0], command, env)
        fd = fetch_socket(args.control)
    except LaunchError as err:
        sys.stderr.write(f"launch: {err}\n")
        return 2
    except OSError as exc:  # the exec itself: a program that is not executable, say
        sys.stderr.write(f"launch: cannot run {command[0]!r}: {exc.strerror}\n")
        return NOT_FOUND
    command = [part.replace("{fd}", str(fd)) for part in command]
    os.execve(command[0], command, env)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
