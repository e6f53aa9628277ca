"""Gate `policy-drift`: staging and prod env files differ only where policy allows; both keep
the [posture] rules of stageflow.toml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from deploy.config import ENV_KEYS, PostureRule, load_posture, read_env_file
from deploy.errors import ConfigError
from deploy.gates import GateContext, Outcome

# stageflow's own keys are what isolates environments and must differ (always allowed); every other
# key, the service's included, must be identical unless [gates.policy-drift] allowed_keys names it.
DEFAULT_ALLOWED = tuple(ENV_KEYS)
_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _files(ctx: GateContext) -> tuple[Path, Path]:
    return ctx.tree / "env" / "staging.env", ctx.tree / "env" / "prod.env"


def allowed_keys(ctx: GateContext) -> list[str]:
    keys = ctx.config.get("allowed_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and _KEY.match(k) for k in keys):
        raise ConfigError(
            "[gates.policy-drift] allowed_keys must be a list of env keys",
            hint="e.g. [\"LOG_LEVEL\"]: the service's keys meant to differ (stageflow's always may)",
        )
    return [*DEFAULT_ALLOWED, *(k for k in keys if k not in DEFAULT_ALLOWED)]


def posture_rules(ctx: GateContext) -> dict[str, tuple[PostureRule, ...]]:
    """[posture] of the policy, per production-like environment."""
    posture = load_posture(Path("stageflow.toml"), dict(ctx.policy))
    return {name: posture.rules_for(name) for name in ("staging", "prod")}


def inputs(ctx: GateContext) -> list[Any]:
    # the rules are part of the verdict: a changed [posture] runs the gate again
    return [*_files(ctx), allowed_keys(ctx), ctx.policy.get("posture", {})]


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


def posture_problems(
    name: str, values: dict[str, str], rules: tuple[PostureRule, ...]
) -> list[str]:
    """What one environment's committed values break of its [posture] rules."""
    return [f"{name} {p}" for p in (r.problem(values.get(r.key)) for r in rules) if p]


def _committed(ctx: GateContext, path: Path) -> dict[str, str]:
    """An env file as the commit holds it; one the commit lacks is named by its place in the
    repository (a .gitignore that ignores env/, a virtualenv's usual name, keeps it out)."""
    if not path.is_file():
        rel = path.relative_to(ctx.tree).as_posix()
        raise ConfigError(
            f"{rel} is not in the commit under test",
            hint=f"commit it (git add -f {rel}; `git check-ignore -v {rel}` names a .gitignore "
            "line that leaves it out)",
        )
    return {k: v for k, (v, _) in read_env_file(path).items()}


def run(ctx: GateContext) -> Outcome:
    staging_file, prod_file = _files(ctx)
    staging = _committed(ctx, staging_file)
    prod = _committed(ctx, prod_file)
    rules = posture_rules(ctx)
    problems = (
        drift(staging, prod, allowed_keys(ctx))
        + posture_problems("staging", staging, rules["staging"])
        + posture_problems("prod", prod, rules["prod"])
    )
    details = {"allowed_keys": allowed_keys(ctx), "problems": problems}
    if problems:
        hint = ""
        if any(" differs: " in p or " only" in p for p in problems):
            hint = " (a key meant to differ goes in [gates.policy-drift] allowed_keys)"
        return Outcome("failed", f"{len(problems)} problem(s): {problems[0]}{hint}", details)
    return Outcome(
        "passed", "staging and prod differ only in allowed keys; both keep [posture]", details
    )
