"""Rolling deploys over real OpenSSH hosts on loopback addresses: `inv staging.deploy` wall time for
1, 4, 8 and 16 hosts with batch 25%, the CPU seconds each host costs, and where a host's time goes.

Every "host" here is an sshd on 127.0.0.x of one machine, so all hosts share its cores. To say what
scales with what, the script measures CPU as well as wall time:

- hosts' CPU: per host, everything its sshd ran (the process tree; exited children are counted in
  their parents' counters) plus the daemons it left under its data dir (gunicorn master, workers,
  listener), which leave the tree; read from /proc at each run's start and end and sampled while
  it runs, so a daemon that exits mid-run keeps what it used up to the last sample;
- the operator's CPU: the `inv` process and its children (git archive, pg_dump, ...);
- one profiled deploy at the smallest and the largest size, run in this process with timers
  around the per-host steps (upload, extract, venv, settings file, gunicorn start with each
  worker asking the ready path, switch, drain, health check, prune) and a count of the commands
  each host ran over SSH: wall and host CPU per step, median over the hosts. It is not one of
  the timed runs.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common as c
from _floor import Floor, Ssh

from deploy import releases
from deploy.config import HostSpec, load_project
from deploy.engine import deploy_pipeline, group
from deploy.hosts import Host, host_from_spec
from deploy.policy.actors import Actor
from deploy.runtime import native_hosts
from deploy.state import Layout
from tests import support
from tests.e2e.conftest import Project, destroy, make_project
from tests.sshd import (
    Sshd,
    can_run_sshd,
    fleet,
    free_port_on,
    seed_venv,
    set_hosts,
    shared_venv,
    venv_key,
)

# STAGEFLOW_BENCH_HOSTS=1,4 measures fewer sizes (a quicker look); the docs quote the default
SIZES = tuple(int(n) for n in os.environ.get("STAGEFLOW_BENCH_HOSTS", "1,4,8,16").split(","))
BATCH = "25%"
LOCK = Path("app") / "requirements.lock"
NOOPS = 30
TICK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.25
ONE_HOST_TARGETS_S = {"deploy": 1.4, "level2": 1.4}  # wall to one SSH host, `inv` start-up included


def runs_for(hosts: int) -> int:
    # 16 hosts take the longest; fewer runs keep `make bench` inside its time limit
    return max(1, min(c.RUNS, 3 if hosts < 16 else 2))


def ssh_overhead(server: Sshd) -> dict[str, Any]:
    t = server.table()
    spec = HostSpec(
        address=t["address"], identity_file=t["identity_file"], known_hosts=t["known_hosts"]
    )
    remote, local = host_from_spec(spec), Host()
    cpu = HostCpu([server], [server.data_dir])
    try:
        connect = c.wall(lambda: remote.run(["true"]))  # the first call opens the connection
        at = cpu.now(fresh_s=0)[server.destination]
        ssh = [c.wall(lambda: remote.run(["true"])) for _ in range(NOOPS)]
        per_command = (cpu.now(fresh_s=0)[server.destination] - at) / NOOPS
        sftp = [c.wall(lambda: remote.exists("/")) for _ in range(NOOPS)]
        loc = [c.wall(lambda: local.run(["true"])) for _ in range(NOOPS)]
    finally:
        remote.close()
    return {
        "connect_s": round(connect, 4),
        "ssh_noop_median_s": round(statistics.median(ssh), 4),
        "local_noop_median_s": round(statistics.median(loc), 4),
        "overhead_per_command_s": round(statistics.median(ssh) - statistics.median(loc), 4),
        "host_cpu_per_command_s": round(per_command, 4),
        "sftp_stat_median_s": round(statistics.median(sftp), 4),
        "runs": NOOPS,
        "note": "a command over SSH starts the login shell of the remote user (its rc files "
        "count: here they run `pyenv init`); file operations go over SFTP on the open "
        "connection and start no process",
    }


# -- CPU per host ---------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float, float, int]]:
    """pid -> (ppid, own CPU s, CPU s of reaped children, start tick), from /proc/<pid>/stat."""
    out: dict[int, tuple[int, float, float, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited between the listing and the read
        # fields[0] is the state (field 3 of stat): utime, stime, cutime, cstime are 14..17
        own = (int(fields[11]) + int(fields[12])) / TICK
        reaped = (int(fields[13]) + int(fields[14])) / TICK
        out[int(entry.name)] = (int(fields[1]), own, reaped, int(fields[19]))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


class HostCpu:
    """CPU seconds used on each loopback host since this meter was made (see the module doc)."""

    def __init__(self, servers: Sequence[Sshd], dirs: Sequence[Path]) -> None:
        self.hosts = {s.destination: (s, str(d)) for s, d in zip(servers, dirs, strict=True)}
        self._daemons: dict[str, dict[tuple[int, int], float]] = {h: {} for h in self.hosts}
        self._owner: dict[tuple[int, int], str | None] = {}  # a process's host, by cmdline
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, float]] = (0.0, {})
        self.base = self._read()

    def _read(self) -> dict[str, float]:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_rest) in table.items():
            children.setdefault(ppid, []).append(pid)
        in_tree: set[int] = set()
        totals: dict[str, float] = {}
        for name, (server, _) in self.hosts.items():
            total, todo = 0.0, [server.proc.pid] if server.proc else []
            while todo:
                pid = todo.pop()
                if pid in table:
                    in_tree.add(pid)
                    total += table[pid][1] + table[pid][2]
                    todo += children.get(pid, [])
            totals[name] = total
        for pid, (_, own, _, start) in table.items():
            if pid in in_tree:
                continue
            key = (pid, start)
            if key not in self._owner:
                line = _cmdline(pid)
                self._owner[key] = next(
                    (n for n, (_, d) in self.hosts.items() if d + "/" in line), None
                )
            name = self._owner[key]
            if name is not None:
                # own CPU only: a worker reaped by its master would otherwise count twice
                seen = self._daemons[name]
                seen[key] = max(seen.get(key, 0.0), own)
        return {name: totals[name] + sum(self._daemons[name].values()) for name in self.hosts}

    def now(self, *, fresh_s: float = 0.02) -> dict[str, float]:
        """CPU seconds per host since the meter was made; a reading younger than fresh_s is
        shared, so threads timing their steps do not each walk /proc."""
        with self._lock:
            at, value = self._last
            if time.monotonic() - at > fresh_s:
                raw = self._read()
                value = {h: raw[h] - self.base.get(h, 0.0) for h in raw}
                self._last = (time.monotonic(), value)
            return dict(value)

    @contextmanager
    def sampling(self) -> Iterator[None]:
        """Read /proc every SAMPLE_S while the block runs: daemons that exit keep their CPU."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(SAMPLE_S):
                self.now()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def machine_busy_s() -> float:
    """CPU seconds every core of this machine spent busy since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK  # less idle and iowait


def self_cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def children_cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


# -- one profiled deploy ----------------------------------------------------------------------------

# (module, function, step, how to find the host's name among the arguments)
STEP_TIMERS: tuple[tuple[Any, str, str, Callable[..., str]], ...] = (
    (releases, "build", "build (all)", lambda _proj, _env, host, **_: host.name),
    (releases, "ensure_venv", "venv", lambda host, *_a, **_: host.name),
    (releases, "write_settings", "settings file", lambda host, *_a, **_: host.name),
    (releases, "start", "gunicorn start", lambda host, *_a, **_: host.name),
    (releases, "switch", "switch", lambda host, *_a, **_: host.name),
    (releases, "retire_others", "drain old", lambda host, *_a, **_: host.name),
    (native_hosts, "probe", "health check", lambda _env, target, *_a, **_: target.name),
    (releases, "prune", "prune", lambda host, *_a, **_: host.name),
)


class StepClock:
    """Wall and host CPU of each step on each host, by wrapping the functions that do them."""

    def __init__(self, cpu: HostCpu) -> None:
        self.cpu = cpu
        self.per_host: dict[str, dict[str, dict[str, float]]] = {}  # host -> step -> totals
        self.commands: dict[str, dict[str, tuple[int, float]]] = {}  # host -> program -> n, s
        self._lock = threading.Lock()

    def _record(self, host: str, step: str, wall: float, cpu: float) -> None:
        with self._lock:
            totals = self.per_host.setdefault(host, {}).setdefault(step, {"wall": 0.0, "cpu": 0.0})
            totals["wall"] += wall
            totals["cpu"] += cpu

    def command(self, host: str, program: str, wall: float) -> None:
        """One command over SSH (each starts a shell on the host); kept per host by program."""
        with self._lock:
            mine = self.commands.setdefault(host, {})
            count, total = mine.get(program, (0, 0.0))
            mine[program] = (count + 1, total + wall)

    def timed(self, fn: Callable[..., Any], step: str, name_of: Callable[..., str]) -> Any:
        def wrapper(*args: Any, **kw: Any) -> Any:
            host = name_of(*args, **kw)
            cpu0, t0 = self.cpu.now().get(host, 0.0), time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                wall = time.perf_counter() - t0
                self._record(host, step, wall, self.cpu.now().get(host, 0.0) - cpu0)

        return wrapper

    @contextmanager
    def installed(self) -> Iterator[None]:
        saved = []
        run, put = Host.run, Host.put_file
        for module, attr, step, name_of in STEP_TIMERS:
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, self.timed(getattr(module, attr), step, name_of))
        # extraction is the one `tar` a deploy runs; the upload is the SFTP put of the archive
        clock = self

        def timed_run(host: Host, argv: Sequence[str], **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                if argv and argv[0] == "tar":
                    step = clock.timed(run, "extract", lambda h, *_a, **_k: h.name)
                    return step(host, argv, **kw)
                return run(host, argv, **kw)
            finally:
                clock.command(host.name, Path(str(argv[0])).name, time.perf_counter() - t0)

        Host.run = timed_run  # type: ignore[method-assign]
        Host.put_file = self.timed(put, "upload", lambda h, *_a, **_k: h.name)  # type: ignore[method-assign]
        try:
            yield
        finally:
            Host.run, Host.put_file = run, put  # type: ignore[method-assign]
            for module, attr, fn in saved:
                setattr(module, attr, fn)

    def command_summary(self, primary: str) -> dict[str, Any]:
        """SSH commands per host (median over hosts), their wall, and the primary's by program."""
        counts = [sum(n for n, _ in m.values()) for m in self.commands.values()]
        walls = [sum(w for _, w in m.values()) for m in self.commands.values()]
        return {
            "per_host_median": statistics.median(counts) if counts else 0,
            "wall_per_host_median_s": round(statistics.median(walls), 2) if walls else 0.0,
            "primary_by_program": {
                p: n for p, (n, _) in sorted(self.commands.get(primary, {}).items())
            },
        }

    def summary(self) -> dict[str, dict[str, float]]:
        """Per step: median over the hosts of its wall and host CPU seconds."""
        steps = sorted({s for by_step in self.per_host.values() for s in by_step})
        out = {}
        for step in steps:
            walls = [h[step]["wall"] for h in self.per_host.values() if step in h]
            cpus = [h[step]["cpu"] for h in self.per_host.values() if step in h]
            out[step] = {
                "wall_median_s": round(statistics.median(walls), 3),
                "cpu_median_s": round(statistics.median(cpus), 3),
                "hosts": len(walls),
            }
        return out


