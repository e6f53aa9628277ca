"""Docs freshness: every task, make target, link, anchor and env key the docs name exists, and the reverse."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.errors import ConfigError
from deploy.hosts import run_process

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_INV = re.compile(r"(?:^|[\s;&|(/`$])inv\s+((?:-[-\w=]*\s+)*)([A-Za-z][\w.-]*)")
_MAKE = re.compile(r"(?:^|[\s;&|(`])make\s+((?:-[-\w=]*\s+|[A-Z_]+=\S*\s+)*)([a-z][\w.-]*)")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MAKE_RULE = re.compile(r"^([A-Za-z0-9][\w.\- ]*?)\s*::?(?!=)")
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Z][A-Z0-9_]*)\s*=")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.message}"
            if self.line
            else f"{self.file}: {self.message}"
        )


# Fences whose lines are commands a reader types: `inv x` and `make x` there must exist. In a fence
# of another language (a Python docstring's "make sure", a YAML value) they are words, not commands.
_SHELL_FENCES = {"", "sh", "bash", "zsh", "ksh", "fish", "shell", "console", "shell-session",
                 "sh-session", "terminal"}  # fmt: skip


@dataclass(frozen=True)
class DocLine:
    file: Path
    line: int
    text: str
    code: bool  # inside a fenced block
    commands: bool = True  # its code may name tasks and targets: prose, or a shell fence


def doc_files(root: Path) -> list[Path]:
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    return files + sorted((root / "docs").glob("*.md"))


def read_lines(path: Path) -> list[DocLine]:
    out, fenced, shell = [], False, True
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        m = _FENCE.match(text)
        if m:
            fenced = not fenced
            info = text.strip()[len(m[1]) :].strip().strip("{}.").split()
            shell = not fenced or (info[0].lower() if info else "") in _SHELL_FENCES
            continue
        out.append(DocLine(path, number, text, fenced, shell))
    return out


# a shell comment after a command (`pip install wheel  # make sure it is there`): words, not commands
_TRAILING_COMMENT = re.compile(r"(?<=\S)\s+#.*$")


def code_texts(line: DocLine) -> list[str]:
    """The parts of a line that are code: the whole line in a fence (less a comment after its
    command), else its backtick spans."""
    if line.code:
        return [_TRAILING_COMMENT.sub("", line.text)]
    return [m[2] for m in _INLINE_CODE.finditer(line.text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in read_lines(path):
        if line.code:
            continue
        m = _HEADING.match(line.text)
        if not m:
            continue
        base = slug(m[2].replace("`", ""))
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def make_targets(makefile: Path) -> set[str]:
    if not makefile.is_file():
        return set()
    targets: set[str] = set()
    for text in makefile.read_text(encoding="utf-8").splitlines():
        if text.startswith(("\t", "#", " ")) or "$" in text.split(":")[0]:
            continue
        m = _MAKE_RULE.match(text)
        if m:
            targets.update(t for t in m[1].split() if not t.startswith(".") and "%" not in t)
    return targets


# invoke's own JSON listing mixes raw function names ("history_") with display names, so ask the
# namespace itself, as `inv --list` does: dotted names plus their aliases.
_LIST_TASKS = (
    "import json, sys\n"
    "sys.path.insert(0, '.')\n"
    "from tasks import ns\n"
    "names = ns.task_names\n"
    "print(json.dumps(sorted(set(names) | {a for v in names.values() for a in v})))\n"
)


def invoke_tasks(root: Path, *, python: str = sys.executable, timeout_s: float = 60) -> set[str]:
    """The project's tasks: tasks.ns imported by the project's interpreter in the project's root."""
    if not (root / "tasks.py").is_file():
        return set()
    res = run_process([python, "-c", _LIST_TASKS], cwd=root, timeout=timeout_s)
    if res.exit_code != 0:
        tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise ConfigError(
            f"tasks.py does not load in {root.name}: {tail[0]}",
            hint="fix tasks.py so that `inv --list` works",
        )
    return set(json.loads(res.stdout))


def env_keys(root: Path) -> set[str]:
    keys: set[str] = set()
    for path in sorted((root / "env").glob("*.env")):
        for text in path.read_text(encoding="utf-8").splitlines():
            m = _ENV_LINE.match(text)
            if m:
                keys.add(m[1])
    return keys


def _link_problems(line: DocLine, root: Path, target: str) -> list[Problem]:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
        return []  # external: not checked (no network)
    rel = str(line.file.relative_to(root))
    path_part, _, anchor = target.partition("#")
    path_part = path_part.partition("?")[0]  # `?raw=true` asks the host, names no other file
    # a path from `/` is the repository's, as the forges render a README's links
    folder = root if path_part.startswith("/") else line.file.parent
    dest = line.file if not path_part else (folder / path_part.lstrip("/")).resolve()
    if path_part and not dest.exists():
        return [Problem(rel, line.line, f"broken link: {target} ({path_part} does not exist)")]
    if anchor and dest.is_file() and dest.suffix.lower() == ".md" and anchor not in anchors(dest):
        return [Problem(rel, line.line, f"broken anchor: {target} (no heading #{anchor})")]
    return []


