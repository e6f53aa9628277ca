"""Releases on a host: build from a git ref, share venvs by lock hash, start, switch, stop, prune."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from deploy import migrations, procs
from deploy.commands import app as cmd
from deploy.commands import files as filecmd
from deploy.commands import git as gitcmd
from deploy.config import EnvConfig, Project
from deploy.errors import ConfigError, MigrationError, ServiceError, UsageError
from deploy.hosts import CommandResult, Host, run_process
from deploy.runtime.native import port_is_free
from deploy.secrets import scrub
from deploy.service import Service
from deploy.settings import service_settings
from deploy.state import Layout

# the gunicorn a service that installs none gets, when the engine's own version is unknown
DEFAULT_GUNICORN = "gunicorn==23.0.0"
# the engine's stdlib-only helpers, copied into every release (cmd.HELPERS)
HELPERS_SOURCE = Path(__file__).resolve().parent / "runtime"


@dataclass(frozen=True)
class Release:
    id: str
    commit: str
    ref: str
    dirty: bool = False

    @property
    def short(self) -> str:
        return self.commit[:12]


# -- refs --------------------------------------------------------------------------------------


def _git(root: Path, argv: list[str]) -> CommandResult:
    return run_process(argv, cwd=root)


def resolve_ref(root: Path, ref: str) -> str:
    """The commit a ref names; a ref that names nothing is refused before anything changes."""
    if not ref or ref.startswith("-"):
        raise UsageError(f"bad ref {ref!r}", hint="give a branch, tag or commit, e.g. --ref v1.2.0")
    out = _git(root, gitcmd.rev_parse(ref))
    if out.exit_code != 0 or not out.stdout.strip():
        raise UsageError(
            f"ref {ref!r} names no commit in this repository",
            hint="check `git tag` / `git branch`, or fetch it first",
        )
    return out.stdout.strip()


def working_tree_dirty(root: Path) -> bool:
    return bool(_git(root, gitcmd.status_porcelain()).stdout.strip())


def snapshot_dirty(root: Path) -> str:
    """A commit object of the working tree's tracked changes (dev --allow-dirty), HEAD unmoved."""
    out = _git(root, gitcmd.stash_create("stageflow dev snapshot"))
    return out.stdout.strip() or resolve_ref(root, "HEAD")


def new_release_id(commit: str, taken: list[str]) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    rid = f"{stamp}-{commit[:8]}"
    n = 1
    while rid in taken:
        n += 1
        rid = f"{stamp}-{commit[:8]}-{n}"
    return rid


# -- build -------------------------------------------------------------------------------------


def engine_gunicorn() -> str:
    """The gunicorn a release's venv gets when the service does not install one itself: the
    engine's own version (the service's web server is stageflow's business, not the service's)."""
    try:
        return f"gunicorn=={metadata.version('gunicorn')}"
    except metadata.PackageNotFoundError:
        return DEFAULT_GUNICORN


