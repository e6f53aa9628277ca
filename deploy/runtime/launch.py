"""Fetches the listening socket from the listener and execs gunicorn on it (stdlib only)."""

from __future__ import annotations

import os
import socket
import sys


def main(argv: list[str]) -> int:
    # usage: launch.py CONTROL_SOCKET -- gunicorn args..., where "{fd}" is replaced by the fd number
    control, sep, *command = argv
    if sep != "--" or not command:
        sys.stderr.write("usage: launch.py CONTROL -- COMMAND...\n")
        return 2
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        ctl.connect(control)
        _, fds, _, _ = socket.recv_fds(ctl, 16, 1)
    if not fds:
        sys.stderr.write("launch: the listener sent no socket\n")
        return 1
    fd = fds[0]
    os.set_inheritable(fd, True)
    command = [part.replace("{fd}", str(fd)) for part in command]
    os.execv(command[0], command)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
