"""Test data for a non-production environment, written by the service's own seed command.

`[service] seed` is a command of the service (an argv, run without a shell), because only the
service knows its tables. It runs in the serving release on the environment's primary host (this
machine or one reached over SSH), in the release's venv (PATH `<release>/.venv/bin` first, cwd the
service's dir in the release), through releases.service_command; before the first deploy it runs in
the working tree on this machine with the Python that runs stageflow. It gets the service's
settings as its environment (DATABASE_URL with the password, PG*, REDIS_URL, the service's own
keys): never on its argv, never on a command line, never in a log. "{size}" in the argv becomes the operator's --size, which the command
also finds in STAGEFLOW_SEED_SIZE. When its last line of output is a JSON object, its keys are
reported (the reference service prints {"deleted": n, "inserted": n, ...}).

A service without a seed command is a valid service: init and the data reset skip the step, and
`inv <env>.seed` refuses with exit 2 (asked for test data, it has none to give).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy import releases
from deploy.commands.release import code_paths
from deploy.config import EnvConfig, Project
from deploy.errors import GuardRefused, ServiceError, UsageError
from deploy.hosts import CommandResult, Host, run_process
from deploy.secrets import scrub
from deploy.service import Service
from deploy.settings import service_settings
from deploy.state import Layout

_SIZE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
SIZE_PLACEHOLDER = "{size}"
TIMEOUT_S = 3600
# what the command inherits from the operator's environment: enough to find programs and run
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
SUMMARY_CHARS = 200


@dataclass(frozen=True)
class SeedResult:
    env: str
    size: str
    seconds: float
    where: str  # "release <id>" or "the working tree"
    summary: str  # what the command reported, in one line
    reported: tuple[tuple[str, Any], ...] = ()  # the keys of its closing JSON object

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "size": self.size,
            "seconds": round(self.seconds, 3),
            "where": self.where,
            "output": self.summary,
            **dict(self.reported),
        }


@dataclass(frozen=True)
class Place:
    """Where the seed command runs: its working directory and the bin dir put first on PATH."""

    cwd: str
    bin_dir: str
    release: str  # the serving release's id, "" in the working tree

    @property
    def label(self) -> str:
        return f"release {self.release}" if self.release else "the working tree"


def check_size(size: str) -> str:
    """A size is a word the service's command understands (small, medium, large for the
    reference service); stageflow only keeps it off the shell's special characters."""
    if not _SIZE.match(size):
        raise UsageError(
            f"seed size {size!r} is not a plain word",
            hint="give lowercase letters, digits, '-' or '_', e.g. --size small",
        )
    return size


def require_command(service: Service) -> None:
    if not service.seed:
        raise UsageError(
            "[service] seed is empty: this service has no seed command",
            hint='add e.g. seed = ["python", "-m", "shop.seed", "--size", "{size}"] '
            "to [service] in stageflow.toml",
        )


def refuse_production(env: EnvConfig) -> None:
    if env.environment == "production":
        raise GuardRefused(
            f"{env.name} is production: seed data is never written there",
            hint="seed staging or dev; prod data reaches staging only through refresh --anonymize",
        )


def seed_argv(service: Service, size: str) -> list[str]:
    """The seed command with {size} filled in."""
    return [arg.replace(SIZE_PLACEHOLDER, size) for arg in service.seed]


def primary(proj: Project, env: EnvConfig) -> tuple[Host, Layout]:
    """Where the serving release is: env's own DATA_DIR here in the plain setting (env may point
    at a scratch database), else the environment's primary host."""
    from deploy.engine import group

    if not group.is_rolling(proj, env.name):
        return Host(secrets=env.secret_values()), Layout(str(env.data_dir))
    return group.primary(proj, env.name)


def serving_release(host: Host, layout: Layout) -> str:
    """The serving release when it has a venv to run the command in; "" otherwise."""
    current = releases.current_release(host, layout)
    if current and host.exists(f"{layout.release(current)}/.venv/bin"):
        return current
    return ""


