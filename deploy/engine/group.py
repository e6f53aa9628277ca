"""Hosts as a group: an environment's hosts, batches with a first-host barrier, per-host outcomes.

The first host of a group is the primary: it holds the deploy lock and the state files, and it goes
first and alone (the barrier): the rest start only once it passed. The others follow in batches of
`batch` hosts (a number or a percentage of all hosts), each batch in parallel threads. A failing host
stops the group: later hosts are skipped. Like fabric's GroupResult, every host's outcome is data,
and one RolloutError carries all of them. One host is a group of one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from deploy.config import HostSpec, Project, host_spec
from deploy.errors import DeployError, ExitCode
from deploy.hosts import Host, host_from_spec
from deploy.state import Layout

Printer = Callable[[str], None]
T = TypeVar("T")
R = TypeVar("R")

OK, FAILED, SKIPPED, REVERTED = "ok", "failed", "skipped", "reverted"
MAX_THREADS = 32


@dataclass
class Target:
    """One host of an environment during a rollout: where it is, its home, what it served."""

    spec: HostSpec
    host: Host
    layout: Layout
    previous: str | None = None  # the release it served before this rollout
    started: bool = False  # a master of the new release was asked to start here
    switched: bool = False  # current points at the new release here

    @property
    def name(self) -> str:
        return self.spec.address

    @property
    def bind(self) -> str:
        return self.spec.bind


# -- outcomes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostOutcome:
    """What happened on one host: ok, failed, skipped (never touched) or reverted (switched back)."""

    host: str
    status: str
    reason: str = ""
    release: str | None = None  # what the host serves afterwards, as far as we know
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "status": self.status,
            "reason": self.reason,
            "release": self.release,
            "seconds": round(self.seconds, 3),
        }


class RolloutError(DeployError):
    """A rollout stopped; carries every host's outcome (none is ever lost)."""

    def __init__(
        self, message: str, *, outcomes: Sequence[HostOutcome], hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.outcomes = tuple(outcomes)
        # hosts switched back: the previous release serves again, as after a failed smoke
        self.exit_code = ExitCode.ROLLED_BACK if self.reverted else ExitCode.FAILURE

    @property
    def reverted(self) -> bool:
        return any(o.status == REVERTED for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "hosts": [o.to_dict() for o in self.outcomes]}


def table(outcomes: Sequence[HostOutcome]) -> list[str]:
    """The per-host table as plain lines (host, status, serving, seconds, reason)."""
    width = max([len("host"), *(len(o.host) for o in outcomes)])
    lines = [f"  {'host':<{width}}  {'status':<8}  {'serving':<28}  {'secs':>6}  reason"]
    for o in outcomes:
        lines.append(
            f"  {o.host:<{width}}  {o.status:<8}  {o.release or '-':<28}  "
            f"{o.seconds:6.2f}  {o.reason or '-'}"
        )
    return lines


def summary(outcomes: Sequence[HostOutcome]) -> str:
    """Every host's outcome on one line, for the error message (JSON mode prints no table)."""
    return "; ".join(f"{o.host} {o.status}" for o in outcomes)


# -- batches and threads -------------------------------------------------------------------------


def batch_size(batch: str, hosts: int) -> int:
    """Hosts per batch after the first: a number, or a percentage of all hosts, at least 1."""
    text = batch.strip()
    if text.endswith("%"):
        return max(1, min(hosts, -(-hosts * int(text[:-1]) // 100)))
    return max(1, min(hosts, int(text)))


def batches(items: Sequence[T], batch: str | None) -> list[list[T]]:
    """The first item alone (the barrier), then the rest in batches; None: all at once."""
    if not items:
        return []
    if batch is None:
        return [list(items)]
    size = batch_size(batch, len(items))
    rest = list(items[1:])
    return [[items[0]], *(rest[i : i + size] for i in range(0, len(rest), size))]


def parallel(
    items: Sequence[T], fn: Callable[[T], R]
) -> list[tuple[T, R | None, BaseException | None, float]]:
    """fn over items in threads; every item's value or exception and duration, in order."""

    def one(item: T) -> tuple[T, R | None, BaseException | None, float]:
        start = time.perf_counter()
        try:
            return item, fn(item), None, time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - one host's failure is data, not a crash
            return item, None, exc, time.perf_counter() - start

    if len(items) == 1:
        return [one(items[0])]
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(items))) as pool:
        return list(pool.map(one, items))


def reason_of(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or f"{exc.__class__.__name__}: {exc}"
    return " ".join(str(text).split())[:200]


def on_every_host(
    targets: Sequence[Target], fn: Callable[[Target], str], *, phase: str, subject: str, hint: str
) -> None:
    """A step that must succeed on every host before anything switches: fn on all of them in
    parallel; if one fails, one RolloutError carries every host's outcome (the failed hosts
    FAILED, the others SKIPPED, since nothing was switched)."""
    results = parallel(targets, fn)
    broken = [(t, exc) for t, _, exc, _ in results if exc]
    if not broken:
        return
    first, exc = broken[0]
    outcomes = [
        HostOutcome(t.name, FAILED, f"{phase}: {reason_of(e)}", t.previous, took)
        if e
        else HostOutcome(
            t.name, SKIPPED, f"not switched: the {phase} failed on {first.name}", t.previous, took
        )
        for t, _, e, took in results
    ]
    raise RolloutError(
        f"{phase} of {subject} failed on {first.name} ({reason_of(exc)}); nothing was switched; "
        f"{summary(outcomes)}",
        outcomes=outcomes,
        hint=hint,
    )


def roll(
    env_name: str,
    todo: Sequence[Target],
    step: Callable[[Target], str],
    *,
    batch: str | None,
    printer: Printer,
    release: str | None,
) -> list[HostOutcome]:
    """step on every host, batch by batch; after a failing batch the later hosts are skipped."""
    groups = batches(todo, batch)
    outcomes: dict[str, HostOutcome] = {}
    for i, group in enumerate(groups, 1):
        for target, detail, exc, took in parallel(group, step):
            if exc is None:
                outcome = HostOutcome(target.name, OK, detail or "", release, took)
            else:
                outcome = HostOutcome(target.name, FAILED, reason_of(exc), target.previous, took)
            outcomes[target.name] = outcome
            printer(
                f"{env_name}: host      {took:6.2f}s  {target.name} {outcome.status} "
                f"(batch {i}/{len(groups)}): {outcome.reason or 'ok'}"
            )
        if any(outcomes[t.name].status == FAILED for t in group):
            for t in todo:
                outcomes.setdefault(
                    t.name,
                    HostOutcome(
                        t.name, SKIPPED, "the rollout stopped before this host", t.previous
                    ),
                )
            break
    return [outcomes[t.name] for t in todo]


# -- an environment's hosts ---------------------------------------------------------------------


def targets(proj: Project, name: str) -> list[Target]:
    """Every host of environment `name`, primary first, each with its own layout."""
    env = proj.env(name)
    out = []
    for raw in proj.policies[name].hosts:
        spec = host_spec(raw)
        host = host_from_spec(spec, secrets=env.secret_values())
        out.append(Target(spec, host, Layout(spec.home(env))))
    return out


def is_rolling(proj: Project, name: str) -> bool:
    """False for the shipped setting (this machine alone, DATA_DIR, loopback): the plain pipeline."""
    hosts = [host_spec(h) for h in proj.policies[name].hosts]
    return not (len(hosts) == 1 and hosts[0].plain)


def primary(proj: Project, name: str) -> tuple[Host, Layout]:
    """The host that holds the environment's lock and state files, and its layout there."""
    spec = host_spec(proj.policies[name].hosts[0])
    env = proj.env(name)
    return host_from_spec(spec, secrets=env.secret_values()), Layout(spec.home(env))
