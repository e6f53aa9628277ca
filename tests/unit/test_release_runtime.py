"""How a release of any service is built and started, without servers: the venv's key, the
settings file, the launcher's environment, and the gunicorn hooks (ready probe, header, counters)
called in-process the way a worker calls them."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from deploy import releases
from deploy.commands import release as cmd
from deploy.config import load_project
from deploy.errors import ServiceError
from deploy.hosts import Host
from deploy.runtime import gunicorn_conf as hooks
from deploy.runtime import launch
from deploy.service import Service
from deploy.state import Layout
from tests import support


def _service(**kw: str) -> Service:
    return Service(name="svc", wsgi="svc:app", **kw)  # type: ignore[arg-type]


# -- the venv's key ---------------------------------------------------------------------------------


def test_a_requirements_file_is_installed_with_r_and_keys_the_venv(tmp_path: Path) -> None:
    for rel in ("a", "b"):
        (tmp_path / rel / "web").mkdir(parents=True)
        (tmp_path / rel / "web" / "requirements.txt").write_text("gunicorn==23.0.0\n")
    svc = _service(dir="web", requirements="requirements.txt")
    a = releases.venv_spec(Host(), svc, str(tmp_path / "a"), "c0ffee")
    b = releases.venv_spec(Host(), svc, str(tmp_path / "b"), "c0ffee")
    assert a.install == ("-r", f"{tmp_path}/a/web/requirements.txt")
    assert a.cwd == f"{tmp_path}/a/web"
    assert a.key == b.key  # the same requirements in another release share the venv
    (tmp_path / "b" / "web" / "requirements.txt").write_text("gunicorn==23.0.0\nrequests\n")
    assert releases.venv_spec(Host(), svc, str(tmp_path / "b"), "c0ffee").key != a.key


def test_every_file_a_requirements_file_includes_keys_the_venv(tmp_path: Path) -> None:
    web = tmp_path / "web"
    (web / "requirements").mkdir(parents=True)
    (web / "requirements.txt").write_text("-r requirements/base.txt  # the pins\n")
    (web / "requirements" / "base.txt").write_text(
        "--constraint=pins.txt\nflask\n-r ../requirements.txt\n"
    )
    (web / "requirements" / "pins.txt").write_text("flask==3.0.0\n")
    svc = _service(dir="web", requirements="requirements.txt")
    first = releases.venv_spec(Host(), svc, str(tmp_path), "c0ffee")
    assert [n for n, _ in first.files] == [
        "web/requirements.txt",
        "web/requirements/base.txt",
        "web/requirements/pins.txt",
    ]
    (web / "requirements" / "pins.txt").write_text("flask==3.1.0\n")  # a pin two files down
    assert releases.venv_spec(Host(), svc, str(tmp_path), "c0ffee").key != first.key
    (web / "requirements" / "pins.txt").unlink()
    with pytest.raises(ServiceError) as err:
        releases.venv_spec(Host(), svc, str(tmp_path), "c0ffee123456789")
    assert err.value.message == (
        "web/requirements/base.txt includes web/requirements/pins.txt, which is not in commit "
        "c0ffee123456"
    )


def test_a_folder_of_the_repository_the_requirements_install_keys_the_venv(tmp_path: Path) -> None:
    import subprocess

    repo = tmp_path / "repo"
    files = {
        "web/requirements.txt": "flask\n-e .\n../libs/shared[extra]  # ours\n",
        "web/app.py": "app = 1\n",
        "libs/shared/shared.py": "X = 1\n",
    }

    def commit(changes: dict[str, str]) -> str:
        for rel, text in changes.items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(text)
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "c"], check=True)
        out = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True)
        return out.stdout.decode().strip()

    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    svc = _service(dir="web", requirements="requirements.txt")

    def key(commit_id: str) -> str:
        spec = releases.venv_spec(
            Host(), svc, str(repo), commit_id, releases.object_in_commit(repo, commit_id)
        )
        return spec.key

    first = commit(files)
    spec = releases.venv_spec(Host(), svc, str(repo), first, releases.object_in_commit(repo, first))
    assert [n for n, _ in spec.files] == ["web/requirements.txt", "local libs/shared"]
    # the service's own code changes: the same venv (its code is imported from the release)
    assert key(commit({"web/app.py": "app = 2\n"})) == key(first)
    # the library it installs changes: a new one
    assert key(commit({"libs/shared/shared.py": "X = 2\n"})) != key(first)


def test_a_pyproject_installs_the_folder_and_its_lock_keys_the_venv(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "svc"\n')
    svc = _service(requirements="pyproject.toml")
    bare = releases.venv_spec(Host(), svc, str(tmp_path), "c0ffee")
    assert bare.install == (str(tmp_path),) and bare.mode == "package"
    (tmp_path / "uv.lock").write_text("version = 1\n")
    uv = releases.venv_spec(Host(), svc, str(tmp_path), "c0ffee")
    assert uv.key != bare.key and uv.install == (str(tmp_path),)
    (tmp_path / "requirements.lock").write_text("requests==2.32.3\n")
    pinned = releases.venv_spec(Host(), svc, str(tmp_path), "c0ffee")
    assert pinned.install == ("-r", f"{tmp_path}/requirements.lock", str(tmp_path))
    assert pinned.key not in (uv.key, bare.key)


def test_a_missing_requirements_file_names_the_file_and_commit(tmp_path: Path) -> None:
    svc = _service(dir="web", requirements="requirements.txt")
    with pytest.raises(ServiceError) as err:
        releases.venv_spec(Host(), svc, str(tmp_path), "c0ffee123456789")
    assert "web/requirements.txt" in err.value.message and "c0ffee123456" in err.value.message


def test_the_gunicorn_pin_keys_the_venv(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("flask\n")
    spec = releases.venv_spec(Host(), _service(), str(tmp_path), "c0ffee")
    assert spec.gunicorn.startswith("gunicorn==")
    other = releases.VenvSpec(spec.files, spec.mode, spec.install, spec.cwd, "gunicorn==22.0.0")
    assert other.key != spec.key


# -- the settings file ------------------------------------------------------------------------------


@pytest.fixture
def staging(tmp_path: Path):
    (tmp_path / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(tmp_path)
    return load_project(tmp_path, process_env={})


def test_the_settings_file_is_private_and_holds_the_complete_urls(staging, tmp_path: Path) -> None:
    env = staging.env("staging")
    layout = Layout(str(tmp_path / "home"))
    rel = releases.Release("20260101T000000Z-abc", "abc123", "main")
    path = releases.write_settings(Host(), env, staging.service, layout, rel)
    assert path == f"{layout.shared}/service.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = json.loads(Path(path).read_text())
    assert "pg-staging-s3cret-value" in data["DATABASE_URL"]
    assert data["PGPASSWORD"] == "pg-staging-s3cret-value"
    assert data["STAGEFLOW_RELEASE"] == rel.id and data["STAGEFLOW_COMMIT"] == "abc123"


def test_no_setting_travels_on_the_command_line(staging, tmp_path: Path) -> None:
    env = staging.env("staging")
    layout = Layout(str(tmp_path / "home"))
    rel = releases.Release("20260101T000000Z-abc", "abc123", "main")
    settings = releases.settings_of(env, staging.service, rel)
    launch_paths = cmd.Launch(
        control="/c",
        settings="/s.json",
        pidfile="/p",
        logfile="/l",
        ready_dir="/r",
        metrics_dir="/m",
        release=rel.id,
    )
    argv = cmd.gunicorn(
        layout.release(rel.id),
        launch_paths,
        app=staging.service.wsgi,
        service_dir=staging.service.path_in_release(layout.release(rel.id)),
        worker_class="sync",
        ready_path="/readyz",
        asgi=False,
        workers=2,
    )
    line = " ".join(argv)
    for key in ("DATABASE_URL", "REDIS_URL", "PGPASSWORD", "API_KEYS", "SECRET_KEY"):
        assert settings[key] not in line, key


# -- the launcher -----------------------------------------------------------------------------------


def test_the_launcher_gives_the_service_its_settings_and_little_else() -> None:
    env = launch.environment(
        {"DATABASE_URL": "postgresql://u:pw@h/db", "PATH": "/svc/bin"},
        {"STAGEFLOW_READY_DIR": "/r"},
        {"PATH": "/usr/bin", "HOME": "/home/op", "VIRTUAL_ENV": "/op/venv", "PYTHONPATH": "/x"},
    )
    assert env == {
        "PATH": "/svc/bin",
        "HOME": "/home/op",
        "DATABASE_URL": "postgresql://u:pw@h/db",
        "STAGEFLOW_READY_DIR": "/r",
    }


def test_a_bad_settings_file_is_one_line_without_its_values(tmp_path: Path) -> None:
    bad = tmp_path / "s.json"
    bad.write_text('{"DATABASE_URL": 5, "X": "hunter2"}')
    with pytest.raises(launch.LaunchError) as err:
        launch.read_settings(str(bad))
    assert "hunter2" not in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(launch.LaunchError, match="cannot read"):
        launch.read_settings(str(tmp_path / "missing.json"))


# -- the hooks: ready probe ---------------------------------------------------------------------


def wsgi_app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("no database")
    status = "200 OK" if path == "/ready" else "503 Service Unavailable"
    start_response(status, [("Content-Type", "text/plain")])
    return [f"{path} says {status}".encode()]


def test_the_wsgi_probe_reports_status_and_body() -> None:
    assert hooks.probe(wsgi_app, "/ready") == (True, "200 /ready says 200 OK")
    ok, detail = hooks.probe(wsgi_app, "/other")
    assert not ok and detail.startswith("503 /other says 503")
    assert hooks.probe(wsgi_app, "/boom") == (False, "RuntimeError: no database")


def suppressed_app(environ, start_response):
    """A second failure raised `from None`: the first is hidden on purpose."""
    try:
        raise ValueError(f"Invalid HTTP_HOST header: {environ['HTTP_HOST']!r}")
    except ValueError:
        raise RuntimeError("CSRF_USE_SESSIONS is enabled, but request.session is not set") from None


def test_the_probe_names_the_first_exception_of_a_chain() -> None:
    ok, detail = hooks.probe(chained_app, "/")
    assert not ok
    assert detail == (
        "ValueError: Invalid HTTP_HOST header: 'localhost' "
        "(then RuntimeError: CSRF_USE_SESSIONS is enabled, but request.session is not set)"
    )
    # `raise ... from None` says the first one does not matter: the last one is said alone
    assert hooks.probe(suppressed_app, "/") == (
        False,
        "RuntimeError: CSRF_USE_SESSIONS is enabled, but request.session is not set",
    )
    hint = releases.not_ready_hint("DisallowedHost: Invalid HTTP_HOST header: 'localhost'", "/")
    assert "ALLOWED_HOSTS" in hint


def chained_app(environ, start_response):
    try:
        raise ValueError(f"Invalid HTTP_HOST header: {environ['HTTP_HOST']!r}")
    except ValueError:
        raise RuntimeError("CSRF_USE_SESSIONS is enabled, but request.session is not set")  # noqa: B904


class LifespanApp:
    def __init__(self, *, fail_startup: bool = False) -> None:
        self.events: list[str] = []
        self.fail_startup = fail_startup

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    if self.fail_startup:
                        await send({"type": "lifespan.startup.failed", "message": "no redis"})
                        return
                    scope["state"]["ready"] = "yes"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = f"{scope['path']} {scope['state'].get('ready')}".encode()
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def no_lifespan_app(scope, receive, send):
    assert scope["type"] == "http", "lifespan is not supported"
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_the_asgi_probe_runs_lifespan_around_one_request() -> None:
    app = LifespanApp()
    assert hooks.is_asgi(app) and hooks.is_asgi(no_lifespan_app) and not hooks.is_asgi(wsgi_app)
    assert hooks.probe(app, "/ready") == (True, "200 /ready yes")
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]
    assert hooks.probe(no_lifespan_app, "/ready") == (True, "204 ")
    ok, detail = hooks.probe(LifespanApp(fail_startup=True), "/ready")
    assert not ok and "no redis" in detail


class LoopBoundApp(LifespanApp):
    """Holds a client made on first use and bound to that event loop, as an async engine's pooled
    asyncpg connection is: used from another loop it fails."""

    def __init__(self) -> None:
        super().__init__()
        self.bound: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.bound = self.bound or asyncio.get_running_loop()
            if self.bound is not asyncio.get_running_loop():
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b"attached to a different loop"})
                return
        await super().__call__(scope, receive, send)


async def serve(app, *paths: str) -> tuple[list[dict], list[int]]:
    """What uvicorn does with app: the lifespan startup, then requests on the same loop, then the
    shutdown; (the lifespan messages the server got, each request's status)."""
    inbox: asyncio.Queue = asyncio.Queue()
    got: list[dict] = []
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.ensure_future(
        app({"type": "lifespan", "state": {}}, inbox.get, lambda m: asyncio.sleep(0, got.append(m)))
    )
    while not got:
        await asyncio.sleep(0)
    statuses = []
    if got[0]["type"] != "lifespan.startup.complete":
        lifespan.cancel()  # uvicorn's worker exits: no shutdown is sent
        return got, statuses
    for path in paths:
        statuses.append((await hooks._asgi_get(app, path, {}))[0])
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(lifespan, 5)
    return got, statuses


def test_an_asgi_app_is_asked_ready_on_the_loop_that_serves_it() -> None:
    app, reports = LoopBoundApp(), []
    ready = hooks.ReadyAtStartup(app, "/ready", lambda ok, detail: reports.append((ok, detail)))
    got, statuses = asyncio.run(serve(ready, "/ready", "/x"))
    assert [m["type"] for m in got] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert reports == [(True, "200 /ready yes")] and statuses == [200, 200]
    # a probe on a loop of its own (as before) leaves the app bound to a loop that is gone
    bound = LoopBoundApp()
    assert hooks.probe(bound, "/ready")[0]
    assert asyncio.run(serve(bound, "/x"))[1] == [500]


def test_an_asgi_release_not_ready_fails_its_lifespan_startup() -> None:
    class Unready(LifespanApp):
        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await super().__call__(scope, receive, send)
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"no database"})

    for app, detail in (
        (LifespanApp(fail_startup=True), "lifespan startup failed: no redis"),
        (Unready(), "503 no database"),
    ):
        reports: list = []
        ready = hooks.ReadyAtStartup(app, "/ready", lambda ok, d, r=reports: r.append((ok, d)))
        got, _ = asyncio.run(serve(ready))
        # uvicorn's worker exits with the boot error that halts the master
        assert got[0]["type"] == "lifespan.startup.failed" and reports == [(False, detail)]


