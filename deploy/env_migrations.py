"""An environment's migrations, whatever migrates the service's schema.

kind = "sql": stageflow's engine runs the release's files of migrations.dir against the
environment's database. kind = "command": the service's own tool (alembic, Flask-Migrate, Django)
runs its `up`, `current` and `down` commands in a release's venv with the service's settings, while
stageflow holds the same migration lock on a connection of its own. kind = "none": nothing.

Apart from deploy/migrations.py because that module also runs inside the application image,
where only it, deploy/errors.py, deploy/secrets.py and deploy/redact.py are shipped.
"""

from __future__ import annotations

import re
import shlex
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from deploy import binaries, migrations, psql
from deploy.commands import git as gitcmd
from deploy.commands import postgres as pg
from deploy.config import EnvConfig, Project
from deploy.engine.rollback_rules import ToolSchemaPlan
from deploy.errors import MigrationError, ServiceError, UsageError
from deploy.hosts import Host, run_process
from deploy.migrations import MigrationFile, MigrationStatus
from deploy.secrets import scrub
from deploy.state import Layout, audit


def ledger_rows(env: EnvConfig, *, connect_timeout: int = 10) -> list[dict[str, Any]]:
    """env's migration ledger, oldest first, [] with no ledger (migrations.parse_rows): read by
    psql in one query (deploy.psql), or by the driver where there is no psql. Read-only, no lock."""
    password = env.secret("POSTGRES_PASSWORD")
    if not psql.available():
        return migrations.ledger_rows_by_driver(
            env.database_url, password=password, connect_timeout=connect_timeout
        )
    try:
        out = psql.query(
            env.database_url,
            pg.ledger_rows_sql(migrations.LEDGER_TABLE)[0],
            password=password,
            timeout_s=connect_timeout,
            application="stageflow-migrations",
        )
        return migrations.parse_rows((out.splitlines() or [""])[-1])
    except ServiceError as exc:
        raise MigrationError(
            f"cannot read {env.name}'s migration ledger: {exc.message}",
            hint="check that PostgreSQL runs and the database URL is right",
        ) from None
    except ValueError:
        raise MigrationError(f"{env.name}'s migration ledger could not be read as rows") from None


COMMAND_TIMEOUT_S = 3600.0
# when a service's migrations.dir is its own folder ("."), only these folders hold migrations
# (Django's <app>/migrations, alembic's versions); any other migrations.dir counts whole
_MIGRATION_FOLDERS = ("migrations", "versions")
# what PostgreSQL says when lock_timeout or statement_timeout cancels a statement
_PG_TIMEOUT = re.compile(r"canceling statement due to (lock|statement) timeout")
# an extension the server's installation does not ship (the embedded wheel has no uuid-ossp)
_NO_EXTENSION = re.compile(
    r'extension "([\w-]+)" is not available|could not open extension control file "[^"]*/([\w-]+)\.control"'
)


def missing_extension_hint(output: str) -> str:
    """What to do when a migration asked for an extension this PostgreSQL does not have, or ""."""
    hit = _NO_EXTENSION.search(output)
    if not hit:
        return ""
    return (
        f"this environment's PostgreSQL has no extension {hit[1] or hit[2]}: set "
        f"{binaries.POSTGRES_BIN_VAR} to the bin folder of an installed PostgreSQL that has it "
        "(Debian's postgresql and postgresql-contrib: /usr/lib/postgresql/<major>/bin) for every "
        "command on this environment, and give it a cluster of that version (docs/ENVIRONMENT.md); "
        "the previous release still serves"
    )


# Django's system checks, which every management command runs first: "SystemCheckError: System
# check identified some issues", then one line per issue ("app.Model.field: (postgres.E005) ...")
_DJANGO_CHECKS = re.compile(r"^SystemCheckError\b|\(\w+\.E\d{3}\)", re.M)


def django_checks_hint(output: str) -> str:
    """What to do when Django's system checks stopped the command before any migration ran."""
    if not _DJANGO_CHECKS.search(output):
        return ""
    return (
        "Django's system checks failed before any migration ran: fix the settings they name "
        "(INSTALLED_APPS, say) for this environment and deploy again; the previous release "
        "still serves"
    )


