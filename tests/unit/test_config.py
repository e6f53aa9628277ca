"""Config validation without servers: every malformed env file or policy is a ConfigError naming the file."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from deploy.config import EnvConfig, Thresholds, load_env, load_project
from deploy.errors import ConfigError, ExitCode
from tests import support


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A project skeleton: the shipped stageflow.toml and three valid env files with secrets."""
    (tmp_path / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(tmp_path)
    return tmp_path


def env_file(root: Path, name: str = "dev") -> Path:
    return root / "env" / f"{name}.env"


def set_key(root: Path, name: str, key: str, value: str) -> int:
    """Replace KEY's value in env/<name>.env; return its (1-based) line number."""
    path = env_file(root, name)
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{key}="):
            lines[i] = f"{key}={value}"
            path.write_text("\n".join(lines) + "\n")
            return i + 1
    raise AssertionError(f"{key} not in {path}")


def append(root: Path, name: str, text: str) -> int:
    """Append a line to env/<name>.env; return its line number."""
    path = env_file(root, name)
    lines = path.read_text().splitlines()
    lines.append(text)
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def refused(root: Path, name: str = "dev") -> str:
    with pytest.raises(ConfigError) as info:
        load_env(root, name)
    assert info.value.exit_code == ExitCode.USAGE
    line = info.value.line()
    assert "\n" not in line
    return line


def test_valid_files_load(root: Path) -> None:
    proj = load_project(root)
    assert set(proj.envs) == {"dev", "staging", "prod"}
    staging = proj.env("staging")
    assert staging.environment == "staging" and staging.production_like
    assert staging.database.name.endswith("_staging") and staging.redis.db == 0
    assert staging.data_dir == root / ".stageflow" / "staging"
    assert staging.secret("POSTGRES_PASSWORD").reveal() == "pg-staging-s3cret-value"
    assert "s3cret" not in repr(staging)


# -- env files: each malformed input names file and line ----------------------------------------


def test_missing_key_names_the_file_and_key(root: Path) -> None:
    path = env_file(root)
    path.write_text(
        "".join(
            ln + "\n" for ln in path.read_text().splitlines() if not ln.startswith("REDIS_URL=")
        )
    )
    msg = refused(root)
    assert msg.startswith("dev.env: missing key REDIS_URL")


def test_unknown_key_names_file_and_line(root: Path) -> None:
    line = append(root, "dev", "COLOUR=blue")
    assert f"dev.env:{line}: unknown key COLOUR" in refused(root)


def test_malformed_line_names_file_and_line(root: Path) -> None:
    line = append(root, "dev", "this is not an assignment")
    assert f"dev.env:{line}: malformed line" in refused(root)


def test_key_without_value_names_file_and_line(root: Path) -> None:
    line = append(root, "dev", "FEATURES")
    assert f"dev.env:{line}:" in refused(root)


def test_duplicate_key_names_both_lines(root: Path) -> None:
    first = set_key(root, "dev", "LOG_LEVEL", "info")
    line = append(root, "dev", "LOG_LEVEL=debug")
    msg = refused(root)
    assert f"dev.env:{line}: LOG_LEVEL is set twice (first on line {first})" in msg


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1", "80", "65536", "12.5", ""])
def test_bad_port_names_file_and_line(root: Path, value: str) -> None:
    line = set_key(root, "dev", "APP_PORT", value)
    assert f"dev.env:{line}: APP_PORT={value!r} is not a port" in refused(root)


@pytest.mark.parametrize("key", ["POSTGRES_PORT", "REDIS_PORT"])
def test_every_port_key_is_checked(root: Path, key: str) -> None:
    line = set_key(root, "dev", key, "70000")
    assert f"dev.env:{line}: {key}='70000' is not a port" in refused(root)


def test_environment_mismatch_names_file_line_and_expected(root: Path) -> None:
    line = set_key(root, "prod", "ENVIRONMENT", "staging")
    msg = refused(root, "prod")
    assert f"prod.env:{line}: ENVIRONMENT=staging but this is the prod file" in msg
    assert "ENVIRONMENT=production" in msg


@pytest.mark.parametrize(
    "key", ["POSTGRES_PASSWORD", "SECRET_KEY", "API_KEYS", "GITHUB_TOKEN", "SMTP_PASSWORD"]
)
def test_secret_in_committed_file_is_refused(root: Path, key: str) -> None:
    line = append(root, "dev", f"{key}=hunter2-value")
    msg = refused(root)
    assert f"dev.env:{line}: {key} is a secret in a committed file" in msg
    assert "hunter2" not in msg


def test_url_with_password_in_committed_file_is_refused(root: Path) -> None:
    proj = load_project(root)
    port = proj.env("dev").postgres_port
    line = set_key(root, "dev", "DATABASE_URL", f"postgresql://app_dev:pw-leak@127.0.0.1:{port}/db")
    msg = refused(root)
    assert f"dev.env:{line}: DATABASE_URL carries a password" in msg
    assert "pw-leak" not in msg


def test_redis_url_with_password_is_refused(root: Path) -> None:
    port = load_project(root).env("dev").redis_port
    line = set_key(root, "dev", "REDIS_URL", f"redis://:pw-leak@127.0.0.1:{port}/0")
    msg = refused(root)
    assert f"dev.env:{line}: REDIS_URL carries a password" in msg and "pw-leak" not in msg


def test_database_url_port_must_match_postgres_port(root: Path) -> None:
    line = set_key(root, "dev", "DATABASE_URL", "postgresql://app_dev@127.0.0.1:5999/db")
    msg = refused(root)
    assert re.search(rf"dev\.env:{line}: DATABASE_URL port 5999 is not POSTGRES_PORT \d+", msg)


def test_redis_url_port_must_match_redis_port(root: Path) -> None:
    line = set_key(root, "dev", "REDIS_URL", "redis://127.0.0.1:5999/0")
    assert f"dev.env:{line}: REDIS_URL port 5999 is not REDIS_PORT" in refused(root)


@pytest.mark.parametrize(
    "url",
    ["mysql://u@127.0.0.1:1/x", "postgresql://127.0.0.1/x", "postgresql://u@127.0.0.1:notaport/x"],
)
def test_malformed_database_url(root: Path, url: str) -> None:
    line = set_key(root, "dev", "DATABASE_URL", url)
    assert f"dev.env:{line}: DATABASE_URL" in refused(root)


def test_bad_compose_project_name(root: Path) -> None:
    line = set_key(root, "dev", "COMPOSE_PROJECT_NAME", "Has Spaces")
    assert f"dev.env:{line}: COMPOSE_PROJECT_NAME=" in refused(root)


@pytest.mark.parametrize(
    ("key", "value"),
    [("LOG_LEVEL", "verbose"), ("DEBUG", "maybe"), ("API_RATE_LIMIT", "lots"), ("FEATURES", "")],
)
def test_the_service_keys_are_passed_as_written(root: Path, key: str, value: str) -> None:
    # what a service key means is the service's business; stageflow only carries it
    set_key(root, "dev", key, value)
    assert load_env(root, "dev").value(key) == value


def test_env_config_holds_no_field_of_one_service(root: Path) -> None:
    names = {f.name for f in dataclasses.fields(EnvConfig)}
    assert not names & {"features", "log_level", "debug", "require_api_key", "api_rate_limit"}


def test_missing_env_file(root: Path) -> None:
    env_file(root).unlink()
    assert "dev.env does not exist" in refused(root)


def test_unknown_environment_name(root: Path) -> None:
    with pytest.raises(ConfigError, match="unknown environment 'qa'"):
        load_env(root, "qa")
    with pytest.raises(ConfigError, match="unknown environment 'qa'"):
        load_project(root).env("qa")


# -- secrets files ------------------------------------------------------------------------------


def test_secrets_file_readable_by_others_is_refused(root: Path) -> None:
    secrets = root / "env" / "staging.secrets.env"
    os.chmod(secrets, 0o644)
    msg = refused(root, "staging")
    assert "staging.secrets.env" in msg and "0644" in msg and "chmod 600" in msg
    assert "s3cret" not in msg


def test_unknown_secret_key_names_file_and_line(root: Path) -> None:
    secrets = root / "env" / "staging.secrets.env"
    lines = secrets.read_text().splitlines() + ["FAVOURITE_PASSWORD=x-s3cret-value"]
    secrets.write_text("\n".join(lines) + "\n")
    msg = refused(root, "staging")
    assert f"staging.secrets.env:{len(lines)}: unknown secret key FAVOURITE_PASSWORD" in msg
    assert "s3cret" not in msg


def test_secrets_from_process_environment_override_and_stay_redacted(root: Path) -> None:
    env = load_env(root, "staging", process_env={"STAGEFLOW_STAGING_REDIS_PASSWORD": "from-shell"})
    assert env.secret("REDIS_PASSWORD").reveal() == "from-shell"
    assert "from-shell" not in repr(env) and "from-shell" not in str(env.secrets)


# -- stageflow.toml -----------------------------------------------------------------------------


def policy_refused(root: Path, text: str) -> str:
    (root / "stageflow.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_project(root)
    assert info.value.exit_code == ExitCode.USAGE
    msg = info.value.line()
    assert msg.startswith("stageflow.toml")
    return msg


def test_toml_syntax_error_names_line(root: Path) -> None:
    msg = policy_refused(root, '[environments.dev]\nhosts = ["local"]\nkeep_releases = = 3\n')
    assert "line 3" in msg


def test_unknown_policy_key(root: Path) -> None:
    msg = policy_refused(root, "[environments.dev]\nkeep_releasez = 3\n")
    assert "[environments.dev] unknown key keep_releasez" in msg


def test_unknown_environment_table(root: Path) -> None:
    assert "[environments.qa] is not an environment" in policy_refused(root, "[environments.qa]\n")


def test_bad_runtime(root: Path) -> None:
    msg = policy_refused(root, '[environments.staging]\nruntime = "kubernetes"\n')
    assert "[environments.staging] runtime must be native or compose" in msg


def test_compose_runs_on_one_host(root: Path) -> None:
    text = '[environments.prod]\nruntime = "compose"\nhosts = ["a@web-1", "a@web-2"]\n'
    msg = policy_refused(root, text)
    assert "[environments.prod] the compose runtime runs on one host, not 2" in msg


@pytest.mark.parametrize("keep", [1, 0, -3])
def test_keep_releases_below_two(root: Path, keep: int) -> None:
    msg = policy_refused(root, f"[environments.prod]\nkeep_releases = {keep}\n")
    assert "[environments.prod] keep_releases must be at least 2" in msg


@pytest.mark.parametrize(
    "text",
    [
        '[environments.dev]\nkeep_releases = "3"\n',
        "[environments.dev]\nauto_rollback = 1\n",
        "[environments.dev]\nworkers = true\n",
    ],
)
def test_wrong_types(root: Path, text: str) -> None:
    assert "has the wrong type" in policy_refused(root, text)


def test_bad_backup_policy(root: Path) -> None:
    msg = policy_refused(root, '[environments.prod]\nbackup = "sometimes"\n')
    assert "backup must be never, pending-migrations or always" in msg


def test_bad_thresholds(root: Path) -> None:
    msg = policy_refused(root, "[environments.prod.thresholds]\nhealth_failures = 0\n")
    assert "health_failures must be a positive number" in msg
    msg = policy_refused(root, "[environments.prod.thresholds]\ncpu = 3\n")
    assert "unknown key cpu" in msg


def test_relax_from_unknown_environment(root: Path) -> None:
    msg = policy_refused(root, '[environments.staging]\nrelax_thresholds_from = "qa"\n')
    assert "relax_thresholds_from='qa'" in msg


def test_missing_environments_table(root: Path) -> None:
    assert "missing [environments] table" in policy_refused(
        root, "[promotion]\nmin_approvals = 1\n"
    )


def test_missing_policy_file(root: Path) -> None:
    (root / "stageflow.toml").unlink()
    with pytest.raises(ConfigError, match="stageflow.toml does not exist"):
        load_project(root)


def test_staging_thresholds_are_prod_relaxed_twice(root: Path) -> None:
    proj = load_project(root)
    prod, staging = proj.policies["prod"].thresholds, proj.policies["staging"].thresholds
    assert prod == Thresholds(
        health_failures=3, error_rate_points=5.0, p95_ratio=2.0, memory_mb=512
    )
    assert staging == Thresholds(
        health_failures=6, error_rate_points=10.0, p95_ratio=4.0, memory_mb=1024
    )


def test_staging_thresholds_follow_a_changed_prod(root: Path) -> None:
    text = support.minimal_policy().replace("health_failures = 3", "health_failures = 5")
    (root / "stageflow.toml").write_text(text)
    proj = load_project(root)
    assert proj.policies["prod"].thresholds.health_failures == 5
    assert proj.policies["staging"].thresholds.health_failures == 10
