"""The engine's floors hold: no import cycle, no module reaching into another's private names,
builders that import no executor, and nothing below the tasks importing them."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "deploy"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]


def _imports(module: str) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import anywhere in the module,
    at the top or inside a function: a function-level import hides a cycle, it does not end it."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(module)
                for _ in range(node.level - 1):
                    pkg = pkg.rsplit(".", 1)[0]
                base = f"{pkg}.{base}" if base else pkg
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:  # `from deploy import rolling`
                    yield f"{base}.{alias.name}", None, node.lineno
                else:
                    yield base, alias.name, node.lineno


def _graph() -> dict[str, set[str]]:
    return {
        m: {target for target, _, _ in _imports(m) if target in MODULES and target != m}
        for m in MODULES
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    assert _cycles(_graph()) == []


def _private_uses(module: str) -> Iterator[str]:
    """`from deploy.x import _name` and `x._name` where x names another deploy module."""
    aliases: dict[str, str] = {}
    for target, name, line in _imports(module):
        if target in MODULES and target != module and name and name.startswith("_"):
            yield f"{module}:{line} imports {target}.{name}"
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in MODULES:
                    aliases[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            yield f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}"


def test_no_module_reaches_into_another_modules_private_names():
    found = [use for m in MODULES for use in _private_uses(m)]
    assert found == []


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("deploy.commands")])
def test_builders_import_no_executor_and_no_engine(module):
    """Builders return argv lists; only errors, secrets and other builders are theirs to import."""
    allowed = ("deploy.commands", "deploy.errors", "deploy.secrets")
    reached = {t for t, _, _ in _imports(module) if t.startswith("deploy")}
    assert {t for t in reached if not t.startswith(allowed)} == set()


def test_nothing_below_the_tasks_imports_them():
    # the `stageflow` command sits above the tasks: it runs them as `inv` does
    above = ("deploy.demo", "deploy.cli")
    below = [m for m in MODULES if not m.startswith("deploy.tasks") and m not in above]
    found = [
        f"{m} imports {t}" for m in below for t, _, _ in _imports(m) if t.startswith("deploy.tasks")
    ]
    assert found == []


def test_the_pipelines_name_no_runtime():
    """The pipelines and the rollback lifecycle choose no runtime: runtime_for does."""
    runtimes = {m for m in MODULES if m.startswith("deploy.runtime.")} - {"deploy.runtime.base"}
    assert {"deploy.runtime.compose_runtime", "deploy.runtime.native_runtime"} <= runtimes
    pipelines = (
        "deploy.engine.deploy_pipeline",
        "deploy.engine.rollback_pipeline",
        "deploy.engine.lifecycle",
    )
    for module in pipelines:
        text = MODULES[module].read_text()
        assert '"compose"' not in text and '"native"' not in text, module
        reached = {t for t, _, _ in _imports(module)}
        assert not reached & runtimes, module


def test_every_runtime_implements_the_whole_protocol():
    """The pipelines call only the Runtime protocol; each runtime answers all of it."""
    from deploy.runtime.base import Runtime
    from deploy.runtime.compose_runtime import ComposeRuntime
    from deploy.runtime.native_runtime import NativeRuntime

    wanted = {n for n in vars(Runtime) if not n.startswith("_")} | set(Runtime.__annotations__)
    assert {"build", "switch_steps", "restart_steps", "restore", "up"} <= wanted
    for runtime in (NativeRuntime, ComposeRuntime):
        missing = sorted(n for n in wanted if not hasattr(runtime, n))
        assert missing == [], f"{runtime.__name__} lacks {missing}"


# Executables whose argv the engine builds; a list literal naming one outside the builders is an
# argv built inline. The executor is exempt: its own wrapping (runuser, rm of a tree) sits below
# the builders and may not import them.
EXECUTABLES = frozenset(
    {
        "rm",
        "mv",
        "cp",
        "tar",
        "pg_dump",
        "pg_restore",
        "psql",
        "docker",
        "git",
        "sha256sum",
        "stat",
        "chmod",
        "python",
        "python3",
        "runuser",
        "useradd",
        "kill",
    }
)
EXECUTOR = "deploy.hosts"
# (module, executable) still built inline, each with its reason; an entry no longer needed fails.
PENDING: set[tuple[str, str]] = set()


def _inline_argv(source: str) -> list[tuple[int, str, str]]:
    """(line, executable, the list's source) for each list literal whose first element is a
    string naming an executable, in the order of the source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.List) and node.elts and isinstance(node.elts[0], ast.Constant):
            first = node.elts[0].value
            if first in EXECUTABLES:
                found.append((node.lineno, node.col_offset, str(first), ast.unparse(node)))
    return [(line, exe, text) for line, _, exe, text in sorted(found)]


def test_the_inline_argv_finder_finds_one():
    source = 'host.run(["rm", "-f", path])\nargv = [\n    "pg_dump",\n    "-Fc",\n]\n'
    assert _inline_argv(source) == [
        (1, "rm", "['rm', '-f', path]"),
        (2, "pg_dump", "['pg_dump', '-Fc']"),
    ]
    assert _inline_argv('cols = ["env", "rm"]\nx = [python, "-c"]\n') == []


def test_argv_is_built_only_in_the_builders():
    """Builders in deploy/commands return argv lists; everything else calls them."""
    found = [
        (m, exe, f"{m}:{line}: {text}")
        for m, path in MODULES.items()
        if not m.startswith("deploy.commands") and m != EXECUTOR
        for line, exe, text in _inline_argv(path.read_text())
    ]
    assert [hit for m, exe, hit in found if (m, exe) not in PENDING] == []
    stale = PENDING - {(m, exe) for m, exe, _ in found}
    assert stale == set(), "built by a builder now: drop these from PENDING"


def _functions(path: Path) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _is_task(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if isinstance(target, ast.Name) and target.id == "task":
            return True
    return False


def test_functions_stay_short_and_tasks_thin():
    """No engine function over 60 lines, no task over 20: a longer one hides a second job."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for fn in _functions(path):
            size = fn.end_lineno - fn.lineno + 1  # type: ignore[operator]
            limit = 20 if _is_task(fn) else 60
            if size > limit:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{fn.lineno} {fn.name} {size}")
    assert not long, long


def test_the_size_check_sees_a_long_task(tmp_path: Path):
    body = "\n".join(f"    x{i} = {i}" for i in range(25))
    path = tmp_path / "t.py"
    path.write_text(f"@task\ndef t(c):\n{body}\n")
    (fn,) = _functions(path)
    assert _is_task(fn) and fn.end_lineno - fn.lineno + 1 > 20


def test_the_files_the_suite_hands_out_first_exist() -> None:
    """A renamed long file would silently lose its place at the head of the parallel run."""
    from tests.conftest import RUN_FIRST

    root = Path(__file__).resolve().parents[2]
    assert [p for p in RUN_FIRST if not (root / p).is_file()] == []
    assert len(set(RUN_FIRST)) == len(RUN_FIRST)
