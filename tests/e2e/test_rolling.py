"""Rolling deploys over real OpenSSH hosts on loopback addresses: batches, barrier, switch back."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.config import load_project
from deploy.engine import deploy_pipeline, group
from deploy.errors import ExitCode
from deploy.policy.actors import Actor
from deploy.runtime import native_hosts
from tests import support
from tests.conftest import need
from tests.e2e.conftest import Project, destroy, make_project
from tests.e2e.test_promotion import request_id
from tests.sshd import (
    Sshd,
    StopsAfterPrimary,
    can_run_sshd,
    fleet,
    kill_served,
    seed_venv,
    set_hosts,
    shared_venv,
    venv_key,
)

STAGING, PROD = 3, 6
RELEASE_TAG, APPROVER = "v1.0.0", "bob@example.com"


class Fleet:
    def __init__(self, project: Project, staging: list[Sshd], prod: list[Sshd]) -> None:
        self.project = project
        self.staging = staging
        self.prod = prod
        self.dirs: dict[str, list[Path]] = {}

    def url(self, env: str, host: Sshd, path: str = "/version") -> str:
        return f"http://{host.address}:{self.project.ports[env]['app']}{path}"

    def history(self, env: str) -> list[dict[str, Any]]:
        """The primary's history file, newest first (the primary is on this machine here)."""
        path = self.dirs[env][0] / "state" / "history.jsonl"
        text = path.read_text() if path.exists() else ""
        by_id: dict[str, dict[str, Any]] = {}
        for line in text.splitlines():
            rec = json.loads(line)
            by_id[rec["id"]] = {**by_id.get(rec["id"], {}), **rec}
        return list(by_id.values())[::-1]

    def lock_free(self, env: str) -> bool:
        return not (self.dirs[env][0] / "state" / "lock").exists()

    def serving(self, env: str) -> list[str | None]:
        """What each host of env answers on its own address (None: nothing answers)."""
        out: list[str | None] = []
        for h in self.staging if env == "staging" else self.prod:
            try:
                with urllib.request.urlopen(self.url(env, h), timeout=5) as resp:
                    out.append(json.loads(resp.read())["release"])
            except OSError:
                out.append(None)
        return out


@pytest.fixture(scope="module")
def hosts() -> Iterator[Fleet]:
    ok, why = can_run_sshd()
    need(ok, why)
    base = support.public_tmpdir("sf-sshd-")
    project = make_project("sf-e2e-rolling-")
    try:
        with fleet(base, STAGING + PROD) as servers:
            f = Fleet(project, servers[:STAGING], servers[STAGING:])
            # one worker per host: nine hosts' gunicorns share this machine's cores
            f.dirs["staging"] = set_hosts(
                project.root, "staging", f.staging, batch="1", verify_window_s=1, workers=1
            )
            f.dirs["prod"] = set_hosts(
                project.root, "prod", f.prod, batch="50%", verify_window_s=1, workers=1
            )
            project.gate_ga_on_quick_gates()
            project.commit("staging on 3 hosts, prod on 6; GA on the quick gates")
            lock = project.root / "app" / "requirements.lock"
            venv = shared_venv(lock)
            # staging's first host builds its venv for real over SSH; the rest reuse one
            for d in f.dirs["staging"][1:] + f.dirs["prod"]:
                seed_venv(d, venv, lock)
            project.ok("staging.up", "prod.up")
            try:
                yield f
            finally:
                destroy(project)  # `down` stops the service on every host while sshd still runs
                for d in f.dirs["staging"] + f.dirs["prod"]:
                    kill_served(d)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(project.root.parent, ignore_errors=True)


def served(f: Fleet, env: str) -> list[str | None]:
    """What env's hosts serve, deploying first when a test runs on its own (-k)."""
    now = f.serving(env)
    if not all(now):
        in_process(f, env, lambda _line: None, extra_checks=[] if env == "prod" else None)
        now = f.serving(env)
    return now


