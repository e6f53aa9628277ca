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
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn

from deploy import env_migrations, migrations, releases
from deploy.commands import compose as cmd
from deploy.commands import files as filecmd
from deploy.commands import release as appcmd
from deploy.commands.compose import backup_in_container as backup_argv
from deploy.commands.compose import migrate as migrate_argv
from deploy.config import Project
from deploy.engine.group import Target
from deploy.engine.rollback_rules import RollbackPlan, ToolSchemaPlan
from deploy.engine.steps import Step
from deploy.errors import (
    DeployError,
    GuardRefused,
    MigrationError,
    RolledBack,
    ServiceError,
    UsageError,
)
from deploy.hosts import Host
from deploy.policy import guards
from deploy.probes import sessions, smoke
from deploy.runtime import (
    compose_backups,
    compose_image,
    compose_processes,
    compose_rollback,
    compose_sessions,
)
from deploy.runtime.compose_backups import ledger_argv, role_and_database
from deploy.runtime.compose_project import (
    APP_SERVICE,
    REQUIRED_SECRETS,
    SERVER_SERVICES,
    ComposeProject,
    check_release,
    image_tag,
    place,
    project_for,
    release_env,
    shown,
    switch_shown,
)
from deploy.runtime.compose_rollback import (
    SERVED_KINDS,
    commit_of,
    migrations_dir,
    releases_in,
    served,
)
from deploy.runtime.compose_tool import ComposeTool
from deploy.service import Service
from deploy.settings import application_name
from deploy.state import Layout, history

if TYPE_CHECKING:
    from deploy.engine.context import Context


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


def serving(rt: ComposeProject) -> str | None:
    """The tag the running app container was started from (compose ps)."""
    return rt.current_release()


# -- up, down, status, logs ------------------------------------------------------------------------


def up(proj: Project, name: str) -> list[str]:
    """Start the project's PostgreSQL and Redis and wait until both are healthy."""
    rt = project_for(proj, name)
    res = rt.run(lambda c: c.up(services=SERVER_SERVICES, wait_timeout_s=rt.wait_timeout_s))
    if not res.ok:
        raise rt.failed("starting postgres and redis", res)
    return [f"compose project {rt.cfg.compose_project}: postgres and redis healthy"]


def down(proj: Project, name: str) -> list[str]:
    """Stop the project's containers; its data volumes stay."""
    rt = project_for(proj, name)
    rt.down()
    return [f"compose project {rt.cfg.compose_project} stopped (data volumes kept)"]


def container_status(proj: Project, name: str) -> dict[str, Any]:
    """postgres, redis and app as `compose ps` sees them; an absent engine is a detail, not a crash."""
    env = proj.env(name)
    rows: list[dict[str, Any]] = []
    problem, app_row, processes = None, None, []
    try:
        rt = project_for(proj, name)
        rows = rt.status()
        app_row = rt.serving_row(rows)
        current = image_tag(str(app_row.get("Image", ""))) if app_row else None
        processes = rt.processes.status(rows, current)
    except DeployError as err:
        problem = err.line()
    by = {str(r.get("Service")): r for r in rows}

    def healthy(row: Mapping[str, Any] | None) -> bool:
        return bool(
            row and row.get("State") == "running" and row.get("Health") in (None, "", "healthy")
        )

    return {
        "runtime": "compose",
        "engine": problem,
        "postgres": {"up": healthy(by.get("postgres")), "port": env.postgres_port, "pid": None},
        "redis": {"up": healthy(by.get("redis")), "port": env.redis_port, "pid": None},
        "app": {
            # the app answers on its port only through the front
            "up": healthy(app_row) and healthy(by.get(cmd.FRONT_SERVICE)),
            "port": env.app_port,
            "release": image_tag(str(app_row.get("Image", ""))) if app_row else None,
            "processes": processes,
        },
    }


