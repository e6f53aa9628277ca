"""Webhook notifications against a real HTTP server on 127.0.0.1: schema, retries, audit, no wait."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deploy import notify
from deploy.config import Project, load_project
from deploy.errors import ConfigError
from deploy.hosts import Host
from deploy.policy.actors import Actor
from deploy.state import Layout, read_jsonl
from tests import support

SECRET = "pg-staging-s3cret-value"  # support.write_envs puts it in env/staging.secrets.env
TOKEN = "T0KEN0123456789abcdefXYZ"
DOCUMENTED = {
    "schema_version",
    "id",
    "event",
    "env",
    "environment",
    "time",
    "actor",
    "release",
    "commit",
    "ref",
    "status",
    "details",
}


class Receiver:
    """A webhook receiver: records every POST and answers with `status`."""

    def __init__(self) -> None:
        self.status = 204
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                receiver.received.append(
                    {
                        "path": self.path,
                        "content_type": self.headers.get("Content-Type"),
                        "authorization": self.headers.get("Authorization"),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    notify.flush(15)
    r.stop()


def make_project(root: Path, toml: str) -> Project:
    (root / "stageflow.toml").write_text(support.minimal_policy() + "\n" + toml)
    support.write_envs(root)
    return load_project(root)


def audit_of(proj: Project, env: str) -> list[dict[str, Any]]:
    return read_jsonl(Host(), Layout(str(proj.env(env).data_dir)).audit)


def failed_notices(proj: Project, env: str) -> list[dict[str, Any]]:
    return [a for a in audit_of(proj, env) if a.get("action") == "notify-failed"]


def test_one_event_per_send_with_the_documented_fields(tmp_path: Path, receiver: Receiver) -> None:
    proj = make_project(
        tmp_path,
        f'[notify]\nurls = ["{receiver.url}/all"]\n[notify.prod]\nurls = ["{receiver.url}/prod"]\n',
    )
    queued = notify.send(
        proj,
        "staging",
        "auto-rollback",
        actor=Actor("ana@example.com", "human"),
        release="20261122T040723Z-7d0d1934",
        commit="7d0d1934cf3453d6c88848cfb82cb4a49df1e1aa",
        ref="v1.4.0-rc.1",
        status="rolled-back",
        details={"reason": f"verify failed; dsn had {SECRET}", "numbers": [12.0, 0.0]},
    )
    assert queued == 1
    assert notify.flush(10)
    assert len(receiver.received) == 1
    got = receiver.received[0]
    assert got["path"] == "/all" and got["content_type"] == "application/json"
    body = got["body"]
    assert set(body) == DOCUMENTED
    assert body["schema_version"] == notify.SCHEMA_VERSION == 1
    assert body["event"] == "auto-rollback"
    assert (body["env"], body["environment"]) == ("staging", "staging")
    assert body["actor"] == "ana@example.com"
    assert body["release"] == "20261122T040723Z-7d0d1934"
    assert body["commit"] == "7d0d1934cf3453d6c88848cfb82cb4a49df1e1aa"
    assert (body["ref"], body["status"]) == ("v1.4.0-rc.1", "rolled-back")
    assert body["time"].endswith("Z") and body["time"][:2] == "20"
    assert body["details"] == {
        "reason": "verify failed; dsn had [REDACTED]",
        "numbers": [12.0, 0.0],
    }
    assert SECRET not in json.dumps(body)

    # prod's own list replaces the shared one; a second send is a second, distinct event
    notify.send(proj, "prod", "approval", actor="bo@example.com", status="approved")
    notify.send(proj, "prod", "freeze", actor="bo@example.com", status="frozen")
    assert notify.flush(10)
    later = receiver.received[1:]
    assert [r["path"] for r in later] == ["/prod", "/prod"]
    assert sorted(r["body"]["event"] for r in later) == ["approval", "freeze"]
    assert later[0]["body"]["id"] != later[1]["body"]["id"]
    assert later[0]["body"]["release"] == ""  # absent fields are present and empty
    assert failed_notices(proj, "staging") == [] and failed_notices(proj, "prod") == []


def test_server_error_is_retried_then_audited(tmp_path: Path, receiver: Receiver) -> None:
    receiver.status = 503
    with_auth = receiver.url.replace("http://", "http://bot:hook%40pass@")
    proj = make_project(tmp_path, f'[notify]\nurls = ["{with_auth}/hook?token={TOKEN}"]\n')
    notify.send(proj, "dev", "deploy", actor="ci-bot (ci)", status="success")
    assert notify.flush(15)
    assert len(receiver.received) == notify.ATTEMPTS == 3
    assert len({r["body"]["id"] for r in receiver.received}) == 1  # the same event, retried
    basic = "Basic " + base64.b64encode(b"bot:hook@pass").decode()
    assert {r["authorization"] for r in receiver.received} == {basic}
    assert receiver.received[0]["path"] == f"/hook?token={TOKEN}"
    (notice,) = failed_notices(proj, "dev")
    assert notice["error"] == "HTTP 503" and notice["attempts"] == 3
    assert notice["event"] == "deploy" and notice["actor"] == "ci-bot (ci)"
    assert notice["url"] == f"{receiver.url}/hook"  # no credentials, no query
    assert "pass" not in json.dumps(notice) and TOKEN not in json.dumps(notice)


def test_client_error_is_not_retried(tmp_path: Path, receiver: Receiver) -> None:
    receiver.status = 404
    proj = make_project(tmp_path, f'[notify]\nurls = ["{receiver.url}/gone"]\n')
    notify.send(proj, "dev", "rollback", status="success")
    assert notify.flush(15)
    assert len(receiver.received) == 1
    (notice,) = failed_notices(proj, "dev")
    assert notice["error"] == "HTTP 404" and notice["attempts"] == 1


def test_dead_url_send_returns_at_once_then_retries_and_audits(tmp_path: Path) -> None:
    # A listener that never answers: each attempt waits out its timeout, so a send() that
    # delivered in line could not return before the delivery finished.
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    hold.listen(8)
    port = hold.getsockname()[1]
    url = f"http://hook-user:hook-pass@127.0.0.1:{port}/services/{TOKEN}?token=q-secret"
    proj = make_project(tmp_path, f'[notify]\nurls = ["{url}"]\n')
    try:
        start = time.monotonic()
        notify.send(proj, "staging", "break-glass", actor="ana@example.com", status="override")
        returned_after = time.monotonic() - start
        still_delivering = not notify.flush(0)
    finally:
        hold.close()  # from here the attempts are refused, so the retries end quickly
    assert still_delivering, "send() waited for the delivery"
    assert returned_after < notify.BACKOFF_S[0], "send() returned only after a retry delay"
    assert notify.flush(15)
    (notice,) = failed_notices(proj, "staging")
    assert notice["attempts"] == notify.ATTEMPTS and notice["event"] == "break-glass"
    assert "Connection refused" in notice["error"]  # the last attempt, after the listener closed
    assert notice["url"] == f"http://127.0.0.1:{port}/services/***"
    line = json.dumps(notice)
    for leaked in ("hook-pass", "hook-user", "q-secret", TOKEN):
        assert leaked not in line


def test_no_urls_sends_nothing(tmp_path: Path) -> None:
    proj = make_project(tmp_path, "")
    assert notify.send(proj, "prod", "deploy", status="success") == 0
    assert failed_notices(proj, "prod") == []


def test_bad_config_is_audited_not_raised_by_send(tmp_path: Path) -> None:
    proj = make_project(tmp_path, '[notify]\nurls = ["ftp://files.example/x"]\n')
    with pytest.raises(ConfigError, match="is not an http"):
        notify.urls(proj, "dev")
    assert notify.send(proj, "dev", "deploy", status="success") == 0
    (notice,) = failed_notices(proj, "dev")
    assert "is not an http" in notice["error"]


def test_unknown_event_or_field_is_a_programming_error(tmp_path: Path) -> None:
    proj = make_project(tmp_path, "")
    with pytest.raises(ValueError, match="unknown event"):
        notify.send(proj, "dev", "deployed")
    with pytest.raises(ValueError, match="unknown event fields"):
        notify.send(proj, "dev", "deploy", state="ok")
