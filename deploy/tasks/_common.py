"""What every task module shares: the project, the target environment, and the error edge."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke import Exit

from deploy.config import Project, find_root, libpq_variables, load_project
from deploy.errors import DeployError, UsageError
from deploy.policy import guards
from deploy.policy.actors import Actor, resolve

F = TypeVar("F", bound=Callable[..., Any])
# The operator's libpq variables the edge took out of the environment, kept for the one task that
# documents one: release.gate reads PGPASSWORD as --db-url's password.
OPERATOR_LIBPQ: dict[str, str] = {}


def edge(fn: F) -> F:
    """Map an expected failure to one line on stderr and its exit code; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # libpq would read the operator's PGHOST, PGSERVICE, ... behind every URL's back
        for key in libpq_variables(os.environ):
            OPERATOR_LIBPQ[key] = os.environ.pop(key)
        try:
            return fn(*args, **kwargs)
        except DeployError as err:
            raise Exit(f"stageflow: {err.line()}", code=int(err.exit_code)) from None
        except KeyboardInterrupt:
            raise Exit("stageflow: interrupted", code=130) from None
        finally:
            if "deploy.notify" in sys.modules:  # events queued by this task: wait a little
                sys.modules["deploy.notify"].flush(5.0)

    return wrapper  # type: ignore[return-value]


def whole(value: object, flag: str, *, minimum: int = 0) -> int:
    """A flag that must be a whole number: bad text is a usage error, not a traceback."""
    text = str(value).strip()
    if not text.lstrip("-").isdigit() or int(text) < minimum:
        raise UsageError(f"{flag} {text!r} is not a whole number >= {minimum}")
    return int(text)


def project() -> Project:
    return load_project(find_root(Path.cwd()), process_env=dict(os.environ))


def env_name(c: Any) -> str:
    """The namespace a task was called through (dev, staging, prod), set by env_collection()."""
    return c.config.stageflow.env


def actor() -> Actor:
    return resolve(os.environ, stdin_is_tty=sys.stdin.isatty())


def acting_on(
    proj: Project, name: str, action: str, *, dry_run: bool = False, **fields: Any
) -> Actor:
    """The actor of a task that changes `name`: on a production environment, human only when a
    key prod trusts signs this action now (automation keeps its kind; anyone else is unsigned)."""
    who = actor()
    if dry_run or proj.env(name).environment != "production":
        return who
    from deploy.errors import NotApproved
    from deploy.policy import actors, trust

    try:
        signers = trust.trusted(proj)
    except NotApproved:
        return who if who.is_automation else actors.replace_kind(who, actors.UNSIGNED)
    return actors.prove(who, signers, action, name, **fields)


def human_on_prod(proj: Project, name: str, action: str, **fields: Any) -> Actor:
    """acting_on, refused on a production environment unless a key prod trusts signed it: what
    changes prod's database or its records outside an approved deploy is a person's act."""
    who = acting_on(proj, name, action, **fields)
    if proj.env(name).environment == "production" and not who.is_human:
        from deploy.errors import GuardRefused

        raise GuardRefused(
            f"{who} may not {action.replace('-', ' ')} on {name}: a human signs it with a key "
            "prod trusts",
            hint="`inv prod.keys` shows whose keys count; `--dry-run` shows the plan unsigned",
        )
    return who


def shell_guard(proj: Project, name: str) -> None:
    """The shell-ENVIRONMENT guard alone: every task that changes anything runs it first."""
    guards.require([guards.shell_environment(proj.env(name), os.environ)])


def preflight(proj: Project, name: str) -> list[guards.Check]:
    return guards.run_checks(guards.environment_checks(proj, name, os.environ))


def guarded(proj: Project, name: str) -> list[guards.Check]:
    """Run the environment guards; refuse (exit 3) when any fails. Every mutating task calls this."""
    checks = preflight(proj, name)
    guards.require(checks)
    return checks


def seconds(value: object, flag: str, *, maximum: float) -> float:
    """A flag that must be a number of seconds, 0 < s <= maximum: bad text is a usage error."""
    try:
        out = float(str(value))
    except ValueError:
        raise UsageError(
            f"{flag} {value} is not a number of seconds", hint=f"e.g. {flag} 30"
        ) from None
    if not 0 < out <= maximum:
        raise UsageError(f"{flag} {value} is out of range", hint=f"give 0 < seconds <= {maximum:g}")
    return out
