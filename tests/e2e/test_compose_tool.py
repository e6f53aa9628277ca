"""A service whose own tool migrates (kind = "command") on the compose runtime, through `inv`,
against the recording stand-in for the Docker engine (tests/fake_docker.py): the tool runs in a
one-off container of the release's image under the migration lock; what `current` printed before
and after is recorded; a release shipping the same migrations skips `up`; level 2 runs `down` in
the serving release's image back to what the target recorded; a failing tool leaves the previous
release serving. The tool is tests/services/sqltool.py, which keeps its own books (no stageflow
ledger) over the reference service's SQL files.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Project, make_project
from tests.e2e.faults import connect
from tests.e2e.test_compose_runtime import SECRETS, Engine, stand_in

TOOL = ["python", "tests/services/sqltool.py"]
MIGRATIONS = f"""[service.migrations]
kind = "command"
dir = "app/migrations"
up = {json.dumps([*TOOL, "up"])}
down = {json.dumps([*TOOL, "down", "{target}"])}
current = {json.dumps([*TOOL, "current"])}
"""


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    proj = make_project("sf-compose-tool-")
    proj.set_policy("dev", runtime='"compose"', backup='"pending-migrations"')
    path = proj.root / "env" / "dev.secrets.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    os.chmod(path, 0o600)
    toml = proj.root / "stageflow.toml"
    text = toml.read_text()
    new = re.sub(r"(?ms)^\[service\.migrations\]\n.*?\n\n", MIGRATIONS + "\n", text, count=1)
    assert new != text
    # the reference service's /readyz reads stageflow's ledger, which this tool does not keep
    new = new.replace('ready = "/readyz"', 'ready = "/healthz"', 1)
    toml.write_text(new)
    proj.commit("dev on compose; the service's own tool migrates")
    with stand_in(proj) as e:
        shim = e.bin / "python"  # the image's python, which has psycopg
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
        shim.chmod(0o755)
        e.inv("dev.up")
        yield e


def _last(proj: Project) -> dict:
    lines = (proj.root / ".stageflow" / "dev" / "state" / "history.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def _meta(proj: Project, rid: str) -> dict:
    return json.loads(
        (proj.root / ".stageflow" / "dev" / "releases" / rid / "RELEASE.json").read_text()
    )


def _sql(proj: Project, query: str) -> list[tuple]:
    with connect(proj, "dev") as conn:
        return conn.execute(query).fetchall()


def _tool_runs(calls: list[dict]) -> list[list[str]]:
    """The entry point's argv of each one-off container the deploy ran."""
    out = []
    for c in calls:
        argv = c["argv"]
        if "run" in argv and "deploy.compose_migrate" in argv:
            out.append(argv[argv.index("deploy.compose_migrate") + 1 :])
    return out


def _probe_column(proj: Project) -> bool:
    return bool(_sql(proj, "SELECT 1 FROM information_schema.columns "
                     "WHERE table_name = 'notes' AND column_name = 'probe'"))  # fmt: skip


