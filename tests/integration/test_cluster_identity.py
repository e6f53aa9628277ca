"""Which cluster an environment's URL reaches, asked of the server: a port that forwards to
another environment's PostgreSQL passes every URL comparison and is refused here."""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from deploy.config import load_project
from deploy.errors import ConfigError, ServiceError
from deploy.probes import cluster
from tests import support


@contextmanager
def forwarder(target_port: int) -> Iterator[int]:
    """A loopback port whose every connection is piped to target_port: another address of it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            dst.close()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _point(root: Path, name: str, port: int) -> None:
    """name's PostgreSQL is the one on port, reached as its superuser (trusted on loopback)."""
    path = root / "env" / f"{name}.env"
    text = re.sub(r"(?m)^POSTGRES_PORT=.*$", f"POSTGRES_PORT={port}", path.read_text())
    text = re.sub(
        r"(?m)^DATABASE_URL=.*$",
        f"DATABASE_URL=postgresql://postgres@127.0.0.1:{port}/postgres",
        text,
    )
    path.write_text(text)


@pytest.fixture
def root(tmp_path: Path, pg_server) -> Path:
    (tmp_path / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(tmp_path)
    _point(tmp_path, "dev", pg_server.port)
    return tmp_path


def test_a_port_forwarded_to_another_environments_cluster_is_refused(root: Path, pg_server) -> None:
    proj = load_project(root)
    dev = proj.env("dev")
    assert cluster.check(proj, "dev").detail.startswith("no record")  # before dev's `up`
    mine = cluster.reached(dev)
    cluster.record(dev, mine)
    assert cluster.record_path(dev).stat().st_mode & 0o777 == 0o600
    assert cluster.check(proj, "dev").ok

    with forwarder(pg_server.port) as port:
        _point(root, "staging", port)
        proj = load_project(root)
        staging = proj.env("staging")
        cluster.record(staging, "7000000000000000001")  # what staging's own `up` once saw
        check = cluster.check(proj, "staging")
        assert not check.ok and f"reaches cluster {mine}, not 7000000000000000001" in check.detail
        cluster.record(staging, mine)  # a record rewritten to match: still dev's cluster
        check = cluster.check(proj, "staging")
        assert not check.ok and check.detail == "staging's DATABASE_URL reaches dev's cluster"
    # nothing listens there any more: the guard cannot decide, so it refuses
    check = cluster.check(load_project(root), "staging")
    assert not check.ok and "cannot say which cluster" in check.detail


def test_a_damaged_record_is_one_line_naming_the_file(root: Path) -> None:
    dev = load_project(root).env("dev")
    path = cluster.record_path(dev)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cluster.json cannot be read"):
        cluster.recorded(dev)
    path.write_text('{"system_identifier": "x; DROP"}')
    with pytest.raises(ConfigError, match="holds no cluster identifier"):
        cluster.recorded(dev)


def test_psql_and_the_driver_give_one_answer_and_the_operators_pg_variables_reach_neither(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = load_project(root).env("dev")
    by_psql = cluster.reached(dev)
    monkeypatch.setattr("deploy.psql.psql_program", lambda: None)
    assert cluster.reached(dev) == by_psql
    monkeypatch.undo()
    # libpq would take these behind the URL's back: this server speaks no TLS, so a demand for it
    # that reached the client would fail the question
    monkeypatch.setenv("PGSSLMODE", "require")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "1")
    assert cluster.reached(dev) == by_psql


def test_a_server_that_does_not_answer_is_one_line_naming_why(root: Path) -> None:
    _point(root, "dev", support.free_port())  # nothing listens there
    with pytest.raises(ServiceError) as err:
        cluster.reached(load_project(root).env("dev"))
    assert "\n" not in str(err.value) and "refused" in str(err.value).lower()


def test_a_psql_on_path_is_never_asked_which_cluster_it_is(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the wheel's own psql the question goes through the driver, not to whatever the
    operator's PATH calls psql: an answer printed by a script is no cluster's."""
    dev = load_project(root).env("dev")
    truth = cluster.reached(dev)
    liar = tmp_path / "bin" / "psql"
    liar.parent.mkdir()
    liar.write_text("#!/bin/sh\necho 7000000000000000001\n")
    liar.chmod(0o755)
    monkeypatch.setenv("PATH", f"{liar.parent}:{os.environ.get('PATH', '')}")
    monkeypatch.setattr("deploy.binaries.pg_install_dir", lambda: None)
    assert cluster.reached(dev) == truth != "7000000000000000001"
