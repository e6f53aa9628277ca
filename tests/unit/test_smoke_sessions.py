"""The session probe's verdict and the clusters it asks, without a server: a session of the
release on another environment's cluster fails, one never seen on its own is only said."""

from __future__ import annotations

from pathlib import Path

from deploy.config import load_project
from deploy.probes import sessions
from tests import support


class _Closed:
    def close(self) -> None:
        pass


def _watch(own_seen: int | None, others: dict[str, int]) -> sessions.Watch:
    own = None if own_seen is None else sessions.Cluster("staging", _Closed(), own_seen)
    found = [sessions.Cluster(name, _Closed(), seen) for name, seen in others.items()]
    return sessions.Watch("staging", "20260101T000000Z-abc", own, found, ["dev"])


def test_a_session_on_another_environments_cluster_fails_naming_both() -> None:
    ok, detail = _watch(2, {"prod": 1}).verdict()
    assert not ok
    assert detail.startswith("a session of staging's release 20260101T000000Z-abc is on prod's")


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
