"""The service's settings as its compose container sees them, and the env file that carries them."""

from __future__ import annotations

from pathlib import Path

import pytest
from dotenv import dotenv_values

from deploy.config import load_project
from deploy.errors import ConfigError
from deploy.settings import container_settings, env_file_text, service_settings
from tests import support


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(tmp_path)
    secrets = tmp_path / "env" / "staging.secrets.env"
    secrets.write_text("POSTGRES_PASSWORD=pg-s3cret$HOME\nREDIS_PASSWORD=rd-s3cret\n")
    secrets.chmod(0o600)
    return tmp_path


def test_the_container_reaches_the_servers_by_service_name_with_the_same_credentials(root):
    proj = load_project(root)
    env = proj.env("staging")
    native = service_settings(env, proj.service, release="r1")
    inner = container_settings(env, proj.service, release="r1")
    assert native["DATABASE_URL"].startswith("postgresql://")
    assert "@127.0.0.1:" in native["DATABASE_URL"]
    assert inner["DATABASE_URL"] == native["DATABASE_URL"].replace(
        f"127.0.0.1:{env.postgres_port}", "postgres:5432"
    )
    assert inner["REDIS_URL"].split("@")[-1].startswith("redis:6379/")
    assert (inner["PGHOST"], inner["PGPORT"]) == ("postgres", "5432")
    assert inner["PGAPPNAME"] == native["PGAPPNAME"] and inner["PGPASSWORD"] == "pg-s3cret$HOME"
    assert set(inner) == set(native)


def test_the_env_file_is_read_back_literally(root, tmp_path: Path):
    proj = load_project(root)
    settings = container_settings(proj.env("staging"), proj.service, release="r1")
    path = tmp_path / "service.env"
    path.write_text(env_file_text(settings, source="staging"))
    # single quotes: no interpolation of $HOME, no unescaping
    assert dotenv_values(path, interpolate=True) == settings


def test_a_value_the_file_cannot_carry_is_refused_naming_the_key_only():
    with pytest.raises(ConfigError) as err:
        env_file_text({"SECRET_KEY": "it's-secret"}, source="staging's settings")
    assert "SECRET_KEY" in str(err.value) and "it's-secret" not in str(err.value)
