"""An ASGI app (Starlette) under uvicorn's gunicorn worker: no failed request at 60 req/s while it
switches twice."""

from __future__ import annotations

import time

from tests.e2e.deployed_services import (
    Load,
    service,  # noqa: F401 - the fixture
)

# -- ASGI under uvicorn's gunicorn worker ---------------------------------------------------------


def test_an_asgi_app_switches_twice_under_load_without_a_failed_request(service):  # noqa: F811 - the fixture imported above
    hello = service("asgi_hello")
    hello.init()
    assert '"uvicorn.workers.UvicornWorker"' in hello.toml()
    hello.commit("stageflow init")
    hello.ok("dev.up")
    hello.ok("dev.deploy")
    assert hello.get("dev")[:2] == (200, "hello development")
    with Load(hello.url("dev"), rate=60) as load:
        for n in (1, 2):
            (hello.root / "hello" / "extra.py").write_text(f"N = {n}\n")
            hello.commit(f"change {n}")
            hello.ok("dev.deploy")
        time.sleep(0.5)
    assert load.sent >= 60
    assert load.failed == [], f"{len(load.failed)} of {load.sent} failed: {load.failed[:3]}"
