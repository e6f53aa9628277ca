"""The file builders return exact argv lists, every path after `--`; run on this machine, a file
whose name starts with '-' is the one acted on."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploy.commands import files
from deploy.commands import release as app
from deploy.hosts import run_process


def test_remove_takes_every_path_after_the_options():
    assert files.remove("/srv/b/1.dump") == ["rm", "-f", "--", "/srv/b/1.dump"]
    assert files.remove("/srv/a b.dump", "-rf") == ["rm", "-f", "--", "/srv/a b.dump", "-rf"]


def test_realpaths_resolve_links_and_keep_a_missing_tail(tmp_path: Path):
    assert files.realpaths("/srv/a", "-b") == ["realpath", "-m", "-z", "--", "/srv/a", "-b"]
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    out = run_process(files.realpaths(str(tmp_path / "link"), str(tmp_path / "link" / "new")))
    assert out.stdout.split("\0") == [str(tmp_path / "real"), str(tmp_path / "real" / "new"), ""]


def test_move_and_rename_onto():
    assert files.move("/run/app-r1.pid", "/run/app-r1.pid.7") == [
        "mv",
        "-f",
        "--",
        "/run/app-r1.pid",
        "/run/app-r1.pid.7",
    ]
    assert files.rename_onto("-building", "my venvs/abc") == [
        "mv",
        "-T",
        "--",
        "-building",
        "my venvs/abc",
    ]


def test_link_tree():
    assert files.link_tree("/c/abc", "/v/abc.partial") == [
        "cp",
        "-al",
        "--",
        "/c/abc",
        "/v/abc.partial",
    ]


def test_copy_tree():
    assert files.copy_tree("/c/abc", "/v/abc.partial") == [
        "cp",
        "-a",
        "--",
        "/c/abc",
        "/v/abc.partial",
    ]


def test_checksum_size_and_mode():
    assert files.sha256("/srv/b/a b.dump") == ["sha256sum", "--", "/srv/b/a b.dump"]
    assert files.size("-x.dump") == ["stat", "-c", "%s", "--", "-x.dump"]
    assert files.chmod(0o600, "/srv/b/1.dump") == ["chmod", "600", "--", "/srv/b/1.dump"]
    assert files.chmod(0o2750, "a", "-b") == ["chmod", "2750", "--", "a", "-b"]


@pytest.mark.parametrize("mode", [-1, 0o10000])
def test_chmod_builds_only_a_file_mode(mode):
    with pytest.raises(ValueError, match="not a file mode"):
        files.chmod(mode, "/srv/b/1.dump")


def test_the_tools_read_a_dashed_name_as_a_file(tmp_path: Path):
    """Without `--` each of these exits non-zero (an unknown option) or acts on the wrong thing."""
    dump = tmp_path / "-rf.dump"
    dump.write_bytes(b"dump bytes")

    def ok(argv: list[str]) -> str:
        res = run_process(argv, cwd=tmp_path, timeout=30)
        assert res.ok, (argv, res.stderr)
        return res.stdout

    assert ok(files.sha256(dump.name)).split()[0] == hashlib.sha256(b"dump bytes").hexdigest()
    assert ok(files.size(dump.name)).strip() == str(len(b"dump bytes"))
    ok(files.chmod(0o600, dump.name))
    assert dump.stat().st_mode & 0o777 == 0o600
    ok(files.copy_tree(dump.name, "-copy"))
    ok(files.move("-copy", "-moved"))
    assert (tmp_path / "-moved").read_bytes() == b"dump bytes"
    (tmp_path / "-dir").mkdir()
    ok(files.rename_onto("-dir", "-renamed"))
    assert (tmp_path / "-renamed").is_dir()
    ok(files.remove(dump.name, "-moved", "-missing"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["-renamed"]


def test_rename_onto_fails_when_another_rename_won(tmp_path: Path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "won").mkdir()
    (tmp_path / "won" / ".complete").write_text("x")
    res = run_process(files.rename_onto("mine", "won"), cwd=tmp_path, timeout=30)
    assert not res.ok and (tmp_path / "mine").is_dir()


def test_kill_signals_one_positive_pid():
    assert app.kill(4242, signal.SIGTERM) == ["kill", "-TERM", "4242"]
    assert app.kill(7, signal.SIGKILL) == ["kill", "-KILL", "7"]
    for pid in (0, -1):
        with pytest.raises(ValueError, match="not the pid of one process"):
            app.kill(pid, signal.SIGTERM)


class _App(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps({"release": "r7"}).encode() if self.path == "/version" else b"ok"
        if self.path == "/login-first":  # a health path that redirects: answered, not followed
            self.send_response(302)
            self.send_header("Location", "/nowhere")
        else:
            self.send_response(
                200 if self.path in ("/healthz", "/readyz", "/version", "/up") else 404
            )
        if self.path == "/up":  # what stageflow's gunicorn hooks add to every answer
            self.send_header("X-Stageflow-Release", "r9")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_host_probe_prints_the_serving_release():
    argv = app.http_probe("http://127.0.0.1:8080", health="/healthz", ready="/readyz")
    assert argv == [
        "python3",
        "-c",
        app.PROBE_CODE,
        "http://127.0.0.1:8080",
        "/healthz",
        "/readyz",
        "",
        "300",
    ]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        res = run_process(
            app.http_probe(base, health="/healthz", ready="/readyz", version="/version"),
            timeout=60,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert res.ok, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "r7"


def test_the_host_probe_takes_the_services_paths_and_the_release_header():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        header = run_process(app.http_probe(base, health="/login-first", ready="/up"), timeout=60)
        no_release = run_process(
            app.http_probe(base, health="/healthz", ready="/readyz"), timeout=60
        )
        unready = run_process(
            app.http_probe(base, health="/healthz", ready="/login-first"), timeout=60
        )
        # no `ready` of its own: the health path stands in, and a redirect answers as for health
        stand_in = run_process(
            app.http_probe(base, health="/login-first", ready="/login-first", ready_redirects=True),
            timeout=60,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert header.ok and header.stdout.strip() == "r9", header.stderr
    assert no_release.ok and no_release.stdout.strip() == ""
    assert not unready.ok and "/login-first: HTTP 302" in unready.stderr
    assert stand_in.ok, stand_in.stderr
