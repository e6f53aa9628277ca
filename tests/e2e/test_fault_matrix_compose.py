"""Fault matrix on the compose runtime: `inv` SIGKILLed at every step of a deploy, against the
recording stand-in for the Docker engine (tests/fake_docker.py, as in test_compose_runtime.py).

The cases are the steps `deploy_pipeline.plan` lists for a compose environment, read when the
module is collected: a step added to the pipeline is killed at without this file changing. After
each kill: the app container runs the old tag or the new one (the old one until `start` ran) and
answers health; what the engine was asked matches where the run died (the new image built once
`build` ran and started once `start` ran; no container stopped or removed; no image untagged but
an older one, by `prune`); no row written before is lost; the migration ledger agrees with the
schema; the lock is stale and can be forced; and the next deploy succeeds with the app container
on its tag.

Each case ships a release with a migration of its own (one nullable column) and dev backs up
before pending migrations, so every deploy has a backup to take and a schema to change; the
recovering deploy leaves that release serving, which is the next case's starting point.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator

import pytest

from deploy.config import load_project
from deploy.engine import deploy_pipeline
from deploy.errors import ExitCode
from tests.e2e import faults
from tests.e2e.conftest import Project
from tests.e2e.faults import after, assert_ledger_matches_schema, user_rows, write_rows
from tests.e2e.test_compose_runtime import BASE, UP, Engine
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
    ups = [c["release"] for c in calls if c["argv"] == UP]
    assert ups == ([tag] if after(STEPS, step, START) else []), calls
    assert not [c for c in calls if _stops(c["argv"])], calls
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
    starts = [(c["release"], c["commit"]) for c in dev.new_calls() if c["argv"] == UP]
    assert starts[1:] == [(killed_tag, killed)], starts
    assert starts[0][1] == broken, starts
    assert app_container(dev) == (killed_tag, killed)
    status = json.loads(dev.inv("dev.status", "--json").stdout)
    assert status["lock"] is None and status["last"]["status"] == "rolled-back", status
