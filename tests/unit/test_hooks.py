"""Hooks with real scripts in a temporary project: order, failure, timeout, environment, secrets."""

from __future__ import annotations

import os
import shutil
import signal
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from deploy import hooks
from deploy.config import Project, load_project
from deploy.errors import ConfigError, ExitCode
from deploy.hosts import Host
from deploy.policy.actors import Actor
from deploy.state import Layout, read_jsonl
from tests import support

SECRET = "pg-staging-s3cret-value"  # support.write_envs puts it in env/staging.secrets.env
EXPORTED = "exported-prod-s3cret-value"


def make_project(root: Path, toml: str = "") -> Project:
    (root / "stageflow.toml").write_text(support.minimal_policy() + "\n" + toml)
    support.write_envs(root)
    return load_project(root)


def script(root: Path, rel: str, body: str, *, executable: bool = True) -> Path:
    path = root / "deploy" / "hooks" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755 if executable else 0o644)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


def test_failing_pre_hook_raises_with_its_last_line_and_stops_later_hooks(root: Path) -> None:
    proj = make_project(root)
    script(
        root, "pre-deploy.d/10-check", 'echo "checking"\necho "no change ticket for v9" >&2\nexit 1'
    )
    script(root, "pre-deploy.d/20-later", "touch ran-later")
    with pytest.raises(hooks.HookFailed) as info:
        hooks.run(proj, "staging", "pre-deploy", {"ref": "v9"}, process_env={})
    err = info.value
    assert err.exit_code == ExitCode.FAILURE
    line = err.line()
    assert "\n" not in line
    assert "deploy/hooks/pre-deploy.d/10-check" in line
    assert "exited 1" in line and "no change ticket for v9" in line
    assert [r.ok for r in err.results] == [False]
    assert not (root / "ran-later").exists()


def test_passing_pre_hooks_run_in_order_file_then_dir_then_toml(root: Path) -> None:
    proj = make_project(root, '[hooks]\npre-deploy = [["sh", "-c", "echo toml >> order"]]\n')
    script(root, "pre-deploy", "echo single >> order")
    script(root, "pre-deploy.d/20-b", "echo b >> order")
    script(root, "pre-deploy.d/10-a", "echo a >> order")
    script(root, "pre-deploy.d/30-off", "echo off >> order", executable=False)
    names = [h.name for h in hooks.plan(proj, "dev", "pre-deploy")]
    assert names == [
        "deploy/hooks/pre-deploy",
        "deploy/hooks/pre-deploy.d/10-a",
        "deploy/hooks/pre-deploy.d/20-b",
        "stageflow.toml: sh",
    ]
    assert [h.name for h in hooks.plan_all(proj, "dev")] == names
    results = hooks.run(proj, "dev", "pre-deploy", {}, process_env={})
    assert all(r.ok for r in results) and len(results) == 4
    assert (root / "order").read_text().split() == ["single", "a", "b", "toml"]


def test_post_hook_failure_is_returned_not_raised_and_the_rest_still_run(root: Path) -> None:
    proj = make_project(root)
    script(root, "post-deploy.d/10-notify", 'echo "chat server said 503"\nexit 3')
    script(root, "post-deploy.d/20-log", "echo logged; touch ran-after")
    results = hooks.run(proj, "staging", "post-deploy", {"status": "success"}, process_env={})
    assert [r.ok for r in results] == [False, True]
    assert results[0].exit_code == 3 and results[0].last_line == "chat server said 503"
    assert (root / "ran-after").exists()
    note = hooks.failures(results)
    assert "10-notify" in note and "chat server said 503" in note and "20-log" not in note
    assert results[0].to_dict()["ok"] is False
    layout = Layout(str(root / "home"))
    line = hooks.record_failures(Host(), layout, results, actor="ana", history_id="h1")
    assert line == note
    (record,) = read_jsonl(Host(), layout.audit)
    assert record["action"] == "hook-failed" and record["history_id"] == "h1"
    assert record["name"] == "deploy/hooks/post-deploy.d/10-notify" and record["exit_code"] == 3


def test_on_failure_hook_that_cannot_start_is_a_result(root: Path) -> None:
    proj = make_project(root, '[hooks]\non-failure = [["./no-such-program"]]\n')
    (result,) = hooks.run(proj, "dev", "on-failure", {"status": "failed"}, process_env={})
    assert not result.ok and result.exit_code is None and "no-such-program" in result.last_line


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not yet reaped


