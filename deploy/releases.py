"""Releases on a host: build from a git ref, share venvs by lock hash, start, switch, stop, prune."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from packaging.version import InvalidVersion, Version

from deploy import git_archive, migrations, poetry, procs, requirements
from deploy.commands import files as filecmd
from deploy.commands import git as gitcmd
from deploy.commands import release as cmd
from deploy.config import EnvConfig, Project
from deploy.errors import (
    ConfigError,
    HostError,
    MigrationError,
    ServiceError,
    UsageError,
    clip,
)
from deploy.hosts import CommandResult, Host, run_process
from deploy.runtime.native import check_service_reach, port_is_free, service_interpreter
from deploy.secrets import Secret, scrub
from deploy.service import Service
from deploy.settings import service_settings
from deploy.state import Layout

# the gunicorn a service that installs none gets, when the engine's own version is unknown or
# older than GUNICORN_FLOOR (22.0 closed request-smuggling holes of the versions before it)
DEFAULT_GUNICORN = "gunicorn==23.0.0"
GUNICORN_FLOOR = "22.0"
BUILD_COMMAND_TIMEOUT_S = 900.0
# how much of a log's end a failure reads for its one line: the rest may be gigabytes
LOG_TAIL_BYTES = 256 * 1024
# the engine's stdlib-only helpers, copied into every release (cmd.HELPERS): the launcher's own
# in runtime/, and the secrets' matching it shares with the engine (redact.py) beside this file
HELPERS_SOURCE = Path(__file__).resolve().parent / "runtime"


def helper_source(name: str) -> Path:
    own = HELPERS_SOURCE / name
    return own if own.exists() else HELPERS_SOURCE.parent / name


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
        raise UsageError(
            f"bad ref {clip(ref)!r}", hint="give a branch, tag or commit, e.g. --ref v1.2.0"
        )
    out = _git(root, gitcmd.rev_parse(ref))
    if out.exit_code != 0 or not out.stdout.strip():
        raise UsageError(
            f"ref {clip(ref)!r} names no commit in this repository",
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
        version = metadata.version("gunicorn")
    except metadata.PackageNotFoundError:
        return DEFAULT_GUNICORN
    try:
        recent = Version(version) >= Version(GUNICORN_FLOOR)
    except InvalidVersion:
        recent = False
    return f"gunicorn=={version}" if recent else DEFAULT_GUNICORN


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
    interpreter: str = ""  # the Python the venv is made from, when not the engine's own
    # files written into the venv before pip runs (name, text): `{venv}` in install names it
    generated: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        parts = [f"mode {self.mode}", f"gunicorn {self.gunicorn}"]
        parts += [f"python {self.interpreter}"] if self.interpreter else []
        return lock_hash("\n".join(parts + [f"--- {n}\n{t}" for n, t in self.files]))


PYPROJECT_LOCKS = ("uv.lock", "poetry.lock", "requirements.lock")


_REMOTE_PYTHON: dict[str, str] = {}


def remote_python(host: Host) -> str:
    """The python an SSH host makes release venvs from (asked once per host and process): as
    root a system-wide one, which the service user can run; "python3" when the host says none."""
    key = str(host.address)
    if key not in _REMOTE_PYTHON:
        res = host.run(cmd.venv_python(), check=False, timeout=30)
        found = res.stdout.strip().splitlines() if res.ok else []
        _REMOTE_PYTHON[key] = found[-1] if found and found[-1].startswith("/") else "python3"
    return _REMOTE_PYTHON[key]


def venv_spec(
    host: Host,
    service: Service,
    release_dir: str,
    commit: str,
    object_of: Callable[[str], str] | None = None,
) -> VenvSpec:
    """Read the service's requirements from the extracted release: a requirements file is
    installed with `-r`; a pyproject.toml installs the service's folder as a package, keyed by the
    pyproject and the lock file beside it (uv.lock, poetry.lock or requirements.lock).
    object_of: a path of the repository -> the git object it is in the commit; a folder of the
    repository a requirements line installs (`./libs/shared`) keys the venv by it, so a change
    there builds a new one."""
    path = service.path_in_release(release_dir, service.requirements)
    text = _read_requirements(host, service, path, commit)
    folder = str(PurePosixPath(path).parent)
    gunicorn = engine_gunicorn()
    # as root, the service user runs the venv's python: one it can reach
    python = service_interpreter(service.user) if host.is_local else remote_python(host)
    if PurePosixPath(path).name != "pyproject.toml":
        files = requirement_files(host, release_dir, path, text, commit)
        files += _local_objects(service, files, object_of)
        return VenvSpec(files, "requirements", ("-r", path), folder, gunicorn, python)
    files = [(service.requirements, text)]
    install = [folder]
    for name in PYPROJECT_LOCKS:
        lock = host.read_text(f"{folder}/{name}")
        if lock is not None:
            files.append((name, lock))
            if name == "requirements.lock":  # the one lock pip reads: the pins hold
                install = ["-r", f"{folder}/{name}", folder]
            if name == "poetry.lock" and poetry.is_poetry(text):
                return _poetry_spec(host, folder, tuple(files), text, lock, (gunicorn, python))
    return VenvSpec(tuple(files), "package", tuple(install), folder, gunicorn, python)


def _poetry_spec(
    host: Host,
    folder: str,
    files: tuple[tuple[str, str], ...],
    pyproject: str,
    lock: str,
    engine: tuple[str, str],
) -> VenvSpec:
    """A poetry project: its main dependencies at the versions poetry.lock pins, and the project
    itself only when poetry could build it (an application seldom is a package)."""
    generated = (
        ("poetry-requirements.txt", poetry.requirements(pyproject)),
        ("poetry-constraints.txt", poetry.constraints(lock)),
    )
    install = ["-r", "{venv}/poetry-requirements.txt", "-c", "{venv}/poetry-constraints.txt"]
    if poetry.builds_a_package(pyproject, lambda path: host.exists(f"{folder}/{path}")):
        install.append(folder)
    gunicorn, python = engine
    return VenvSpec(files, "poetry", tuple(install), folder, gunicorn, python, generated)


def _local_objects(
    service: Service,
    files: tuple[tuple[str, str], ...],
    object_of: Callable[[str], str] | None,
) -> tuple[tuple[str, str], ...]:
    """(`local <path>`, its git object) for each folder or file of the repository a requirements
    line installs, but the service's own folder and those above it: its code is imported from the
    release itself (PYTHONPATH), never from the copy pip made."""
    if object_of is None:
        return ()
    folder = PurePosixPath(service.repo_path(service.requirements)).parent
    own = PurePosixPath(os.path.normpath(service.repo_path(".")))
    found: dict[str, str] = {}
    for _, text in files:
        for written in requirements.local_paths(text):
            if written.startswith("/"):
                continue  # outside the repository: nothing of the commit to key by
            path = PurePosixPath(os.path.normpath(folder / written))
            if path.parts[:1] == ("..",) or path == own or path in own.parents:
                continue
            found.setdefault(str(path), object_of(str(path)))
    return tuple((f"local {p}", obj) for p, obj in sorted(found.items()))


def object_in_commit(root: Path, commit: str) -> Callable[[str], str]:
    """path -> the tree (or blob) it is in the commit, "" when the commit has no such path."""

    def object_of(path: str) -> str:
        out = _git(root, gitcmd.object_at(commit, path))
        return out.stdout.strip() if out.ok else ""

    return object_of


def _read_requirements(host: Host, service: Service, path: str, commit: str) -> str:
    text = host.read_text(path)
    if text is None:
        raise ServiceError(
            f"the service's requirements {service.repo_path(service.requirements)} are not in "
            f"commit {commit[:12]}",
            hint="commit that file, or point [service] requirements at the file the service "
            "installs from",
        )
    return text


def image_requirements(
    host: Host, service: Service, release_dir: str, commit: str
) -> tuple[tuple[str, str], ...]:
    """For an image's build: the requirements file and the files it includes (none for a
    pyproject.toml, whose whole folder the image installs)."""
    path = service.path_in_release(release_dir, service.requirements)
    if PurePosixPath(path).name == "pyproject.toml":
        return ()
    text = _read_requirements(host, service, path, commit)
    return requirement_files(host, release_dir, path, text, commit)


def requirement_files(
    host: Host, release_dir: str, path: str, text: str, commit: str
) -> tuple[tuple[str, str], ...]:
    """The requirements file and every file it pulls in with `-r` or `-c` (relative to the file
    that names it, as pip reads them), each once, named by its path in the repository: a change
    in any of them is a new venv."""
    files: list[tuple[str, str]] = []
    seen, queue = {path}, [(path, text)]
    while queue:
        here, body = queue.pop(0)
        files.append((os.path.relpath(here, release_dir), body))
        for name in requirements.includes(body):
            target = os.path.normpath(str(PurePosixPath(here).parent / name))
            if target in seen:
                continue
            seen.add(target)
            included = host.read_text(target)
            if included is None:
                raise ServiceError(
                    f"{os.path.relpath(here, release_dir)} includes "
                    f"{os.path.relpath(target, release_dir)}, which is not in commit {commit[:12]}",
                    hint="commit that file, or correct the -r/-c line that names it",
                )
            queue.append((target, included))
    return tuple(files)


def install_helpers(host: Host, release_dir: str) -> str:
    """Copy the engine's stdlib-only helpers (listener, launcher, gunicorn hooks) into the
    release: the service's repository holds none of the engine."""
    target = f"{release_dir}/{cmd.HELPERS_DIR}"
    host.makedirs(target)
    for name in cmd.HELPERS:
        src = helper_source(name)
        if host.is_local:
            shutil.copyfile(src, f"{target}/{name}")
        else:
            host.put_file(src, f"{target}/{name}")
    return target


