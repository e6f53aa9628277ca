"""Fault matrix on the compose runtime: `inv` SIGKILLed at every step of a deploy, against the
recording stand-in for the Docker engine (tests/fake_docker.py, as in test_compose_runtime.py).

The cases are the steps `deploy_pipeline.plan` lists for a compose environment, read when the
module is collected: a step added to the pipeline is killed at without this file changing. After
each kill: the app container runs the old tag or the new one (the old one until `start` ran) and
answers health; what the engine was asked matches where the run died (the new image built once
`build` ran and started once `start` ran; no container stopped or removed but the old tag's, by
the switch once `start` ran; no image untagged but an older one, by `prune`); no row written
before is lost; the migration ledger agrees with the schema; the lock is stale and can be forced;
and the next deploy succeeds with the app container on its tag.

Each case ships a release with a migration of its own (one nullable column) and dev backs up
before pending migrations, so every deploy has a backup to take and a schema to change; the
recovering deploy leaves that release serving, which is the next case's starting point.

Rollback levels 1-3 are killed the same way, at "lock", at every step of the level's dry run on
this environment (read when the level's test starts) and at "unlock". After each kill: the app
container runs and answers (except in level 3's dark window between stop and start, where status
shows dev frozen and the operation interrupted), no row is lost (after level 3's restore: exactly
the backup's rows), the ledger agrees with the schema, the lock is stale and can be forced, and
the same rollback again finishes with the target's tag running (level 3 stays frozen until
unfreeze). Each level's cases are walked in order inside one test, so each recovery is the next
case's starting point.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.config import load_project
from deploy.engine import deploy_pipeline
from deploy.errors import ExitCode
from tests.e2e import faults
from tests.e2e.conftest import Project
from tests.e2e.faults import after, assert_ledger_matches_schema, user_rows, write_rows
from tests.e2e.test_compose_runtime import BASE, UP_FRONT, Engine
from tests.e2e.test_compose_runtime import compose as compose_project  # noqa: F401 - reused

START = "start"  # the step that replaces the app container: before it the old tag runs
IMAGE = "stageflow-app"


def _compose(proj: Project) -> None:
    """dev as the fixture below has it: the compose runtime, backups before pending migrations."""
    proj.set_policy("dev", runtime='"compose"', backup='"pending-migrations"')


STEPS = faults.planned_steps("dev", _compose)


@pytest.fixture(scope="module")
def dev(compose_project: Project) -> Iterator[Engine]:  # noqa: F811 - the fixture imported above
    """The compose tests' dev project on the stand-in engine, serving a release, with user rows."""
    p = compose_project
    p.set_policy("dev", backup='"pending-migrations"')
    p.commit("dev backs up before pending migrations")
    engine = Engine(p)
    try:
        engine.inv("dev.up")
        engine.inv("dev.deploy")
        write_rows(p, "fault-compose-seed", 10, env="dev")
        yield engine
    finally:
        engine.heal()
        p.inv("dev.down", env=engine.env)


def app_container(engine: Engine) -> tuple[str, str]:
    """(image tag, commit) of the app container the stand-in runs; it must be alive and healthy."""
    state = json.loads((engine.dir / "state.json").read_text())
    app = state.get("app")
    assert app, state
    os.kill(app["pid"], 0)  # the container's process runs (ProcessLookupError otherwise)
    with urllib.request.urlopen(engine.proj.url("dev", "/healthz"), timeout=10) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(engine.proj.url("dev", "/version"), timeout=10) as resp:
        version = json.loads(resp.read())
    image, _, tag = app["image"].partition(":")
    assert (image, tag) == (IMAGE, version["release"]), (app, version)
    return tag, version["commit"]


def _stops(argv: list[str]) -> bool:
    """A call that stops, restarts or removes a container."""
    return argv[: len(BASE)] == BASE and argv[len(BASE)] in ("stop", "down", "rm", "restart")