def test_timeout_kills_the_hook_and_what_it_started(root: Path) -> None:
    proj = make_project(root, "[hooks.dev]\ntimeout_s = 1\n")
    # the child ignores TERM, so only the KILL to the whole group stops it
    script(
        root,
        "post-deploy",
        "(trap '' TERM; sleep 120) &\necho $! > child.pid\necho started\nsleep 120",
    )
    (result,) = hooks.run(proj, "dev", "post-deploy", {}, process_env={})
    assert result.timed_out and not result.ok and result.exit_code is None
    assert "started" in result.output and "killed after 1s" in result.output
    child = int((root / "child.pid").read_text())
    deadline = time.monotonic() + 10  # KILL is asynchronous; wait for it, do not time it
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(child)
    if alive:  # clean up before failing: the child and its sleep share the hook's group
        os.killpg(os.getpgid(child), signal.SIGKILL)
    assert not alive, "the hook's child outlived the timeout"


def test_timeout_kills_what_left_the_hooks_session(root: Path) -> None:
    proj = make_project(root, "[hooks.dev]\ntimeout_s = 1\n")
    # setsid: a session (and group) of its own, beyond the group kill; it ignores TERM too
    script(
        root,
        "post-deploy",
        "setsid sh -c 'echo $$ > child.pid; trap \"\" TERM; exec sleep 120' "
        ">/dev/null 2>&1 </dev/null &\n"
        "while [ ! -s child.pid ]; do sleep 0.05; done\necho started\nsleep 120",
    )
    (result,) = hooks.run(proj, "dev", "post-deploy", {}, process_env={})
    assert result.timed_out and "started" in result.output
    child = int((root / "child.pid").read_text())
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the hook's setsid child outlived the timeout"


def test_timed_out_pre_hook_raises(root: Path) -> None:
    proj = make_project(root, "[hooks]\ntimeout_s = 1\n")
    script(root, "pre-rollback", "echo waiting for approval\nsleep 120")
    with pytest.raises(hooks.HookFailed) as info:
        hooks.run(proj, "dev", "pre-rollback", {"reason": "p95"}, process_env={})
    assert "pre-rollback hook deploy/hooks/pre-rollback timed out" in info.value.message
    assert "killed after 1s" in info.value.message


def test_environment_has_the_context_and_no_secret(root: Path) -> None:
    proj = make_project(root)
    script(root, "post-rollback", "env > seen.env\ncat env/staging.secrets.env")
    context = {
        "release": "20261122T040723Z-7d0d1934",
        "commit": "7d0d1934cf3453d6c88848cfb82cb4a49df1e1aa",
        "ref": "v1.4.0",
        "actor": Actor("ana@example.com", "human"),
        "status": "success",
        "previous": "20261121T100000Z-1234abcd",
        "reason": f"p95 doubled; password {SECRET} leaked in a log",
    }
    operator = {
        "PATH": os.environ["PATH"],
        "HOME": "/home/ana",
        "LANG": "C.UTF-8",
        "STAGEFLOW_WORKING_TZ": "Europe/Berlin",
        "STAGEFLOW_PROD_POSTGRES_PASSWORD": EXPORTED,
        "AWS_SECRET_ACCESS_KEY": EXPORTED,
    }
    (result,) = hooks.run(proj, "staging", "post-rollback", context, process_env=operator)
    assert result.ok
    seen = dict(
        line.split("=", 1) for line in (root / "seen.env").read_text().splitlines() if "=" in line
    )
    expected = {
        "STAGEFLOW_ENV": "staging",
        "STAGEFLOW_ENVIRONMENT": "staging",
        "STAGEFLOW_POINT": "post-rollback",
        "STAGEFLOW_HOSTS": "local",
        "STAGEFLOW_RELEASE": context["release"],
        "STAGEFLOW_COMMIT": context["commit"],
        "STAGEFLOW_REF": "v1.4.0",
        "STAGEFLOW_ACTOR": "ana@example.com",
        "STAGEFLOW_ACTOR_KIND": "human",
        "STAGEFLOW_STATUS": "success",
        "STAGEFLOW_PREVIOUS": context["previous"],
        "STAGEFLOW_REASON": "p95 doubled; password [REDACTED] leaked in a log",
        "HOME": "/home/ana",
        "LANG": "C.UTF-8",
        "STAGEFLOW_WORKING_TZ": "Europe/Berlin",
    }
    assert {k: seen.get(k) for k in expected} == expected
    assert "STAGEFLOW_PROD_POSTGRES_PASSWORD" not in seen and "AWS_SECRET_ACCESS_KEY" not in seen
    dumped = (root / "seen.env").read_text()
    assert SECRET not in dumped and EXPORTED not in dumped
    # the hook read the secrets file itself: its captured output is scrubbed
    assert "POSTGRES_PASSWORD=[REDACTED]" in result.output and SECRET not in result.output


