"""Release gate: the shared types every gate module speaks (context in, outcome out) and its runner of commands."""

from __future__ import annotations

import shlex
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from deploy.commands.release import code_paths
from deploy.errors import ConfigError, DeployError
from deploy.hosts import CommandResult, run_process
from deploy.secrets import Secret, scrub

Status = Literal["passed", "failed", "error", "skipped", "timeout"]
Requirement = Literal["required", "report_only"]
STATUSES: tuple[str, ...] = ("passed", "failed", "error", "skipped", "timeout")
# A skipped gate (eval with nothing to evaluate) passes; everything else that is not "passed" blocks.
PASSING: frozenset[str] = frozenset({"passed", "skipped"})
CACHEABLE: frozenset[str] = frozenset({"passed", "failed"})


class Snapshot:
    """The commit's files, extracted while the gates start: a gate that reads them waits for
    them, one that decides from its cache alone (or never reads them) does not."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._done = threading.Event()
        self._error: BaseException | None = None

    def fill(self, extract: Callable[[Path], None]) -> None:
        """Extract into path (in a thread of its own); every waiting gate wakes either way."""
        try:
            extract(self.path)
        except BaseException as exc:
            self._error = exc
        finally:
            self._done.set()

    def wait(self) -> Path:
        self._done.wait()
        if self._error is not None:
            raise ConfigError(f"no snapshot of the commit to judge: {self._error}")
        return self.path

    @property
    def error(self) -> BaseException | None:
        return self._error


@dataclass(frozen=True)
class GateContext:
    """What one gate may look at: the release's files, the project's runtime state, its own config."""

    name: str
    root: Path  # the operator's project root: runtime state (env data dirs), dist/
    tree_dir: Path  # where the snapshot of the commit under test is (being) extracted
    ref: str
    commit: str
    tree_hash: str
    stage: str
    requirement: Requirement
    config: Mapping[str, Any]  # [gates.<name>] from stageflow.toml
    policy: Mapping[str, Any]  # the whole stageflow.toml
    report_dir: Path
    timeout_s: float
    python: str = sys.executable
    db_url: Secret | None = None
    results: Mapping[str, GateResult] = field(default_factory=dict)  # for promotion_guard only
    # every environment's secrets this machine holds: no verdict, cache entry or report keeps one
    known: tuple[Secret, ...] = field(default=(), repr=False)
    # the extraction in progress; None when tree_dir already holds the files
    snapshot: Snapshot | None = field(default=None, repr=False, compare=False)

    @property
    def tree(self) -> Path:
        """The release's files (git archive of the commit), once extracted."""
        return self.snapshot.wait() if self.snapshot is not None else self.tree_dir

    def bin(self, tool: str) -> str:
        """A tool from the interpreter's own venv when there, else the bare name for PATH."""
        candidate = Path(self.python).parent / tool
        return str(candidate) if candidate.exists() else tool

    @property
    def secrets(self) -> tuple[Secret, ...]:
        return ((self.db_url,) if self.db_url else ()) + self.known

    @property
    def service_dir(self) -> Path:
        """The service's folder in the snapshot ([service] dir; the root without one)."""
        service = self.policy.get("service")
        folder = service.get("dir", ".") if isinstance(service, Mapping) else "."
        return self.tree / (folder if isinstance(folder, str) and folder else ".")

    def code_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """base with the snapshot's own code first on PYTHONPATH: the venv the gate runs from may
        hold the service installed from another commit (`pip install .`, or `-e .` of the
        working tree), and the gate judges the commit under test, not that copy."""
        paths = [*code_paths(str(self.service_dir)), *filter(None, [base.get("PYTHONPATH")])]
        return {**base, "PYTHONPATH": ":".join(paths)}


@dataclass(frozen=True)
class Outcome:
    """What a gate decides; the runner adds the timing and the cache flag."""

    status: Status
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateResult:
    name: str
    requirement: Requirement
    status: Status
    summary: str
    duration_s: float
    cached: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passing(self) -> bool:
        return self.status in PASSING

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requirement": self.requirement,
            "status": self.status,
            "cached": self.cached,
            "duration_s": round(self.duration_s, 3),
            "summary": self.summary,
            "details": self.details,
        }


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def lines(self) -> list[str]:
        return [ln for ln in (self.stdout + "\n" + self.stderr).splitlines() if ln.strip()]


class CommandTimedOut(Exception):
    """A gate's command outlived its timeout; its process group was killed."""

    def __init__(self, argv: Sequence[str], timeout_s: float) -> None:
        super().__init__(f"`{Path(argv[0]).name}` ran longer than {timeout_s:g}s and was killed")
        self.argv = tuple(argv)
        self.timeout_s = timeout_s


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    secrets: Sequence[Secret] = (),
    tool_hint: str = "",
) -> Completed:
    """Run one gate command in its own process group; on timeout kill the whole group.

    Gates run local tools against a local snapshot, in threads: Host.run runs on invoke, whose
    timeout kills only the direct child, so a test runner's grandchildren could outlive it.
    A program that is not there is one line naming it and how to get it (tool_hint), never an
    OSError.
    """
    try:
        done = run_process(
            argv, cwd=cwd, env=env, timeout=timeout_s, input=stdin, secrets=tuple(secrets)
        )
    except OSError as exc:
        raise missing_tool(argv, exc, tool_hint) from None
    if done.timed_out:
        raise CommandTimedOut(argv, timeout_s)
    return Completed(
        done.argv,
        done.exit_code,
        scrub(done.stdout, tuple(secrets)),
        scrub(done.stderr, tuple(secrets)),
        done.duration_s,
    )


def missing_tool(argv: Sequence[str], exc: OSError, hint: str = "") -> ConfigError:
    """`ruff` not installed (or not executable): what the gate wanted to run, and what to do."""
    name = Path(argv[0]).name
    why = (
        "is not installed" if isinstance(exc, FileNotFoundError) else f"cannot run ({exc.strerror})"
    )
    where = "on PATH" if Path(argv[0]).name == argv[0] else f"at {Path(argv[0]).parent}"
    return ConfigError(
        f"`{name}` {why} {where}: the gate runs `{shlex.join([name, *argv[1:]])}`",
        hint=hint or f"install {name} into this venv, or configure the gate's command",
    )


def configured_command(ctx: GateContext, key: str = "command") -> list[str] | None:
    """[gates.<name>] <key> as an argv ("python" is this interpreter), or None when not set."""
    value = ctx.config.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise ConfigError(
            f"[gates.{ctx.name}] {key} must be a non-empty list of strings",
            hint='e.g. command = ["python", "-m", "pytest", "-q"]',
        )
    return python_first(ctx, value)


def python_first(ctx: GateContext, argv: Sequence[str]) -> list[str]:
    """ "python" means the gate's own interpreter (the project's venv); a bare tool name is taken
    from that venv's bin when it is there, so the gate needs no activated venv."""
    head = argv[0]
    if head in ("python", "python3"):
        head = ctx.python
    elif "/" not in head:
        head = ctx.bin(head)
    return [head, *argv[1:]]


def git(argv: Sequence[str], *, timeout_s: float = 60) -> CommandResult:
    """A read-only git query of the operator's repository; its exit code is the caller's to judge."""
    res = run_process(argv, timeout=timeout_s)
    if res.timed_out:  # a hung git must not read as "no such ref" or "nothing changed"
        raise DeployError(f"`{shlex.join(argv)}` ran longer than {timeout_s:g}s and was killed")
    return res


def first_lines(lines: Sequence[str], limit: int = 10) -> list[str]:
    return [ln.rstrip()[:300] for ln in lines[:limit]]