def logs(proj: Project, name: str, *, tail: int = 100, services: Sequence[str] = ()) -> str:
    return project_for(proj, name).logs(tail=tail, services=services)


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
    rt = rt or project_for(proj, name, host=host, layout=layout)
    rid = releases.new_release_id(commit, releases_in(history(host, layout)))
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
        ("migrate", _migrate_row(proj, rid)),
        ("start", _start_row(rt, rid)),
        ("smoke", _smoke_row(host, where)),
        (
            "verify",
            f"{policy.verify_window_s:g}s health window" if policy.verify_window_s else "none",
        ),
        ("record", f"history {layout.history}"),
        ("prune", f"keep {policy.keep_releases} images: docker image rm the one that falls out"),
        ("unlock", f"rmdir {layout.lock}"),
    ]


def _smoke_row(host: Host, where: str) -> str:
    if host.is_local:
        return (
            f"health, ready, version, identity, postgres, redis on {where}; the release's "
            "database sessions on every environment's cluster here"
        )
    return (
        f"health, ready and release on {host.name}'s APP_PORT (its python3); the release's "
        "database sessions: counted there in the postgres container, and on every other "
        "environment's cluster here"
    )


def _start_row(rt: ComposeProject, rid: str) -> str:
    row = (
        f"{rt.image}:{rid} beside the serving container; the front moves to it once health "
        "and ready answer, the old one drains and stops; a failure leaves the old one serving"
    )
    names = [name for name, _ in rt.processes.declared]
    if names:
        row += (
            f"; then {', '.join(names)} in containers of {rid}'s image beside the old ones, which "
            "stop once the new ones run (one that exits sends the front back)"
        )
    return row


def _migrate_row(proj: Project, rid: str) -> str:
    kind = proj.service.migrations.kind
    if kind == "none":
        return "nothing (migrations kind none)"
    if kind == "command":
        m = proj.service.migrations
        return (
            f"postgres and redis healthy; in a one-off container of {rid}'s image, under the "
            f"migration lock: `{shlex.join(m.current)}`, `{shlex.join(m.up)}` (skipped when the "
            "release ships the serving one's migrations and the schema is where it left it), "
            f"`{shlex.join(m.current)}`"
        )
    return (
        f"postgres and redis healthy; the ledger read; the migrations {rid} ships that it "
        "leaves pending, in its image (none pending: the ledger checked, no container)"
    )


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
    build = image_build_argv(rt, ctxdir, rid)
    env_r = release_env(rt, rid)
    servers = c.up(services=SERVER_SERVICES, wait_timeout_s=rt.wait_timeout_s)
    kind = proj.service.migrations.kind
    if kind == "command":
        up = ComposeTool(proj, name, rt, rid).argv(up=True)
    else:
        up = migrate_argv("up", release=rid, applied_by=actor, directory=migrations_dir(proj),
                          limits=cmd.migrate_limits(policy))  # fmt: skip
    migrate = c.run(APP_SERVICE, up, no_deps=True)
    backup = []
    user, database = role_and_database(rt)
    if policy.backup != "never":
        env_b = release_env(rt, None)
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
    ledger = [] if kind != "sql" else [ledger_argv(c, user=user, database=database)]
    # on an SSH host the release's sessions are counted there (compose_sessions)
    count = cmd.sessions_in_container(
        c, user=user, database=database, application_name=application_name(name, rid)
    )
    return [
        f"build:   {shown(build)}",
        *backup,
        *([] if kind == "none" else [f"migrate: {shown(servers, env_r)}"]),
        *(f"migrate: {shown(argv, release_env(rt, None))}" for argv in ledger),
        *([] if kind == "none" else [f"migrate: {shown(migrate, env_r)}"]),
        *(f"start:   {line}" for line in switch_shown(rt, rid, commit)),
        *([] if rt.host.is_local else [f"smoke:   {shown(count, release_env(rt, None))}"]),
    ]


def image_build_argv(rt: ComposeProject, ctxdir: str, rid: str) -> list[str]:
    """docker build of the release's context with the Dockerfile the engine wrote there."""
    return cmd.build_image(
        rt.image,
        rid,
        context=ctxdir,
        dockerfile=f"{ctxdir}/{compose_image.DOCKERFILE}",
        env_build_args=[compose_image.BASE_IMAGE_ARG],
    )


