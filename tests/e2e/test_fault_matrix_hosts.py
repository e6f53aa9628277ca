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

Rollback levels 1-3 are killed the same way, at "lock", at every step of the level's dry run on
this fleet (read when the level's test starts) and at "unlock". After each kill: every host
answers and serves one release (except in level 3's dark window between stop and the switch,
where status shows staging frozen and the operation interrupted), no row is lost (after level 3's
restore: exactly the backup's rows), the ledger agrees with the schema, the primary's lock is
stale and can be forced, and the same rollback again finishes with every host on the target
(level 3 stays frozen until unfreeze). Each level's cases are walked in order inside one test, so
each recovery is the next case's starting point.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploy.config import load_project
from deploy.engine import deploy_pipeline
from deploy.errors import ExitCode
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


# -- rollback levels 1-3 over the group -----------------------------------------------------------
# Each level's cases are its live dry run's steps plus the lifecycle's lock and unlock; the hosts'
# own work runs inside them (level 1: one `restart` step; levels 2 and 3: one `switch` step in
# batches, each host's workers answering the ready path before its master takes a request), so a
# kill lands before or after every host moved, never between two of them.

MOVES = "switch"  # levels 2 and 3: the step that puts the target in front on every host


def level_argv(level: int, step: str) -> tuple[str, ...]:
    reason = f"fault matrix over {HOSTS} hosts: level {level} killed at {step}"
    return ("staging.rollback", "--level", str(level), "--reason", reason)


def forward(fleet: Staging, label: str, *, migration: bool = False) -> tuple[str, str]:
    """Deploy a new commit over what serves (with a migration of its own: a backup is taken
    first); the (release, commit) every host then serves."""
    p = fleet.project
    if migration:
        faults.add_fault_migration(p)
    commit = p.commit(f"fault matrix over {HOSTS} hosts: {label}", tag=f"hosts-{label}")
    result = json.loads(p.ok("staging.deploy", "--ref", f"hosts-{label}", "--json").stdout)
    assert served(fleet) == [(result["release"], commit)] * HOSTS
    return result["release"], commit


def lock_on_primary(fleet: Staging, step: str) -> None:
    """Only the primary ever holds the lock: after a kill, stale and forced (free if killed at
    lock)."""
    assert fleet.state("lock").exists() == (step != "lock"), step
    assert not any((Path(d) / "state" / "lock").exists() for d in fleet.dirs[1:])
    faults.check_lock_and_force(fleet.project, step)
    assert not fleet.state("lock").exists()


def finished(fleet: Staging, level: int) -> None:
    """The newest operation is this level's, a success, and nothing holds the lock."""
    newest = fleet.history()[0]
    assert newest["kind"] == f"rollback-{level}" and newest["status"] == "success", newest
    assert not fleet.state("lock").exists()


def test_rollback_level_1_killed_at_every_step(fleet: Staging) -> None:
    """Level 1 restarts what serves, host by host: whatever the kill, every host serves it."""
    p = fleet.project
    steps = faults.rollback_cases(faults.rollback_plan(p, "staging", 1))
    assert "restart" in steps and "smoke" not in steps, steps  # the hosts' probes are in restart
    serving = served(fleet)[0]
    assert served(fleet) == [serving] * HOSTS
    for step in steps:
        write_rows(p, f"level1-{step}")
        before = user_rows(p)

        faults.kill_at(p, step, level_argv(1, step))

        assert served(fleet) == [serving] * HOSTS, step
        assert user_rows(p) == before, step
        assert_ledger_matches_schema(p, columns=faults.fault_columns(p))
        lock_on_primary(fleet, step)
        if step != "unlock":  # killed at unlock, it had finished
            p.ok(*level_argv(1, step))
        assert served(fleet) == [serving] * HOSTS, step
        finished(fleet, 1)


def test_rollback_level_2_killed_at_every_step(fleet: Staging) -> None:
    """Level 2 from a release deployed over the previous one: before the switch every host
    serves the newer, after it the previous; the same rollback again leaves every host on the
    previous. Each case first deploys forward (a release rolled back from is never a previous
    good one again, so going forward by rollback would leave the next case nowhere to go back
    to)."""
    p = fleet.project
    target = served(fleet)[0]
    current = forward(fleet, "level2-0")
    plan = faults.rollback_plan(p, "staging", 2)  # the plan of this very state: its steps are cases
    assert (plan["current"], plan["target"]) == (current[0], target[0]), plan
    steps = faults.rollback_cases(plan)
    assert steps[-3:] == ("schema", MOVES, "unlock"), steps
    for i, step in enumerate(steps):
        if i:  # the previous case left the previous release serving: go forward again
            target, current = served(fleet)[0], forward(fleet, f"level2-{i}")
        write_rows(p, f"level2-{step}")
        before = user_rows(p)

        faults.kill_at(p, step, level_argv(2, step))

        moved = after(steps, step, MOVES)
        assert served(fleet) == [target if moved else current] * HOSTS, step
        assert user_rows(p) == before, step
        assert_ledger_matches_schema(p, columns=faults.fault_columns(p))
        lock_on_primary(fleet, step)
        if step != "unlock":
            p.ok(*level_argv(2, step))
        assert served(fleet) == [target] * HOSTS, (step, p.history("staging")[:3])
        finished(fleet, 2)
        # what it rolled back from, even when a re-run completed it: never a previous good again
        assert fleet.history()[0]["previous"] == current[0], (step, fleet.history()[0])


def test_rollback_level_3_killed_at_every_step(fleet: Staging) -> None:
    """Level 3 restores the backup taken before the serving release's deploy. The first case
    restores it from that release; each later one starts from the restore before it, unfrozen,
    which restores the same backup again (a restore's release is restored to the same point).
    Killed between stop and the switch nothing serves and status says frozen and interrupted;
    after the restore the rows are exactly the backup's; the same rollback again leaves every
    host on the backup's release, frozen until unfreeze."""
    p = fleet.project
    target = served(fleet)[0]
    backup_rows = user_rows(p)  # what the deploy below backs up before migrating
    forward(fleet, "level3", migration=True)
    plan = faults.rollback_plan(p, "staging", 3)
    assert plan["target"] == target[0] and plan["backup"], plan
    steps = faults.rollback_cases(plan)
    assert steps[1:4] == ("freeze", "stop", "restore") and MOVES in steps, steps
    for step in steps:
        old = served(fleet)[0]
        write_rows(p, f"after-backup-{step}")  # the restore must drop these, and only these
        before = user_rows(p)

        faults.kill_at(p, step, level_argv(3, step))

        if faults.dark(steps, step, starts=MOVES):
            status = json.loads(p.ok("staging.status", "--json").stdout)
            assert status["frozen"] and status["last"]["status"] == "interrupted", status
            assert status["last"]["kind"] == "rollback-3", status
        else:
            assert served(fleet) == [target if after(steps, step, MOVES) else old] * HOSTS
            assert fleet.state("frozen.json").exists() == after(steps, step, "freeze"), step
        assert user_rows(p) == (backup_rows if after(steps, step, "restore") else before), step
        assert_ledger_matches_schema(p, columns=faults.fault_columns(p))
        lock_on_primary(fleet, step)
        if step != "unlock":
            p.ok(*level_argv(3, step))
        assert served(fleet) == [target] * HOSTS, step
        assert user_rows(p) == backup_rows, step
        finished(fleet, 3)
        assert fleet.state("frozen.json").exists(), step
        if step == steps[-1]:  # frozen means it: the next deploy is refused until unfreeze
            res = p.inv("staging.deploy")
            assert res.returncode == ExitCode.FROZEN and "frozen" in res.stderr, res.stderr
        p.ok("staging.unfreeze", "--reason", f"fault matrix: checked after {step}")