# The archives this process wrote, by path: (inode, size, mtime, ctime) as written. An archive
# found on disk that this process did not write, or that changed since, is made again: a file in
# the operator's folder is no evidence of what a commit holds (one edited after staging ran it
# would otherwise ship to prod under an approval of the commit).
_ARCHIVED: dict[Path, tuple[int, int, int, int]] = {}
_ARCHIVING = threading.Lock()


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def archive(proj: Project, commit: str) -> Path:
    """git archive of the commit, made once by this process and reused by every host."""
    build_dir = proj.root / ".stageflow" / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    tarball = build_dir / f"{commit}.tar"
    with _ARCHIVING:
        if tarball in _ARCHIVED and _ARCHIVED[tarball] == _stamp(tarball):
            return tarball
        tmp = build_dir / f".{commit}.{os.getpid()}.{threading.get_ident()}.tar"
        git_archive.write(proj.root, commit, tmp)
        os.replace(tmp, tarball)
        stamp = _stamp(tarball)
        if stamp is not None:
            _ARCHIVED[tarball] = stamp
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
    if host.is_local:
        check_service_reach(layout.releases, proj.service.user)
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
    if host.exists(f"{staging_dir}/.venv"):
        host.remove_tree(staging_dir)
        raise ServiceError(
            f"commit {commit[:12]} holds a .venv at the repository's root: a virtualenv does not "
            "belong in git, and a release keeps its own there",
            hint="git rm -r --cached .venv, add .venv/ to .gitignore, commit, and deploy again",
        )
    spec = venv_spec(host, proj.service, staging_dir, commit, object_in_commit(proj.root, commit))
    venv = ensure_venv(host, layout, spec)
    host.symlink(venv, f"{staging_dir}/.venv")
    install_helpers(host, staging_dir)
    host.makedirs(layout.shared)
    for argv in proj.service.build:
        _build_command(proj, env, host, layout, staging_dir, rid, argv)
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


def _build_command(
    proj: Project,
    env: EnvConfig,
    host: Host,
    layout: Layout,
    release_dir: str,
    rid: str,
    argv: Sequence[str],
) -> None:
    """One of [service] build in the release being built; a failure refuses the release before it
    migrates or serves anything, and the half-built directory goes."""
    res = _command_in(
        host,
        env,
        proj.service,
        layout,
        release_dir,
        rid,
        argv,
        timeout=BUILD_COMMAND_TIMEOUT_S,
        building=True,
    )
    if res.ok:
        return
    host.remove_tree(release_dir)
    raise ServiceError(
        f"{host.name}: the build command `{shlex.join(argv)}` exited {res.exit_code}: "
        f"{res.tail(2)}",
        hint="fix it ([service] build in stageflow.toml) and deploy again; the previous release "
        "still serves",
    )


_REMOTE_HOME: dict[str, str] = {}


def venv_cache(host: Host) -> str:
    """Built venvs kept per host, by lock hash; each environment still gets a copy of its own.
    Absolute on an SSH host too: pip runs in the service's folder, where a path relative to the
    login directory names nothing."""
    if host.is_local:
        return str(Path.home() / ".cache" / "stageflow" / "venvs")
    key = str(host.address)
    if key not in _REMOTE_HOME:
        res = host.run(cmd.home_dir(), check=False, timeout=30)
        home = res.stdout.strip() if res.ok else ""
        if not home.startswith("/"):
            raise ServiceError(
                f"{host.name}: cannot tell the SSH user's home for the venv cache",
                hint="give that user a home directory",
            )
        _REMOTE_HOME[key] = home
    return f"{_REMOTE_HOME[key]}/.cache/stageflow/venvs"


