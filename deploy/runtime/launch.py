"""Starts one gunicorn master of a release: the service's settings file becomes its environment,
the listener's socket its bind (stdlib only; shipped into each release's .stageflow folder)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

# What the service inherits from the process that starts it; everything else it gets comes from
# its settings file, so an operator's shell (a stray VIRTUAL_ENV, PYTHONPATH...) never leaks in.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")


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


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise LaunchError("usage: launch.py --control SOCKET --settings FILE ... -- COMMAND...")
    cut = argv.index("--")
    p = argparse.ArgumentParser(prog="launch.py")
    p.add_argument("--control", required=True)
    p.add_argument("--settings", required=True)
    p.add_argument("--ready-dir", default="")
    p.add_argument("--ready-path", default="/")
    p.add_argument("--release", default="")
    p.add_argument("--metrics-dir", default="")
    p.add_argument("--asgi", action="store_true")
    args = p.parse_args(argv[:cut])
    command = argv[cut + 1 :]
    if not command:
        raise LaunchError("launch.py: no command after --")
    return args, command


def main(argv: list[str]) -> int:
    try:
        args, command = parse(argv)
        settings = read_settings(args.settings)
        runtime = {
            "STAGEFLOW_READY_DIR": args.ready_dir,
            "STAGEFLOW_READY_PATH": args.ready_path,
            "STAGEFLOW_RELEASE_ID": args.release,
            "STAGEFLOW_METRICS_DIR": args.metrics_dir,
            "STAGEFLOW_ASGI": "1" if args.asgi else "",
        }
        env = environment(settings, runtime, dict(os.environ))
        fd = fetch_socket(args.control)
    except LaunchError as err:
        sys.stderr.write(f"launch: {err}\n")
        return 2
    command = [part.replace("{fd}", str(fd)) for part in command]
    os.execve(command[0], command, env)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