def test_an_asgi_app_without_lifespan_is_answered_for() -> None:
    reports: list = []
    ready = hooks.ReadyAtStartup(no_lifespan_app, "/ready", lambda ok, d: reports.append((ok, d)))
    got, statuses = asyncio.run(serve(ready, "/ready"))
    assert [m["type"] for m in got] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert reports == [(True, "204 ")] and statuses == [204]


# -- the hooks: header and counters -------------------------------------------------------------


def test_counters_bucket_latencies_by_the_edges(tmp_path: Path) -> None:
    counters = hooks.Counters("R1", str(tmp_path), 42)
    for status, ms in ((200, 0.4), (200, 1.0), (404, 1.5), (500, 13000.0), (503, 20000.0)):
        counters.add(status, ms)
    counters.flush()
    data = json.loads((tmp_path / "42.json").read_text())
    assert set(data) == {
        "release", "pid", "requests", "errors", "status", "edges_ms", "counts", "updated"
    }  # fmt: skip
    assert (data["release"], data["pid"], data["requests"], data["errors"]) == ("R1", 42, 5, 2)
    assert data["status"] == {"200": 2, "404": 1, "500": 1, "503": 1}
    assert data["edges_ms"] == list(hooks.EDGES_MS) and len(data["counts"]) == 22
    assert data["counts"][0] == 2 and data["counts"][1] == 1  # <= 1 ms; <= 2 ms
    assert data["counts"][20] == 1 and data["counts"][21] == 1  # <= 13000; over the last edge
    assert [p.name for p in tmp_path.iterdir()] == ["42.json"]  # no temp file left