def lock_hash(lock_text: str) -> str:
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    return hashlib.sha256(f"{ver}\n{lock_text}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VenvSpec:
    """What a release's venv is built from: the files pip reads (name, text), how pip is called,
    and the gunicorn added when the service lists none. Its key names the venv."""

    files: tuple[tuple[str, str], ...]
    mode: str  # "requirements" (pip install -r FILE) or "package" (pip install DIR)
    install: tuple[str, ...]  # pip install arguments
    cwd: str  # where pip runs: relative paths in a requirements file resolve from here
    gunicorn: str

    @property
    def key(self) -> str:
        parts = [f"mode {self.mode}", f"gunicorn {self.gunicorn}"]
        return lock_hash("\n".join(parts + [f"--- {n}\n{t}" for n, t in self.files]))


PYPROJECT_LOCKS = ("uv.lock", "poetry.lock", "requirements.lock")


def venv_spec(host: Host, service: Service, release_dir: str, commit: str) -> VenvSpec:
    """Read the service's requirements from the extracted release: a requirements file is
    installed with `-r`; a pyproject.toml installs the service's folder as a package, keyed by the
    pyproject and the lock file beside it (uv.lock, poetry.lock or requirements.lock)."""
    path = service.path_in_release(release_dir, service.requirements)
    text = host.read_text(path)
    if text is None:
        raise ServiceError(
            f"the service's requirements {service.repo_path(service.requirements)} are not in "
            f"commit {commit[:12]}",
            hint="commit that file, or point [service] requirements at the file the service "
            "installs from",
        )
    folder = str(PurePosixPath(path).parent)
    gunicorn = engine_gunicorn()
    if PurePosixPath(path).name != "pyproject.toml":
        files = ((service.requirements, text),)
        return VenvSpec(files, "requirements", ("-r", path), folder, gunicorn)
    files = [(service.requirements, text)]
    install = [folder]
    for name in PYPROJECT_LOCKS:
        lock = host.read_text(f"{folder}/{name}")
        if lock is not None:
            files.append((name, lock))
            if name == "requirements.lock":  # the one lock pip reads: the pins hold
                install = ["-r", f"{folder}/{name}", folder]
    return VenvSpec(tuple(files), "package", tuple(install), folder, gunicorn)


def install_helpers(host: Host, release_dir: str) -> str:
    """Copy the engine's stdlib-only helpers (listener, launcher, gunicorn hooks) into the
    release: the service's repository holds none of the engine."""
    target = f"{release_dir}/{cmd.HELPERS_DIR}"
    host.makedirs(target)
    for name in cmd.HELPERS:
        src = HELPERS_SOURCE / name
        if host.is_local:
            shutil.copyfile(src, f"{target}/{name}")
        else:
            host.put_file(src, f"{target}/{name}")
    return target


def archive(proj: Project, commit: str) -> Path:
    """git archive of the commit, made once on this machine and reused by every host."""
    build_dir = proj.root / ".stageflow" / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    tarball = build_dir / f"{commit}.tar"
    if not tarball.exists():
        tmp = build_dir / f".{commit}.{os.getpid()}.{threading.get_ident()}.tar"
        out = _git(proj.root, gitcmd.archive(commit, output=tmp))
        if out.exit_code != 0:
            raise ServiceError(f"git archive {commit[:12]} failed: {out.stderr.strip()[:200]}")
        os.replace(tmp, tarball)
    return tarball


def migrations_at_commit(
    proj: Project, commit: str, subdir: str | None = None
) -> list[migrations.MigrationFile]:
    """The SQL migration files of a commit (the service's migrations.dir unless subdir), read
    without a checkout and without building anything (a deploy checks them before its guards); a
    malformed file is bad input (ConfigError, exit 2). A service whose own tool migrates
    (kind "command" or "none") has none."""
    svc = proj.service
    if subdir is None:
        if svc.migrations.kind != "sql":
            return []
        subdir = svc.repo_path(svc.migrations.dir)
    # a commit's files never change: a deploy reads them before its guards and again to migrate
    key = (str(proj.root), commit, subdir)
    if key not in _MIGRATIONS_AT:
        _MIGRATIONS_AT[key] = tuple(_read_migrations_at(proj, commit, subdir))
    return list(_MIGRATIONS_AT[key])


_MIGRATIONS_AT: dict[tuple[str, str, str], tuple[migrations.MigrationFile, ...]] = {}


def _read_migrations_at(proj: Project, commit: str, subdir: str) -> list[migrations.MigrationFile]:
    with tempfile.TemporaryDirectory(prefix="stageflow-migrations-") as tmp:
        tarball = Path(tmp) / "migrations.tar"
        if _git(proj.root, gitcmd.archive(commit, output=tarball, paths=[subdir])).ok:
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, filter="data")
        try:
            return migrations.discover(Path(tmp) / subdir)
        except MigrationError as err:
            raise ConfigError(f"{commit[:12]}: {err.message}", hint=err.hint) from None


