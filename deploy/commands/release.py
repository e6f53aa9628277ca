"""argv builders for releases and the service's processes (git archive, venv, listener, gunicorn)."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from deploy.commands import system

# the engine's stdlib-only helpers (listener, launcher, gunicorn hooks), copied into each release
HELPERS_DIR = ".stageflow"
HELPERS = ("listener.py", "launch.py", "gunicorn_conf.py", "redact.py")


def rev_parse(ref: str) -> list[str]:
    return ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"]


def archive(commit: str, output: str) -> list[str]:
    return ["git", "archive", "--format=tar", "-o", output, commit]


def extract(tarball: str, into: str) -> list[str]:
    return ["tar", "-xf", tarball, "-C", into]


def extract_files(tarball: str, into: str) -> list[str]:
    """A tarball's files owned by the caller, their modes under its umask (as Python's tarfile
    "data" filter made them)."""
    return ["tar", "-xf", tarball, "-C", into, "--no-same-owner", "--no-same-permissions"]


def venv_create(python: str, path: str) -> list[str]:
    return [python, "-m", "venv", path]


# As root the service runs as the service user, who cannot run a python under root's home (a
# pyenv's, which is what `python3` on root's PATH often is): a system-wide one first, then PATH's.
SYSTEM_PYTHON_SH = (
    'if [ "$(id -u)" = 0 ]; then for p in /usr/local/bin/python3 /usr/bin/python3; do '
    'if [ -x "$p" ]; then echo "$p"; exit 0; fi; done; fi; command -v python3'
)


def home_dir() -> list[str]:
    """Print the user's home (where a host keeps its venv cache)."""
    return ["sh", "-c", 'echo "$HOME"']


def venv_python() -> list[str]:
    """Print the python a host's release venvs are made from (SYSTEM_PYTHON_SH)."""
    return ["sh", "-c", SYSTEM_PYTHON_SH]


def pip_install(venv: str, args: Sequence[str]) -> list[str]:
    """`pip install ARGS` with the venv's own python (`-r FILE`, a project directory, pins)."""
    return [
        str(PurePosixPath(venv, "bin", "python")),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        *args,
    ]


def venv_install(venv: str, lockfile: str) -> list[str]:
    return pip_install(venv, ["-r", lockfile])


def has_module(venv: str, module: str) -> list[str]:
    """Exits 0 when the venv's python can import module (gunicorn, before installing ours)."""
    return [str(PurePosixPath(venv, "bin", "python")), "-c", f"import {module}"]


def listener(
    python: str,
    helpers: str,
    *,
    port: int,
    control: str,
    pidfile: str,
    host: str = "127.0.0.1",
) -> list[str]:
    """The listener from the helpers shipped into the release (`<release>/.stageflow`)."""
    return [
        python,
        str(PurePosixPath(helpers, "listener.py")),
        "--host",
        host,
        "--port",
        str(port),
        "--control",
        control,
        "--pidfile",
        pidfile,
    ]


@dataclass(frozen=True)
class Launch:
    """Where one gunicorn master of a release finds its socket, settings and marks. Every value
    here is a path, a URL path or a release id: the settings themselves stay in their file."""

    control: str  # the listener's unix socket
    settings: str  # the JSON file of the service's environment (mode 0600)
    pidfile: str
    logfile: str
    ready_dir: str  # each worker leaves ok-<pid> or fail-<pid> here
    metrics_dir: str  # each worker's response counters, <pid>.json
    release: str
    secrets: tuple[str, ...] = ()  # names of settings whose values the log never shows


def code_paths(service_dir: str) -> tuple[str, str]:
    """Where a release's own code imports from, ahead of its venv: the service's folder and its
    `src` (a src layout). A venv built from pyproject.toml (or a requirements file naming `.`)
    holds the package as it was when that venv was built, and every release with the same
    requirements shares the venv: without this, a release whose code changed but whose
    requirements did not would serve the older code."""
    return service_dir, str(PurePosixPath(service_dir, "src"))


def _account_args(user: str, files: str) -> list[str]:
    """Who the service's code runs as when the launcher runs as root (system.checked_user_name),
    and the directory it may write; the launcher ignores --user when it is not root."""
    out = ["--user", system.checked_user_name(user)] if user else []
    return out + (["--files", files] if files else [])


def _launch_args(
    launch: Launch, *, ready_path: str, asgi: bool, ready_redirects: bool = False
) -> list[str]:
    return [
        "--control",
        launch.control,
        "--settings",
        launch.settings,
        "--ready-dir",
        launch.ready_dir,
        "--ready-path",
        ready_path,
        *(["--ready-redirects"] if ready_redirects else []),
        "--release",
        launch.release,
        "--metrics-dir",
        launch.metrics_dir,
        *(["--asgi"] if asgi else []),
        # the launcher, not gunicorn, daemonizes the master: it writes the pid file as the
        # invoking user, so the master can run as the service user, which cannot write run/
        "--detach",
        "--pidfile",
        launch.pidfile,
        "--log",
        launch.logfile,
        *_secret_args(launch.secrets),
    ]


def _secret_args(names: Sequence[str]) -> list[str]:
    """--secret NAME for each setting the launcher hides from the process's log: names only."""
    return [arg for name in names for arg in ("--secret", name)]