def test_the_matrix_is_the_plan_of_this_environment(dev: Engine) -> None:
    """The steps collected above are what a deploy of the live project walks."""
    proj = load_project(dev.proj.root, process_env={})
    walked = [name for name, _ in deploy_pipeline.plan(proj, "dev", ref="HEAD")["steps"]]
    assert tuple(walked) == STEPS
    assert START in STEPS and "switch" not in STEPS, STEPS


@pytest.mark.parametrize("step", STEPS)
def test_a_compose_deploy_killed_at_step(dev: Engine, step: str) -> None:
    p = dev.proj
    old_tag, old_commit = app_container(dev)
    version = faults.add_fault_migration(p)
    new = p.commit(f"fault matrix on compose: killed at {step}", tag=f"compose-{step}")
    write_rows(p, f"before-{step}", env="dev")
    before = user_rows(p, "dev")
    dev.new_calls()

    faults.kill_at(p, step, ("dev.deploy", "--ref", f"compose-{step}"), env=dev.env)

    # the app container runs the old tag until `start` ran, the new one after, and answers
    tag, commit = app_container(dev)
    if after(STEPS, step, START):
        assert commit == new and tag != old_tag and tag.endswith(new[:8]), (tag, commit)
    else:
        assert (tag, commit) == (old_tag, old_commit)
    # what the engine was asked for: as far as the run got, and nothing stopped or removed
    calls = dev.new_calls()
    builds = [c for c in calls if c["argv"][1] == "build"]
    assert len(builds) == after(STEPS, step, "build"), calls
    if builds:
        assert builds[0]["argv"][3].startswith(f"{IMAGE}:") and builds[0]["argv"][3].endswith(
            new[:8]
        )
    ups = [c["release"] for c in calls if c["argv"] == UP_FRONT]
    assert ups == ([tag] if after(STEPS, step, START) else []), calls
    assert not [c for c in calls if _stops(c["argv"])], calls
    # the switch stops and removes the old tag's container, and only once the front moved
    removed = [c for c in calls if c["argv"][1:2] in (["stop"], ["rm"])]
    assert not removed or after(STEPS, step, START), calls
    # prune may untag an older release, never the one that served before nor the new one
    untagged = [c["argv"][3].partition(":")[2] for c in calls if c["argv"][1:3] == ["image", "rm"]]
    assert len(untagged) <= after(STEPS, step, "prune"), calls
    assert not {old_tag, tag} & set(untagged), (old_tag, tag, untagged)
    assert user_rows(p, "dev") == before
    columns = faults.fault_columns(p)
    led = assert_ledger_matches_schema(p, "dev", columns=columns)
    assert (led.get(version) == "applied") == after(STEPS, step, "migrate"), led

    assert (p.root / ".stageflow" / "dev" / "state" / "lock").exists() == after(STEPS, step, "lock")
    faults.check_lock_and_force(p, step, "dev", env=dev.env)

    # the next deploy succeeds, and the app container runs its tag
    result = json.loads(dev.inv("dev.deploy", "--ref", f"compose-{step}", "--json").stdout)
    assert result["status"] == "success", result
    assert app_container(dev) == (result["release"], new)
    assert user_rows(p, "dev") == before
    assert assert_ledger_matches_schema(p, "dev", columns=columns).get(version) == "applied"
    status = json.loads(dev.inv("dev.status", "--json").stdout)
    assert status["lock"] is None and status["last"]["status"] == "success", status
    assert status["app"]["release"] == result["release"], status


