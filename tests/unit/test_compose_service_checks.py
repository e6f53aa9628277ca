"""The compose runtime's preflight runs the whole service: a worker of [service.processes] in a
container of the release's image, the service's own migration tool in a one-off container."""

from __future__ import annotations

from pathlib import Path

from deploy.config import load_project
from deploy.runtime.compose_runtime import migrations_check, processes_check
from tests import support


def _project(tmp_path: Path, *, migrations: str, processes: str = ""):
    policy = support.minimal_policy().replace(
        '[service.migrations]\nkind = "sql"', f"[service.migrations]\n{migrations}\n#", 1
    )
    (tmp_path / "stageflow.toml").write_text(policy + processes)
    support.write_envs(tmp_path)
    return load_project(tmp_path)


def test_the_reference_service_passes_both(tmp_path: Path) -> None:
    proj = _project(tmp_path, migrations='kind = "sql"')
    assert migrations_check(proj).ok and processes_check(proj).ok


def test_a_tool_run_migration_and_a_worker_pass_and_the_worker_is_named(tmp_path: Path) -> None:
    proj = _project(
        tmp_path,
        migrations='kind = "command"\nup = ["alembic", "upgrade", "head"]\ncurrent = ["alembic", "current"]',
        processes='\n[service.processes]\nworker = ["rq", "worker"]\n',
    )
    mig, procs = migrations_check(proj), processes_check(proj)
    assert mig.ok and mig.detail == "kind command", mig
    assert procs.ok and procs.detail.startswith("worker: a container each"), procs
