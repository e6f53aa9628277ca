"""History and audit written on an SSH host are private to their owner there (0600), as on this
machine: a world-readable file an older version made is narrowed on the next record."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.hosts import Host
from deploy.state import Layout, audit
from tests import support
from tests.conftest import need
from tests.integration.test_ssh_hosts import connect
from tests.sshd import Sshd, can_run_sshd, fleet


@pytest.fixture(scope="module")
def server() -> Iterator[Sshd]:
    ok, why = can_run_sshd()
    need(ok, why)
    base = support.public_tmpdir("sf-sshd-rec-")
    try:
        with fleet(base, 1) as hosts:
            yield hosts[0]
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def host(server: Sshd) -> Iterator[Host]:
    h = connect(server)
    try:
        yield h
    finally:
        h.close()


def test_audit_on_an_ssh_host_is_0600_and_an_open_one_is_narrowed(
    host: Host, tmp_path: Path
) -> None:
    layout = Layout(str(tmp_path / "home"))
    # the SFTP server creates files under its own umask (0644 with the usual 022)
    audit(host, layout, actor="alice", action="deploy", release="r1")
    path = Path(layout.audit)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    audit(host, layout, actor="alice", action="deploy", release="r2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().splitlines()) == 2
