"""`inv` for the tests without paying for Python's start each time: a process per test project that
has imported invoke, the project's engine and the drivers once, and forks one child per command.

    SF_INV_SERVER='["SOCKET", "ROOT"]' python tests/inv_server.py

Each child is the `inv` process a test would have started: it takes the test's stdin, stdout and
stderr (passed over the socket), its environment, working directory and argv, and runs invoke's
program from the top, as the `inv` script does; its exit status goes back to the test. What the
child runs is the engine the project holds: when a module file the server loaded changes on disk,
the server answers "stale" and the test starts a new one. A test of how `inv` itself starts (the
README's commands, `--list`, a fresh clone) runs the real script, not this.

The fault matrix's seam lives here too: a request may name a step at which the child SIGKILLs
itself, the same observer `tests/killpoint.py` registers. Nothing the engine reads can ask for it.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

_WARM = ("psycopg", "redis", "fabric", "dotenv")  # what most commands import on their way
_OTHER_PROCESSES = {"deploy.runtime.gunicorn_conf", "deploy.runtime.compose_front"}


# -- the server ---------------------------------------------------------------------------------


def _engine_modules(root: str) -> list[str]:
    """Every module of the project's engine that a command may import on its way, except the
    ones other processes run (gunicorn's hooks, the compose front), which read their
    environment as they load."""
    top = Path(root, "deploy")
    names = []
    for path in sorted(top.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in _OTHER_PROCESSES:
            names.append(name)
    return names


def _loaded_under(root: str) -> dict[str, tuple[int, int]]:
    seen = {}
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if path and path.startswith(root + os.sep):
            st = os.stat(path)
            seen[path] = (st.st_mtime_ns, st.st_size)
    return seen


def _changed(seen: dict[str, tuple[int, int]]) -> bool:
    for path, stamp in seen.items():
        try:
            st = os.stat(path)
        except OSError:
            return True
        if (st.st_mtime_ns, st.st_size) != stamp:
            return True
    return False


def _serve(sock_path: str, root: str) -> dict:
    """Import once, then fork a child per request; the request, in the child that runs it."""
    parent = os.getppid()
    sys.path[0] = str(Path(sys.executable).parent)  # as the `inv` script's own directory
    sys.path.insert(0, root)  # as invoke's loader puts the tasks file's directory
    os.chdir(root)
    from invoke.main import program  # noqa: F401  (kept in sys.modules for the children)

    import deploy.tasks.namespace  # noqa: F401

    for name in _engine_modules(root):
        __import__(name)
    for name in _WARM:
        __import__(name)
    seen = _loaded_under(root)
    os.chdir("/")  # nothing of this server runs in the project: a test of what runs there sees none
    gc.collect()
    gc.freeze()  # what was imported stays out of the children's collections: fewer copied pages
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{sock_path}.new")
    listener.listen(64)
    os.rename(f"{sock_path}.new", sock_path)  # the path appears once connections are taken
    listener.settimeout(1.0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the per-request children reap themselves
    sys.stdout.flush()
    sys.stderr.flush()
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if os.getppid() != parent or not os.path.isdir(root):
                os._exit(0)  # the test session or the project is gone
            continue
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            return _handle(conn, seen)
        conn.close()


def _handle(conn: socket.socket, seen: dict[str, tuple[int, int]]) -> dict:
    """The per-request child: fork the `inv` process, report its pid, then how it ended."""
    conn.settimeout(None)
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while not msg.endswith(b"\n"):  # a large environment may come in more than one piece
        more = conn.recv(1 << 16)
        if not more:
            os._exit(1)
        msg += more
    request = json.loads(msg)
    if _changed(seen):
        conn.sendall(b"stale\n")
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = list(request["argv"])
        return request
    for fd in fds:
        os.close(fd)
    conn.sendall(f"pid {pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    conn.sendall(f"status {os.waitstatus_to_exitcode(status)}\n".encode())
    os._exit(0)


def _run(request: dict) -> None:
    from invoke.main import program

    at = request.get("kill_at")
    if at:
        from deploy.engine import steps

        def die_at(name: str) -> None:
            if name == at:
                os.kill(os.getpid(), signal.SIGKILL)

        steps.observe(die_at)
    program.run(sys.argv)


# -- the tests' side ----------------------------------------------------------------------------


class Unavailable(RuntimeError):
    """The project's engine does not import as a whole (a test broke it on purpose, say): the
    caller runs the `inv` script instead, which reports what a user would see."""


class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = str(root.parent / f".inv-{os.getpid()}.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        self.stop()
        Path(self.sock).unlink(missing_ok=True)
        Path(f"{self.sock}.new").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            # not on the command line: a test looking for what runs under the project's root
            # finds the commands it ran, not this server
            env={**env, "SF_INV_SERVER": json.dumps([self.sock, str(self.root)])},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"the inv server for {self.root} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        Path(self.sock).unlink(missing_ok=True)


_servers: dict[Path, _Server] = {}


def stop(root: Path) -> None:
    server = _servers.pop(root, None)
    if server is not None:
        server.stop()


def run(
    root: Path,
    argv: list[str],
    *,
    env: dict[str, str],
    timeout: float,
    kill_at: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`inv` as subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True,
    stdin=DEVNULL, timeout=timeout) would run it, forked from the project's warm server."""
    server = _servers.get(root)
    if server is None:
        server = _servers[root] = _Server(root)
    for _ in range(3):
        if server.proc is None or server.proc.poll() is not None:
            server.start(env)
        answer = _ask(server, argv, env=env, timeout=timeout, kill_at=kill_at)
        if answer is not None:
            return answer
        server.stop()  # the engine on disk changed, or the server is gone: start a new one
    raise RuntimeError(f"the inv server for {root} kept reporting a changed engine")


def _ask(
    server: _Server, argv: list[str], *, env: dict[str, str], timeout: float, kill_at: str | None
) -> subprocess.CompletedProcess[str] | None:
    deadline = time.monotonic() + timeout
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            conn.connect(server.sock)
        except (ConnectionRefusedError, FileNotFoundError):
            for fd in (conn.detach(), out_r, err_r):
                os.close(fd)
            return None  # the server is gone (a test killed the project's processes): start anew
        request = {"argv": argv, "env": env, "cwd": str(server.root), "kill_at": kill_at}
        socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [null, out_w, err_w])
    finally:
        for fd in (null, out_w, err_w):
            os.close(fd)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

    def drain(fd: int) -> None:
        while data := os.read(fd, 65536):
            chunks[fd].append(data)
        os.close(fd)

    readers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in chunks]
    for t in readers:
        t.start()
    lines = conn.makefile("rb")
    pid = None
    code = None
    conn.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        for raw in lines:
            word, _, value = raw.decode().strip().partition(" ")
            if word == "stale":
                conn.close()
                for t in readers:
                    t.join()
                return None
            if word == "pid":
                pid = int(value)
            elif word == "status":
                code = int(value)
                break
            conn.settimeout(max(0.1, deadline - time.monotonic()))
    except TimeoutError:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        for t in readers:
            t.join(5)
        raise subprocess.TimeoutExpired(argv, timeout) from None
    finally:
        conn.close()
    for t in readers:
        t.join(max(0.1, deadline - time.monotonic()))
    if code is None:
        raise RuntimeError(f"the inv server for {server.root} ended without a status")
    return subprocess.CompletedProcess(argv, code, _text(chunks[out_r]), _text(chunks[err_r]))


def _text(chunks: list[bytes]) -> str:
    """As subprocess.run(text=True) decodes: strictly, with universal newlines."""
    return b"".join(chunks).decode().replace("\r\n", "\n").replace("\r", "\n")


if __name__ == "__main__":
    _run(_serve(*json.loads(os.environ.pop("SF_INV_SERVER"))))
