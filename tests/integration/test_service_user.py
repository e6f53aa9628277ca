"""As root, nothing of the service runs as root: its gunicorn master and workers, a process of
[service.processes] and a build command run as the service user ([project] service_user), which
can write its files dir but neither the release nor stageflow's own state. Real venv, launcher,
listener, gunicorn and processes; the uids are read from /proc."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from deploy import releases
from deploy.config import EnvConfig, Project, load_project
from deploy.errors import ServiceError
from deploy.hosts import Host
from deploy.runtime import native
from deploy.state import Layout
from tests import support
from tests.support import git

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the service user is switched to only when stageflow runs as root"
)

# Each answer says who serves it and what it could write: the release, stageflow's run/ and
# state/ (two and one levels above the release), and its files dir.
APP = """\
import json, os

def _try(folder):
    try:
        with open(os.path.join(folder, "planted-by-the-service"), "w") as fh:
            fh.write("x")
        return "written"
    except OSError as exc:
        return exc.strerror

def app(environ, start_response):
    release = os.getcwd()
    home = os.path.dirname(os.path.dirname(release))
    body = json.dumps({
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "home": os.environ.get("HOME"),
        "release": _try(release),
        "run": _try(os.path.join(home, "run")),
        "state": _try(os.path.join(home, "state")),
        "files": _try(os.environ["STAGEFLOW_FILES_DIR"]),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"""
WORKER = "import time\nwhile True:\n    time.sleep(1)\n"
# collectstatic's stand-in, which also leaves what a sealed release must not keep
BUILD = """\
import json, os, pathlib
pathlib.Path("collected").mkdir()
pathlib.Path("collected/seen.json").write_text(json.dumps({"uid": os.getuid()}))
os.mkfifo("collected/pipe")
os.symlink("/etc", "collected/link")
pathlib.Path("collected/tool").write_text("#!/bin/sh\\n")
os.chmod("collected/tool", 0o6777)
os.chmod("collected", 0o777)
"""


@dataclass(frozen=True)
class Site:
    proj: Project
    env: EnvConfig
    layout: Layout
    commit: str
    uid: int


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "webapp.py").write_text(APP)
    (root / "worker.py").write_text(WORKER)
    (root / "build.py").write_text(BUILD)
    (root / "requirements.txt").write_text(f"{releases.engine_gunicorn()}\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "site")
    base = load_project(support.REPO, process_env={})
    service = replace(
        base.service,
        name="site",
        dir=".",
        wsgi="webapp:app",
        requirements="requirements.txt",
        worker_class="sync",
        health="/",
        ready="/",
        build=(("python", "build.py"),),
        processes=(("worker", ("python", "worker.py")),),
        migrations=replace(base.service.migrations, kind="none"),
        user="stageflow",
    )
    data = support.public_tmpdir("sf-service-user-")
    env = replace(base.env("dev"), data_dir=data / "dev", app_port=support.free_port())
    proj = replace(base, root=root, service=service)
    layout = Layout(str(env.data_dir))
    os.makedirs(layout.state, mode=0o700)  # as `up` leaves it
    uid = pwd.getpwnam(native.service_user("stageflow") or "").pw_uid
    try:
        yield Site(proj, env, layout, git(root, "rev-parse", "HEAD"), uid)
    finally:
        releases.stop_on_host(Host(), layout)
        shutil.rmtree(data, ignore_errors=True)


def _uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of pid."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(v) for v in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_the_master_its_workers_a_process_and_a_build_run_as_the_service_user(site: Site) -> None:
    host = Host()
    rel = releases.build(
        site.proj, site.env, host, commit=site.commit, ref="main", layout=site.layout
    )
    rdir = Path(site.layout.release(rel.id))
    # the build command ran as the service user and wrote into the release being built ...
    assert json.loads((rdir / "collected" / "seen.json").read_text())["uid"] == site.uid
    # ... which is root's again once built: readable by the service user, writable by none
    for path in (rdir, rdir / "collected", rdir / "collected" / "seen.json", rdir / "webapp.py"):
        st = path.stat()
        assert st.st_uid == 0 and not st.st_mode & 0o022 and st.st_mode & 0o004, path
    assert (rdir / "collected" / "tool").stat().st_mode & 0o7777 == 0o755  # no setuid left
    assert not (rdir / "collected" / "pipe").exists()
    assert (rdir / "collected" / "link").lstat().st_uid == 0
    assert (rdir / ".stageflow" / "launch.py").stat().st_uid == 0

    master = releases.start(host, site.env, site.proj.service, site.layout, rel, workers=2)
    assert _uids(master) == [site.uid] * 4
    workers = _children(master)
    assert len(workers) == 2 and all(_uids(w) == [site.uid] * 4 for w in workers)
    # the pid file stageflow signals by is root's, written before the master ran
    pidfile = Path(releases.master_pidfile(site.layout, rel.id))
    assert pidfile.stat().st_uid == 0 and int(pidfile.read_text()) == master

    [proc] = [p for p in releases.processes_on_host(host, site.layout) if p.name == "worker"]
    assert proc.up and proc.pid and _uids(proc.pid) == [site.uid] * 4

    url = f"http://127.0.0.1:{site.env.app_port}/"
    with urllib.request.urlopen(url, timeout=10) as answer:
        seen = json.loads(answer.read())
    assert seen["uid"] == site.uid and seen["gid"] != 0 and 0 not in seen["groups"]
    # the release and what root trusts stay out of the service's reach; its files dir is its own
    assert seen["release"] == "Permission denied"
    assert seen["run"] == "Permission denied" and seen["state"] == "Permission denied"
    assert seen["files"] == "written" and seen["home"] == releases.Paths.of(site.layout).files
    planted = list(Path(site.layout.home).rglob("planted-by-the-service"))
    assert [p.parent for p in planted] == [Path(releases.Paths.of(site.layout).files)]


def test_the_service_starts_from_an_operators_directory_it_cannot_reach(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone under /root (or in a mode-0700 directory): the master must not inherit the
    operator's working directory, which the service user cannot enter."""
    host = Host()
    rel = releases.build(
        site.proj, site.env, host, commit=site.commit, ref="main", layout=site.layout
    )
    monkeypatch.chdir(tmp_path)  # pytest's tmp_path sits in a mode-0700 directory
    master = releases.start(host, site.env, site.proj.service, site.layout, rel, workers=1)
    assert _uids(master) == [site.uid] * 4
    with urllib.request.urlopen(f"http://127.0.0.1:{site.env.app_port}/", timeout=10) as answer:
        assert json.loads(answer.read())["uid"] == site.uid


def test_a_release_the_service_user_cannot_reach_is_refused_before_anything_runs(
    site: Site, tmp_path: Path
) -> None:
    private = tmp_path / "private"  # pytest's tmp_path sits in a mode-0700 directory
    env = replace(site.env, data_dir=private / "dev")
    layout = Layout(str(env.data_dir))
    with pytest.raises(ServiceError) as err:
        releases.build(site.proj, env, Host(), commit=site.commit, ref="main", layout=layout)
    line = err.value.line()
    assert "the service user stageflow cannot read the releases in" in line
    assert "is private" in line and "\n" not in line
    assert releases.list_releases(Host(), layout) == []


def test_without_root_the_launcher_runs_the_command_as_the_invoking_user() -> None:
    """The same launcher, started by the service user itself (not root): --user changes nothing,
    the command runs as whoever started it."""
    python = native.service_interpreter("stageflow") or "/usr/bin/python3"
    base = support.public_tmpdir("sf-launch-")
    try:
        shutil.copyfile(releases.HELPERS_SOURCE / "launch.py", base / "launch.py")
        (base / "settings.json").write_text("{}")
        os.chmod(base, 0o777)
        argv = [
            "runuser", "-u", "stageflow", "--", python, str(base / "launch.py"),
            "--settings", str(base / "settings.json"), "--user", "nobody",
            "--files", str(base / "files"), "--", "id", "-u",
        ]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout) == pwd.getpwnam("stageflow").pw_uid
        assert (base / "files").stat().st_uid == pwd.getpwnam("stageflow").pw_uid
    finally:
        shutil.rmtree(base, ignore_errors=True)
