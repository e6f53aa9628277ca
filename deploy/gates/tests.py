"""Gate `test`: the project's test command (pytest by default); the report names failing test ids."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from typing import Any

from deploy.errors import ConfigError
from deploy.gates import GateContext, Outcome, first_lines, run_command

# pytest's short summary (-rf / -rE): "FAILED tests/unit/test_x.py::test_y - AssertionError".
_SUMMARY = re.compile(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$")


def command(ctx: GateContext) -> list[str]:
    configured = ctx.config.get("command")
    if configured is None:
        return [sys.executable, "-m", "pytest", "-q", "-x", "tests/unit"]
    if (
        not isinstance(configured, list)
        or not configured
        or not all(isinstance(a, str) for a in configured)
    ):
        raise ConfigError(
            "[gates.test] command must be a non-empty list of strings",
            hint='e.g. command = ["python", "-m", "pytest", "-q", "tests/unit"]',
        )
    # "python" means this interpreter, so the gate tests with the project's own venv.
    return [
        sys.executable if configured[0] in ("python", "python3") else configured[0],
        *configured[1:],
    ]


def _argv(ctx: GateContext) -> list[str]:
    argv = command(ctx)
    if any("pytest" in a for a in argv[:3]):
        argv += ["-rfE", "-p", "no:cacheprovider"]
    return argv


def inputs(ctx: GateContext) -> list[Any]:
    installed = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
    return [ctx.tree_hash, sys.version, installed, _argv(ctx)]


def run(ctx: GateContext) -> Outcome:
    argv = _argv(ctx)
    done = run_command(argv, cwd=ctx.tree, timeout_s=ctx.timeout_s)
    failing = []
    for line in done.lines():
        m = _SUMMARY.match(line.strip())
        if m:
            failing.append({"kind": m[1].lower(), "id": m[2], "message": (m[3] or "")[:300]})
    details: dict[str, Any] = {
        "command": argv[1:] if argv[0] == sys.executable else argv,
        "exit_code": done.exit_code,
    }
    tail = done.lines()[-1] if done.lines() else ""
    if done.ok:
        return Outcome("passed", tail or "tests passed", details)
    details["failing"] = failing
    if failing:
        ids = ", ".join(f["id"] for f in failing[:5])
        more = f" (+{len(failing) - 5} more)" if len(failing) > 5 else ""
        return Outcome("failed", f"{len(failing)} failing: {ids}{more}", details)
    details["output"] = first_lines(done.lines()[-15:], 15)
    reason = "no tests ran" if done.exit_code == 5 and "pytest" in " ".join(argv) else tail
    return Outcome("failed", f"test command exited {done.exit_code}: {reason}", details)