def in_process(f: Fleet, env: str, printer: Callable[[str], None], **kw: Any) -> dict[str, Any]:
    """The deploy engine in this process, so a test can act between two batches (printer)."""
    proj = load_project(f.project.root, process_env={})
    actor = Actor(name=f.project.actor, kind="human")
    return deploy_pipeline.deploy(proj, env, actor=actor, printer=printer, **kw)


def test_dry_run_shows_the_batches(hosts: Fleet) -> None:
    out = hosts.project.ok("staging.deploy", "--dry-run").stdout
    addrs = [h.destination for h in hosts.staging]
    assert " | ".join(addrs) in " ".join(out.split()), out


def test_staging_three_hosts_batch_one_first_host_first(hosts: Fleet) -> None:
    p = hosts.project
    res = p.ok("staging.deploy")
    release = hosts.serving("staging")[0]
    assert release and hosts.serving("staging") == [release] * STAGING
    batch_lines = [ln for ln in res.stdout.splitlines() if "(batch " in ln]
    for i, h in enumerate(hosts.staging):  # one host per batch, the primary alone first
        assert h.destination in batch_lines[i] and f"(batch {i + 1}/{STAGING})" in batch_lines[i]
    # lock and state live on the primary only
    primary, others = hosts.dirs["staging"][0], hosts.dirs["staging"][1:]
    assert (primary / "state" / "history.jsonl").exists()
    assert not any((d / "state").exists() for d in others)
    hist = hosts.history("staging")
    assert hist[0]["status"] == "success" and hist[0]["release"] == release
    assert hosts.lock_free("staging")
    status = {row["env"]: row for row in json.loads(p.ok("status", "--json").stdout)}
    app = status["staging"]["app"]
    assert app["up"] and [h["release"] for h in app["hosts"]] == [release] * STAGING


def test_prod_six_hosts_half_batch_through_an_approved_request(hosts: Fleet) -> None:
    p = hosts.project
    commit = p.git("rev-parse", "HEAD")
    p.git("tag", "-f", RELEASE_TAG, commit)
    verified = [e for e in hosts.history("staging") if e["status"] == "success"]
    if not any(e["commit"] == commit for e in verified):  # run on its own (-k): staging first
        p.ok("staging.deploy", "--ref", RELEASE_TAG)
    p.ok("release.gate", "--ref", RELEASE_TAG)
    p.trust(p.actor, APPROVER)  # prod's first allowed signers: the two humans' keys
    rid = request_id(p.ok("prod.request", "--ref", RELEASE_TAG))
    p.ok("prod.approve", rid, actor=APPROVER)
    res = p.ok("prod.deploy", "--request", rid)
    release = res.stdout.strip().splitlines()[-1].split("deployed ")[1].split()[0]
    assert hosts.serving("prod") == [release] * PROD
    # one line per host as it finishes: "<host> ok (batch i/n)", batch after batch
    done: list[tuple[str, str, str]] = []  # (batch, host, status)
    for line in res.stdout.splitlines():
        if line.startswith("prod: host ") and "(batch " in line:
            words = line.split()
            at = words.index("(batch")
            done.append((words[at + 1].rstrip("):"), words[at - 2], words[at - 1]))
    # 50% of 6 hosts is 3 per batch, after the primary alone: 1 + 3 + 2
    expected = ["1/3"] + ["2/3"] * 3 + ["3/3"] * 2
    assert [b for b, _, _ in done] == expected, res.stdout
    dests = [h.destination for h in hosts.prod]  # the primary first: it alone is batch 1
    assert sorted(done) == sorted(zip(expected, dests, ["ok"] * PROD, strict=True)), res.stdout
    entry = hosts.history("prod")[0]
    assert entry["status"] == "success" and entry["release"] == release
    assert entry["commit"] == commit and entry["actor"] == p.actor
    assert f"request #{rid} by {p.actor}" in entry["notes"]
    assert f"approved by {APPROVER}" in entry["notes"]
    assert hosts.lock_free("prod")