def _extract(proj: Project, host: Host, layout: Layout, commit: str, rid: str) -> str:
    """The commit's files on the host, as the image's build context (never the working tree),
    with the engine's Dockerfile, .dockerignore and migration modules beside them."""
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
    try:
        needs = releases.image_requirements(host, proj.service, target, commit)
    except ServiceError:
        host.remove_tree(target)
        raise
    files = compose_image.context_files(proj.service, needs)
    host.makedirs(*sorted({str(PurePosixPath(target, rel).parent) for rel in files}))
    for rel, text in files.items():
        host.write_text(str(PurePosixPath(target, rel)), text)
    return target


def migrations_check(proj: Project) -> guards.Check:
    """What migrates in the release's image: stageflow's SQL engine (kind "sql"), the service's
    own tool (kind "command", under the engine's lock) or nothing (kind "none")."""
    kind = proj.service.migrations.kind
    return guards.Check("migrations", True, f"kind {kind}")


def processes_check(proj: Project) -> guards.Check:
    """What runs beside the web service: each of [service.processes] in a container of the
    release's image (compose_processes)."""
    names = [name for name, _ in proj.service.processes]
    if names:
        return guards.Check(
            "processes", True, f"{', '.join(names)}: a container each, of the release's image"
        )
    return guards.Check("processes", True, "the web service only")


