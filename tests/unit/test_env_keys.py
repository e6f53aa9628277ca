"""The service's own keys and secrets in env files, control characters, and [posture]."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deploy.config import (
    ENV_KEYS,
    SECRET_KEYS,
    PostureRule,
    load_posture,
    load_project,
    load_secrets,
    read_env_file,
)
from deploy.errors import ConfigError, ExitCode
from deploy.policy import guards
from deploy.secrets_file import dotenv_line, fill_missing
from tests import support

SHIPPED_ENV = (
    '[service.env]\nkeys = ["FEATURES", "LOG_LEVEL", "DEBUG", "REQUIRE_API_KEY", "API_RATE_LIMIT"]\n'
    'secrets = ["API_KEYS", "SECRET_KEY"]\n'
)


def policy(env_table: str = SHIPPED_ENV, *, posture: str | None = None) -> str:
    """The shipped stageflow.toml with another [service.env] and, when given, another [posture]."""
    text = support.minimal_policy()
    assert SHIPPED_ENV in text
    text = text.replace(SHIPPED_ENV, env_table)
    if posture is not None:
        start = text.index("[posture]\n")
        text = text[:start] + posture + text[text.index("[environments.dev]") :]
    return text


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "stageflow.toml").write_text(policy())
    support.write_envs(tmp_path)
    return tmp_path


def append(path: Path, text: str) -> int:
    lines = path.read_text().splitlines() + [text]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def env_file(root: Path, name: str = "dev") -> Path:
    return root / "env" / f"{name}.env"


def secrets_file(root: Path, name: str = "staging") -> Path:
    return root / "env" / f"{name}.secrets.env"


def refused(root: Path, name: str = "dev", *, process_env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_project(root, process_env=process_env)
    assert info.value.exit_code == ExitCode.USAGE
    line = info.value.line()
    assert "\n" not in line
    return line


def test_stageflow_owns_only_its_own_keys() -> None:
    assert set(ENV_KEYS) == {
        "ENVIRONMENT",
        "COMPOSE_PROJECT_NAME",
        "APP_PORT",
        "POSTGRES_PORT",
        "REDIS_PORT",
        "DATABASE_URL",
        "REDIS_URL",
        "DATA_DIR",
    }
    assert set(SECRET_KEYS) == {"POSTGRES_PASSWORD", "REDIS_PASSWORD"}


# -- the service's keys -----------------------------------------------------------------------------


def test_a_declared_service_key_is_allowed_and_carried(root: Path) -> None:
    table = '[service.env]\nkeys = ["SMTP_HOST", "LOG_FORMAT"]\nsecrets = ["SMTP_PASS"]\n'
    (root / "stageflow.toml").write_text(policy(table, posture=""))
    for name in ("dev", "staging", "prod"):  # the reference keys are no longer declared
        path = env_file(root, name)
        kept = [ln for ln in path.read_text().splitlines() if ln.split("=")[0] in ENV_KEYS]
        path.write_text("\n".join(kept) + "\nSMTP_HOST=mail.internal\nLOG_FORMAT=json\n")
        if name != "dev":
            secrets = secrets_file(root, name)
            kept = [ln for ln in secrets.read_text().splitlines() if "PASSWORD" in ln]
            secrets.write_text("\n".join(kept) + f"\nSMTP_PASS=mail-{name}-s3cret-value\n")
    proj = load_project(root)
    prod = proj.env("prod")
    assert prod.value("SMTP_HOST") == "mail.internal" and prod.value("LOG_FORMAT") == "json"
    assert prod.secret("SMTP_PASS").reveal() == "mail-prod-s3cret-value"
    assert prod.declared_secrets == ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "SMTP_PASS")
    assert "s3cret" not in repr(prod)
    assert guards.production_posture(prod).ok  # no [posture]: the secrets are what is required


def test_an_undeclared_key_is_refused_with_where_to_declare_it(root: Path) -> None:
    line = append(env_file(root), "SMTP_HOST=mail.internal")
    msg = refused(root)
    assert f"dev.env:{line}: unknown key SMTP_HOST" in msg
    assert "[service.env] keys" in msg


def test_a_reference_key_is_refused_once_the_service_does_not_declare_it(root: Path) -> None:
    (root / "stageflow.toml").write_text(policy('[service.env]\nkeys = ["FEATURES"]\n', posture=""))
    assert "dev.env:10: unknown key LOG_LEVEL" in refused(root)


def test_a_secret_looking_key_is_refused_even_when_declared_a_key(root: Path) -> None:
    text = policy(SHIPPED_ENV.replace('"API_RATE_LIMIT"]', '"API_RATE_LIMIT", "MAIL_PASSWORD"]'))
    (root / "stageflow.toml").write_text(text)
    line = append(env_file(root), "MAIL_PASSWORD=hunter2-s3cret-value")
    msg = refused(root)
    assert f"dev.env:{line}: MAIL_PASSWORD is a secret in a committed file" in msg
    assert "declare it under [service.env] secrets" in msg and "s3cret" not in msg


def test_a_setting_about_a_token_is_a_plain_key_of_a_committed_file(root: Path) -> None:
    # a token's lifetime and a password's minimum length say TOKEN and PASSWORD but are numbers
    names = ["ACCESS_TOKEN_EXPIRE_MINUTES", "PASSWORD_MIN_LENGTH"]
    keys = '"API_RATE_LIMIT", ' + ", ".join(f'"{n}"' for n in names) + "]"
    (root / "stageflow.toml").write_text(policy(SHIPPED_ENV.replace('"API_RATE_LIMIT"]', keys)))
    append(env_file(root), "ACCESS_TOKEN_EXPIRE_MINUTES=60")
    append(env_file(root), "PASSWORD_MIN_LENGTH=12")
    values = dict(load_project(root).env("dev").values)
    assert (values["ACCESS_TOKEN_EXPIRE_MINUTES"], values["PASSWORD_MIN_LENGTH"]) == ("60", "12")
    append(env_file(root), "ACCESS_TOKEN=t-s3cret-value")  # the token itself stays out of git
    assert "ACCESS_TOKEN is a secret in a committed file" in refused(root)


def test_a_declared_secret_in_a_committed_file_is_refused(root: Path) -> None:
    line = append(env_file(root), "API_KEYS=k-s3cret-value")
    msg = refused(root)
    assert f"dev.env:{line}: API_KEYS is a secret in a committed file" in msg
    assert "dev.secrets.env" in msg and "s3cret" not in msg


def test_an_undeclared_secret_is_refused_in_the_secrets_file(root: Path) -> None:
    line = append(secrets_file(root), "SMTP_PASS=x-s3cret-value")
    msg = refused(root)
    assert f"staging.secrets.env:{line}: unknown secret key SMTP_PASS" in msg
    assert "[service.env] secrets" in msg and "s3cret" not in msg


def test_process_environment_sets_a_declared_service_secret(root: Path) -> None:
    env = {"STAGEFLOW_STAGING_API_KEYS": "from-shell-key", "STAGEFLOW_STAGING_OTHER": "ignored"}
    staging = load_project(root, process_env=env).env("staging")
    assert staging.secret("API_KEYS").reveal() == "from-shell-key"
    assert staging.secret("OTHER") is None
    assert "from-shell-key" not in repr(staging)


# -- control characters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "named"),
    [
        ('"info\\nDEBUG=true"', "a newline"),  # an escape inside double quotes
        ('"multi\nline"', "a newline"),  # a quoted value over two lines
        ("info\x00", "NUL"),
        ("info\x1b[31m", "the control character U+001B"),
        ("in\tfo", "a tab"),
        ('"info\\r"', "a carriage return"),
        ("in\u2028fo", "the line separator U+2028"),  # str.splitlines() breaks there
        ("in\x85fo", "the control character U+0085"),
    ],
)
def test_a_control_character_in_an_env_file_is_refused(
    root: Path, written: str, named: str
) -> None:
    path = env_file(root)
    lines = path.read_text().splitlines()
    line = next(i for i, ln in enumerate(lines, 1) if ln.startswith("LOG_LEVEL="))
    lines[line - 1] = f"LOG_LEVEL={written}"
    path.write_text("\n".join(lines) + "\n")
    msg = refused(root)
    assert msg.startswith(f"dev.env:{line}: LOG_LEVEL holds {named}"), msg
    assert "info" not in msg.split("holds")[1]


def test_a_control_character_in_a_secrets_file_is_refused(root: Path) -> None:
    path = secrets_file(root)
    text = path.read_text().replace("SECRET_KEY=sign-staging-s3cret-value\n", "")
    path.write_text(text + 'SECRET_KEY="s3cret\\nINJECTED=1"\n')
    line = len(path.read_text().splitlines())
    msg = refused(root)
    assert msg.startswith(f"staging.secrets.env:{line}: SECRET_KEY holds a newline")
    assert "s3cret" not in msg and "INJECTED" not in msg


@pytest.mark.parametrize("key", ["POSTGRES_PASSWORD", "API_KEYS"])
def test_a_control_character_in_a_process_override_is_refused(root: Path, key: str) -> None:
    variable = f"STAGEFLOW_PROD_{key}"
    msg = refused(root, process_env={variable: "s3cret\nINJECTED=1"})
    assert msg.startswith(f"{variable} (process environment) holds a newline")
    assert "s3cret" not in msg and "INJECTED" not in msg


def test_the_gate_reader_refuses_them_too(tmp_path: Path) -> None:
    path = tmp_path / "prod.env"
    path.write_text("A=1\nB=x\x7fy\n")
    with pytest.raises(ConfigError, match=r"prod\.env:2: B holds the control character U\+007F"):
        read_env_file(path)


# -- [posture] -------------------------------------------------------------------------------------


def test_posture_rules_from_the_shipped_policy(root: Path) -> None:
    proj = load_project(root)
    assert proj.env("staging").posture == (
        PostureRule("DEBUG", one_of=("false",)),
        PostureRule("REQUIRE_API_KEY", one_of=("true",)),
        PostureRule("API_RATE_LIMIT", min=1),
    )
    assert proj.env("prod").posture[-1] == PostureRule(
        "LOG_LEVEL", one_of=("info", "warning", "error")
    )


@pytest.mark.parametrize(
    ("rule", "value", "problem"),
    [
        (PostureRule("DEBUG", one_of=("false",)), "false", None),
        (PostureRule("DEBUG", one_of=("false",)), "False", "DEBUG must be false, not 'False'"),
        (PostureRule("DEBUG", one_of=("false",)), None, "DEBUG must be false (it is unset)"),
        (PostureRule("L", one_of=("a", "b")), "c", "L must be one of a, b, not 'c'"),
        (PostureRule("N", min=1), "600", None),
        (PostureRule("N", min=1), "0", "N must be a whole number >= 1, not '0'"),
        (PostureRule("N", min=1), "-5", "N must be a whole number >= 1, not '-5'"),
        (PostureRule("N", min=1), "1.5", "N must be a whole number >= 1, not '1.5'"),
        (PostureRule("N", min=1), "\u00b2", "N must be a whole number >= 1, not '\u00b2'"),
        (
            PostureRule("N", min=1, max=10),
            "11",
            "N must be a whole number >= 1 and <= 10, not '11'",
        ),
    ],
)
def test_posture_rule_verdicts(rule: PostureRule, value: str | None, problem: str | None) -> None:
    assert rule.problem(value) == problem


def test_per_environment_posture_wins_key_by_key(tmp_path: Path) -> None:
    data = {"posture": {"DEBUG": "false", "N": {"min": 1}, "prod": {"N": {"min": 100}}}}
    posture = load_posture(tmp_path / "stageflow.toml", data)
    assert posture.rules_for("staging") == (
        PostureRule("DEBUG", one_of=("false",)),
        PostureRule("N", min=1),
    )
    assert posture.rules_for("prod") == (
        PostureRule("DEBUG", one_of=("false",)),
        PostureRule("N", min=100),
    )


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('[posture]\nCOLOUR = "blue"\n', "[posture] COLOUR is not a key of the env files"),
        ('[posture]\nAPI_KEYS = "x"\n', "[posture] API_KEYS is a secret"),
        ('[posture]\nPOSTGRES_PASSWORD = "x"\n', "[posture] POSTGRES_PASSWORD is a secret"),
        ("[posture]\nDEBUG = 1\n", "[posture] DEBUG is not a rule"),
        ("[posture]\nDEBUG = []\n", "[posture] DEBUG is not a rule"),
        ("[posture]\nAPI_RATE_LIMIT = { above = 0 }\n", "[posture] API_RATE_LIMIT is not a rule"),
        ('[posture]\nAPI_RATE_LIMIT = { min = "1" }\n', "min and max take whole numbers"),
        ("[posture]\nAPI_RATE_LIMIT = { min = 5, max = 1 }\n", "min is above max"),
        ('[posture.dev]\nDEBUG = "true"\n', "[posture.dev]: dev is not production-like"),
        ('[posture]\nlowercase = "x"\n', "'lowercase' is neither an env key nor staging or prod"),
        ('[posture.prod]\nCOLOUR = "x"\n', "[posture.prod] COLOUR is not a key of the env files"),
    ],
)
def test_a_bad_posture_is_refused(root: Path, table: str, needle: str) -> None:
    (root / "stageflow.toml").write_text(policy(posture=table))
    msg = refused(root)
    assert msg.startswith("stageflow.toml") and needle in msg, msg


# -- the posture guard ------------------------------------------------------------------------------


def test_without_posture_only_the_engine_checks_hold(root: Path) -> None:
    (root / "stageflow.toml").write_text(policy(posture=""))
    path = env_file(root, "prod")
    path.write_text(path.read_text().replace("DEBUG=false", "DEBUG=true"))
    prod = load_project(root).env("prod")
    assert prod.posture == () and guards.production_posture(prod).ok
    os.remove(secrets_file(root, "prod"))
    check = guards.production_posture(load_project(root).env("prod"))
    assert not check.ok
    assert "missing secrets POSTGRES_PASSWORD, REDIS_PASSWORD, API_KEYS, SECRET_KEY" in check.detail


def test_the_guard_uses_the_configured_rules(root: Path) -> None:
    table = '[posture]\nFEATURES = "all"\n'
    (root / "stageflow.toml").write_text(policy(posture=table))
    proj = load_project(root)
    assert guards.production_posture(proj.env("staging")).ok  # staging runs FEATURES=all
    check = guards.production_posture(proj.env("prod"))
    assert not check.ok and "prod: FEATURES must be all, not 'notes'" in check.detail
    assert guards.production_posture(proj.env("dev")).ok  # dev may relax


# -- generated secrets -----------------------------------------------------------------------------


def test_generate_fills_the_service_secrets_and_keeps_the_set_ones(root: Path) -> None:
    path = secrets_file(root)
    path.write_text("POSTGRES_PASSWORD=kept-s3cret-value\nAPI_KEYS=\n")
    os.chmod(path, 0o600)
    declared = load_project(root).env("staging").declared_secrets
    made = fill_missing(path, declared)
    assert made == ["REDIS_PASSWORD", "API_KEYS", "SECRET_KEY"]  # an empty value is not set
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = {k: s.reveal() for k, s in load_secrets(path, allowed=declared).items()}
    assert values["POSTGRES_PASSWORD"] == "kept-s3cret-value"
    assert all(len(values[k]) >= 32 for k in made)
    assert set("".join(values[k] for k in made)) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    assert fill_missing(path, declared) == []
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.parametrize(
    "value", ["plain", "with space", "a #hash", "q'uote", 'd"q', "back\\slash"]
)
def test_a_value_set_by_hand_reads_back_the_same(tmp_path: Path, value: str) -> None:
    path = tmp_path / "x.env"
    path.write_text(dotenv_line("K", value))
    assert read_env_file(path)["K"][0] == value


def test_a_superscript_digit_is_not_a_port(tmp_path: Path) -> None:
    (tmp_path / "stageflow.toml").write_text(policy())
    support.write_envs(tmp_path)
    path = env_file(tmp_path)
    lines = path.read_text().splitlines()
    lines[2] = "APP_PORT=8\u00b2"
    path.write_text("\n".join(lines) + "\n")
    assert "dev.env:3: APP_PORT='8\u00b2' is not a port" in refused(tmp_path)
