"""Gate `promotion_guard`: passes when every other required gate of the stage passed; computed last."""

from __future__ import annotations

from typing import Any

from deploy.gates import GateContext, Outcome
from deploy.gates.stages import GUARD


def inputs(ctx: GateContext) -> list[Any] | None:
    return None  # derived from the other verdicts in this run


def run(ctx: GateContext) -> Outcome:
    # The runner puts the stage's required gates in ctx.config["required"].
    names = [n for n in ctx.config.get("required", []) if n != GUARD]
    blocking = []
    for name in names:
        result = ctx.results.get(name)
        if result is None:
            blocking.append(f"{name}: NOT_RUN")
        elif not result.passing:
            blocking.append(f"{name}: {result.status.upper()}")
    details = {"required": names, "blocking": blocking}
    if blocking:
        return Outcome("failed", "CHECKS_NOT_PASSED: " + ", ".join(blocking), details)
    return Outcome("passed", f"all {len(names)} required gate(s) passed", details)
