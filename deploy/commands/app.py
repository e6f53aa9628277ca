"""argv builders for releases and the service's processes (git archive, venv, listener, gunicorn)."""

from __future__ import annotations

import signal
from pathlib import PurePosixPath


def rev_parse(ref: str) -> list[str]:
    return ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"]


def archive(commit: str, output: str) -> list[str]:
    return ["git", "archive", "--format=tar", "-o", output, commit]


def extract(tarball: str, into: str) -> list[str]:
    return ["tar", "-xf", tarball, "-C", into]


def venv_create(python: str, path: str) -> list[str]:
    return [python, "-m", "venv", path]


def venv_install(venv: str, lockfile: str) -> list[str]:
    return [
        str(PurePosixPath(venv, "bin", "python")),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        lockfile,
    ]


def listener(
    python: str,
    release: str,
    *,
    port: int,
    control: str,
    pidfile: str,
    host: str = "127.0.0.1",
) -> list[str]:
    return [
        python,
        str(PurePosixPath(release, "deploy", "runtime", "listener.py")),
        "--host",
        host,
        "--port",
        str(port),
        "--control",
        control,
        "--pidfile",
        pidfile,
    ]


def gunicorn(
    release: str,
    *,
    control: str,
    pidfile: str,
    workers: int,
    logfile: str,
    graceful_timeout: int = 20,
) -> list[str]:
    """gunicorn on the listener's socket, through launch.py, which swaps in the fd number."""
    venv_bin = PurePosixPath(release, ".venv", "bin")
    return [
        str(venv_bin / "python"),
        str(PurePosixPath(release, "deploy", "runtime", "launch.py")),
        control,
        "--",
        # python -m, not the gunicorn script: a venv copied from the host cache keeps working
        str(venv_bin / "python"),
        "-m",
        "gunicorn",
        "--bind",
        "fd://{fd}",
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--daemon",
        "--pid",
        pidfile,
        "--chdir",
        release,
        "--config",
        str(PurePosixPath(release, "deploy", "runtime", "gunicorn_conf.py")),
        "--graceful-timeout",
        str(graceful_timeout),
        "--timeout",
        "30",
        "--error-logfile",
        logfile,
        "--capture-output",
        "app.wsgi:application",
    ]


BARRIER_CODE = (
    "import json,sys\n"
    "from app.wsgi import application\n"
    "out={}\n"
    "def sr(status, headers, exc_info=None): out['status']=status\n"
    "body=b''.join(application({'REQUEST_METHOD':'GET','PATH_INFO':'/readyz','QUERY_STRING':'',"
    "'SERVER_NAME':'barrier','SERVER_PORT':'0','wsgi.url_scheme':'http','wsgi.input':None,"
    "'wsgi.errors':sys.stderr,'SERVER_PROTOCOL':'HTTP/1.1'}, sr))\n"
    "print(out.get('status'), body.decode(errors='replace')[:300])\n"
    "sys.exit(0 if str(out.get('status','')).startswith('200') else 1)\n"
)


def barrier(release: str) -> list[str]:
    """The new release answers /readyz in-process, before it is given any traffic."""
    return [str(PurePosixPath(release, ".venv", "bin", "python")), "-c", BARRIER_CODE]


def kill(pid: int, sig: signal.Signals) -> list[str]:
    """`kill -TERM 123`. No `--`: dash's kill takes none. A pid of 0 or below would signal a
    whole process group, so only a positive one is built."""
    if pid <= 0:
        raise ValueError(f"{pid} is not the pid of one process")
    return ["kill", f"-{sig.name.removeprefix('SIG')}", str(pid)]


# A remote host publishes the app on its own loopback only: the probe runs there, over SSH,
# against the published port (what a proxy on that host would reach), with the host's python3.
# Health may answer 2xx or 3xx (a redirect is not followed), ready must answer 2xx; the release is
# the X-Stageflow-Release header of the ready answer, else the `release` of the version path.
PROBE_CODE = """
import json, sys, urllib.error, urllib.request
base, health, ready, version = sys.argv[1:5]
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
if not 200 <= status < 300:
    sys.exit(f"{ready}: HTTP {status}")
release = headers.get("X-Stageflow-Release")
if not release and version:
    release = json.loads(get(version)[2] or b"{}").get("release")
print(release or "")
"""


def http_probe(base: str, *, health: str, ready: str, version: str = "") -> list[str]:
    """Health and readiness of the service at base (`http://host:port`) on the given paths; prints
    the serving release (an empty line when it cannot be told). base and the paths follow
    `-c CODE`, so python hands them to the code as sys.argv, never as options."""
    return ["python3", "-c", PROBE_CODE, base, health, ready, version]
