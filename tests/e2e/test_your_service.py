"""Services that share no code with app/, deployed as a team would: stageflow installed by pip into
an operator venv, `stageflow init` in the service's own git repository (which holds no `deploy/`),
then `inv` through dev, releases with migrations, and rollbacks. Real PostgreSQL, Redis, gunicorn."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests import support

SERVICES = Path(__file__).resolve().parents[1] / "services"
RELEASE_HEADER = "X-Stageflow-Release"


@pytest.fixture(scope="module")
def operator_venv() -> Path:
    """A venv holding stageflow as pip installs it from a copy of this checkout (no editable
    install, no repository on sys.path): what `pip install stageflow` gives a team."""
    base = support.public_tmpdir("sf-operator-")
    src = base / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=support.REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, files):
        rel = raw.decode()
        if (support.REPO / rel).is_file() and not rel.startswith(("tests/", "benchmarks/")):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(support.REPO / rel, src / rel)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin/python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(src),
        ],
        check=True,
        timeout=900,
    )
    shutil.rmtree(src)
    yield venv
    shutil.rmtree(base, ignore_errors=True)


class Service:
    """One service's repository and the operator's commands on it."""

    def __init__(self, name: str, venv: Path) -> None:
        self.venv = venv
        self.base = support.public_tmpdir(f"sf-{name}-")
        self.root = self.base / "repo"
        shutil.copytree(SERVICES / name, self.root, ignore=shutil.ignore_patterns("next"))
        self.next = SERVICES / name / "next"
        self.ports: dict[str, dict[str, int]] = {}
        for cmd in (
            ["init", "-q", "-b", "main"],
            ["config", "user.email", "dev@example.com"],
            ["config", "user.name", "dev"],
        ):
            self.git(*cmd)
        self.commit("the service, before stageflow")
        self.entry = support.register("e2e", {"root": str(self.base), "pattern": str(self.root)})

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEFLOW_")}
        env.pop("ENVIRONMENT", None)
        env.update(
            PATH=f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            STAGEFLOW_ACTOR="alice@example.com",
            STAGEFLOW_ACTOR_KIND="human",
            NO_COLOR="1",
            COLUMNS="200",
        )
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
        return env

    def run(
        self, *argv: str, actor: str = "alice@example.com", timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=self.root,
            env={**self.env(), "STAGEFLOW_ACTOR": actor},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def ok(
        self, *args: str, actor: str = "alice@example.com", timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        res = self.run(str(self.venv / "bin" / "inv"), *args, actor=actor, timeout=timeout)
        assert res.returncode == 0, (
            f"inv {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        )
        return res

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=self.root, capture_output=True, text=True, check=True
        ).stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-qm", message, "--allow-empty")
        return self.git("rev-parse", "HEAD")

    def init(self) -> str:
        res = self.run(str(self.venv / "bin" / "stageflow"), "init")
        assert res.returncode == 0, (
            f"stageflow init exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        )
        assert not (self.root / "deploy").exists()
        self._own_ports()
        return res.stdout

    def _own_ports(self) -> None:
        """init picked free ports; the test run hands out its own so parallel workers never meet."""
        for name in ("dev", "staging", "prod"):
            path = self.root / "env" / f"{name}.env"
            text = path.read_text()
            ports = {}
            for key, short in (
                ("APP_PORT", "app"),
                ("POSTGRES_PORT", "pg"),
                ("REDIS_PORT", "redis"),
            ):
                old = re.search(rf"^{key}=(\d+)$", text, re.M).group(1)
                new = support.free_port()
                text = re.sub(rf"(?<=[=:]){old}\b", str(new), text)
                ports[short] = new
            text = re.sub(r"^DATA_DIR=.*$", f"DATA_DIR=.stageflow/{name}", text, flags=re.M)
            path.write_text(text)
            self.ports[name] = ports

    def toml(self) -> str:
        return (self.root / "stageflow.toml").read_text()

    def set_table(self, header: str, body: str) -> None:
        """Replace (or add) one [table] of stageflow.toml, as an operator edits it."""
        text = self.toml()
        pattern = re.compile(rf"^\[{re.escape(header)}\]\n(?:(?!\[).*\n?)*", re.M)
        block = f"[{header}]\n{body.strip()}\n\n"
        text = (
            pattern.sub(lambda _: block, text, count=1)
            if pattern.search(text)
            else text + "\n" + block
        )
        (self.root / "stageflow.toml").write_text(text)

    def add_next(self) -> None:
        shutil.copytree(self.next, self.root, dirs_exist_ok=True)

    def url(self, env: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[env]['app']}{path}"

    def get(self, env: str, path: str = "/") -> tuple[int, str, dict[str, str]]:
        return http("GET", self.url(env, path))

    def db(self, env: str):
        text = (self.root / "env" / f"{env}.env").read_text()
        url = re.search(r"^DATABASE_URL=(.*)$", text, re.M).group(1)
        return psycopg.connect(url, autocommit=True, connect_timeout=5)

    def destroy(self) -> None:
        self.run(
            str(self.venv / "bin" / "inv"), "dev.down", "staging.down", "prod.down", timeout=120
        )
        subprocess.run(["pkill", "-9", "-f", str(self.root)], check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        self.entry.unlink(missing_ok=True)


def http(method: str, url: str, body: dict | None = None) -> tuple[int, str, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace"), dict(exc.headers)


def wait_for(check, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def columns(conn, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
    ).fetchall()
    return {r[0] for r in rows}


def serving(svc: Service, env: str) -> str:
    return svc.get(env)[2].get(RELEASE_HEADER, "")


@pytest.fixture
def service(request, operator_venv):
    made = []

    def make(name: str) -> Service:
        svc = Service(name, operator_venv)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.destroy()


# -- Flask + SQLAlchemy + alembic + Redis + a worker -----------------------------------------------


def test_a_flask_service_with_alembic_and_a_worker_deploys_and_rolls_back(service):
    shop = service("flask_shop")
    out = shop.init()
    text = shop.toml()
    assert 'wsgi = "shop.web:create_app()"' in text, out
    assert '"alembic", "upgrade", "head"' in text
    shop.set_table("service.env", 'keys = ["SHOP_GREETING"]\nsecrets = ["SMTP_PASSWORD"]')
    shop.set_table("service.processes", 'worker = ["python", "-m", "shop.worker"]')
    with open(shop.root / "env" / "dev.env", "a") as fh:
        fh.write("SHOP_GREETING=hello from dev\n")
    shop.commit("stageflow init")

    shop.ok("dev.up")
    shop.ok("dev.deploy")
    status, body, headers = shop.get("dev")
    assert (status, body) == (200, "hello from dev ok")
    release_1 = headers[RELEASE_HEADER]
    assert http("POST", shop.url("dev", "/products"), {"name": "tea"})[0] == 201
    assert "tea" in shop.get("dev", "/products")[1]
    beat = wait_for(lambda: json.loads(shop.get("dev", "/worker")[1])["beat"])
    assert beat and beat.startswith(release_1), "the worker runs with its release"

    shop.add_next()
    shop.commit("products get a sku")
    shop.ok("dev.deploy")
    release_2 = serving(shop, "dev")
    assert release_2 != release_1
    with shop.db("dev") as conn:
        assert "sku" in columns(conn, "products")
    assert wait_for(
        lambda: (json.loads(shop.get("dev", "/worker")[1])["beat"] or "").startswith(release_2)
    )

    res = shop.ok("dev.rollback", "--level", "2", "--yes")
    assert "schema b2 -> a1" in res.stdout, res.stdout
    assert serving(shop, "dev") == release_1
    with shop.db("dev") as conn:
        assert "sku" not in columns(conn, "products"), "alembic downgrade ran"
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "a1"
        assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 1
    assert wait_for(
        lambda: (json.loads(shop.get("dev", "/worker")[1])["beat"] or "").startswith(release_1)
    ), "the worker went back with its release"


# -- Django in a subdirectory, settings with their own names ---------------------------------------


def test_a_django_project_in_a_subdirectory_deploys_and_level_2_migrates_each_app_back(service):
    site = service("django_site")
    site.init()
    text = site.toml()
    assert 'dir = "web"' in text
    assert 'wsgi = "mysite.wsgi:application"' in text
    assert '"manage.py", "migrate"' in text
    site.set_table(
        "service.env.from",
        'DB_NAME = "PGDATABASE"\nDB_USER = "PGUSER"\nDB_PASSWORD = "PGPASSWORD"\n'
        'DB_HOST = "PGHOST"\nDB_PORT = "PGPORT"',
    )
    site.commit("stageflow init")
    site.ok("dev.up")
    site.ok("dev.deploy")
    release_1 = serving(site, "dev")
    assert site.get("dev")[:2] == (200, "catalog ok")
    assert http("POST", site.url("dev", "/items"), {"name": "chair"})[0] == 201

    site.add_next()
    site.commit("items get a price")
    site.ok("dev.deploy")
    with site.db("dev") as conn:
        assert "price" in columns(conn, "catalog_item")

    site.ok("dev.rollback", "--level", "2", "--yes")
    assert serving(site, "dev") == release_1
    with site.db("dev") as conn:
        assert "price" not in columns(conn, "catalog_item")
        applied = {
            r[0] for r in conn.execute("SELECT name FROM django_migrations WHERE app = 'catalog'")
        }
        assert applied == {"0001_initial"}
    assert "chair" in site.get("dev", "/items")[1]


# -- ASGI under uvicorn's gunicorn worker ---------------------------------------------------------


class Load:
    """Requests at a steady rate from a thread; counts what failed."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.rate = url, rate
        self.sent = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                status, _, _ = http("GET", self.url)
                if status != 200:
                    self.failed.append(f"HTTP {status}")
            except OSError as exc:
                self.failed.append(str(exc))
            self.sent += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_an_asgi_app_switches_twice_under_load_without_a_failed_request(service):
    hello = service("asgi_hello")
    hello.init()
    assert '"uvicorn.workers.UvicornWorker"' in hello.toml()
    hello.commit("stageflow init")
    hello.ok("dev.up")
    hello.ok("dev.deploy")
    assert hello.get("dev")[:2] == (200, "hello development")
    with Load(hello.url("dev"), rate=60) as load:
        for n in (1, 2):
            (hello.root / "hello" / "extra.py").write_text(f"N = {n}\n")
            hello.commit(f"change {n}")
            hello.ok("dev.deploy")
        time.sleep(0.5)
    assert load.sent >= 60
    assert load.failed == [], f"{len(load.failed)} of {load.sent} failed: {load.failed[:3]}"
