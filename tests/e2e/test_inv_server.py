"""The tests' `inv` (forked from a warm server per project, tests/inv_server.py) answers as the
script does: the same output and exit code, the test's environment, a changed engine re-imported,
and the fault matrix's kill at a step."""

from __future__ import annotations

import signal
import subprocess

from tests import inv_server
from tests.e2e import conftest
from tests.e2e.conftest import Project


def _both(project: Project, *args: str, **kw) -> tuple[subprocess.CompletedProcess[str], ...]:
    forked = project.inv(*args, **kw)
    conftest.SPAWN = True
    try:
        spawned = project.inv(*args, **kw)
    finally:
        conftest.SPAWN = False
    return forked, spawned


def test_a_forked_inv_prints_and_exits_as_the_script(project: Project) -> None:
    forked, spawned = _both(project, "dev.status", "--json")
    assert (forked.returncode, forked.stdout) == (spawned.returncode, spawned.stdout)
    forked, spawned = _both(project, "dev.deploy", "--bogus")
    assert forked.returncode == spawned.returncode != 0
    assert forked.stderr == spawned.stderr
    # the test's environment, not the server's: the actor a command records is the one asked
    forked, spawned = _both(project, "prod.approve", "nope", actor="ci-bot", kind="ci")
    assert forked.returncode == spawned.returncode != 0
    assert forked.stderr == spawned.stderr and forked.stderr.strip()


def test_a_changed_engine_is_imported_again(project: Project) -> None:
    project.inv("dev.status")
    first = inv_server._servers[project.root].proc.pid  # type: ignore[union-attr]
    path = project.root / "deploy" / "output.py"
    text = path.read_text()
    path.write_text(
        text + "\n_table = print_table\n\n\ndef print_table(*a, **kw):\n"
        "    print('the engine changed')\n    return _table(*a, **kw)\n"
    )
    try:
        res = project.inv("dev.status")
        assert "the engine changed" in res.stdout
        assert inv_server._servers[project.root].proc.pid != first  # type: ignore[union-attr]
    finally:
        path.write_text(text)


def test_kill_at_a_step_is_a_sigkill_there(project: Project) -> None:
    res = project.inv("dev.deploy", kill_at="preflight")
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert "preflight" not in res.stdout.split("\n")[-1]
