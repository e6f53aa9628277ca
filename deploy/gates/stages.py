"""Maturity stages: which ref is PILOT, PRE_GA or GA, and which gates each requires ([stages] in stageflow.toml)."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deploy.errors import ConfigError

# Every gate the runner knows, in the order reports list them; promotion_guard is computed last.
GATE_NAMES: tuple[str, ...] = (
    "check",
    "test",
    "docs-freshness",
    "migrations",
    "deps",
    "policy-drift",
    "budgets",
    "observability",
    "eval",
    "promotion_guard",
)
REQUIREMENTS = ("required", "report_only")
GUARD = "promotion_guard"


@dataclass(frozen=True)
class Stage:
    name: str
    patterns: tuple[str, ...]
    gates: tuple[tuple[str, str], ...]  # (gate, required | report_only), in GATE_NAMES order
    description: str = ""

    def requirement(self, gate: str) -> str:
        return dict(self.gates)[gate]

    def required(self) -> list[str]:
        return [g for g, r in self.gates if r == "required"]


@dataclass(frozen=True)
class Stages:
    order: tuple[Stage, ...]  # first match wins

    def match(self, ref: str) -> Stage:
        for stage in self.order:
            if any(fnmatch.fnmatchcase(ref, p) for p in stage.patterns):
                return stage
        names = ", ".join(s.name for s in self.order)
        raise ConfigError(
            f"ref {ref!r} matches no stage ({names})",
            hint='add a catch-all pattern "*" to the last stage in [stages]',
        )


def _shadowed(pattern: str, earlier: str) -> bool:
    """True when every ref `pattern` matches is already taken by `earlier`."""
    if earlier == "*" or earlier == pattern:
        return True
    literal = not any(ch in pattern for ch in "*?[")
    return literal and fnmatch.fnmatchcase(pattern, earlier)


def load_stages(policy: Mapping[str, Any]) -> Stages:
    """Read and validate [stages]; every problem is a ConfigError naming the stage."""
    table = policy.get("stages")
    if not isinstance(table, dict):
        raise ConfigError(
            "stageflow.toml: missing [stages] table",
            hint="define [stages] order = [...] and one [stages.<NAME>] per stage",
        )
    order = table.get("order")
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if not isinstance(order, list) or not order or not all(isinstance(n, str) for n in order):
        raise ConfigError(
            "[stages] order must list the stage names, most specific first",
            hint=f"e.g. order = {sorted(tables)!r}",
        )
    for name in order:
        if name not in tables:
            raise ConfigError(f"[stages] order names {name!r} but there is no [stages.{name}]")
    if len(set(order)) != len(order):
        raise ConfigError("[stages] order names a stage twice")
    for name in tables:
        if name not in order:
            raise ConfigError(f"[stages.{name}] is not in [stages] order", hint="add it to order")
    stages: list[Stage] = []
    seen: list[tuple[str, str]] = []  # (stage, pattern) in match order
    for name in order:
        stage = _stage(name, tables[name])
        for pattern in stage.patterns:
            for earlier_stage, earlier in seen:
                if _shadowed(pattern, earlier):
                    raise ConfigError(
                        f"[stages.{name}] pattern {pattern!r} can never match: "
                        f"{earlier_stage} pattern {earlier!r} takes every such ref first",
                        hint="put the more specific stage earlier in [stages] order",
                    )
            seen.append((name, pattern))
        stages.append(stage)
    return Stages(tuple(stages))


def _stage(name: str, table: Mapping[str, Any]) -> Stage:
    patterns = table.get("patterns")
    if (
        not isinstance(patterns, list)
        or not patterns
        or not all(isinstance(p, str) and p for p in patterns)
    ):
        raise ConfigError(
            f"[stages.{name}] patterns must be a non-empty list of ref patterns",
            hint='e.g. patterns = ["v*-rc.*"]',
        )
    gates = table.get("gates")
    if not isinstance(gates, dict) or not gates:
        raise ConfigError(
            f"[stages.{name}] has no gates",
            hint=f'add [stages.{name}.gates] with gate = "required" | "report_only"',
        )
    for gate, requirement in gates.items():
        if gate not in GATE_NAMES:
            raise ConfigError(
                f"[stages.{name}.gates] unknown gate {gate!r}",
                hint=f"known gates: {', '.join(GATE_NAMES)}",
            )
        if requirement not in REQUIREMENTS:
            raise ConfigError(
                f"[stages.{name}.gates] {gate} = {requirement!r}",
                hint='use "required" or "report_only"',
            )
    if GUARD not in gates:
        raise ConfigError(
            f"[stages.{name}] has no {GUARD}",
            hint=f'add {GUARD} = "required" (or "report_only") to [stages.{name}.gates]',
        )
    ordered = tuple((g, gates[g]) for g in GATE_NAMES if g in gates)
    description = table.get("description", "")
    return Stage(
        name, tuple(patterns), ordered, description if isinstance(description, str) else ""
    )


def stage_rows(stages: Stages) -> list[dict[str, Any]]:
    """One row per stage for `inv release.stages` (table or JSON)."""
    return [
        {
            "stage": s.name,
            "patterns": list(s.patterns),
            "gates": dict(s.gates),
            "description": s.description,
        }
        for s in stages.order
    ]


def all_gates(stages: Sequence[Stage]) -> list[str]:
    present = {g for s in stages for g, _ in s.gates}
    return [g for g in GATE_NAMES if g in present]
