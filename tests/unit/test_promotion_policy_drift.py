"""prod's decision rests on the approved commit's policy: the working tree may tighten it, never
loosen it (the `policy` rule of promotion), judged on parsed stageflow.toml tables."""

from __future__ import annotations

import copy

from deploy.policy.promotion import _looser

COMMITTED = {
    "promotion": {
        "approvers": [],
        "min_approvals": 2,
        "approval_ttl_s": 3600,
        "freeze": [{"start": "0 18 * * 5", "end": "0 8 * * 1", "timezone": "UTC"}],
    },
    "environments": {
        "staging": {"soak_s": 600, "verify_window_s": 30, "auto_rollback": True},
        "prod": {
            "soak_s": 0,
            "verify_window_s": 60,
            "backup": "always",
            "thresholds": {"error_rate_points": 2.0},
        },
    },
}


def edited(path: str, value: object) -> dict:
    data = copy.deepcopy(COMMITTED)
    *parents, key = path.split(".")
    table = data
    for name in parents:
        table = table.setdefault(name, {})
    if value is None:
        table.pop(key)
    else:
        table[key] = value
    return data


def test_the_same_or_a_stricter_policy_passes() -> None:
    assert _looser(COMMITTED, COMMITTED) == ""
    freezes = [*COMMITTED["promotion"]["freeze"], {"start": "*", "end": "*", "timezone": "UTC"}]
    for path, value in (
        ("promotion.min_approvals", 3),
        ("promotion.approval_ttl_s", 60),
        ("promotion.approvers", ["bob@example.org"]),
        ("promotion.freeze", freezes),
        ("environments.staging.soak_s", 86400),
        ("environments.prod.verify_window_s", 300),
        ("environments.prod.auto_rollback", True),
        ("environments.prod.thresholds", {"error_rate_points": 1.0, "p95_ratio": 1.5}),
    ):
        assert _looser(edited(path, value), COMMITTED) == "", path


def test_each_loosening_is_named() -> None:
    for path, value, says in (
        ("promotion.min_approvals", 1, "min_approvals 1 < 2"),
        ("promotion.approval_ttl_s", 86400, "approval_ttl_s 86400 > 3600"),
        ("promotion.freeze", None, "freeze]] of the commit is gone"),
        ("environments.staging.soak_s", 0, "[environments.staging] soak_s 0 < 600"),
        ("environments.staging.soak_s", None, "[environments.staging] soak_s 0 < 600"),
        ("environments.prod.verify_window_s", 5, "[environments.prod] verify_window_s 5 < 60"),
        ("environments.staging.auto_rollback", False, "auto_rollback is off"),
        ("environments.prod.thresholds", None, "error_rate_points 5 > 2"),
        ("environments.prod.thresholds", {"error_rate_points": 2.0, "p95_ratio": 3}, "p95_ratio"),
        ("environments.prod.backup", "never", "backup never instead of always"),
        ("environments.prod.backup", None, "backup pending-migrations instead of always"),
    ):
        assert says in _looser(edited(path, value), COMMITTED), path
    listed = edited("promotion.approvers", ["bob@example.org"])
    assert "approvers" in _looser(edited("promotion.approvers", []), listed)
    assert "approvers" in _looser(edited("promotion.approvers", ["eve@example.org"]), listed)


POSTURE = {
    "posture": {
        "DEBUG": "false",
        "WORKERS": {"min": 2, "max": 8},
        "prod": {"LOG_LEVEL": ["info", "warning"]},
    }
}


def test_prods_posture_may_tighten_but_not_loosen() -> None:
    def posture(common: dict, prod: dict) -> dict:
        return {"posture": {**common, "prod": prod}}

    rules = POSTURE["posture"]
    common = {k: v for k, v in rules.items() if k != "prod"}
    for here in (
        POSTURE,
        posture({**common, "WORKERS": {"min": 4, "max": 8}}, rules["prod"]),
        posture({**common, "WORKERS": "4"}, rules["prod"]),
        posture(common, {"LOG_LEVEL": "warning", "SENTRY": "on"}),
        posture({}, {**rules["prod"], **common}),  # prod's own table says the same
    ):
        assert _looser(here, POSTURE) == "", here
    for here, says in (
        (posture({"WORKERS": {"min": 2, "max": 8}}, rules["prod"]), "no rule for DEBUG"),
        (posture(common, {"LOG_LEVEL": ["info", "debug"]}), "LOG_LEVEL must be one of info, debug"),
        (posture({**common, "WORKERS": {"min": 1}}, rules["prod"]), "WORKERS must be a whole"),
        (posture({**common, "WORKERS": "9"}, rules["prod"]), "WORKERS must be 9"),
        (posture(common, {**rules["prod"], "DEBUG": "true"}), "DEBUG must be true"),
    ):
        assert says in _looser(here, POSTURE), (here, says)
