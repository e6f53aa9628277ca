"""Deploy through `inv`: dev and a staging tag, history, a failing migration, drift, the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import psycopg


def version(project, env):
    with urllib.request.urlopen(project.url(env, "/version"), timeout=5) as resp:
        return json.loads(resp.read())


def test_dev_and_staging_deploy_serve_the_commit(project):
    project.ok("dev.up", "staging.up")
    project.ok("dev.deploy")
    head = project.git("rev-parse", "HEAD")
    assert version(project, "dev")["commit"] == head
    tagged = project.commit("release candidate", tag="v1.0.0-rc.1")
    project.ok("staging.deploy", "--ref", "v1.0.0-rc.1")
    v = version(project, "staging")
    assert v["commit"] == tagged and v["environment"] == "staging"
    hist = json.loads(project.ok("staging.history", "--json").stdout)
    assert hist[0]["status"] == "success" and hist[0]["migrations"] == [1, 2, 3]
    assert hist[0]["duration_s"] > 0 and hist[0]["actor"] == project.actor
    status = json.loads(project.ok("status", "--json").stdout)
    by_env = {row["env"]: row for row in status}
    assert by_env["staging"]["app"]["up"] and by_env["staging"]["postgres"]["up"]
    assert not by_env["prod"]["postgres"]["up"]


def test_failing_migration_leaves_everything_as_before(project):
    before = version(project, "staging")
    (project.root / "app/migrations/0004_broken.up.sql").write_text(
        "ALTER TABLE notes ADD COLUMN broken int;\nINSERT INTO no_such_table VALUES (1);\n"
    )
    project.commit("broken migration", tag="v1.0.1-rc.1")
    res = project.inv("staging.deploy", "--ref", "v1.0.1-rc.1")
    assert res.returncode != 0
    assert "0004" in res.stderr and "Traceback" not in res.stderr
    assert version(project, "staging")["release"] == before["release"]
    env = dict(
        line.split("=", 1)
        for line in (project.root / "env/staging.secrets.env").read_text().split()
    )
    url = f"postgresql://app_staging@127.0.0.1:{project.ports['staging']['pg']}/stageflow_staging"
    with psycopg.connect(url, password=env["POSTGRES_PASSWORD"]) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name='notes'"
            )
        ]
        assert "broken" not in cols
        assert (
            conn.execute("SELECT count(*) FROM stageflow_migrations WHERE version=4").fetchone()[0]
            == 0
        )
    hist = json.loads(project.ok("staging.history", "--json").stdout)
    assert hist[0]["status"] == "failed"
    assert "lock free" in project.ok("staging.lock").stdout
    project.git("rm", "-q", "app/migrations/0004_broken.up.sql")
    project.commit("drop broken migration")


def test_a_release_whose_code_cannot_load_names_the_exception_and_what_to_set(project):
    """The service's code raised while gunicorn's workers loaded it: the one line is the
    exception the traceback ends with, not gunicorn's shutdown lines, and a setting the code
    reads and nobody declared is named with where to declare it."""
    before = version(project, "dev")["release"]
    reads = 'import os\nos.environ["LEDGER_TOKEN"]\n'
    res = project.inv_on_broken(
        "app/wsgi.py", reads, "the code reads a setting nobody set", "dev.deploy"
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "did not boot its workers: KeyError: 'LEDGER_TOKEN'" in line, line
    assert "declare it in [service.env] keys or secrets" in line
    assert version(project, "dev")["release"] == before


def test_changed_applied_migration_is_refused_by_name(project):
    path = project.root / "app/migrations/0001_create_notes.up.sql"
    original = path.read_text()
    path.write_text(original + "\n-- edited after it was applied\n")
    project.commit("edit applied migration", tag="v1.0.2-rc.1")
    res = project.inv("staging.deploy", "--ref", "v1.0.2-rc.1")
    assert res.returncode != 0 and "0001" in res.stderr
    path.write_text(original)
    project.commit("restore migration")


def test_second_deploy_refused_while_locked_and_stale_lock_forced(project):
    killed = project.inv("dev.deploy", kill_at="migrate")
    assert killed.returncode == -signal.SIGKILL
    res = project.inv("dev.deploy")
    assert res.returncode == 4 and "stale" in res.stderr
    assert "STALE" in project.ok("dev.lock").stdout
    res = project.inv("dev.lock", "--force")
    assert res.returncode == 2 and "--reason" in res.stderr
    project.ok("dev.lock", "--force", "--reason", "deploy was killed in a test")
    audit = (project.root / ".stageflow/dev/state/audit.jsonl").read_text()
    assert "lock-force-release" in audit and "killed in a test" in audit
    project.ok("dev.deploy")


def test_concurrent_deploy_names_the_holder(project):
    first = subprocess.Popen(
        [__import__("tests.e2e.conftest", fromlist=["INV"]).INV, "staging.deploy"],
        cwd=project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STAGEFLOW_ACTOR": "bob@example.com", "STAGEFLOW_ACTOR_KIND": "human"},
    )
    deadline = time.monotonic() + 30
    lock = project.root / ".stageflow/staging/state/lock/holder.json"
    while not lock.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    second = project.inv("staging.deploy")
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert second.returncode == 4 and "bob@example.com" in second.stderr


def test_switching_releases_under_load_fails_no_request(project):
    """80 req/s offered from another process while two deploys switch releases: zero failures.
    The load generator's achieved rate depends on how busy the machine is, so the test counts
    requests (over a hundred, across both switches) rather than judging the rate. Two workers
    per release, as the shipped policy has: both old ones drain, both new ones take over."""
    import sys

    project.set_policy("dev", workers=2)
    project.commit("two workers per release")
    project.ok("dev.deploy")
    load = subprocess.Popen(
        [sys.executable, "-m", "tests.loadgen", project.url("dev", "/healthz"), "80", "60"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(__import__("tests.support", fromlist=["REPO"]).REPO),
    )
    try:
        time.sleep(1.0)
        for i in range(2):
            (project.root / f"CHANGES-{i}").write_text(f"change {i}\n")
            project.commit(f"change {i}")
            project.ok("dev.deploy")
        time.sleep(1.0)
    finally:
        load.send_signal(signal.SIGTERM)
        out, _ = load.communicate(timeout=30)
    result = json.loads(out)
    assert result["failed"] == 0, result
    assert result["total"] > 100, result


def test_a_step_added_to_the_pipeline_is_in_the_dry_run_and_is_walked(project, monkeypatch):
    """The dry run is the step list the run walks: a new step shows in `--dry-run` and runs,
    with no change to any printer."""
    from deploy.config import load_project
    from deploy.engine import deploy_pipeline
    from deploy.engine.steps import Step
    from deploy.policy.actors import Actor

    sang: list[str] = []
    real = deploy_pipeline.steps

    def with_canary(ctx, **kw):
        walked = real(ctx, **kw)
        at = [s.name for s in walked].index("record")
        canary = Step("canary", "a step no printer knows of", lambda: sang.append("ok") or "sang")
        return [*walked[:at], canary, *walked[at:]]

    monkeypatch.setattr(deploy_pipeline, "steps", with_canary)
    project.ok("dev.up")
    proj = load_project(project.root, process_env={})
    planned = [name for name, _ in deploy_pipeline.plan(proj, "dev", ref="HEAD")["steps"]]
    assert planned[planned.index("verify") + 1 : planned.index("record") + 1] == [
        "canary",
        "record",
    ]
    assert sang == []  # planning runs nothing
    lines: list[str] = []
    result = deploy_pipeline.deploy(
        proj, "dev", actor=Actor(project.actor, "human"), printer=lines.append
    )
    assert result["status"] == "success" and sang == ["ok"]
    assert list(result["steps"]) == planned
    assert any(line.startswith("dev: canary") and line.endswith("sang") for line in lines)
