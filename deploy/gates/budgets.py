"""Gate `budgets`: the rollback thresholds (field budgets) match the hash an operator locked."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from deploy.gates import GateContext, Outcome
from deploy.gates.cache import canonical

_RELAX_KEYS = ("relax_thresholds_from", "relax_factor")


def budget_tables(policy: Mapping[str, Any]) -> dict[str, Any]:
    """Every environment's thresholds table and relax settings, the inputs that set budgets."""
    envs = policy.get("environments", {})
    out: dict[str, Any] = {}
    for name in sorted(envs):
        table = envs[name] if isinstance(envs[name], dict) else {}
        entry = {k: table[k] for k in _RELAX_KEYS if k in table}
        if isinstance(table.get("thresholds"), dict):
            entry["thresholds"] = table["thresholds"]
        if entry:
            out[name] = entry
    return out


def budgets_hash(policy: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(budget_tables(policy)).encode()).hexdigest()


def inputs(ctx: GateContext) -> list[Any]:
    return [budget_tables(ctx.policy)]


def run(ctx: GateContext) -> Outcome:
    current = budgets_hash(ctx.policy)
    locked = ctx.config.get("locked_hash")
    details = {"current_hash": current, "locked_hash": locked, "budgets": budget_tables(ctx.policy)}
    if not locked:
        return Outcome("failed", f"no locked_hash; current is {current}", details)
    if locked != current:
        return Outcome(
            "failed",
            f"thresholds changed: current hash {current} is not the locked "
            f"{locked}; lock it deliberately in [gates.budgets] locked_hash",
            details,
        )
    return Outcome("passed", f"thresholds locked ({current[:12]})", details)
