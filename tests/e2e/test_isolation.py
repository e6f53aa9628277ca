"""What root trusts, through `inv`: planted pid files are never signalled, state is private, and a
hook printing another environment's secret leaves no trace of it anywhere on disk."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.conftest import Project


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process of the invoking user that a planted pid file names."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_planted_master_pid_is_never_signalled(
    project: Project, victim: subprocess.Popen[bytes]
) -> None:
    project.ok("dev.up")
    project.ok("dev.deploy")
    run = project.root / ".stageflow/dev/run"
    planted = run / "app-20200101T000000Z-planted.pid"
    planted.write_text(f"{victim.pid}\n")
    (project.root / "CHANGES").write_text("second\n")
    project.commit("second")
    project.ok("dev.deploy")  # drains every master but the new one
    assert _alive(victim)
    project.ok("dev.down")  # stops every master it started
    assert _alive(victim)
    planted.unlink()


def test_planted_redis_pid_is_never_signalled(
    project: Project, victim: subprocess.Popen[bytes]
) -> None:
    project.ok("dev.down")
    home = project.root / ".stageflow/dev"
    for path in (home / "shared/redis/redis.pid", home / "run/redis.pid"):
        path.write_text(f"{victim.pid}\n")
    res = project.ok("dev.down")
    assert "redis stopped" not in res.stdout
    assert _alive(victim)
    up = project.ok("dev.up")
    assert "redis started" in up.stdout and _alive(victim)
    project.ok("dev.down")
    assert _alive(victim)


def test_what_root_trusts_is_private_to_the_invoking_user(project: Project) -> None:
    project.ok("dev.up")
    home = project.root / ".stageflow/dev"
    for rel, mode in (("state", 0o700), ("shared/backups", 0o700)):
        assert _mode(home / rel) == mode, rel
        assert (home / rel).stat().st_uid == os.geteuid(), rel
    assert (home / "run").stat().st_uid == os.geteuid()
    assert not _mode(home / "run") & 0o022
    assert (home / "shared/logs").stat().st_uid == os.geteuid()
    for name in ("history.jsonl", "audit.jsonl"):
        path = home / "state" / name
        if path.exists():
            assert _mode(path) == 0o600, name


def _forms(secret: str) -> list[str]:
    b64 = base64.b64encode(secret.encode()).decode()
    return [secret, secret[:10], b64, b64[:12], quote(secret, safe="")]


def _files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv")]
        for name in filenames:
            path = Path(dirpath, name)
            if path.parent == root / "env" and name.endswith(".secrets.env"):
                continue  # where the secrets live
            if path.is_file() and not path.is_symlink():
                yield path


def test_a_hook_printing_another_environments_secret_leaves_no_trace(project: Project) -> None:
    hook = project.root / "deploy/hooks/post-deploy"
    hook.write_text(
        "#!/bin/sh\n"
        "pw=$(sed -n 's/^POSTGRES_PASSWORD=//p' env/prod.secrets.env)\n"
        'echo "prod says $pw"; echo "$pw" | cut -c1-10\n'
        'printf %s "$pw" | base64\n'
        "python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=\"\"))' "
        '"$pw"\n'
        "exit 1\n"
    )
    os.chmod(hook, 0o755)
    try:
        project.ok("dev.up")
        res = project.inv("dev.deploy")
        since = project.history("dev")[0]["id"]
        drafted = project.ok("dev.incident", "--since", since)
    finally:
        hook.unlink()
    secrets = (project.root / "env/prod.secrets.env").read_text()
    secret = next(
        ln.split("=", 1)[1] for ln in secrets.splitlines() if ln.startswith("POSTGRES_PASSWORD=")
    )
    audit = (project.root / ".stageflow/dev/state/audit.jsonl").read_text()
    assert "hook-failed" in audit and "prod says [REDACTED]" in audit, audit
    leaks = []
    for output in (res.stdout, res.stderr, drafted.stdout, drafted.stderr):
        leaks += [form for form in _forms(secret) if form in output]
    for path in _files(project.root):
        data = path.read_bytes()
        leaks += [f"{path}: {form}" for form in _forms(secret) if form.encode() in data]
    assert not leaks, leaks
    project.ok("dev.down")


def test_the_release_sessions_name_environment_and_release(project: Project) -> None:
    import psycopg

    project.ok("dev.up")
    project.ok("dev.deploy")
    project.ok("dev.smoke")
    release = project.history("dev")[0]["release"]
    port = project.ports["dev"]["pg"]
    with psycopg.connect(
        f"postgresql://app_dev@127.0.0.1:{port}/stageflow_dev", connect_timeout=10
    ) as conn:
        names = {
            row[0]
            for row in conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE usename = current_user"
            )
        }
    assert f"stageflow:dev:{release}" in names, names
    project.ok("dev.down")
