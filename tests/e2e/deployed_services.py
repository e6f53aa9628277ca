"""Helpers of the tests that deploy services sharing no code with app/, as a team would: stageflow
installed by pip into an operator venv, `stageflow init` in the service's own git repository (which
holds no `deploy/`), then `inv`. Real PostgreSQL, Redis, gunicorn."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from deploy.service import with_password
from tests import support

SERVICES = Path(__file__).resolve().parents[1] / "services"
RELEASE_HEADER = "X-Stageflow-Release"


def operator_venv() -> Path:
    """A venv holding stageflow as pip installs it from a copy of this checkout (no editable
    install, no repository on sys.path): what `pip install stageflow` gives a team. Built once per
    test run and source tree, shared by the test files that deploy a service (under a lock)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=support.REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    digest = hashlib.sha256()
    for raw in sorted(filter(None, files)):
        path = support.REPO / raw.decode()
        if path.is_file() and not raw.startswith((b"tests/", b"benchmarks/")):
            digest.update(raw + b"\0" + path.read_bytes())
    base = Path(tempfile.gettempdir()) / f"stageflow-operator-{digest.hexdigest()[:16]}"
    with open(f"{base}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "venv" / ".complete").exists() or not any((base / "wheel").glob("*.whl")):
            _build_operator_venv(base, files)
    return base / "venv"


def operator_wheel() -> Path:
    """The wheel the operator's venv was installed from (built with it, once per source tree)."""
    (wheel,) = (operator_venv().parent / "wheel").glob("stageflow-*.whl")
    return wheel


def _build_operator_venv(base: Path, files: list[bytes]) -> None:
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    os.chmod(base, 0o755)
    src = base / "src"
    for raw in filter(None, files):
        rel = raw.decode()
        if (support.REPO / rel).is_file() and not rel.startswith(("tests/", "benchmarks/")):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(support.REPO / rel, src / rel)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip", "--quiet", "--disable-pip-version-check"]
    # the wheel first, kept beside the venv: the adoption tests read what it ships
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(base / "wheel"), str(src)],
                   check=True, timeout=900)  # fmt: skip
    (wheel,) = (base / "wheel").glob("stageflow-*.whl")
    # --no-compile: what the tests import compiles as it is first imported, not every package
    subprocess.run([*pip, "install", "--no-compile", str(wheel)], check=True, timeout=900)
    shutil.rmtree(src)
    (venv / ".complete").touch()


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

    def key(self, name: str) -> Path:
        """This person's own ed25519 key, made on first use (a test's person: no passphrase)."""
        path = self.base / "keys" / name
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                check=True,
            )
        return path

    def trust(self, *names: str) -> None:
        """Install prod's first allowed signers: these people's public keys."""
        path = self.base / "keys" / "bootstrap.keys"
        path.write_text("".join(f"{n} {Path(f'{self.key(n)}.pub').read_text()}" for n in names))
        self.ok("prod.keys", "--trust", str(path))

    def run(
        self, *argv: str, actor: str = "alice@example.com", timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=self.root,
            env={
                **self.env(),
                "STAGEFLOW_ACTOR": actor,
                "STAGEFLOW_SIGNING_KEY": str(self.key(actor)),
            },
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

    def database_url(self, env: str) -> str:
        """env's DATABASE_URL with the password of its secrets file, when it has one."""
        text = (self.root / "env" / f"{env}.env").read_text()
        url = re.search(r"^DATABASE_URL=(.*)$", text, re.M).group(1)
        secrets = self.root / "env" / f"{env}.secrets.env"
        found = (
            re.search(r"^POSTGRES_PASSWORD=(.*)$", secrets.read_text(), re.M)
            if secrets.exists()
            else None
        )
        return with_password(url, found.group(1).strip("'\"")) if found else url

    def db(self, env: str):
        return psycopg.connect(self.database_url(env), autocommit=True, connect_timeout=5)

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


@pytest.fixture
def service():
    """make(name): the service of tests/services/<name> in a fresh repository; all torn down."""
    made = []

    def make(name: str) -> Service:
        svc = Service(name, operator_venv())
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.destroy()
