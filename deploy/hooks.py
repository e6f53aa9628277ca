"""Operator hooks: the project's own executables and commands, run at named points of a deploy.

Sources, in this order, for one point (say pre-deploy):

1. `deploy/hooks/pre-deploy`, an executable file;
2. `deploy/hooks/pre-deploy.d/*`, executable files, in name order;
3. `[hooks] pre-deploy = [["cmd", "arg"], ...]` in stageflow.toml, or `[hooks.<env>] pre-deploy`,
   which replaces the shared list for that environment.

A file without the executable bit is skipped: that is how a hook is switched off. Hooks run on the
operator's machine with the project root as working directory, in their own process group (a
timeout kills the hook and everything it started, even what left its session: each run marks its
processes' environment), and see only PATH, HOME, LANG, TZ and STAGEFLOW_WORKING_TZ from the
operator's environment plus the STAGEFLOW_* context below, so a secret the operator exported
(STAGEFLOW_PROD_POSTGRES_PASSWORD, ...) never reaches a hook.

A failing or timed-out hook at a pre- point stops the operation (HookFailed); at any other point it
is returned as a HookResult with ok=False for the caller to record, and never raises.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploy.config import NAMESPACES, Project
from deploy.errors import ConfigError, DeployError
from deploy.hosts import Host, run_process
from deploy.policy.actors import Actor
from deploy.secrets import scrub
from deploy.state import Layout, audit

POINTS = (
    "pre-deploy",
    "post-migrate",
    "post-deploy",
    "pre-rollback",
    "post-rollback",
    "on-failure",
)
HOOKS_DIR = Path("deploy") / "hooks"
DEFAULT_TIMEOUT_S = 30.0
KILL_GRACE_S = 2.0  # between TERM and KILL of a hook's process group
OUTPUT_TAIL_LINES = 20
OUTPUT_TAIL_CHARS = 4000

# What a caller may tell a hook; each becomes STAGEFLOW_<KEY upper>. env, environment, hosts and
# point are filled in by run() itself.
CONTEXT_KEYS = (
    "release",
    "commit",
    "ref",
    "actor",
    "actor_kind",
    "status",
    "previous",
    "reason",
)
# The only variables a hook inherits from the operator's environment: enough to find programs
# and format dates, nothing that could carry a credential.
INHERITED = ("PATH", "HOME", "LANG", "TZ", "STAGEFLOW_WORKING_TZ")
# Set in every hook run's environment to a value of its own; what carries it belongs to that run.
RUN_MARK = "STAGEFLOW_HOOK_RUN"


class HookFailed(DeployError):
    """A pre- hook failed or timed out, so the operation it guards did not start."""

    def __init__(
        self, message: str, *, hint: str | None = None, results: list[HookResult] | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.results = results or []


@dataclass(frozen=True)
class Hook:
    point: str
    name: str  # what the operator sees: a path under deploy/hooks or "stageflow.toml: cmd"
    argv: tuple[str, ...]
    source: str  # file | stageflow.toml
    timeout_s: float


@dataclass(frozen=True)
class HookResult:
    point: str
    name: str
    argv: tuple[str, ...]
    exit_code: int | None  # None when it could not start or was killed at its timeout
    timed_out: bool
    duration_s: float
    output: str  # the tail of stdout and stderr together, scrubbed of every environment's secrets

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def last_line(self) -> str:
        lines = [ln.strip() for ln in self.output.splitlines() if ln.strip()]
        return lines[-1] if lines else "(no output)"

    def describe(self) -> str:
        if self.timed_out:
            how = "timed out"
        elif self.exit_code is None:
            how = "could not start"
        else:
            how = f"exited {self.exit_code}"
        return f"{self.point} hook {self.name} {how}: {self.last_line}"

    def to_dict(self) -> dict[str, Any]:
        """For history notes and audit records."""
        return {**asdict(self), "argv": list(self.argv), "ok": self.ok}


def _settings(proj: Project, env: str) -> tuple[dict[str, list[list[str]]], float]:
    """Commands per point and the timeout, after the environment's table is laid over [hooks]."""
    table = proj.policy.get("hooks", {})
    where = "stageflow.toml [hooks]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table", hint="write [hooks] on its own line")
    for key in table:
        if key not in POINTS and key not in NAMESPACES and key != "timeout_s":
            raise ConfigError(
                f"{where}: unknown key {key!r}",
                hint=f"points are {', '.join(POINTS)}; per environment use [hooks.<env>]",
            )
    own = table.get(env, {})
    if not isinstance(own, dict):
        raise ConfigError(f"{where}.{env} must be a table")
    for key in own:
        if key not in POINTS and key != "timeout_s":
            raise ConfigError(
                f"{where}.{env}: unknown key {key!r}", hint=f"points are {', '.join(POINTS)}"
            )
    merged = {**{k: v for k, v in table.items() if k not in NAMESPACES}, **own}
    timeout = merged.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"{where}: timeout_s must be a positive number of seconds")
    commands: dict[str, list[list[str]]] = {}
    for point in POINTS:
        value = merged.get(point, [])
        if not isinstance(value, list) or not all(
            isinstance(cmd, list) and cmd and all(isinstance(a, str) and a for a in cmd)
            for cmd in value
        ):
            raise ConfigError(
                f"{where}: {point} must be a list of commands",
                hint=f'{point} = [["./scripts/check.sh", "--quick"]]',
            )
        commands[point] = value
    return commands, float(timeout)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK) and not path.name.startswith(".")


