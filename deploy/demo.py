"""`make demo`: the operator's day, dev -> staging -> prod and a rollback, in a scratch clone.

The demo never tags or edits the operator's own repository: it clones HEAD into
.stageflow/demo/repo, tags releases there, and drives every step through `inv` as a person would.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from deploy.commands import git as gitcmd
from deploy.config import Project, load_env
from deploy.errors import DeployError
from deploy.hosts import run_process
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
        # the operator's own session: Ctrl-C reaches the `inv` step as it would at a prompt
        out = run_process(argv, cwd=self.repo, env={**os.environ, **(env or {})}, new_session=False)
        if out.exit_code != 0:
            detail = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ["?"]
            raise DemoFailed(
                f"`{' '.join(argv[:4])}` exited {out.exit_code}: {detail[0]}",
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
                # who is human on prod is decided by this key, checked against prod's signers
                "STAGEFLOW_SIGNING_KEY": str(self.key(actor)),
                "NO_COLOR": "1",
                **(env or {}),
            },
        )
        took = time.perf_counter() - start
        who = "" if actor == OPERATOR else f"  [as {actor}]"
        say(f"{self.n:>2}. {what:<44} {took:6.2f}s  inv {' '.join(args)}{who}")
        return out

    def key(self, person: str) -> Path:
        """The demo person's own ed25519 key, made for this demo (no passphrase: a demo)."""
        path = self.base / "keys" / person
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", person, "-f", str(path)]
            run_process(argv, check=True)
        return path

    def trust_people(self, *people: str) -> Path:
        """The allowed-signers file (git's format) naming the demo's two humans."""
        path = self.base / "keys" / "prod.keys"
        lines = [f"{p} {Path(str(self.key(p)) + '.pub').read_text().strip()}" for p in people]
        path.write_text("\n".join(lines) + "\n")
        return path

    def git(self, argv: list[str]) -> str:
        return self.sh(*argv).strip()


def run(source: Project, *, keep: bool = False) -> None:
    demo = Demo(source)
    _prepare(source, demo)
    staging = load_env(demo.repo, "staging")
    pw = staging.secret("POSTGRES_PASSWORD")
    gate_env = {"PGPASSWORD": pw.reveal() if pw else ""}
    db_url = staging.database_url
    try:
        demo.step("start dev, staging and prod servers", "dev.up", "staging.up", "prod.up")
        signers = demo.trust_people(OPERATOR, APPROVER)
        demo.step("prod trusts the two humans' keys", "prod.keys", "--trust", str(signers))
        demo.step("deploy HEAD to dev", "dev.deploy")
        _first_release(demo, db_url=db_url, gate_env=gate_env)
        # a second release goes the same way, then prod rolls back to the first
        _second_release_rolled_back(demo, db_url=db_url, gate_env=gate_env)
        demo.step("prod history", "prod.history", "--limit", "3")
        say(demo.step("every environment at a glance", "status").rstrip())
    finally:
        if not keep:
            demo.sh(demo.inv_bin, "dev.down", "staging.down", "prod.down")
    say(
        f"demo finished in {time.perf_counter() - demo.started:.1f}s"
        + (f"; environments left running in {demo.repo}" if keep else "; everything stopped")
    )


def _first_release(demo: Demo, *, db_url: str, gate_env: dict[str, str]) -> None:
    """v1.4.0: its release candidate on staging and through the PRE_GA gate, then GA and prod."""
    demo.git(gitcmd.tag("v1.4.0-rc.1", force=True))
    demo.step("deploy the release candidate to staging", "staging.deploy", "--ref", "v1.4.0-rc.1")
    _release_gate(demo, "PRE_GA", "v1.4.0-rc.1", db_url=db_url, gate_env=gate_env)
    demo.git(gitcmd.tag("v1.4.0", force=True))
    _release_gate(demo, "GA", "v1.4.0", db_url=db_url, gate_env=gate_env)
    _approve_and_deploy(demo, "v1.4.0", "deploy the approved request to prod")


