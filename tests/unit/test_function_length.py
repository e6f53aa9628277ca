"""Function length: no function in deploy/ over 60 lines, no invoke task over 20.

A long function is split into helpers named after its steps. Length runs from the `def` line to
the body's last line, decorators excluded. PENDING names what is still being reshaped; an entry
that is no longer over the limit fails too, so those lists only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MAX_FUNCTION_LINES = 60
MAX_TASK_LINES = 20

Function = ast.FunctionDef | ast.AsyncFunctionDef

# (module under deploy/ without .py, function) still over MAX_FUNCTION_LINES.
PENDING: set[tuple[str, str]] = set()

# (module under deploy/ without .py, task function) still over MAX_TASK_LINES.
PENDING_TASKS: set[tuple[str, str]] = set()


def functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, Function]]:
    """(qualified name, node) of every function: methods as Class.name, nested ones as outer.name."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + child.name, child
            yield from functions(child, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from functions(child, f"{prefix}{child.name}.")
        else:
            yield from functions(child, prefix)


def length(node: Function) -> int:
    assert node.end_lineno is not None
    return node.end_lineno - node.lineno + 1


def is_task(node: Function) -> bool:
    """Decorated with invoke's @task, bare or called, by name or as invoke.task."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Name) and target.id == "task":
            return True
        if isinstance(target, ast.Attribute) and target.attr == "task":
            return True
    return False


def lengths(root: Path, *, tasks_only: bool = False) -> dict[tuple[str, str], int]:
    """(module, function) -> length in lines for every .py file under root."""
    out: dict[tuple[str, str], int] = {}
    for path in sorted(root.rglob("*.py")):
        module = path.relative_to(DEPLOY).with_suffix("").as_posix()
        for name, node in functions(ast.parse(path.read_text(encoding="utf-8"))):
            if not tasks_only or is_task(node):
                key = (module, name)
                out[key] = max(out.get(key, 0), length(node))
    return out


def problems(found: dict[tuple[str, str], int], limit: int, pending: set[tuple[str, str]]) -> str:
    """One message listing new offenders (file:function:length) and pending entries now done."""
    over = {key: n for key, n in found.items() if n > limit}
    new = sorted(f"deploy/{m}.py:{f}:{n}" for (m, f), n in over.items() if (m, f) not in pending)
    done = sorted(f"{m}.{f}" for m, f in pending if (m, f) not in over)
    lines = []
    if new:
        lines.append(f"over {limit} lines, split into named steps: " + ", ".join(new))
    if done:
        lines.append(f"no longer over {limit} lines, remove from PENDING: " + ", ".join(done))
    return "\n".join(lines)


def test_no_function_in_deploy_is_over_60_lines() -> None:
    found = lengths(DEPLOY)
    assert found, f"no functions found under {DEPLOY}"
    message = problems(found, MAX_FUNCTION_LINES, PENDING)
    assert not message, message


def test_no_invoke_task_is_over_20_lines() -> None:
    found = lengths(DEPLOY / "tasks", tasks_only=True)
    assert found, "no @task functions found under deploy/tasks"
    message = problems(found, MAX_TASK_LINES, PENDING_TASKS)
    assert not message, message


def test_length_runs_from_def_to_last_line_without_decorators() -> None:
    source = (
        "@task(help={})\n"  # 1
        "@edge\n"  # 2
        "def outer(c):\n"  # 3
        "    def inner():\n"  # 4
        "        return 1\n"  # 5
        "    return inner()\n"  # 6
        "\n"
        "class Runner:\n"  # 8
        "    async def go(self):\n"  # 9
        "        pass\n"  # 10
    )
    found = {name: (length(node), is_task(node)) for name, node in functions(ast.parse(source))}
    assert found == {
        "outer": (4, True),
        "outer.inner": (2, False),
        "Runner.go": (2, False),
    }


def test_problems_name_new_offenders_and_finished_pending_entries() -> None:
    found = {("a", "long"): 61, ("a", "done"): 60, ("tasks/b", "still"): 70}
    message = problems(found, 60, {("a", "done"), ("tasks/b", "still")})
    assert "deploy/a.py:long:61" in message
    assert "remove from PENDING: a.done" in message
    assert "still" not in message
