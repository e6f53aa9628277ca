"""A service that redirects every plain-HTTP request to HTTPS (Django's SECURE_SSL_REDIRECT) answers
stageflow's probes, which ask over plain HTTP on loopback, only with that redirect. The probes ask
again as through a TLS proxy (X-Forwarded-Proto: https, which gunicorn trusts from 127.0.0.1), and
smoke's health probe refuses a service that answers nothing but the redirect even then: a redirect
to its own URL over HTTPS is no sign that it is up."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.probes import smoke
from deploy.service import Service

# a WSGI app that, like a secure-by-default framework, redirects a request that did not come over
# HTTPS; /always redirects whatever the scheme (a service that trusts no proxy's header)
_APP = """
def app(environ, start_response):
    path = environ["PATH_INFO"]
    if environ["wsgi.url_scheme"] != "https" or path == "/always":
        location = "https://" + environ["HTTP_HOST"] + path
        start_response("301 Moved Permanently", [("Location", location), ("Content-Length", "0")])
        return [b""]
    if path == "/admin/":
        start_response("302 Found", [("Location", "/admin/login/"), ("Content-Length", "0")])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def secure_site(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "secure_app.py").write_text(_APP)
    port = _free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [str(gunicorn), "-b", f"127.0.0.1:{port}", "-w", "1", "secure_app:app"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _health(base: str, path: str) -> tuple[bool, str]:
    target = smoke._Target(
        base, None, Service(name="s", wsgi="secure_app:app", health=path), None, "t", {}
    )
    return smoke._health(target)


def test_a_redirect_to_https_is_asked_again_as_through_a_tls_proxy(secure_site: str) -> None:
    reply = smoke.request("GET", secure_site + "/healthz")
    assert (reply.status, reply.body) == (200, "ok")
    assert _health(secure_site, "/healthz") == (True, "/healthz: HTTP 200")


def test_a_redirect_elsewhere_is_still_the_answer(secure_site: str) -> None:
    # the admin's redirect to its login page (once past the HTTPS one) is the health path's answer
    assert smoke.request("GET", secure_site + "/admin/").status == 302
    assert _health(secure_site, "/admin/") == (True, "/admin/: HTTP 302")


def test_a_service_that_answers_only_the_https_redirect_fails_health(secure_site: str) -> None:
    ok, detail = _health(secure_site, "/always")
    assert not ok
    assert f"HTTP 301 to {secure_site.replace('http:', 'https:')}/always" in detail
    assert "SECURE_PROXY_SSL_HEADER" in detail
