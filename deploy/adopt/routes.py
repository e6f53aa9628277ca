"""The full path of a route a router or blueprint declares: its own prefix, and the prefixes it
is included under (`app.include_router(api, prefix="/api/v1")`, `register_blueprint(bp,
url_prefix=...)`), up to the app object. Read from the source only; a prefix the source does not
spell as a string (or as a name bound to one string) leaves the path unknown."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_ROUTER_MADE = re.compile(r"^(\w+)\s*(?::[^=\n]+)?=\s*(?:[\w.]+\.)?(?:APIRouter|Blueprint)\(", re.M)
_INCLUDED = re.compile(r"\b(\w+)\.(include_router|register_blueprint)\(\s*([\w.]+)")
_ROUTE_ON = re.compile(r"^\s*@(\w+)\.(?:get|route|api_route|head)\(\s*[\"'](/[\w./-]*)[\"']", re.M)
_PREFIX_ARG = re.compile(r"\b(?:url_)?prefix\s*=\s*(?:[\"']([^\"'\n]*)[\"']|([A-Za-z_][\w.]*))")
_FROM_IMPORT = re.compile(r"^\s*from\s+(\.*[\w.]*)\s+import\s+(?:\(([^)]*)\)|([^\n]+))", re.M)
_IMPORT_AS = re.compile(r"^\s*import\s+([\w.]+)\s+as\s+(\w+)", re.M)

Ref = tuple[str, str]  # (module, name in it)


@dataclass(frozen=True)
class Module:
    name: str
    text: str
    package: bool  # an __init__.py: its relative imports start from itself


def _call_args(text: str, start: int) -> str:
    """The argument text of the call whose "(" is at or after start, up to its closing ")"."""
    open_at = text.find("(", start)
    depth = 0
    for i in range(open_at, min(len(text), open_at + 2000)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_at + 1 : i]
    return ""


def _constant(name: str, modules: Iterable[Module]) -> str | None:
    """The one string a name (a settings field's default, a module constant) is bound to."""
    bound = re.compile(rf"^\s*{re.escape(name)}\s*(?::[^=\n]+)?=\s*[\"']([^\"'\n]*)[\"']\s*$", re.M)
    values = {m[1] for mod in modules for m in bound.finditer(mod.text)}
    return values.pop() if len(values) == 1 else None


def _prefix(args: str, modules: Iterable[Module]) -> str | None:
    m = _PREFIX_ARG.search(args)
    if not m:
        return ""
    if m[1] is not None:
        return m[1]
    return _constant(m[2].rsplit(".", 1)[-1], modules)


def _imports(mod: Module) -> dict[str, str]:
    """Each local name a module imports, as the dotted name it stands for."""
    names: dict[str, str] = {}
    package = mod.name if mod.package else mod.name.rpartition(".")[0]
    for m in _FROM_IMPORT.finditer(mod.text):
        source = m[1]
        if source.startswith("."):
            dots = len(source) - len(source.lstrip("."))
            base = package.split(".") if package else []
            base = base[: len(base) - (dots - 1)] if dots > 1 else base
            source = ".".join([*base, source.lstrip(".")] if source.lstrip(".") else base)
        for part in re.sub(r"#[^\n]*", "", m[2] or m[3]).replace("\n", " ").split(","):
            words = part.split()
            if not words or not words[0].isidentifier():
                continue
            local = words[2] if len(words) == 3 and words[1] == "as" else words[0]
            names[local] = f"{source}.{words[0]}" if source else words[0]
    for m in _IMPORT_AS.finditer(mod.text):
        names[m[2]] = m[1]
    return names


def _resolve(expr: str, mod: Module, modules: dict[str, Module]) -> Ref | None:
    """The router an expression names in a module: `router` (its own or imported) or
    `routes.utils.router` (through an imported module)."""
    head, _, rest = expr.partition(".")
    imported = _imports(mod).get(head)
    if imported is None:
        return (mod.name, expr) if not rest else None
    dotted = f"{imported}.{rest}" if rest else imported
    owner, _, name = dotted.rpartition(".")
    return (owner, name) if owner in modules else None


def router_routes(modules: dict[str, Module], app: Ref) -> list[tuple[str, str]]:
    """(the route's own path, its full path or "" when unknown) of each route declared on a
    router or blueprint of the service."""
    made: dict[Ref, str | None] = {}
    for mod in modules.values():
        for m in _ROUTER_MADE.finditer(mod.text):
            made[(mod.name, m[1])] = _prefix(_call_args(mod.text, m.end() - 1), modules.values())
    parents: dict[Ref, tuple[Ref, str | None, bool]] = {}
    for mod in modules.values():
        for m in _INCLUDED.finditer(mod.text):
            child = _resolve(m[3], mod, modules)
            if child is not None and child not in parents:
                args = _call_args(mod.text, m.start())
                # FastAPI puts an include's prefix before the router's own; Flask's url_prefix
                # at registration replaces the blueprint's
                replaces = m[2] == "register_blueprint" and _PREFIX_ARG.search(args) is not None
                parents[child] = ((mod.name, m[1]), _prefix(args, modules.values()), replaces)
    found: list[tuple[str, str]] = []
    for mod in modules.values():
        for m in _ROUTE_ON.finditer(mod.text):
            ref = (mod.name, m[1])
            if ref == app or ref not in made:
                continue
            found.append((m[2], _full_path(ref, m[2], made, parents, app)))
    return found


def _full_path(
    ref: Ref,
    path: str,
    made: dict[Ref, str | None],
    parents: dict[Ref, tuple[Ref, str | None, bool]],
    app: Ref,
) -> str:
    parts = [path]
    seen: set[Ref] = set()
    while ref != app:
        own = made.get(ref, "")
        up = parents.get(ref)
        if up is None or ref in seen:
            return ""
        seen.add(ref)
        ref, outer, replaces = up
        if outer is None or (own is None and not replaces):
            return ""
        parts[:0] = [outer] if replaces else [outer, own or ""]
    joined = "/".join(p.strip("/") for p in parts if p.strip("/"))
    return "/" + joined + ("/" if path.endswith("/") and joined else "")


def modules_of(files: Iterable[tuple[str, Path, str]]) -> dict[str, Module]:
    return {name: Module(name, text, path.name == "__init__.py") for name, path, text in files}
