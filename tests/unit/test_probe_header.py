"""Every probe names itself to the service (X-Stageflow-Probe): smoke before the switch, verify
after it, so the service can tell stageflow's traffic from its users' (and the reference app's
health fault can start its clock after the switch, however slow the steps before it were)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from deploy.probes import smoke, verify


@pytest.fixture
def seen() -> Iterator[tuple[str, list[str | None]]]:
    """A one-thread HTTP server on loopback recording each request's probe header."""
    got: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            got.append(self.headers.get(smoke.PROBE_HEADER))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()


def test_smoke_and_verify_name_themselves(seen: tuple[str, list[str | None]]) -> None:
    base, got = seen
    assert smoke.request("GET", base + "/healthz").status == 200
    assert verify._status(base + "/healthz", {}) == 200
    assert got == ["smoke", "verify"]