def test_a_deploy_failing_after_a_killed_one_sends_the_killed_ones_tag_back(dev: Engine) -> None:
    """A deploy killed once its tag runs leaves that tag serving; the next deploy takes it as the
    previous release, so when its own container never gets healthy it starts that tag again,
    with the commit it was built from."""
    p = dev.proj
    killed = p.commit("a deploy killed once its container runs", tag="compose-killed")
    faults.kill_at(p, "smoke", ("dev.deploy", "--ref", "compose-killed"), env=dev.env)
    killed_tag, commit = app_container(dev)
    assert commit == killed
    faults.check_lock_and_force(p, "smoke", "dev", env=dev.env)

    (p.root / "README.md").write_text("a release whose container never gets healthy\n")
    broken = p.commit("a release whose container never gets healthy")
    dev.new_calls()
    dev.fail("up", commit=broken)
    try:
        res = dev.inv("dev.deploy", code=ExitCode.ROLLED_BACK)
    finally:
        dev.heal()
    assert f"{killed_tag} serves again" in res.stderr, res.stderr
    starts = [(c["release"], c["commit"]) for c in dev.new_calls() if c["argv"] == UP_FRONT]
    assert starts[1:] == [(killed_tag, killed)], starts
    assert starts[0][1] == broken, starts
    assert app_container(dev) == (killed_tag, killed)
    status = json.loads(dev.inv("dev.status", "--json").stdout)
    assert status["lock"] is None and status["last"]["status"] == "rolled-back", status


# -- rollback levels 1-3 --------------------------------------------------------------------------
# Each level's cases are its live dry run's steps plus the lifecycle's lock and unlock: level 1
# restart, smoke; level 2 schema, start, smoke; level 3 freeze, stop, restore, start, smoke.


def level_argv(level: int, step: str) -> tuple[str, ...]:
    return ("dev.rollback", "--level", str(level), "--reason", f"fault matrix on compose: {step}")


def forward(dev: Engine, label: str, *, migration: bool = False) -> tuple[str, str]:
    """Deploy a new commit over what serves (with a migration of its own: dev backs up first);
    the app container's (tag, commit) afterwards."""
    p = dev.proj
    if migration:
        faults.add_fault_migration(p)
    commit = p.commit(f"fault matrix on compose: {label}", tag=f"compose-{label}")
    result = json.loads(dev.inv("dev.deploy", "--ref", f"compose-{label}", "--json").stdout)
    assert app_container(dev) == (result["release"], commit)
    return result["release"], commit


def kill_at_level(dev: Engine, step: str, level: int) -> None:
    """`inv dev.rollback --level N` SIGKILLed as step starts: it left its lock behind, unless it
    died before taking it."""
    faults.kill_at(dev.proj, step, level_argv(level, step), env=dev.env)
    assert state(dev, "lock").exists() == (step != "lock"), step


def state(dev: Engine, name: str) -> Path:
    return dev.proj.root / ".stageflow" / "dev" / "state" / name


def newest(dev: Engine) -> dict:
    """The newest history entry, read from the state directory as `dev.history` reads it."""
    from deploy.hosts import Host
    from deploy.state import Layout, history

    return history(Host(), Layout(str(dev.proj.root / ".stageflow" / "dev")))[-1]


def finished(dev: Engine, level: int) -> dict:
    """The newest operation is this level's, a success, and nothing holds the lock; its entry."""
    entry = newest(dev)
    assert entry["kind"] == f"rollback-{level}" and entry["status"] == "success", entry
    assert not state(dev, "lock").exists()
    return entry


def test_rollback_level_1_killed_at_every_step(dev: Engine) -> None:
    """Level 1 restarts the serving tag: whatever the kill, it runs and answers."""
    p = dev.proj
    steps = faults.rollback_cases(faults.rollback_plan(p, "dev", 1, env=dev.env))
    assert steps == ("lock", "restart", "smoke", "unlock"), steps
    serving = app_container(dev)
    for step in steps:
        write_rows(p, f"level1-{step}", env="dev")
        before = user_rows(p, "dev")

        kill_at_level(dev, step, 1)

        assert app_container(dev) == serving, step
        assert user_rows(p, "dev") == before, step
        assert_ledger_matches_schema(p, "dev", columns=faults.fault_columns(p))
        faults.check_lock_and_force(p, step, "dev", env=dev.env)
        if step != "unlock":  # killed at unlock, it had finished
            dev.inv(*level_argv(1, step))
        assert app_container(dev) == serving, step
        finished(dev, 1)


