"""Fault matrix: `inv` is SIGKILLed at every step boundary of a deploy and of rollback levels 1-3.

After each kill: the service answers /healthz (or, killed inside level 3 between its stop and
start steps, status shows staging frozen and the operation interrupted), no row written before
the operation is lost, the migration ledger agrees with the schema, the lock is reported stale and
can be forced, and the next deploy or rollback succeeds.

One staging serves every case; each case first puts staging in the state it needs (release A with
0004 pending for a deploy, release B with 0004 applied for level 2, B deployed from A with a fresh
backup for level 3), and the cases are ordered so one case's recovery is mostly the next one's
precondition. Covered: every step of the deploy and of levels 2 and 3; level 1 without
--reset-data (that variant wipes the data on purpose, so "no row lost" does not apply to it).
A kill at `preflight` or `lock` comes before the lock is taken, so there the lock must be free;
a kill at `unlock` comes after the operation finished, so the next operation is the following one
rather than the same again. The verify window is 0 here (the verify step is still passed through
and killed at; a real window only adds seconds per deploy) and keep_releases is large, so release
A is never pruned however many times B is deployed over it.
"""

from __future__ import annotations

import ast
import inspect
import json
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

from deploy.engine import deploy_pipeline, lifecycle, rollback_pipeline
from deploy.runtime import native_rollback
from tests.e2e import faults
from tests.e2e.faults import assert_ledger_matches_schema, ledger, user_rows, write_rows

# the steps each operation passes through on a single-host staging, in order
DEPLOY_STEPS = (
    "preflight",
    "lock",
    "build",
    "backup",
    "migrate",
    "start",
    "switch",
    "smoke",
    "verify",
    "record",
    "prune",
    "unlock",
)
LEVEL_STEPS = {
    1: ("lock", "services", "restart", "smoke", "unlock"),
    2: ("lock", "schema", "start", "switch", "smoke", "unlock"),
    3: ("lock", "freeze", "stop", "restore", "start", "switch", "smoke", "unlock"),
}
RESET_DATA_STEPS = ("reset", "migrate", "seed", "swap")  # level 1 --reset-data: wipes on purpose
# level 3 killed here: stop has run, start has not, so nothing serves until the rollback reruns
L3_DARK = ("restore", "start")
# level 3 killed here: the restore has run, so the data are the backup's
L3_RESTORED = ("start", "switch", "smoke", "unlock")

FAULT_UP = "ALTER TABLE notes ADD COLUMN IF NOT EXISTS fault_tag text;\n"
FAULT_DOWN = "ALTER TABLE notes DROP COLUMN IF EXISTS fault_tag;\n"
FAULT_COLUMNS = {4: "fault_tag"}  # the migration B ships: version -> the column it adds


def _ordered_cases() -> list[tuple[str, str]]:
    """Deploy and level 2 alternate (each one's recovery is the other's precondition); level 1
    fits anywhere; level 3 cases follow each other (each recovery deploys B with a new backup)."""
    deploys = [("deploy", s) for s in DEPLOY_STEPS]
    level2 = [("level2", s) for s in LEVEL_STEPS[2]]
    level1 = [("level1", s) for s in LEVEL_STEPS[1]]
    out: list[tuple[str, str]] = []
    for i, case in enumerate(deploys):
        out.append(case)
        if i < len(level2):
            out.append(level2[i])
        if i < len(level1):
            out.append(level1[i])
    return out + [("level3", s) for s in LEVEL_STEPS[3]]


CASES = _ordered_cases()


# -- what the code says the steps are -------------------------------------------------------------


def _step_names(module: object, *functions: str) -> set[str]:
    """Every literal step name inside the named functions: `<ctx>.step(NAME, ...)` calls and
    `Step(NAME, ...)` objects of a step list."""
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in functions:
            for call in ast.walk(node):
                if not (isinstance(call, ast.Call) and call.args):
                    continue
                named = (isinstance(call.func, ast.Attribute) and call.func.attr == "step") or (
                    isinstance(call.func, ast.Name) and call.func.id == "Step"
                )
                if named and isinstance(call.args[0], ast.Constant):
                    names.add(str(call.args[0].value))
    return names


