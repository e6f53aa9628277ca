"""Test support: temporary stageflow projects on free ports, and cleanup of servers a killed run left."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REGISTRY = Path(tempfile.gettempdir()) / "stageflow-test-servers"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Below the kernel's ephemeral range: a port handed out here is written into an env file and bound
# later, and a client socket of any process (they take ephemeral ports) cannot land on it meanwhile.
_RANGE = (10000, max(10100, min(30000, _ephemeral_low() - 1)))
_given: set[int] = set()


def worker_range(
    full: tuple[int, int] = _RANGE, *, worker: str = "", count: str = ""
) -> tuple[int, int]:
    """This process's slice of full. Parallel test workers (pytest-xdist sets PYTEST_XDIST_WORKER
    "gw<i>" and PYTEST_XDIST_WORKER_COUNT) each hand out ports before binding them, and _given
    is per process: disjoint slices keep two workers from writing the same port into env files."""
    worker = worker or os.environ.get("PYTEST_XDIST_WORKER", "")
    count = count or os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return full
    n = int(count)
    if n <= 1:
        return full
    width = (full[1] - full[0] + 1) // n
    low = full[0] + (int(worker[2:]) % n) * width  # a restarted worker numbers on: wrap
    return low, low + width - 1


def free_port(address: str = "127.0.0.1") -> int:
    """A port nothing listens on at address, never handed out twice in this process nor by
    another worker of the same test run."""
    low, high = worker_range()
    for _ in range(500):
        port = random.randint(low, high)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {(low, high)} on {address}")


def public_tmpdir(prefix: str) -> Path:
    """A temp dir the unprivileged service user can traverse (pytest's tmp_path is private)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


def env_text(
    name: str,
    environment: str,
    *,
    app: int,
    pg: int,
    redis: int,
    data_dir: str,
    production_like: bool,
) -> str:
    return "\n".join(
        [
            f"ENVIRONMENT={environment}",
            f"COMPOSE_PROJECT_NAME=stageflow-{name}",
            f"APP_PORT={app}",
            f"POSTGRES_PORT={pg}",
            f"REDIS_PORT={redis}",
            f"DATABASE_URL=postgresql://app_{name}@127.0.0.1:{pg}/stageflow_{name}",
            f"REDIS_URL=redis://127.0.0.1:{redis}/0",
            f"DATA_DIR={data_dir}",
            f"FEATURES={'all' if name == 'staging' else 'notes'}",
            f"LOG_LEVEL={'debug' if name != 'prod' else 'info'}",
            f"DEBUG={'false' if production_like else 'true'}",
            f"REQUIRE_API_KEY={'true' if production_like else 'false'}",
            f"API_RATE_LIMIT={600 if production_like else 0}",
            "",
        ]
    )


def write_envs(
    root: Path, *, names: tuple[str, ...] = ("dev", "staging", "prod")
) -> dict[str, dict]:
    """env/<name>.env for each environment on fresh free ports; secrets for the production-like ones."""
    envmap = {"dev": "development", "staging": "staging", "prod": "production"}
    (root / "env").mkdir(exist_ok=True)
    ports = {}
    for name in names:
        p = {"app": free_port(), "pg": free_port(), "redis": free_port()}
        ports[name] = p
        prod_like = name != "dev"
        (root / "env" / f"{name}.env").write_text(
            env_text(
                name,
                envmap[name],
                app=p["app"],
                pg=p["pg"],
                redis=p["redis"],
                data_dir=f".stageflow/{name}",
                production_like=prod_like,
            )
        )
        if prod_like:
            secrets = root / "env" / f"{name}.secrets.env"
            secrets.write_text(
                f"POSTGRES_PASSWORD=pg-{name}-s3cret-value\nREDIS_PASSWORD=redis-{name}-s3cret-value\n"
                f"API_KEYS=key-{name}-s3cret-value\nSECRET_KEY=sign-{name}-s3cret-value\n"
            )
            os.chmod(secrets, 0o600)
    return ports


def register(kind: str, data: dict) -> Path:
    """Remember a server this test run started, so a later run can stop it if we are killed."""
    REGISTRY.mkdir(exist_ok=True)
    path = REGISTRY / f"{os.getpid()}-{kind}-{free_port()}.json"
    path.write_text(json.dumps({"owner": os.getpid(), **data}))
    return path


def reap_leftovers() -> list[str]:
    """Stop servers recorded by test runs whose pytest process is gone."""
    reaped = []
    if not REGISTRY.exists():
        return reaped
    for entry in REGISTRY.glob("*.json"):
        try:
            data = json.loads(entry.read_text())
        except (OSError, json.JSONDecodeError):
            entry.unlink(missing_ok=True)
            continue
        try:
            os.kill(int(data["owner"]), 0)
            continue  # its run is still going
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        for pid in data.get("pids", []):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        pgdata = data.get("pgdata")
        if pgdata and os.path.exists(os.path.join(pgdata, "postmaster.pid")):
            try:
                pid = int(Path(pgdata, "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass
        if data.get("root"):
            _kill_pidfiles(Path(data["root"]))
        if data.get("pattern"):
            subprocess.run(["pkill", "-9", "-f", data["pattern"]], check=False)
        if data.get("root") and str(data["root"]).startswith(tempfile.gettempdir()):
            shutil.rmtree(data["root"], ignore_errors=True)
        entry.unlink(missing_ok=True)
        reaped.append(str(entry.name))
    return reaped


def _kill_pidfiles(root: Path) -> None:
    """Every server under root wrote a pid file (postmaster.pid, redis.pid, listener, gunicorn)."""
    pidfiles = [*root.glob("**/run/*.pid"), *root.glob("**/shared/redis/redis.pid")]
    for pidfile in [*pidfiles, *root.glob("**/postmaster.pid")]:
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


def minimal_policy() -> str:
    return (REPO / "stageflow.toml").read_text()


def git(root: Path, *argv: str) -> str:
    """git in root as a throwaway identity; its stdout, stripped; a failure raises."""
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *argv],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
