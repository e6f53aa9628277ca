"""Real OpenSSH servers for tests: one sshd per loopback address (127.0.0.2, ...), each its own host."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests import support

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sshd_available() -> bool:
    return (
        os.path.exists(SSHD) and os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen") is not None
    )


def can_run_sshd() -> tuple[bool, str]:
    """sshd must be installed and we must be root (it switches users to run commands)."""
    if not sshd_available():
        return False, "OpenSSH server (sshd) is not installed"
    if os.geteuid() != 0:
        return False, "sshd test servers need root"
    return True, ""


def free_port_on(address: str) -> int:
    return support.free_port(address)


def keygen(path: Path) -> Path:
    """An ed25519 key pair at path (private) and path.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stageflow-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in map(int, children):
        out += [child, *_descendants(child)]
    return out


@dataclass
class Sshd:
    """One sshd -D on address:port; stop() kills it and every connection it forked."""

    address: str
    port: int
    home: Path  # config, keys, pid file; and the deploy root of this host under home/"srv"
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen[bytes] | None = None
    registry: Path | None = field(default=None, repr=False)

    @property
    def destination(self) -> str:
        return f"root@{self.address}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "srv"

    def table(self, **extra: str) -> dict[str, str]:
        """This host as a stageflow.toml inline table."""
        return {
            "address": self.destination,
            "data_dir": str(self.data_dir),
            "bind": self.address,
            "identity_file": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            **extra,
        }

    def toml(self, **extra: str) -> str:
        items = ", ".join(f'{k} = "{v}"' for k, v in self.table(**extra).items())
        return "{" + items + "}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        # a fixed order: the listening socket exists before start() returns
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.home / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.home / "sshd.log", "ab"),  # noqa: SIM115 - sshd owns it until stop
            start_new_session=True,
        )
        if self.registry:
            support.REGISTRY.mkdir(exist_ok=True)
            self.registry.write_text(
                '{"owner": %d, "pids": [%d]}' % (os.getpid(), self.proc.pid)  # noqa: UP031
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.home / "sshd.log").read_text(errors="replace")[-400:]
                raise RuntimeError(f"sshd on {self.address}:{self.port} exited: {log}")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd on {self.address}:{self.port} did not listen")

    def stop(self) -> None:
        """Kill the server and every session it holds: the host is unreachable afterwards."""
        if self.proc is None:
            return
        pids = [self.proc.pid, *_descendants(self.proc.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None
        if self.registry:
            self.registry.unlink(missing_ok=True)


def make_sshd(
    base: Path, address: str, client_key: Path, *, env: dict[str, str] | None = None
) -> Sshd:
    """Configure (not start) an sshd on address that accepts root with client_key only; env:
    more variables for its sessions (sshd takes only the first SetEnv line, so they go in it)."""
    home = base / f"host-{address}"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)
    host_key = keygen(home / "ssh_host_ed25519_key")
    auth = home / "authorized_keys"
    auth.write_text(Path(f"{client_key}.pub").read_text())
    port = free_port_on(address)
    (home / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                f"ListenAddress {address}",
                f"HostKey {host_key}",
                f"PidFile {home / 'sshd.pid'}",
                f"AuthorizedKeysFile {auth}",
                "StrictModes no",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "Subsystem sftp internal-sftp",
                "MaxSessions 64",
                "MaxStartups 100",
                "LogLevel ERROR",
                "PrintMotd no",
                "PrintLastLog no",
                "UseDNS no",
                # bash sources ~/.bashrc for a command sshd runs when SHLVL is unset: this
                # machine's root runs `pyenv init` there, 0.12 CPU-s on each of the suite's ~800
                # remote commands. A host of the fleet is a plain server's shell instead.
                "SetEnv " + " ".join(f"{k}={v}" for k, v in {"SHLVL": "1", **(env or {})}.items()),
                "",
            ]
        )
    )
    pub = Path(f"{host_key}.pub").read_text().split()
    known = home / "known_hosts"
    known.write_text(f"[{address}]:{port} {pub[0]} {pub[1]}\n")
    registry = support.REGISTRY / f"{os.getpid()}-sshd-{address}-{port}.json"
    return Sshd(address, port, home, client_key, known, registry=registry)