def plan(proj: Project, env: str, point: str) -> list[Hook]:
    """The hooks run() would run at point for env, in order; for --dry-run listings."""
    if point not in POINTS:
        raise ValueError(f"unknown hook point {point!r}")  # a caller's bug, not the operator's
    commands, timeout = _settings(proj, env)
    base = proj.root / HOOKS_DIR
    hooks: list[Hook] = []
    single = base / point
    if _executable(single):
        hooks.append(Hook(point, str(HOOKS_DIR / point), (str(single),), "file", timeout))
    directory = base / f"{point}.d"
    if directory.is_dir():
        for path in sorted(directory.iterdir(), key=lambda p: p.name):
            if _executable(path):
                name = str(HOOKS_DIR / f"{point}.d" / path.name)
                hooks.append(Hook(point, name, (str(path),), "file", timeout))
    for cmd in commands[point]:
        hooks.append(
            Hook(point, f"stageflow.toml: {cmd[0]}", tuple(cmd), "stageflow.toml", timeout)
        )
    return hooks


def plan_all(proj: Project, env: str) -> list[Hook]:
    """Every point's hooks for env, in point order; what `--dry-run` lists."""
    return [hook for point in POINTS for hook in plan(proj, env, point)]


def environment(
    proj: Project,
    env: str,
    point: str,
    context: Mapping[str, Any],
    *,
    process_env: Mapping[str, str],
) -> dict[str, str]:
    """The whole environment a hook sees; context values are scrubbed of every env's secrets."""
    unknown = sorted(set(context) - set(CONTEXT_KEYS))
    if unknown:
        raise ValueError(f"unknown hook context {unknown}; known: {CONTEXT_KEYS}")
    cfg = proj.env(env)
    secrets = proj.known_secrets()
    hosts = proj.policies[env].hosts if env in proj.policies else ()
    out = {k: process_env[k] for k in INHERITED if k in process_env}
    out.setdefault("PATH", os.defpath)
    context = dict(context)
    who = context.get("actor")
    if isinstance(who, Actor):  # the name and the kind travel in separate variables
        context["actor"] = who.name
        context.setdefault("actor_kind", who.kind)
    values: dict[str, Any] = {
        "env": env,
        "environment": cfg.environment,
        "hosts": ",".join(getattr(h, "address", str(h)) for h in hosts),
        "point": point,
        **{k: context.get(k) for k in CONTEXT_KEYS},
    }
    for key, value in values.items():
        out[f"STAGEFLOW_{key.upper()}"] = scrub("" if value is None else str(value), secrets)
    return out


def _tail(text: str, secrets: tuple[Any, ...]) -> str:
    lines = text.splitlines()[-OUTPUT_TAIL_LINES:]
    return scrub("\n".join(lines)[-OUTPUT_TAIL_CHARS:], secrets)