def test_per_env_commands_replace_the_shared_list(root: Path) -> None:
    proj = make_project(
        root,
        '[hooks]\npost-deploy = [["echo", "shared"]]\n'
        '[hooks.prod]\npost-deploy = [["echo", "prod-only"]]\n',
    )
    assert [h.argv for h in hooks.plan(proj, "staging", "post-deploy")] == [("echo", "shared")]
    assert [h.argv for h in hooks.plan(proj, "prod", "post-deploy")] == [("echo", "prod-only")]
    (result,) = hooks.run(proj, "prod", "post-deploy", {}, process_env={})
    assert result.output == "prod-only"


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[hooks]\npre-deploi = [["true"]]\n', "unknown key 'pre-deploi'"),
        ('[hooks]\npre-deploy = ["true"]\n', "pre-deploy must be a list of commands"),
        ("[hooks]\ntimeout_s = 0\n", "timeout_s must be a positive number"),
        ('[hooks.prod]\nafter = [["true"]]\n', "unknown key 'after'"),
    ],
)
def test_malformed_hooks_table_is_a_config_error(root: Path, toml: str, needle: str) -> None:
    proj = make_project(root, toml)
    with pytest.raises(ConfigError, match=needle) as info:
        hooks.run(proj, "prod", "pre-deploy", {}, process_env={})
    assert info.value.exit_code == ExitCode.USAGE
    # after the fact it is a failed result, so the outcome being recorded is not masked
    (result,) = hooks.run(proj, "prod", "on-failure", {}, process_env={})
    assert not result.ok and needle in result.output


def test_samples_ship_switched_off() -> None:
    samples = support.REPO / "deploy" / "hooks" / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["post-deploy", "pre-deploy"]
    for path in samples.iterdir():
        assert not os.access(path, os.X_OK), f"{path.name} must ship disabled"
    for point in hooks.POINTS:
        assert not (support.REPO / "deploy" / "hooks" / point).exists()


def _enable_sample(root: Path, point: str) -> None:
    target = root / "deploy" / "hooks" / point
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(support.REPO / "deploy" / "hooks" / "samples" / point, target)
    target.chmod(0o755)


@pytest.mark.parametrize("tz", ["UTC", "Pacific/Kiritimati", "America/Los_Angeles"])
def test_sample_working_hours_hook_agrees_with_the_clock(root: Path, tz: str) -> None:
    proj = make_project(root)
    _enable_sample(root, "pre-deploy")
    operator = {"PATH": os.environ["PATH"], "STAGEFLOW_WORKING_TZ": tz}
    assert hooks.run(proj, "staging", "pre-deploy", {}, process_env=operator)[0].ok  # not prod
    before = datetime.now(ZoneInfo(tz))
    try:
        results, refused = hooks.run(proj, "prod", "pre-deploy", {}, process_env=operator), None
    except hooks.HookFailed as err:
        results, refused = err.results, err
    after = datetime.now(ZoneInfo(tz))
    if (before.isoweekday(), before.hour) != (after.isoweekday(), after.hour):
        pytest.skip("the hour turned while the hook ran; its verdict cannot be compared")
    working = before.isoweekday() <= 5 and 9 <= before.hour < 17
    if working:
        assert refused is None and "prod deploy allowed" in results[0].output
    else:
        assert refused is not None and "outside working hours" in refused.message


def test_sample_post_deploy_appends_a_line(root: Path) -> None:
    proj = make_project(root)
    _enable_sample(root, "post-deploy")
    for release in ("r1", "r2"):
        (result,) = hooks.run(
            proj, "dev", "post-deploy", {"release": release, "status": "success"}, process_env={}
        )
        assert result.ok, result.output
    lines = (root / ".stageflow" / "deploys.log").read_text().splitlines()
    assert len(lines) == 2
    assert "env=dev release=r1" in lines[0] and "status=success" in lines[0]
    assert "release=r2" in lines[1]
