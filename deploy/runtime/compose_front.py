"""The compose front: the stable TCP forwarder that holds an environment's app port across releases.

It runs in the project's `front` container on the configured Python base image, stdlib only: the
runtime passes this file's text in the container's environment (STAGEFLOW_FRONT_CODE) and the
container runs it with `python -c`, so a service's repository carries none of it. Each new
connection goes to the front's current target (an app container on the project network); a
connection stays with the target it started on until either side closes it.

The runtime moves it with `docker compose exec front python -c <this text> switch TARGET PATH...`,
which talks to the server over a unix socket in the container: the server asks TARGET for each
PATH (health, then ready) until all answer, the first (health) 2xx or 3xx (a redirect is an
answer, not followed), the others 2xx; moves new connections to it, then waits until no
connection to any other target is open and answers with what it left. `target` prints where new
connections go. The first target is the compose service's name, which resolves to its one container.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

HOST = os.environ.get("STAGEFLOW_FRONT_HOST", "0.0.0.0")  # every interface of its container
PORT = int(os.environ.get("STAGEFLOW_FRONT_PORT", "8000"))
CONTROL = os.environ.get("STAGEFLOW_FRONT_CONTROL", "/tmp/stageflow-front.sock")
FIRST_TARGET = os.environ.get("STAGEFLOW_FRONT_TARGET", "app:8000")
CHUNK = 65536
# The base image is the service's Python, maybe older than stageflow's: before 3.11 asyncio's
# TimeoutError is not the builtin one, hence the asyncio name below.


def _address(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except (OSError, RuntimeError):
        pass


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close dst; a reset on either side closes dst (the other pipe ends)."""
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (OSError, RuntimeError):
        _close(dst)


async def _status(target: str, path: str) -> int:
    """One GET of path on target: its HTTP status, 0 when it does not answer."""
    host, port = _address(target)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
    except (OSError, asyncio.TimeoutError):  # noqa: UP041
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except (OSError, asyncio.TimeoutError):  # noqa: UP041
        return 0
    finally:
        _close(writer)


class Front:
    def __init__(self, target: str) -> None:
        self.target = target
        self.open: dict[str, int] = {}
        self.changed = asyncio.Event()

    def _count(self, target: str, step: int) -> None:
        self.open[target] = self.open.get(target, 0) + step
        self.changed.set()

    def others(self) -> int:
        return sum(n for t, n in self.open.items() if t != self.target)

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self.target  # fixed for this connection's life, whatever a switch does
        self._count(target, 1)
        try:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*_address(target)), 10
                )
            except (OSError, asyncio.TimeoutError):  # noqa: UP041
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            _close(up_writer)
        finally:
            _close(writer)
            self._count(target, -1)

    async def switch(self, target: str, paths: list[str], ready_s: float, drain_s: float) -> dict:
        deadline = time.monotonic() + ready_s
        for i, path in enumerate(paths):
            below = 400 if i == 0 else 300  # the health path may redirect; a ready path may not
            while not 200 <= (status := await _status(target, path)) < below:
                if time.monotonic() > deadline:
                    return {"ok": False, "error": f"{target}{path} answered {status or 'nothing'}"}
                await asyncio.sleep(0.2)
        previous, self.target = self.target, target
        print(f"front: new connections go to {target} (was {previous})", flush=True)
        deadline = time.monotonic() + drain_s
        while self.others() and time.monotonic() < deadline:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:  # noqa: UP041
                break
        return {"ok": True, "previous": previous, "left_open": self.others()}

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ask = json.loads(await reader.readline() or b"{}")
            if ask.get("op") == "switch":
                args = (ask["target"], list(ask["paths"]), ask["ready_s"], ask["drain_s"])
                answer = await self.switch(*args)
            else:
                answer = {"ok": True, "target": self.target, "open": self.open}
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
        _close(writer)


async def serve() -> None:
    front = Front(FIRST_TARGET)
    if os.path.exists(CONTROL):
        os.unlink(CONTROL)  # a restarted container's own leftover
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(front.client, HOST, PORT, backlog=1024)
    control = await asyncio.start_unix_server(front.control, CONTROL)
    print(f"front: listening on {PORT}, new connections go to {front.target}", flush=True)
    await stop.wait()
    server.close()
    control.close()


async def ask(request: dict) -> dict:
    reader, writer = await asyncio.open_unix_connection(CONTROL)
    writer.write(json.dumps(request).encode() + b"\n")
    await writer.drain()
    answer = json.loads(await reader.readline())
    _close(writer)
    return answer


def main(argv: list[str]) -> int:
    """No argument: serve. `target`: where new connections go. `switch TARGET READY_S DRAIN_S
    PATH...`: move to TARGET once every PATH answers there (the first, health, 2xx or 3xx; the
    others 2xx), then wait for the others to close."""
    if not argv:
        asyncio.run(serve())
        return 0
    if argv[0] == "switch":
        target, ready_s, drain_s, *paths = argv[1:]
        request = {"op": "switch", "target": target, "paths": paths}
        answer = asyncio.run(ask({**request, "ready_s": float(ready_s), "drain_s": float(drain_s)}))
    else:
        answer = asyncio.run(ask({"op": "target"}))
    print(json.dumps(answer), flush=True)
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
