"""The native runtime host by host: serve a release on one host, probe it, switch a group of hosts
in batches (engine/group.py: the primary first and alone, then batches), switch them back, watch
them through the verify window, stop the service on every host and read its status."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from deploy import releases
from deploy.commands import files as filecmd
from deploy.config import EnvConfig, Project
from deploy.engine import group
from deploy.engine.group import (
    FAILED,
    REVERTED,
    HostOutcome,
    RolloutError,
    Target,
    parallel,
    reason_of,
    roll,
    summary,
)
from deploy.errors import ServiceError
from deploy.hosts import Host
from deploy.probes import smoke
from deploy.runtime.native import port_answers
from deploy.service import Service
from deploy.state import Layout

Printer = Callable[[str], None]


# -- one host ------------------------------------------------------------------------------------


def probe(env: EnvConfig, proj: Project, target: Target, release_id: str) -> str:
    """The host's health check from this machine: the service's smoke probes on its address,
    and where the release's database sessions were meanwhile (probes/sessions)."""
    probes = smoke.run(env, proj.service, expect_release=release_id, host=target.bind, project=proj)
    bad = smoke.failed(probes)
    if bad:
        raise ServiceError(f"health check failed ({bad[0].name}: {bad[0].detail})")
    return f"{len(probes)} probes passed"


def switch_one(
    env: EnvConfig,
    proj: Project,
    target: Target,
    release_id: str,
    *,
    workers: int,
    check: bool = True,
) -> str:
    """Serve release_id on one host: start it on the shared socket, switch current, drain the rest,
    and (check) probe it with the service's smoke probes."""
    host, layout = target.host, target.layout
    meta = releases.release_meta(host, layout, release_id)
    if meta is None:
        raise ServiceError(
            f"{target.name}: no release {release_id} there",
            hint="deploy it again; pruned releases cannot come back",
        )
    rel = releases.Release(release_id, meta.get("commit", ""), meta.get("ref", ""))
    target.started = True
    pid = releases.start(host, env, proj.service, layout, rel, workers=workers, bind=target.bind)
    releases.switch(host, layout, release_id)
    target.switched = True
    retired = releases.retire_others(host, layout, keep=release_id)
    detail = f"serving {release_id} (pid {pid})" + (f"; drained {len(retired)}" if retired else "")
    if check:
        detail += f"; {probe(env, proj, target, release_id)}"
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
    todo = list(hosts) if hosts is not None else group.targets(proj, name)
    outcomes = roll(
        env.name,
        todo,
        lambda t: switch_one(env, proj, t, release_id, workers=workers, check=check),
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


def switch_back(
    env: EnvConfig,
    proj: Project,
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
            switch_one(env, proj, t, t.previous, workers=workers, check=False)
            return f"switched back to {t.previous}"
        releases.retire_others(t.host, t.layout, keep="")
        t.host.run(filecmd.remove(t.layout.current), check=False)
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
    """verify over every host: health of each host's bind address for window_s, then the
    release's counters summed over the hosts and the largest host's memory."""
    from deploy.probes import verify

    def memory() -> float:
        found = parallel(todo, lambda t: host_memory_mb(t, release))
        return max((m or 0.0 for _, m, _, _ in found), default=0.0)

    env = proj.env(name)
    return verify.watch_places(
        proj.service,
        proj.policies[name].thresholds,
        todo,
        port=env.app_port,
        headers=smoke.auth_headers(env, proj.service),
        release=release,
        baseline=baseline,
        window_s=window_s,
        interval_s=interval_s,
        memory_mb=memory,
    )


# -- the service on every host --------------------------------------------------------------------


def stop_service(proj: Project, name: str) -> list[str]:
    """Stop the service's masters and listener on every host of the environment."""
    env = proj.env(name)
    if not group.is_rolling(proj, name):
        return releases.stop_on_host(Host(secrets=env.secret_values()), Layout(str(env.data_dir)))
    lines = []
    for t, out, exc, _ in parallel(
        group.targets(proj, name), lambda t: releases.stop_on_host(t.host, t.layout)
    ):
        if exc is not None:
            lines.append(f"{t.name}: not stopped ({reason_of(exc)})")
        lines += [f"{t.name}: {line}" for line in out or []]
        t.host.close()
    return lines


def service_status(proj: Project, name: str) -> dict[str, Any]:
    env = proj.env(name)
    if group.is_rolling(proj, name):
        return _hosts_status(proj, name)
    layout = Layout(str(env.data_dir))
    host = Host()
    masters = releases.running_masters(host, layout)
    current = releases.current_release(host, layout)
    up = bool(masters) and port_answers(env.app_port)
    return {
        "up": up,
        "port": env.app_port,
        "release": current,
        "masters": masters,
        "serving": sorted(masters),
        "processes": _processes(host, layout, proj.service),
    }


def _processes(host: Host, layout: Layout, service: Service) -> list[dict[str, Any]]:
    return [p.to_dict() for p in releases.process_status(host, layout, service)]


def _hosts_status(proj: Project, name: str) -> dict[str, Any]:
    """service_status over several hosts: up when every host answers on its bind address."""
    env = proj.env(name)

    def one(t: Target) -> dict[str, Any]:
        masters = releases.running_masters(t.host, t.layout)
        return {
            "host": t.name,
            "release": releases.current_release(t.host, t.layout),
            "serving": sorted(masters),
            "up": bool(masters) and port_answers(env.app_port, t.bind),
            "processes": _processes(t.host, t.layout, proj.service),
        }

    rows = []
    for t, row, exc, _ in parallel(group.targets(proj, name), one):
        rows.append(
            row
            or {
                "host": t.name,
                "release": None,
                "serving": [],
                "up": False,
                "processes": [],
                "error": reason_of(exc) if exc else "",
            }
        )
        t.host.close()
    return {
        "up": all(r["up"] for r in rows),
        "port": env.app_port,
        "release": rows[0]["release"],
        "masters": {},
        "serving": rows[0]["serving"],
        "processes": [{**p, "host": r["host"]} for r in rows for p in r["processes"]],
        "hosts": rows,
    }


def probe_serving(proj: Project, name: str) -> list[smoke.Probe]:
    """Probe every host of `name` for its serving release, each on its own address from this
    machine (a probe through one address that misses a host proves nothing about it); probes are
    named "<host>: <probe>" when there are several hosts."""
    host, layout = group.primary(proj, name)
    try:
        current = releases.current_release(host, layout)
    finally:
        host.close()
    env = proj.env(name)
    if group.is_rolling(proj, name):
        probes = [
            replace(p, name=f"{t.name}: {p.name}")
            for t in group.targets(proj, name)
            for p in smoke.run(env, proj.service, expect_release=current, host=t.bind, project=proj)
        ]
    else:
        probes = smoke.run(env, proj.service, expect_release=current, project=proj)
    return probes
