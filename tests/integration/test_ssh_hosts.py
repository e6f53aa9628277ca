"""deploy/hosts.py over real OpenSSH servers: commands, files over SFTP, the lock, lost hosts."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.config import HostSpec, Project, load_project
from deploy.errors import HostError, LockHeld
from deploy.hosts import Host, host_from_spec
from deploy.policy import guards
from deploy.secrets import Secret
from deploy.state import DeployLock, Layout
from tests import support
from tests.conftest import need
from tests.sshd import Sshd, can_run_sshd, fleet, keygen


@pytest.fixture(scope="module")
def servers() -> Iterator[list[Sshd]]:
    ok, why = can_run_sshd()
    need(ok, why)
    base = support.public_tmpdir("sf-sshd-")
    try:
        with fleet(base, 2) as hosts:
            yield hosts
    finally:
        shutil.rmtree(base, ignore_errors=True)


def connect(server: Sshd, **changes: str) -> Host:
    t = {**server.table(), **changes}
    spec = HostSpec(
        address=t["address"], identity_file=t["identity_file"], known_hosts=t["known_hosts"]
    )
    return host_from_spec(spec, secrets=(Secret("hunter2-secret"),))


@pytest.fixture
def remote(servers: list[Sshd], tmp_path: Path) -> Iterator[tuple[Host, Path]]:
    host = connect(servers[0])
    try:
        yield host, tmp_path
    finally:
        host.close()


def test_commands_run_over_ssh_with_quoting_env_and_cwd(remote: tuple[Host, Path]) -> None:
    host, tmp = remote
    assert not host.is_local
    res = host.run(["printf", "%s|%s", "two words", "it's $HOME"], cwd=tmp)
    assert res.stdout == "two words|it's $HOME"
    res = host.run(["sh", "-c", 'echo "$GREETING from $(pwd)"'], env={"GREETING": "hi"}, cwd=tmp)
    assert res.stdout.strip() == f"hi from {tmp}"
    host.run(["echo", "to a file"], stdout_file=tmp / "out.log")
    assert (tmp / "out.log").read_text() == "to a file\n"
    assert host.run(["sh", "-c", "exit 7"], check=False).exit_code == 7
    with pytest.raises(HostError) as info:
        host.run(["sh", "-c", "echo hunter2-secret >&2; exit 3"])
    assert info.value.host == host.name and "exited 3" in info.value.message
    assert "hunter2" not in info.value.message and "[REDACTED]" in info.value.message


def test_files_go_over_sftp_atomically(remote: tuple[Host, Path]) -> None:
    host, tmp = remote
    target = tmp / "deep" / "er" / "app.env"
    host.write_text(target, "A=1\n", mode=0o600)
    assert target.read_text() == "A=1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(os.listdir(target.parent)) == ["app.env"]  # no temp file left behind
    assert host.read_text(target) == "A=1\n" and host.read_text(tmp / "missing") is None
    host.append_line(tmp / "state" / "h.jsonl", '{"n":1}')
    host.append_line(tmp / "state" / "h.jsonl", '{"n":2}')
    assert (tmp / "state" / "h.jsonl").read_text() == '{"n":1}\n{"n":2}\n'
    assert host.exists(target) and not host.exists(tmp / "nope")
    host.makedirs(tmp / "a" / "b", tmp / "c")
    assert host.listdir(tmp) == sorted(["a", "c", "deep", "state"])
    assert host.listdir(tmp / "nope") == []
    (tmp / "releases" / "r1").mkdir(parents=True)
    (tmp / "releases" / "r2").mkdir()
    host.switch_symlink(tmp / "current", "releases/r1")
    assert host.readlink(tmp / "current") == "releases/r1"
    host.switch_symlink(tmp / "current", "releases/r2")
    assert os.readlink(tmp / "current") == "releases/r2" and host.readlink(tmp / "nope") is None
    local = tmp / "upload.bin"
    local.write_bytes(os.urandom(300_000))
    host.put_file(local, tmp / "up" / "copy.bin")
    assert (tmp / "up" / "copy.bin").read_bytes() == local.read_bytes()
    assert host.mkdir_atomic(tmp / "locks" / "x") and not host.mkdir_atomic(tmp / "locks" / "x")
    host.remove_tree(tmp / "locks")
    assert not (tmp / "locks").exists()


def test_a_fifo_on_the_host_is_refused_not_waited_on(remote: tuple[Host, Path]) -> None:
    """A ready mark the service user replaced by a fifo would hold the SFTP read for ever."""
    host, tmp = remote
    os.mkfifo(tmp / "fail-4242")
    said: list[BaseException] = []

    def read() -> None:
        try:
            host.read_text(tmp / "fail-4242")
        except BaseException as exc:  # noqa: BLE001 - whatever it raised is the verdict
            said.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)  # a read that waits on the fifo never ends: a failure, not a hang
    assert not reader.is_alive(), "the read waited on the fifo"
    assert isinstance(said[0], HostError) and "is not a regular file" in str(said[0])
    (tmp / "plain").write_text("text\n")
    assert host.read_text(tmp / "plain") == "text\n"
    assert host.read_text(tmp / "missing") is None


@pytest.mark.parametrize("where", ["remote", "local"])
def test_remove_rename_and_link_without_a_shell_where_they_can(
    remote: tuple[Host, Path], where: str
) -> None:
    host, tmp = remote
    if where == "local":
        host = Host()
    (tmp / "tree" / "sub").mkdir(parents=True)
    (tmp / "tree" / "sub" / "f").write_text("x")
    (tmp / "empty").mkdir()
    (tmp / "flat").mkdir()
    for i in range(3):
        (tmp / "flat" / f"ready-{i}").write_text("")
    (tmp / "file").write_text("x")
    os.symlink("tree", tmp / "link")
    for path in ("tree", "empty", "flat", "file", "link", "missing"):
        host.remove_tree(tmp / path)
        assert not os.path.lexists(tmp / path), path
    (tmp / "r.partial").mkdir()
    (tmp / "r.partial" / "RELEASE.json").write_text("{}")
    host.rename(tmp / "r.partial", tmp / "r")
    assert (tmp / "r" / "RELEASE.json").exists() and not (tmp / "r.partial").exists()
    (tmp / "other").mkdir()
    (tmp / "other" / "x").write_text("x")
    with pytest.raises((HostError, OSError)):
        host.rename(tmp / "other", tmp / "r")  # a complete directory is never replaced
    host.symlink("r", tmp / "r" / ".venv")
    host.symlink("other", tmp / "r" / ".venv")  # ln -sfn: an existing link is replaced
    assert os.readlink(tmp / "r" / ".venv") == "other"


def test_the_lock_on_a_remote_primary_is_exclusive(servers: list[Sshd], tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "home"))
    first, second = connect(servers[0]), connect(servers[0])
    try:
        lock = DeployLock(first, layout)
        lock.acquire(who="alice", command="staging.deploy")
        with pytest.raises(LockHeld) as info:
            DeployLock(second, layout).acquire(who="bob", command="staging.deploy")
        assert "alice" in info.value.message
        lock.release()
        assert not os.path.exists(layout.lock)
        DeployLock(second, layout).acquire(who="bob", command="staging.deploy")
        assert (Path(layout.lock) / "holder.json").exists()
    finally:
        first.close()
        second.close()


def test_an_unknown_host_key_is_refused(servers: list[Sshd]) -> None:
    # the second server's known_hosts does not list the first server's key
    host = connect(servers[0], known_hosts=str(servers[1].known_hosts))
    with pytest.raises(HostError) as info:
        host.run(["true"], check=False)  # no command ran: not a result, whatever check says
    assert "known_hosts" in info.value.message and info.value.host == host.name
    with pytest.raises(HostError):
        host.exists("/")


def test_a_key_the_host_does_not_know_is_refused(servers: list[Sshd], tmp_path: Path) -> None:
    other = keygen(tmp_path / "other_key")
    with pytest.raises(HostError) as info:
        connect(servers[0], identity_file=str(other)).run(["true"], check=False)
    assert "Authentication" in info.value.message


def test_a_host_whose_sshd_stops_fails_with_its_name(servers: list[Sshd], tmp_path: Path) -> None:
    server = servers[1]
    host = connect(server)
    try:
        assert host.run(["true"]).ok and host.exists("/")
        server.stop()
        with pytest.raises(HostError) as info:
            host.exists(tmp_path)
        assert server.destination in info.value.message
        with pytest.raises(HostError) as info:
            host.run(["true"], check=False)
        assert "cannot run `true`" in info.value.message
        server.start()
        assert host.exists("/")  # the next call reconnects
    finally:
        if not server.running:
            server.start()
        host.close()


def _no_delay(host: Host) -> int:
    sock = host._conn.client.get_transport().sock  # noqa: SLF001 - the socket under test
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_the_connection_sends_each_packet_at_once(servers: list[Sshd]) -> None:
    """TCP_NODELAY on the SSH connection, whichever call opened it and after a reconnect: opening
    a channel for a command is a few small packets each way, and with Nagle's algorithm each one
    waited for the peer's delayed ACK (48 ms a command here, 12 ms without)."""
    server = servers[1]
    for first in (lambda h: h.run(["true"]), lambda h: h.exists("/")):
        host = connect(server)
        try:
            first(host)
            assert _no_delay(host)
            server.stop()
            with pytest.raises(HostError):
                host.run(["true"], check=False)
            server.start()
            assert host.exists("/")  # reconnected
            assert _no_delay(host)
        finally:
            if not server.running:
                server.start()
            host.close()