def test_counting_never_writes_the_flusher_writes_what_is_new(tmp_path: Path) -> None:
    counters = hooks.Counters("R1", str(tmp_path), 7)
    for _ in range(500):
        counters.add(200, 1)
    assert not (tmp_path / "7.json").exists()  # no file I/O on a request's path
    counters.flush_if_new()
    path = tmp_path / "7.json"
    assert json.loads(path.read_text())["requests"] == 500
    path.unlink()
    counters.flush_if_new()  # nothing new: nothing written
    assert not path.exists()
    counters.add(503, 2)
    counters.flush_if_new()
    assert json.loads(path.read_text())["errors"] == 1


def test_the_wsgi_middleware_names_the_release_and_counts(tmp_path: Path) -> None:
    counters = hooks.Counters("R1", str(tmp_path), 1)
    app = hooks.WSGIMiddleware(wsgi_app, counters)
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers

    environ = {"PATH_INFO": "/ready", "wsgi.errors": sys.stderr}
    body = app(environ, start_response)
    assert b"".join(body) == b"/ready says 200 OK"
    assert ("X-Stageflow-Release", "R1") in seen["headers"]
    assert counters.requests == 0  # counted once the server sent it and closed the body
    body.close()
    assert counters.status == {"200": 1}
    with pytest.raises(RuntimeError):
        app({**environ, "PATH_INFO": "/boom"}, start_response)

    def streamed(environ, start_response):
        start_response("201 Created", [])
        yield b"a"

    body = hooks.WSGIMiddleware(streamed, counters)(environ, start_response)
    assert counters.requests == 2  # a stream counts when the server closes it
    assert list(body) == [b"a"]
    body.close()
    assert (counters.requests, counters.errors, counters.status) == (
        3,
        1,
        {"200": 1, "500": 1, "201": 1},
    )