_OTHER_PYTHON = re.compile(r"requires a different Python: (\S+) not in '([^']+)'")


def pip_hint(said: str, python: str) -> str:
    """What to do when pip could not install the service: for a service that asks for another
    Python than the one its venv is made from, which one."""
    other = _OTHER_PYTHON.search(said)
    if other is None:
        return "check the requirements and that the host reaches the package index"
    return (
        f"the service asks for Python {other[2]} and its venv is made from {python} "
        f"({other[1]}): run stageflow from a virtualenv made with a Python that fits (as root, a "
        "system-wide python3 of that version is used), or widen requires-python"
    )


def ensure_venv(host: Host, layout: Layout, spec: VenvSpec) -> str:
    """One venv per requirements hash: a deploy that changes no dependency installs nothing, and
    a second environment on the same host copies the host's cached build instead of installing."""
    digest = spec.key
    venv = f"{layout.venvs}/{digest}"
    if host.exists(f"{venv}/.complete"):
        return venv
    cached = f"{venv_cache(host)}/{digest}"
    if not host.exists(f"{cached}/.complete"):
        building = f"{cached}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # hosts may share a home
        host.remove_tree(building)
        host.makedirs(venv_cache(host))
        python = spec.interpreter or (sys.executable if host.is_local else "python3")
        host.run(cmd.venv_create(python, building), timeout=120)
        for name, text in spec.generated:
            host.write_text(f"{building}/{name}", text)
        install = [arg.replace("{venv}", building) for arg in spec.install]
        res = host.run(cmd.pip_install(building, install), timeout=600, cwd=spec.cwd, check=False)
        if not res.ok:
            host.remove_tree(building)  # no half-built venv stays in the cache
            raise HostError(
                f"{host.name}: pip could not install the service's "
                f"{spec.files[0][0] if spec.files else 'requirements'}: {res.tail(2)}",
                host=host.name,
                hint=pip_hint(res.tail(2), python),
            )
        # gunicorn runs the service: the engine's, unless the service installed its own
        if not host.run(cmd.has_module(building, "gunicorn"), check=False).ok:
            host.run(cmd.pip_install(building, [spec.gunicorn]), timeout=300)
        host.write_text(f"{building}/.complete", "\n".join(n for n, _ in spec.files) + "\n")
        # a concurrent build may have won the rename; either copy is complete and equal
        if not host.run(filecmd.rename_onto(building, cached), check=False).ok:
            host.remove_tree(building)
    host.remove_tree(f"{venv}.partial")
    # hard links: a venv is never written in place (pip runs only in the cache; the scripts below
    # and Python's bytecode are replaced by rename, which gives the copy its own file), so the
    # environment's copy costs directories, not a second 100 MB; a copy across filesystems
    if not host.run(filecmd.link_tree(cached, f"{venv}.partial"), check=False, timeout=300).ok:
        host.remove_tree(f"{venv}.partial")
        host.run(filecmd.copy_tree(cached, f"{venv}.partial"), timeout=300)
    # the service's own commands (alembic, flask, celery...) are scripts naming the python of the
    # venv they were installed into: point them at this copy's, where it will live
    python = sys.executable if host.is_local else "python3"
    host.run(
        filecmd.retarget_scripts(python, f"{venv}.partial/bin", f"{venv}/bin/python"), timeout=60
    )
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


def started(host: Host, layout: Layout, rid: str, pid: int | str) -> str:
    """What a start step says: the web master's pid, and each process of the release that
    runs beside it (`master pid 41; worker pid 40`)."""
    procs = [
        f"{p.name} pid {p.pid}"
        for p in processes_on_host(host, layout)
        if p.release == rid and p.up
    ]
    return f"master pid {pid}" + "".join(f"; {p}" for p in procs)


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


def _proc_text(host: Host, pid: int, what: str) -> str | None:
    try:
        return host.read_text(f"/proc/{pid}/{what}")
    except (OSError, UnicodeDecodeError):
        return None  # gone meanwhile, or not ours to read


def started_file(layout: Layout, rid: str) -> str:
    """Which process stageflow started for a release's master: "<pid> <start time>"."""
    return f"{layout.run}/app-{rid}.started"


def record_started(host: Host, layout: Layout, rid: str, pid: int) -> None:
    started = procs.start_time(_proc_text(host, pid, "stat"))
    if started:
        host.write_text(started_file(layout, rid), f"{pid} {started}\n", mode=0o600)


