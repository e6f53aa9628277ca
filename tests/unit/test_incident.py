"""Incident drafts from history and audit records written to a temporary environment home."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import incident
from deploy.config import load_project
from deploy.errors import ExitCode, UsageError
from deploy.hosts import Host
from deploy.secrets import Secret
from deploy.state import HistoryEntry, Layout, append_jsonl, record_history
from tests import support

OLD = "20261118T090000Z-0000aaaa"
GOOD = "20261120T100000Z-1111bbbb"
BAD = "20261122T040723Z-2222cccc"
GOOD_SHA = "1111bbbb" + "1" * 32
BAD_SHA = "2222cccc" + "2" * 32
TRIGGER = "verify failed: error rate 12.0% vs baseline 0.0% (limit +5 points)"
LEAKED = "hunter2-s3cret-value"


def entry(**kw: object) -> HistoryEntry:
    base: dict[str, object] = {"env": "prod", "actor": "ana@example.com", "kind": "deploy"}
    return HistoryEntry(**{**base, **kw})  # type: ignore[arg-type]


def write_records(host: Host, layout: Layout) -> dict[str, str]:
    """Three deploys and a restore, written the way rollout and rollback write them."""
    old = entry(
        id="20261118090000-aaaaaa",
        time="2026-11-18T09:00:00Z",
        release=OLD,
        commit="0000aaaa" + "0" * 32,
        ref="v1.2.0",
        status="success",
        duration_s=30.0,
    )
    good = entry(
        id="20261120100000-bbbbbb",
        time="2026-11-20T10:00:00Z",
        release=GOOD,
        commit=GOOD_SHA,
        ref="v1.3.0",
        status="success",
        duration_s=31.0,
        migrations=[1, 2],
        previous=OLD,
    )
    bad = entry(
        id="20261122040723-cccccc",
        time="2026-11-22T04:07:23Z",
        release="",
        commit=BAD_SHA,
        ref="v1.4.0",
        status="running",
        previous=GOOD,
        notes="request #7 by ana@example.com; approved by bo@example.com",
    )
    for e in (old, good, bad):
        record_history(host, layout, e)
    # rollout rewrites its entry when it ends: the later line supersedes the running one
    bad.release, bad.status, bad.duration_s = BAD, "rolled-back", 42.0
    bad.migrations, bad.backup = [3], "20261122T040729Z"
    bad.notes += f" {TRIGGER}"
    record_history(host, layout, bad)
    restore = entry(
        id="20261122042000-dddddd",
        time="2026-11-22T04:20:00Z",
        release=GOOD,
        commit=GOOD_SHA,
        ref="v1.3.0",
        actor="bo@example.com",
        kind="rollback-3",
        status="success",
        duration_s=12.5,
        previous=GOOD,
        backup="20261122T040729Z",
        notes="reason: orders written by v1.4.0 are wrong; restored backup 20261122T040729Z; frozen",
    )
    record_history(host, layout, restore)
    audit = [
        {"time": "2026-11-19T08:00:00Z", "actor": "zed@example.com", "action": "unfreeze",
         "reason": "long before the incident"},
        {"time": "2026-11-22T04:05:00Z", "actor": "bo@example.com", "action": "approve",
         "request": 7, "commit": BAD_SHA},
        {"time": "2026-11-22T04:07:29Z", "actor": "ana@example.com", "action": "backup",
         "backup": "20261122T040729Z", "release": GOOD},
        {"time": "2026-11-22T04:20:01Z", "actor": "bo@example.com", "action": "freeze",
         "who": "bo@example.com", "why": f"orders wrong; token {LEAKED}"},
        {"time": "2026-11-22T04:20:09Z", "actor": "bo@example.com", "action": "restore",
         "backup": "20261122T040729Z", "duration_s": 6.2},
        {"time": "2026-11-22T04:20:12Z", "actor": "bo@example.com", "action": "rollback-3",
         "status": "success", "history_id": restore.id},
    ]  # fmt: skip
    for record in audit:
        append_jsonl(host, layout.audit, record)
    return {"old": old.id, "good": good.id, "bad": bad.id, "restore": restore.id}


@pytest.fixture
def home(tmp_path: Path) -> tuple[Host, Layout, dict[str, str]]:
    host = Host(secrets=(Secret(LEAKED),))
    layout = Layout(str(tmp_path / "home" / "prod"))
    return host, layout, write_records(host, layout)


def draft(tmp_path: Path, home: tuple[Host, Layout, dict[str, str]], since: str | None = None):
    host, layout, _ = home
    return incident.write(
        tmp_path / "proj",
        env="prod",
        environment="production",
        host=host,
        layout=layout,
        since=since,
        now="2026-11-22T05:00:00Z",
    )


def section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_draft_names_trigger_releases_times_and_people(tmp_path: Path, home) -> None:
    path = draft(tmp_path, home)
    assert path == tmp_path / "proj" / "docs" / "incidents" / "2026-11-22-prod.md"
    text = path.read_text()
    assert text.startswith("# Incident: prod (production), 2026-11-22")

    summary = section(text, "Summary")
    assert f"Trigger: {TRIGGER} (release {BAD}" in summary
    assert "Serving at the end of the record: " + GOOD in summary

    rows = [r for r in section(text, "Timeline (UTC)").splitlines() if r.startswith("| 20")]
    times = [r.split(" | ")[0].lstrip("| ") for r in rows]
    assert times == sorted(times)
    whats = [r.split(" | ")[1] for r in rows]
    assert whats == [
        f"deploy {GOOD} success",  # the last good deploy before the rollback starts the window
        "approve",
        f"deploy {BAD} rolled-back",
        "backup",
        "TRIGGER",
        "auto-rollback",
        f"rollback-3 to {GOOD} success",
        "freeze",
        "restore",
    ]
    by_what = dict(zip(whats, rows, strict=True))
    assert by_what["TRIGGER"].startswith(
        f"| 2026-11-22T04:08:05Z | TRIGGER | stageflow | {TRIGGER}"
    )
    assert "2026-11-22T04:07:23Z" in by_what[f"deploy {BAD} rolled-back"]
    assert "migrations 3" in by_what[f"deploy {BAD} rolled-back"]
    assert "request #7 by ana@example.com" in by_what[f"deploy {BAD} rolled-back"]
    assert f"{GOOD} serves again" in by_what["auto-rollback"]
    assert "2026-11-22T04:20:00Z" in by_what[f"rollback-3 to {GOOD} success"]
    assert "orders written by v1.4.0 are wrong" in by_what[f"rollback-3 to {GOOD} success"]
    assert "restored in 6.2s" in by_what["restore"]
    assert f"deploy {OLD}" not in section(text, "Timeline (UTC)")  # before the window
    assert "long before the incident" not in text

    releases = section(text, "Releases and commits")
    assert f"| {BAD} | v1.4.0 | {BAD_SHA} | deploy rolled-back |" in releases
    assert (
        f"| {GOOD} | v1.3.0 | {GOOD_SHA} | deployed, served before, rollback-3 target |" in releases
    )

    data = section(text, "Migrations and backups")
    assert f"deploy of {BAD} (rolled-back) applied migrations 3" in data
    assert f"rollback-3 of {GOOD} restored backup 20261122T040729Z" in data
    assert "restore of 20261122T040729Z at 2026-11-22T04:20:09Z by bo@example.com" in data

    people = section(text, "Who acted")
    ana = "- ana@example.com: deploy 11-20 10:00:00, deploy 11-22 04:07:23, backup 11-22 04:07:29"
    bo = (
        "- bo@example.com: approve 11-22 04:05:00, rollback-3 11-22 04:20:00, freeze 11-22 04:20:01"
    )
    assert ana in people and bo in people

    review = section(text, "Review (to be written by a person)")
    for i, title in enumerate(
        ("What happened", "Root cause", "Fix task", "Checklist update", "Process gaps"), 1
    ):
        assert f"### {i}. {title}" in review
    assert review.count("TODO") == 5

    assert LEAKED not in text and "token [REDACTED]" in text


def test_since_starts_the_window_at_that_entry(tmp_path: Path, home) -> None:
    ids = home[2]
    text = draft(tmp_path, home, since=ids["bad"]).read_text()
    timeline = section(text, "Timeline (UTC)")
    assert f"deploy {GOOD} success" not in timeline and "| approve |" not in timeline
    assert f"deploy {BAD} rolled-back" in timeline
    assert GOOD in section(text, "Releases and commits")  # still named: it served before

    text = draft(tmp_path, home, since=ids["old"]).read_text()
    assert f"deploy {OLD} success" in section(text, "Timeline (UTC)")


def test_a_second_draft_never_overwrites_the_first(tmp_path: Path, home) -> None:
    first = draft(tmp_path, home)
    first.write_text("edited by a person\n")
    second = draft(tmp_path, home)
    assert second.name == "2026-11-22-prod-2.md"
    assert first.read_text() == "edited by a person\n"


def test_unknown_since_and_no_incident_are_usage_errors(tmp_path: Path, home) -> None:
    with pytest.raises(UsageError, match="history has no entry 'nope'") as info:
        draft(tmp_path, home, since="nope")
    assert info.value.exit_code == ExitCode.USAGE
    calm = Layout(str(tmp_path / "calm"))
    record_history(
        Host(),
        calm,
        entry(id="1", time="2026-11-22T01:00:00Z", release=GOOD, commit=GOOD_SHA, ref="v1.3.0",
              status="success"),
    )  # fmt: skip
    with pytest.raises(UsageError, match="no rollback or failed entry"):
        incident.write(tmp_path, env="prod", environment="production", host=Host(), layout=calm)
    with pytest.raises(UsageError, match="no history yet"):
        incident.write(
            tmp_path,
            env="prod",
            environment="production",
            host=Host(),
            layout=Layout(str(tmp_path / "none")),
        )


def test_draft_reads_the_project_environment_home(tmp_path: Path) -> None:
    (tmp_path / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(tmp_path)
    proj = load_project(tmp_path)
    env = proj.env("staging")
    secret = env.secret("POSTGRES_PASSWORD")
    assert secret is not None
    host, layout = Host(), Layout(str(env.data_dir))
    record_history(
        host,
        layout,
        entry(id="a", time="2026-11-21T09:00:00Z", env="staging", release=GOOD, commit=GOOD_SHA,
              ref="v1.3.0", status="success"),
    )  # fmt: skip
    record_history(
        host,
        layout,
        entry(id="b", time="2026-11-21T09:30:00Z", env="staging", release=BAD, commit=BAD_SHA,
              ref="v1.4.0-rc.1", status="rolled-back", previous=GOOD,
              notes=f"smoke failed (postgres: password {secret.reveal()} refused)"),
    )  # fmt: skip
    path = incident.draft(proj, "staging")
    assert path == tmp_path / "docs" / "incidents" / "2026-11-21-staging.md"
    text = path.read_text()
    assert "Trigger: smoke failed (postgres: password [REDACTED] refused)" in text
    assert secret.reveal() not in text
