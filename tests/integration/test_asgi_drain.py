"""A stopping ASGI worker answers what it accepted: uvicorn's gunicorn worker under stageflow's
gunicorn hooks, stopped (SIGTERM) while a client it accepted has not sent its request yet.

Old and new masters accept from one shared socket, so an old worker takes connections until its
SIGTERM; uvicorn's own shutdown closes every connection with no request yet, and that client got
no answer (one request in 237 lost while an ASGI service switched under load)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import free_port

CONF = Path(__file__).resolve().parents[2] / "deploy" / "runtime" / "gunicorn_conf.py"
GUNICORN = Path(sys.executable).with_name("gunicorn")
APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"answered"})
"""


def _wait(what: str, check, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}:\n{log.read_text(errors='replace')}"
        time.sleep(0.02)


def test_a_stopping_uvicorn_worker_answers_a_connection_it_accepted(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    (tmp_path / "asgi_probe.py").write_text(APP)
    port, log = free_port(), tmp_path / "gunicorn.log"
    argv = [str(GUNICORN), "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    argv += ["--worker-class", "uvicorn.workers.UvicornWorker", "--config", str(CONF)]
    argv += ["--graceful-timeout", "20", "--error-logfile", str(log), "--log-level", "info"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEFLOW_")}
    proc = subprocess.Popen(
        [*argv, "--chdir", str(tmp_path), "asgi_probe:app"], env=env, stderr=subprocess.DEVNULL
    )
    client = socket.socket()
    try:
        log.touch()
        _wait("never booted", lambda: "Application startup complete" in log.read_text(), log)
        client.connect(("127.0.0.1", port))  # the worker accepts it; no request is sent yet
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        # uvicorn logs "Shutting down" as its shutdown starts, and closes the connection it
        # accepted at once; stageflow's hook logs "stopping" first, and waits for the request
        began = ("Shutting down", "stopping: no new connections")
        _wait("never began to shut down", lambda: any(b in log.read_text() for b in began), log)
        client.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        client.settimeout(30)
        answer = b""
        try:
            while chunk := client.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        assert answer.startswith(b"HTTP/1.1 200") and b"answered" in answer, (
            answer,
            log.read_text(),
        )
        assert proc.wait(timeout=60) == 0  # and then it stopped, gracefully
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