def confirmed(host: Host, pid: int | None, *, pidfile: str, started: str | None = None) -> bool:
    """pid is the live process stageflow started, not whatever a pid file names: the start time
    recorded when it came up matches, or (nothing recorded) its command line names its pid file.
    A pid file is only a claim; the process is signalled only when this holds."""
    if not _alive(host, pid):
        return False
    record = (host.read_text(started) or "").split() if started else []
    if len(record) == 2:
        return record[0] == str(pid) and record[1] == procs.start_time(
            _proc_text(host, pid, "stat")  # type: ignore[arg-type]
        )
    # a retiring master's file (app-<rid>~<pid>.pid) was moved aside: its command line names
    # the file it was started with, and the moved file's name holds the pid itself
    folder, _, name = pidfile.rpartition("/")
    base, tilde, moved = name.removesuffix(".pid").rpartition("~")
    if tilde and moved != str(pid):
        return False
    started_with = f"{folder}/{base}.pid" if tilde else pidfile
    return started_with in (_proc_text(host, pid, "cmdline") or "").split("\0")  # type: ignore[arg-type]


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
    files: str  # the service's own writable directory (STAGEFLOW_FILES_DIR)

    @classmethod
    def of(cls, layout: Layout) -> Paths:
        return cls(
            control=f"{layout.run}/listener.sock",
            listener_pid=f"{layout.run}/listener.pid",
            settings=f"{layout.shared}/service.json",
            app_log=f"{layout.logs}/app.log",
            files=f"{layout.shared}/files",
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
            pidfile = f"{layout.run}/{name}"
            pid = _read_pid(host, pidfile)
            if confirmed(host, pid, pidfile=pidfile, started=started_file(layout, rid)):
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


def hidden_settings(env: EnvConfig) -> tuple[str, ...]:
    """The settings (service_settings) whose values a process's log never shows: the
    environment's secrets by name. DATABASE_URL and REDIS_URL hold the passwords among them."""
    return tuple(sorted({k for k, _ in env.secrets}))


def secret_forms(env: EnvConfig) -> list[Secret]:
    """The environment's secrets as they may appear in output: as they are, and percent-encoded
    (the form a password takes inside DATABASE_URL or REDIS_URL)."""
    found = list(env.secret_values())
    found += [Secret(quote(s.reveal(), safe="")) for s in env.secret_values()]
    return found


def ensure_helpers(host: Host, release_dir: str) -> None:
    # a release built before the helpers (or one of them, redact.py) shipped with it: the
    # engine's launcher names options an older one does not know
    if not all(host.exists(f"{release_dir}/{cmd.HELPERS_DIR}/{name}") for name in cmd.HELPERS):
        install_helpers(host, release_dir)


def service_command(
    host: Host,
    env: EnvConfig,
    service: Service,
    layout: Layout,
    rid: str,
    argv: Sequence[str],
    *,
    timeout: float,
    extra_env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run one of the service's commands in release rid on host: the release's venv first on
    PATH, the service's dir as cwd, the service's settings (for env, which may be a database
    beside the live one) as its environment. The settings go into a private file for this one
    command, which launch.py loads, so over SSH only that file's path is on the command line;
    extra_env holds names that are no secret. The output comes back scrubbed of every secret."""
    return _command_in(
        host,
        env,
        service,
        layout,
        layout.release(rid),
        rid,
        argv,
        timeout=timeout,
        extra_env=extra_env,
    )


def _command_in(
    host: Host,
    env: EnvConfig,
    service: Service,
    layout: Layout,
    release_dir: str,
    rid: str,
    argv: Sequence[str],
    *,
    timeout: float,
    extra_env: Mapping[str, str] | None = None,
    building: bool = False,
) -> CommandResult:
    """service_command in release_dir, which may be a release still being built (building: the
    command may write into it)."""
    ensure_helpers(host, release_dir)
    settings = f"{layout.shared}/command-{uuid.uuid4().hex[:12]}.json"
    host.write_text(settings, json.dumps(service_settings(env, service, release=rid)), mode=0o600)
    try:
        res = host.run(
            cmd.service_command(
                release_dir,
                list(argv),
                settings=settings,
                cwd=service.path_in_release(release_dir),
                env=sorted((extra_env or {}).items()),
                user=service.user,
                files=Paths.of(layout).files,
                build_tree=release_dir if building else "",
            ),
            check=False,
            timeout=timeout,
        )
    finally:
        host.remove_tree(settings)
    hide = secret_forms(env)
    return replace(res, stdout=scrub(res.stdout, hide), stderr=scrub(res.stderr, hide))


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
    ensure_helpers(host, rdir)
    ensure_listener(host, env, layout, rdir, bind=bind)
    pidfile = master_pidfile(layout, release.id)
    old = _read_pid(host, pidfile)
    if confirmed(host, old, pidfile=pidfile, started=started_file(layout, release.id)):
        # serving already (a switch back): its processes too, unless one of them died
        start_processes(host, env, service, layout, release)
        return old  # type: ignore[return-value]
    host.remove_tree(started_file(layout, release.id))
    # the processes start before the switch, while the web master boots (their settling time
    # overlaps its workers' boot): a process that cannot start, or a master that cannot, refuses
    # the release while the previous one still serves, with its own processes
    spawned = spawn_processes(host, env, service, layout, release)
    try:
        pid = _launch_master(
            host, env, service, layout, release, workers=workers, timeout_s=timeout_s,
            between=lambda: spawned.look(host, layout, release.id),
        )  # fmt: skip
    except BaseException:
        if spawned.started:
            stop_processes(host, layout, only=release.id)
        raise
    try:
        settle_processes(host, env, layout, release, spawned)
    except ServiceError:
        stop_master(host, pid)
        host.remove_tree(pidfile)
        raise
    return pid


def _launch_master(
    host: Host,
    env: EnvConfig,
    service: Service,
    layout: Layout,
    release: Release,
    *,
    workers: int,
    timeout_s: float,
    between: Callable[[], None] = lambda: None,
) -> int:
    """gunicorn for release through the launcher, its workers awaited (see start); between is
    called while they boot."""
    rdir = layout.release(release.id)
    paths = Paths.of(layout)
    pidfile = master_pidfile(layout, release.id)
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
        secrets=hidden_settings(env),
    )
    argv = cmd.gunicorn(
        rdir,
        launch,
        app=service.wsgi,
        service_dir=service.path_in_release(rdir),
        worker_class=service.worker_class,
        ready_path=service.ready_path,
        ready_redirects=service.ready_redirects,
        asgi=service.is_asgi,
        workers=workers,
        user=service.user,
        files=paths.files,
    )
    try:
        host.run(argv, env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, timeout=30)
        pid = _await_workers(
            host, env, service, layout, release, workers=workers, timeout_s=timeout_s,
            between=between,
        )  # fmt: skip
    finally:
        host.remove_tree(ready)
    return pid


_MARK = re.compile(r"(ok|fail)-[0-9]+")


# the report gunicorn_conf.child_exit leaves for a worker that exited before it answered
EXITED_BEFORE_READY = "a worker exited before it answered the ready path"


def _marks(host: Host, ready: str) -> tuple[int, str | None]:
    """(workers that answered, the first failure's report or None)."""
    # a mark is "<ok|fail>-<pid>"; anything else (a mark still being written) is not one yet
    names = [n for n in host.listdir(ready) if _MARK.fullmatch(n)]
    failed = sorted(n for n in names if n.startswith("fail-"))
    if failed:
        return 0, (host.read_text(f"{ready}/{failed[0]}") or "").strip() or "no answer"
    return sum(1 for n in names if n.startswith("ok-")), None


_TAG = re.compile(r"<[^<>]{0,200}>")


def one_line(answer: str, limit: int = 160) -> str:
    """A worker's report of its ready answer ("400 <html>...") as one line: markup dropped,
    whitespace collapsed, clipped."""
    return clip(" ".join(_TAG.sub(" ", answer).split()), limit)


def not_ready_hint(failure: str, ready_path: str) -> str:
    """What to check when a worker's probe of the ready path failed: a path the service does not
    route (404, 405) is stageflow.toml's to fix, anything else the release's."""
    status = failure.split(" ", 1)[0]
    if status in ("404", "405"):
        return (
            f"the service has no GET {ready_path}: set [service] health (and ready) in "
            "stageflow.toml to a path that answers 2xx; the previous release still serves"
        )
    if status.startswith("3") and status.isdigit():
        return (
            f"[service] ready ({ready_path}) redirected: a ready path of its own must answer 2xx; "
            "set it to a path that does, or remove it to let the health path stand in (which may "
            "redirect); the previous release still serves"
        )
    if status == "400" or "DisallowedHost" in failure:
        return (
            "the service refused the request as a whole, often for its Host header: the probes "
            "ask as localhost and 127.0.0.1, which an allowed-hosts setting (Django's "
            "ALLOWED_HOSTS) must include; the previous release still serves"
        )
    return "check its migrations, settings and servers; the previous release still serves"


def _await_workers(
    host: Host,
    env: EnvConfig,
    service: Service,
    layout: Layout,
    release: Release,
    *,
    workers: int,
    timeout_s: float,
    between: Callable[[], None] = lambda: None,
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
            _halt(host, pidfile, pid)
            hint = not_ready_hint(failure, service.ready_path)
            if failure.startswith(EXITED_BEFORE_READY):  # why is in the service's log
                raised, why = _why_exited(host, log)
                failure, hint = f"{failure}: {why}", boot_hint(raised, env, service, log)
            said = one_line(scrub(failure, env.secret_values()))
            raise ServiceError(f"release {release.id} is not ready: {said}", hint=hint)
        if answered >= workers and _alive(host, pid):
            record_started(host, layout, release.id, pid)  # type: ignore[arg-type]
            return pid  # type: ignore[return-value]
        if seen and not _alive(host, seen):
            break  # the master halted: a worker could not load the service
        seen = pid
        between()
        time.sleep(0.03)
    _halt(host, pidfile, _read_pid(host, pidfile) or seen)
    raised, said = _why_in_log(host, log)
    raise ServiceError(
        f"release {release.id} did not boot its workers: {scrub(said, env.secret_values())}",
        hint=boot_hint(raised, env, service, log),
    )


def _why_in_log(host: Host, log: str) -> tuple[str, str]:
    """(the exception line of the log's last traceback or "", what to say: that line, or the
    log's last two lines)."""
    lines = (host.read_text(log, last_bytes=LOG_TAIL_BYTES) or "").strip().splitlines()[-400:]
    raised = raised_in(lines)
    return raised, raised or " | ".join(lines[-2:])


# a line gunicorn itself logs: "[2026-12-02 13:33:50 +0000] [22274] [ERROR] ..."
_GUNICORN_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [^]]*\] \[\d+\] \[[A-Z]+\] ")


def _why_exited(host: Host, log: str) -> tuple[str, str]:
    """(exception line or "", what to say) for a worker that exited before it answered: the
    traceback's last line, else the last line not gunicorn's own since the last worker booted
    (what the service printed as it exited), else gunicorn's word on the exit."""
    lines = (host.read_text(log, last_bytes=LOG_TAIL_BYTES) or "").strip().splitlines()[-400:]
    raised = raised_in(lines)
    if raised:
        return raised, raised
    booted = [i for i, ln in enumerate(lines) if "Booting worker with pid" in ln]
    since = lines[booted[-1] + 1 :] if booted else lines
    own = [ln.strip() for ln in since if ln.strip() and not _GUNICORN_LINE.match(ln)]
    exits = [ln for ln in since if "exited with code" in ln or "was sent" in ln]
    said = own[-1] if own else _GUNICORN_LINE.sub("", exits[0]) if exits else "see the log"
    return "", clip(said, 200)


# the line a Python traceback ends with: the exception's (dotted) name, and its message if any
_RAISED = re.compile(r"^[A-Za-z_][\w.]*(?::\s.*)?$")
# a setting read without a default that the environment lacks: os.environ["X"], django-environ's
# "Set the X environment variable", environs' 'Environment variable "X" not set', python-decouple's
# "X not found. Declare it as envvar or define a default value."
_MISSING_NAME = re.compile(
    r"^(?:KeyError: '([A-Z][A-Z0-9_]*)'"
    r"|[\w.]*ImproperlyConfigured: Set the ([A-Z][A-Z0-9_]*) environment variable"
    r"|[\w.]*EnvError: Environment variable \"([A-Z][A-Z0-9_]*)\" not set"
    r"|[\w.]*UndefinedValueError: ([A-Z][A-Z0-9_]*) not found\.)"
)
# a write the release refused: permission denied (13) or a read-only file system (30)
_NOT_WRITABLE = re.compile(r"^(PermissionError|OSError|IsADirectoryError): \[Errno (13|30)\]")
# a database library asking for a PostgreSQL driver the requirements do not install (SQLAlchemy
# 2.1 connects a postgresql:// URL with psycopg 3 where 2.0 took psycopg2)
_NO_DRIVER = re.compile(r"^ModuleNotFoundError: No module named '(psycopg2|psycopg|asyncpg)'")
_DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}


# pydantic's ValidationError names each field on a line of its own, then says what is wrong on the
# next, indented, with the input in brackets (a whole settings dict for a missing field: secrets)
_VALIDATION = re.compile(r"^(?:[\w.]+\.)?(ValidationError: \d+ validation errors? for \w+)\s*$")
_FIELD_ERROR = re.compile(r"(?:^|: |; )([A-Za-z_]\w*): ([^;]*)")


def _validation_errors(head: str, after: Sequence[str]) -> str:
    """pydantic's "ValidationError: 2 validation errors for Settings" with each field and what
    is wrong with it, without the inputs: "...: PROJECT_NAME: Field required; ..."."""
    errors: list[str] = []
    field = ""
    for ln in after:
        if not ln.strip() or ln.startswith("    "):
            continue
        if not ln[0].isspace():
            if field:  # a field line with no message after it: the error's end
                break
            field = ln.strip()
        elif field:
            errors.append(f"{field}: {ln.strip().split(' [type=')[0]}")
            field = ""
    return f"{head}: {'; '.join(errors)}" if errors else head


def raised_in(lines: Sequence[str]) -> str:
    """The exception line of the last traceback in lines ("KeyError: 'SECRET_KEY'"), or "";
    for pydantic's ValidationError, with the fields it names and what is wrong with each."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if not starts:
        return ""
    for i, ln in enumerate(lines[starts[-1] + 1 :], start=starts[-1] + 1):
        if ln and not ln[0].isspace() and _RAISED.match(ln):
            invalid = _VALIDATION.match(ln.strip())
            if invalid:
                return clip(_validation_errors(invalid[1], lines[i + 1 :]), 300)
            return clip(ln.strip(), 200)
    return ""


def _field_errors(raised: str) -> list[tuple[str, str]]:
    """(field, what is wrong) of each field of a ValidationError line raised_in made."""
    if not raised.startswith("ValidationError: "):
        return []
    details = raised.partition(" for ")[2].partition(": ")[2]
    return [(f, said) for f, _, said in (e.partition(": ") for e in details.split("; ")) if said]


def _missing_setting(raised: str) -> str:
    """The setting a boot or a command found missing: KeyError's, or the first field pydantic
    calls required (its settings match names without case: the variable is upper-case)."""
    missing = _MISSING_NAME.match(raised)
    if missing:
        return next((g for g in missing.groups() if g), "")
    required = [f for f, said in _field_errors(raised) if said.startswith("Field required")]
    return required[0].upper() if required and required[0].isidentifier() else ""


def settings_hint(raised: str, env: EnvConfig, service: Service) -> str:
    """How to give this environment a setting the service's code could not load, or ""."""
    name = _missing_setting(raised)
    if name and name in service.secret_keys:
        return (
            f"{name} is one of the service's secrets and {env.name} has none: "
            f"`inv {env.name}.secrets --generate`, or set it in env/{env.name}.secrets.env"
        )
    if name and name in service.env_keys:
        return f"{name} is one of the service's settings: set it in env/{env.name}.env"
    if name:
        return (
            f"the service reads {name} from its environment: declare it in [service.env] keys "
            f"or secrets of stageflow.toml and set it for {env.name}"
        )
    invalid = {f.upper() for f, _ in _field_errors(raised)}
    if "ENVIRONMENT" in invalid and "ENVIRONMENT" not in dict(service.env_from):
        return (
            f"stageflow feeds ENVIRONMENT={env.environment}, which the service does not accept: "
            "declare a key of its own (APP_ENVIRONMENT) under [service.env] keys, set the value "
            f"it accepts in env/{env.name}.env, and map it in [service.env.from]: "
            'ENVIRONMENT = "APP_ENVIRONMENT"'
        )
    return ""


def boot_hint(raised: str, env: EnvConfig, service: Service, log: str) -> str:
    """Where to look; for a setting the service's code reads and this environment lacks, how to
    give it one."""
    given = settings_hint(raised, env, service)
    if given.startswith("the service reads "):
        return f"{given}; see {log}"
    if given:
        return given
    if _NOT_WRITABLE.match(raised):
        return (
            f"{read_only_hint(raised)} and log to stdout or stderr, which stageflow keeps in {log}"
        )
    driver = _NO_DRIVER.match(raised)
    if driver:
        package = _DRIVER_PACKAGES.get(driver[1], driver[1])
        return (
            f"the code connects to PostgreSQL through {driver[1]}, which the service's "
            f"requirements do not install: add {package} to them (SQLAlchemy 2.1 takes "
            "postgresql:// as psycopg 3; postgresql+psycopg2:// names the older driver where "
            f"the code builds its URL); see {log}"
        )
    return f"see {log} or `inv {env.name}.logs`"


def command_hint(raised: str, env: EnvConfig, service: Service) -> str:
    """How to fix what a service's command raised, when it says: a setting, a read-only write."""
    return settings_hint(raised, env, service) or read_only_hint(raised)


def read_only_hint(raised: str) -> str:
    """Where the service may write, when what it raised is a write the release refused; else ""."""
    if not _NOT_WRITABLE.match(raised):
        return ""
    return (
        "the release is read-only to the service: let it write files under the directory "
        "STAGEFLOW_FILES_DIR names (shared/files, kept from release to release; Django's "
        "MEDIA_ROOT, say)"
    )


def _halt(host: Host, pidfile: str, pid: int | None) -> None:
    """Stop a refused release's master and wait for it: the failing worker may have reported
    before the master wrote its pid file, and a master halting on its own takes a moment."""
    deadline = time.monotonic() + 2.0
    while not pid and time.monotonic() < deadline:
        time.sleep(0.03)
        pid = _read_pid(host, pidfile)
    if pid:
        stop_master(host, pid)
    host.remove_tree(pidfile)


def stop_master(host: Host, pid: int, *, timeout_s: float = 25.0) -> None:
    """Graceful: TERM lets workers finish in-flight requests; queued ones go to the other master."""
    _signal(host, pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(host, pid):
            return
        time.sleep(0.03)
    _signal(host, pid, signal.SIGKILL)


# How long a switch waits for the masters it drains to exit before anything probes the new
# release. A worker told to stop may still take connections off the shared socket until its
# server notices (uvicorn's worker looks once per 0.1 s tick), and answer for the old release; one
# still finishing a long request after this is left to finish on its own.
DRAIN_WAIT_S = 5.0


def retire_others(
    host: Host, layout: Layout, keep: str, *, wait: bool = False, drain_s: float = DRAIN_WAIT_S
) -> list[str]:
    """Drain every master but keep's: TERM lets in-flight requests finish. wait: until each
    exits (KILL after stop_master's timeout); else for at most drain_s, then on without them."""
    retired, draining = [], []
    for rid, pid in running_masters(host, layout).items():
        if rid != keep:
            if wait:
                stop_master(host, pid)
            else:
                _signal(host, pid, signal.SIGTERM)
                draining.append(pid)
            host.remove_tree(master_pidfile(layout, rid))
            host.remove_tree(started_file(layout, rid))
            retired.append(rid)
    deadline = time.monotonic() + drain_s
    # the processes of every other release stop once keep's started (start() came first); they
    # finish their work while the old masters drain, not after
    stop_processes(host, layout, keep=keep)
    while any(_alive(host, pid) for pid in draining) and time.monotonic() < deadline:
        time.sleep(0.03)
    return retired


def switch(host: Host, layout: Layout, release_id: str) -> None:
    host.switch_symlink(layout.current, f"releases/{release_id}")


def stop_on_host(host: Host, layout: Layout) -> list[str]:
    lines = stop_processes(host, layout)
    for rid, pid in running_masters(host, layout).items():
        stop_master(host, pid)
        lines.append(f"service {rid} stopped")
    paths = Paths.of(layout)
    lpid = _read_pid(host, paths.listener_pid)
    if confirmed(host, lpid, pidfile=paths.listener_pid):
        _signal(host, lpid, signal.SIGTERM)  # type: ignore[arg-type]
        lines.append("listener stopped")
    for p in (paths.listener_pid, paths.control):
        host.remove_tree(p)
    return lines


# -- the service's other processes ([service.processes]) -----------------------------------------

# A process of [service.processes] has started once it has run PROCESS_SETTLE_S and then slept for
# PROCESS_QUIET_S without using CPU (its program is loaded and it waits for work), or once it has run
# PROCESS_SETTLE_MAX_S however busy; one gone before that did not start: the release is refused.
PROCESS_SETTLE_S = 0.5
PROCESS_QUIET_S = 0.25
PROCESS_SETTLE_MAX_S = 5.0
# TERM lets a worker finish its job; one that is still there after this is killed.
PROCESS_GRACE_S = 10.0
PROCESS_RECORD = "processes.json"


@dataclass(frozen=True)
class ProcessState:
    """One process of [service.processes] on a host, as its pidfile and /proc tell."""

    name: str
    release: str
    pid: int | None
    up: bool  # alive, and running what stageflow started for that release

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_pidfile(layout: Layout, name: str, rid: str) -> str:
    return f"{layout.run}/proc-{name}-{rid}.pid"


def process_started(layout: Layout, name: str, rid: str) -> str:
    """`<pid> <start time>` of the process stageflow started, written once it came up: it names
    that process whatever its command line says later (a worker that sets its own title)."""
    return f"{layout.run}/proc-{name}-{rid}.started"


def process_log(layout: Layout, name: str) -> str:
    return f"{layout.logs}/{name}.log"


def _record_path(layout: Layout, rid: str) -> str:
    return f"{layout.release(rid)}/{cmd.HELPERS_DIR}/{PROCESS_RECORD}"


def recorded_processes(host: Host, layout: Layout, rid: str) -> dict[str, list[str]]:
    """name -> argv of the processes stageflow started for release rid (its record)."""
    try:
        data = json.loads(host.read_text(_record_path(layout, rid)) or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(k): v
        for k, v in data.items()
        if isinstance(v, list) and v and all(isinstance(a, str) for a in v)
    }


_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")  # env(1)'s NAME=value before its command


def _cmdline(host: Host, pid: int) -> list[str]:
    text = host.read_text(f"/proc/{pid}/cmdline") or ""
    return text.rstrip("\0").split("\0") if text else []


def _names_program(arg: str, program: str) -> bool:
    """arg is program as launch.py ran it: by the absolute path PATH (or the service's folder,
    for a relative one) gave it."""
    return arg == program or arg.endswith("/" + program.lstrip("./"))


def runs(host: Host, pid: int | None, argv: Sequence[str], *, started: str = "") -> bool:
    """pid is the process stageflow started: its start time is the one recorded in started when
    it came up (process_started) or, with no record, its /proc cmdline is argv as launch.py
    exec'd it (the program by the absolute path PATH gave it), or as the kernel ran a script of
    it (a console script such as `celery` or `rq`: the interpreter its #! line names, maybe one
    option, then the script). A pidfile naming any other process is not trusted, so a stale or
    planted one never makes stageflow signal a stranger."""
    if not pid or not _alive(host, pid):
        return False
    record = (host.read_text(started) or "").split() if started else []
    if len(record) == 2:
        return record[0] == str(pid) and record[1] == procs.start_time(
            _proc_text(host, pid, "stat")
        )
    got = _cmdline(host, pid)
    if not got:
        return False
    return any(_ran(got, a) for a in (list(argv), _after_env(argv)) if a)


def _after_env(argv: Sequence[str]) -> list[str]:
    """The command `env NAME=value ... command` runs once env(1) exec'd it; [] for no env."""
    if not argv or PurePosixPath(argv[0]).name != "env":
        return []
    rest = list(argv[1:])
    while rest and _ASSIGNMENT.match(rest[0]):
        rest.pop(0)
    return rest


def _ran(got: list[str], argv: list[str]) -> bool:
    rest = argv[1:]
    if got[1:] == rest and _names_program(got[0], argv[0]):
        return True
    cut = len(got) - len(rest)
    head = got[:cut]
    return got[cut:] == rest and len(head) in (2, 3) and _names_program(head[-1], argv[0])


def processes_on_host(host: Host, layout: Layout) -> list[ProcessState]:
    """Every process a pidfile of the run dir names, up only when it runs what was started."""
    releases = list_releases(host, layout)
    records: dict[str, dict[str, list[str]]] = {}
    out = []
    for fname in host.listdir(layout.run):
        if not (fname.startswith("proc-") and fname.endswith(".pid")):
            continue
        stem = fname[len("proc-") : -len(".pid")]
        rid = next((r for r in releases if stem.endswith(f"-{r}")), None)
        if rid is None:
            continue
        name = stem[: -len(rid) - 1]
        if rid not in records:
            records[rid] = recorded_processes(host, layout, rid)
        argv = records[rid].get(name)
        pid = _read_pid(host, f"{layout.run}/{fname}")
        up = bool(argv) and runs(host, pid, argv or [], started=process_started(layout, name, rid))
        out.append(ProcessState(name, rid, pid, up))
    return out


def process_status(host: Host, layout: Layout, service: Service) -> list[ProcessState]:
    """What `status` shows: every process with a pidfile, and each of the service's processes
    the serving release should have and does not."""
    found = processes_on_host(host, layout)
    current = current_release(host, layout)
    if current:
        have = {p.name for p in found if p.release == current}
        found += [
            ProcessState(n, current, None, False) for n, _ in service.processes if n not in have
        ]
    return sorted(found, key=lambda p: (p.name, p.release))


def start_processes(
    host: Host, env: EnvConfig, service: Service, layout: Layout, release: Release
) -> list[ProcessState]:
    """Start each process of [service.processes] for release (one that already runs it is
    kept), detached from the release's venv with the service's settings; then make sure none
    exits within PROCESS_SETTLE_S. One that does stops this release's processes and refuses the
    release with the tail of its log; other releases' processes are never touched here."""
    settle_processes(
        host, env, layout, release, spawn_processes(host, env, service, layout, release)
    )
    return [p for p in processes_on_host(host, layout) if p.release == release.id]


@dataclass
class Spawned:
    """Processes just started, when (time.monotonic()) they were, and since when each has been
    quiet: `look` watches them while the web master boots, settle_processes until they started."""

    started: dict[str, tuple[str, ...]]
    at: float
    # name -> (its processes' CPU ticks while all asleep, since when they stayed so)
    quiet: dict[str, tuple[tuple[tuple[int, int], ...] | None, float]] = field(default_factory=dict)

    def look(self, host: Host, layout: Layout, rid: str) -> None:
        """Note which started processes sleep without using CPU, and since when."""
        now = time.monotonic()
        for name in self.started:
            pid = _read_pid(host, process_pidfile(layout, name, rid))
            asleep = _asleep(host, pid) if pid else None
            if asleep is None or name not in self.quiet or self.quiet[name][0] != asleep:
                self.quiet[name] = (asleep, now)  # running, or asleep since now

    def settled(self) -> bool:
        now = time.monotonic()
        ran = now - self.at
        if ran >= PROCESS_SETTLE_MAX_S:
            return True
        return ran >= PROCESS_SETTLE_S and all(
            self.quiet.get(name, (None, now))[0] is not None
            and now - self.quiet[name][1] >= PROCESS_QUIET_S
            for name in self.started
        )


def spawn_processes(
    host: Host, env: EnvConfig, service: Service, layout: Layout, release: Release
) -> Spawned:
    """start_processes' first half: start what does not run yet, and return without waiting."""
    if not service.processes:
        return Spawned({}, 0.0)
    began = time.monotonic()
    rid, rdir = release.id, layout.release(release.id)
    ensure_helpers(host, rdir)
    host.write_text(_record_path(layout, rid), json.dumps(dict(service.processes)))
    settings = ""
    started: dict[str, tuple[str, ...]] = {}
    for name, argv in service.processes:
        pidfile, record = process_pidfile(layout, name, rid), process_started(layout, name, rid)
        if runs(host, _read_pid(host, pidfile), argv, started=record):
            continue
        host.remove_tree(record)
        settings = settings or write_settings(host, env, service, layout, release)
        res = host.run(
            cmd.service_process(
                rdir,
                argv,
                settings=settings,
                cwd=service.path_in_release(rdir),
                pidfile=pidfile,
                log=process_log(layout, name),
                env=[("STAGEFLOW_RELEASE", rid)],
                user=service.user,
                files=Paths.of(layout).files,
                secrets=hidden_settings(env),
            ),
            check=False,
            timeout=30,
        )
        if not res.ok:
            _refuse_processes(host, env, layout, rid, name, res.tail(1))
        _record_start(host, pidfile, record)
        started[name] = argv
    return Spawned(started, began)


def _record_start(host: Host, pidfile: str, record: str) -> None:
    """The process launch.py just started (its pidfile was written before the exec): its pid and
    start time, which no later change of its command line or reuse of its pid can fake."""
    pid = _read_pid(host, pidfile)
    began = procs.start_time(_proc_text(host, pid, "stat")) if pid else None
    if pid and began:
        host.write_text(record, f"{pid} {began}\n")


def settle_processes(
    host: Host, env: EnvConfig, layout: Layout, release: Release, spawned: Spawned
) -> None:
    """start_processes' second half: each started process must keep running until it has
    started (PROCESS_SETTLE_S, then PROCESS_QUIET_S without using CPU; or PROCESS_SETTLE_MAX_S).
    Quiet is the process and every process under it asleep (waiting on a socket, a timer, a
    child) with no CPU used: a wrapper waiting for its busy child is busy, so is a runnable
    process the machine's load keeps off the CPU, and one whose /proc cannot be read gets the
    maximum."""
    rid = release.id
    while spawned.started:
        for name, argv in spawned.started.items():
            pid = _read_pid(host, process_pidfile(layout, name, rid))
            if not runs(host, pid, argv, started=process_started(layout, name, rid)):
                log = process_log(layout, name)
                tail = (host.read_text(log, last_bytes=LOG_TAIL_BYTES) or "").strip().splitlines()
                _refuse_processes(host, env, layout, rid, name, process_failure(tail))
        spawned.look(host, layout, rid)
        if spawned.settled():
            break
        time.sleep(0.05)


_TREE_LIMIT = 256  # processes under one started process that settling looks at


def _asleep(host: Host, pid: int) -> tuple[tuple[int, int], ...] | None:
    """(pid, CPU ticks) of pid and every process under it when all are asleep; None when one
    runs or cannot be read (/proc/<pid>/task/<pid>/children names a thread's children)."""
    found, todo = [], [pid]
    while todo and len(found) < _TREE_LIMIT:
        p = todo.pop()
        ticks = procs.waiting(_proc_text(host, p, "stat"))
        children = _proc_text(host, p, f"task/{p}/children")
        if ticks is None or children is None:
            return None
        found.append((p, ticks))
        todo += [int(c) for c in children.split() if c.isdigit()]
    return tuple(sorted(found)) if not todo else None


# a line of a traceback that only points at a span of the line above (Python 3.11's ^^^^ and ~~~)
_CARETS = re.compile(r"^\s*[~^]+\s*$")


def process_failure(lines: Sequence[str]) -> str:
    """Why a process ended, from the last lines of its log: the exception of its last
    traceback, else its last two lines of text."""
    raised = raised_in(lines)
    if raised:
        return raised
    said = [ln.strip() for ln in lines if ln.strip() and not _CARETS.match(ln)]
    return " | ".join(said[-2:]) or "no output"


def _refuse_processes(
    host: Host, env: EnvConfig, layout: Layout, rid: str, name: str, why: str
) -> None:
    stop_processes(host, layout, only=rid)
    log = process_log(layout, name)
    # a program that could not be run at all never opened its log
    where = f"see {log}; " if host.exists(log) else ""
    raise ServiceError(
        f"{host.name}: process {name} of release {rid} did not start: "
        f"{scrub(why, secret_forms(env))}",
        hint=f"{where}the previous release and its processes still run",
    )


def stop_processes(
    host: Host,
    layout: Layout,
    *,
    keep: str | None = None,
    only: str | None = None,
    grace_s: float = PROCESS_GRACE_S,
) -> list[str]:
    """Stop the processes of every release but keep (or of release only): TERM, then KILL what
    is still there after grace_s. A pidfile whose pid runs anything else is dropped, never
    signalled."""
    chosen = [
        p
        for p in processes_on_host(host, layout)
        if (keep is None or p.release != keep) and (only is None or p.release == only)
    ]
    lines = []
    for p in chosen:
        if p.up and p.pid:
            _signal(host, p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    alive = [p for p in chosen if p.up and p.pid]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(host, p.pid)]
    for p in alive:
        argv = recorded_processes(host, layout, p.release).get(p.name, [])
        record = process_started(layout, p.name, p.release)
        if runs(host, p.pid, argv, started=record):  # still the same process, not a reused pid
            _signal(host, p.pid, signal.SIGKILL)  # type: ignore[arg-type]
    for p in chosen:
        host.remove_tree(process_pidfile(layout, p.name, p.release))
        host.remove_tree(process_started(layout, p.name, p.release))
        if p.up:
            lines.append(f"{p.name} {p.release} stopped (pid {p.pid})")
    return lines


def to_dict(release: Release) -> dict[str, Any]:
    return asdict(release)