class ComposeRuntime:
    """The compose runtime as the deploy pipeline sees it: a release is an image tag, started by
    `up` on the environment's one host; migrations and backups run in containers there."""

    kind = "compose"

    def __init__(self, proj: Project, name: str, targets: list[Target]) -> None:
        self.proj, self.name, self.targets = proj, name, targets
        primary = targets[0]
        self.rt = project_for(proj, name, host=primary.host, layout=primary.layout)
        self.ctx: Context | None = None
        self._applied: list[int] | None = None
        self._ledger: list[dict[str, Any]] | None = None  # read by pending, trusted by migrate
        self._does: dict[str, str] = {}
        self._entries: list[dict[str, Any]] = []

    def bind(self, ctx: Context) -> None:
        self.ctx = ctx

    def up(self) -> list[str]:
        return up(self.proj, self.name)

    def down(self) -> list[str]:
        return down(self.proj, self.name)

    def logs(self, *, tail: int, service: str) -> str:
        """compose's logs; a process of [service.processes] is its compose service proc-<name>."""
        declared = {n for n, _ in self.proj.service.processes}
        named = f"{compose_processes.PREFIX}{service}" if service in declared else service
        return self.rt.logs(tail=tail, services=[named] if named else [])

    def take_backup(self, *, actor: str, release: str, reason: str) -> dict[str, Any]:
        return compose_backups.take_backup(
            self.proj, self.name, actor=actor, release=release, reason=reason
        )

    def list_backups(self) -> list[dict[str, Any]]:
        return compose_backups.list_backups(self.proj, self.name)

    def remove_backups(self, ids: list[str]) -> None:
        compose_backups.remove_backups(self.proj, self.name, ids)

    def verify_backup(self, backup_id: str) -> dict[str, Any]:
        return compose_backups.verify_backup(self.proj, self.name, backup_id)

    def servers_status(self) -> tuple[dict[str, Any], dict[str, Any]]:
        containers = container_status(self.proj, self.name)
        servers = {k: containers[k] for k in ("runtime", "engine", "postgres", "redis")}
        return servers, containers["app"]

    def checks(self) -> list[tuple[str, Callable[[], guards.Check]]]:
        return [
            ("engine", lambda: engine_check(self.rt)),
            ("backup", lambda: backup_check(self.proj, self.name)),
            ("migrations", lambda: migrations_check(self.proj)),
            ("processes", lambda: processes_check(self.proj)),
        ]

    def probe_serving(self) -> list[smoke.Probe]:
        """The probes with the serving release's database sessions, as a deploy's smoke asks
        them: on this machine, where the project publishes its ports on loopback; on an SSH
        host, the HTTP probe runs there and that host's cluster is counted there
        (compose_sessions)."""
        env = self.proj.env(self.name)
        current = serving(self.rt)
        if not self.rt.host.is_local:  # its port is published on that host's loopback, not ours
            return _probes_on_host(self.rt, self.proj, current)
        project = self.proj if current else None
        return smoke.run(env, self.proj.service, expect_release=current, project=project)

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
        rid = check_release(releases.new_release_id(commit, releases_in(history(host, layout))))
        ctxdir = _extract(ctx.proj, host, layout, commit, rid)
        argv = image_build_argv(rt, ctxdir, rid)
        try:
            res = host.run(argv, check=False, timeout=1800)
        finally:
            host.remove_tree(ctxdir)  # the image holds the files now
        if not res.ok:
            raise ServiceError(
                f"{ctx.env.name}: docker build of {rt.image}:{rid} failed (exit {res.exit_code}): "
                f"{res.tail(1)}",
                hint="fix the service's requirements or [service] in stageflow.toml, then deploy again",
            )
        # what the release was built from, and later the schema it migrated
        host.makedirs(ctxdir)
        meta = {"id": rid, "commit": commit, "ref": ref, "dirty": dirty, "image": rt.image}
        host.write_text(f"{ctxdir}/RELEASE.json", json.dumps(meta, indent=2))
        return releases.Release(rid, commit, ref, dirty), f"{rt.image}:{rid}"

    def pending(self, ctx: Context) -> list[int] | list[str]:
        rt = self.rt
        kind = ctx.proj.service.migrations.kind
        if kind == "command":  # the tool keeps its own books: what changed since the serving one
            prev = ctx.previous
            since = commit_of(history(ctx.host, ctx.layout), prev) if prev else None
            return env_migrations.pending_by_changes(
                ctx.proj, since, ctx.built.commit, first=prev is None
            )
        if kind == "none":
            return []
        # the servers must run to be read; the migrate step would start them next anyway
        rt.servers_up()
        self._ledger = compose_backups.ledger_rows(rt)
        self._applied = compose_backups.applied_of(self._ledger)
        shipped = [f.version for f in releases.migrations_at_commit(ctx.proj, ctx.built.commit)]
        return compose_backups.pending_versions(shipped, self._applied)

    def backup(self, ctx: Context, *, reason: str) -> dict[str, Any]:
        return compose_backups.take(
            self.rt,
            ctx.layout,
            actor=str(ctx.actor),
            release=ctx.previous or "",
            reason=reason,
            applied=self._applied,
        )

    def migrate(self, ctx: Context) -> list[int]:
        """The release's migrations in a one-off container of its image, only when the ledger
        leaves some pending: otherwise the ledger is checked from here as the container would
        (failed rows, drift, applied versions without a file) and no container starts. The
        deploy holds the environment's lock from the ledger read to the switch."""
        rid = ctx.built.id
        kind = ctx.proj.service.migrations.kind
        if kind == "none":
            return []
        if kind == "command":
            return self._migrate_with_tool(ctx)
        files = releases.migrations_at_commit(ctx.proj, ctx.built.commit)
        if self._ledger is None:  # the backup step read it when its policy asked
            self.rt.servers_up(release=rid)
            pending = self.pending(ctx)
        else:
            pending = compose_backups.pending_versions(
                [f.version for f in files], self._applied or []
            )
        if not pending:
            migrations.validate_rows(files, self._ledger or [])
            return []
        res = self.rt.migrate(
            migrate_argv(
                "up", release=rid, applied_by=str(ctx.actor), directory=migrations_dir(self.proj),
                limits=cmd.migrate_limits(ctx.policy),
            ),
            release=rid,
        )  # fmt: skip
        return _versions(res.stdout, "applied")

    def _migrate_with_tool(self, ctx: Context) -> list[str]:
        """The service's `current`, `up`, `current` in a one-off container of the new image; the
        revisions go into the release's RELEASE.json and history's notes."""
        host, layout, rid = ctx.host, ctx.layout, ctx.built.id
        serving = releases.release_meta(host, layout, ctx.previous) if ctx.previous else None
        unchanged = env_migrations.unchanged_schema(
            ctx.proj, serving, ctx.built.commit, dirty=ctx.built.dirty
        )
        change = ComposeTool(ctx.proj, self.name, self.rt, rid).migrate(unchanged_from=unchanged)
        releases.update_meta(host, layout, rid, **change.meta())
        ctx.hook_notes.append(f"schema {change.describe()}")
        return [change.describe()] if change.changed else []

    def host_steps(self, ctx: Context, target: Target) -> list[Step]:
        rt = self.rt
        where = f"127.0.0.1:{ctx.env.app_port}" if ctx.host.is_local else ctx.host.name

        def start() -> str:
            target.started = True
            sessions.preload()  # smoke's watch of the database sessions opens connections
            rt.up(ctx.built.id, commit=ctx.built.commit)
            return f"{rt.image}:{ctx.built.id} healthy"

        return [
            Step(
                "start",
                self._does.get("start", f"{rt.image}:<id> beside the serving one, then the switch"),
                start,
            ),
            Step(
                "smoke",
                self._does.get("smoke", f"health, ready, release, smoke checks on {where}"),
                lambda: _smoke(rt, self.proj.service, ctx.built.id, proj=self.proj),
            ),
        ]

    def revert(self, ctx: Context, target: Target) -> str | None:
        """Switch back to the previous tag (or stop the new app when there is none); when the new
        release never became ready, the previous one still serves and stays."""
        rt, prev, rid = self.rt, ctx.previous, ctx.built.id
        try:
            if prev:
                rt.up(prev, commit=commit_of(history(ctx.host, ctx.layout), prev))
                return prev
            res = rt.run(lambda c: c.stop(services=rt.with_processes(APP_SERVICE)), release=rid)
            if not res.ok:
                raise rt.failed("stopping the app", res)
        except DeployError as err:
            raise ServiceError(
                f"going back failed too: {err.message}",
                hint=f"nothing may be serving: `inv {ctx.env.name}.status`, then deploy a fix",
            ) from None
        return None

    def watch(self, ctx: Context, *, window_s: float) -> Any:
        from deploy.probes import verify

        if not ctx.host.is_local:
            return verify.Verdict(
                True,
                summary="health and ready checked by the front before the switch on the remote host",
            )
        return verify.watch_places(
            self.proj.service,
            ctx.policy.thresholds,
            [verify.LocalPlace(ctx.host, ctx.layout)],
            port=ctx.env.app_port,
            headers=smoke.auth_headers(ctx.env, self.proj.service),
            release=ctx.built.id,
            baseline=ctx.previous,
            window_s=window_s,
        )

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
        current = served(entries) if dry_run else serving(self.rt)
        if current is None and level == 3:
            # a restore needs no running app: one that stopped half-way is run again from history
            current = served(entries)
        if current is None:
            raise UsageError(
                f"{self.name} has no running release to roll back",
                hint=f"deploy one with `inv {self.name}.deploy`",
            )
        return compose_rollback.make_plan(
            self.proj, self.rt, entries, level=level, current=current, to=to,
            actor=str(ctx.actor), backup_id=backup_id, layout=ctx.layout,
        )  # fmt: skip

    def rollback_does(self, ctx: Context, p: RollbackPlan) -> dict[str, str]:
        info, schema = p.backup or {}, p.schema
        image = f" (with the {p.current} image)" if schema and schema.revert else ""
        return {
            "schema": (schema.describe() if schema else "") + image,
            "freeze": f"write {ctx.layout.freeze}: deploys refused until unfreeze",
            "stop": f"stop the app container ({p.current})"
            + (" and its processes" if self.rt.processes.declared else ""),
            "restore": f"copy {info.get('id')}.dump into the postgres container; drop and "
            f"recreate {ctx.env.database.name}; pg_restore it there",
        }

    def restart_steps(self, ctx: Context, p: RollbackPlan, details: list[str]) -> list[Step]:
        rt, current = self.rt, p.current or ""

        def restart() -> str:
            commit = commit_of(self._entries, current)
            res = rt.run(
                lambda c: c.restart(services=rt.restarted()), release=current, commit=commit
            )
            if not res.ok:
                raise rt.failed("compose restart", res)
            return f"{len(rt.up(current, commit=commit))} containers healthy"

        return [
            Step(
                "restart",
                f"restart {current}'s app, postgres and redis"
                + (" and processes" if rt.processes.declared else "")
                + " (the front keeps its connections), then point the front at it",
                restart,
            ),
            Step(
                "smoke",
                _SMOKE_ROW,
                lambda: _smoke(rt, self.proj.service, current, rolling_back=True, proj=self.proj),
            ),
        ]

    def revert_schema(self, ctx: Context, p: RollbackPlan, details: list[str]) -> str:
        schema, target, current = p.schema, p.target or "", p.current or ""
        assert schema is not None
        if isinstance(schema, ToolSchemaPlan):
            if not schema.revert:
                return schema.describe()
            try:  # the serving image ships the newer revisions the downs undo
                change = ComposeTool(self.proj, self.name, self.rt, current).down(schema)
            except MigrationError as err:
                raise MigrationError(
                    err.message, hint=f"level 2 stopped; {current} still serves"
                ) from None
            details.append(f"schema {change.describe()}")
            return f"schema {change.describe()}"
        if not schema.revert:
            if schema.since:
                details.append(f"schema kept (expand-only {list(schema.since)})")
            return schema.describe()
        argv = migrate_argv(
            "down", release=target, applied_by=str(ctx.actor), to=schema.target_version,
            directory=migrations_dir(self.proj),
        )  # fmt: skip
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
                f"{len(rt.up(target, commit=commit_of(self._entries, target)))} containers healthy"
            )

        return [
            Step(
                "start",
                f"{which} tag {rt.image}:{target} beside the serving one, then the switch",
                start,
            ),
            Step(
                "smoke",
                _SMOKE_ROW,
                lambda: _smoke(rt, self.proj.service, target, rolling_back=True, proj=self.proj),
            ),
        ]

    def stop_service(self, ctx: Context, p: RollbackPlan) -> str:
        stopped = self.rt.with_processes(APP_SERVICE)  # no worker writes while the restore runs
        res = self.rt.run(lambda c: c.stop(services=stopped), release=p.current)
        if not res.ok:
            raise self.rt.failed("stopping the app", res)
        return f"{p.current} stopped"

    def restore(self, ctx: Context, p: RollbackPlan, details: list[str]) -> str:
        info = p.backup or {}
        done = compose_backups.restore(self.rt, ctx.layout, info, actor=str(ctx.actor))
        details.append(f"restored backup {info['id']}; frozen")
        return done

    def check_rollback_target(self, ctx: Context, p: RollbackPlan) -> None:
        """Before anything changes: the dump is whole and the backup's image tag still exists."""
        info, rt = p.backup, self.rt
        if info is None:
            return
        compose_backups.check_dump(ctx.host, ctx.layout, info, name=self.name)
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
        return releases.Release(rid, commit_of(entries, rid), ref)

    def audit_extra(self, ctx: Context) -> dict[str, Any]:
        return {"runtime": "compose"}


