"""Fault matrix over a rolling group: `inv` SIGKILLed at every step of a deploy to three real
OpenSSH hosts on loopback addresses.

The cases are the steps `deploy_pipeline.plan` lists for such a group, read when the module is
collected: a step added to the pipeline is killed at without this file changing. (The hosts'
own steps run inside the one `rollout` step, not as steps of the pipeline, so that is where a
kill lands.) After each kill: every host answers health and serves the release it served before
or the new one (before the rollout ran, the old one everywhere; after, the new one everywhere), no
row written before is lost, the migration ledger agrees with the schema, the primary's lock is
stale and can be forced, and the next deploy succeeds with every host serving it.

Each case ships a release with a migration of its own (one nullable column), so every deploy has a
backup to take and a schema to change; the recovering deploy leaves that release serving on every
host, which is the next case's starting point.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploy.config import load_project
from deploy.engine import deploy_pipeline
from tests.e2e import faults
from tests.e2e.conftest import Project
from tests.e2e.faults import after, assert_ledger_matches_schema, user_rows, write_rows
from tests.e2e.test_rolling_rollback import HOSTS, Staging
from tests.e2e.test_rolling_rollback import staging as rolling_staging  # noqa: F401 - the fleet
from tests.sshd import Sshd, set_hosts

ROLLOUT = "rollout"  # the one step that moves hosts: before it every host serves the old release


def _group(proj: Project) -> None:
    """staging as the fleet has it: HOSTS SSH hosts (only named here: a plan reaches none)."""
    here = proj.root.parent
    hosts = [Sshd(f"127.0.0.{2 + i}", 22, here, here / "key", here / "known") for i in range(HOSTS)]
    set_hosts(proj.root, "staging", hosts, batch="1", verify_window_s=0)


STEPS = faults.planned_steps("staging", _group)


@pytest.fixture(scope="module")
def fleet(rolling_staging: Staging) -> Staging:  # noqa: F811 - the fixture imported above
    """The rolling tests' three-host staging, serving one release everywhere, with user rows."""
    p = rolling_staging.project
    p.ok("staging.deploy")
    write_rows(p, "fault-hosts-seed", 10)
    return rolling_staging


def served(fleet: Staging) -> list[tuple[str, str]]:
    """(release, commit) each host answers on its own address; every host must answer health."""
    port = fleet.project.ports["staging"]["app"]
    out = []
    for h in fleet.hosts:
        base = f"http://{h.address}:{port}"
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=10) as resp:
                assert resp.status == 200, (h.destination, resp.status)
            with urllib.request.urlopen(f"{base}/version", timeout=10) as resp:
                body = json.loads(resp.read())
        except (urllib.error.URLError, OSError) as err:
            raise AssertionError(f"{h.destination} does not answer: {err}") from None
        out.append((body["release"], body["commit"]))
    return out


def test_the_matrix_is_the_plan_of_this_fleet(fleet: Staging) -> None:
    """The steps collected above are what a deploy of the live fleet walks."""
    proj = load_project(fleet.project.root, process_env={})
    walked = [name for name, _ in deploy_pipeline.plan(proj, "staging", ref="HEAD")["steps"]]
    assert tuple(walked) == STEPS
    assert ROLLOUT in STEPS and "switch" not in STEPS, STEPS


@pytest.mark.parametrize("step", STEPS)
def test_a_rolling_deploy_killed_at_step(fleet: Staging, step: str) -> None:
    p = fleet.project
    old = served(fleet)
    assert len(set(old)) == 1, old
    version = faults.add_fault_migration(p)
    new = p.commit(f"fault matrix over {HOSTS} hosts: killed at {step}", tag=f"hosts-{step}")
    write_rows(p, f"before-{step}")
    before = user_rows(p)

    faults.kill_at(p, step, ("staging.deploy", "--ref", f"hosts-{step}"))

    # every host answers, all on the old release or all on the new one (the rollout is one step)
    now = served(fleet)
    expect = new if after(STEPS, step, ROLLOUT) else old[0][1]
    assert [commit for _, commit in now] == [expect] * HOSTS, (step, now)
    assert len(set(now)) == 1, now
    assert user_rows(p) == before
    columns = faults.fault_columns(p)
    led = assert_ledger_matches_schema(p, columns=columns)
    assert (led.get(version) == "applied") == after(STEPS, step, "migrate"), led

    # the primary holds the lock (and only the primary): stale, and forced
    assert fleet.state("lock").exists() == after(STEPS, step, "lock")
    assert not any((Path(d) / "state" / "lock").exists() for d in fleet.dirs[1:])
    faults.check_lock_and_force(p, step)
    assert not fleet.state("lock").exists()

    # the next deploy succeeds and every host serves it
    result = json.loads(p.ok("staging.deploy", "--ref", f"hosts-{step}", "--json").stdout)
    assert result["status"] == "success", result
    assert served(fleet) == [(result["release"], new)] * HOSTS
    assert [h["status"] for h in result["hosts"]] == ["ok"] * HOSTS, result
    assert user_rows(p) == before
    assert assert_ledger_matches_schema(p, columns=columns).get(version) == "applied"
    status = json.loads(p.ok("staging.status", "--json").stdout)
    assert status["lock"] is None and status["last"]["status"] == "success", status