def build(
    proj: Project,
    env: EnvConfig,
    host: Host,
    *,
    commit: str,
    ref: str,
    dirty: bool = False,
    layout: Layout | None = None,
    rid: str | None = None,
) -> Release:
    """git archive of the commit, extracted into releases/<id>, with its venv linked by the hash of
    the service's requirements and the engine's helpers copied into <id>/.stageflow.

    Several hosts share one release id (rid) and one archive; each host gets it uploaded once.
    """
    layout = layout or Layout(str(env.data_dir))
    host.makedirs(layout.releases, layout.venvs, layout.run, layout.logs)
    rid = rid or new_release_id(commit, host.listdir(layout.releases))
    tarball = archive(proj, commit)
    target = layout.release(rid)
    staging_dir = target + ".partial"
    host.remove_tree(staging_dir)
    host.makedirs(staging_dir)
    remote_tar = str(tarball) if host.is_local else f"{layout.run}/{commit}.tar"
    if not host.is_local:
        host.put_file(tarball, remote_tar)
    host.run(cmd.extract(remote_tar, staging_dir))
    if not host.is_local:
        host.remove_tree(remote_tar)
    venv = ensure_venv(host, layout, venv_spec(host, proj.service, staging_dir, commit))
    host.symlink(venv, f"{staging_dir}/.venv")
    install_helpers(host, staging_dir)
    meta = {
        "id": rid,
        "commit": commit,
        "ref": ref,
        "dirty": dirty,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    host.write_text(f"{staging_dir}/RELEASE.json", json.dumps(meta, indent=2))
    host.rename(staging_dir, target)  # a release dir exists only when complete
    return Release(rid, commit, ref, dirty)


def venv_cache(host: Host) -> str:
    """Built venvs kept per host, by lock hash; each environment still gets a copy of its own."""
    if host.is_local:
        return str(Path.home() / ".cache" / "stageflow" / "venvs")
    return ".cache/stageflow/venvs"  # relative to the SSH user's home


def ensure_venv(host: Host, layout: Layout, spec: VenvSpec) -> str:
    """One venv per requirements hash: a deploy that changes no dependency installs nothing, and
    a second environment on the same host copies the host's cached build instead of installing."""
    digest = spec.key
    venv = f"{layout.venvs}/{digest}"
    if host.exists(f"{venv}/.complete"):
        return venv
    cached = f"{venv_cache(host)}/{digest}"
    if not host.exists(f"{cached}/.complete"):
        building = f"{cached}.tmp-{os.getpid()}"
        host.remove_tree(building)
        host.makedirs(venv_cache(host))
        python = sys.executable if host.is_local else "python3"
        host.run(cmd.venv_create(python, building), timeout=120)
        host.run(cmd.pip_install(building, spec.install), timeout=600, cwd=spec.cwd)
        # gunicorn runs the service: the engine's, unless the service installed its own
        if not host.run(cmd.has_module(building, "gunicorn"), check=False).ok:
            host.run(cmd.pip_install(building, [spec.gunicorn]), timeout=300)
        host.write_text(f"{building}/.complete", "\n".join(n for n, _ in spec.files) + "\n")
        # a concurrent build may have won the rename; either copy is complete and equal
        if not host.run(filecmd.rename_onto(building, cached), check=False).ok:
            host.remove_tree(building)
    # the service runs `python -m gunicorn`, so the copy needs no rewritten script paths
    host.remove_tree(f"{venv}.partial")
    host.run(filecmd.copy_tree(cached, f"{venv}.partial"), timeout=300)
    host.rename(f"{venv}.partial", venv)
    return venv


def release_meta(host: Host, layout: Layout, rid: str) -> dict[str, Any] | None:
    text = host.read_text(f"{layout.release(rid)}/RELEASE.json")
    return json.loads(text) if text else None


def update_meta(host: Host, layout: Layout, rid: str, **fields: Any) -> None:
    """Add fields to a built release's RELEASE.json (the schema revisions it ran on, say)."""
    meta = {**(release_meta(host, layout, rid) or {}), **fields}
    host.write_text(f"{layout.release(rid)}/RELEASE.json", json.dumps(meta, indent=2))


def list_releases(host: Host, layout: Layout) -> list[str]:
    return [r for r in host.listdir(layout.releases) if not r.endswith(".partial")]


def current_release(host: Host, layout: Layout) -> str | None:
    target = host.readlink(layout.current)
    return PurePosixPath(target).name if target else None


def prune(host: Host, layout: Layout, *, keep: int, protect: set[str]) -> list[str]:
    """Drop the oldest releases beyond keep; never the current or the previous good one."""
    releases = list_releases(host, layout)
    removable = [r for r in releases if r not in protect]
    excess = len(releases) - keep
    pruned = []
    for rid in removable[: max(0, excess)]:
        host.remove_tree(layout.release(rid))
        pruned.append(rid)
    return pruned


# -- processes ---------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    return procs.alive(pid)


def _read_pid(host: Host, path: str) -> int | None:
    text = host.read_text(path)
    try:
        return int((text or "").split()[0])
    except (IndexError, ValueError):
        return None


def _alive(host: Host, pid: int | None) -> bool:
    if not pid:
        return False
    if host.is_local:
        return _pid_alive(pid)
    # over SFTP: no process spawned per check; a zombie is dead, as procs.alive says locally
    stat = host.read_text(f"/proc/{pid}/stat")
    if stat is None:
        return False
    try:
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except IndexError:
        return True


def _signal(host: Host, pid: int, sig: signal.Signals) -> None:
    if host.is_local:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        return
    host.run(cmd.kill(pid, sig), check=False)


@dataclass(frozen=True)
class Paths:
    control: str
    listener_pid: str
    settings: str
    app_log: str

    @classmethod
    def of(cls, layout: Layout) -> Paths:
        return cls(
            control=f"{layout.run}/listener.sock",
            listener_pid=f"{layout.run}/listener.pid",
            settings=f"{layout.shared}/service.json",
            app_log=f"{layout.logs}/app.log",
        )


def master_pidfile(layout: Layout, rid: str) -> str:
    return f"{layout.run}/app-{rid}.pid"


def ready_dir(layout: Layout, rid: str) -> str:
    return f"{layout.run}/ready-{rid}"


def metrics_dir(layout: Layout, rid: str) -> str:
    """Each worker of the release writes its response counters here, as <pid>.json."""
    return f"{layout.run}/metrics/{rid}"


def running_masters(host: Host, layout: Layout) -> dict[str, int]:
    """release id -> gunicorn master pid, for every master still alive."""
    out = {}
    for name in host.listdir(layout.run):
        if name.startswith("app-") and name.endswith(".pid"):
            rid = name[4:-4]
            pid = _read_pid(host, f"{layout.run}/{name}")
            if _alive(host, pid):
                out[rid] = pid  # type: ignore[assignment]
    return out


def settings_of(env: EnvConfig, service: Service, release: Release) -> dict[str, str]:
    """The service's environment for one release: its settings, and the commit it runs."""
    return {
        **service_settings(env, service, release=release.id),
        "STAGEFLOW_COMMIT": release.commit,
    }


def write_settings(
    host: Host, env: EnvConfig, service: Service, layout: Layout, release: Release
) -> str:
    """The settings as JSON in a file its owner alone reads: the launcher loads it into the
    environment, so no value travels on a command line (which every user on the host can read)."""
    path = Paths.of(layout).settings
    host.write_text(path, json.dumps(settings_of(env, service, release)), mode=0o600)
    return path


def ensure_listener(
    host: Host, env: EnvConfig, layout: Layout, release_dir: str, *, bind: str = "127.0.0.1"
) -> None:
    paths = Paths.of(layout)
    if _alive(host, _read_pid(host, paths.listener_pid)) and host.exists(paths.control):
        return
    if host.is_local and not port_is_free(env.app_port, bind):
        raise ServiceError(
            f"port {env.app_port} (APP_PORT in {env.file.name}) is taken by another process",
            hint="stop that process or change APP_PORT; nothing was switched",
        )
    python = f"{release_dir}/.venv/bin/python"
    res = host.run(
        cmd.listener(
            python,
            f"{release_dir}/{cmd.HELPERS_DIR}",
            port=env.app_port,
            control=paths.control,
            pidfile=paths.listener_pid,
            host=bind,
        ),
        timeout=20,
        check=False,
    )
    if not res.ok:
        raise ServiceError(
            f"{host.name}: the listener for {bind}:{env.app_port} did not start: {res.tail(1)}",
            hint="stop what holds that address and port, or change APP_PORT or the host's bind",
        )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if host.exists(paths.listener_pid) and host.exists(paths.control):
            return
        time.sleep(0.02)
    raise ServiceError(f"the listener for port {env.app_port} did not start")


def start(
    host: Host,
    env: EnvConfig,
    service: Service,
    layout: Layout,
    release: Release,
    *,
    workers: int,
    timeout_s: float = 45.0,
    bind: str = "127.0.0.1",
) -> int:
    """Start a gunicorn master for release on the shared socket; return once every worker loaded
    the service and answered its ready path in-process. A worker that did not answer halts the
    master before it accepts anything: the release is stopped and refused (ServiceError)."""
    rdir = layout.release(release.id)
    if not host.exists(f"{rdir}/{cmd.HELPERS_DIR}/launch.py"):
        install_helpers(host, rdir)  # a release built before the helpers shipped with it
    paths = Paths.of(layout)
    ensure_listener(host, env, layout, rdir, bind=bind)
    pidfile = master_pidfile(layout, release.id)
    old = _read_pid(host, pidfile)
    if _alive(host, old):
        return old  # type: ignore[return-value]
    ready = ready_dir(layout, release.id)
    host.remove_tree(ready)
    host.makedirs(ready, metrics_dir(layout, release.id))
    launch = cmd.Launch(
        control=paths.control,
        settings=write_settings(host, env, service, layout, release),
        pidfile=pidfile,
        logfile=paths.app_log,
        ready_dir=ready,
        metrics_dir=metrics_dir(layout, release.id),
        release=release.id,
    )
    argv = cmd.gunicorn(
        rdir,
        launch,
        app=service.wsgi,
        service_dir=service.path_in_release(rdir),
        worker_class=service.worker_class,
        ready_path=service.ready_path,
        asgi=service.is_asgi,
        workers=workers,
    )
    try:
        host.run(argv, env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, timeout=30)
        return _await_workers(host, env, layout, release, workers=workers, timeout_s=timeout_s)
    finally:
        host.remove_tree(ready)


def _marks(host: Host, ready: str) -> tuple[int, str | None]:
    """(workers that answered, the first failure's report or None)."""
    names = host.listdir(ready)
    failed = sorted(n for n in names if n.startswith("fail-"))
    if failed:
        return 0, (host.read_text(f"{ready}/{failed[0]}") or "").strip() or "no answer"
    return sum(1 for n in names if n.startswith("ok-")), None


def _await_workers(
    host: Host, env: EnvConfig, layout: Layout, release: Release, *, workers: int, timeout_s: float
) -> int:
    pidfile = master_pidfile(layout, release.id)
    ready = ready_dir(layout, release.id)
    log = Paths.of(layout).app_log
    seen: int | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answered, failure = _marks(host, ready)
        pid = _read_pid(host, pidfile) or seen
        if failure is not None:
            if pid:
                stop_master(host, pid)
            raise ServiceError(
                f"release {release.id} is not ready: {scrub(failure, env.secret_values())}",
                hint="check its migrations, settings and servers; the previous release still "
                "serves",
            )
        if answered >= workers and _alive(host, pid):
            return pid  # type: ignore[return-value]
        if seen and not _alive(host, seen):
            break  # the master halted: a worker could not load the service
        seen = pid
        time.sleep(0.03)
    pid = _read_pid(host, pidfile) or seen
    if pid:
        stop_master(host, pid)
    tail = (host.read_text(log) or "").strip().splitlines()[-2:]
    raise ServiceError(
        f"release {release.id} did not boot its workers: "
        f"{scrub(' | '.join(tail), env.secret_values())}",
        hint=f"see {log}; the previous release still serves",
    )


def stop_master(host: Host, pid: int, *, timeout_s: float = 25.0) -> None:
    """Graceful: TERM lets workers finish in-flight requests; queued ones go to the other master."""
    _signal(host, pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(host, pid):
            return
        time.sleep(0.03)
    _signal(host, pid, signal.SIGKILL)


def retire_others(host: Host, layout: Layout, keep: str, *, wait: bool = False) -> list[str]:
    """Drain every master but keep's. TERM stops their accepting at once and lets in-flight
    requests finish; the deploy need not wait for the exit unless asked."""
    retired = []
    for rid, pid in running_masters(host, layout).items():
        if rid != keep:
            if wait:
                stop_master(host, pid)
            else:
                _signal(host, pid, signal.SIGTERM)
            host.remove_tree(master_pidfile(layout, rid))
            retired.append(rid)
    return retired


def switch(host: Host, layout: Layout, release_id: str) -> None:
    host.switch_symlink(layout.current, f"releases/{release_id}")


def stop_on_host(host: Host, layout: Layout) -> list[str]:
    lines = []
    for rid, pid in running_masters(host, layout).items():
        stop_master(host, pid)
        lines.append(f"service {rid} stopped")
    paths = Paths.of(layout)
    lpid = _read_pid(host, paths.listener_pid)
    if _alive(host, lpid):
        _signal(host, lpid, signal.SIGTERM)  # type: ignore[arg-type]
        lines.append("listener stopped")
    for p in (paths.listener_pid, paths.control):
        host.remove_tree(p)
    return lines


def to_dict(release: Release) -> dict[str, Any]:
    return asdict(release)
