"""The compose runtime: the Runtime the pipelines drive when an environment runs on docker compose.

A compose environment runs on its first host (local, or SSH) as one docker compose project
(ComposeProject); a release is an image tag. Migrations run with the release's own image, in a
one-off container inside the project network (deploy/compose_migrate.py calls deploy.migrations:
one engine, one ledger, one advisory lock), so they work the same on a remote host whose
PostgreSQL publishes on that host's loopback only. For the same reason backups (pg_dump) and the
level 3 restore (pg_restore) run inside the postgres container; the dumps stay on that host.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from deploy import migrations, releases
from deploy.backup import compare_counts
from deploy.commands import app as appcmd
from deploy.commands import compose as cmd
from deploy.commands import files as filecmd
from deploy.commands import postgres as pg
from deploy.commands.compose import backup_in_container as backup_argv
from deploy.commands.compose import migrate as migrate_argv
from deploy.commands.compose import restore_in_container as restore_argv
from deploy.config import EnvConfig, Project
from deploy.engine import group
from deploy.engine.group import Target
from deploy.engine.rollback_rules import (
    RollbackPlan,
    SchemaPlan,
    backup_for,
    interrupted,
    previous_good,
    schema_plan,
)
from deploy.engine.steps import Step
from deploy.errors import (
    DeployError,
    GuardRefused,
    MigrationError,
    RolledBack,
    ServiceError,
    UsageError,
)
from deploy.hosts import CommandResult, Host
from deploy.policy import guards
from deploy.probes import smoke
from deploy.runtime.compose_project import (
    APP_SERVICE,
    REQUIRED_SECRETS,
    SERVER_SERVICES,
    ComposeProject,
    check_release,
    image_tag,
)
from deploy.state import (
    Layout,
    audit,
    find_backup,
    history,
    sha256_file,
)

if TYPE_CHECKING:
    from deploy.engine.context import Context

Printer = Callable[[str], None]
# The kinds whose release served successfully (what serves now; what prune keeps).
_SERVED_KINDS = ("deploy", "emergency", "rollback-1", "rollback-2", "rollback-3")


# -- where the project lives -----------------------------------------------------------------------


def place(proj: Project, name: str) -> tuple[Host, Layout]:
    """The environment's first host (it runs the project and keeps lock and history) and layout."""
    return group.primary(proj, name)


def runtime_for(
    proj: Project, name: str, *, host: Host | None = None, layout: Layout | None = None
) -> ComposeProject:
    """The compose runtime on the env's first host. Locally the project root is the working
    tree; remotely it is <home>/compose, refreshed with the compose files and the env file."""
    if host is None or layout is None:
        host, layout = place(proj, name)
    env = proj.env(name)
    if host.is_local:
        return ComposeProject(env, host, root=proj.root)
    root = str(PurePosixPath(layout.home, "compose"))
    for rel in (*cmd.compose_files(name), f"env/{name}.env"):
        host.put_file(proj.root / rel, f"{root}/{rel}")
    return ComposeProject(env, host, root=root)


def _release_env(
    rt: ComposeProject, release: str | None, commit: str | None = None
) -> dict[str, str]:
    """What ComposeProject.run adds to compose's environment besides secrets: no secret here."""
    out = {"STAGEFLOW_IMAGE": rt.image}
    if release is not None:
        out["STAGEFLOW_RELEASE"] = release
    if commit:
        out["STAGEFLOW_COMMIT"] = commit
    return out


