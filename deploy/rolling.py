"""Rolling deploys over an environment's hosts: batches, a first-host barrier, per-host outcomes.

The first host of `hosts` is the primary: it holds the deploy lock and the state files, and it goes
first and alone (the barrier): the rest start only once it serves the new release and passes its
health check. The others follow in batches of `batch` hosts (a number or a percentage of all
hosts), each batch in parallel threads. A failing host stops the rollout: later hosts are skipped
and every host already switched is switched back. Like fabric's GroupResult, the outcome of every
host is data, and one RolloutError carries all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from deploy import releases, smoke
from deploy.config import EnvConfig, HostSpec, Project, host_spec
from deploy.errors import DeployError, ExitCode, ServiceError
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


# -- one host ------------------------------------------------------------------------------------


def probe(env: EnvConfig, target: Target, release_id: str) -> str:
    """The host's health check from this machine: health, ready, version, identity, data."""
    probes = smoke.run(env, expect_release=release_id, host=target.bind)
    bad = smoke.failed(probes)
    if bad:
        raise ServiceError(f"health check failed ({bad[0].name}: {bad[0].detail})")
    return f"{len(probes)} probes passed"


def switch_one(
    env: EnvConfig,
    target: Target,
    release_id: str,
    *,
    workers: int,
    extra_env: dict[str, str] | None = None,
    check: bool = True,
) -> str:
    """Serve release_id on one host: start it on the shared socket, switch current, drain the rest,
    and (check) probe it."""
    host, layout = target.host, target.layout
    meta = releases.release_meta(host, layout, release_id)
    if meta is None:
        raise ServiceError(
            f"{target.name}: no release {release_id} there",
            hint="deploy it again; pruned releases cannot come back",
        )
    rel = releases.Release(release_id, meta.get("commit", ""), meta.get("ref", ""))
    target.started = True
    pid = releases.start(
        host, env, layout, rel, workers=workers, extra_env=extra_env, bind=target.bind
    )
    releases.switch(host, layout, release_id)
    target.switched = True
    retired = releases.retire_others(host, layout, keep=release_id)
    detail = f"serving {release_id} (pid {pid})" + (f"; drained {len(retired)}" if retired else "")
    if check:
        detail += f"; {probe(env, target, release_id)}"
    return detail


def switch_hosts(
    proj: Project,
    name: str,
    release_id: str,
    *,
    hosts: Sequence[Target] | None = None,
    batch: str | None = None,
    printer: Printer = print,
    check: bool = True,
) -> list[HostOutcome]:
    """Switch hosts (default: every host of the environment) to release_id, which must already be
    on each of them. batch=None does all at once; a batch size rolls with the first-host barrier.
    Stops at the first failing batch and raises RolloutError with every host's outcome; it
    switches nothing back (the caller decides what "back" means)."""
    env = proj.env(name)
    workers = proj.policies[name].workers
    todo = list(hosts) if hosts is not None else targets(proj, name)
    outcomes = roll(
        env,
        todo,
        lambda t: switch_one(env, t, release_id, workers=workers, check=check),
        batch=batch,
        printer=printer,
        release=release_id,
    )
    failed = [o for o in outcomes if o.status == FAILED]
    if failed:
        raise RolloutError(
            f"switching {name} to {release_id} stopped: {failed[0].host} failed "
            f"({failed[0].reason}); {summary(outcomes)}",
            outcomes=outcomes,
            hint="fix the failed host, then run the same command again",
        )
    return outcomes