@dataclass
class _DocUse:
    """What the docs name: the tasks and make targets they run, and every word of their code."""

    tasks: set[str] = field(default_factory=set)
    targets: set[str] = field(default_factory=set)
    mentioned: set[str] = field(default_factory=set)


def complete_docs(root: Path) -> bool:
    """`[docs] complete` of the project's stageflow.toml; true when it says nothing.

    True: the docs must also name every task and make target, and docs/ENVIRONMENT.md describe
    every env key (stageflow's own repository). A service's repository sets it false: its docs
    are its own, stageflow's tasks and keys are described in stageflow's docs."""
    path = root / "stageflow.toml"
    if not path.is_file():
        return True
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("docs", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"stageflow.toml: {exc}", hint="fix the TOML syntax") from None
    value = table.get("complete", True) if isinstance(table, dict) else None
    if not isinstance(value, bool):
        raise ConfigError("stageflow.toml [docs] complete must be true or false")
    return value


def check_docs(
    root: Path,
    *,
    tasks: Iterable[str] | None = None,
    keys: Iterable[str] | None = None,
    python: str = sys.executable,
    env_namespaces: Iterable[str] = ("dev", "staging", "prod"),
    complete: bool | None = None,
) -> list[Problem]:
    """All problems, in file order. tasks/keys default to what the project itself declares;
    complete to the project's `[docs] complete` (see complete_docs)."""
    if complete is None:
        complete = complete_docs(root)
    task_names = set(tasks) if tasks is not None else invoke_tasks(root, python=python)
    env_namespaces = set(env_namespaces)
    if keys is None:
        from deploy.config import ENV_KEYS, SECRET_KEYS

        keys = set(ENV_KEYS) | set(SECRET_KEYS)
    wanted_keys = set(keys) | env_keys(root)
    targets = make_targets(root / "Makefile")
    use = _DocUse()
    problems: list[Problem] = []
    for path in doc_files(root):
        for line in read_lines(path):
            problems += _line_problems(line, root, task_names, targets, use)
    if complete:
        problems += _undocumented(task_names, targets, use, env_namespaces)
        problems += _env_doc_problems(root, wanted_keys)
    return problems


def _line_problems(
    line: DocLine, root: Path, task_names: set[str], targets: set[str], use: _DocUse
) -> list[Problem]:
    """A doc line's unknown tasks and targets (noting what it uses), then its broken links."""
    rel = str(line.file.relative_to(root))
    problems: list[Problem] = []
    for code in code_texts(line):
        use.mentioned.update(code.split())
        for m in _INV.finditer(code):
            name = m[2]
            use.tasks.add(name)
            if name not in task_names and line.commands:
                problems.append(Problem(rel, line.line, f"`inv {name}`: no such task"))
        for m in _MAKE.finditer(code):
            name = m[2]
            use.targets.add(name)
            if name not in targets and line.commands:
                problems.append(Problem(rel, line.line, f"`make {name}`: no such Makefile target"))
    if line.code:
        return problems
    prose = _INLINE_CODE.sub("", line.text)
    for m in _LINK.finditer(prose):
        problems += _link_problems(line, root, m[1])
    m = _REF_DEF.match(prose)
    if m:
        problems += _link_problems(line, root, m[1])
    return problems


def _undocumented(
    task_names: set[str], targets: set[str], use: _DocUse, env_namespaces: set[str]
) -> list[Problem]:
    """Tasks and make targets that no doc names."""
    documented = use.tasks | use.mentioned
    # dev, staging and prod carry the same tasks: `inv staging.up` documents dev.up and prod.up too.
    leaves = {
        n.partition(".")[2]
        for n in documented
        if "." in n and (n.partition(".")[0] in env_namespaces or re.match(r"^[<{]\w+[>}]\.", n))
    }
    problems = []
    for name in sorted(task_names - documented):
        prefix, _, leaf = name.partition(".")
        if prefix in env_namespaces and leaf in leaves:
            continue
        problems.append(
            Problem("docs", 0, f"task `inv {name}` is not documented in README.md or docs/*.md")
        )
    for name in sorted(targets - use.targets - use.mentioned):
        problems.append(
            Problem("docs", 0, f"make target `{name}` is not documented in README.md or docs/*.md")
        )
    return problems


def _env_doc_problems(root: Path, wanted_keys: set[str]) -> list[Problem]:
    """docs/ENVIRONMENT.md exists and describes every env key."""
    env_doc = root / "docs" / "ENVIRONMENT.md"
    if not env_doc.is_file():
        return [Problem("docs/ENVIRONMENT.md", 0, "does not exist; it must describe every env key")]
    text = env_doc.read_text(encoding="utf-8")
    return [
        Problem("docs/ENVIRONMENT.md", 0, f"env key {key} is not described")
        for key in sorted(wanted_keys)
        if not re.search(rf"(?<![A-Z0-9_]){re.escape(key)}(?![A-Z0-9_])", text)
    ]


def input_files(root: Path) -> list[Path]:
    """What the check reads, for the release gate's cache key."""
    return [
        *doc_files(root),
        root / "Makefile",
        root / "tasks.py",
        root / "stageflow.toml",
        *sorted((root / "env").glob("*.env")),
    ]