def test_sshd_stopping_mid_rollout_switches_back_every_host(hosts: Fleet) -> None:
    p = hosts.project
    before = served(hosts, "staging")
    assert before[0] and len(set(before)) == 1
    p.commit("a change that never reaches every host")
    victim = hosts.staging[1]
    # the primary passed its health check: the second host's sshd dies before its turn
    with StopsAfterPrimary(hosts.staging[0], victim) as printer:
        with pytest.raises(group.RolloutError) as info:
            in_process(hosts, "staging", printer)
    lines = printer.lines
    err = info.value
    by_host = {o.host: o for o in err.outcomes}
    assert [o.host for o in err.outcomes] == [h.destination for h in hosts.staging]
    assert by_host[hosts.staging[0].destination].status == "reverted"
    assert by_host[victim.destination].status == "failed"
    assert by_host[hosts.staging[2].destination].status == "skipped"
    assert err.exit_code == ExitCode.ROLLED_BACK
    assert victim.destination in err.message and "skipped" in err.message
    assert any(victim.destination in ln and "failed" in ln for ln in lines)  # the table
    assert hosts.serving("staging") == before
    assert hosts.lock_free("staging")
    hist = hosts.history("staging")
    assert hist[0]["status"] == "rolled-back"
    audit = (hosts.dirs["staging"][0] / "state" / "audit.jsonl").read_text().splitlines()
    outcome = json.loads(audit[-1])
    assert outcome["action"] == "rollout" and len(outcome["hosts"]) == STAGING


def test_unreachable_host_refuses_before_any_change(hosts: Fleet) -> None:
    p = hosts.project
    before = served(hosts, "staging")
    down = hosts.staging[2]
    down.stop()
    try:
        res = p.inv("staging.deploy")
    finally:
        down.start()
    assert res.returncode == ExitCode.GUARD_REFUSED, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and down.destination in lines[0] and "unreachable" in lines[0]
    assert hosts.serving("staging") == before
    assert hosts.lock_free("staging")


def test_switch_hosts_moves_every_host_and_reports_each(hosts: Fleet) -> None:
    current = served(hosts, "prod")[0]
    proj = load_project(hosts.project.root, process_env={})
    lines: list[str] = []
    outcomes = native_hosts.switch_hosts(proj, "prod", current, printer=lines.append)
    assert [o.status for o in outcomes] == ["ok"] * PROD
    with pytest.raises(group.RolloutError) as info:
        native_hosts.switch_hosts(proj, "prod", "no-such-release", printer=lines.append)
    assert [o.status for o in info.value.outcomes] == ["failed"] * PROD  # all at once
    with pytest.raises(group.RolloutError) as info:
        native_hosts.switch_hosts(
            proj, "prod", "no-such-release", batch="50%", printer=lines.append
        )
    # the barrier: the first host failed, so no other host was touched
    assert [o.status for o in info.value.outcomes] == ["failed"] + ["skipped"] * (PROD - 1)
    assert hosts.serving("prod") == [current] * PROD


def test_a_host_failing_to_start_through_inv_prints_every_host(hosts: Fleet) -> None:
    p = hosts.project
    before = served(hosts, "staging")
    # the third host's venv for this lock file is empty: its release cannot start
    lock = (p.root / "app" / "requirements.lock").read_text()
    venv = (
        hosts.dirs["staging"][2]
        / "shared"
        / "venvs"
        / venv_key(p.root / "app" / "requirements.lock")
    )
    kept = venv.with_name(venv.name + ".kept")
    venv.rename(kept)
    venv.mkdir()
    (venv / ".complete").write_text(lock)
    try:
        p.commit("a release the third host cannot run")
        res = p.inv("staging.deploy")
    finally:
        shutil.rmtree(venv)
        kept.rename(venv)
    assert res.returncode == ExitCode.ROLLED_BACK, res.stdout + res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and "Traceback" not in res.stderr
    first, second, third = (h.destination for h in hosts.staging)
    assert f"{first} reverted; {second} reverted; {third} failed" in errors[0]
    table = res.stdout[res.stdout.index("staging: hosts") :]
    for host, status in ((first, "reverted"), (second, "reverted"), (third, "failed")):
        assert any(host in ln and status in ln for ln in table.splitlines()), table
    assert hosts.serving("staging") == before
    assert hosts.lock_free("staging") and hosts.history("staging")[0]["status"] == "rolled-back"