def test_rollback_level_2_killed_at_every_step(dev: Engine) -> None:
    """Level 2 from a release deployed over the previous one: the newer tag runs until `start`
    ran, the previous one after; the same rollback again leaves the previous one running. Each
    case first deploys forward (a release rolled back from is never a previous good one again)."""
    p = dev.proj
    # a deploy that succeeded first: what runs may be a killed deploy's tag, never a good one
    target = forward(dev, "level2-base")
    current = forward(dev, "level2-0")
    plan = faults.rollback_plan(p, "dev", 2, env=dev.env)
    assert (plan["current"], plan["target"]) == (current[0], target[0]), plan
    steps = faults.rollback_cases(plan)
    assert steps == ("lock", "schema", START, "smoke", "unlock"), steps
    for i, step in enumerate(steps):
        if i:  # the previous case left the previous release serving: go forward again
            target, current = app_container(dev), forward(dev, f"level2-{i}")
        write_rows(p, f"level2-{step}", env="dev")
        before = user_rows(p, "dev")

        kill_at_level(dev, step, 2)

        assert app_container(dev) == (target if after(steps, step, START) else current), step
        assert user_rows(p, "dev") == before, step
        assert_ledger_matches_schema(p, "dev", columns=faults.fault_columns(p))
        faults.check_lock_and_force(p, step, "dev", env=dev.env)
        if step != "unlock":
            dev.inv(*level_argv(2, step))
        assert app_container(dev) == target, (step, p.history("dev")[:3])
        # what it rolled back from, even when a re-run completed it: never a previous good again
        assert finished(dev, 2)["previous"] == current[0], (step, newest(dev))


def test_rollback_level_3_killed_at_every_step(dev: Engine) -> None:
    """Level 3 restores the backup taken before the serving tag's deploy. The first case restores
    it from that tag; each later one starts from the restore before it, unfrozen, which restores
    the same backup again. Killed between stop and start no app container runs and status says
    frozen and interrupted; after the restore the rows are exactly the backup's; the same
    rollback again leaves the backup's tag running, frozen until unfreeze."""
    p = dev.proj
    target = app_container(dev)
    backup_rows = user_rows(p, "dev")  # what the deploy below backs up before migrating
    forward(dev, "level3", migration=True)
    plan = faults.rollback_plan(p, "dev", 3, env=dev.env)
    assert plan["target"] == target[0] and plan["backup"], plan
    steps = faults.rollback_cases(plan)
    assert steps == ("lock", "freeze", "stop", "restore", START, "smoke", "unlock"), steps
    frozen = state(dev, "frozen.json")
    for step in steps:
        old = app_container(dev)
        write_rows(p, f"after-backup-{step}", env="dev")  # the restore drops these, only these
        before = user_rows(p, "dev")

        kill_at_level(dev, step, 3)

        if faults.dark(steps, step, starts=START):
            status = json.loads(dev.inv("dev.status", "--json").stdout)
            assert status["frozen"] and status["last"]["status"] == "interrupted", status
            assert status["last"]["kind"] == "rollback-3" and not status["app"]["up"], status
        else:
            assert app_container(dev) == (target if after(steps, step, START) else old), step
            assert frozen.exists() == after(steps, step, "freeze"), step
        assert user_rows(p, "dev") == (backup_rows if after(steps, step, "restore") else before)
        assert_ledger_matches_schema(p, "dev", columns=faults.fault_columns(p))
        faults.check_lock_and_force(p, step, "dev", env=dev.env)
        if step != "unlock":
            dev.inv(*level_argv(3, step))
        assert app_container(dev) == target, step
        assert user_rows(p, "dev") == backup_rows, step
        finished(dev, 3)
        assert frozen.exists(), step
        if step == steps[-1]:  # frozen means it: the next deploy is refused until unfreeze
            res = dev.inv("dev.deploy", code=ExitCode.FROZEN)
            assert "frozen" in res.stderr, res.stderr
        dev.inv("dev.unfreeze", "--reason", f"fault matrix: checked after {step}")
