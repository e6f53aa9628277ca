"""The bare floor of a zero-downtime switch, done by hand with the project's own parts.

A deploy's floor: `git archive` of the commit, extract it, link its venv, copy in the engine's
helpers, write the service's settings file, start a gunicorn master of it on the shared listener
socket (the argv of deploy/commands/release.py, so the same processes as a real deploy: launch.py,
gunicorn, its config asking each worker's ready path in-process and marking it), wait for its
workers, switch the `current` symlink, drain the old master, and one GET that answers from the new
release. A rollback's floor is the same without the archive: a master of a release already on disk.

The floor runs beside the environment, never in it: its own data dir, listener and port, the
environment's venv and the service's settings for that environment. On an SSH host everything
after the archive is one shell script sent through one `ssh` command (the archive on its stdin);
the GET comes from this machine. Every test host lives on this machine, so the floor writes the
settings file (it holds the secrets) straight into the host's data dir, never into the script.
Nothing here checks, locks, records, probes or rolls back: that is stageflow's price, the ratio.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy import releases
from deploy.commands import release as cmd
from deploy.config import EnvConfig
from deploy.hosts import Host, to_shell
from deploy.service import Service
from deploy.state import Layout

READY_TIMEOUT_S = 30.0
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}  # what releases.start gives the launcher


@dataclass(frozen=True)
class Ssh:
    """An OpenSSH destination as tests/sshd.py starts it: root@address:port, one key, one known_hosts."""

    address: str
    port: int
    identity_file: str
    known_hosts: str

    def argv(self, script: str) -> list[str]:
        return [
            "ssh",
            "-i",
            self.identity_file,
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-p",
            str(self.port),
            f"root@{self.address}",
            script,
        ]


@dataclass
class Floor:
    """A hand-made release directory tree on one host (this machine, or an SSH host on it)."""

    root: Path  # the project's git repository
    env: EnvConfig
    service: Service
    home: Path  # the floor's own data dir (a local path: every test host lives on this machine)
    venv: str  # the environment's venv for the service's requirements, linked into each release
    workers: int
    bind: str = "127.0.0.1"
    ssh: Ssh | None = None
    port: int = 0
    serving: tuple[str, str] | None = None  # (release id, commit) the floor's master serves
    built: dict[str, str] = field(default_factory=dict)  # release id -> commit

    @property
    def layout(self) -> Layout:
        return Layout(str(self.home))

    def setup(self, commit: str, port: int) -> None:
        """Directories, a first release and the listener (untimed)."""
        self.port = port
        lay = self.layout
        for d in (lay.releases, lay.run, lay.logs, lay.shared):
            Path(d).mkdir(parents=True, exist_ok=True)
        rid = "r0"
        self._build_local(commit, rid)
        paths = releases.Paths.of(lay)
        argv = cmd.listener(
            f"{lay.release(rid)}/.venv/bin/python",
            f"{lay.release(rid)}/{cmd.HELPERS_DIR}",
            port=port,
            control=paths.control,
            pidfile=paths.listener_pid,
            host=self.bind,
        )
        self._run_here_or_there(argv)
        deadline = time.monotonic() + 5
        while not (Path(paths.control).exists() and Path(paths.listener_pid).exists()):
            if time.monotonic() > deadline:
                raise SystemExit("the floor's listener did not start")
            time.sleep(0.02)
        self.switch_to(rid)  # a master serves before the first timed switch

    # -- the timed parts ----------------------------------------------------------------------

    def deploy(self, commit: str, rid: str) -> float:
        """git archive + extract + venv link + new master + switch + one GET; wall seconds."""
        start = time.perf_counter()
        if self.ssh is None:
            self._build_local(commit, rid)
            self._start_and_switch_local(rid)
        else:
            self.built[rid] = commit
            with tempfile.NamedTemporaryFile(suffix=".tar") as tar:
                self._git(cmd.archive(commit, tar.name))
                self._write_settings(rid)
                script = self._build_script(rid, "-") + " && " + self._switch_script(rid)
                self._ssh(script, stdin=tar.name)
        self._get_serves(rid)
        took = time.perf_counter() - start
        self.serving = (rid, commit)
        return took

    def rollback(self, rid: str) -> float:
        """A master of a release on disk + switch + one GET; wall seconds."""
        start = time.perf_counter()
        if self.ssh is None:
            self._start_and_switch_local(rid)
        else:
            self._write_settings(rid)
            self._ssh(self._switch_script(rid))
        self._get_serves(rid)
        took = time.perf_counter() - start
        self.serving = (rid, self.built[rid])
        return took

    def switch_to(self, rid: str) -> None:
        """Untimed: the same switch, for setup."""
        self.rollback(rid)

    def stop(self) -> None:
        """Every master and the listener under the floor's run dir."""
        for pidfile in Path(self.layout.run).glob("*.pid"):
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                continue

    # -- local --------------------------------------------------------------------------------

    def _build_local(self, commit: str, rid: str) -> None:
        lay = self.layout
        target = lay.release(rid)
        tarball = f"{lay.run}/{rid}.tar"
        self._git(cmd.archive(commit, tarball))
        Path(target).mkdir()
        subprocess.run(cmd.extract(tarball, target), check=True)
        os.unlink(tarball)
        os.symlink(self.venv, f"{target}/.venv")
        releases.install_helpers(Host(), target)
        self.built[rid] = commit

    def _start_and_switch_local(self, rid: str) -> None:
        lay, paths = self.layout, releases.Paths.of(self.layout)
        ready = releases.ready_dir(lay, rid)
        shutil.rmtree(ready, ignore_errors=True)
        os.mkdir(ready)
        os.makedirs(releases.metrics_dir(lay, rid), exist_ok=True)
        self._write_settings(rid)
        subprocess.run(
            self._gunicorn(rid),
            env=ENV,
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            marks = os.listdir(ready)
            if any(m.startswith("fail-") for m in marks):
                raise SystemExit(
                    f"a worker of the floor's {rid} was not ready; see {paths.app_log}"
                )
            if sum(m.startswith("ok-") for m in marks) >= self.workers:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the floor's master of {rid} did not boot; see {paths.app_log}")
            time.sleep(0.01)
        shutil.rmtree(ready)
        tmp = f"{lay.current}.tmp"
        os.symlink(f"releases/{rid}", tmp)
        os.replace(tmp, lay.current)
        old = self.serving[0] if self.serving else None
        if old and old != rid:
            pidfile = Path(releases.master_pidfile(lay, old))
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)  # drain, do not wait
            pidfile.unlink()

    # -- over SSH: one shell script -------------------------------------------------------------

    def _build_script(self, rid: str, tarball: str) -> str:
        target = self.layout.release(rid)
        return " && ".join(
            [
                shlex.join(["mkdir", target]),
                to_shell(cmd.extract(tarball, target)),
                shlex.join(["ln", "-s", self.venv, f"{target}/.venv"]),
                shlex.join(["mkdir", f"{target}/{cmd.HELPERS_DIR}"]),
                shlex.join(
                    [
                        "cp",
                        *(str(releases.HELPERS_SOURCE / name) for name in cmd.HELPERS),
                        f"{target}/{cmd.HELPERS_DIR}",
                    ]
                ),
            ]
        )

    def _switch_script(self, rid: str) -> str:
        """Start the master, wait for its workers' marks, switch, drain the old master."""
        lay = self.layout
        ready = releases.ready_dir(lay, rid)
        polls = int(READY_TIMEOUT_S / 0.01)
        quoted = shlex.quote(ready)
        parts = [
            shlex.join(["rm", "-rf", ready]),
            shlex.join(["mkdir", "-p", ready, releases.metrics_dir(lay, rid)]),
            to_shell(self._gunicorn(rid), env=ENV),
            f"n=0; while [ $(ls -A {quoted} | grep -c '^ok-') -lt {self.workers} ]; do "
            f"ls -A {quoted} | grep -q '^fail-' && exit 4; "
            f"n=$((n+1)); [ $n -lt {polls} ] || exit 3; sleep 0.01; done",
            shlex.join(["rm", "-rf", ready]),
            shlex.join(["ln", "-sfn", f"releases/{rid}", f"{lay.current}.tmp"]),
            shlex.join(["mv", "-T", f"{lay.current}.tmp", lay.current]),
        ]
        old = self.serving[0] if self.serving else None
        if old and old != rid:
            pidfile = shlex.quote(releases.master_pidfile(lay, old))
            parts.append(f'kill -TERM "$(cat {pidfile})" && rm -f {pidfile}')
        return " && ".join(parts)

    def _ssh(self, script: str, *, stdin: str | None = None) -> None:
        assert self.ssh is not None
        with open(stdin or os.devnull, "rb") as fh:
            res = subprocess.run(
                self.ssh.argv(script), stdin=fh, capture_output=True, text=True, timeout=120
            )
        if res.returncode != 0:
            raise SystemExit(f"floor over ssh exited {res.returncode}: {res.stderr.strip()[-300:]}")

    # -- shared -------------------------------------------------------------------------------

    def _run_here_or_there(self, argv: list[str]) -> None:
        if self.ssh is None:
            subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        else:
            self._ssh(to_shell(argv))

    def _gunicorn(self, rid: str) -> list[str]:
        lay, paths = self.layout, releases.Paths.of(self.layout)
        rdir, svc = lay.release(rid), self.service
        launch = cmd.Launch(
            control=paths.control,
            settings=paths.settings,
            pidfile=releases.master_pidfile(lay, rid),
            logfile=paths.app_log,
            ready_dir=releases.ready_dir(lay, rid),
            metrics_dir=releases.metrics_dir(lay, rid),
            release=rid,
        )
        return cmd.gunicorn(
            rdir,
            launch,
            app=svc.wsgi,
            service_dir=svc.path_in_release(rdir),
            worker_class=svc.worker_class,
            ready_path=svc.ready_path,
            asgi=svc.is_asgi,
            workers=self.workers,
        )

    def _write_settings(self, rid: str) -> None:
        """The release's settings file, as releases.write_settings writes it (mode 0600)."""
        release = releases.Release(rid, self.built[rid], "floor")
        path = releases.Paths.of(self.layout).settings
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(releases.settings_of(self.env, self.service, release), fh)

    def _git(self, argv: list[str]) -> None:
        subprocess.run(argv, cwd=self.root, check=True, capture_output=True)

    @property
    def version_path(self) -> str:
        return self.service.version or "/version"

    def _get_serves(self, rid: str) -> None:
        """GET the version path until the new release answers: the first one almost always does,
        since the old master stopped accepting before the switch returned."""
        deadline = time.monotonic() + 10
        while True:
            conn = http.client.HTTPConnection(self.bind, self.port, timeout=5)
            try:
                conn.request("GET", self.version_path, headers={"Connection": "close"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200 and json.loads(body)["release"] == rid:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"the floor's release {rid} never answered GET {self.version_path}"
                )
            time.sleep(0.005)


def venv_of(layout: Layout) -> str:
    """The venv the environment's serving release links (by its requirements' key)."""
    return os.readlink(f"{layout.current}/.venv")
