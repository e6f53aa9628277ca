"""stageflow installs beside a service that pins an older gunicorn (20.1 and later serve a
release), and a service that lists no gunicorn never gets one older than the floor."""

from __future__ import annotations

import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from deploy import releases
from tests.support import REPO


def test_the_engine_admits_a_teams_pinned_gunicorn() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (gunicorn,) = [Requirement(d) for d in deps if Requirement(d).name == "gunicorn"]
    for pinned in ("20.1.0", "21.2.0", "23.0.0"):
        assert gunicorn.specifier.contains(pinned), pinned


@pytest.mark.parametrize(
    ("installed", "given"),
    [
        ("23.0.0", "gunicorn==23.0.0"),
        ("22.0.0", "gunicorn==22.0.0"),
        ("20.1.0", releases.DEFAULT_GUNICORN),
        ("21.2.0", releases.DEFAULT_GUNICORN),
        (None, releases.DEFAULT_GUNICORN),
    ],
)
def test_a_service_without_gunicorn_gets_one_at_the_floor_at_least(
    monkeypatch: pytest.MonkeyPatch, installed: str | None, given: str
) -> None:
    def version(name: str) -> str:
        if installed is None:
            raise metadata.PackageNotFoundError(name)
        return installed

    monkeypatch.setattr(releases.metadata, "version", version)
    assert releases.engine_gunicorn() == given
