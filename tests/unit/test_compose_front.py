"""The compose front (deploy/runtime/compose_front.py) as its container runs it: `python -c` of its
text from the environment, on real sockets, in front of two real HTTP servers; its control
commands run the same way, as `docker compose exec front` would."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploy.commands.compose import FRONT_BOOT
from deploy.runtime.compose_project import FRONT_CODE_KEY, front_code
from tests.support import free_port


def _server(name: str, *, ready: bool = True) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status = 200 if ready or self.path != "/ready" else 503
            body = name.encode()
            if self.path == "/login-first":  # a path that redirects to a login page
                status = 302
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Front:
    def __init__(self, tmp: Path, first: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            FRONT_CODE_KEY: front_code(),
            "STAGEFLOW_FRONT_HOST": "127.0.0.1",
            "STAGEFLOW_FRONT_PORT": str(self.port),
            "STAGEFLOW_FRONT_CONTROL": str(tmp / "front.sock"),
            "STAGEFLOW_FRONT_TARGET": first,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FRONT_BOOT], env=self.env, stdout=subprocess.DEVNULL
        )
        for _ in range(400):
            if self.ask("target").returncode == 0:
                return
            assert self.proc.poll() is None, "the front exited"
            threading.Event().wait(0.025)
        raise AssertionError("the front's control socket never answered")

    def ask(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", FRONT_BOOT, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )

    def get(self, path: str = "/") -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", path)
        body = conn.getresponse().read().decode()
        conn.close()
        return body


@pytest.fixture
def servers() -> Iterator[dict[str, ThreadingHTTPServer]]:
    made = {"old": _server("old"), "new": _server("new"), "booting": _server("b", ready=False)}
    yield made
    for server in made.values():
        server.shutdown()


@pytest.fixture
def front(tmp_path: Path, servers: dict[str, ThreadingHTTPServer]) -> Iterator[Front]:
    f = Front(tmp_path, _target(servers["old"]))
    yield f
    f.proc.terminate()
    assert f.proc.wait(timeout=10) == 0  # SIGTERM: it stops at once, cleanly


def _target(server: ThreadingHTTPServer) -> str:
    return f"127.0.0.1:{server.server_address[1]}"


def test_new_connections_move_and_an_open_one_stays_with_its_release(
    front: Front, servers: dict[str, ThreadingHTTPServer]
) -> None:
    assert front.get() == "old"
    held = socket.create_connection(("127.0.0.1", front.port), timeout=10)
    held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a request still arriving at the switch
    done = front.ask("switch", _target(servers["new"]), "5", "0.2", "/health", "/ready")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["previous"] == _target(servers["old"])
    assert answer["left_open"] == 1  # the held connection: the drain waited for it, then said so
    assert front.get() == "new"
    held.sendall(b"Connection: close\r\n\r\n")
    reply = b""
    while chunk := held.recv(4096):
        reply += chunk
    held.close()
    assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"old")
    now = json.loads(front.ask("target").stdout)
    assert now["target"] == _target(servers["new"])


def test_a_target_that_is_not_ready_is_never_switched_to(
    front: Front, servers: dict[str, ThreadingHTTPServer]
) -> None:
    refused = front.ask("switch", _target(servers["booting"]), "0.5", "1", "/health", "/ready")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"].endswith("/ready answered 503")
    gone = front.ask("switch", f"127.0.0.1:{free_port()}", "0.5", "1", "/health")
    assert json.loads(gone.stdout)["error"].endswith("/health answered nothing")
    # a redirect answers for the health path (the first), never for a ready path of its own
    login = front.ask("switch", _target(servers["new"]), "0.5", "1", "/health", "/login-first")
    assert json.loads(login.stdout)["error"].endswith("/login-first answered 302")
    assert front.get() == "old"


def test_a_health_path_that_redirects_is_an_answer(
    front: Front, servers: dict[str, ThreadingHTTPServer]
) -> None:
    # no ready path of its own: the health path stands in, and "/" sends to a login page
    moved = front.ask("switch", _target(servers["new"]), "5", "0.2", "/login-first")
    assert moved.returncode == 0, moved.stdout
    assert front.get() == "new"
