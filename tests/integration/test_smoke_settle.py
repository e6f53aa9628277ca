"""The smoke probes judge the new release, not a worker of the master being drained."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy.probes import smoke
from deploy.service import Service


class Answers:
    """A real HTTP server whose /version names `old` for the first `stale` requests, then `new`."""

    def __init__(self, stale: int, *, header: bool = False) -> None:
        self.stale = stale
        self.seen = 0
        answers = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                answers.seen += 1
                release = "old" if answers.seen <= answers.stale else "new"
                body = json.dumps({"release": release}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if header:  # the release in the header stageflow's hooks add to every answer
                    self.send_header(smoke.RELEASE_HEADER, release)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def draining() -> Iterator[Answers]:
    answers = Answers(stale=4)
    try:
        yield answers
    finally:
        answers.server.shutdown()
        answers.server.server_close()


def test_the_probes_wait_until_the_new_release_answers(draining: Answers) -> None:
    smoke._settle(draining.base, "new")
    # four answers from the draining master, then three in a row from the new one
    assert draining.seen == 4 + 3
    _, body = smoke.http("GET", f"{draining.base}/version")
    assert body == {"release": "new"}


def test_a_release_that_never_answers_is_left_to_the_version_probe(draining: Answers) -> None:
    smoke._settle(draining.base, "missing", timeout_s=0.3)  # gives up without raising
    _, body = smoke.http("GET", f"{draining.base}/version")
    assert body["release"] != "missing"


def test_the_release_header_is_enough_without_a_version_path() -> None:
    answers = Answers(stale=2, header=True)
    service = Service(name="shop", wsgi="shop:app", health="/up")  # no version path
    try:
        smoke._settle(answers.base, "new", service=service)
        assert answers.seen == 2 + 3  # one request per answer: the header, no version path
        assert smoke.serving_release(answers.base, service) == "new"
    finally:
        answers.server.shutdown()
        answers.server.server_close()
