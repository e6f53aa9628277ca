"""Guards without servers: isolation, shell environment, posture, and fail-closed check running."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from deploy.config import DbTarget, EnvConfig, EnvPolicy, Project, RedisTarget, load_project
from deploy.errors import ExitCode, GuardRefused
from deploy.policy import guards
from tests import support


@pytest.fixture
def proj(tmp_path: Path) -> Project:
    (tmp_path / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(tmp_path)
    return load_project(tmp_path)


def with_env(proj: Project, name: str, **changes: object) -> Project:
    envs = dict(proj.envs)
    envs[name] = dataclasses.replace(envs[name], **changes)
    return dataclasses.replace(proj, envs=envs)


def with_hosts(proj: Project, **hosts: tuple[str, ...]) -> Project:
    policies = dict(proj.policies)
    for name, h in hosts.items():
        policies[name] = dataclasses.replace(policies[name], hosts=h)
    return dataclasses.replace(proj, policies=policies)


def test_distinct_environments_are_isolated(proj: Project) -> None:
    assert guards.isolation_problems(proj) == []
    check = guards.isolation(proj, "staging")
    assert check.ok and check.name == "isolation"


def assert_names_both(proj: Project, needle: str, a: str = "dev", b: str = "staging") -> str:
    problems = guards.isolation_problems(proj)
    assert problems, "a shared resource was not found"
    hit = [p for p in problems if needle in p]
    assert hit, problems
    assert f"{a} and {b}" in hit[0] or f"{b} and {a}" in hit[0]
    for target in ("dev", "staging", "prod"):
        check = guards.isolation(proj, target)
        assert not check.ok and needle in check.detail  # refused whichever env is the target
    return hit[0]


def test_shared_compose_project(proj: Project) -> None:
    shared = with_env(proj, "staging", compose_project=proj.env("dev").compose_project)
    assert_names_both(shared, "COMPOSE_PROJECT_NAME")


@pytest.mark.parametrize(
    ("key_a", "key_b"),
    [("app_port", "app_port"), ("postgres_port", "redis_port"), ("redis_port", "app_port")],
)
def test_shared_port_on_the_same_host(proj: Project, key_a: str, key_b: str) -> None:
    port = getattr(proj.env("dev"), key_a)
    shared = with_env(proj, "staging", **{key_b: port})
    msg = assert_names_both(shared, f"share port {port}")
    assert key_a.upper() in msg and key_b.upper() in msg


def test_same_port_on_different_hosts_is_allowed(proj: Project) -> None:
    shared = with_env(proj, "staging", app_port=proj.env("dev").app_port)
    apart = with_hosts(shared, dev=("dev-box",), staging=("staging-box",))
    assert guards.isolation_problems(apart) == []


def test_shared_database(proj: Project) -> None:
    db = DbTarget("db.internal", 5432, "app", "someone")
    shared = with_env(
        with_env(proj, "dev", database=db),
        "prod",
        database=dataclasses.replace(db, host="db.internal", user="other"),
    )
    # on different hosts, so only the database (host, port, name) is shared
    shared = with_hosts(shared, dev=("a",), prod=("b",))
    problems = guards.isolation_problems(shared)
    assert problems == ["dev and prod share the database app on db.internal:5432"]


def test_localhost_and_loopback_are_the_same_database_host(proj: Project) -> None:
    dev = proj.env("dev").database
    shared = with_env(proj, "staging", database=dataclasses.replace(dev, host="localhost"))
    assert_names_both(shared, "share the database")


def test_shared_redis_db(proj: Project) -> None:
    r = RedisTarget("cache.internal", 6379, 3)
    shared = with_hosts(
        with_env(with_env(proj, "staging", redis=r), "prod", redis=r), staging=("a",), prod=("b",)
    )
    assert guards.isolation_problems(shared) == [
        "prod and staging share Redis cache.internal:6379/3"
    ]


def test_same_redis_server_other_db_is_allowed(proj: Project) -> None:
    shared = with_hosts(
        with_env(
            with_env(proj, "staging", redis=RedisTarget("cache", 6379, 1)),
            "prod",
            redis=RedisTarget("cache", 6379, 2),
        ),
        staging=("a",),
        prod=("b",),
    )
    assert guards.isolation_problems(shared) == []


def test_shared_data_dir(proj: Project) -> None:
    shared = with_env(proj, "staging", data_dir=proj.env("dev").data_dir)
    assert_names_both(shared, f"share the data directory {proj.env('dev').data_dir}")


def test_nested_data_dir(proj: Project) -> None:
    nested = proj.env("dev").data_dir / "inner"
    shared = with_env(proj, "staging", data_dir=nested)
    assert_names_both(shared, f"share the data directory {proj.env('dev').data_dir}")


def test_sibling_with_common_prefix_is_not_nested(proj: Project) -> None:
    dev_dir = proj.env("dev").data_dir
    sibling = dev_dir.with_name(dev_dir.name + "2")
    assert guards.isolation_problems(with_env(proj, "staging", data_dir=sibling)) == []


def test_every_shared_resource_is_listed(proj: Project) -> None:
    dev = proj.env("dev")
    clone = with_env(
        proj,
        "prod",
        compose_project=dev.compose_project,
        app_port=dev.app_port,
        postgres_port=dev.postgres_port,
        redis_port=dev.redis_port,
        database=dev.database,
        redis=dev.redis,
        data_dir=dev.data_dir,
    )
    text = "; ".join(guards.isolation_problems(clone))
    for needle in (
        "COMPOSE_PROJECT_NAME",
        f"port {dev.app_port}",
        f"port {dev.postgres_port}",
        f"port {dev.redis_port}",
        "share the database",
        "share Redis",
        "share the data directory",
    ):
        assert needle in text and "dev and prod" in text


# -- shell environment ---------------------------------------------------------------------------


def test_shell_environment_mismatch_refuses(proj: Project) -> None:
    check = guards.shell_environment(proj.env("staging"), {"ENVIRONMENT": "production"})
    assert not check.ok
    assert "ENVIRONMENT=production" in check.detail and "staging" in check.detail


@pytest.mark.parametrize("shell", [{}, {"ENVIRONMENT": ""}, {"ENVIRONMENT": "staging"}])
def test_shell_environment_unset_or_matching_passes(proj: Project, shell: dict[str, str]) -> None:
    assert guards.shell_environment(proj.env("staging"), shell).ok


def test_shell_environment_uses_the_long_name(proj: Project) -> None:
    # the namespace is "prod" but ENVIRONMENT speaks "production"
    assert not guards.shell_environment(proj.env("prod"), {"ENVIRONMENT": "prod"}).ok
    assert guards.shell_environment(proj.env("prod"), {"ENVIRONMENT": "production"}).ok


# -- posture --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["staging", "prod"])
def test_production_posture_holds_for_written_files(proj: Project, name: str) -> None:
    assert guards.production_posture(proj.env(name)).ok


def with_values(env: EnvConfig, **values: str) -> EnvConfig:
    return dataclasses.replace(env, values=tuple({**dict(env.values), **values}.items()))


@pytest.mark.parametrize("name", ["staging", "prod"])
@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"DEBUG": "true"}, "DEBUG must be false, not 'true'"),
        ({"REQUIRE_API_KEY": "false"}, "REQUIRE_API_KEY must be true"),
        ({"API_RATE_LIMIT": "0"}, "API_RATE_LIMIT must be a whole number >= 1"),
        ({"API_RATE_LIMIT": "lots"}, "API_RATE_LIMIT must be a whole number >= 1, not 'lots'"),
    ],
)
def test_production_posture_refuses(proj: Project, name: str, values: dict, needle: str) -> None:
    check = guards.production_posture(with_values(proj.env(name), **values))
    assert not check.ok and needle in check.detail and check.detail.startswith(f"{name}:")


@pytest.mark.parametrize("name", ["staging", "prod"])
def test_production_posture_refuses_without_secrets(proj: Project, name: str) -> None:
    check = guards.production_posture(dataclasses.replace(proj.env(name), secrets=()))
    needle = "missing secrets POSTGRES_PASSWORD, REDIS_PASSWORD, API_KEYS, SECRET_KEY"
    assert not check.ok and needle in check.detail and check.detail.startswith(f"{name}:")


def test_an_unset_posture_key_is_refused(proj: Project) -> None:
    env = proj.env("staging")
    unset = dataclasses.replace(env, values=tuple((k, v) for k, v in env.values if k != "DEBUG"))
    check = guards.production_posture(unset)
    assert not check.ok and "DEBUG must be false (it is unset)" in check.detail


def test_prod_has_its_own_log_level_rule(proj: Project) -> None:
    assert guards.production_posture(with_values(proj.env("staging"), LOG_LEVEL="debug")).ok
    check = guards.production_posture(with_values(proj.env("prod"), LOG_LEVEL="debug"))
    assert not check.ok and "LOG_LEVEL must be one of info, warning, error" in check.detail


def test_posture_names_only_the_missing_secret(proj: Project) -> None:
    env = proj.env("prod")
    partial = tuple((k, s) for k, s in env.secrets if k != "API_KEYS")
    check = guards.production_posture(dataclasses.replace(env, secrets=partial))
    assert not check.ok and "missing secrets API_KEYS (" in check.detail
    assert "s3cret" not in check.detail


def test_dev_may_run_relaxed(proj: Project) -> None:
    dev = with_values(proj.env("dev"), DEBUG="true", REQUIRE_API_KEY="false")
    assert guards.production_posture(dataclasses.replace(dev, secrets=())).ok


# -- running checks: fail closed ------------------------------------------------------------------


def test_a_check_that_raises_is_a_refusal() -> None:
    def boom() -> guards.Check:
        raise RuntimeError("disk on fire")

    checks = guards.run_checks([("ok", lambda: guards.Check("ok", True, "fine")), ("boom", boom)])
    assert [c.ok for c in checks] == [True, False]
    assert checks[1].name == "boom" and "RuntimeError" in checks[1].detail
    with pytest.raises(GuardRefused) as info:
        guards.require(checks)
    assert info.value.exit_code == ExitCode.GUARD_REFUSED
    assert info.value.line().startswith("guard boom refused")


def test_a_check_that_returns_no_verdict_is_a_refusal() -> None:
    checks = guards.run_checks([("silent", lambda: None)])  # type: ignore[arg-type, return-value]
    assert not checks[0].ok and "no verdict" in checks[0].detail


def test_require_counts_the_other_failures() -> None:
    checks = [
        guards.Check("a", False, "first"),
        guards.Check("b", True, "fine"),
        guards.Check("c", False, "second"),
    ]
    with pytest.raises(GuardRefused, match=r"guard a refused: first \(\+1 more"):
        guards.require(checks)
    guards.require([guards.Check("a", True, "fine")])  # all passed: no error


def test_environment_checks_refuse_on_a_broken_project(proj: Project) -> None:
    # a policy that lost its environment makes isolation unable to decide: refused, not passed
    broken = dataclasses.replace(proj, policies={"dev": EnvPolicy(name="dev")})
    checks = guards.run_checks(guards.environment_checks(broken, "dev", {}))
    by_name = {c.name: c for c in checks}
    assert not by_name["isolation"].ok and "could not decide" in by_name["isolation"].detail
    assert by_name["shell-environment"].ok


def test_environment_checks_run_all_four(proj: Project) -> None:
    checks = guards.run_checks(guards.environment_checks(proj, "prod", {"ENVIRONMENT": "staging"}))
    assert [(c.name, c.ok) for c in checks] == [
        ("shell-environment", False),
        ("isolation", True),
        ("home", True),
        ("posture", True),
    ]
