"""The operator's day through `inv` in a subprocess, in a temporary git project on free ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import inv_server, support

INV = str(Path(sys.executable).with_name("inv"))
KILLPOINT = str(Path(__file__).resolve().parents[1] / "killpoint.py")
VERIFY_WINDOW_S = 1  # staging's and prod's in every test project (see make_project)
# gunicorn workers per release in every test project: each worker imports the service (0.3 CPU-s
# here), and a second one adds nothing a test checks; a test of several sets its own (workers=2)
WORKERS = 1
# each `inv` a test types is forked from a process per project that imported the engine once
# (tests/inv_server.py): 0.3-0.4 CPU-s less per command. SF_TESTS_SPAWN_INV=1 starts the script.
SPAWN = os.environ.get("SF_TESTS_SPAWN_INV") == "1"


@dataclass
class Project:
    root: Path
    ports: dict[str, dict[str, int]]
    actor: str = "alice@example.com"
    entry: Path | None = None
    started: set[str] = field(default_factory=set)

    def inv(
        self,
        *args: str,
        actor: str | None = None,
        kind: str = "human",
        env: dict[str, str] | None = None,
        timeout: float = 180,
        kill_at: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`inv ARGS` as the operator runs it; kill_at: SIGKILLed when that step starts."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEFLOW_")}
        full_env.pop("ENVIRONMENT", None)
        full_env.update(
            {
                "STAGEFLOW_ACTOR": actor or self.actor,
                "STAGEFLOW_ACTOR_KIND": kind,
                "NO_COLOR": "1",
                "COLUMNS": "200",
                **(env or {}),
            }
        )
        if kind == "human":  # a person holds their own key; prod decides whether it counts
            full_env["STAGEFLOW_SIGNING_KEY"] = str(self.key(actor or self.actor))
        full_env.update(env or {})
        for a in args:
            if a.endswith(".up"):
                self.started.add(a.split(".")[0])
        if not SPAWN:
            try:
                return inv_server.run(self.root, [INV, *args], env=full_env, timeout=timeout,
                                      kill_at=kill_at)  # fmt: skip
            except inv_server.Unavailable:
                pass
        argv = [sys.executable, KILLPOINT, kill_at, *args] if kill_at else [INV, *args]
        return subprocess.run(
            argv,
            cwd=self.root,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def key(self, name: str) -> Path:
        """The ed25519 key of this person, made on first use (no passphrase: a test's person)."""
        path = self.root.parent / "keys" / name.strip().replace("/", "_")
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                            str(path)], check=True)  # fmt: skip
        return path

    def allowed_signers(self, *names: str) -> str:
        return "".join(f"{n} {Path(str(self.key(n)) + '.pub').read_text()}" for n in names)

    def trust(self, *names: str) -> None:
        """Install prod's first allowed signers: these people's keys."""
        path = self.root.parent / "keys" / "bootstrap.keys"
        path.parent.mkdir(exist_ok=True)
        path.write_text(self.allowed_signers(*names))
        self.ok("prod.keys", "--trust", str(path))

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        res = self.inv(*args, **kw)
        assert res.returncode == 0, (
            f"inv {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        )
        return res

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=self.root, capture_output=True, text=True, check=True
        ).stdout.strip()

    def commit(self, message: str, tag: str | None = None) -> str:
        self.git("add", "-A")
        self.git("commit", "-qm", message, "--allow-empty")
        if tag:
            self.git("tag", tag)
        return self.git("rev-parse", "HEAD")

    def inv_on_broken(
        self, rel: str, insert: str, message: str, *args: str
    ) -> subprocess.CompletedProcess[str]:
        """Commit rel with insert after its `from __future__` line (at its top without one),
        run `inv *args` on that commit, then commit rel as it was: the result of the run."""
        path = self.root / rel
        good = path.read_text()
        future = "from __future__ import annotations\n"
        path.write_text(
            good.replace(future, future + insert, 1) if future in good else insert + good
        )
        self.commit(message)
        try:
            return self.inv(*args)
        finally:
            path.write_text(good)
            self.commit(f"{rel} as it was before: {message}")

    def edit(self, rel: str, old: str, new: str) -> None:
        path = self.root / rel
        text = path.read_text()
        assert old in text, f"{old!r} not in {rel}"
        path.write_text(text.replace(old, new, 1))

    def set_policy(self, env: str, **changes: object) -> None:
        """Set keys of [environments.<env>] in the project's stageflow.toml (operator policy)."""
        path = self.root / "stageflow.toml"
        lines = path.read_text().splitlines()
        start = lines.index(f"[environments.{env}]")
        for key, value in changes.items():
            for i in range(start + 1, len(lines) + 1):
                if i == len(lines) or lines[i].startswith("["):
                    lines.insert(i, f"{key} = {value}")
                    break
                if lines[i].split("=")[0].strip() == key:
                    lines[i] = f"{key} = {value}"
                    break
        path.write_text("\n".join(lines) + "\n")

    # gates a throwaway project can pass in seconds; they still run and are timed, only not block
    GA_REPORT_ONLY = ("check", "docs-freshness", "migrations", "deps", "observability", "eval")

    def gate_ga_on_quick_gates(self) -> None:
        """Make GA's slow or environment-bound gates report-only, and the test gate one file."""
        path = self.root / "stageflow.toml"
        text = path.read_text()
        ga = text.index("[stages.GA.gates]")
        head, tail = text[:ga], text[ga:]
        for gate in self.GA_REPORT_ONLY:
            tail = tail.replace(f'\n{gate} = "required"', f'\n{gate} = "report_only"', 1)
        # the project's own test command is the whole suite (`make test`): one quick file here
        start = tail.index("\n", tail.index("[gates.test]"))
        end = tail.index("\n", tail.index("\ncommand = ", start) + 1)
        quick = 'command = ["python", "-m", "pytest", "-q", "-x", "tests/unit/test_migrations_files.py"]'
        path.write_text(head + tail[: start + 1] + quick + tail[end:])

    def set_fault(self, fault: str) -> None:
        """Make the committed app's default STAGEFLOW_FAULT `fault` ("" for none): a release built
        from the next commit misbehaves on its own, with no change to how it is started."""
        path = self.root / "app/config.py"
        text = path.read_text()
        marker = 'env.get("STAGEFLOW_FAULT", "'
        start = text.index(marker) + len(marker)
        end = text.index('")', start)
        path.write_text(text[:start] + fault + text[end:])

    def history(self, env: str) -> list[dict]:
        import json

        return json.loads(self.ok(f"{env}.history", "--json").stdout)

    def url(self, env: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[env]['app']}{path}"


