"""Holds an environment's listening socket and hands it to each new gunicorn (stdlib only).

Old and new gunicorn masters then accept from one queue, so draining the old master resets no
queued connection: the switch loses no request. Runs as a daemon; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys


def serve(host: str, port: int, control: str, pidfile: str) -> None:
    listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen.bind((host, port))
    listen.listen(2048)
    if os.path.exists(control):
        os.unlink(control)
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    ctl.bind(control)
    os.umask(old_umask)
    ctl.listen(16)
    if os.fork():  # the parent reports success once the sockets exist
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    with open(pidfile + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(pidfile + ".tmp", pidfile)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        conn, _ = ctl.accept()
        try:
            socket.send_fds(conn, [b"fd"], [listen.fileno()])
        except OSError:
            pass
        finally:
            conn.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--pidfile", required=True)
    a = p.parse_args(argv)
    try:
        serve(a.host, a.port, a.control, a.pidfile)
    except OSError as exc:
        sys.stderr.write(f"listener: cannot listen on {a.host}:{a.port}: {exc.strerror}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