def profiled_deploy(project: Project, cpu: HostCpu, *, batches: int) -> dict[str, Any]:
    """One deploy through the engine in this process, with the step clock on."""
    proj = load_project(project.root, process_env={})
    clock = StepClock(cpu)
    before = resource.getrusage(resource.RUSAGE_SELF)
    kids = children_cpu_s()
    start_cpu = sum(cpu.now(fresh_s=0).values())
    start = time.perf_counter()
    with clock.installed(), cpu.sampling():
        result = deploy_pipeline.deploy(
            proj, "staging", actor=Actor(name="bench@example.com", kind="human"), printer=_quiet
        )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert result["status"] == "success", result
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": round(wall, 2),
        "steps_s": result["steps"],
        "operator_and_meter_cpu_s": round(own + children_cpu_s() - kids, 2),
        "hosts_cpu_s": round(sum(cpu.now(fresh_s=0).values()) - start_cpu, 2),
        "per_host_step": clock.summary(),
        "ssh_commands": clock.command_summary(next(iter(cpu.hosts))),
        "rollout_per_batch_s": round(rollout_s(result) / batches, 2),
        "rollout_host_s": [h["seconds"] for h in result.get("hosts", [])] or [rollout_s(result)],
    }


def _quiet(_line: str) -> None:
    return None


