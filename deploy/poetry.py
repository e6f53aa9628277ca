"""A poetry project's dependencies as pip reads them: the main group of pyproject.toml as
requirements, and every version poetry.lock pins as constraints, so pip installs what the lock
holds without building the project itself (an application poetry manages is seldom a package
poetry could build: `package-mode = false`, or no package named after the project)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from typing import Any

_SEPARATORS = re.compile(r"[-_.]+")


def _load(text: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _table(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        data = data.get(key) if isinstance(data.get(key), dict) else {}
    return data


def is_poetry(pyproject: str) -> bool:
    """The project's dependencies are poetry's: it has a [tool.poetry] table."""
    return "poetry" in _table(_load(pyproject), "tool")


def _module_name(name: str) -> str:
    return _SEPARATORS.sub("_", name).lower()


def builds_a_package(pyproject: str, exists: Callable[[str], bool]) -> bool:
    """poetry could build the project itself: package mode, and the packages it declares or one
    named after the project (`my_app/`, `src/my_app/`, `my_app.py`); exists(path) answers for a
    path relative to the project's folder."""
    data = _load(pyproject)
    poetry = _table(data, "tool", "poetry")
    if poetry.get("package-mode") is False:
        return False
    if poetry.get("packages"):
        return True
    name = poetry.get("name") or _table(data, "project").get("name")
    if not isinstance(name, str):
        return False
    module = _module_name(name)
    candidates = (f"{module}/__init__.py", f"src/{module}/__init__.py", f"{module}.py")
    return any(exists(path) for path in candidates)


def _requirement(name: str, spec: Any) -> str | None:
    """One main dependency of [tool.poetry.dependencies] as a requirement line, without a
    version (the lock's constraint pins it): `pydantic[email]`, `lib @ git+https://...@v1`."""
    if name.lower() == "python":
        return None
    if isinstance(spec, list):  # one entry per Python or platform: pip's markers choose
        spec = spec[0] if spec and isinstance(spec[0], dict) else {}
    spec = spec if isinstance(spec, dict) else {}
    if spec.get("optional"):
        return None  # an extra of the project itself, installed only when asked for
    extras = spec.get("extras") or []
    line = f"{name}[{','.join(extras)}]" if extras else name
    if spec.get("git"):
        ref = spec.get("rev") or spec.get("tag") or spec.get("branch")
        line += f" @ git+{spec['git']}" + (f"@{ref}" if ref else "")
    elif spec.get("path"):
        line = spec["path"]
    elif spec.get("url"):
        line += f" @ {spec['url']}"
    markers = spec.get("markers")
    return f"{line} ; {markers}" if isinstance(markers, str) and markers else line


def requirements(pyproject: str) -> str:
    """The project's main dependencies, one requirement a line: [project] dependencies and
    [tool.poetry.dependencies] (but python and the project's own optional extras)."""
    data = _load(pyproject)
    lines = [d for d in _table(data, "project").get("dependencies") or [] if isinstance(d, str)]
    for name, spec in _table(data, "tool", "poetry", "dependencies").items():
        line = _requirement(name, spec)
        if line:
            lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def constraints(lock: str) -> str:
    """name==version for every package of poetry.lock that comes from a package index; a name
    locked at more than one version keeps the lock's markers, or is left to pip without them."""
    packages = [p for p in _load(lock).get("package") or [] if isinstance(p, dict)]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for package in packages:
        source = package.get("source") if isinstance(package.get("source"), dict) else {}
        if source.get("type") in ("git", "directory", "file", "url"):
            continue  # a constraint can only pin a version of an index's distribution
        if isinstance(package.get("name"), str) and isinstance(package.get("version"), str):
            by_name.setdefault(_module_name(package["name"]), []).append(package)
    lines = []
    for group in by_name.values():
        for package in group:
            pin = f"{package['name']}=={package['version']}"
            markers = package.get("markers")
            markers = markers.get("main") if isinstance(markers, dict) else markers
            if len(group) == 1:
                lines.append(pin)
            elif isinstance(markers, str) and markers:
                lines.append(f"{pin} ; {markers}")
    return "".join(f"{line}\n" for line in sorted(lines))