_SMOKE_ROW = "health, ready, release, the [[service.smoke]] checks, redis"


def _smoke(
    rt: ComposeProject,
    service: Service,
    rid: str,
    *,
    rolling_back: bool = False,
    proj: Project | None = None,
) -> str:
    if not rt.host.is_local:
        return _probe_on_host(rt, service, rid, rolling_back=rolling_back, proj=proj)
    # with the project, the release's database sessions are asked of every cluster on this
    # machine, its own published on loopback (probes/sessions): a release on another
    # environment's cluster fails smoke, whatever its URL says
    probes = smoke.run(rt.cfg, service, expect_release=rid, project=proj)
    bad = smoke.failed(probes)
    if bad:
        _smoke_failed(rt, f"smoke failed ({bad[0].name}: {bad[0].detail})", rolling_back)
    return f"{len(probes)} probes passed in {sum(p.ms for p in probes):.0f} ms"


def _smoke_failed(rt: ComposeProject, what: str, rolling_back: bool) -> NoReturn:
    if rolling_back:  # nothing to go back to from a rollback: it failed, it did not roll back
        raise ServiceError(what, hint=f"inspect with `inv {rt.cfg.name}.logs`")
    raise RolledBack(what)


def _probe_on_host(
    rt: ComposeProject,
    service: Service,
    rid: str,
    *,
    rolling_back: bool = False,
    proj: Project | None = None,
) -> str:
    """The HTTP probe run on the host; with the project, the release's database sessions too:
    the other environments' clusters on this machine watched while it runs, the project's own
    counted on the host once it answered (compose_sessions)."""
    watch = compose_sessions.watch(rt, proj, rid) if proj else None
    try:
        said, failure = _http_on_host(rt, service, rid)
    finally:
        ok, detail = watch.stop() if watch else (True, "")
    if failure or not ok:
        _smoke_failed(rt, failure or f"smoke failed (sessions: {detail})", rolling_back)
    return f"{said}; sessions: {detail}" if watch else said