HOST_STEPS = ("start", "switch", "smoke")


def rollout_s(result: dict[str, Any]) -> float:
    """The rollout's seconds: one step over a group, or a lone host's own steps, walked inline."""
    steps = result["steps"]
    return float(steps.get("rollout", sum(steps.get(s, 0.0) for s in HOST_STEPS)))


def hosts_ok(result: dict[str, Any], n: int) -> bool:
    """Every host ok: a group's result lists its hosts; a group of one reports its own status."""
    if "hosts" not in result:
        return n == 1 and result.get("status") == "success"
    return [h["status"] for h in result["hosts"]] == ["ok"] * n


# -- fits ------------------------------------------------------------------------------------------


def fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least squares y = a + b*x and its R^2."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {
        "intercept_s": round(a, 2),
        "slope_s": round(b, 3),
        "r2": round(1 - ss_res / ss_tot, 3) if ss_tot else 1.0,
    }


def scaling(deploys: dict[str, dict[str, Any]], cpus: int) -> dict[str, Any]:
    sizes = sorted(deploys, key=int)
    hosts = [float(n) for n in sizes]
    batches = [float(deploys[n]["batches"]) for n in sizes]
    walls = [deploys[n]["median_s"] for n in sizes]
    cpu = [deploys[n]["cpu_s"]["total"] for n in sizes]
    model = {}
    if "1" in deploys:
        # a one-host deploy has no other host competing for the cores: it, plus one more of its
        # rollout batches (gunicorn start, switch, health check) per extra batch, is what
        # hosts with their own cores would take. A model from measured parts, not a measurement.
        one = deploys["1"]
        per_batch = one["profile"]["rollout_per_batch_s"]
        model = {
            n: round(one["median_s"] + (deploys[n]["batches"] - 1) * per_batch, 2) for n in sizes
        }
    return {
        "own_cores_model_s": model,
        "wall_vs_batches": fit(batches, walls),
        "wall_vs_hosts": fit(hosts, walls),
        "cpu_vs_hosts": fit(hosts, cpu),
        "cpu_floor_s": {n: round(deploys[n]["cpu_s"]["total"] / cpus, 2) for n in sizes},
        "note": "cpu_floor_s is the deploy's total CPU over this machine's cores: no schedule "
        "of the same work can take less wall time here. When the wall time sits near that "
        "floor the deploy is CPU-bound on one machine and follows hosts; on machines with "
        "their own cores the per-host CPU runs in parallel within a batch and the wall "
        "time follows batches.",
    }


