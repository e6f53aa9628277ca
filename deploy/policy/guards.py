"""Preflight checks: each returns a Check(name, ok, detail); one that cannot decide refuses."""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from deploy.commands import files as filecmd
from deploy.config import EnvConfig, HostSpec, Project, host_spec
from deploy.errors import GuardRefused, HostError
from deploy.hosts import Host, host_from_spec

# (host address, environment) -> that environment's home on the host, resolved there
Homes = Mapping[tuple[str, str], str]
REALPATH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def run_checks(checks: Iterable[tuple[str, Callable[[], Check]]]) -> list[Check]:
    """Run every check; one that raises counts as refused (fail closed), never as passed."""
    out = []
    for name, fn in checks:
        try:
            result = fn()
            if not isinstance(result, Check):
                result = Check(name, False, "check returned no verdict")
        except Exception as exc:  # noqa: BLE001 - a guard that cannot decide refuses
            result = Check(name, False, f"could not decide ({exc.__class__.__name__}): refusing")
        out.append(result)
    return out


def require(checks: list[Check]) -> None:
    failed = [c for c in checks if not c.ok]
    if failed:
        more = f" (+{len(failed) - 1} more: see `preflight`)" if len(failed) > 1 else ""
        raise GuardRefused(f"guard {failed[0].name} refused: {failed[0].detail}{more}")


# -- individual guards -------------------------------------------------------------------------


def shell_environment(target: EnvConfig, process_env: Mapping[str, str]) -> Check:
    """The shell's ENVIRONMENT, when set, must name the target (seed 001: verify before proceeding)."""
    shell = process_env.get("ENVIRONMENT")
    if not shell:
        return Check("shell-environment", True, "ENVIRONMENT not set in the shell")
    if shell != target.environment:
        return Check(
            "shell-environment",
            False,
            f"the shell says ENVIRONMENT={shell} but the target is {target.name} "
            f"({target.environment}); unset it or run the {target.name} task from a "
            f"{target.environment} shell",
        )
    return Check("shell-environment", True, f"ENVIRONMENT={shell} matches")


def _hosts(project: Project, env: str) -> dict[str, HostSpec]:
    """address -> host; the same address is the same machine."""
    return {h.address: h for h in map(host_spec, project.policies[env].hosts)}


def _ports(env: EnvConfig, *, app: bool = True) -> dict[str, int]:
    ports = {"POSTGRES_PORT": env.postgres_port, "REDIS_PORT": env.redis_port}
    return {"APP_PORT": env.app_port, **ports} if app else ports


def _loopback(env: EnvConfig) -> bool:
    return _norm_host(env.database.host) == _norm_host(env.redis.host) == LOCAL_MACHINE


def _home(spec: HostSpec, env: EnvConfig, resolved: Homes | None = None) -> str:
    """A host's home for env, resolved through symlinks as the kernel opens it: on this machine
    here, on an SSH host as that host resolved it (resolved); else only normalised."""
    home = spec.home(env)
    if spec.is_local:
        return os.path.realpath(home)
    return (resolved or {}).get((spec.address, env.name)) or os.path.normpath(home)


def _shared_remote(project: Project, target: str) -> dict[str, list[tuple[HostSpec, EnvConfig]]]:
    """For each SSH host target shares with another environment, every (spec, env) with a home
    there: the homes the isolation comparison needs resolved on that host."""
    mine = {a: h for a, h in _hosts(project, target).items() if not h.is_local}
    out: dict[str, list[tuple[HostSpec, EnvConfig]]] = {}
    for name in sorted(project.envs):
        if name == target:
            continue
        for addr, spec in _hosts(project, name).items():
            if addr in mine:
                out.setdefault(addr, [(mine[addr], project.envs[target])])
                out[addr].append((spec, project.envs[name]))
    return out