def _marked(needle: bytes) -> list[int]:
    """The processes on this machine whose environment carries needle (VAR=value)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:  # gone meanwhile, or not ours to read (then not the hook's either)
            continue
    return found


def kill_leftovers(run_mark: str, *, grace_s: float = KILL_GRACE_S) -> int:
    """TERM, then after grace_s KILL, every process still carrying this hook run's mark.

    Killing the hook's process group misses what left it (setsid, a double fork): those keep the
    environment they were started with, mark included, so a scan of /proc finds them wherever they
    went. Returns how many there were."""
    needle = f"{RUN_MARK}={run_mark}".encode()
    first = _marked(needle)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _marked(needle):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while _marked(needle) and time.monotonic() < deadline:
            time.sleep(0.05)
    return len(first)


def _run_one(hook: Hook, *, cwd: Path, env: dict[str, str], secrets: tuple[Any, ...]) -> HookResult:
    start = time.monotonic()
    run_mark = uuid.uuid4().hex
    finished = False
    try:
        # A hook is the operator's own program on the operator's machine, not a command on an
        # environment's host: it runs here, in its own process group (to kill what it starts on
        # timeout) and with a clean environment that marks every process it starts.
        done = run_process(
            hook.argv,
            cwd=cwd,
            env={**env, RUN_MARK: run_mark},
            timeout=hook.timeout_s,
            secrets=secrets,
            merge_stderr=True,
            kill_grace_s=KILL_GRACE_S,
        )
        finished = not done.timed_out
    except OSError as exc:
        return HookResult(
            hook.point,
            hook.name,
            hook.argv,
            None,
            False,
            round(time.monotonic() - start, 3),
            scrub(f"cannot run {hook.argv[0]}: {exc.strerror or exc}", secrets),
        )
    finally:
        if not finished:  # timed out or interrupted: what escaped the group goes as well
            kill_leftovers(run_mark)
    output = _tail(done.stdout, secrets)
    if done.timed_out:
        output = (output + "\n" if output else "") + f"killed after {hook.timeout_s:g}s"
    return HookResult(
        hook.point,
        hook.name,
        hook.argv,
        None if done.timed_out else done.exit_code,
        done.timed_out,
        round(time.monotonic() - start, 3),
        output,
    )


def run(
    proj: Project,
    env: str,
    point: str,
    context: Mapping[str, Any],
    *,
    process_env: Mapping[str, str] | None = None,
) -> list[HookResult]:
    """Run point's hooks in order. A failing pre- hook raises HookFailed; others are returned."""
    try:
        hooks = plan(proj, env, point)
    except ConfigError as err:
        if point.startswith("pre-"):
            raise
        # after the fact a malformed [hooks] table must not mask the outcome being recorded
        return [HookResult(point, "stageflow.toml [hooks]", (), None, False, 0.0, err.line())]
    if not hooks:
        return []
    hook_env = environment(
        proj, env, point, context, process_env=os.environ if process_env is None else process_env
    )
    # every environment's: a staging hook that prints prod's password leaves no trace of it
    secrets = proj.known_secrets()
    results: list[HookResult] = []
    for hook in hooks:
        result = _run_one(hook, cwd=proj.root, env=hook_env, secrets=secrets)
        results.append(result)
        if not result.ok and point.startswith("pre-"):
            raise HookFailed(
                result.describe(),
                hint=f"fix the cause, or switch the hook off: chmod -x it or drop it from [hooks] "
                f"({env} was not changed)",
                results=results,
            )
    return results


def failures(results: list[HookResult]) -> str:
    """One line for a history note: the failed post- hooks, or empty when all passed."""
    return "; ".join(r.describe() for r in results if not r.ok)


def record_failures(
    host: Host, layout: Layout, results: list[HookResult], *, actor: str, history_id: str = ""
) -> str:
    """Audit each failed hook ("hook-failed"); the one-line note for the history entry."""
    for r in results:
        if not r.ok:
            audit(
                host,
                layout,
                actor=actor,
                action="hook-failed",
                history_id=history_id,
                **{k: v for k, v in r.to_dict().items() if k != "ok"},
            )
    return failures(results)