# -- the benchmark ---------------------------------------------------------------------------------


def main() -> int:
    ok, why = can_run_sshd()
    if not ok:
        raise SystemExit(why)
    base = support.public_tmpdir("sf-bench-sshd-")
    project = make_project("sf-bench-hosts-")
    doc: dict[str, Any] = {"batch": BATCH, "verify_window_s": 0, "deploys": {}}
    # other work on the machine shares its cores with the hosts: the load says how much
    doc["loadavg_1m_before"] = round(os.getloadavg()[0], 2)
    doc["cpu_note"] = (
        "cpu_s per timed run (medians): hosts = every loopback host's processes; operator = "
        "`inv` and its children; rest_of_machine = everything else busy meanwhile: the "
        "environment's Postgres and Redis, the kernel's loopback traffic, and any other work "
        "on this machine. cpu_busy = (hosts + operator) / wall / cores; machine_busy adds the rest. "
        "idle_busy_cores: cores busy before the first deploy, with staging's servers up."
    )
    try:
        with fleet(base, max(SIZES)) as servers:
            try:
                measure(project, servers, doc)
                doc["rollbacks"] = measure_rollbacks(project, servers)
            finally:
                destroy(project)  # `down` stops the service on every host while sshd still runs
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(project.root.parent, ignore_errors=True)
    doc["machine"] = {**c.machine(), "loadavg_1m_after": round(os.getloadavg()[0], 2)}
    doc["scaling"] = scaling(doc["deploys"], os.cpu_count() or 1)
    c.emit(doc)
    return 0