def test_the_asgi_middleware_names_the_release_and_counts(tmp_path: Path) -> None:
    import asyncio

    counters = hooks.Counters("R2", str(tmp_path), 1)
    app = hooks.ASGIMiddleware(LifespanApp(), counters)
    assert hooks.is_asgi(app)  # uvicorn must still see an ASGI 3 app
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/x", "state": {}}
    asyncio.run(app(scope, receive, send))
    assert (b"x-stageflow-release", b"R2") in sent[0]["headers"]
    assert counters.status == {"200": 1}


def test_a_ready_path_the_service_does_not_route_names_the_setting() -> None:
    # a FastAPI app has no "/": the probe's 404 is stageflow.toml's to fix, not the release's
    hint = releases.not_ready_hint('404 {"detail":"Not Found"}', "/")
    assert "no GET /" in hint and "[service] health" in hint
    assert "set [service]" in releases.not_ready_hint("405 Method Not Allowed", "/readyz")
    moved = releases.not_ready_hint("302 Redirecting...", "/")
    assert "a ready path of its own must answer 2xx" in moved and "health path stand in" in moved
    other = releases.not_ready_hint('503 {"ready": false}', "/readyz")
    assert "[service]" not in other and "migrations" in other


def test_a_switch_waits_for_the_drained_master_before_anything_probes(tmp_path: Path) -> None:
    # a drained uvicorn worker takes connections off the shared socket until its next tick: a
    # probe sent before the old master is gone may be answered by the old release
    import subprocess

    from deploy import procs

    slow_exit = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.3), sys.exit(0)))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    old = subprocess.Popen([sys.executable, "-c", slow_exit], stdout=subprocess.PIPE, text=True)
    try:
        assert old.stdout is not None and old.stdout.readline() == "up\n"
        host, layout = Host(), Layout(str(tmp_path))
        os.makedirs(layout.run)
        host.write_text(releases.master_pidfile(layout, "R1"), f"{old.pid}\n")
        releases.record_started(host, layout, "R1", old.pid)
        assert releases.retire_others(host, layout, keep="R2") == ["R1"]
        assert not procs.alive(old.pid)
    finally:
        old.kill()
        old.wait()


