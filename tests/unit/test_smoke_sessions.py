"""The session probe's verdict and the clusters it asks, without a server: a session of the
release on another environment's cluster fails, one never seen on its own is only said."""

from __future__ import annotations

from pathlib import Path

from deploy.config import load_project
from deploy.probes import sessions
from tests import support


def _cluster(env: str, seen: int) -> sessions.Cluster:
    return sessions.Cluster(env, lambda _name: seen, seen=seen, answered=True)


def _watch(own_seen: int | None, others: dict[str, int]) -> sessions.Watch:
    own = None if own_seen is None else _cluster("staging", own_seen)
    found = [_cluster(name, seen) for name, seen in others.items()]
    return sessions.Watch("staging", "20260101T000000Z-abc", own, found, ["dev"])


def test_a_session_on_another_environments_cluster_fails_naming_both() -> None:
    ok, detail = _watch(2, {"prod": 1}).verdict()
    assert not ok
    assert detail.startswith("a session of staging's release 20260101T000000Z-abc is on prod's")


def test_the_advice_names_where_the_service_gets_its_settings(tmp_path: Path) -> None:
    (tmp_path / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(tmp_path)
    proj = load_project(tmp_path)
    assert sessions.settings_at(proj, "staging") == "env/staging.env or its secrets"
    _, detail = _watch(0, {"prod": 1}).verdict()
    assert "fix the one that points there, in env/staging.env or its secrets, before" in detail
    text = (tmp_path / "stageflow.toml").read_text()
    assert '[environments.staging]\nhosts = ["local"]\nruntime = "native"' in text
    (tmp_path / "stageflow.toml").write_text(
        text.replace(
            '[environments.staging]\nhosts = ["local"]\nruntime = "native"',
            '[environments.staging]\nhosts = ["local"]\nruntime = "compose"',
        )
    )
    at = sessions.settings_at(load_project(tmp_path), "staging")
    assert at.startswith("env/staging.env, its secrets or an environment: of ")
    assert at.endswith("compose/compose.staging.yml")
    watch = _watch(0, {"prod": 1})
    watch.settings_at = at
    assert f"in {at}, before anything of staging serves again" in watch.verdict()[1]


def test_no_session_on_its_own_cluster_is_said_not_failed() -> None:
    ok, detail = _watch(0, {"prod": 0}).verdict()
    assert ok
    assert detail.startswith(
        "no session of 20260101T000000Z-abc observed on staging's database: the service may "
        "not use it or closes connections at once"
    )
    assert "none on prod's" in detail and "dev's not reachable" in detail


def test_neighbours_are_the_other_native_environments_on_this_machine(tmp_path: Path) -> None:
    (tmp_path / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(tmp_path)
    proj = load_project(tmp_path)
    assert [e.name for e in sessions.neighbours(proj, "staging")] == ["dev", "prod"]


def test_a_cluster_asked_through_a_command_is_asked_once_the_probes_are_over() -> None:
    """A compose project on an SSH host: its own cluster is counted on the host (a command per
    ask), not every few milliseconds while the probes run; the others are, and the verdict is
    the local watch's."""
    asked: list[str] = []

    def on_host(name: str) -> int:
        asked.append(name)
        return 2

    own = sessions.Cluster("staging", on_host, live=False)
    prod = sessions.Cluster("prod", lambda _name: 0)
    w = sessions.Watch("staging", "20260101T000000Z-abc", own, [prod], [])
    w.sample()
    assert asked == [] and prod.answered
    assert w.stop() == (
        True,
        "2 session(s) of 20260101T000000Z-abc on staging's database; none on prod's",
    )
    assert asked == ["stageflow:staging:20260101T000000Z-abc"]


def test_an_own_cluster_that_never_answers_is_not_checked_and_another_still_fails() -> None:
    own = sessions.Cluster("staging", lambda _name: None, live=False)
    w = sessions.Watch("staging", "r1", own, [sessions.Cluster("prod", lambda _name: 0)], [])
    ok, detail = w.stop()
    assert (
        ok
        and detail == "staging's database did not answer: its sessions not checked; none on prod's"
    )
    own = sessions.Cluster("staging", lambda _name: None, live=False)
    found = sessions.Watch("staging", "r1", own, [sessions.Cluster("prod", lambda _name: 1)], [])
    ok, detail = found.stop()
    assert not ok and detail.startswith("a session of staging's release r1 is on prod's database")