def test_the_matrix_covers_every_step_the_code_passes_through():
    assert DEPLOY_STEPS == deploy_pipeline.STEPS
    around = _step_names(lifecycle, "recorded")
    switch = _step_names(native_rollback, "switch_steps")
    assert around == {"lock", "unlock"}
    restart = _step_names(native_rollback, "restart_steps", "_reset_steps")
    assert set(LEVEL_STEPS[1]) | set(RESET_DATA_STEPS) == around | restart
    assert _step_names(rollback_pipeline, "level_steps") == {"schema", "freeze", "stop", "restore"}
    assert set(LEVEL_STEPS[2]) == around | switch | {"schema"}
    assert set(LEVEL_STEPS[3]) == around | switch | {"freeze", "stop", "restore"}
    assert set(CASES) == {
        *((f"level{n}", s) for n, steps in LEVEL_STEPS.items() for s in steps),
        *(("deploy", s) for s in DEPLOY_STEPS),
    }


# -- staging, read from outside -------------------------------------------------------------------


def healthz(project) -> int:
    try:
        with urllib.request.urlopen(project.url("staging", "/healthz"), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def serving_commit(project) -> str:
    with urllib.request.urlopen(project.url("staging", "/version"), timeout=10) as resp:
        return json.loads(resp.read())["commit"]


def _story(project) -> str:
    """The newest history entries, for an assertion message."""
    out = project.ok("staging.history", "--json", "--limit", "12").stdout
    return "\n".join(
        f"{e['kind']} {e['status']} {e['release']} prev={e.get('previous')} {e['notes'][:120]}"
        for e in json.loads(out)
    )


def status(project) -> dict:
    return json.loads(project.ok("staging.status", "--json").stdout)


# -- the shared staging and its states ------------------------------------------------------------


@dataclass
class Staging:
    project: object
    a: str  # commit of release A: migrations 0001-0003
    b: str  # commit of release B: A plus 0004 (a column, with a down file, not expand-only)
    a_release: str  # A's release id: rollbacks return to this directory, deploys never rebuild it
    backup_rows: tuple[int, str] | None = None  # rows in the backup B's serving deploy took

    def run(self, *args: str, **kw):
        self.backup_rows = None
        return self.project.ok(*args, **kw)  # type: ignore[attr-defined]

    def deploy_b(self) -> None:
        pending = ledger(self.project).get(4) != "applied"
        rows = user_rows(self.project)
        self.run("staging.deploy", "--ref", "vB")
        assert serving_commit(self.project) == self.b
        self.backup_rows = rows if pending else None

    def at_a(self) -> None:
        """A serves and 0004 is pending: a deploy of B has a migration and a backup to take."""
        if serving_commit(self.project) != self.a:
            # named: after B was deployed over B, the previous good release is a B
            self.run("staging.rollback", "--level", "2", "--to", self.a_release, "--reason", "to A")
        assert serving_commit(self.project) == self.a and ledger(self.project).get(4) != "applied"

    def at_b(self) -> None:
        """B serves with 0004 applied, A is the previous good release."""
        if serving_commit(self.project) != self.b:
            self.at_a()
            self.deploy_b()
        assert ledger(self.project).get(4) == "applied"

    def at_b_with_backup(self) -> tuple[int, str]:
        """B serves, deployed from A by a deploy that took a backup; the backup's rows."""
        if self.backup_rows is None or serving_commit(self.project) != self.b:
            self.at_a()
            self.deploy_b()
        assert self.backup_rows is not None
        return self.backup_rows


@pytest.fixture(scope="module")
def staging(project):
    project.set_policy("staging", verify_window_s=0, keep_releases=100)
    project.ok("staging.up")
    a = project.commit("release A", tag="vA")
    d = project.root / "app/migrations"
    (d / "0004_fault_tag.up.sql").write_text(FAULT_UP)
    (d / "0004_fault_tag.down.sql").write_text(FAULT_DOWN)
    b = project.commit("release B: 0004 adds a column", tag="vB")
    project.ok("staging.deploy", "--ref", "vA")
    with urllib.request.urlopen(project.url("staging", "/version"), timeout=10) as resp:
        st = Staging(project, a, b, json.loads(resp.read())["release"])
    write_rows(project, "fault-matrix-seed", 20)
    return st


# -- the matrix -----------------------------------------------------------------------------------


def kill_at(st: Staging, op: str, step: str, argv: tuple[str, ...]) -> None:
    if op != "level3":  # level 3 restores the backup B's deploy took: keep knowing its rows
        st.backup_rows = None
    faults.kill_at(st.project, step, argv)  # type: ignore[arg-type]


def test_a_single_host_deploy_walks_exactly_the_matrix_steps(staging):
    """The dry run prints the list the run walks: its names are the steps killed at below."""
    from deploy.config import load_project

    proj = load_project(staging.project.root, process_env={})
    walked = [name for name, _ in deploy_pipeline.plan(proj, "staging", ref="HEAD")["steps"]]
    assert tuple(walked) == DEPLOY_STEPS


@pytest.mark.parametrize(("op", "step"), CASES, ids=[f"{o}-{s}" for o, s in CASES])
def test_killed_at_step_boundary(staging, op, step):
    st, project = staging, staging.project
    if op == "deploy":
        st.at_a()
        argv: tuple[str, ...] = ("staging.deploy", "--ref", "vB")
    elif op == "level2":
        st.at_b()
        argv = ("staging.rollback", "--level", "2", "--reason", f"fault matrix {step}")
    elif op == "level1":
        argv = ("staging.rollback", "--level", "1", "--reason", f"fault matrix {step}")
    else:
        backup_rows = st.at_b_with_backup()
        write_rows(project, f"after-backup-{step}")  # the restore must drop these, and only these
        argv = ("staging.rollback", "--level", "3", "--reason", f"fault matrix {step}")
    before = user_rows(project)
    serving_before = serving_commit(project)

    kill_at(st, op, step, argv)

    # the service answers, except in level 3's dark window, which status explains
    if op == "level3" and step in L3_DARK:
        s = status(project)
        assert s["frozen"] and s["last"]["status"] == "interrupted", s
        assert s["last"]["kind"] == "rollback-3", s
    else:
        assert healthz(project) == 200
        if op == "level3":  # frozen first, before anything else changes
            assert status(project)["frozen"] == (step not in ("lock", "freeze"))

    # no row lost: level 3 after its restore holds exactly the backup's rows
    if op == "level3" and step in L3_RESTORED:
        assert user_rows(project) == backup_rows
    else:
        assert user_rows(project) == before
    assert_ledger_matches_schema(project, columns=FAULT_COLUMNS)

    faults.check_lock_and_force(project, step)

    # the next operation succeeds
    if op == "deploy":
        st.deploy_b() if step != "unlock" else st.run("staging.deploy", "--ref", "vB")
        assert serving_commit(project) == st.b
    elif op == "level2":
        if step == "unlock":  # it had finished: A serves; the next deploy goes forward again
            assert serving_commit(project) == st.a, _story(project)
            st.deploy_b()
        else:
            st.run(*argv)
            assert serving_commit(project) == st.a
    elif op == "level1":
        st.run(*argv)
        assert serving_commit(project) == serving_before
    else:
        if step != "unlock":
            st.run(*argv)
        assert serving_commit(project) == st.a
        assert user_rows(project) == backup_rows
        assert status(project)["frozen"]
        res = project.inv("staging.deploy", "--ref", "vB")
        assert res.returncode == 7 and "frozen" in res.stderr, res.stderr
        st.run("staging.unfreeze", "--reason", f"fault matrix: checked after {step}")
        st.deploy_b()
    assert healthz(project) == 200
    led = assert_ledger_matches_schema(project, columns=FAULT_COLUMNS)
    assert (led.get(4) == "applied") == (serving_commit(project) == st.b), led
    s = status(project)
    assert s["lock"] is None and s["last"]["status"] == "success", s
