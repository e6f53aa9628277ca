"""`make demo`: the operator's day, dev -> staging -> prod and a rollback, in a scratch clone.

The demo never tags or edits the operator's own repository: it clones HEAD into
.stageflow/demo/repo, tags releases there, and drives every step through `inv` as a person would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deploy.config import Project, load_env
from deploy.errors import DeployError
from deploy.output import say
from deploy.runtime.native import reachable_by, service_user

OPERATOR, APPROVER = "operator@example.com", "approver@example.com"
# under root, when the clone sits behind a private directory the service user cannot reach the
# demo's data directories in it: the demo runs here instead (`make clean` removes it)
SHARED_DEMO = Path("/var/lib/stageflow-demo")


class DemoFailed(DeployError):
    pass


class Demo:
    def __init__(self, source: Project) -> None:
        self.base = source.root / ".stageflow" / "demo"
        if reachable_by(self.base, service_user(source.service_user)) is not None:
            self.base = SHARED_DEMO
        self.repo = self.base / "repo"
        self.inv_bin = str(Path(sys.executable).with_name("inv"))
        self.n = 0
        self.started = time.perf_counter()

    def sh(self, *argv: str, env: dict[str, str] | None = None) -> str:
        out = subprocess.run(
            argv,
            cwd=self.repo,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0:
            detail = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ["?"]
            raise DemoFailed(
                f"`{' '.join(argv[:4])}` exited {out.returncode}: {detail[0]}",
                hint=f"the demo clone is in {self.repo}",
            )
        return out.stdout

    def step(
        self, what: str, *args: str, actor: str = OPERATOR, env: dict[str, str] | None = None
    ) -> str:
        self.n += 1
        start = time.perf_counter()
        out = self.sh(
            self.inv_bin,
            *args,
            env={
                "STAGEFLOW_ACTOR": actor,
                "STAGEFLOW_ACTOR_KIND": "human",
                "NO_COLOR": "1",
                **(env or {}),
            },
        )
        took = time.perf_counter() - start
        who = "" if actor == OPERATOR else f"  [as {actor}]"
        say(f"{self.n:>2}. {what:<44} {took:6.2f}s  inv {' '.join(args)}{who}")
        return out

    def git(self, *args: str) -> str:
        return self.sh("git", *args).strip()


def run(source: Project, *, keep: bool = False) -> None:
    demo = Demo(source)
    _prepare(source, demo)
    staging = load_env(demo.repo, "staging")
    pw = staging.secret("POSTGRES_PASSWORD")
    gate_env = {"PGPASSWORD": pw.reveal() if pw else ""}
    db_url = staging.database_url
    try:
        demo.step("start dev, staging and prod servers", "dev.up", "staging.up", "prod.up")
        demo.step("deploy HEAD to dev", "dev.deploy")
        demo.git("tag", "-f", "v1.4.0-rc.1")
        demo.step(
            "deploy the release candidate to staging", "staging.deploy", "--ref", "v1.4.0-rc.1"
        )
        demo.step(
            "release gate, stage PRE_GA",
            "release.gate",
            "--ref",
            "v1.4.0-rc.1",
            "--db-url",
            db_url,
            env=gate_env,
        )
        demo.git("tag", "-f", "v1.4.0")
        demo.step(
            "release gate, stage GA",
            "release.gate",
            "--ref",
            "v1.4.0",
            "--db-url",
            db_url,
            env=gate_env,
        )
        rid = _request(demo, "v1.4.0")
        demo.step("a second human approves", "prod.approve", rid, actor=APPROVER)
        demo.step("deploy the approved request to prod", "prod.deploy", "--request", rid)
        # a second release goes the same way, then prod rolls back to the first
        (demo.repo / "CHANGES.demo").write_text("v1.4.1: a change that will be rolled back\n")
        demo.git("add", "CHANGES.demo")
        demo.git(
            "-c", "user.email=demo@example.com", "-c", "user.name=demo", "commit", "-qm", "v1.4.1"
        )
        demo.git("tag", "-f", "v1.4.1")
        demo.step("deploy v1.4.1 to staging", "staging.deploy", "--ref", "v1.4.1")
        demo.step(
            "release gate, stage GA",
            "release.gate",
            "--ref",
            "v1.4.1",
            "--db-url",
            db_url,
            env=gate_env,
        )
        rid = _request(demo, "v1.4.1")
        demo.step("a second human approves", "prod.approve", rid, actor=APPROVER)
        demo.step("deploy v1.4.1 to prod", "prod.deploy", "--request", rid)
        demo.step(
            "roll prod back to v1.4.0 (level 2)",
            "prod.rollback",
            "--level",
            "2",
            "--yes",
            "--reason",
            "demo: v1.4.1 misbehaves",
        )
        demo.step("prod history", "prod.history", "--limit", "3")
        say(demo.step("every environment at a glance", "status").rstrip())
    finally:
        if not keep:
            demo.sh(demo.inv_bin, "dev.down", "staging.down", "prod.down")
    say(
        f"demo finished in {time.perf_counter() - demo.started:.1f}s"
        + (f"; environments left running in {demo.repo}" if keep else "; everything stopped")
    )


def _request(demo: Demo, ref: str) -> str:
    out = demo.step(f"request a prod deploy of {ref}", "prod.request", "--ref", ref)
    return out.strip().splitlines()[-1].split("#")[1].split()[0]


def _prepare(source: Project, demo: Demo) -> None:
    """A fresh clone of HEAD each run (its servers stopped first), with generated secrets."""
    if demo.repo.exists():
        subprocess.run(
            [demo.inv_bin, "dev.down", "staging.down", "prod.down"],
            cwd=demo.repo,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(demo.base)
    demo.base.mkdir(parents=True)
    os.chmod(demo.base, 0o755)
    subprocess.run(["git", "clone", "-q", str(source.root), str(demo.repo)], check=True)
    demo.git("config", "user.email", "demo@example.com")
    demo.git("config", "user.name", "demo")
    for env in ("staging", "prod"):  # dev runs with the relaxed posture and no secrets
        demo.sh(demo.inv_bin, f"{env}.secrets", "--generate")
    say(f"demo: a scratch clone of HEAD in {demo.repo}")