@contextmanager
def fleet(base: Path, count: int, *, first: int = 2) -> Iterator[list[Sshd]]:
    """count running sshd hosts on 127.0.0.<first>...; all are killed on exit, even on failure."""
    # sshd refuses to start without its privilege separation directory
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    client_key = keygen(base / "client_key")
    hosts: list[Sshd] = []
    try:
        for i in range(count):
            h = make_sshd(base, f"127.0.0.{first + i}", client_key)
            hosts.append(h)
            h.start()
        yield hosts
    finally:
        for h in hosts:
            h.stop()


def set_hosts(root: Path, env: str, hosts: list[Sshd], **policy: str | int | float) -> list[Path]:
    """Point [environments.<env>] of root/stageflow.toml at hosts, plus policy keys; returns the
    hosts' data dirs, under root/.stageflow/hosts so the project's cleanup reaches them."""
    path = root / "stageflow.toml"
    lines = path.read_text().splitlines()
    start = lines.index(f"[environments.{env}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    keys = {"hosts", *policy}
    body = [ln for ln in lines[start + 1 : end] if ln.split("=")[0].strip() not in keys]
    dirs = [root / ".stageflow" / "hosts" / f"{env}-{h.address}" for h in hosts]
    tables = [h.toml(data_dir=str(d)) for h, d in zip(hosts, dirs, strict=True)]
    new = [f"hosts = [{', '.join(tables)}]"]
    for key, value in policy.items():
        new.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    lines[start + 1 : end] = new + body
    path.write_text("\n".join(lines) + "\n")
    return dirs


def shared_venv(lock: Path) -> Path:
    """One venv of the app's lock file that seed_venv links into hosts; built once per lock file
    and kept in the temp dir, so a later test run reuses it."""
    import fcntl

    venv = Path(tempfile.gettempdir()) / f"stageflow-test-venv-{venv_key(lock)}"
    # venv scripts carry their own path, so it is built in place; a file lock keeps two runs apart
    with open(f"{venv}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run(
                [host_python(), "-m", "venv", str(venv)], check=True, capture_output=True
            )
            subprocess.run(
                [str(venv / "bin/python"), "-m", "pip", "install", "-q", "-r", str(lock)],
                check=True,
                capture_output=True,
            )
            (venv / ".complete").write_text(lock.read_text())
    return venv


def host_python() -> str:
    """The python the loopback hosts make release venvs from (releases.remote_python): as root a
    system-wide one, which the service user can run."""
    from deploy.commands.release import SYSTEM_PYTHON_SH

    out = subprocess.run(["sh", "-c", SYSTEM_PYTHON_SH], capture_output=True, text=True)
    found = out.stdout.strip().splitlines()
    return found[-1] if found and found[-1].startswith("/") else "python3"


def venv_key(lock: Path) -> str:
    """The name a release's venv gets for the reference service's lock file (releases.VenvSpec)."""
    from deploy.releases import VenvSpec, engine_gunicorn

    files = (("app/requirements.lock", lock.read_text()),)
    return VenvSpec(files, "requirements", (), "", engine_gunicorn(), host_python()).key


def seed_venv(data_dir: Path, venv: Path, lock: Path) -> None:
    """Give a host the app's venv under its key, so its first build installs nothing: pip
    for every host would make the test minutes long (one host per test still builds for real)."""
    venvs = data_dir / "shared" / "venvs"
    venvs.mkdir(parents=True, exist_ok=True)
    link = venvs / venv_key(lock)
    if not link.exists():
        link.symlink_to(venv)


def kill_served(data_dir: Path) -> None:
    """Stop, by pid file, every listener and master a test left under a host's data dir."""
    for pidfile in data_dir.glob("run/*.pid"):
        try:
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


class StopsAfterPrimary:
    """A rollout printer that stops victim's sshd once the primary passed its first batch, so the
    failure lands mid-rollout; use it as a context manager, which starts the sshd again."""

    def __init__(self, primary: Sshd, victim: Sshd) -> None:
        self.primary, self.victim = primary, victim
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if f"{self.primary.destination} ok (batch 1/" in line:
            self.victim.stop()

    def __enter__(self) -> StopsAfterPrimary:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.victim.running:
            self.victim.start()