def _probes_on_host(rt: ComposeProject, proj: Project, current: str | None) -> list[smoke.Probe]:
    """`inv <env>.smoke` of a project on an SSH host, as a deploy's smoke asks: the HTTP probe
    run on the host, and (a release serving) where its database sessions are."""
    began = time.perf_counter()
    watch = compose_sessions.watch(rt, proj, current) if current else None
    try:
        said, failure = _http_on_host(rt, proj.service, current)
    finally:
        ok, detail = watch.stop() if watch else (True, "")
    probes = [
        smoke.Probe("http", not failure, failure or said, (time.perf_counter() - began) * 1e3)
    ]
    return [*probes, smoke.Probe("sessions", ok, detail, 0.0)] if watch else probes


def _http_on_host(rt: ComposeProject, service: Service, rid: str | None) -> tuple[str, str]:
    """(what answered, "") or ("", why smoke failed): health, ready and the release that
    answers (rid, or any when None), asked by the host's python3 of the port its front
    publishes there."""
    base = f"http://127.0.0.1:{rt.cfg.app_port}"
    # a few tries: a container of the old tag may still answer while compose replaces it
    serving_now: list[str] = []
    detail = ""
    for _ in range(5):
        argv = appcmd.http_probe(
            base,
            health=service.health,
            ready=service.ready_path,
            version=service.version,
            ready_redirects=service.ready_redirects,
        )
        res = rt.host.run(argv, check=False, timeout=30)
        serving_now = res.stdout.strip().splitlines()[-1:] if res.ok else []
        if res.ok and (rid is None or serving_now == [rid]):
            return f"health, ready and release answered on {rt.host.name}'s {base}", ""
        detail = f"serving {serving_now[0]}" if serving_now else rt.scrub(res.tail(1))
        time.sleep(0.5)
    return "", f"smoke failed on {rt.host.name} ({detail}, expected {rid})"


def _prune(rt: ComposeProject, host: Host, layout: Layout, *, keep: int, protect: set[str]) -> str:
    """Untag the served release that falls out of the newest `keep` (one per deploy)."""
    entries = history(host, layout)
    good = [
        str(e["release"])
        for e in reversed(entries)
        if e.get("status") == "success" and e.get("kind") in SERVED_KINDS and e.get("release")
    ]
    newest = list(dict.fromkeys([*[p for p in protect if p], *good]))
    if len(newest) <= keep or newest[keep] in protect:
        return "pruned 0"
    res = host.run(cmd.remove_image(rt.image, newest[keep]), check=False, timeout=120)
    host.remove_tree(layout.release(newest[keep]))  # its RELEASE.json: no image, nothing to read
    return f"pruned {rt.image}:{newest[keep]}" if res.ok else f"{newest[keep]} already gone"
