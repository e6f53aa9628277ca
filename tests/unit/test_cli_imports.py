"""`inv --list` loads tasks.py and nothing heavy: the task modules import the engine, the database
and SSH clients and rich inside the tasks that use them, so every `inv` command starts fast."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "deploy" / "tasks"

# what loading the namespace must not pull in: clients of the servers and hosts, the table
# renderer, and the engine below the tasks (pipelines, rollback levels, migrations, runtimes)
HEAVY = ("psycopg", "fabric", "paramiko", "redis", "rich")
ENGINE = ("deploy.engine", "deploy.runtime", "deploy.rollback", "deploy.migrations")


def modules_after(code: str) -> set[str]:
    """sys.modules of a fresh interpreter in the project root after running code."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_import_tasks_loads_no_server_ssh_or_table_client() -> None:
    modules = modules_after("import tasks")
    assert "tasks" in modules
    assert loaded(modules, HEAVY) == []


def test_import_tasks_loads_no_engine() -> None:
    assert loaded(modules_after("import tasks"), ENGINE) == []


def test_the_namespace_still_has_every_environments_tasks() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import tasks; print('\\n'.join(tasks.ns.task_names))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    names = set(out.stdout.split())
    for env in ("dev", "staging", "prod"):
        assert {f"{env}.deploy", f"{env}.rollback", f"{env}.up", f"{env}.monitor"} <= names
    assert {"staging.refresh", "prod.approve", "docs.freshness", "status"} <= names
    # the service's seed data loads into dev and staging, never into prod
    assert {"dev.seed", "staging.seed"} <= names and "prod.seed" not in names


def deferred_imports() -> Iterator[tuple[str, str, str | None]]:
    """(file:line, module, name) of every import inside a function of deploy/tasks/*.py."""
    for path in sorted(TASKS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                where = f"{path.name}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        yield where, alias.name, None
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    for alias in node.names:
                        yield where, node.module, alias.name


@pytest.mark.parametrize(("where", "module", "name"), list(deferred_imports()))
def test_every_deferred_import_names_something_real(where: str, module: str, name: str) -> None:
    """A deferred import fails only when its task runs: check each one resolves here instead."""
    mod = importlib.import_module(module)
    if name is not None:
        assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}"), where


@pytest.mark.parametrize("env_off", [False, True])
def test_inv_keeps_the_engines_bytecode_unless_the_interpreter_is_told_not_to(
    tmp_path: Path, env_off: bool
) -> None:
    """invoke turns bytecode writing off; the task package turns it back on, so the next command
    loads the engine compiled instead of compiling it again. PYTHONDONTWRITEBYTECODE still wins."""
    import os
    import shutil

    shutil.copytree(
        ROOT / "deploy", tmp_path / "deploy", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copyfile(ROOT / "tasks.py", tmp_path / "tasks.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if env_off:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    inv = Path(sys.executable).with_name("inv")
    subprocess.run(
        [str(inv), "--list"], cwd=tmp_path, env=env, capture_output=True, timeout=60, check=True
    )
    cached = list((tmp_path / "deploy" / "tasks" / "__pycache__").glob("namespace.*.pyc"))
    assert bool(cached) is not env_off
