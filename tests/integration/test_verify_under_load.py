"""The verify window's judgement on a busy machine: the reference service under real gunicorn (its
workers writing stageflow's per-worker counters), real PostgreSQL and Redis, steady traffic, and
four CPU burners on the machine while the new release is watched.

A good release is kept; a release whose every answer takes twice as long, and one with several
points more errors, are caught within the window. Nothing here asserts a duration.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from deploy.config import Thresholds
from deploy.hosts import Host
from deploy.probes import verify
from deploy.service import load_service
from deploy.state import Layout
from tests.integration.test_app import GUNICORN, REPO, base_env, migrate

COUNTERS_CONF = Path(__file__).resolve().parents[1] / "worker_counters.py"
SERVICE = load_service(
    REPO / "stageflow.toml", tomllib.loads((REPO / "stageflow.toml").read_text())
)
PROD = Thresholds()  # prod's triggers: +5 error points, latency ratio 2
BASELINE, NEW = "20260101T000000Z-aaaaaaa", "20260102T000000Z-bbbbbbb"
WINDOW_S = 6.0
BOOT_WAIT_S = 30


@contextmanager
def serve(tmp_path: Path, port: int, layout: Layout, env: dict[str, str]) -> Iterator[None]:
    """gunicorn (2 sync workers) with the counting hooks; returns once it answers /healthz."""
    log = tmp_path / f"gunicorn-{port}.log"
    env = {**env, "STAGEFLOW_METRICS_DIR": f"{layout.run}/metrics"}
    argv = [str(GUNICORN), "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    argv += ["--config", str(COUNTERS_CONF), "--chdir", str(REPO), SERVICE.wsgi]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + BOOT_WAIT_S
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, f"no answer:\n{log.read_text(errors='replace')}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def burners(count: int = 4) -> Iterator[None]:
    """count processes spinning on the CPU (load average well over the 2 cores); killed at the end."""
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


@contextmanager
def steady_traffic(port: int, path: str = "/notes", gap_s: float = 0.02) -> Iterator[None]:
    """One client reading path again and again, as users would, until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    r.read()
            except OSError:
                pass  # a 5xx is an HTTPError, an OSError: counted by the server all the same
            stop.wait(gap_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def window(layout: Layout, port: int, release: str, baseline: str | None) -> verify.Verdict:
    return verify.watch_places(
        SERVICE,
        PROD,
        [verify.LocalPlace(Host(), layout)],
        port=port,
        headers={},
        release=release,
        baseline=baseline,
        window_s=WINDOW_S,
    )


@pytest.fixture
def verify_release(
    tmp_path: Path, pg_dsn: str, redis_url: str, free_port: Callable[[], int]
) -> Callable[..., verify.Verdict]:
    """Serve the baseline with fault `before` and watch it quietly under traffic; then serve the
    new release with fault `after` and watch it under traffic with the CPU burners running."""
    migrate(pg_dsn)
    layout = Layout(str(tmp_path / "data"))

    def run(before: str, after: str) -> verify.Verdict:
        with ExitStack() as stack:
            port = free_port()
            env = base_env(pg_dsn, redis_url, STAGEFLOW_RELEASE=BASELINE, STAGEFLOW_FAULT=before)
            stack.enter_context(serve(tmp_path, port, layout, env))
            stack.enter_context(steady_traffic(port))
            assert window(layout, port, BASELINE, None).ok
        port = free_port()
        env = base_env(pg_dsn, redis_url, STAGEFLOW_RELEASE=NEW, STAGEFLOW_FAULT=after)
        with serve(tmp_path, port, layout, env), burners(), steady_traffic(port):
            return window(layout, port, NEW, BASELINE)

    return run


def test_a_good_release_is_kept_while_the_machine_is_busy(verify_release) -> None:
    verdict = verify_release("", "")
    assert verdict.ok, (verdict.reason, verdict.numbers)
    # it was judged, not waved through for want of requests
    assert verdict.numbers["requests"] >= verify.MIN_REQUESTS, verdict.numbers
    assert verdict.numbers["baseline_requests"] >= verify.MIN_REQUESTS, verdict.numbers


def test_a_release_twice_as_slow_is_caught(verify_release) -> None:
    # every answer of the baseline waits 60 ms (a slow dependency), the new release's 120 ms
    verdict = verify_release("latency:60", "latency:120")
    assert not verdict.ok and verdict.reason.startswith("latency:"), verdict


def test_a_release_with_more_errors_is_caught(verify_release) -> None:
    # one /notes answer in ten fails: most of the window's requests read /notes
    verdict = verify_release("", "error-rate:10")
    assert not verdict.ok and verdict.reason.startswith("error rate"), verdict