def measure(project: Project, servers: list[Sshd], doc: dict[str, Any]) -> None:
    lock = project.root / LOCK
    venv = shared_venv(lock)
    doc["ssh"] = ssh_overhead(servers[0])
    doc["venv_copy"] = venv_copy(venv)
    c.run([c.INV, "staging.up"], cwd=project.root, env=c.inv_env())
    doc["idle_busy_cores"] = idle_busy_cores()
    for n in SIZES:
        dirs = set_hosts(project.root, "staging", servers[:n], batch=BATCH, verify_window_s=0)
        for d in dirs:  # the lock file is unchanged: a deploy reuses each host's venv
            seed_venv(d, venv, lock)
        project.commit(f"staging on {n} hosts")
        cpu = HostCpu(servers[:n], dirs)
        samples, steps, host_cpu, operator_cpu, other_cpu = [], {}, [], [], []
        for _ in range(runs_for(n)):
            kids, at = children_cpu_s(), sum(cpu.now(fresh_s=0).values())
            busy, meter = machine_busy_s(), self_cpu_s()
            start = time.perf_counter()
            with cpu.sampling():
                res = c.run(
                    [c.INV, "staging.deploy", "--json"],
                    cwd=project.root,
                    env=c.inv_env(),
                    timeout=600,
                )
            samples.append(time.perf_counter() - start)
            host_cpu.append(sum(cpu.now(fresh_s=0).values()) - at)
            operator_cpu.append(children_cpu_s() - kids)
            # whatever else ran on the machine meanwhile, less this script's own /proc sampling
            mine = host_cpu[-1] + operator_cpu[-1] + self_cpu_s() - meter
            other_cpu.append(machine_busy_s() - busy - mine)
            result = json.loads(res.stdout)
            assert hosts_ok(result, n), result
            steps = result["steps"]
        groups = len(group.batches(list(range(n)), BATCH))
        median = statistics.median(samples)
        hosts_s, operator_s = statistics.median(host_cpu), statistics.median(operator_cpu)
        doc["deploys"][str(n)] = {
            **c.summary(samples, digits=2),
            "batches": groups,
            "wall_per_batch_s": round(median / groups, 2),
            # the `inv` process on this machine and what it waited for; not the hosts' servers
            "controller": {
                "cpu_s": round(operator_s, 2),
                "cpu_per_host_s": round(operator_s / n, 3),
                "wall_per_host_s": round(median / n, 2),
            },
            "cpu_s": {
                "hosts": round(hosts_s, 2),
                "per_host": round(hosts_s / n, 2),
                "operator": round(operator_s, 2),
                "total": round(hosts_s + operator_s, 2),
                "rest_of_machine": round(statistics.median(other_cpu), 2),
            },
            "cpu_busy": round((hosts_s + operator_s) / median / (os.cpu_count() or 1), 2),
            "machine_busy": round(
                (hosts_s + operator_s + statistics.median(other_cpu))
                / median
                / (os.cpu_count() or 1),
                2,
            ),
            "last_steps_s": steps,
        }
        if n in (min(SIZES), max(SIZES)):  # the two ends show it; each profile is one more deploy
            doc["deploys"][str(n)]["profile"] = profiled_deploy(project, cpu, batches=groups)
        if n == 1:
            doc["one_host"] = one_host(project, servers[0], dirs[0])
    doc["controller_cpu"] = {
        n: {"wall_s": d["median_s"], "hosts": int(n), **d["controller"]}
        for n, d in doc["deploys"].items()
    }


