"""What of the working tree's [service] a staging or prod deploy would run that its commit does not
say (deploy/policy/contract.py), and how a commit's stageflow.toml is read."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.errors import ConfigError
from deploy.policy.contract import committed_toml, differences
from deploy.service import Migrations, Service

BASE = Service(name="shop", wsgi="shop:app")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"wsgi": "shop.debug:app"}, ["wsgi"]),
        ({"build": (("sh", "-c", "true"),)}, ["build"]),
        ({"processes": (("worker", ("rq", "worker")),)}, ["processes"]),
        ({"migrations": Migrations("command", up=("flask", "db", "upgrade"))}, ["migrations"]),
        ({"secret_keys": ("SMTP_PASSWORD",), "env_from": (("DB_PASS", "PGPASSWORD"),)}, ["env"]),
        ({"user": "root2"}, ["[project] service_user"]),
        ({"seed": ("python", "-m", "shop.seed")}, []),  # the data tasks', never a deploy's
    ],
)
def test_each_key_a_deploy_runs_is_named(change: dict, named: list[str]) -> None:
    assert differences(replace(BASE, **change), BASE) == named


def test_a_commits_stageflow_toml_is_read_beside_the_project(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()  # fmt: skip

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "README").write_text("no config yet\n")
    git("add", "-A")
    git("commit", "-qm", "before stageflow")
    before = git("rev-parse", "HEAD")
    (tmp_path / "stageflow.toml").write_text('[service]\nname = "shop"\n')
    git("add", "-A")
    git("commit", "-qm", "stageflow")
    assert committed_toml(tmp_path, git("rev-parse", "HEAD")) == {"service": {"name": "shop"}}
    assert committed_toml(tmp_path, before) is None
    (tmp_path / "stageflow.toml").write_text("[service\n")
    git("commit", "-qam", "broken")
    with pytest.raises(ConfigError, match="does not parse"):
        committed_toml(tmp_path, git("rev-parse", "HEAD"))
