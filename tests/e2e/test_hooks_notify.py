"""Hooks, webhooks and the incident draft around real staging deploys and rollbacks."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests import support
from tests.integration.test_notify import DOCUMENTED

SECRET_MARK = "s3cret-value"  # every secret tests/support writes contains it


class Receiver:
    """A webhook receiver on loopback that keeps every event it is sent."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.raw: list[bytes] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.raw.append(body)
                owner.events.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", support.free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def of(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hooked(project):
    receiver = Receiver()
    with open(project.root / "stageflow.toml", "a") as fh:
        fh.write(f'\n[notify.staging]\nurls = ["{receiver.url}"]\n')
    project.commit("notify staging's deploys")
    project.ok("staging.up")
    try:
        yield project, receiver
    finally:
        receiver.close()


def hook(project, point: str, body: str) -> None:
    path = project.root / "deploy" / "hooks" / point
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)


def test_failing_pre_deploy_hook_stops_the_deploy_with_nothing_changed(hooked):
    project, _ = hooked
    hook(project, "pre-deploy", 'echo "change window closed for $STAGEFLOW_ENV"\nexit 1\n')
    try:
        res = project.inv("staging.deploy")
        assert res.returncode == 1, res.stdout + res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "change window closed for staging" in lines[0], res.stderr
        assert not (project.root / ".stageflow/staging/releases").exists() or not os.listdir(
            project.root / ".stageflow/staging/releases"
        )
        assert project.history("staging") == []
        assert "lock free" in project.ok("staging.lock").stdout
    finally:
        (project.root / "deploy/hooks/pre-deploy").unlink()


def test_post_deploy_hook_sees_release_and_actor_and_webhook_gets_one_event(hooked):
    project, receiver = hooked
    hook(project, "post-deploy", 'env | grep "^STAGEFLOW_" | sort > "$PWD/post-deploy.env"\n')
    try:
        res = project.ok("staging.deploy")
    finally:
        (project.root / "deploy/hooks/post-deploy").unlink()
    seen = dict(
        line.split("=", 1) for line in (project.root / "post-deploy.env").read_text().splitlines()
    )
    release = project.history("staging")[0]["release"]
    assert seen["STAGEFLOW_RELEASE"] == release and seen["STAGEFLOW_ACTOR"] == project.actor
    assert seen["STAGEFLOW_STATUS"] == "success" and seen["STAGEFLOW_ENV"] == "staging"
    assert SECRET_MARK not in (project.root / "post-deploy.env").read_text()
    assert "Traceback" not in res.stderr
    deploys = receiver.of("deploy")
    assert len(deploys) == 1, receiver.events
    event = deploys[0]
    # every field of the documented schema (the webhook tests' list of it)
    assert DOCUMENTED <= set(event), DOCUMENTED - set(event)
    assert event["release"] == release and event["status"] == "success"
    assert event["environment"] == "staging" and event["actor"] == project.actor


def test_rollback_sends_its_event_and_no_event_carries_a_secret(hooked):
    project, receiver = hooked
    (project.root / "CHANGES").write_text("second release\n")
    project.commit("second release")
    project.ok("staging.deploy")
    project.ok("staging.rollback", "--level", "2", "--reason", "webhook test")
    assert len(receiver.of("rollback")) == 1
    assert receiver.of("rollback")[0]["details"]["reason"] == "webhook test"
    assert len(receiver.of("deploy")) == 2  # one per operation
    assert all(SECRET_MARK.encode() not in body for body in receiver.raw)


def test_incident_draft_after_an_automatic_rollback(hooked):
    project, receiver = hooked
    good = project.history("staging")[0]["release"]
    project.set_policy("staging", verify_window_s=6)
    project.set_fault("healthz-fail-after:1")
    project.commit("health fails after a second")
    res = project.inv("staging.deploy")
    assert res.returncode == 6, res.stdout + res.stderr
    bad = project.history("staging")[0]
    assert bad["status"] == "rolled-back"
    assert len(receiver.of("auto-rollback")) == 1
    out = project.ok("staging.incident").stdout
    draft = next(p for p in (project.root / "docs/incidents").glob("*-staging*.md"))
    assert str(draft.name) in out
    text = draft.read_text()
    assert "health check failed" in text  # the trigger, with its numbers
    assert bad["release"] in text and good in text
    assert bad["time"][:16].replace("T", " ") in text.replace("T", " ")
    assert "root cause" in text.lower()
    project.set_fault("")
    project.commit("health fixed")
