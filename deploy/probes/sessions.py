"""Where a release's database sessions are, asked of the servers while smoke's requests run.

Every session a release opens carries its application name (settings.application_name). The
guards compare the URLs stageflow knows; a service may still reach another environment's cluster
through a name of its own (a second database, a feed of a secret). pg_stat_activity cannot be
fooled so: the release's sessions should be on its own environment's cluster and must be on no
other environment's that this machine reaches.
"""

from __future__ import annotations

import importlib
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from deploy.config import EnvConfig, Project
from deploy.probes.cluster import IDENTIFIER_SQL
from deploy.settings import application_name

# autocommit: pg_stat_activity is read once per transaction, so each sample must be its own
SESSIONS_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()"
)
# a service that opens a connection per request holds it for that request only: sampled this
# often while the probes run, such a session is often seen (never seen is said, not failed); a
# pool's sessions are there throughout. Every 3 ms cost each smoke hundreds of queries on every
# cluster when the machine was busy and smoke slow; every 20 ms, a few dozen
INTERVAL_S = 0.02
CONNECT_TIMEOUT_S = 2


_preload: threading.Thread | None = None


def preload() -> None:
    """Load the driver in a thread while the release starts: the watch needs it, and loading it
    (0.1 s of CPU) then overlaps the wait for gunicorn's workers instead of adding to smoke."""
    global _preload
    if _preload is None:
        _preload = threading.Thread(
            target=importlib.import_module, args=("psycopg",), name="load-driver", daemon=True
        )
        _preload.start()


def _loopback(host: str) -> bool:
    """libpq's host names this machine: a socket directory, localhost or a loopback address."""
    host = host.strip().strip("[]").lower()
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def neighbours(proj: Project, name: str) -> list[EnvConfig]:
    """The other environments whose PostgreSQL runs on this machine: natively, or in a compose
    project on this machine that publishes it on loopback. The clusters a release of name must
    never be found on."""
    return [
        proj.envs[other]
        for other in sorted(proj.envs)
        if other != name and _here(proj, other) and _loopback(proj.envs[other].database.host)
    ]


def _here(proj: Project, name: str) -> bool:
    """name's PostgreSQL runs on this machine: the native runtime's servers always do (an SSH
    host's are reached through its URL, which names that machine); a compose project's when its
    one host is this machine (one on an SSH host publishes on that host's loopback, not ours)."""
    policy = proj.policies.get(name)
    if policy is None:
        return False
    if policy.runtime == "native":
        return True
    return policy.runtime == "compose" and all(h.is_local for h in policy.hosts)


# how many sessions carry the name on a cluster now; None when the cluster does not answer
Count = Callable[[str], int | None]


@dataclass
class Cluster:
    """One cluster the watch asks: whose it is, how it is asked, the most sessions it showed."""

    env: str
    count: Count
    close: Callable[[], None] = lambda: None
    # asked every INTERVAL_S while the probes run; False: only once they are over (each ask is a
    # command on another host, too dear for a tight loop: a pool's sessions are still there then)
    live: bool = True
    seen: int = 0
    answered: bool = False  # what a cluster that never answered says is "not checked"
    gone: bool = False  # stopped answering mid-probe: what it showed until then still counts


def connected(env: str, conn: Any) -> Cluster:
    """A cluster asked over an open connection (psycopg), which answered when it was opened."""
    import psycopg

    def count(name: str) -> int | None:
        try:
            row = conn.execute(SESSIONS_SQL, (name,)).fetchone()
        except psycopg.Error:
            return None
        return int(row[0]) if row else 0

    return Cluster(env, count, conn.close, answered=True)


def _connect(env: EnvConfig) -> tuple[Any, str]:
    """(connection, cluster identifier) as env's own role, through its DATABASE_URL."""
    import psycopg

    password = env.secret("POSTGRES_PASSWORD")
    extra = {"password": password.reveal()} if password else {}
    conn = psycopg.connect(
        env.database_url,
        connect_timeout=CONNECT_TIMEOUT_S,
        autocommit=True,
        application_name="stageflow-smoke",
        **extra,
    )
    row = conn.execute(IDENTIFIER_SQL).fetchone()
    return conn, str(row[0]) if row else ""


