"""A process of [service.processes] that renames itself once it runs (celery and gunicorn do,
with setproctitle installed; `exec -a` here): stageflow knows it by the pid and start time it
recorded when it came up, not by a command line that no longer says what was started."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.procs import alive
from tests.e2e.conftest import Project, destroy, make_project

RENAMED = '\n[service.processes]\njobs = ["bash", "-c", "exec -a jobs-of-the-release sleep 300"]\n'


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    proj = make_project("sf-e2e-titles-")
    try:
        with open(proj.root / "stageflow.toml", "a") as fh:
            fh.write(RENAMED)
        proj.commit("a process that renames itself")
        proj.ok("dev.up")
        yield proj
    finally:
        destroy(proj)


def _jobs(project: Project) -> list[dict]:
    rows = json.loads(project.ok("dev.status", "--json").stdout)["app"]["processes"]
    return [r for r in rows if r["name"] == "jobs"]


def test_a_renamed_process_is_started_replaced_and_stopped(project: Project) -> None:
    first = json.loads(project.ok("dev.deploy", "--json").stdout)["release"]
    [row] = _jobs(project)
    assert (row["release"], row["up"]) == (first, True)
    title = Path(f"/proc/{row['pid']}/cmdline").read_bytes().split(b"\0")[0]
    assert title == b"jobs-of-the-release"  # its command line says nothing stageflow started

    project.edit("stageflow.toml", "sleep 300", "sleep 301")
    project.commit("the next release")
    second = json.loads(project.ok("dev.deploy", "--json").stdout)["release"]
    [now] = _jobs(project)
    assert (now["release"], now["up"]) == (second, True) and now["pid"] != row["pid"]
    assert not alive(row["pid"])  # the old release's was stopped, not left behind

    project.ok("dev.down")
    assert not alive(now["pid"])
    project.ok("dev.up")