def _resolve_on(host: Host, homes: list[tuple[HostSpec, EnvConfig]]) -> dict[tuple[str, str], str]:
    """One realpath on host for every home: a symlink there to another environment's home is
    that home. An answer that is not one absolute path per home raises (fail closed)."""
    paths = [spec.home(env) for spec, env in homes]
    res = host.run(filecmd.realpaths(*paths), timeout=REALPATH_TIMEOUT_S)
    answer = res.stdout.split("\0")
    if answer and answer[-1] == "":
        answer.pop()
    if len(answer) != len(paths) or not all(a.startswith("/") for a in answer):
        raise HostError(f"{host.name}: realpath gave no path for each home", host=host.name)
    return {(spec.address, env.name): a for (spec, env), a in zip(homes, answer, strict=True)}


def remote_homes(
    project: Project, target: str, hosts: Mapping[str, Host] | None = None
) -> dict[tuple[str, str], str]:
    """Every home on an SSH host target shares with another environment, resolved on that host:
    one command per host, over hosts' connection to it when given (else one opened here and
    closed). A host that cannot answer raises HostError."""
    resolved: dict[tuple[str, str], str] = {}
    for addr, homes in _shared_remote(project, target).items():
        given = (hosts or {}).get(addr)
        host = given or host_from_spec(homes[0][0], secrets=project.envs[target].secret_values())
        try:
            resolved.update(_resolve_on(host, homes))
        finally:
            if given is None:
                host.close()
    return resolved


def _nested(a: str, b: str) -> bool:
    """a and b are one directory, or one holds the other ("/" holds everything)."""
    a, b = a.rstrip(os.sep) + os.sep, b.rstrip(os.sep) + os.sep
    return a.startswith(b) or b.startswith(a)


def isolation_problems(project: Project, *, resolved: Homes | None = None) -> list[str]:
    """Every resource two environments share, named with both environments; resolved holds SSH
    hosts' homes as those hosts resolve them (remote_homes)."""
    problems: list[str] = []
    for a, b in itertools.combinations(sorted(project.envs), 2):
        ea, eb = project.envs[a], project.envs[b]
        hosts_a, hosts_b = _hosts(project, a), _hosts(project, b)
        shared_hosts = sorted(set(hosts_a) & set(hosts_b))
        if ea.compose_project == eb.compose_project:
            problems.append(f"{a} and {b} share COMPOSE_PROJECT_NAME {ea.compose_project}")
        # Postgres and Redis of loopback URLs run on the operator's machine whatever the hosts
        both_local = _loopback(ea) and _loopback(eb)
        if shared_hosts or both_local:
            app = bool(shared_hosts)
            for ka, pa in _ports(ea, app=app).items():
                for kb, pb in _ports(eb, app=app).items():
                    if pa == pb:
                        problems.append(f"{a} and {b} share port {pa} ({a} {ka}, {b} {kb})")
        for addr in shared_hosts:
            da, db = _home(hosts_a[addr], ea, resolved), _home(hosts_b[addr], eb, resolved)
            if _nested(da, db):
                where = "" if addr == "local" else f" on {addr}"
                problem = f"{a} and {b} share the data directory {min(da, db, key=len)}{where}"
                if problem not in problems:
                    problems.append(problem)
        # the database as libpq reaches it: same machine, same port, same database name
        if (
            _norm_host(ea.database.host) == _norm_host(eb.database.host)
            and ea.database.port == eb.database.port
            and ea.database.name == eb.database.name
        ):
            problems.append(
                f"{a} and {b} share the database {ea.database.name} on "
                f"{ea.database.host}:{ea.database.port}"
            )
        if (
            _norm_host(ea.redis.host) == _norm_host(eb.redis.host)
            and ea.redis.port == eb.redis.port
            and ea.redis.db == eb.redis.db
        ):
            problems.append(
                f"{a} and {b} share Redis {ea.redis.host}:{ea.redis.port}/{ea.redis.db}"
            )
    return problems