def _sharing(server: Sshd, root: Path, homes: dict[str, Path], **changes: str) -> Project:
    """A project whose staging and prod both run on server, each with its home there."""
    (root / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(root)
    proj = load_project(root)
    t = {**server.table(), **changes}
    spec = HostSpec(
        address=t["address"], identity_file=t["identity_file"], known_hosts=t["known_hosts"]
    )
    policies = {
        **proj.policies,
        **{
            name: dataclasses.replace(
                proj.policies[name], hosts=(dataclasses.replace(spec, data_dir=str(home)),)
            )
            for name, home in homes.items()
        },
    }
    return dataclasses.replace(proj, policies=policies)


def test_a_remote_home_linked_to_another_environments_is_refused(
    servers: list[Sshd], tmp_path: Path
) -> None:
    # the servers are this machine: a directory made here is there
    (tmp_path / "prod-home").mkdir()
    (tmp_path / "staging-home").symlink_to(tmp_path / "prod-home")
    homes = {"staging": tmp_path / "staging-home", "prod": tmp_path / "prod-home"}
    root = tmp_path / "proj"
    root.mkdir()
    check = guards.isolation(_sharing(servers[0], root, homes), "staging")
    assert not check.ok
    assert f"prod and staging share the data directory {tmp_path / 'prod-home'} on " in check.detail
    # a home not made yet resolves too, and is apart
    homes["staging"] = tmp_path / "staging-new" / "home"
    assert guards.isolation(_sharing(servers[0], root, homes), "staging").ok
    # a host that cannot answer leaves the homes unresolved: refused, in one line
    unknown = keygen(tmp_path / "other_key")
    check = guards.isolation(
        _sharing(servers[0], root, homes, identity_file=str(unknown)), "staging"
    )
    assert not check.ok and "\n" not in check.detail
    assert check.detail.startswith(
        f"cannot resolve the data directories on {servers[0].destination} to compare them: "
    )


def test_inv_list_does_not_load_fabric() -> None:
    code = (
        "import sys, tasks; "
        "loaded = [m for m in ('fabric', 'paramiko') if m in sys.modules]; "
        "print(','.join(loaded) or 'none')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=support.REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "none"


def test_a_local_host_stays_local() -> None:
    host = host_from_spec("local")
    assert host.is_local and host.run(["true"]).ok and isinstance(host, Host)