def test_no_master_takes_the_users_shared_control_socket() -> None:
    """gunicorn reads the hooks file as its config: the control socket is off, so no environment's
    master answers gunicornc on the one per-user path every master would share."""
    from gunicorn.app.base import Application

    class Loader(Application):
        def init(self, parser, opts, args):  # noqa: ANN001 - gunicorn's signature
            return None

        def load(self):  # noqa: ANN201 - never called
            return None

    loader = Loader.__new__(Loader)
    loader.usage, loader.prog, loader.callable, loader.cfg = None, None, None, None
    loader.load_default_config()
    conf = Path(__file__).resolve().parents[2] / "deploy" / "runtime" / "gunicorn_conf.py"
    loader.load_config_from_file(str(conf))
    assert loader.cfg.control_socket_disable is True


# -- the ready marks --------------------------------------------------------------------------------


def test_a_mark_being_written_is_not_read_as_an_answer(tmp_path: Path, monkeypatch) -> None:
    """A worker writes its verdict under a name the deploy does not count, then renames it: a
    deploy that lists the directory in between neither halts on an empty "fail" nor counts a
    worker twice."""
    ready = tmp_path / "ready"
    ready.mkdir()
    (ready / "fail-12.tmp").write_text("")  # a writer that opened its file and wrote nothing yet
    (ready / "ok-13.tmp").write_text("")
    assert releases._marks(Host(), str(ready)) == (0, None)
    for name in ("fail-12.tmp", "ok-13.tmp"):
        (ready / name).unlink()

    seen: list[tuple[int, str | None]] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        seen.append(releases._marks(Host(), str(ready)))  # the moment before the rename
        real_replace(src, dst)

    monkeypatch.setattr(hooks, "_READY_DIR", str(ready))
    monkeypatch.setattr(hooks.os, "replace", replace)
    hooks._mark("fail", 12, '503 {"ready": false}')
    assert seen == [(0, None)]
    assert releases._marks(Host(), str(ready)) == (0, '503 {"ready": false}')
    hooks._mark("ok", 13, "200 ok")
    assert sorted(p.name for p in ready.iterdir()) == ["fail-12", "ok-13"]


