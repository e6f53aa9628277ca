"""Your service, not ours: a warm `inv dev.deploy` of the Flask service of tests/services/flask_shop
(deployed as a team would, as tests/e2e/test_service_flask.py does) against the reference
service's warm deploy in the same run; and what the per-worker hooks (the release header and the
verify window's counters, deploy/runtime/gunicorn_conf.py) add to a request's latency, against
gunicorn with no hooks on the same release, app, settings and venv."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

from deploy import releases
from deploy.commands.release import HELPERS_DIR
from deploy.config import load_project
from deploy.runtime import gunicorn_conf
from deploy.runtime.launch import environment
from deploy.state import Layout
from tests.e2e.conftest import destroy, make_project
from tests.e2e.deployed_services import Service, operator_venv
from tests.support import free_port

REQUESTS = int(os.environ.get("STAGEFLOW_BENCH_REQUESTS", "2000"))  # per server, per run
IN_PROCESS_CALLS = 20_000
BOOT_TIMEOUT_S = 30.0


# -- the Flask service beside the reference service ------------------------------------------------


def flask_shop() -> Service:
    """flask_shop as test_service_flask.py sets it up: `stageflow init`, a committed key, a
    secret, its worker process; dev up and deployed once (which builds its venv)."""
    shop = Service("flask_shop", operator_venv())
    shop.init()
    shop.set_table("service.env", 'keys = ["SHOP_GREETING"]\nsecrets = ["SMTP_PASSWORD"]')
    shop.set_table("service.processes", 'worker = ["python", "-m", "shop.worker"]')
    with open(shop.root / "env" / "dev.env", "a", encoding="utf-8") as fh:
        fh.write("SHOP_GREETING=hello from dev\n")
    shop.commit("stageflow init")
    shop.ok("dev.up")
    shop.ok("dev.deploy")
    return shop


def shop_env(shop: Service) -> dict[str, str]:
    """The team's shell: their venv's `inv` first on PATH; bytecode as in c.inv_env()."""
    env = shop.env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def deploy(root: Path, inv: str, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Wall seconds of one `inv dev.deploy --json`, and its steps' seconds."""
    out: dict[str, Any] = {}
    took = c.wall(
        lambda: out.update(
            json.loads(c.run([inv, "dev.deploy", "--json"], cwd=root, env=env).stdout)
        )
    )
    return took, out["steps"]


# as gunicorn finds it: a name is an attribute of the module (a module __getattr__ included),
# anything else is called with the module's names
IMPORT_APP = (
    "import importlib, sys; name, _, expr = sys.argv[1].partition(':'); "
    "mod = importlib.import_module(name); expr = expr or 'application'; "
    "app = getattr(mod, expr) if expr.isidentifier() else eval(expr, vars(mod))"
)


def import_floor(root: Path) -> float:
    """Median seconds of one Python in the serving release's venv importing the service's app as
    gunicorn's worker does ([service] wsgi, from the service's folder, with its settings): what
    every worker of a new release pays before it can answer, whatever deploys it."""
    proj = load_project(root, process_env={})
    service, layout = proj.service, Layout(str(proj.env("dev").data_dir))
    release = os.path.realpath(layout.current)
    settings = json.loads(Path(releases.Paths.of(layout).settings).read_text())
    service_dir = service.path_in_release(release)
    env = environment(settings, {}, dict(os.environ))
    env["PYTHONPATH"] = service_dir
    argv = [f"{release}/.venv/bin/python", "-c", IMPORT_APP, service.wsgi]
    c.run(argv, cwd=Path(service_dir), env=env)  # warm: the page cache, bytecode
    return statistics.median(
        c.wall(lambda: c.run(argv, cwd=Path(service_dir), env=env)) for _ in range(c.RUNS)
    )


