"""staging's profile check "version": the release that answers is the one `current` names, asked
through the [service] contract (the release header stageflow's workers set, else the service's own
version path), never through a /version path the service need not have."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from deploy import staging
from deploy.config import load_project
from deploy.hosts import host_from_spec
from deploy.probes import smoke
from deploy.state import Layout
from tests import support

RELEASE = "20261203T010000Z-abcdef12"


@pytest.fixture
def port() -> Iterator[int]:
    """A service without a version path: every answer carries the release header, /version is
    a 404 like any path it does not serve."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(302 if self.path == "/admin/" else 404)
            self.send_header(smoke.RELEASE_HEADER, RELEASE)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _view(tmp_path: Path, port: int, serving: str) -> staging._StagingView:
    (tmp_path / "releases" / serving).mkdir(parents=True)
    (tmp_path / "current").symlink_to(tmp_path / "releases" / serving)
    proj = load_project(support.REPO, process_env={})
    proj = replace(proj, service=replace(proj.service, health="/admin/", ready="", version=""))
    env = replace(proj.env("staging"), app_port=port)
    host, layout = host_from_spec("local"), Layout(str(tmp_path))
    return staging._StagingView(proj, "staging", env, layout, [], host, layout, "127.0.0.1", {})


def test_a_service_without_a_version_path_is_judged_by_its_release_header(
    tmp_path: Path, port: int
) -> None:
    assert staging._serving_current_release(_view(tmp_path, port, RELEASE)) == (True, RELEASE)


def test_another_release_answering_fails_the_check(tmp_path: Path, port: int) -> None:
    ok, detail = staging._serving_current_release(_view(tmp_path, port, "20261203T020000Z-0"))
    assert not ok and detail == f"serving {RELEASE}, current is 20261203T020000Z-0"
