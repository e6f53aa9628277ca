"""Isolation that cannot be talked around: URLs as libpq reads them, homes as the kernel resolves them."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.config import HostSpec, Project, libpq_variables, load_project
from deploy.errors import ConfigError
from deploy.policy import guards
from tests import support


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(tmp_path)
    return tmp_path


def _set(root: Path, name: str, key: str, value: str) -> None:
    path = root / "env" / f"{name}.env"
    text = re.sub(rf"(?m)^{key}=.*$", lambda _m: f"{key}={value}", path.read_text())
    path.write_text(text)


def _get(root: Path, name: str, key: str) -> str:
    for line in (root / "env" / f"{name}.env").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1]
    raise KeyError(key)


def _refused(root: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_project(root)
    return info.value.line()


# -- DATABASE_URL: the query cannot redirect the connection --------------------------------------


def _attack(root: Path, query: str) -> None:
    _set(root, "staging", "DATABASE_URL", _get(root, "staging", "DATABASE_URL") + "?" + query)


def test_the_reported_query_attack_is_refused(root: Path) -> None:
    prod_port = _get(root, "prod", "POSTGRES_PORT")
    _attack(
        root,
        f"host={root}/.stageflow/prod/run/pg&port={prod_port}&user=postgres&dbname=stageflow_prod",
    )
    line = _refused(root)
    assert "staging.env:6" in line and "DATABASE_URL's query sets" in line, line
    for key in ("dbname", "host", "port", "user"):
        assert key in line, line


@pytest.mark.parametrize(
    "query",
    [
        "host=/tmp",
        "hostaddr=10.0.0.9",
        "port=5432",
        "dbname=stageflow_prod",
        "user=postgres",
        "service=prod",
        "passfile=/root/.pgpass",
        "options=-csearch_path%3Dprod",
        "application_name=stageflow-prod",
        "%68ost=/tmp",  # a percent-encoded key is still host
        "sslmode=disable&host=/tmp",  # a safe key does not carry an unsafe one through
        "ssl=true",  # an alias libpq maps to sslmode: refused, not guessed at
    ],
)
def test_every_redirecting_query_key_is_refused(root: Path, query: str) -> None:
    _attack(root, query)
    line = _refused(root)
    assert "staging.env:6" in line and "DATABASE_URL" in line, line


def test_safe_query_keys_pass_and_the_target_is_what_libpq_reads(root: Path) -> None:
    _attack(root, "sslmode=disable&connect_timeout=5")
    env = load_project(root).env("staging")
    assert env.database.name == "stageflow_staging" and env.database.user == "app_staging"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app@127.0.0.1:{port},127.0.0.1:{port}/db",  # several hosts
        "postgresql://app@127.0.0.1:{port}/db#frag",
        "postgresql://app@127.0.0.1:{port}/",  # no database
        "postgresql://127.0.0.1:{port}/db",  # no user
    ],
)
def test_urls_libpq_reads_otherwise_are_refused(root: Path, url: str) -> None:
    _set(root, "staging", "DATABASE_URL", url.format(port=_get(root, "staging", "POSTGRES_PORT")))
    assert "DATABASE_URL" in _refused(root)


def test_a_socket_directory_host_is_the_same_machine(root: Path) -> None:
    dev_port = _get(root, "dev", "POSTGRES_PORT")
    _set(root, "staging", "POSTGRES_PORT", dev_port)
    _set(
        root, "staging", "DATABASE_URL", f"postgresql://app_staging@%2Ftmp:{dev_port}/stageflow_dev"
    )
    problems = guards.isolation_problems(load_project(root))
    assert any("share the database stageflow_dev" in p for p in problems), problems
    assert any(f"share port {dev_port}" in p for p in problems), problems


@pytest.mark.parametrize(
    "host", ["127.1", "127.0.0.2", "[::1]", "[::ffff:127.0.0.1]", "LOCALHOST", "0.0.0.0"]
)
def test_every_loopback_spelling_is_this_machine(root: Path, host: str) -> None:
    dev_port = _get(root, "dev", "POSTGRES_PORT")
    _set(root, "staging", "POSTGRES_PORT", dev_port)
    _set(
        root, "staging", "DATABASE_URL", f"postgresql://app_staging@{host}:{dev_port}/stageflow_dev"
    )
    problems = guards.isolation_problems(load_project(root))
    assert any("dev and staging share the database stageflow_dev" in p for p in problems), problems


# -- REDIS_URL -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tail", ["?db=1", "?unix_socket_path=/tmp/prod.sock", "#x", "?host=x"])
def test_redis_url_query_is_refused(root: Path, tail: str) -> None:
    _set(root, "staging", "REDIS_URL", _get(root, "staging", "REDIS_URL") + tail)
    line = _refused(root)
    assert "staging.env:7" in line and "REDIS_URL holds a query" in line, line


# -- DATA_DIR: resolved, never / nor the project ---------------------------------------------------


def test_a_symlink_to_another_homes_is_shared(root: Path) -> None:
    prod_home = root / ".stageflow" / "prod"
    prod_home.mkdir(parents=True)
    (root / "innocent").symlink_to(prod_home)
    _set(root, "staging", "DATA_DIR", "innocent")
    proj = load_project(root)
    assert proj.env("staging").data_dir == prod_home
    problems = guards.isolation_problems(proj)
    assert problems == [f"prod and staging share the data directory {prod_home}"]


def test_a_symlinked_parent_resolves_too(root: Path) -> None:
    (root / ".stageflow" / "prod").mkdir(parents=True)
    (root / "alias").symlink_to(root / ".stageflow")
    _set(root, "staging", "DATA_DIR", "alias/prod/inner")
    problems = guards.isolation_problems(load_project(root))
    assert any("prod and staging share the data directory" in p for p in problems), problems


@pytest.mark.parametrize("value", ["/", "/.", "..", ".", "/tmp/../"])
def test_data_dir_holding_the_project_is_refused(root: Path, value: str) -> None:
    _set(root, "dev", "DATA_DIR", value)
    line = _refused(root)
    assert "dev.env:8: DATA_DIR" in line and "holds the project" in line, line


def test_a_symlink_to_the_root_directory_is_refused(root: Path) -> None:
    (root / "everything").symlink_to("/")
    _set(root, "dev", "DATA_DIR", "everything")
    assert "holds the project" in _refused(root)


def test_the_guard_resolves_homes_given_unresolved(root: Path) -> None:
    # a Project built by code, not loaded: the guard resolves the homes itself
    proj = load_project(root)
    (root / "link").symlink_to(proj.env("dev").data_dir.parent)
    envs = dict(proj.envs)
    envs["staging"] = dataclasses.replace(envs["staging"], data_dir=root / "link" / "dev")
    problems = guards.isolation_problems(dataclasses.replace(proj, envs=envs))
    assert any("dev and staging share the data directory" in p for p in problems), problems


def test_a_root_home_on_a_host_table_is_refused(root: Path) -> None:
    text = (root / "stageflow.toml").read_text()
    text = text.replace(
        '[environments.dev]\nhosts = ["local"]\n',
        '[environments.dev]\nhosts = [{address = "local", data_dir = "/"}]\n',
    )
    (root / "stageflow.toml").write_text(text)
    assert "is the root directory" in _refused(root)


def test_a_local_host_data_dir_is_resolved(root: Path) -> None:
    target = root / "real"
    target.mkdir()
    (root / "via").symlink_to(target)
    text = (
        (root / "stageflow.toml")
        .read_text()
        .replace(
            '[environments.dev]\nhosts = ["local"]\n',
            f'[environments.dev]\nhosts = [{{address = "local", data_dir = "{root}/via"}}]\n',
        )
    )
    (root / "stageflow.toml").write_text(text)
    spec = load_project(root).policies["dev"].hosts[0]
    assert isinstance(spec, HostSpec) and spec.data_dir == str(target)


# -- the environment marker: checked by every guarded task ------------------------------------------


def _marker_check(proj: Project, target: str) -> guards.Check:
    checks = guards.run_checks(guards.environment_checks(proj, target, {}))
    return {c.name: c for c in checks}["home"]


def test_a_home_marked_for_another_environment_is_refused(root: Path) -> None:
    proj = load_project(root)
    home = proj.env("staging").data_dir
    home.mkdir(parents=True)
    (home / ".stageflow-env").write_text("prod\n")
    check = _marker_check(proj, "staging")
    assert not check.ok and "marked as 'prod'" in check.detail and "staging.env" in check.detail
    with pytest.raises(Exception, match="guard home refused"):
        guards.require([check])


def test_an_unmarked_or_own_home_passes(root: Path) -> None:
    proj = load_project(root)
    assert _marker_check(proj, "staging").ok
    home = proj.env("staging").data_dir
    home.mkdir(parents=True)
    (home / ".stageflow-env").write_text("staging\n")
    assert _marker_check(proj, "staging").ok


# -- the operator's libpq variables -----------------------------------------------------------------


def test_libpq_variables_are_named_for_removal() -> None:
    env = {"PGHOST": "/tmp", "PGSERVICE": "prod", "PATH": "/bin", "PGOPTIONS": "-c x=1"}
    assert libpq_variables(env) == ["PGHOST", "PGOPTIONS", "PGSERVICE"]
    assert os.environ is not env


# -- identity from the servers: the service's sessions name environment and release -----------------


def test_service_sessions_carry_environment_and_release(root: Path) -> None:
    from deploy.settings import application_name, service_settings

    proj = load_project(root)
    settings = service_settings(proj.env("staging"), proj.service, release="20260101T000000Z-abc")
    assert settings["PGAPPNAME"] == "stageflow:staging:20260101T000000Z-abc"
    assert application_name("prod", "r" * 80).encode().__len__() <= 63


PLAIN_URLS = (
    "postgresql://app_dev@127.0.0.1:5432/stageflow_dev",
    "postgres://app.user@localhost:6543/db-1",
    "postgresql://u@db.internal.example:5432/shop",
)


@pytest.mark.parametrize("url", PLAIN_URLS)
def test_a_plain_url_reads_as_libpq_reads_it(root: Path, url: str) -> None:
    """The plain form skips loading the driver: its four parts must be the ones libpq reads."""
    from psycopg.conninfo import conninfo_to_dict

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    _set(root, "dev", "POSTGRES_PORT", str(port))
    _set(root, "dev", "DATABASE_URL", url)
    db = load_project(root).env("dev").database
    info = conninfo_to_dict(url)
    assert (db.host, str(db.port), db.name, db.user) == (
        info["host"], info["port"], info["dbname"], info["user"]
    )  # fmt: skip


def test_loading_plain_environments_does_not_load_the_driver(root: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from deploy.config import load_project; "
        f"load_project(Path({str(root)!r})); print('psycopg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