def gunicorn(
    release_dir: str,
    launch: Launch,
    *,
    app: str,
    service_dir: str,
    worker_class: str,
    ready_path: str,
    asgi: bool,
    workers: int,
    ready_redirects: bool = False,
    graceful_timeout: int = 20,
    user: str = "",
    files: str = "",
) -> list[str]:
    """gunicorn on the listener's socket, through launch.py, which loads the settings file into
    the environment and swaps in the socket's fd number; the helpers come from the release's
    `.stageflow` folder, so the service's repository needs none of the engine. The master runs in
    the foreground of the session launch.py made for it, as user when launch.py runs as root;
    gunicorn finds its own pid already in --pid and leaves the file alone."""
    venv_python = str(PurePosixPath(release_dir, ".venv", "bin", "python"))
    helpers = PurePosixPath(release_dir, HELPERS_DIR)
    return [
        venv_python,
        str(helpers / "launch.py"),
        *_launch_args(launch, ready_path=ready_path, asgi=asgi, ready_redirects=ready_redirects),
        *_account_args(user, files),
        "--",
        # python -m, not the gunicorn script: a venv copied from the host cache keeps working
        venv_python,
        "-m",
        "gunicorn",
        "--bind",
        "fd://{fd}",
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--pid",
        launch.pidfile,
        "--chdir",
        service_dir,
        # the release's modules, never the copy a pyproject.toml installed into the shared venv
        "--pythonpath",
        ",".join(code_paths(service_dir)),
        "--config",
        str(helpers / "gunicorn_conf.py"),
        "--graceful-timeout",
        str(graceful_timeout),
        "--timeout",
        "30",
        # gunicorn's log and its workers' output go to the launcher's log, secrets hidden
        "--error-logfile",
        "-",
        app,
    ]


def kill(pid: int, sig: signal.Signals) -> list[str]:
    """`kill -TERM 123`. No `--`: dash's kill takes none. A pid of 0 or below would signal a
    whole process group, so only a positive one is built."""
    if pid <= 0:
        raise ValueError(f"{pid} is not the pid of one process")
    return ["kill", f"-{sig.name.removeprefix('SIG')}", str(pid)]


# A remote host publishes the app on its own loopback only: the probe runs there, over SSH,
# against the published port (what a proxy on that host would reach), with the host's python3.
# Health may answer 2xx or 3xx (a redirect is not followed), ready must answer 2xx (3xx too when
# the health path stands in for it); the release is the X-Stageflow-Release header of the ready
# answer, else the `release` of the version path.
PROBE_CODE = """
import json, sys, urllib.error, urllib.request
base, health, ready, version, ready_below = sys.argv[1:6]
class Keep(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
opener = urllib.request.build_opener(Keep)
def get(path):
    try:
        with opener.open(base + path, timeout=3) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
status = get(health)[0]
if not 200 <= status < 400:
    sys.exit(f"{health}: HTTP {status}")
status, headers, _ = get(ready)
if not 200 <= status < int(ready_below):
    sys.exit(f"{ready}: HTTP {status}")
release = headers.get("X-Stageflow-Release")
if not release and version:
    release = json.loads(get(version)[2] or b"{}").get("release")
print(release or "")
"""


def http_probe(
    base: str, *, health: str, ready: str, version: str = "", ready_redirects: bool = False
) -> list[str]:
    """Health and readiness of the service at base (`http://host:port`) on the given paths; prints
    the serving release (an empty line when it cannot be told). base and the paths follow
    `-c CODE`, so python hands them to the code as sys.argv, never as options."""
    below = "400" if ready_redirects else "300"
    return ["python3", "-c", PROBE_CODE, base, health, ready, version, below]


def _launcher(release_dir: str) -> list[str]:
    return [
        str(PurePosixPath(release_dir, ".venv", "bin", "python")),
        str(PurePosixPath(release_dir, HELPERS_DIR, "launch.py")),
    ]


def _env_args(env: Sequence[tuple[str, str]]) -> list[str]:
    out = []
    for name, value in env:
        out += ["--env", f"{name}={value}"]
    return out


def service_command(
    release_dir: str,
    argv: Sequence[str],
    *,
    settings: str,
    cwd: str,
    env: Sequence[tuple[str, str]] = (),
    user: str = "",
    files: str = "",
    build_tree: str = "",
) -> list[str]:
    """One of the service's commands (migrations, seed) in the release's venv, in the foreground,
    through launch.py: the settings file's path is on the command line, never a value of it. env
    holds names that are no secret (PGOPTIONS, STAGEFLOW_SEED_SIZE). cwd is the service's folder
    in the release: its code comes first on PYTHONPATH, as in gunicorn. user and files: see
    _account_args; build_tree: the release being built, which the command may write into."""
    code = ("PYTHONPATH", ":".join(code_paths(cwd)))
    return [
        *_launcher(release_dir),
        "--settings",
        settings,
        "--cwd",
        cwd,
        "--venv",
        str(PurePosixPath(release_dir, ".venv")),
        *_env_args([code, *env]),
        *_account_args(user, files),
        *(["--build-tree", build_tree] if build_tree else []),
        "--",
        *argv,
    ]


def service_process(
    release_dir: str,
    argv: Sequence[str],
    *,
    settings: str,
    cwd: str,
    pidfile: str,
    log: str,
    env: Sequence[tuple[str, str]] = (),
    user: str = "",
    files: str = "",
    secrets: Sequence[str] = (),
) -> list[str]:
    """A process of [service.processes], detached by launch.py (a session of its own, its pid in
    pidfile, its output in log, the values of the settings named by secrets hidden); prints the
    pid once the program was exec'd."""
    cmd = service_command(
        release_dir, argv, settings=settings, cwd=cwd, env=env, user=user, files=files
    )
    cut = cmd.index("--")
    detached = ["--detach", "--pidfile", pidfile, "--log", log, *_secret_args(secrets)]
    return [*cmd[:cut], *detached, *cmd[cut:]]
