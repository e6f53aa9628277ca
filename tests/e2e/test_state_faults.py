"""Faults the state must survive, through `inv`: PostgreSQL dying right after smoke fails verify,
and history never calls that deploy a success."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import INV, Project, destroy, make_project

PGKILL = str(Path(__file__).resolve().parents[1] / "pgkill.py")


@pytest.fixture(scope="module")
def proj() -> Iterator[Project]:
    p = make_project("sf-statefaults-")
    try:
        p.set_policy("dev", verify_window_s=1)
        p.commit("dev watches a verify window")
        p.ok("dev.up")
        p.ok("dev.deploy")
        yield p
    finally:
        destroy(p)


def inv_killing_postgres(p: Project, step: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`inv ARGS` whose environment's PostgreSQL is SIGKILLed as step starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEFLOW_")}
    env.pop("ENVIRONMENT", None)
    env.update(STAGEFLOW_ACTOR=p.actor, STAGEFLOW_ACTOR_KIND="human", NO_COLOR="1")
    pgdata = str(p.root / ".stageflow" / "dev" / "shared" / "pgdata")
    assert Path(INV).exists()
    return subprocess.run(
        [sys.executable, PGKILL, step, pgdata, *args],
        cwd=p.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_postgres_killed_right_after_smoke_fails_verify(proj: Project) -> None:
    proj.commit("a second release")
    res = inv_killing_postgres(proj, "verify", "dev.deploy")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "verify failed" in out and "not ready" in out, out
    assert "Traceback" not in out
    last = proj.history("dev")[0]
    assert last["status"] != "success", last
    assert "not ready" in last["notes"], last
