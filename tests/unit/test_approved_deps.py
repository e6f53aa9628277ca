"""The project's own `deps` gate passes on the venv `make setup` builds: every package it installs
(the test extras included) is on the reviewed list, so GA (and `make demo`) are not blocked by it."""

from __future__ import annotations

from pathlib import Path

from deploy.gates import deps

APPROVED = Path(__file__).resolve().parents[2] / "deploy" / "gates" / "approved-deps.toml"


def test_every_package_of_the_projects_venv_is_approved() -> None:
    assert deps.check(deps.installed(), deps.load_approved(APPROVED)) == []