def roll(
    env: EnvConfig,
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
                f"{env.name}: host      {took:6.2f}s  {target.name} {outcome.status} "
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


def switch_back(
    env: EnvConfig,
    todo: Sequence[Target],
    outcomes: Sequence[HostOutcome],
    *,
    workers: int,
    printer: Printer,
    why: str,
) -> list[HostOutcome]:
    """Put each started host's previous release back in front (or stop the new one when it had
    none); returns the outcomes with every switched-back host marked reverted."""
    started = [t for t in todo if t.started]

    def back(t: Target) -> str:
        if t.previous and t.host.exists(t.layout.release(t.previous)):
            switch_one(env, t, t.previous, workers=workers, check=False)
            return f"switched back to {t.previous}"
        releases.retire_others(t.host, t.layout, keep="")
        t.host.run(["rm", "-f", t.layout.current], check=False)
        return "no previous release; the new one was stopped"

    results = {t.name: (detail, exc) for t, detail, exc, _ in parallel(started, back)}
    out = []
    for o in outcomes:
        if o.host not in results:
            out.append(o)
            continue
        detail, exc = results[o.host]
        if exc is None:
            prev = next(t.previous for t in started if t.name == o.host)
            reason = detail or ""
            if o.status == FAILED:
                out.append(HostOutcome(o.host, FAILED, f"{o.reason}; {reason}", prev, o.seconds))
            else:
                out.append(HostOutcome(o.host, REVERTED, f"{reason} ({why})", prev, o.seconds))
        else:
            out.append(
                HostOutcome(
                    o.host,
                    FAILED,
                    f"{o.reason + '; ' if o.status == FAILED else ''}"
                    f"switching back failed: {reason_of(exc)}",
                    None,
                    o.seconds,
                )
            )
        printer(f"{env.name}: revert    {out[-1].host} {out[-1].status}: {out[-1].reason}")
    return out


# -- verify over every host ----------------------------------------------------------------------


def host_memory_mb(target: Target, release_id: str) -> float:
    """Resident memory of the release's master and workers on one host, read from its /proc."""
    host = target.host
    text = host.read_text(releases.master_pidfile(target.layout, release_id)) or ""
    try:
        master = int(text.split()[0])
    except (IndexError, ValueError):
        return 0.0
    children = host.read_text(f"/proc/{master}/task/{master}/children") or ""
    total_kb = 0
    for pid in [master, *map(int, children.split())]:
        for line in (host.read_text(f"/proc/{pid}/status") or "").splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def watch(
    proj: Project,
    name: str,
    todo: Sequence[Target],
    *,
    release: str,
    baseline: str | None,
    window_s: float,
    interval_s: float = 0.25,
) -> Any:
    """verify.watch over several hosts: health of each host's bind address for window_s, then the
    release's metrics (shared in Redis) and the largest host's memory, judged by verify.evaluate."""
    from deploy import verify

    env = proj.env(name)
    limits = proj.policies[name].thresholds
    keys = env.secret("API_KEYS")
    headers = {"X-API-Key": keys.reveal().split(",")[0]} if keys else {}
    consecutive = {t.name: 0 for t in todo}
    worst = 0
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline and worst <= limits.health_failures:
        for t in todo:
            base_url = f"http://{t.bind}:{env.app_port}"
            try:
                status, _ = smoke.http("GET", f"{base_url}/healthz", timeout=2)
            except OSError:
                status = 0
            consecutive[t.name] = consecutive[t.name] + 1 if status != 200 else 0
            worst = max(worst, consecutive[t.name])
            try:
                smoke.http("GET", f"{base_url}/notes", headers=headers, timeout=2)
            except OSError:
                pass
        time.sleep(interval_s)
    new = verify.release_stats(env, release) or verify.Stats(0, 0, None)
    base = verify.release_stats(env, baseline)
    memory = [m or 0.0 for _, m, _, _ in parallel(todo, lambda t: host_memory_mb(t, release))]
    return verify.evaluate(
        limits, new=new, base=base, consecutive_failures=worst, memory_mb=max(memory, default=0.0)
    )


def primary(proj: Project, name: str) -> tuple[Host, Layout]:
    """The host that holds the environment's lock and state files, and its layout there."""
    spec = host_spec(proj.policies[name].hosts[0])
    env = proj.env(name)
    return host_from_spec(spec, secrets=env.secret_values()), Layout(spec.home(env))
