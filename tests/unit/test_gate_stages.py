"""Maturity stages: matching order and every way [stages] can be wrong."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from deploy.config import load_posture
from deploy.errors import ConfigError
from deploy.gates.budgets import budgets_hash
from deploy.gates.policy_drift import drift, posture_problems
from deploy.gates.stages import GATE_NAMES, load_stages
from tests import support

POLICY: dict[str, Any] = {
    "stages": {
        "order": ["PRE_GA", "GA", "PILOT"],
        "PRE_GA": {
            "patterns": ["v*-rc.*"],
            "gates": {"test": "required", "deps": "report_only", "promotion_guard": "required"},
        },
        "GA": {"patterns": ["v*"], "gates": {"test": "required", "promotion_guard": "required"}},
        "PILOT": {
            "patterns": ["main", "*"],
            "gates": {"test": "report_only", "promotion_guard": "report_only"},
        },
    }
}


def policy(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(POLICY)
    for stage, table in changes.items():
        if stage == "order":
            data["stages"]["order"] = table
        else:
            data["stages"][stage].update(table)
    return data


@pytest.mark.parametrize(
    ("ref", "stage"),
    [
        ("v1.0.0-rc.1", "PRE_GA"),
        ("v1.0.0", "GA"),
        ("v2.3.4", "GA"),
        ("main", "PILOT"),
        ("feature/x", "PILOT"),
        ("1.0.0", "PILOT"),
    ],
)
def test_first_match_wins_most_specific_first(ref: str, stage: str) -> None:
    assert load_stages(POLICY).match(ref).name == stage


def test_requirements_are_read_per_stage_in_gate_order() -> None:
    pre_ga = load_stages(POLICY).match("v1.0.0-rc.2")
    assert pre_ga.required() == ["test", "promotion_guard"]
    assert pre_ga.requirement("deps") == "report_only"
    assert [g for g, _ in pre_ga.gates] == [g for g in GATE_NAMES if g in dict(pre_ga.gates)]


def test_catch_all_before_a_specific_stage_is_shadowing() -> None:
    with pytest.raises(ConfigError, match="PRE_GA.*can never match.*PILOT pattern '\\*'"):
        load_stages(policy(order=["PILOT", "PRE_GA", "GA"]))


def test_broader_pattern_before_literal_is_shadowing() -> None:
    data = policy(GA={"patterns": ["v*", "v1.0.0"]})
    with pytest.raises(ConfigError, match="'v1.0.0' can never match"):
        load_stages(data)


def test_unknown_gate() -> None:
    with pytest.raises(ConfigError, match="unknown gate 'lint'"):
        load_stages(policy(GA={"gates": {"lint": "required", "promotion_guard": "required"}}))


def test_bad_requirement() -> None:
    with pytest.raises(ConfigError, match="test = 'blocking'"):
        load_stages(policy(GA={"gates": {"test": "blocking", "promotion_guard": "required"}}))


def test_stage_without_promotion_guard() -> None:
    with pytest.raises(ConfigError, match="GA\\] has no promotion_guard"):
        load_stages(policy(GA={"gates": {"test": "required"}}))


@pytest.mark.parametrize(
    "order",
    [["PRE_GA", "GA"], ["PRE_GA", "GA", "PILOT", "RC"], [], ["PRE_GA", "GA", "GA", "PILOT"]],
)
def test_order_must_name_each_stage_once(order: list[str]) -> None:
    with pytest.raises(ConfigError):
        load_stages(policy(order=order))


def test_missing_stages_table_and_unmatched_ref() -> None:
    with pytest.raises(ConfigError, match="missing \\[stages\\]"):
        load_stages({})
    data = policy(PILOT={"patterns": ["main"]})
    with pytest.raises(ConfigError, match="matches no stage"):
        load_stages(data).match("feature/x")


def test_budgets_hash_follows_thresholds_only() -> None:
    base = {
        "environments": {
            "prod": {"thresholds": {"p95_ratio": 2.0}, "workers": 2},
            "staging": {"relax_factor": 2, "relax_thresholds_from": "prod"},
        }
    }
    other = copy.deepcopy(base)
    other["environments"]["prod"]["workers"] = 4  # not a budget
    assert budgets_hash(base) == budgets_hash(other)
    other["environments"]["staging"]["relax_factor"] = 3
    assert budgets_hash(base) != budgets_hash(other)


def test_policy_drift_and_posture() -> None:
    staging = {"APP_PORT": "1", "DEBUG": "false", "FEATURES": "all"}
    prod = {"APP_PORT": "2", "DEBUG": "false", "FEATURES": "notes", "EXTRA": "x"}
    assert drift(staging, prod, ["APP_PORT"]) == [
        "EXTRA is set on prod only",
        "FEATURES differs: staging='all' prod='notes'",
    ]
    assert drift(staging, prod, ["APP_PORT", "FEATURES", "EXTRA"]) == []
    # the shipped [posture]: the reference service's rules, prod's LOG_LEVEL on top
    posture = load_posture(Path("stageflow.toml"), tomllib.loads(support.minimal_policy()))
    good = {
        "DEBUG": "false",
        "REQUIRE_API_KEY": "true",
        "API_RATE_LIMIT": "10",
        "LOG_LEVEL": "info",
    }
    assert posture_problems("prod", good, posture.rules_for("prod")) == []
    bad = {"DEBUG": "true", "REQUIRE_API_KEY": "false", "API_RATE_LIMIT": "0", "LOG_LEVEL": "debug"}
    found = posture_problems("prod", bad, posture.rules_for("prod"))
    assert len(found) == 4 and all(p.startswith("prod ") for p in found)
    assert posture_problems("staging", bad, posture.rules_for("staging"))[0] == (
        "staging DEBUG must be false, not 'true'"
    )
    assert len(posture_problems("staging", bad, posture.rules_for("staging"))) == 3
    # a service without [posture]: its keys are its own business
    assert posture_problems("prod", bad, load_posture(Path("x"), {}).rules_for("prod")) == []


def test_policy_drift_names_an_env_file_the_commit_lacks(tmp_path: Path) -> None:
    from deploy.gates import GateContext
    from deploy.gates.policy_drift import run

    (tmp_path / "tree" / "env").mkdir(parents=True)
    (tmp_path / "tree" / "env" / "prod.env").write_text("ENVIRONMENT=production\n")
    ctx = GateContext(
        name="policy-drift",
        root=tmp_path,
        tree_dir=tmp_path / "tree",
        ref="v1",
        commit="0" * 40,
        tree_hash="0" * 40,
        stage="GA",
        requirement="required",
        config={},
        policy={},
        report_dir=tmp_path / "reports",
        timeout_s=10,
    )
    with pytest.raises(ConfigError) as err:
        run(ctx)
    line = err.value.line()
    assert line.startswith("env/staging.env is not in the commit under test")
    assert "git check-ignore -v env/staging.env" in line and str(tmp_path) not in line