LOCAL_MACHINE = "127.0.0.1"


def _norm_host(host: str) -> str:
    """The machine a libpq or Redis host names: every loopback spelling, "localhost", this
    machine's own name and a unix socket directory are this machine; an address is canonical."""
    host = host.strip().strip("[]").lower()
    if not host or host.startswith("/") or host in ("localhost", socket.gethostname().lower()):
        return LOCAL_MACHINE
    try:
        # inet_aton reads the forms libpq's resolver reads too ("127.1", "0x7f.1")
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(
            socket.inet_aton(host)
        )
    except OSError:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback or address.is_unspecified:
        return LOCAL_MACHINE
    return str(address)


def isolation(project: Project, target: str, *, hosts: Mapping[str, Host] | None = None) -> Check:
    """No resource shared with another environment; the homes on an SSH host target shares are
    compared as that host resolves them (over hosts' connections when given)."""
    try:
        resolved = remote_homes(project, target, hosts)
    except HostError as exc:
        return Check(
            "isolation",
            False,
            f"cannot resolve the data directories on {exc.host} to compare them: "
            f"{exc.message.removeprefix(f'{exc.host}: ')}",
        )
    problems = isolation_problems(project, resolved=resolved)
    if problems:
        return Check("isolation", False, "; ".join(problems))
    return Check("isolation", True, f"{target} shares no port, database, Redis or data directory")


MARKER = ".stageflow-env"


def home_marker(project: Project, target: str) -> Check:
    """The target's home on this machine names the target, or names nothing yet (never `up`).

    Isolation compares the homes this project configures; the marker also catches a home that
    belongs to an environment configured elsewhere (another clone's prod)."""
    env = project.env(target)
    for spec in map(host_spec, project.policies[target].hosts):
        if not spec.is_local:
            continue  # a remote home's marker is read there, by the runtime
        marker = os.path.join(_home(spec, env), MARKER)
        try:
            with open(marker, encoding="utf-8", errors="replace") as fh:
                owner = fh.read(200).strip()
        except FileNotFoundError:
            continue
        if owner != target:
            return Check(
                "home",
                False,
                f"{_home(spec, env)} is marked as {owner[:40]!r}'s home, not {target}'s; "
                f"give {target} its own DATA_DIR in {env.file.name}",
            )
    return Check("home", True, f"{target}'s home is its own")


def production_posture(env: EnvConfig) -> Check:
    """staging and prod: every [posture] rule of stageflow.toml holds and every declared secret
    (stageflow's and the service's) is set. A service without [posture] gets only the secrets."""
    if not env.production_like:
        return Check("posture", True, f"{env.name} is {env.environment}: relaxed posture allowed")
    values = dict(env.values)
    problems = [p for p in (rule.problem(values.get(rule.key)) for rule in env.posture) if p]
    missing = [k for k in env.declared_secrets if not env.secret(k)]
    if missing:
        problems.append(
            f"missing secrets {', '.join(missing)} "
            f"(env/{env.name}.secrets.env, or `inv {env.name}.secrets --generate`)"
        )
    if problems:
        return Check("posture", False, f"{env.name}: " + "; ".join(problems))
    return Check("posture", True, f"{env.name}: production-like posture holds")


def environment_checks(
    project: Project,
    target: str,
    process_env: Mapping[str, str],
    *,
    hosts: Mapping[str, Host] | None = None,
) -> list[tuple[str, Callable[[], Check]]]:
    """The guards every operation on target runs; hosts (address -> Host) are the operation's
    own connections, which the isolation guard reuses to resolve homes on SSH hosts."""
    env = project.env(target)
    return [
        ("shell-environment", lambda: shell_environment(env, process_env)),
        ("isolation", lambda: isolation(project, target, hosts=hosts)),
        ("home", lambda: home_marker(project, target)),
        ("posture", lambda: production_posture(env)),
    ]