def output_hint(output: str) -> str:
    """What a failed command's output says to do: an extension, Django's checks; or ""."""
    return missing_extension_hint(output) or django_checks_hint(output)


def kind_of(proj: Project) -> str:
    return proj.service.migrations.kind


# -- kind = "sql": the release's files ---------------------------------------------------------


def _files_dir(proj: Project) -> str:
    svc = proj.service
    return svc.repo_path(svc.migrations.dir)


def files_in(proj: Project, release_dir: str) -> list[MigrationFile]:
    """The SQL migrations a release directory (or the working tree) ships."""
    return migrations.in_release(release_dir, directory=_files_dir(proj))


def release_migration_files(
    proj: Project, host: Host, layout: Layout, rid: str
) -> list[MigrationFile]:
    """The SQL migrations shipped in release rid on host; a remote host's are copied here first
    (each file's text is kept in memory, so the copy can go)."""
    if host.is_local:
        return files_in(proj, layout.release(rid))
    relative = _files_dir(proj)
    directory = f"{layout.release(rid)}/{relative}"
    if not host.exists(directory):
        raise ServiceError(
            f"{host.name}: release {rid} has no {relative}",
            hint="the release directory is incomplete; deploy its commit again",
        )
    with tempfile.TemporaryDirectory(prefix="stageflow-migrations-") as tmp:
        for fname in host.listdir(directory):
            if fname.endswith(".sql"):
                (Path(tmp) / fname).write_text(host.read_text(f"{directory}/{fname}") or "")
        return migrations.discover(Path(tmp))


def _sql_only(proj: Project, name: str) -> None:
    kind = kind_of(proj)
    if kind != "sql":
        raise UsageError(
            f'{name}: [service.migrations] kind = "{kind}": stageflow keeps no ledger of its own',
            hint="the deploy runs the service's `up` command; use the service's own tool to look",
        )


def serving_files(proj: Project, name: str) -> list[MigrationFile]:
    """The migrations of the release serving `name`, read on its primary host; before the first
    deploy, the working tree's (what the first deploy would apply)."""
    from deploy import releases
    from deploy.engine import group

    host, layout = group.primary(proj, name)
    try:
        current = releases.current_release(host, layout)
        if current:
            return release_migration_files(proj, host, layout, current)
    finally:
        host.close()
    return files_in(proj, str(proj.root))


def migrate(
    proj: Project, name: str, *, target: int | None, dry_run: bool, actor: str
) -> list[MigrationFile]:
    """Apply (or with dry_run, plan) the serving release's pending migrations up to target."""
    _sql_only(proj, name)
    env = proj.env(name)
    return migrations.migrate(
        env.database_url,
        serving_files(proj, name),
        target=target,
        dry_run=dry_run,
        applied_by=actor,
        password=env.secret("POSTGRES_PASSWORD"),
        **timeouts(proj, name),
    )


def timeouts(proj: Project, name: str, *, deadline: float | None = None) -> dict[str, Any]:
    """The environment's policy lock_timeout and statement_timeout for the SQL engine, and the
    deadline (the deploy's) past which no migration runs."""
    policy = proj.policies[name]
    return {
        "lock_timeout": policy.lock_timeout,
        "statement_timeout": policy.statement_timeout,
        "deadline": deadline,
    }


def tool_timeouts_ms(proj: Project, name: str) -> tuple[int, int]:
    """(lock_timeout, statement_timeout) in ms for the service's own migration tool: the
    environment's policy where its table sets them, else the tool's defaults (the engine's lock
    wait, no statement limit: a tool's data migration may rightly run long unless the operator
    bounds it)."""
    policy = proj.policies[name]
    lock, statement = migrations.COMMAND_LOCK_TIMEOUT_MS, migrations.COMMAND_STATEMENT_TIMEOUT_MS
    if "lock_timeout" in policy.written:
        lock = migrations.duration_ms(policy.lock_timeout)
    if "statement_timeout" in policy.written:
        statement = migrations.duration_ms(policy.statement_timeout)
    return lock, statement


