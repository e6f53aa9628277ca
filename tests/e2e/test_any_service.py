"""A service that is not the reference one, in a repository holding none of the engine, deployed
to dev through `inv`: it serves under its own [service] table, every response names the release,
its workers count responses into the release's metrics files, and its settings reach its
os.environ (never a command line nor a log)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests import support
from tests.e2e.conftest import Project, destroy

PG_PASSWORD = "pg-svc-s3cret-value"
SIGNING = "sign-svc-s3cret-value"

SERVICE_TABLE = """[service]
name = "visits"
dir = "web"
wsgi = "svc:app"
requirements = "requirements.txt"
health = "/healthz"
ready = "/readyz"
version = "/version"

[service.env]  # what the test env files hold besides stageflow's own keys
keys = ["FEATURES", "LOG_LEVEL", "DEBUG", "REQUIRE_API_KEY", "API_RATE_LIMIT"]
secrets = ["API_KEYS", "SECRET_KEY"]

[service.env.from]
VISITS_DSN = "DATABASE_URL"

[service.migrations]
kind = "sql"
dir = "migrations"

[[service.smoke]]
method = "POST"
path = "/notes"
body = '{"body": "smoke {token}"}'
expect = 201

[[service.smoke]]
method = "GET"
path = "/notes"
contains = "{token}"

"""

# A plain WSGI app: the standard library and nothing else. Notes live in a file of the service's
# files dir (the release is read-only to it) so every worker reads what another wrote.
SVC = """
import json
import os
from pathlib import Path

NOTES = Path(os.environ["STAGEFLOW_FILES_DIR"], "notes.jsonl")


def _reply(start_response, status, data):
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json")])
    return [body]


def app(environ, start_response):
    path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
    if path == "/healthz":
        return _reply(start_response, "200 OK", {"ok": True})
    if path == "/readyz":
        ready = "@" in os.environ.get("DATABASE_URL", "")
        return _reply(start_response, "200 OK" if ready else "503 Not Ready", {"ready": ready})
    if path == "/version":
        return _reply(start_response, "200 OK", {
            "release": os.environ["STAGEFLOW_RELEASE"],
            "environment": os.environ["ENVIRONMENT"],
            "database": os.environ["PGDATABASE"],
        })
    if path == "/notes" and method == "POST":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        note = json.loads(environ["wsgi.input"].read(size) or b"{}")
        with NOTES.open("a") as fh:
            fh.write(json.dumps(note) + "\\n")
        return _reply(start_response, "201 Created", note)
    if path == "/notes":
        lines = NOTES.read_text().splitlines() if NOTES.exists() else []
        return _reply(start_response, "200 OK", {"notes": [json.loads(x) for x in lines]})
    return _reply(start_response, "404 Not Found", {"error": "no such page"})
