"""Gate `policy-drift`: staging and prod env files differ only where policy allows; prod posture is strict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.config import read_env_file
from deploy.errors import ConfigError
from deploy.gates import GateContext, Outcome

# Isolation keys must differ; the rest must be identical unless [gates.policy-drift] allows it.
DEFAULT_ALLOWED = (
    "ENVIRONMENT",
    "COMPOSE_PROJECT_NAME",
    "APP_PORT",
    "POSTGRES_PORT",
    "REDIS_PORT",
    "DATABASE_URL",
    "REDIS_URL",
    "DATA_DIR",
)


def _files(ctx: GateContext) -> tuple[Path, Path]:
    return ctx.tree / "env" / "staging.env", ctx.tree / "env" / "prod.env"


def allowed_keys(ctx: GateContext) -> list[str]:
    keys = ctx.config.get("allowed_keys", list(DEFAULT_ALLOWED))
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ConfigError("[gates.policy-drift] allowed_keys must be a list of env keys")
    return keys


def inputs(ctx: GateContext) -> list[Any]:
    return [*_files(ctx), allowed_keys(ctx)]


def drift(staging: dict[str, str], prod: dict[str, str], allowed: list[str]) -> list[str]:
    problems = []
    for key in sorted(set(staging) | set(prod)):
        if key in allowed:
            continue
        if key not in prod:
            problems.append(f"{key} is set on staging only")
        elif key not in staging:
            problems.append(f"{key} is set on prod only")
        elif staging[key] != prod[key]:
            problems.append(f"{key} differs: staging={staging[key]!r} prod={prod[key]!r}")
    return problems


def prod_posture(prod: dict[str, str]) -> list[str]:
    problems = []
    if prod.get("DEBUG", "false").lower() not in ("false", "0", "no"):
        problems.append(f"prod DEBUG={prod['DEBUG']!r} must be false")
    if prod.get("REQUIRE_API_KEY", "").lower() not in ("true", "1", "yes"):
        problems.append(
            f"prod REQUIRE_API_KEY={prod.get('REQUIRE_API_KEY', '<unset>')!r} must be true"
        )
    rate = prod.get("API_RATE_LIMIT", "0")
    if not rate.isdigit() or int(rate) <= 0:
        problems.append(f"prod API_RATE_LIMIT={rate!r} must be a number > 0")
    if prod.get("LOG_LEVEL", "info").lower() == "debug":
        problems.append("prod LOG_LEVEL must not be debug")
    return problems


def run(ctx: GateContext) -> Outcome:
    staging_file, prod_file = _files(ctx)
    staging = {k: v for k, (v, _) in read_env_file(staging_file).items()}
    prod = {k: v for k, (v, _) in read_env_file(prod_file).items()}
    problems = drift(staging, prod, allowed_keys(ctx)) + prod_posture(prod)
    details = {"allowed_keys": allowed_keys(ctx), "problems": problems}
    if problems:
        return Outcome("failed", f"{len(problems)} problem(s): {problems[0]}", details)
    return Outcome(
        "passed", "staging and prod differ only in allowed keys; prod posture strict", details
    )