def _second_release_rolled_back(demo: Demo, *, db_url: str, gate_env: dict[str, str]) -> None:
    """v1.4.1: a commit of its own through staging, the GA gate and prod, then rolled back."""
    (demo.repo / "CHANGES.demo").write_text("v1.4.1: a change that will be rolled back\n")
    demo.git(gitcmd.add("CHANGES.demo"))
    demo.git(gitcmd.commit_staged("v1.4.1", email="demo@example.com", name="demo"))
    demo.git(gitcmd.tag("v1.4.1", force=True))
    demo.step("deploy v1.4.1 to staging", "staging.deploy", "--ref", "v1.4.1")
    _release_gate(demo, "GA", "v1.4.1", db_url=db_url, gate_env=gate_env)
    _approve_and_deploy(demo, "v1.4.1", "deploy v1.4.1 to prod")
    demo.step(
        "roll prod back to v1.4.0 (level 2)",
        "prod.rollback",
        "--level",
        "2",
        "--yes",
        "--reason",
        "demo: v1.4.1 misbehaves",
    )


def _release_gate(
    demo: Demo, stage: str, ref: str, *, db_url: str, gate_env: dict[str, str]
) -> None:
    demo.step(
        f"release gate, stage {stage}", "release.gate", "--ref", ref, "--db-url", db_url,
        env=gate_env,
    )  # fmt: skip


def _approve_and_deploy(demo: Demo, ref: str, what: str) -> None:
    """A prod request for ref signed by the operator, approved (signed) by a second human with
    their own key, then deployed (signed) by the operator."""
    rid = _request(demo, ref)
    demo.step("a second human approves", "prod.approve", rid, actor=APPROVER)
    demo.step(what, "prod.deploy", "--request", rid)


def _request(demo: Demo, ref: str) -> str:
    out = demo.step(f"request a prod deploy of {ref}", "prod.request", "--ref", ref)
    return out.strip().splitlines()[-1].split("#")[1].split()[0]


def _prepare(source: Project, demo: Demo) -> None:
    """A fresh clone of HEAD each run (its servers stopped first), with generated secrets."""
    if demo.repo.exists():
        run_process([demo.inv_bin, "dev.down", "staging.down", "prod.down"], cwd=demo.repo)
        shutil.rmtree(demo.base)
    demo.base.mkdir(parents=True)
    os.chmod(demo.base, 0o755)
    run_process(gitcmd.clone(source.root, demo.repo), check=True)
    demo.git(gitcmd.config_set("user.email", "demo@example.com"))
    demo.git(gitcmd.config_set("user.name", "demo"))
    for env in ("staging", "prod"):  # dev runs with the relaxed posture and no secrets
        demo.sh(demo.inv_bin, f"{env}.secrets", "--generate")
    _quick_test_gate(demo)
    say(f"demo: a scratch clone of HEAD in {demo.repo}")


# The repository's test gate runs the whole suite (`make test`, about ten minutes); the demo's
# clone gates on the unit tests so the whole day fits in a few minutes. Said on screen.
DEMO_TEST_GATE = 'command = ["python", "-m", "pytest", "-q", "-x", "tests/unit"]'


def _quick_test_gate(demo: Demo) -> None:
    path = demo.repo / "stageflow.toml"
    text = path.read_text()
    head, sep, rest = text.partition("[gates.test]\n")
    line_end = rest.find("\n", rest.find("command ="))
    if not sep or "command =" not in rest:
        return
    start = rest.find("command =")
    path.write_text(head + sep + rest[:start] + DEMO_TEST_GATE + rest[line_end:])
    demo.git(gitcmd.add("stageflow.toml"))
    demo.git(
        gitcmd.commit_staged("demo: gate on the unit tests", email="demo@example.com", name="demo")
    )
    say("demo: the clone's test gate runs tests/unit (the repository's runs `make test`)")
