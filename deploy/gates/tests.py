"""Gate `test`: the project's whole test command (`[gates.test] command`; for a service with a
tests folder and none configured, `python -m pytest -q`); the report names failing test ids.

The verdict is cached by the hash of the tree it ran on (and the venv's distributions), so a re-run
of the same commit is instant and any changed commit runs everything again.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from deploy.errors import ConfigError, MigrationError
from deploy.gates import (
    GateContext,
    Outcome,
    configured_command,
    first_lines,
    python_first,
    run_command,
)
from deploy.gates.test_database import database, wanted
from deploy.secrets import Secret

# pytest's short summary (-rf / -rE, on by default): "FAILED tests/x.py::test_y - AssertionError".
_SUMMARY = re.compile(r"^(FAILED|ERROR) ([^\s(]\S*)(?: - (.*))?$")
# unittest's: "FAIL: test_y (tests.UserCase.test_y)" (before 3.11 the parentheses end at the class)
_UNITTEST_CASE = re.compile(r"^(FAIL|ERROR): (\w+) \(([\w.]+)\)")
_RAISED = re.compile(r"^E\s+((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception)\b.*)$")
# a line saying the run failed though no test did: a plugin's verdict (coverage under its floor)
_FAILED_LINE = re.compile(r"\b(?:fail(?:ed|s|ure)?|error)\b", re.I)
# unittest's closing lines: "Ran 12 tests in 0.412s", a blank line, then "OK (skipped=1)"; Django's
# runner prints its test database's teardown after them, which is no summary of the run
_RAN = re.compile(r"^Ran \d+ tests? in \S+$")
_NO_PYTEST = re.compile(r"No module named '?pytest'?")
DEFAULT = ("python", "-m", "pytest", "-q")


def command(ctx: GateContext) -> list[str]:
    """The configured command with {python} and {bin} (this venv's interpreter and bin folder)
    filled in; without one, pytest over the whole tests folder when the release has one."""
    configured = configured_command(ctx)
    if configured is None:
        if not _tests_folder(ctx):
            raise ConfigError(
                "no test command: the release has no tests/ folder and [gates.test] sets no command",
                hint='set [gates.test] command, e.g. ["python", "-m", "pytest", "-q"] or ["make", "test"]',
            )
        configured = python_first(ctx, DEFAULT)
    venv_bin = str(Path(ctx.python).parent)
    return [a.replace("{python}", ctx.python).replace("{bin}", venv_bin) for a in configured]


def _tests_folder(ctx: GateContext) -> bool:
    service = ctx.policy.get("service")
    base = str(service.get("dir", ".")) if isinstance(service, dict) else "."
    return any((ctx.tree / d / "tests").is_dir() for d in {".", base})


_SUMMARY_COLUMNS = 500  # a failing test's id and the first 300 characters of its message


def _argv(ctx: GateContext) -> list[str]:
    argv = command(ctx)
    if len(argv) >= 3 and argv[1:3] == ["-m", "pytest"]:
        argv += ["-rfE", "-p", "no:cacheprovider"]
    return argv


def test_dir(ctx: GateContext) -> str:
    """[gates.test] dir: the folder of the tree the command runs in (a service's own folder,
    whose tests find their config and files from there); the tree's root when unset."""
    value = ctx.config.get("dir", ".")
    path = PurePosixPath(value) if isinstance(value, str) and value.strip() else None
    if path is None or path.is_absolute() or ".." in path.parts:
        raise ConfigError(
            f"[gates.test] dir = {value!r} must be a folder inside the repository",
            hint='e.g. dir = "backend"; leave it out to run at the repository\'s root',
        )
    if not (ctx.tree / path).is_dir():
        raise ConfigError(
            f"[gates.test] dir = {value!r}: the commit under test has no such folder",
            hint="name the folder the test command runs in, relative to the repository's root",
        )
    return str(path)


def inputs(ctx: GateContext) -> list[Any]:
    installed = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
    return [ctx.tree_hash, sys.version, installed, _argv(ctx), test_dir(ctx), wanted(ctx)]


def run(ctx: GateContext) -> Outcome:
    argv = _argv(ctx)
    run_in = ctx.tree / test_dir(ctx)
    hint = "set [gates.test] command to the project's test command"
    # pytest cuts each line of its short summary to the terminal's width, 80 columns without
    # one: "TypeError: Invalid argu..." would be all the report says of a failure
    base = {**os.environ, "COLUMNS": str(_SUMMARY_COLUMNS)}
    if not wanted(ctx):
        done = run_command(argv, cwd=run_in, env=ctx.code_env(base), timeout_s=ctx.timeout_s,
                           tool_hint=hint)  # fmt: skip
        return _judged(ctx, argv, done, {})
    try:
        with database(ctx, ctx.code_env(base)) as (env, migrated):
            secrets = (Secret(env["PGPASSWORD"]), Secret(env["DATABASE_URL"]))
            done = run_command(argv, cwd=run_in, env=env, timeout_s=ctx.timeout_s,
                               secrets=secrets, tool_hint=hint)  # fmt: skip
    except MigrationError as exc:
        return Outcome("error", exc.line(), {"database": "not migrated"})
    return _judged(ctx, argv, done, {"database": migrated})


def _judged(ctx: GateContext, argv: list[str], done: Any, extra: dict[str, Any]) -> Outcome:
    failing = []
    for line in done.lines():
        m = _SUMMARY.match(line.strip())
        if m:
            failing.append({"kind": m[1].lower(), "id": m[2], "message": (m[3] or "")[:300]})
        elif u := _UNITTEST_CASE.match(line.strip()):
            case = u[3] if u[3].endswith(f".{u[2]}") else f"{u[3]}.{u[2]}"
            kind = "failed" if u[1] == "FAIL" else "error"
            failing.append({"kind": kind, "id": case, "message": ""})
    shown = [Path(argv[0]).name if argv[0] == ctx.python else argv[0], *argv[1:]]
    details: dict[str, Any] = {"command": shown[1:] if argv[0] == ctx.python else shown, **extra}
    details["exit_code"] = done.exit_code
    tail = done.lines()[-1] if done.lines() else ""
    if done.ok:
        return Outcome("passed", _ran(done.lines()) or tail or "tests passed", details)
    details["failing"] = failing
    if failing:
        ids = ", ".join(f["id"] for f in failing[:5])
        more = f" (+{len(failing) - 5} more)" if len(failing) > 5 else ""
        # a file or folder that could not even be collected (a conftest importing settings the
        # environment lacks) names no test: what it raised is the news
        uncollected = [f for f in failing if f["kind"] == "error" and "::" not in f["id"]]
        if uncollected and uncollected[0]["message"]:
            why = uncollected[0]["message"]
            return Outcome("failed", f"{len(failing)} failing: {ids}{more}: {why}", details)
        # one cause for all (a database the tests cannot reach): the exception, said once
        messages = {f["message"] for f in failing}
        raised = (messages.pop() or _last_raised(done.lines())) if len(messages) == 1 else ""
        cause = f" ({raised[:200]})" if raised else ""
        return Outcome("failed", f"{len(failing)} failing{cause}: {ids}{more}", details)
    details["output"] = first_lines(done.lines()[-15:], 15)
    if any(_NO_PYTEST.search(ln) for ln in done.lines()):
        return Outcome(
            "failed",
            "pytest is not installed in this venv (pip install pytest), "
            "or set [gates.test] command to the project's test command",
            details,
        )
    reason = "no tests ran" if done.exit_code == 5 and "pytest" in " ".join(argv) else ""
    return Outcome(
        "failed", f"test command exited {done.exit_code}: {reason or _why(done.lines())}", details
    )


def _why(lines: list[str]) -> str:
    """Why a run whose tests all passed, or that ran none, still failed: the exception it raised
    before any test (a plugin, a conftest), else the last line before pytest's own summary that
    says it failed (pytest-cov's `FAIL Required test coverage of 100% not reached`), else the
    last line."""
    from deploy.releases import raised_in

    raised = raised_in(lines)
    if raised:
        return raised
    said = next((ln.strip() for ln in reversed(lines[:-1]) if _FAILED_LINE.search(ln)), "")
    return said or (lines[-1] if lines else "")


def _last_raised(lines: list[str]) -> str:
    """The exception pytest's last report shows (its `E   Name: message` lines), for failures
    whose summary lines carry no message (an error in a fixture, a database it cannot reach)."""
    for line in reversed(lines):
        m = _RAISED.match(line)
        if m:
            return m[1]
    return ""


def _ran(lines: list[str]) -> str:
    """unittest's own summary of a run ("Ran 12 tests in 0.412s: OK"), or "" without one."""
    for i in range(len(lines) - 1, -1, -1):
        if _RAN.match(lines[i].strip()):
            verdict = next((ln.strip() for ln in lines[i + 1 :] if ln.strip()), "")
            return f"{lines[i].strip()}: {verdict}" if verdict else lines[i].strip()
    return ""