"""


def _service_toml() -> str:
    """The repository's policy with the reference service's table swapped for this one."""
    text = (support.REPO / "stageflow.toml").read_text()
    start = text.index("[service]")
    end = text.index("[environments.")
    return text[:start] + SERVICE_TABLE + text[end:]


def make_service_project() -> Project:
    base = support.public_tmpdir("sf-any-")
    root = base / "proj"
    root.mkdir()
    os.chmod(root, 0o755)
    shutil.copy2(support.REPO / "tasks.py", root / "tasks.py")
    (root / ".gitignore").write_text((support.REPO / ".gitignore").read_text())
    (root / "stageflow.toml").write_text(_service_toml())
    web = root / "web"
    (web / "migrations").mkdir(parents=True)
    (web / "svc.py").write_text(SVC)
    (web / "requirements.txt").write_text("gunicorn==23.0.0\n")
    (web / "migrations" / "0001_visits.up.sql").write_text(
        "CREATE TABLE visits (id bigint PRIMARY KEY);\n"
    )
    (web / "migrations" / "0001_visits.down.sql").write_text("DROP TABLE visits;\n")
    ports = support.write_envs(root)
    secrets = root / "env" / "dev.secrets.env"
    secrets.write_text(f"POSTGRES_PASSWORD={PG_PASSWORD}\nSECRET_KEY={SIGNING}\n")
    os.chmod(secrets, 0o600)
    for argv in (
        ["init", "-q", "-b", "main"],
        ["config", "user.email", "ci@example.com"],
        ["config", "user.name", "ci"],
        ["add", "-A"],
        ["commit", "-qm", "visits"],
    ):
        subprocess.run(["git", *argv], cwd=root, check=True, capture_output=True)
    proj = Project(root=root, ports=ports)
    proj.entry = support.register("e2e", {"root": str(base), "pattern": str(root)})
    return proj


@pytest.fixture(scope="module")
def service():
    proj = make_service_project()
    try:
        yield proj
    finally:
        destroy(proj)


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, dict(resp.headers), resp.read()


def _workers(home: Path, rid: str) -> list[int]:
    master = int((home / "run" / f"app-{rid}.pid").read_text().split()[0])
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_a_service_without_the_engine_deploys_and_serves(service: Project) -> None:
    assert not (service.root / "deploy").exists()
    up = service.ok("dev.up")
    deployed = service.ok("dev.deploy")
    home = service.root / ".stageflow" / "dev"
    rid = os.readlink(home / "current").rsplit("/", 1)[-1]

    # the engine's helpers were shipped into the release; the service's own folder runs
    release = home / "releases" / rid
    assert sorted(p.name for p in (release / ".stageflow").glob("*.py")) == [
        "gunicorn_conf.py",
        "launch.py",
        "listener.py",
        "redact.py",
    ]
    status, headers, body = _get(service.url("dev", "/version"))
    assert status == 200 and json.loads(body)["release"] == rid
    assert headers["X-Stageflow-Release"] == rid
    status, headers, _ = _get(service.url("dev", "/healthz"))
    assert headers["X-Stageflow-Release"] == rid

    # each worker counts what it served into the release's metrics folder
    for _ in range(10):
        _get(service.url("dev", "/healthz"))
    metrics = home / "run" / "metrics" / rid
    deadline = time.monotonic() + 20
    served = 0
    while served < 12 and time.monotonic() < deadline:
        files = [json.loads(p.read_text()) for p in metrics.glob("*.json")]
        served = sum(f["requests"] for f in files)
        time.sleep(0.1)
    assert served >= 12, files
    assert all(f["release"] == rid and len(f["counts"]) == 22 for f in files)

    # the settings reached os.environ of every worker, with the credentials
    workers = _workers(home, rid)
    assert len(workers) == 2
    for pid in workers:
        env = _environ(pid)
        assert f":{PG_PASSWORD}@" in env["DATABASE_URL"]
        assert env["PGPASSWORD"] == PG_PASSWORD
        assert env["VISITS_DSN"] == env["DATABASE_URL"]
        assert env["SECRET_KEY"] == SIGNING and env["FEATURES"] == "notes"
        assert env["STAGEFLOW_RELEASE"] == rid and "VIRTUAL_ENV" not in env

    # and nowhere a person or another user reads: output, logs, history, command lines
    for res in (up, deployed):
        for secret in (PG_PASSWORD, SIGNING):
            assert secret not in res.stdout + res.stderr
    for path in (home / "shared" / "logs").iterdir():
        text = path.read_text(errors="replace")
        assert PG_PASSWORD not in text and SIGNING not in text, path
    for path in (home / "state").rglob("*"):
        if path.is_file():
            assert PG_PASSWORD.encode() not in path.read_bytes(), path
    settings = home / "shared" / "service.json"
    assert oct(settings.stat().st_mode & 0o777) == "0o600"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                line = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert PG_PASSWORD.encode() not in line and SIGNING.encode() not in line


def test_a_release_that_is_not_ready_never_serves(service: Project) -> None:
    home = service.root / ".stageflow" / "dev"
    serving = os.readlink(home / "current").rsplit("/", 1)[-1]
    service.edit("web/svc.py", '"@" in os.environ', '"@never@" in os.environ')
    service.commit("not ready")
    res = service.inv("dev.deploy")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert re.search(r"release \S+ is not ready: 503 \{\"ready\": false\}", out), out
    assert "Traceback" not in out
    # the previous release still serves, alone
    _, headers, _ = _get(service.url("dev", "/healthz"))
    assert headers["X-Stageflow-Release"] == serving
    assert [p.name for p in (home / "run").glob("app-*.pid")] == [f"app-{serving}.pid"]


def test_a_health_path_that_redirects_stands_in_for_ready(service: Project) -> None:
    """No `ready` of its own and "/" sending to a login page, as many apps do: the health path
    stands in for the ready path and its redirect answers; a ready path of its own may not."""
    service.edit("web/svc.py", '"@never@" in os.environ', '"@" in os.environ')
    service.edit(
        "web/svc.py",
        '    if path == "/healthz":\n',
        '    if path == "/":\n'
        '        start_response("302 Found", [("Location", "/login?next=%2F")])\n'
        '        return [b""]\n'
        '    if path == "/healthz":\n',
    )
    service.edit("stageflow.toml", 'health = "/healthz"\nready = "/readyz"\n', 'health = "/"\n')
    service.commit("health is / and redirects; no ready path of its own")
    res = service.inv("dev.deploy", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rid = json.loads(res.stdout)["release"]
    _, headers, _ = _get(service.url("dev", "/healthz"))
    assert headers["X-Stageflow-Release"] == rid
    assert "/" in service.inv("dev.smoke").stdout

    service.edit("stageflow.toml", 'health = "/"\n', 'health = "/"\nready = "/"\n')
    service.commit("a ready path of its own that redirects")
    res = service.inv("dev.deploy")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and re.search(r"release \S+ is not ready: 302", out), out
    assert "a ready path of its own must answer 2xx" in out
    _, headers, _ = _get(service.url("dev", "/healthz"))
    assert headers["X-Stageflow-Release"] == rid