def one_host(project: Project, server: Sshd, data_dir: Path) -> dict[str, Any]:
    """Deploy and level 2 to one SSH host against their floors through one `ssh` command each,
    interleaved run by run."""
    proj = load_project(project.root, process_env={})
    env = proj.env("staging")
    layout = Layout(str(data_dir))
    key = server.table()
    floor = Floor(
        root=project.root,
        env=env,
        service=proj.service,
        home=project.root / ".stageflow" / "hosts" / f"floor-{server.address}",
        venv=f"{layout.venvs}/{venv_key(project.root / LOCK)}",
        workers=proj.policies["staging"].workers,
        bind=server.address,
        ssh=Ssh(server.address, server.port, key["identity_file"], key["known_hosts"]),
    )
    commit = c.run(["git", "rev-parse", "HEAD"], cwd=project.root).stdout.strip()
    deploys, floor_deploys, level2, floor_backs, rids = [], [], [], [], []
    try:
        floor.setup(commit, free_port_on(server.address))
        for n in range(runs_for(1)):
            took, out = timed_inv("staging.deploy", root=project.root)
            deploys.append(took)
            rids.append(out["release"])
            floor_deploys.append(floor.deploy(commit, f"r{n + 1}"))
        for n in range(runs_for(1)):  # back and forth between the last two releases
            took, _ = timed_inv(
                "staging.rollback", "--level", "2", "--to", rids[-2 + n % 2], "--yes",
                root=project.root,
            )  # fmt: skip
            level2.append(took)
            floor_backs.append(floor.rollback(f"r{len(rids) - 1 + n % 2}"))
    finally:
        floor.stop()
        shutil.rmtree(floor.home, ignore_errors=True)
    med = statistics.median
    return {
        "host": server.destination,
        "floor": "one `ssh` command: extract the archive from stdin, link the venv, gunicorn "
        "master on the shared listener socket, wait for its workers, switch, drain the old "
        "master; then one GET from this machine (rollback: the same without the archive)",
        "deploy": c.summary(deploys),
        "deploy_floor": c.summary(floor_deploys),
        "deploy_ratio_to_floor": round(med(deploys) / med(floor_deploys), 2),
        "deploy_target_s": ONE_HOST_TARGETS_S["deploy"],
        "level2": c.summary(level2),
        "level2_floor": c.summary(floor_backs),
        "level2_ratio_to_floor": round(med(level2) / med(floor_backs), 2),
        "level2_target_s": ONE_HOST_TARGETS_S["level2"],
    }


def timed_inv(*args: str, root: Path) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    res = c.run([c.INV, *args, "--json"], cwd=root, env=c.inv_env(), timeout=600)
    return time.perf_counter() - start, json.loads(res.stdout)


ROLLBACK_HOSTS = int(os.environ.get("STAGEFLOW_BENCH_ROLLBACK_HOSTS", "4"))