def step_medians(runs: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    names = list(runs[0][1])
    return {s: round(statistics.median(r[1].get(s, 0.0) for r in runs), 3) for s in names}


# -- the hooks against none ------------------------------------------------------------------------


class Gunicorn:
    """One master and one worker of the serving release on a port of its own, in the foreground
    of this script; with the release's gunicorn_conf.py (hooks) or an empty config (none)."""

    def __init__(self, root: Path, *, hooks: bool, work: Path) -> None:
        proj = load_project(root, process_env={})
        service, layout = proj.service, Layout(str(proj.env("dev").data_dir))
        release = os.path.realpath(layout.current)
        self.rid = os.path.basename(release)
        self.port = free_port()
        settings = json.loads(Path(releases.Paths.of(layout).settings).read_text())
        runtime = {"STAGEFLOW_RELEASE_ID": self.rid}
        config = work / "empty_conf.py"
        config.touch()
        if hooks:
            config = Path(release, HELPERS_DIR, "gunicorn_conf.py")
            self.metrics = work / "metrics"
            runtime["STAGEFLOW_METRICS_DIR"] = str(self.metrics)
        service_dir = service.path_in_release(release)
        argv = [f"{release}/.venv/bin/python", "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
                "--workers", "1", "--worker-class", service.worker_class, "--chdir", service_dir,
                "--pythonpath", service_dir, "--config", str(config), "--timeout", "30",
                "--error-logfile", str(work / f"gunicorn-{'hooks' if hooks else 'none'}.log"),
                service.wsgi]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            env=environment(settings, runtime, dict(os.environ)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.path = service.health
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while self.get_status() != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"gunicorn ({'hooks' if hooks else 'none'}) did not answer")
            time.sleep(0.05)

    def worker_cpu_s(self) -> float:
        """CPU seconds (user + sys) of the master's one worker so far, from /proc: what serving
        cost it, flushes of the counters file included, and much less moved by load than wall."""
        ticks = os.sysconf("SC_CLK_TCK")
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:  # ppid: the worker forked by this master
                return (int(fields[11]) + int(fields[12])) / ticks
        raise SystemExit("the gunicorn master has no worker")

    def get_status(self) -> int:
        try:
            return get(self.port, self.path)[0]
        except OSError:
            return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def get(port: int, path: str) -> tuple[int, float, dict[str, str]]:
    """One GET on a new connection (a sync worker closes it anyway): status, seconds, headers."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        took = time.perf_counter() - start
        return resp.status, took, dict(resp.getheaders())
    finally:
        conn.close()


def latencies(hooks: Gunicorn, none: Gunicorn, n: int) -> tuple[list[float], list[float]]:
    """n requests to each, alternating, the one asked first swapping every pair: load and the
    machine's mood fall on both alike."""
    with_hooks: list[float] = []
    without: list[float] = []
    for i in range(n):
        pair = ((hooks, with_hooks), (none, without))
        for server, out in pair if i % 2 == 0 else reversed(pair):
            status, took, _ = get(server.port, server.path)
            if status != 200:
                raise SystemExit(f"GET {server.path} answered {status}")
            out.append(took)
    return with_hooks, without


def middleware_cost_us(work: Path) -> dict[str, Any]:
    """The hooks' middleware alone, in-process, around a WSGI app that does nothing: what naming
    the release and counting a response cost the worker (the count is taken as the server closes
    the body, after the response was sent), and what one write of the counters file costs (by
    the worker's flusher thread, once per FLUSH_EVERY_S while requests arrive); microseconds."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    (work / "inprocess").mkdir()
    counting = gunicorn_conf.Counters("bench", "", os.getpid())
    flushing = gunicorn_conf.Counters("bench", str(work / "inprocess"), os.getpid())
    flushing.add(200, 1.0)

    def per_call(fn: Any) -> float:
        start = time.perf_counter()
        for _ in range(IN_PROCESS_CALLS):
            gunicorn_conf.wsgi_get(fn, "/")
        return (time.perf_counter() - start) / IN_PROCESS_CALLS

    bare, counted, flushes = [], [], []
    for _ in range(c.RUNS):
        bare.append(per_call(app))
        counted.append(per_call(gunicorn_conf.WSGIMiddleware(app, counting)))
        for _ in range(200):
            flushes.append(c.wall(flushing.flush))
    med = statistics.median
    return {
        "calls_per_run": IN_PROCESS_CALLS,
        "bare_us": round(med(bare) * 1e6, 2),
        "naming_and_counting_us": round((med(counted) - med(bare)) * 1e6, 2),
        "flush_median_us": round(med(flushes) * 1e6, 1),
        "flush_mean_us": round(statistics.mean(flushes) * 1e6, 1),
        "flush_every_s": gunicorn_conf.FLUSH_EVERY_S,
    }


def hooks_against_none(root: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sf-bench-hooks-"))
    servers: list[Gunicorn] = []
    try:
        hooks = Gunicorn(root, hooks=True, work=work)
        servers.append(hooks)
        none = Gunicorn(root, hooks=False, work=work)
        servers.append(none)
        header = get(hooks.port, hooks.path)[2]
        if header.get(gunicorn_conf.HEADER) != hooks.rid:
            raise SystemExit("the hooked gunicorn does not name its release: hooks not loaded")
        if gunicorn_conf.HEADER in get(none.port, none.path)[2]:
            raise SystemExit("the plain gunicorn names a release: it loaded the hooks")
        latencies(hooks, none, 200)  # warm: both workers' first requests, the page cache
        runs, cpu = [], []
        for _ in range(c.RUNS):
            before = hooks.worker_cpu_s(), none.worker_cpu_s()
            runs.append(latencies(hooks, none, REQUESTS))
            cpu.append((hooks.worker_cpu_s() - before[0], none.worker_cpu_s() - before[1]))
        counted = sum(json.loads(p.read_text())["requests"] for p in hooks.metrics.glob("*.json"))
        in_process = middleware_cost_us(work)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    med, mean = statistics.median, statistics.mean
    on, off = [med(h) for h, _ in runs], [med(n) for _, n in runs]
    on_mean, off_mean = [mean(h) for h, _ in runs], [mean(n) for _, n in runs]
    pooled_on = [x for h, _ in runs for x in h]
    pooled_off = [x for _, n in runs for x in n]
    # the figure: a request's median latency with the hooks over without, per run, then the median
    # over the runs. The mean follows the machine's stalls; the worker's CPU per request and the
    # in-process figures show what the hooks cost the worker, off the client's wait included.
    mean_ratio = med(a / b for a, b in zip(on_mean, off_mean, strict=True))
    median_ratio = med(a / b for a, b in zip(on, off, strict=True))
    return {
        "path": hooks.path,
        "requests_per_run": REQUESTS,
        "hooks_request_mean": c.summary(on_mean, digits=6),
        "none_request_mean": c.summary(off_mean, digits=6),
        "hooks_request_median": c.summary(on, digits=6),
        "none_request_median": c.summary(off, digits=6),
        "hooks_p99_ms": round(c.percentile(pooled_on, 99) * 1000, 3),
        "none_p99_ms": round(c.percentile(pooled_off, 99) * 1000, 3),
        "hooks_over_none_ratio": round(median_ratio, 4),
        "hooks_over_none_mean_ratio": round(mean_ratio, 4),
        "added_us_mean": round((med(on_mean) - med(off_mean)) * 1e6, 1),
        "added_us_median": round((med(on) - med(off)) * 1e6, 1),
        "hooks_worker_cpu_per_request_us": round(med(h for h, _ in cpu) / REQUESTS * 1e6, 1),
        "none_worker_cpu_per_request_us": round(med(n for _, n in cpu) / REQUESTS * 1e6, 1),
        "worker_cpu_ratio": round(med(h / n for h, n in cpu if n), 4),
        "counted_by_hooks": counted,
        "middleware_in_process": in_process,
    }


def main() -> None:
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    proj = make_project("sf-bench-service-")
    shop: Service | None = None
    env = c.inv_env()
    try:
        c.run([c.INV, "dev.up"], cwd=proj.root, env=env)
        c.run([c.INV, "dev.deploy"], cwd=proj.root, env=env)  # builds the venv once
        shop = flask_shop()
        shop_inv, senv = str(shop.venv / "bin" / "inv"), shop_env(shop)
        deploy(proj.root, c.INV, env)  # warm: each checkout's bytecode
        deploy(shop.root, shop_inv, senv)
        reference, flask = [], []
        for _ in range(c.RUNS):  # interleaved: each pair shares the machine's mood
            reference.append(deploy(proj.root, c.INV, env))
            flask.append(deploy(shop.root, shop_inv, senv))
        floors = {"reference": import_floor(proj.root), "flask": import_floor(shop.root)}
        hooks = hooks_against_none(proj.root)
    finally:
        if shop is not None:
            shop.destroy()
        destroy(proj)
    med = statistics.median
    c.emit(
        {
            "bench": "service",
            "bench_s": round(time.perf_counter() - began, 1),
            "command": "inv dev.deploy --json, warm, in the reference project and in flask_shop's "
            "repository (stageflow pip-installed into its operator venv)",
            "hooks_command": "GET the health path, a new connection each, alternating between "
            "gunicorn with the release's gunicorn_conf.py and with an empty config; one worker each",
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "results": {
                "reference_warm_deploy": c.summary([w for w, _ in reference]),
                "flask_warm_deploy": c.summary([w for w, _ in flask]),
                "flask_over_reference_ratio": round(
                    med(w for w, _ in flask) / med(w for w, _ in reference), 3
                ),
                "flask_over_reference_pairwise_median": round(
                    med(f[0] / r[0] for f, r in zip(flask, reference, strict=True)), 3
                ),
                "reference_steps_median_s": step_medians(reference),
                "flask_steps_median_s": step_medians(flask),
                # the service's own start: one Python importing its app in the release's venv
                "import_app_s": {k: round(v, 3) for k, v in floors.items()},
                "flask_minus_reference_import_app_s": round(
                    floors["flask"] - floors["reference"], 3
                ),
                "hooks": hooks,
            },
        }
    )


if __name__ == "__main__":
    sys.exit(main())