@dataclass
class Watch:
    """Samples, in a thread, how many sessions named after one release each cluster holds."""

    env: str
    release: str
    own: Cluster | None
    others: list[Cluster]
    not_asked: list[str]  # environments whose cluster did not answer: not checked
    opened_ms: float = 0.0
    settings_at: str = ""  # where env's service gets its database settings (settings_at())
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return application_name(self.env, self.release)

    def _clusters(self) -> list[Cluster]:
        return ([self.own] if self.own else []) + self.others

    def sample(self, *, last: bool = False) -> None:
        for cl in self._clusters():
            if cl.gone or not (cl.live or last):
                continue
            seen = cl.count(self.name)
            if seen is None:
                cl.gone = True
                continue
            cl.answered = True
            cl.seen = max(cl.seen, seen)

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            self.sample()

    def start(self) -> Watch:
        if not any(cl.live for cl in self._clusters()):
            return self  # nothing to ask while the probes run
        self._thread = threading.Thread(target=self._loop, name="smoke-sessions", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> tuple[bool, str]:
        """Stop sampling, take a last sample, close every connection: the verdict."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.sample(last=True)
        for cl in self._clusters():
            cl.close()
        return self.verdict()

    def verdict(self) -> tuple[bool, str]:
        found = [cl.env for cl in self.others if cl.seen]
        if found:
            return False, (
                f"a session of {self.env}'s release {self.release} is on {found[0]}'s database "
                f"cluster: {self.env}'s service reaches {found[0]}'s PostgreSQL (the settings "
                f"are {self.env}'s, not the release's: fix the one that points there, in "
                f"{self.settings_at or f'env/{self.env}.env or its secrets'}, before anything "
                f"of {self.env} serves again)"
            )
        checked = [cl.env for cl in self.others]
        rest = f"; none on {', '.join(checked)}'s" if checked else ""
        if self.not_asked:
            rest += f"; {', '.join(self.not_asked)}'s not reachable, not checked"
        if self.own is None or not self.own.answered:
            return True, f"{self.env}'s database did not answer: its sessions not checked{rest}"
        if not self.own.seen:
            return True, (
                f"no session of {self.release} observed on {self.env}'s database: the service may "
                f"not use it or closes connections at once{rest}"
            )
        return True, f"{self.own.seen} session(s) of {self.release} on {self.env}'s database{rest}"


def settings_at(project: Project, name: str) -> str:
    """Where environment name's service gets its database settings, for a verdict's advice: its
    env file and secrets; on the compose runtime, an `environment:` of a compose file too."""
    policy = project.policies.get(name)
    if policy is not None and policy.runtime == "compose":
        from deploy.commands.compose import compose_files

        return (
            f"env/{name}.env, its secrets or an environment: of {' or '.join(compose_files(name))}"
        )
    return f"env/{name}.env or its secrets"


def watch(
    env: EnvConfig,
    release: str,
    others: Iterable[EnvConfig],
    *,
    own_count: Count | None = None,
    settings: str = "",
) -> Watch:
    """Open one connection to env's cluster and one to each other environment's that answers,
    and start sampling. A cluster that is env's own under another name is not another's. With
    own_count, env's cluster is asked through it instead, once the probes are over: this
    machine does not reach that cluster (a compose project on an SSH host)."""
    import psycopg

    start = time.perf_counter()
    own = Cluster(env.name, own_count, live=False) if own_count else None
    mine = ""
    if own is None:
        try:
            conn, mine = _connect(env)
            own = connected(env.name, conn)
        except psycopg.Error:
            pass
    found: list[Cluster] = []
    not_asked: list[str] = []
    for other in others:
        try:
            conn, ident = _connect(other)
        except psycopg.Error:
            not_asked.append(other.name)
            continue
        if mine and ident == mine:
            conn.close()  # the guards refuse a shared cluster; here it is no evidence either way
            continue
        found.append(connected(other.name, conn))
    w = Watch(env.name, release, own, found, not_asked, settings_at=settings)
    w.opened_ms = (time.perf_counter() - start) * 1000
    return w.start()
