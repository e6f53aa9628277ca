"""The seed command and the scratch database's settings, without I/O."""

from __future__ import annotations

from dataclasses import replace

import pytest

from deploy import scratch
from deploy import seed as seeding
from deploy.config import load_project
from deploy.errors import UsageError
from deploy.secrets import Secret
from deploy.settings import service_settings
from tests import support


def _proj():
    return load_project(support.REPO, process_env={})


def test_the_reference_service_seeds_through_its_own_command():
    service = _proj().service
    assert service.seed == ("python", "-m", "app.seed", "--size", "{size}")
    assert seeding.seed_argv(service, "medium") == ["python", "-m", "app.seed", "--size", "medium"]


@pytest.mark.parametrize("size", ["", "Small", "a b", "x;y", "$(id)", "-x", "a" * 33])
def test_a_size_is_a_plain_word(size):
    with pytest.raises(UsageError, match="not a plain word"):
        seeding.check_size(size)


def test_the_closing_json_line_is_reported_and_anything_else_is_the_summary():
    assert seeding.summarize('loading\n{"deleted": 2, "inserted": 10}\n') == (
        "deleted 2, inserted 10",
        (("deleted", 2), ("inserted", 10)),
    )
    assert seeding.summarize("loaded 10 rows\n\n") == ("loaded 10 rows", ())
    assert seeding.summarize('{"nested": {"a": 1}, "n": 1}') == ("n 1", (("n", 1),))
    assert seeding.summarize("") == ("", ())


def test_the_command_sees_the_settings_its_path_first_and_little_of_the_operator():
    proj = _proj()
    env = replace(proj.env("staging"), secrets=(("POSTGRES_PASSWORD", Secret("pw-s3cret")),))
    where = seeding.Place("/srv/r1/svc", "/srv/r1/.venv/bin", "r1")
    out = seeding.command_environment(
        env, proj.service, where, size="small",
        process_env={"PATH": "/usr/bin", "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "x"},
    )  # fmt: skip
    assert out["PATH"] == "/srv/r1/.venv/bin:/usr/bin" and out["HOME"] == "/root"
    assert "AWS_SECRET_ACCESS_KEY" not in out
    assert out["STAGEFLOW_SEED_SIZE"] == "small" and out["STAGEFLOW_RELEASE"] == "r1"
    assert out["PGPASSWORD"] == "pw-s3cret" and ":pw-s3cret@" in out["DATABASE_URL"]
    # the tree's code before any copy of the service installed into stageflow's venv
    assert out["PYTHONPATH"] == "/srv/r1/svc:/srv/r1/svc/src"


def test_a_scratch_database_keeps_server_role_and_password_and_changes_only_the_name():
    proj = _proj()
    env = replace(proj.env("staging"), secrets=(("POSTGRES_PASSWORD", Secret("pw-s3cret")),))
    other = scratch.on_database(env, "stageflow_staging_reset")
    assert other.database.name == "stageflow_staging_reset"
    assert other.database_url == (env.database_url.rsplit("/", 1)[0] + "/stageflow_staging_reset")
    assert (other.database.host, other.database.port, other.database.user) == (
        env.database.host, env.database.port, env.database.user,
    )  # fmt: skip
    settings = service_settings(other, proj.service)
    assert settings["PGDATABASE"] == "stageflow_staging_reset"
    assert settings["DATABASE_URL"].endswith("/stageflow_staging_reset")
    assert ":pw-s3cret@" in settings["DATABASE_URL"]
    assert dict(other.values)["DATABASE_URL"] == other.database_url
    assert env.database.name == "stageflow_staging"  # the live one is untouched