def _copy_compiled(root: Path) -> None:
    """The engine's compiled modules beside their copies: a compiled file is checked against its
    source's mtime and size, which copy2 keeps, so the project's first `inv` imports instead of
    compiling (about 0.3 CPU-s a project; tests/conftest.py compiles the tree once a session)."""
    tag = sys.implementation.cache_tag
    for cache in (support.REPO / "deploy").rglob("__pycache__"):
        dst = root / cache.relative_to(support.REPO)
        if not dst.parent.is_dir():
            continue
        for pyc in cache.glob(f"*.{tag}.pyc"):
            dst.mkdir(exist_ok=True)
            shutil.copy2(pyc, dst / pyc.name)


def make_project(prefix: str = "sf-e2e-") -> Project:
    """A git repository holding the working tree's files, with env files on free ports."""
    base = support.public_tmpdir(prefix)
    root = base / "proj"
    root.mkdir()
    os.chmod(root, 0o755)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=support.REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = support.REPO / rel
        if not src.is_file() or rel.startswith("benchmarks/"):
            continue
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    _copy_compiled(root)
    ports = support.write_envs(root)
    (root / ".gitignore").write_text((support.REPO / ".gitignore").read_text())
    proj = Project(root=root, ports=ports)
    # verify windows of 1 s: each still probes health and judges the metrics, where the policy's
    # 3 s (staging) and 5 s (prod) only add seconds to every deploy; a test of what the window
    # catches sets its own (verify_window_s=6)
    for env in ("staging", "prod"):
        proj.set_policy(env, verify_window_s=VERIFY_WINDOW_S)
    for env in ("dev", "staging", "prod"):
        proj.set_policy(env, workers=WORKERS)
    for cmd in (
        ["init", "-q", "-b", "main"],
        ["config", "user.email", "ci@example.com"],
        ["config", "user.name", "ci"],
        ["add", "-A"],
        ["commit", "-qm", "initial"],
    ):
        subprocess.run(["git", *cmd], cwd=root, check=True, capture_output=True)
    proj.entry = support.register("e2e", {"root": str(base), "pattern": str(root)})
    return proj


def destroy(proj: Project) -> None:
    envs = [f"{e}.down" for e in ("dev", "staging", "prod")]
    proj.inv(*envs, timeout=120)
    inv_server.stop(proj.root)
    subprocess.run(["pkill", "-9", "-f", str(proj.root)], check=False)
    shutil.rmtree(proj.root.parent, ignore_errors=True)
    if proj.entry:
        proj.entry.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def project():
    proj = make_project()
    try:
        yield proj
    finally:
        destroy(proj)


@pytest.fixture
def fresh_project():
    proj = make_project()
    try:
        yield proj
    finally:
        destroy(proj)