class _Worker:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def test_a_worker_that_exits_before_it_answered_is_a_failure(tmp_path: Path, monkeypatch) -> None:
    """The master's child_exit hook: a worker gone without an answer is reported as failed (the
    deploy halts at once instead of waiting while gunicorn replaces it again and again); one that
    answered, or one that ends after every worker answered (the dir is gone), is not."""
    ready = tmp_path / "ready"
    ready.mkdir()
    monkeypatch.setattr(hooks, "_READY_DIR", str(ready))
    hooks._mark("ok", 20, "200 ok")
    hooks.child_exit(None, _Worker(20))  # it answered: nothing more to say
    assert releases._marks(Host(), str(ready)) == (1, None)
    hooks.child_exit(None, _Worker(21))
    answered, failure = releases._marks(Host(), str(ready))
    assert failure is not None and failure.startswith(releases.EXITED_BEFORE_READY)
    monkeypatch.setattr(hooks, "_READY_DIR", str(tmp_path / "gone"))
    hooks.child_exit(None, _Worker(22))
    assert not (tmp_path / "gone").exists()


def test_why_a_worker_exited_is_what_the_service_printed(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    gunicorn = "[2026-12-02 13:33:50 +0000] [22274]"
    log.write_text(
        f"{gunicorn} [INFO] Booting worker with pid: 22297\n"
        "earlier: an older worker's words\n"
        f"{gunicorn} [INFO] Booting worker with pid: 22302\n"
        "[2026-12-02 13:33:50 +0000] [22302] [INFO] Worker exiting (pid: 22302)\n"
        "web: cannot load\n"
        f"{gunicorn} [ERROR] Worker (pid:22302) exited with code 1\n"
        f"{gunicorn} [INFO] Shutting down: Master\n"
    )
    assert releases._why_exited(Host(), str(log)) == ("", "web: cannot load")
    log.write_text(
        f"{gunicorn} [ERROR] Worker (pid:22302) was sent SIGKILL! Perhaps out of memory?\n"
    )
    assert releases._why_exited(Host(), str(log))[1].startswith("Worker (pid:22302) was sent")
    log.write_text("Traceback (most recent call last):\n  File \"x\"\nKeyError: 'SHOP_TOKEN'\n")
    assert releases._why_exited(Host(), str(log)) == ("KeyError: 'SHOP_TOKEN'",) * 2


def test_a_process_that_could_not_run_points_at_no_log(staging, tmp_path: Path) -> None:
    env = staging.env("staging")
    layout = Layout(str(tmp_path / "data"))
    Path(layout.run).mkdir(parents=True)
    with pytest.raises(ServiceError) as err:
        releases._refuse_processes(Host(), env, layout, "r1", "worker", "cannot run 'X=1'")
    assert "see " not in err.value.hint and "still run" in err.value.hint
    Path(releases.process_log(layout, "worker")).parent.mkdir(parents=True)
    Path(releases.process_log(layout, "worker")).write_text("boom\n")
    with pytest.raises(ServiceError) as err:
        releases._refuse_processes(Host(), env, layout, "r1", "worker", "boom")
    assert f"see {releases.process_log(layout, 'worker')}; " in err.value.hint