def shown(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """One command as an operator would type it: VAR=value assignments (never secrets), argv."""
    return shlex.join([*(f"{k}={v}" for k, v in (env or {}).items()), *argv])


def _versions(stdout: str, key: str) -> list[int]:
    """The JSON line compose_migrate prints last; compose may print its own lines before it."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get(key), list):
            return [int(v) for v in data[key]]
    return []


# -- checks ----------------------------------------------------------------------------------------


def engine_check(rt: ComposeProject) -> guards.Check:
    """Secrets set, `docker info` and `docker compose version` answer: the compose "servers" check."""
    name = rt.cfg.name
    missing = [k for k in REQUIRED_SECRETS if not rt.cfg.secret(k)]
    if missing:
        return guards.Check(
            "engine",
            False,
            f"{name} has no {missing[0]}; set it in env/{name}.secrets.env (mode 0600) or run "
            f"`inv {name}.secrets --generate`",
        )
    try:
        rt.check_engine()
    except DeployError as err:
        return guards.Check("engine", False, err.line())
    return guards.Check(
        "engine", True, f"a Docker engine and docker compose answer at {rt.host.name}"
    )


def backup_check(proj: Project, name: str) -> guards.Check:
    """The policy's backups are taken inside the postgres container: every policy is runnable."""
    policy = proj.policies[name].backup
    if policy == "never":
        return guards.Check("backup", True, "backup policy never")
    return guards.Check(
        "backup", True, f"backup policy {policy}: pg_dump in the postgres container"
    )


# -- history helpers -------------------------------------------------------------------------------


def _releases_in(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every release history names, oldest first, once each."""
    return list(dict.fromkeys(str(e["release"]) for e in entries if e.get("release")))


def _served(entries: Sequence[Mapping[str, Any]]) -> str | None:
    """The release the newest successful operation left serving (when no engine can be asked)."""
    for e in reversed(entries):
        if e.get("status") == "success" and e.get("kind") in _SERVED_KINDS and e.get("release"):
            return str(e["release"])
    return None


def _commit_of(entries: Sequence[Mapping[str, Any]], release: str) -> str:
    for e in reversed(entries):
        if e.get("release") == release and e.get("commit"):
            return str(e["commit"])
    raise UsageError(
        f"history names no commit for release {release}",
        hint="name another release with --to, or deploy that commit again",
    )


def serving(rt: ComposeProject) -> str | None:
    """The tag the running app container was started from (compose ps)."""
    return rt.current_release()


# -- backups ---------------------------------------------------------------------------------------
# pg_dump and pg_restore run inside the postgres container, as its own superuser over its socket:
# the database port need not be reachable from here, and the client matches the server's major
# version. The dump is copied out with `compose cp` into the backups dir on the project's host,
# with the native backup's id, metadata file, checksum and listing.


def _pg(rt: ComposeProject) -> tuple[str, str]:
    """The role and database the postgres container was created with (compose.<env>.yml)."""
    return rt.cfg.database.user, rt.cfg.database.name


def _new_backup_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def ledger_argv(c: cmd.ComposeCommands, *, user: str, database: str) -> list[str]:
    return cmd.ledger_in_container(
        c, user=user, database=database, ledger_table=migrations.LEDGER_TABLE
    )


def _exec_pg(rt: ComposeProject, argv: list[str], what: str) -> CommandResult:
    """One command against the postgres container; a stopped container says how to start it."""
    res = rt.run(lambda _c: argv, timeout=7200)
    if not res.ok:
        raise ServiceError(
            f"{rt.cfg.name}: {what} in the postgres container failed (exit {res.exit_code}): "
            f"{rt.scrub(res.tail(1))}",
            hint=f"is it running? `inv {rt.cfg.name}.status`; `inv {rt.cfg.name}.up` starts it",
        )
    return res


def applied_versions(rt: ComposeProject) -> list[int]:
    """The versions the ledger marks applied, read by psql in the postgres container."""
    user, database = _pg(rt)
    res = _exec_pg(
        rt, ledger_argv(rt.commands(), user=user, database=database), "reading the ledger"
    )
    line = (res.stdout.strip().splitlines() or [""])[-1]
    try:
        return [int(v) for v in line.split(",") if v.strip()]
    except ValueError:
        raise ServiceError(
            f"{rt.cfg.name}: the ledger query printed {line[:80]!r}, not versions",
            hint="check the postgres container's psql",
        ) from None


def _file_facts(host: Host, path: str) -> tuple[str, int]:
    """sha256 and size of a file on the host (read there: a remote dump never travels)."""
    if host.is_local:
        return sha256_file(Path(path)), Path(path).stat().st_size
    digest = host.run(filecmd.sha256(path), timeout=3600).stdout.split()
    size = host.run(filecmd.size(path), timeout=60).stdout.strip()
    return (digest[0] if digest else ""), int(size or 0)


def _take(
    rt: ComposeProject,
    layout: Layout,
    *,
    actor: str,
    release: str,
    reason: str,
    applied: Sequence[int] | None = None,
) -> dict[str, Any]:
    host, name = rt.host, rt.cfg.name
    user, database = _pg(rt)
    if applied is None:
        applied = applied_versions(rt)
    bid = _new_backup_id()
    host.makedirs(layout.backups)
    dump, copy, clean = backup_argv(
        rt.commands(), user=user, database=database, backup_id=bid, backups_dir=layout.backups
    )
    out = f"{layout.backups}/{bid}.dump"
    start = time.perf_counter()
    try:
        _exec_pg(rt, dump, "pg_dump")
        _exec_pg(rt, copy, "copying the dump out")
    except BaseException:
        host.run(filecmd.remove(out), check=False)  # half a dump must never look like a backup
        raise
    finally:
        rt.run(lambda _c: clean, timeout=300)
    host.run(filecmd.chmod(0o600, out))
    sha, size = _file_facts(host, out)
    info = {
        "id": bid,
        "env": name,
        "database": database,
        "file": f"{bid}.dump",
        "sha256": sha,
        "size_bytes": size,
        "release": release,
        "ledger_version": max(applied, default=0),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - start, 3),
        "actor": actor,
        "reason": reason,
        "runtime": "compose",
    }
    host.write_text(f"{layout.backups}/{bid}.json", json.dumps(info, indent=2), mode=0o600)
    audit(host, layout, actor=actor, action="backup", backup=bid, release=release)
    return info


def take_backup(
    proj: Project, name: str, *, actor: str, release: str = "", reason: str = ""
) -> dict[str, Any]:
    """A backup now (`inv <env>.backup`); release defaults to the tag the app container runs."""
    host, layout = place(proj, name)
    try:
        rt = runtime_for(proj, name, host=host, layout=layout)
        return _take(rt, layout, actor=actor, release=release or serving(rt) or "", reason=reason)
    finally:
        host.close()


def list_backups(proj: Project, name: str) -> list[dict[str, Any]]:
    """Every backup's metadata in the backups dir on the project's host, oldest first."""
    host, layout = place(proj, name)
    out = []
    try:
        for file in host.listdir(layout.backups):
            if not file.endswith(".json"):
                continue
            try:
                out.append(json.loads(host.read_text(f"{layout.backups}/{file}") or ""))
            except json.JSONDecodeError:
                continue
    finally:
        host.close()
    return out


def remove_backups(proj: Project, name: str, ids: Sequence[str]) -> None:
    """Retention's deletes (deploy.backup.prune decides which), on the project's host."""
    host, layout = place(proj, name)
    try:
        for bid in ids:
            host.run(
                filecmd.remove(f"{layout.backups}/{bid}.dump", f"{layout.backups}/{bid}.json"),
                check=False,
            )
    finally:
        host.close()


def _checked_dump(host: Host, layout: Layout, info: Mapping[str, Any], *, name: str) -> None:
    """Refuse before anything changes when the dump is gone or differs from its checksum."""
    path = f"{layout.backups}/{info['file']}"
    ok = host.exists(path) and _file_facts(host, path)[0] == info.get("sha256")
    if not ok:
        raise GuardRefused(
            f"backup {info['id']} is missing or its checksum does not match",
            hint=f"choose another with `inv {name}.backups` and --backup ID",
        )


def _restore(rt: ComposeProject, layout: Layout, info: Mapping[str, Any], *, actor: str) -> str:
    user, database = _pg(rt)
    copy_in, recreate, restore, clean = restore_argv(
        rt.commands(),
        user=user,
        database=database,
        backup_id=info["id"],
        backups_dir=layout.backups,
    )
    start = time.perf_counter()
    try:
        _exec_pg(rt, copy_in, "copying the dump in")
        _exec_pg(rt, recreate, "recreating the database")
        _exec_pg(rt, restore, "pg_restore")
    finally:
        rt.run(lambda _c: clean, timeout=300)
    took = round(time.perf_counter() - start, 3)
    audit(rt.host, layout, actor=actor, action="restore", backup=info["id"], duration_s=took)
    return f"{info['id']} restored in {took:.2f}s (ledger version {info.get('ledger_version')})"


def verify_backup(proj: Project, name: str, backup_id: str) -> dict[str, Any]:
    """Restore a backup into a scratch database in the postgres container and compare its tables'
    row counts with the live database's (the native verify's result); the scratch always goes."""
    host, layout = place(proj, name)
    try:
        rt = runtime_for(proj, name, host=host, layout=layout)
        info = find_backup(list_backups(proj, name), backup_id, env=name)
        _checked_dump(host, layout, info, name=name)
        user, database = _pg(rt)
        scratch = f"{database}_verify_{os.getpid()}"
        tmp = cmd.container_dump(backup_id)
        c = rt.commands()

        def psql(db: str, statements: list[str]) -> list[str]:
            return c.exec(cmd.PG_SERVICE, pg.psql(user=user, database=db, statements=statements))

        def counts(db: str) -> dict[str, int]:
            res = _exec_pg(rt, psql(db, pg.table_counts_sql()), "counting rows")
            return {str(k): int(v) for k, v in json.loads(res.stdout.strip() or "{}").items()}

        _exec_pg(
            rt,
            c.cp(f"{layout.backups}/{info['file']}", cmd.in_container(cmd.PG_SERVICE, tmp)),
            "copying the dump in",
        )
        try:
            _exec_pg(rt, psql(pg.MAINTENANCE_DB, pg.create_database_sql(scratch)), "create")
            _exec_pg(
                rt,
                c.exec(cmd.PG_SERVICE, pg.pg_restore(user=user, database=scratch, dump=tmp)),
                "pg_restore",
            )
            restored, live = counts(scratch), counts(database)
        finally:
            rt.run(lambda _c: psql(pg.MAINTENANCE_DB, pg.drop_database_sql(scratch)))
            rt.run(lambda _c: c.exec(cmd.PG_SERVICE, cmd.remove_file(tmp)))
    finally:
        host.close()
    return compare_counts(backup_id, restored=restored, live=live)


def pending_versions(shipped: Sequence[int], applied: Sequence[int]) -> list[int]:
    """The release's versions the ledger does not mark applied (never run, failed, reverted)."""
    done = set(applied)
    return sorted(v for v in shipped if v not in done)


def wants_backup(policy: str, pending: Sequence[int]) -> bool:
    """The native rule: "always", or "pending-migrations" with something to migrate."""
    return policy == "always" or (policy == "pending-migrations" and bool(pending))


# -- up, down, status, logs ------------------------------------------------------------------------


def up(proj: Project, name: str) -> list[str]:
    """Start the project's PostgreSQL and Redis and wait until both are healthy."""
    rt = runtime_for(proj, name)
    res = rt.run(lambda c: c.up(services=SERVER_SERVICES, wait_timeout_s=rt.wait_timeout_s))
    if not res.ok:
        raise rt.failed("starting postgres and redis", res)
    return [f"compose project {rt.cfg.compose_project}: postgres and redis healthy"]


def down(proj: Project, name: str) -> list[str]:
    """Stop the project's containers; its data volumes stay."""
    rt = runtime_for(proj, name)
    rt.down()
    return [f"compose project {rt.cfg.compose_project} stopped (data volumes kept)"]


def container_status(proj: Project, name: str) -> dict[str, Any]:
    """postgres, redis and app as `compose ps` sees them; an absent engine is a detail, not a crash."""
    env = proj.env(name)
    rows: list[dict[str, Any]] = []
    problem = None
    try:
        rows = runtime_for(proj, name).status()
    except DeployError as err:
        problem = err.line()
    by = {str(r.get("Service")): r for r in rows}

    def healthy(service: str) -> bool:
        row = by.get(service)
        return bool(
            row and row.get("State") == "running" and row.get("Health") in (None, "", "healthy")
        )

    app_row = by.get(APP_SERVICE)
    return {
        "runtime": "compose",
        "engine": problem,
        "postgres": {"up": healthy("postgres"), "port": env.postgres_port, "pid": None},
        "redis": {"up": healthy("redis"), "port": env.redis_port, "pid": None},
        "app": {
            "up": healthy(APP_SERVICE),
            "port": env.app_port,
            "release": image_tag(str(app_row.get("Image", ""))) if app_row else None,
        },
    }


def logs(proj: Project, name: str, *, tail: int = 100, services: Sequence[str] = ()) -> str:
    return runtime_for(proj, name).logs(tail=tail, services=services)


# -- deploy ----------------------------------------------------------------------------------------


def plan(
    proj: Project,
    name: str,
    *,
    ref: str,
    actor: str = "<actor>",
    rt: ComposeProject | None = None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """The deploy's steps and the exact commands each runs, read-only (no engine is asked).

    The release id is the one a deploy started now would get: a UTC timestamp and the commit."""
    commit = releases.resolve_ref(proj.root, ref)
    host, layout = place(proj, name)
    rt = rt or runtime_for(proj, name, host=host, layout=layout)
    rid = releases.new_release_id(commit, _releases_in(history(host, layout)))
    rows = _deploy_rows(proj, name, rt, layout, commit=commit, rid=rid)
    return rows, _deploy_commands(proj, name, rt, layout, commit=commit, rid=rid, actor=actor)


def _deploy_rows(
    proj: Project, name: str, rt: ComposeProject, layout: Layout, *, commit: str, rid: str
) -> list[tuple[str, str]]:
    env, policy, host = proj.env(name), proj.policies[name], rt.host
    ctxdir = layout.release(rid)
    where = f"127.0.0.1:{env.app_port}" if host.is_local else f"the app container on {host.name}"
    return [
        (
            "preflight",
            "environment guards; secrets set; docker engine and compose answer; not frozen",
        ),
        ("lock", f"mkdir {layout.lock} on {host.name}"),
        ("build", f"git archive {commit[:12]} -> {ctxdir}; docker build of {rt.image}:{rid}"),
        (
            "backup",
            "none: backup policy 'never'"
            if policy.backup == "never"
            else f"policy {policy.backup!r}: pg_dump -Fc in the postgres container, copied to "
            f"{layout.backups} on {host.name}",
        ),
        ("migrate", f"postgres and redis healthy, then the migrations {rid} ships, in its image"),
        ("start", f"up --wait with {rt.image}:{rid}; a failure starts the previous tag again"),
        ("smoke", f"health, ready, version, identity, postgres, redis on {where}"),
        (
            "verify",
            f"{policy.verify_window_s:g}s health window" if policy.verify_window_s else "none",
        ),
        ("record", f"history {layout.history}"),
        ("prune", f"keep {policy.keep_releases} images: docker image rm the one that falls out"),
        ("unlock", f"rmdir {layout.lock}"),
    ]


def _deploy_commands(
    proj: Project,
    name: str,
    rt: ComposeProject,
    layout: Layout,
    *,
    commit: str,
    rid: str,
    actor: str,
) -> list[str]:
    policy, c, ctxdir = proj.policies[name], rt.commands(), layout.release(rid)
    build = cmd.build_image(rt.image, rid, context=ctxdir, dockerfile=f"{ctxdir}/Dockerfile")
    env_r = _release_env(rt, rid)
    servers = c.up(services=SERVER_SERVICES, wait_timeout_s=rt.wait_timeout_s)
    migrate = c.run(APP_SERVICE, migrate_argv("up", release=rid, applied_by=actor), no_deps=True)
    start = c.up(wait=True, wait_timeout_s=rt.wait_timeout_s)
    backup = []
    if policy.backup != "never":
        user, database = _pg(rt)
        env_b = _release_env(rt, None)
        backup = [
            f"backup:  {shown(argv, env_b)}"
            for argv in [
                servers,
                ledger_argv(c, user=user, database=database),
                *backup_argv(
                    c, user=user, database=database, backup_id="<id>", backups_dir=layout.backups
                ),
            ]
        ]
    return [
        f"build:   {shown(build)}",
        *backup,
        f"migrate: {shown(servers, env_r)}",
        f"migrate: {shown(migrate, env_r)}",
        f"start:   {shown(start, _release_env(rt, rid, commit))}",
    ]


def _extract(proj: Project, host: Host, layout: Layout, commit: str, rid: str) -> str:
    """The commit's files on the host, as the image's build context (never the working tree)."""
    tarball = releases.archive(proj, commit)
    target = layout.release(rid)
    host.makedirs(layout.releases, layout.run)
    host.remove_tree(target)
    host.makedirs(target)
    remote_tar = str(tarball) if host.is_local else f"{layout.run}/{commit}.tar"
    if not host.is_local:
        host.put_file(tarball, remote_tar)
    host.run(appcmd.extract(remote_tar, target))
    if not host.is_local:
        host.run(filecmd.remove(remote_tar), check=False)
    return target


class ComposeRuntime:
    """The compose runtime as the deploy pipeline sees it: a release is an image tag, started by
    `up` on the environment's one host; migrations and backups run in containers there."""

    kind = "compose"

    def __init__(self, proj: Project, name: str, targets: list[Target]) -> None:
        self.proj, self.name, self.targets = proj, name, targets
        primary = targets[0]
        self.rt = runtime_for(proj, name, host=primary.host, layout=primary.layout)
        self.ctx: Context | None = None
        self._applied: list[int] | None = None
        self._does: dict[str, str] = {}
        self._entries: list[dict[str, Any]] = []

    def bind(self, ctx: Context) -> None:
        self.ctx = ctx

    def up(self) -> list[str]:
        return up(self.proj, self.name)

    def down(self) -> list[str]:
        return down(self.proj, self.name)

    def logs(self, *, tail: int, service: str) -> str:
        return self.rt.logs(tail=tail, services=[service] if service else [])

    def take_backup(self, *, actor: str, release: str, reason: str) -> dict[str, Any]:
        return take_backup(self.proj, self.name, actor=actor, release=release, reason=reason)

    def list_backups(self) -> list[dict[str, Any]]:
        return list_backups(self.proj, self.name)

    def remove_backups(self, ids: list[str]) -> None:
        remove_backups(self.proj, self.name, ids)

    def verify_backup(self, backup_id: str) -> dict[str, Any]:
        return verify_backup(self.proj, self.name, backup_id)

    def servers_status(self) -> tuple[dict[str, Any], dict[str, Any]]:
        containers = container_status(self.proj, self.name)
        servers = {k: containers[k] for k in ("runtime", "engine", "postgres", "redis")}
        return servers, containers["app"]

    def checks(self) -> list[tuple[str, Callable[[], guards.Check]]]:
        return [
            ("engine", lambda: engine_check(self.rt)),
            ("backup", lambda: backup_check(self.proj, self.name)),
        ]

    def serving(self) -> str | None:
        return serving(self.rt)

    def describe(self, ctx: Context, ref: str) -> dict[str, str]:
        self._does = dict(plan(self.proj, self.name, ref=ref, rt=self.rt)[0])
        return self._does

    def dry_run_commands(self, ctx: Context, ref: str) -> list[str]:
        return plan(self.proj, self.name, ref=ref, actor=str(ctx.actor), rt=self.rt)[1]

    def build(self, ctx: Context, *, commit: str, ref: str, dirty: bool) -> tuple[Any, str]:
        rt, host, layout = self.rt, ctx.host, ctx.layout
        for t in self.targets:
            t.previous = ctx.previous
        rid = check_release(releases.new_release_id(commit, _releases_in(history(host, layout))))
        ctxdir = _extract(ctx.proj, host, layout, commit, rid)
        argv = cmd.build_image(rt.image, rid, context=ctxdir, dockerfile=f"{ctxdir}/Dockerfile")
        try:
            res = host.run(argv, check=False, timeout=1800)
        finally:
            host.remove_tree(ctxdir)  # the image holds the files now
        if not res.ok:
            raise ServiceError(
                f"{ctx.env.name}: docker build of {rt.image}:{rid} failed (exit {res.exit_code}): "
                f"{res.tail(1)}",
                hint="fix the Dockerfile or the build, then deploy again",
            )
        return releases.Release(rid, commit, ref, dirty), f"{rt.image}:{rid}"

    def pending(self, ctx: Context) -> list[int]:
        rt = self.rt
        # the servers must run to be read; the migrate step would start them next anyway
        res = rt.run(lambda c: c.up(services=SERVER_SERVICES, wait_timeout_s=rt.wait_timeout_s))
        if not res.ok:
            raise rt.failed("starting postgres and redis", res)
        self._applied = applied_versions(rt)
        shipped = [f.version for f in releases.migrations_at_commit(ctx.proj, ctx.built.commit)]
        return pending_versions(shipped, self._applied)

    def backup(self, ctx: Context, *, reason: str) -> dict[str, Any]:
        return _take(
            self.rt,
            ctx.layout,
            actor=str(ctx.actor),
            release=ctx.previous or "",
            reason=reason,
            applied=self._applied,
        )

    def migrate(self, ctx: Context) -> list[int]:
        rid = ctx.built.id
        res = self.rt.migrate(
            migrate_argv("up", release=rid, applied_by=str(ctx.actor)), release=rid
        )
        return _versions(res.stdout, "applied")

    def host_steps(self, ctx: Context, target: Target) -> list[Step]:
        rt = self.rt
        where = f"127.0.0.1:{ctx.env.app_port}" if ctx.host.is_local else ctx.host.name

        def start() -> str:
            target.started = True
            rt.up(ctx.built.id, commit=ctx.built.commit)
            return f"{rt.image}:{ctx.built.id} healthy"

        return [
            Step("start", self._does.get("start", f"up --wait with {rt.image}:<id>"), start),
            Step(
                "smoke",
                self._does.get("smoke", f"health, ready, version, identity on {where}"),
                lambda: _smoke(rt, ctx.built.id),
            ),
        ]

    def revert(self, ctx: Context, target: Target) -> str | None:
        """Start the previous tag again (or stop the new app when there is none)."""
        rt, prev, rid = self.rt, ctx.previous, ctx.built.id
        try:
            if prev:
                rt.up(prev, commit=_commit_of(history(ctx.host, ctx.layout), prev))
                return prev
            res = rt.run(lambda c: c.stop(services=[APP_SERVICE]), release=rid)
            if not res.ok:
                raise rt.failed("stopping the app", res)
        except DeployError as err:
            raise ServiceError(
                f"going back failed too: {err.message}",
                hint=f"nothing may be serving: `inv {ctx.env.name}.status`, then deploy a fix",
            ) from None
        return None

    def watch(self, ctx: Context, *, window_s: float) -> Any:
        from deploy.probes.verify import Verdict

        if not ctx.host.is_local:
            return Verdict(True, summary="health checked by compose (up --wait) on the remote host")
        limit = ctx.policy.thresholds.health_failures
        failures = _health_window(ctx.env, window_s, limit)
        if failures is None:
            return Verdict(True, summary=f"{window_s:g}s of /healthz answered")
        return Verdict(False, reason=f"/healthz failed {failures} times in a row")

    def prune(self, ctx: Context) -> str:
        protect = {ctx.built.id, ctx.previous or ""}
        return _prune(self.rt, ctx.host, ctx.layout, keep=ctx.policy.keep_releases, protect=protect)

    # -- rollback -----------------------------------------------------------------------------

    reports_hosts = False  # one project on one host: no per-host outcomes

    def refuse_rollback(self, ctx: Context, *, level: int, reset_data: bool) -> None:
        if reset_data:
            raise UsageError(
                f"--reset-data is not available on the compose runtime that {self.name} uses",
                hint=f"`inv {self.name}.down`, remove the project's volumes by hand, then "
                f"`inv {self.name}.up`",
            )

    def rollback_checks(
        self, level: int, *, dry_run: bool
    ) -> list[tuple[str, Callable[[], guards.Check]]]:
        # a plan reads history only; acting needs the engine
        return [] if dry_run else [("engine", lambda: engine_check(self.rt))]

    def rollback_plan(
        self,
        ctx: Context,
        *,
        level: int,
        to: str | None,
        backup_id: str | None,
        reset_data: bool,
        dry_run: bool,
    ) -> RollbackPlan:
        entries = self._entries = history(ctx.host, ctx.layout)
        current = _served(entries) if dry_run else serving(self.rt)
        if current is None and level == 3:
            # a restore needs no running app: one that stopped half-way is run again from history
            current = _served(entries)
        if current is None:
            raise UsageError(
                f"{self.name} has no running release to roll back",
                hint=f"deploy one with `inv {self.name}.deploy`",
            )
        return _rollback_plan(
            self.proj, self.rt, entries, level=level, current=current, to=to,
            actor=str(ctx.actor), backup_id=backup_id, layout=ctx.layout,
        )  # fmt: skip

    def rollback_does(self, ctx: Context, p: RollbackPlan) -> dict[str, str]:
        info, schema = p.backup or {}, p.schema
        image = f" (with the {p.current} image)" if schema and schema.revert else ""
        return {
            "schema": (schema.describe() if schema else "") + image,
            "freeze": f"write {ctx.layout.freeze}: deploys refused until unfreeze",
            "stop": f"stop the app container ({p.current})",
            "restore": f"copy {info.get('id')}.dump into the postgres container; drop and "
            f"recreate {ctx.env.database.name}; pg_restore it there",
        }

    def restart_steps(self, ctx: Context, p: RollbackPlan, details: list[str]) -> list[Step]:
        rt, current = self.rt, p.current or ""

        def restart() -> str:
            commit = _commit_of(self._entries, current)
            res = rt.run(lambda c: c.restart(), release=current, commit=commit)
            if not res.ok:
                raise rt.failed("compose restart", res)
            return f"{len(rt.up(current, commit=commit))} containers healthy"

        return [
            Step(
                "restart", f"restart every container of {current}, then up --wait with it", restart
            ),
            Step("smoke", _SMOKE_ROW, lambda: _smoke(rt, current, rolling_back=True)),
        ]

    def revert_schema(self, ctx: Context, p: RollbackPlan, details: list[str]) -> str:
        schema, target, current = p.schema, p.target or "", p.current or ""
        assert schema is not None
        if not schema.revert:
            if schema.since:
                details.append(f"schema kept (expand-only {list(schema.since)})")
            return schema.describe()
        argv = migrate_argv(
            "down", release=target, applied_by=str(ctx.actor), to=schema.target_version
        )
        try:
            res = self.rt.migrate(argv, release=current)  # the serving image has the down files
        except MigrationError as err:
            raise MigrationError(
                err.message, hint=f"level 2 stopped; {current} still serves"
            ) from None
        done = _versions(res.stdout, "reverted")
        details.append(f"reverted migrations {done}")
        return f"reverted {done}"

    def switch_steps(self, ctx: Context, p: RollbackPlan, *, restored: bool) -> list[Step]:
        rt, target = self.rt, p.target or ""
        which = "the backup's" if restored else "the previous"

        def start() -> str:
            return (
                f"{len(rt.up(target, commit=_commit_of(self._entries, target)))} containers healthy"
            )

        return [
            Step("start", f"up --wait with {which} tag {rt.image}:{target}", start),
            Step("smoke", _SMOKE_ROW, lambda: _smoke(rt, target, rolling_back=True)),
        ]

    def stop_service(self, ctx: Context, p: RollbackPlan) -> str:
        res = self.rt.run(lambda c: c.stop(services=[APP_SERVICE]), release=p.current)
        if not res.ok:
            raise self.rt.failed("stopping the app", res)
        return f"{p.current} stopped"

    def restore(self, ctx: Context, p: RollbackPlan, details: list[str]) -> str:
        info = p.backup or {}
        done = _restore(self.rt, ctx.layout, info, actor=str(ctx.actor))
        details.append(f"restored backup {info['id']}; frozen")
        return done

    def check_rollback_target(self, ctx: Context, p: RollbackPlan) -> None:
        """Before anything changes: the dump is whole and the backup's image tag still exists."""
        info, rt = p.backup, self.rt
        if info is None:
            return
        _checked_dump(ctx.host, ctx.layout, info, name=self.name)
        if not ctx.host.run(cmd.image_exists(rt.image, p.target or ""), check=False, timeout=60).ok:
            raise GuardRefused(
                f"backup {info['id']} matches release {p.target}, whose image "
                f"{rt.image}:{p.target} is gone",
                hint="build and tag that commit's image again, then restore with --backup ID",
            )

    def release_of(self, ctx: Context, rid: str) -> releases.Release:
        entries = self._entries
        ref = next(
            (str(e.get("ref", "")) for e in reversed(entries) if e.get("release") == rid), ""
        )
        return releases.Release(rid, _commit_of(entries, rid), ref)

    def audit_extra(self, ctx: Context) -> dict[str, Any]:
        return {"runtime": "compose"}


_SMOKE_ROW = "health, ready, version, identity, postgres, redis"


def _smoke(rt: ComposeProject, rid: str, *, rolling_back: bool = False) -> str:
    if not rt.host.is_local:
        return _probe_on_host(rt, rid, rolling_back=rolling_back)
    probes = smoke.run(rt.cfg, expect_release=rid)
    bad = smoke.failed(probes)
    if bad:
        what = f"smoke failed ({bad[0].name}: {bad[0].detail})"
        if rolling_back:  # nothing to go back to from a rollback: it failed, it did not roll back
            raise ServiceError(what, hint=f"inspect with `inv {rt.cfg.name}.logs`")
        raise RolledBack(what)
    return f"{len(probes)} probes passed in {sum(p.ms for p in probes):.0f} ms"


def _probe_on_host(rt: ComposeProject, rid: str, *, rolling_back: bool = False) -> str:
    base = f"http://127.0.0.1:{rt.cfg.app_port}"
    # a few tries: a container of the old tag may still answer while compose replaces it
    serving_now: list[str] = []
    detail = ""
    for _ in range(5):
        res = rt.host.run(appcmd.http_probe(base), check=False, timeout=30)
        serving_now = res.stdout.strip().splitlines()[-1:] if res.ok else []
        if serving_now == [rid]:
            return f"health, ready and version answered on {rt.host.name}'s {base}"
        detail = f"serving {serving_now[0]}" if serving_now else rt.scrub(res.tail(1))
        time.sleep(0.5)
    what = f"smoke failed on {rt.host.name} ({detail}, expected {rid})"
    if rolling_back:
        raise ServiceError(what, hint=f"inspect with `inv {rt.cfg.name}.logs`")
    raise RolledBack(what)


def _health_window(env: EnvConfig, window_s: float, limit: int) -> int | None:
    """Poll /healthz for window_s; the run of failures that passed limit, or None."""
    deadline = time.monotonic() + window_s
    run = 0
    while time.monotonic() < deadline:
        try:
            status, _ = smoke.http("GET", f"http://127.0.0.1:{env.app_port}/healthz", timeout=2)
        except OSError:
            status = 0
        run = run + 1 if status != 200 else 0
        if run > limit:
            return run
        time.sleep(0.25)
    return None


def _prune(rt: ComposeProject, host: Host, layout: Layout, *, keep: int, protect: set[str]) -> str:
    """Untag the served release that falls out of the newest `keep` (one per deploy)."""
    entries = history(host, layout)
    good = [
        str(e["release"])
        for e in reversed(entries)
        if e.get("status") == "success" and e.get("kind") in _SERVED_KINDS and e.get("release")
    ]
    newest = list(dict.fromkeys([*[p for p in protect if p], *good]))
    if len(newest) <= keep or newest[keep] in protect:
        return "pruned 0"
    res = host.run(cmd.remove_image(rt.image, newest[keep]), check=False, timeout=120)
    return f"pruned {rt.image}:{newest[keep]}" if res.ok else f"{newest[keep]} already gone"


# -- rollback --------------------------------------------------------------------------------------


def _level3_plan(
    proj: Project,
    rt: ComposeProject,
    entries: Sequence[Mapping[str, Any]],
    *,
    current: str,
    backup_id: str | None,
    layout: Layout,
) -> dict[str, Any]:
    """The backup to restore (native choice rules) and the tag it was taken under."""
    name, c = rt.cfg.name, rt.commands()
    chosen = (
        find_backup(list_backups(proj, name), backup_id, env=name)
        if backup_id
        else backup_for(entries, list_backups(proj, name), current=current)
    )
    if chosen is None:
        raise GuardRefused(
            f"no backup of {name} was taken before {current}",
            hint=f"list them with `inv {name}.backups`; pick one with --backup ID",
        )
    target = str(chosen.get("release") or "")
    if not target or target not in set(_releases_in(entries)):
        raise GuardRefused(
            f"backup {chosen['id']} matches release {target or '(none)'}, which history does "
            "not know as an image tag",
            hint=f"pick another with --backup ID (`inv {name}.backups` lists them)",
        )
    user, database = _pg(rt)
    env_img = _release_env(rt, None)
    restore = restore_argv(
        c, user=user, database=database, backup_id=chosen["id"], backups_dir=layout.backups
    )
    start = c.up(wait=True, wait_timeout_s=rt.wait_timeout_s)
    commands = [
        f"stop:    {shown(c.stop(services=[APP_SERVICE]), _release_env(rt, current))}",
        *(f"restore: {shown(argv, env_img)}" for argv in restore),
        f"start:   {shown(start, _release_env(rt, target, _commit_of(entries, target)))}",
    ]
    return {
        "target": target,
        "backup": chosen["id"],
        "backup_info": chosen,
        "commands": commands,
    }


def _rollback_plan(
    proj: Project,
    rt: ComposeProject,
    entries: Sequence[Mapping[str, Any]],
    *,
    level: int,
    current: str,
    to: str | None,
    actor: str,
    backup_id: str | None = None,
    layout: Layout | None = None,
) -> RollbackPlan:
    """The rollback's target, schema plan, backup and exact commands; refuses before anything
    changes. A rollback of the same level whose process died is completed: its target (level 2)
    or its backup (level 3), whatever serves now."""
    dead = interrupted(entries)
    resumes = str(dead["id"]) if dead and dead.get("kind") == f"rollback-{level}" else None
    p = RollbackPlan(level, rt.cfg.name, current, current, resumes=resumes)
    if level == 3:
        assert layout is not None
        if not backup_id and resumes and dead and dead.get("backup"):
            backup_id = str(dead["backup"])
        d = _level3_plan(proj, rt, entries, current=current, backup_id=backup_id, layout=layout)
        p.target, p.backup, p.commands = d["target"], d["backup_info"], d["commands"]
    elif level == 1:
        c = rt.commands()
        start = c.up(wait=True, wait_timeout_s=rt.wait_timeout_s)
        env_cur = _release_env(rt, current, _commit_of(entries, current))
        p.commands = [
            f"restart: {shown(c.restart(), env_cur)}",
            f"restart: {shown(start, env_cur)}",
        ]
    else:
        p.target = _level2_target(
            rt.cfg.name, entries, current=current, to=to, dead=dead if resumes else None
        )
        p.schema = _level2_schema(proj, rt.cfg.name, entries, current=current, target=p.target)
        p.commands = _level2_commands(rt, entries, p, actor=actor)
    return p


def _level2_target(
    name: str,
    entries: Sequence[Mapping[str, Any]],
    *,
    current: str,
    to: str | None,
    dead: Mapping[str, Any] | None = None,
) -> str:
    """--to (a release history knows), the release a killed level 2 was going to, or the previous
    good one."""
    known = set(_releases_in(entries))
    if to:
        if to not in known:
            raise UsageError(
                f"history names no release {to!r}", hint=f"`inv {name}.history` lists them"
            )
        if to == current:
            raise UsageError(f"{to} is already serving", hint="level 1 restarts it")
        return to
    if dead and dead.get("release"):
        # finish what the killed rollback started: once its tag runs, the newest entry naming
        # the current release is the dead one, and the previous good one would be the release
        # it was rolling back from
        return str(dead["release"])
    found = previous_good(entries, current=current, existing=frozenset(known))
    if found is None:
        raise GuardRefused(
            f"no previous good release of {current} is in history",
            hint="name one with --to RELEASE",
        )
    return found


def _level2_schema(
    proj: Project, name: str, entries: Sequence[Mapping[str, Any]], *, current: str, target: str
) -> SchemaPlan:
    files = releases.migrations_at_commit(proj, _commit_of(entries, current))
    target_files = releases.migrations_at_commit(proj, _commit_of(entries, target))
    target_version = max((f.version for f in target_files), default=0)
    # the serving release applied every file it ships; the engine re-reads the ledger to act
    schema = schema_plan(files, [f.version for f in files], target_version=target_version)
    if schema.refused:
        raise GuardRefused(
            f"level 2 cannot go back to {target}: {', '.join(schema.missing_down)} has no down file",
            hint=f"`inv {name}.rollback --level 3` restores the backup taken before the deploy",
        )
    return schema


def _level2_commands(
    rt: ComposeProject, entries: Sequence[Mapping[str, Any]], p: RollbackPlan, *, actor: str
) -> list[str]:
    c, schema, target = rt.commands(), p.schema, p.target or ""
    assert schema is not None
    commands = []
    if schema.revert:
        down = migrate_argv("down", release=target, applied_by=actor, to=schema.target_version)
        env_cur = _release_env(rt, p.current)
        servers = c.up(services=SERVER_SERVICES, wait_timeout_s=rt.wait_timeout_s)
        commands += [
            f"schema:  {shown(servers, env_cur)}",
            f"schema:  {shown(c.run(APP_SERVICE, down, no_deps=True), env_cur)}",
        ]
    start = c.up(wait=True, wait_timeout_s=rt.wait_timeout_s)
    env_target = _release_env(rt, target, _commit_of(entries, target))
    return [*commands, f"start:   {shown(start, env_target)}"]