def place(
    proj: Project, env: EnvConfig, host: Host | None = None, layout: Layout | None = None
) -> Place:
    """The serving release (on host, this machine by default) when it has one with a venv, else
    the working tree."""
    layout = layout or Layout(str(env.data_dir))
    current = serving_release(host or Host(), layout)
    if current:
        release_dir = layout.release(current)
        bin_dir = f"{release_dir}/.venv/bin"
        return Place(proj.service.path_in_release(release_dir), bin_dir, current)
    # before the first deploy: the Python running stageflow has the service's dependencies
    bin_dir = str(Path(sys.executable).parent)
    return Place(proj.service.path_in_release(str(proj.root)), bin_dir, "")


def command_environment(
    env: EnvConfig,
    service: Service,
    where: Place,
    *,
    size: str,
    process_env: Mapping[str, str],
) -> dict[str, str]:
    """The whole environment the seed command sees: the service's settings, PATH, the size."""
    out = {k: process_env[k] for k in INHERITED if k in process_env}
    out["PATH"] = os.pathsep.join([where.bin_dir, out.get("PATH") or os.defpath])
    out.update(service_settings(env, service, release=where.release))
    # the tree's own code first, not a copy of the service an earlier `pip install .` left behind
    out["PYTHONPATH"] = os.pathsep.join(code_paths(where.cwd))
    out["STAGEFLOW_SEED_SIZE"] = size
    return out


def summarize(stdout: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    try:
        data = json.loads(last) if last.startswith("{") else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        reported = tuple(
            (str(k), v) for k, v in data.items() if isinstance(v, str | int | float | bool)
        )
        return ", ".join(f"{k} {v}" for k, v in reported), reported
    return last[:SUMMARY_CHARS], ()


def run(
    proj: Project,
    env: EnvConfig,
    *,
    size: str = "small",
    process_env: Mapping[str, str] | None = None,
) -> SeedResult:
    """Run the service's seed command against env's database; production is refused whatever
    the caller. env may point at a scratch database (deploy.scratch.on_database)."""
    refuse_production(env)
    service = proj.service
    require_command(service)
    check_size(size)
    host, layout = primary(proj, env)
    try:
        where = place(proj, env, host, layout)
        start = time.perf_counter()
        if where.release:
            done = _in_release(host, layout, env, service, where, size=size)
        else:
            done = _in_working_tree(
                env, service, where, size=size,
                process_env=os.environ if process_env is None else process_env,
            )  # fmt: skip
        seconds = time.perf_counter() - start
    finally:
        if not host.is_local:
            host.close()
    secrets = releases.secret_forms(env)
    if done.timed_out or done.exit_code != 0:
        said = [ln for ln in (done.stderr or done.stdout or "").splitlines() if ln.strip()]
        why = "timed out" if done.timed_out else f"exit {done.exit_code}"
        last = scrub(said[-1].strip(), secrets)[:SUMMARY_CHARS] if said else "no output"
        read_only = releases.read_only_hint(releases.raised_in(said))
        raise ServiceError(
            f"the seed command failed in {where.label} ({why}): {last}",
            hint=f"{read_only or 'fix the command or its data'}, then run `inv {env.name}.seed`",
        )
    summary, reported = summarize(scrub(done.stdout, secrets))
    return SeedResult(env.name, size, seconds, where.label, summary, reported)


def _in_release(
    host: Host, layout: Layout, env: EnvConfig, service: Service, where: Place, *, size: str
) -> CommandResult:
    """The seed command in the serving release, on this machine or over SSH alike."""
    return releases.service_command(
        host, env, service, layout, where.release, seed_argv(service, size),
        timeout=TIMEOUT_S, extra_env={"STAGEFLOW_SEED_SIZE": size},
    )  # fmt: skip


def _in_working_tree(
    env: EnvConfig, service: Service, where: Place, *, size: str, process_env: Mapping[str, str]
) -> CommandResult:
    """Before the first deploy: the working tree on this machine, with stageflow's Python."""
    environ = command_environment(env, service, where, size=size, process_env=process_env)
    secrets = releases.secret_forms(env)
    argv = seed_argv(service, size)
    try:
        return run_process(argv, cwd=where.cwd, env=environ, timeout=TIMEOUT_S, secrets=secrets)
    except OSError as exc:
        raise ServiceError(
            f"cannot run the seed command {argv[0]!r} in {where.label}: "
            f"{scrub(exc.strerror or str(exc), secrets)}",
            hint="check [service] seed in stageflow.toml",
        ) from None
