"""The service's own commands (migrations, seed) in a release on a host reached over real OpenSSH:
the release's venv and dir, the settings as environment, and no secret on any command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from deploy import env_migrations, procs, releases
from deploy import seed as seeding
from deploy.config import EnvConfig, HostSpec, Project, load_project
from deploy.errors import MigrationError, ServiceError
from deploy.hosts import Host, host_from_spec
from deploy.runtime.native import service_interpreter
from deploy.secrets import Secret
from deploy.state import Layout
from tests import support
from tests.conftest import need
from tests.sshd import Sshd, can_run_sshd, fleet

# a password that percent-encoding changes: DATABASE_URL carries it as p%40ss%2Fw0rd...
PASSWORD = "p@ss/w0rd s3cret"
# What the command saw, as JSON, then its DATABASE_URL (the output must come back scrubbed).
SHOW = """\
import json, os, sys
print(os.environ["DATABASE_URL"])
print(json.dumps({
    "argv": sys.argv, "cwd": os.getcwd(), "path": os.environ["PATH"],
    "venv": os.environ.get("VIRTUAL_ENV"), "release": os.environ.get("STAGEFLOW_RELEASE"),
    "size": os.environ.get("STAGEFLOW_SEED_SIZE"), "pgoptions": os.environ.get("PGOPTIONS"),
}))
sys.exit(int(os.environ.get("SHOW_EXIT", "0")))
"""


class Recording:
    """The SSH connection, keeping every command line it sends: what `ps` shows on the host."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.commands = conn, []

    def run(self, command: str, **kw: Any) -> Any:
        self.commands.append(command)
        return self.conn.run(command, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


@dataclass
class Remote:
    proj: Project
    env: EnvConfig
    host: Host
    layout: Layout
    release_dir: Path
    sent: Recording

    def command_lines(self) -> str:
        return "\n".join(self.sent.commands)


@pytest.fixture(scope="module")
def server() -> Iterator[Sshd]:
    ok, why = can_run_sshd()
    need(ok, why)
    base = support.public_tmpdir("sf-sshd-")
    try:
        with fleet(base, 1) as hosts:
            yield hosts[0]
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def remote(server: Sshd, tmp_path: Path) -> Iterator[Remote]:
    """staging on the SSH host alone, serving release r1 (its venv: the one running the tests)."""
    data = support.public_tmpdir("sf-svc-cmd-")
    release = data / "releases" / "r1"
    (release / "svc").mkdir(parents=True)
    (release / "svc" / "show.py").write_text(SHOW)
    # a venv the service user can run: as root, the command runs as that user
    python = service_interpreter(base_user()) or sys.executable
    subprocess.run([python, "-m", "venv", "--without-pip", str(data / "venv")], check=True)
    (release / ".venv").symlink_to(data / "venv")
    (data / "current").symlink_to("releases/r1")
    (data / "shared").mkdir()
    base = load_project(support.REPO, process_env={})
    env = replace(base.env("staging"), secrets=(("POSTGRES_PASSWORD", Secret(PASSWORD)),))
    table = server.table()
    spec = HostSpec(
        address=table["address"],
        data_dir=str(data),
        bind=server.address,
        identity_file=table["identity_file"],
        known_hosts=table["known_hosts"],
    )
    service = replace(base.service, dir="svc", seed=("python", "show.py", "--size", "{size}"))
    proj = replace(
        base,
        service=service,
        envs={**base.envs, "staging": env},
        policies={**base.policies, "staging": replace(base.policies["staging"], hosts=(spec,))},
    )
    host = host_from_spec(spec)  # no secrets of its own: the scrubbing must come from the runner
    sent = Recording(host._runner())
    host._conn = sent
    try:
        yield Remote(proj, env, host, Layout(str(data)), release, sent)
    finally:
        host.close()
        shutil.rmtree(data, ignore_errors=True)


def base_user() -> str:
    return load_project(support.REPO, process_env={}).service.user


def _seen(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_a_service_command_runs_in_the_release_over_ssh_with_no_secret_on_a_command_line(
    remote: Remote,
) -> None:
    r = remote
    assert not r.host.is_local
    res = releases.service_command(
        r.host, r.env, r.proj.service, r.layout, "r1", ["python", "show.py", "x y"],
        timeout=60, extra_env={"PGOPTIONS": "-c lock_timeout=5000"},
    )  # fmt: skip
    assert res.ok, res.stderr
    seen = _seen(res.stdout)
    assert seen["argv"][1:] == ["x y"] and seen["cwd"] == str(r.release_dir / "svc")
    assert seen["path"].split(":")[0] == f"{r.release_dir}/.venv/bin"
    assert seen["venv"] == f"{r.release_dir}/.venv" and seen["release"] == "r1"
    assert seen["pgoptions"] == "-c lock_timeout=5000"
    # the settings reached it through a file whose path alone was on the command line
    sent = r.command_lines()
    assert "launch.py" in sent and "--settings" in sent and "show.py" in sent
    assert PASSWORD not in sent and quote(PASSWORD, safe="") not in sent
    assert "DATABASE_URL" not in sent and "PGPASSWORD" not in sent
    # its output comes back without the password, plain or percent-encoded
    assert PASSWORD not in res.stdout and quote(PASSWORD, safe="") not in res.stdout
    assert "[REDACTED]" in res.stdout.splitlines()[0]
    # the command's own settings file is gone; the private dir holds nothing of it
    assert not [n for n in r.host.listdir(r.layout.shared) if n.startswith("command-")]


def test_the_migration_tool_runs_on_an_ssh_primary_and_fails_in_one_scrubbed_line(
    remote: Remote,
) -> None:
    r = remote
    tool = env_migrations.MigrationTool(r.proj, "staging", r.host, r.layout, "r1")
    seen = _seen(tool.run(["python", "show.py"], what="the current command"))
    assert seen["pgoptions"] and "lock_timeout" in seen["pgoptions"]
    assert quote(PASSWORD, safe="") not in r.command_lines()
    leak = ["python", "-c", "import os, sys; sys.exit(os.environ['DATABASE_URL'])"]
    with pytest.raises(MigrationError) as err:
        tool.run(leak, what="the up command")
    line = err.value.line()
    assert "the up command" in line and "exited 1" in line and "[REDACTED]" in line
    assert PASSWORD not in line and quote(PASSWORD, safe="") not in line


def test_the_seed_runs_in_the_release_on_an_ssh_primary(remote: Remote) -> None:
    r = remote
    result = seeding.run(r.proj, r.env, size="tiny", process_env={"PATH": "/usr/bin:/bin"})
    # the release exists only in the SSH host's data dir: it ran there
    assert result.where == "release r1"
    reported = dict(result.reported)
    assert reported["size"] == "tiny"  # STAGEFLOW_SEED_SIZE, an argument of the launcher
    assert reported["cwd"] == str(r.release_dir / "svc") and reported["release"] == "r1"
    bad = replace(r.env, values=(*r.env.values, ("SHOW_EXIT", "3")))
    with pytest.raises(ServiceError, match=r"the seed command failed in release r1 \(exit 3\)"):
        seeding.run(r.proj, bad, size="tiny")


TICK = """\
import os, time
print("tick of", os.environ["STAGEFLOW_RELEASE"], flush=True)
while True:
    time.sleep(0.2)
"""


def test_a_process_runs_detached_on_an_ssh_host_and_a_planted_pid_file_is_not_trusted(
    remote: Remote,
) -> None:
    r = remote
    (r.release_dir / "svc" / "tick.py").write_text(TICK)
    service = replace(r.proj.service, processes=(("ticker", ("python", "tick.py")),))
    r.host.makedirs(r.layout.run, r.layout.logs)
    rel = releases.Release("r1", "c0ffee", "main")
    states = releases.start_processes(r.host, r.env, service, r.layout, rel)
    assert [(s.name, s.release, s.up) for s in states] == [("ticker", "r1", True)]
    pid = states[0].pid
    assert pid and procs.alive(pid)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2]
    assert cmdline == [f"{r.release_dir}/.venv/bin/python".encode(), b"tick.py"]
    sent = r.command_lines()
    assert "--detach" in sent and PASSWORD not in sent and "PGPASSWORD" not in sent
    # a second start keeps the running one
    again = releases.start_processes(r.host, r.env, service, r.layout, rel)
    assert [s.pid for s in again] == [pid]

    # a release whose record names the same command, and a pid file naming a stranger
    other = Path(r.layout.release("r2"))
    (other / ".stageflow").mkdir(parents=True)
    (other / ".stageflow" / "processes.json").write_text('{"ticker": ["python", "tick.py"]}')
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        Path(releases.process_pidfile(r.layout, "ticker", "r2")).write_text(f"{stranger.pid}\n")
        found = {(s.release, s.pid, s.up) for s in releases.processes_on_host(r.host, r.layout)}
        assert found == {("r1", pid, True), ("r2", stranger.pid, False)}
        lines = releases.stop_processes(r.host, r.layout, grace_s=5)
        assert lines == [f"ticker r1 stopped (pid {pid})"]
        assert stranger.poll() is None  # never signalled
        assert not procs.alive(pid)
        assert not Path(releases.process_pidfile(r.layout, "ticker", "r2")).exists()
    finally:
        stranger.kill()
        stranger.wait()
    log = Path(releases.process_log(r.layout, "ticker")).read_text()
    assert "tick of r1" in log


def test_a_process_that_cannot_start_refuses_the_release_in_one_line(remote: Remote) -> None:
    r = remote
    r.host.makedirs(r.layout.run, r.layout.logs)
    (r.release_dir / "svc" / "dies.py").write_text(
        "import os, sys\nsys.exit('cannot start: ' + os.environ['DATABASE_URL'])\n"
    )
    rel = releases.Release("r1", "c0ffee", "main")
    for argv, said in (
        (("no-such-program",), "cannot run 'no-such-program'"),
        (("python", "dies.py"), "cannot start: postgresql://"),
    ):
        service = replace(r.proj.service, processes=(("job", argv),))
        with pytest.raises(ServiceError) as err:
            releases.start_processes(r.host, r.env, service, r.layout, rel)
        line = err.value.line()
        assert "process job of release r1 did not start" in line and said in line
        assert PASSWORD not in line and quote(PASSWORD, safe="") not in line
        assert not releases.processes_on_host(r.host, r.layout)


# a worker that loads for longer than a second (busy on the CPU), then fails
LOADS_THEN_FAILS = """\
import sys, time
end = time.monotonic() + 1.3
while time.monotonic() < end:
    pass
sys.exit("worker: failed while loading its tasks")
"""


def test_a_process_is_watched_until_it_waits_for_work_not_for_a_fixed_second(
    remote: Remote,
) -> None:
    """A process counts as started once it (and all it started) sleeps without using CPU: one
    still loading past the first second and then failing refuses the release, run directly or
    by a shell waiting for it; one that waits for work at once is kept."""
    r = remote
    r.host.makedirs(r.layout.run, r.layout.logs)
    svc = r.release_dir / "svc"
    (svc / "loads.py").write_text(LOADS_THEN_FAILS)
    (svc / "tick.py").write_text(TICK)
    rel = releases.Release("r1", "c0ffee", "main")
    for argv in (("python", "loads.py"), ("sh", "-c", "python loads.py; exit 3")):
        service = replace(r.proj.service, processes=(("job", argv),))
        with pytest.raises(ServiceError) as err:
            releases.start_processes(r.host, r.env, service, r.layout, rel)
        assert "process job of release r1 did not start" in err.value.line(), err.value.line()
        assert not releases.processes_on_host(r.host, r.layout)
    service = replace(r.proj.service, processes=(("ticker", ("python", "tick.py")),))
    states = releases.start_processes(r.host, r.env, service, r.layout, rel)
    assert [(s.name, s.up) for s in states] == [("ticker", True)]
    releases.stop_processes(r.host, r.layout, grace_s=5)