def resolve(proj: Project, name: str, *, version: int, state: str, actor: str) -> None:
    """Mark a failed migration applied (finished by hand) or reverted (to run again); its file
    need not be in the serving release (a failed deploy's is not). Audited on the primary."""
    from deploy.engine import group

    if state not in ("applied", "reverted"):
        raise UsageError("--resolve needs --mark applied or --mark reverted")
    _sql_only(proj, name)
    env = proj.env(name)
    with_file = migrations.resolve_failed(
        env.database_url,
        serving_files(proj, name),
        version=version,
        state=state,  # type: ignore[arg-type]  # one of the two, checked above
        applied_by=actor,
        password=env.secret("POSTGRES_PASSWORD"),
    )
    host, layout = group.primary(proj, name)
    try:
        audit(
            host,
            layout,
            actor=actor,
            action="migration-resolve",
            version=version,
            state=state,
            file="serving release" if with_file else "none (the ledger's record)",
        )
    finally:
        host.close()


def status(proj: Project, name: str) -> list[MigrationStatus]:
    """Every version the serving release's files or the ledger know, read-only."""
    _sql_only(proj, name)
    env = proj.env(name)
    return migrations.status(
        env.database_url, serving_files(proj, name), password=env.secret("POSTGRES_PASSWORD")
    )


# -- kind = "command": the service's own tool --------------------------------------------------


def tool_revisions(proj: Project, name: str) -> dict[str, str]:
    """What the service's `current` command says the schema is at, run in the serving release
    on the environment's first host ({app: revision} for Django, {"": revision} for one
    history). Read-only: the tool's own command, no ledger of stageflow's."""
    from deploy import releases
    from deploy.engine import group

    if kind_of(proj) != "command":
        _sql_only(proj, name)
    host, layout = group.primary(proj, name)
    try:
        rid = releases.current_release(host, layout)
        if not rid:
            raise UsageError(
                f"{name}: no release serves yet, so no `current` command can run",
                hint=f"deploy first: inv {name}.deploy",
            )
        return MigrationTool(proj, name, host, layout, rid).current()
    finally:
        host.close()


@dataclass(frozen=True)
class SchemaChange:
    """The revisions `current` printed before and after a migrate step."""

    before: dict[str, str]
    after: dict[str, str]

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def describe(self) -> str:
        return migrations.describe_change(self.before, self.after)

    def meta(self) -> dict[str, Any]:
        """What the release's RELEASE.json keeps: the schema it was deployed on and left."""
        return {"schema_before": self.before, "schema_after": self.after}