def test_deploys_migrate_with_the_tool_and_level_2_runs_its_down(engine: Engine) -> None:
    p = engine.proj
    engine.new_calls()

    # the first deploy: `current`, `up`, `current` in one container of the new image
    res = json.loads(engine.inv("dev.deploy", "--json").stdout)
    assert res["status"] == "success", res
    a = res["release"]
    runs = _tool_runs(engine.new_calls())
    assert len(runs) == 1 and runs[0][0] == "tool", runs
    assert json.loads(runs[0][runs[0].index("--up") + 1]) == [*TOOL, "up"]
    assert "--unchanged-from" not in runs[0]
    assert _meta(p, a)["schema_after"] == {"": "0003"}
    assert _meta(p, a)["schema_before"] == {"": "base"}
    assert "schema base -> 0003" in _last(p)["notes"]
    assert _last(p)["backup"], "a first release's migration files are all pending: backed up"
    # the tool ran under stageflow's lock, with the policy's lock_timeout; its own books only
    assert _sql(p, "SELECT action, lock_timeout, locked FROM sqltool_runs") == [("up", "5s", True)]
    assert _sql(p, "SELECT to_regclass('stageflow_migrations') IS NULL") == [(True,)]

    # a release that ships the same migrations: `up` skipped, as `current` shows what A recorded
    (p.root / "README.md").write_text("a code-only release\n")
    p.commit("a code-only release")
    res = json.loads(engine.inv("dev.deploy", "--json").stdout)
    assert res["status"] == "success", res
    b = res["release"]
    runs = _tool_runs(engine.new_calls())
    assert json.loads(runs[0][runs[0].index("--unchanged-from") + 1]) == {"": "0003"}, runs
    assert _sql(p, "SELECT count(*) FROM sqltool_runs") == [(1,)]
    assert _meta(p, b)["schema_after"] == {"": "0003"}
    assert _last(p)["backup"] is None, "no migration file changed since A: no backup"

    # a release with a migration of its own moves the schema; the dry run shows the tool's argv
    mig = p.root / "app" / "migrations"
    (mig / "0004_probe.up.sql").write_text("ALTER TABLE notes ADD COLUMN probe text;\n")
    (mig / "0004_probe.down.sql").write_text("ALTER TABLE notes DROP COLUMN probe;\n")
    p.commit("a migration of its own")
    dry = engine.inv("dev.deploy", "--dry-run").stdout
    assert "deploy.compose_migrate tool --current" in dry, dry
    assert "sqltool.py current" in dry, dry
    engine.new_calls()
    res = json.loads(engine.inv("dev.deploy", "--json").stdout)
    assert res["status"] == "success" and res["migrations"] == ["0003 -> 0004"], res
    c = res["release"]
    assert _last(p)["backup"], "0004 is new since B: backed up first"
    assert _probe_column(p)
    assert _meta(p, c)["schema_after"] == {"": "0004"}

    # level 2: the plan names the down to what B recorded, run in C's image (which ships it)
    plan = engine.inv("dev.rollback", "--level", "2", "--dry-run").stdout
    assert f"{c} -> {b}" in plan and "sqltool.py down 0003" in plan, plan
    engine.new_calls()
    res = json.loads(
        engine.inv("dev.rollback", "--level", "2", "--reason", "tool down", "--json").stdout
    )
    assert res["status"] == "success", res
    calls = engine.new_calls()
    downs = [
        c2 for c2 in calls if "deploy.compose_migrate" in c2["argv"] and "--down" in c2["argv"]
    ]
    assert len(downs) == 1 and downs[0]["release"] == c, downs
    argv = downs[0]["argv"]
    assert json.loads(argv[argv.index("--down") + 1]) == [[*TOOL, "down", "0003"]]
    assert not _probe_column(p)
    assert _sql(p, "SELECT max(version) FROM sqltool_version") == [("0003",)]
    status = json.loads(engine.inv("dev.status", "--json").stdout)
    assert status["app"]["release"] == b, status


def test_a_failing_tool_leaves_the_previous_release_serving(engine: Engine) -> None:
    p = engine.proj
    status = json.loads(engine.inv("dev.status", "--json").stdout)
    serving = status["app"]["release"]
    mig = p.root / "app" / "migrations"
    (mig / "0005_broken.up.sql").write_text("ALTER TABLE no_such_table ADD COLUMN x int;\n")
    (mig / "0005_broken.down.sql").write_text("SELECT 1;\n")
    p.commit("a migration that fails")
    res = engine.inv("dev.deploy", code=1)
    line = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert "the up command" in res.stderr and "no_such_table" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(line) <= 3, res.stderr
    for value in SECRETS.values():
        assert value not in res.stdout + res.stderr
    status = json.loads(engine.inv("dev.status", "--json").stdout)
    assert status["app"]["release"] == serving and status["lock"] is None, status
    (mig / "0005_broken.up.sql").unlink()
    (mig / "0005_broken.down.sql").unlink()
    p.commit("the broken migration taken out")