def measure_rollbacks(project: Project, servers: list[Sshd]) -> dict[str, Any]:
    """Each rollback level over ROLLBACK_HOSTS hosts at batch 25%, with the deploy beside it."""
    n = min(ROLLBACK_HOSTS, len(servers))
    lock = project.root / "app" / "requirements.lock"
    venv = shared_venv(lock)
    dirs = set_hosts(project.root, "staging", servers[:n], batch=BATCH, verify_window_s=0)
    for d in dirs:
        seed_venv(d, venv, lock)
    project.set_policy("staging", keep_releases=20)  # x must outlive the runs' deploys
    project.commit(f"staging on {n} hosts, for rollbacks")

    def inv_json(*args: str) -> tuple[float, dict[str, Any]]:
        start = time.perf_counter()
        res = c.run([c.INV, *args, "--json"], cwd=project.root, env=c.inv_env(), timeout=600)
        took = time.perf_counter() - start
        out = json.loads(res.stdout)
        if isinstance(out, dict) and "hosts" in out:
            assert hosts_ok(out, n), out["hosts"]
        return took, out

    def release(args: tuple[str, ...]) -> str:
        return str(inv_json(*args)[1]["release"])

    deploy = ("staging.deploy",)
    x = release(deploy)
    inv_json("staging.backup")  # taken while x serves: level 3 goes back to it
    y = release(deploy)
    walls: dict[str, list[float]] = {"deploy": [], "level 1": [], "level 2": [], "level 3": []}
    steps: dict[str, Any] = {}
    for _ in range(3):
        walls["deploy"].append(inv_json(*deploy)[0])
        y = release(deploy)  # the next level 2 alternates between x and this one
        took, out = inv_json("staging.rollback", "--level", "1", "--yes")
        walls["level 1"].append(took)
        steps["level 1"] = out["steps"]
        for target in (x, y):
            took, out = inv_json("staging.rollback", "--level", "2", "--to", target, "--yes")
            walls["level 2"].append(took)
            steps["level 2"] = out["steps"]
        # y serves; level 3 restores the backup taken under x, then x serves everywhere
        took, out = inv_json("staging.rollback", "--level", "3", "--yes", "--reason", "bench")
        assert out["release"] == x, out
        walls["level 3"].append(took)
        steps["level 3"] = out["steps"]
        c.run([c.INV, "staging.unfreeze", "--reason", "bench"], cwd=project.root, env=c.inv_env())
    return {
        "hosts": n,
        "batch": BATCH,
        "batches": len(group.batches(list(range(n)), BATCH)),
        **{name: c.summary(samples, digits=2) for name, samples in walls.items()},
        "last_steps_s": steps,
    }


def idle_busy_cores(seconds: float = 3.0) -> float:
    """Cores kept busy while no deploy runs: staging's idle servers and any other work here."""
    busy = machine_busy_s()
    time.sleep(seconds)
    return round((machine_busy_s() - busy) / seconds, 2)


def venv_copy(venv: Path) -> dict[str, Any]:
    """What a host pays once per lock-file change to take the cached venv into the environment:
    `cp -al` (new directories over hard links, what a deploy runs) against `cp -a` (a whole copy,
    its fallback across filesystems and the baseline), each the median of 3."""
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    entries = sum(1 for _ in venv.rglob("*"))
    out: dict[str, Any] = {"mb": round(size / 1e6, 1), "entries": entries}
    for name, flags in (("link", "-al"), ("copy", "-a")):
        walls, cpus = [], []
        for i in range(3):
            scratch = support.public_tmpdir("sf-bench-venv-")
            try:
                kids = children_cpu_s()
                argv = ["cp", flags, str(venv), str(scratch / f"copy{i}")]
                walls.append(c.wall(lambda argv=argv, scratch=scratch: c.run(argv, cwd=scratch)))
                cpus.append(children_cpu_s() - kids)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        out[name] = {
            "wall_s": round(statistics.median(walls), 3),
            "cpu_s": round(statistics.median(cpus), 3),
        }
    out["link_over_copy_wall"] = round(out["link"]["wall_s"] / out["copy"]["wall_s"], 3)
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