@dataclass(frozen=True)
class MigrationTool:
    """The service's migration commands, run in one release on one host."""

    proj: Project
    name: str
    host: Host
    layout: Layout
    rid: str
    # another database of the environment (a reset builds one beside the live one)
    target: EnvConfig | None = None
    # time.monotonic() past which no command starts and a running one is stopped: the deploy's
    # deadline (deploy_timeout_s); without one, each command gets COMMAND_TIMEOUT_S
    deadline: float | None = None

    @property
    def env(self) -> EnvConfig:
        return self.target or self.proj.env(self.name)

    @property
    def release_dir(self) -> str:
        return self.layout.release(self.rid)

    def extra_env(self) -> dict[str, str]:
        """The environment's timeouts for libpq (PGOPTIONS), so the tool waits on locks no longer
        than stageflow's own engine; no secret, so it may travel as an argument of the launcher."""
        lock_ms, statement_ms = tool_timeouts_ms(self.proj, self.name)
        return {
            "PGOPTIONS": migrations.pg_options(
                lock_timeout_ms=lock_ms, statement_timeout_ms=statement_ms
            )
        }

    def run(self, argv: Sequence[str], *, what: str) -> str:
        """Run one of the service's commands in the release's venv with the service's settings,
        on this machine or over SSH alike; its stdout, or one MigrationError line (scrubbed)."""
        from deploy import releases

        timeout = COMMAND_TIMEOUT_S
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise MigrationError(
                    f"{what} `{shlex.join(argv)}` not started: the deploy ran past "
                    f"deploy_timeout_s ({self.proj.policies[self.name].deploy_timeout_s:g}s)",
                    hint=f"raise deploy_timeout_s in [environments.{self.name}] or retry",
                )
            timeout = min(timeout, left)
        res = releases.service_command(
            self.host,
            self.env,
            self.proj.service,
            self.layout,
            self.rid,
            argv,
            timeout=timeout,
            extra_env=self.extra_env(),
        )
        if res.timed_out:
            raise MigrationError(
                f"{what} `{shlex.join(argv)}` was stopped after {timeout:.0f}s: "
                + (
                    f"the deploy reached deploy_timeout_s "
                    f"({self.proj.policies[self.name].deploy_timeout_s:g}s)"
                    if timeout < COMMAND_TIMEOUT_S
                    else f"it ran longer than {COMMAND_TIMEOUT_S:g}s"
                ),
                hint=f"raise deploy_timeout_s in [environments.{self.name}], or make the "
                "migration shorter; the previous release still serves",
            )
        if not res.ok:
            # a traceback's last line says what went wrong (a driver's error, a setting pydantic
            # refused), where the tail may be a library's trailer ("Background on this error")
            raised = releases.raised_in(f"{res.stderr}\n{res.stdout}".strip().splitlines())
            said = f"{what} `{shlex.join(argv)}` exited {res.exit_code}: {raised or res.tail(2)}"
            hint = releases.command_hint(raised, self.env, self.proj.service)
            hint = (
                f"{hint}; the previous release still serves"
                if hint
                else output_hint(f"{res.stderr}\n{res.stdout}")
                or "fix the migration and deploy again; the previous release still serves"
            )
            # a tool's traceback ends in its own lines (SQLAlchemy's [SQL: ...]): name the limit
            # the policy set, which the tail would hide, and the knob that moves it
            hit = _PG_TIMEOUT.search(f"{res.stderr}\n{res.stdout}")
            if hit:
                said = f"{what} `{shlex.join(argv)}` hit the {hit[1]} timeout: {res.tail(2)}"
                hint = (
                    f"retry when the database is quieter, or raise {hit[1]}_timeout in "
                    f"[environments.{self.name}]; the previous release still serves"
                )
            raise MigrationError(scrub(said, releases.secret_forms(self.env)), hint=hint)
        return res.stdout

    def current(self) -> dict[str, str]:
        argv = self.proj.service.migrations.current
        return migrations.parse_revisions(self.run(argv, what="the current command"))

    def locked(self) -> Any:
        env = self.env
        return migrations.holding_lock(env.database_url, password=env.secret("POSTGRES_PASSWORD"))


def migrate_command(
    t: MigrationTool, *, unchanged_from: Mapping[str, str] | None = None
) -> SchemaChange:
    """`current`, `up`, `current` under the migration lock: what the release migrated from and to.

    unchanged_from: the revisions the serving release recorded, when this release ships its
    migrations unchanged. If `current` still shows them, `up` has nothing to apply (the same
    migrations brought the schema there), so one `current` is the whole step: each run of the
    service's tool is a Python start importing the service. Anything else runs all three."""
    with t.locked() as conn:
        if unchanged_from is not None and migrations.alembic_table_shows(
            conn, unchanged_from, t.proj.service.migrations.current
        ):  # alembic's table shows what `current` would: not even that command runs
            return SchemaChange(dict(unchanged_from), dict(unchanged_from))
        before = t.current()
        if unchanged_from is not None and before == dict(unchanged_from):
            return SchemaChange(before, before)
        t.run(t.proj.service.migrations.up, what="the up command")
        return SchemaChange(before, t.current())


def unchanged_schema(
    proj: Project, serving: Mapping[str, Any] | None, commit: str, *, dirty: bool
) -> dict[str, str] | None:
    """The revisions the serving release (its RELEASE.json) recorded, when a clean build of
    commit ships that release's migration files unchanged; None when that cannot be told."""
    if dirty or not serving or serving.get("dirty") or not serving.get("commit"):
        return None
    if changed_migration_files(proj, str(serving["commit"]), commit) != []:
        return None
    return recorded_revisions(serving)


class ReadsRevisions(Protocol):
    """Where the serving release's `current` runs: its venv (MigrationTool) or its image."""

    proj: Project

    def current(self) -> dict[str, str]: ...


def down_plan(
    serving: ReadsRevisions, wanted: Mapping[str, str] | None, *, target: str
) -> ToolSchemaPlan:
    """Level 2 back to release target: `down` to the revisions it recorded, for each app whose
    revision differs from what the serving release's `current` prints now. Refused (level 3 is
    then the way) without a recorded revision, or when a step is needed and there is no `down`."""
    m = serving.proj.service.migrations
    if m.kind == "none":
        return ToolSchemaPlan(kind="none")
    if wanted is None:
        return ToolSchemaPlan(refusal=f"release {target} recorded no schema revision")
    now = serving.current()
    steps = migrations.revision_steps(now, wanted)
    if steps and not m.down:
        return ToolSchemaPlan(now, dict(wanted), refusal="the service has no `down` command")
    commands = tuple(tuple(migrations.fill(m.down, target=rev, app=app)) for app, rev in steps)
    return ToolSchemaPlan(now, dict(wanted), commands)


def migrate_down(serving: MigrationTool, plan: ToolSchemaPlan) -> SchemaChange:
    """Run the plan's down commands in the serving release (only it knows the newer revisions)."""
    with serving.locked():
        before = serving.current()
        for argv in plan.commands:
            serving.run(argv, what="the down command")
        return SchemaChange(before, serving.current())


def recorded_revisions(meta: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The revisions a release left its schema at, from its RELEASE.json; None when unrecorded."""
    after = (meta or {}).get("schema_after")
    if not isinstance(after, dict) or not all(isinstance(v, str) for v in after.values()):
        return None
    return {str(k): v for k, v in after.items()}


# -- what changed between two commits ----------------------------------------------------------


def _counts(path: str, directory: str, *, in_folders: bool) -> bool:
    """A changed path is a migration when it lies under directory (the service's migrations.dir,
    from the repository's root); with in_folders (migrations.dir is the service's own folder, as
    for Django, whose apps keep theirs in <app>/migrations), only inside a migrations or versions
    folder below it."""
    p = PurePosixPath(path)
    if "__pycache__" in p.parts or p.name == "__init__.py":  # a package marker, no migration
        return False
    if p.name.startswith("."):  # a placeholder keeping an empty folder in git (.keep, .gitkeep)
        return False
    if directory not in ("", "."):
        if not p.is_relative_to(directory):
            return False
        p = p.relative_to(directory)
    return not in_folders or any(part in _MIGRATION_FOLDERS for part in p.parts[:-1])


def changed_migration_files(proj: Project, since: str | None, commit: str) -> list[str] | None:
    """The files of migrations.dir that changed from commit since to commit (all of them at
    commit when since is None: a first deploy); None when git cannot tell, or when commit has no
    migrations.dir at all (a wrong dir would otherwise read as "no migration": fail closed)."""
    svc = proj.service
    directory = svc.repo_path(svc.migrations.dir)
    in_folders = svc.migrations.dir in ("", ".")
    where = [] if directory in ("", ".") else [directory]
    if where:
        present = run_process(gitcmd.ls_tree_names(commit, directory), cwd=proj.root)
        if not present.ok or not present.stdout.strip():
            return None
    argv = (
        gitcmd.diff_names(since, commit, paths=where)
        if since
        else gitcmd.ls_tree_names(commit, *where, recursive=True)
    )
    out = run_process(argv, cwd=proj.root)
    if not out.ok:
        return None
    return [
        n for n in out.stdout.splitlines() if n and _counts(n, directory, in_folders=in_folders)
    ]


def pending_by_changes(
    proj: Project, since: str | None, commit: str, *, first: bool = False
) -> list[str]:
    """For the backup policy: the migration files changed since the serving release's commit
    (every one at commit on a first deploy), or one entry when that cannot be told (the serving
    release recorded no commit, git knows no such commit), so the backup is taken: fail closed."""
    changed = changed_migration_files(proj, since, commit) if since or first else None
    return ["(cannot tell what changed since the serving release)"] if changed is None else changed
