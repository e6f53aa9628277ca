"""docker compose argv builders: one environment's project, files and env files; nothing runs here."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

# re-exported: compose callers name the container's clients and statements through this module
from deploy.commands.postgres import MAINTENANCE_DB as MAINTENANCE_DB
from deploy.commands.postgres import create_database_sql as create_database_sql
from deploy.commands.postgres import drop_database_sql as drop_database_sql
from deploy.commands.postgres import ledger_rows_sql as ledger_rows_sql
from deploy.commands.postgres import pg_dump as pg_dump
from deploy.commands.postgres import pg_restore as pg_restore
from deploy.commands.postgres import psql as psql
from deploy.commands.postgres import quote_ident as quote_ident
from deploy.commands.postgres import recreate_database_sql as recreate_database_sql
from deploy.commands.postgres import sessions_sql as sessions_sql
from deploy.commands.postgres import table_counts_sql as table_counts_sql

DOCKER = "docker"
BASE_FILE = "compose/compose.yml"


def compose_files(env: str) -> tuple[str, str]:
    """The two compose files of an environment, relative to the project root."""
    return (BASE_FILE, f"compose/compose.{env}.yml")


def base(
    project: str, env_file: str, files: Sequence[str], *, secrets_file: str | None = None
) -> list[str]:
    """`docker compose -p P --env-file E [--env-file S] -f F...`: every compose command starts so."""
    argv = [DOCKER, "compose", "-p", project, "--env-file", env_file]
    if secrets_file:
        # A later --env-file wins; secrets only add keys a committed file may not hold.
        argv += ["--env-file", secrets_file]
    for f in files:
        argv += ["-f", f]
    return argv


@dataclass(frozen=True)
class ComposeCommands:
    """The builders for one compose project (an environment on one host)."""

    project: str
    env_file: str
    files: tuple[str, ...]
    secrets_file: str | None = None

    def base(self) -> list[str]:
        return base(self.project, self.env_file, self.files, secrets_file=self.secrets_file)

    def up(
        self, *, services: Sequence[str] = (), wait: bool = True, wait_timeout_s: int | None = None
    ) -> list[str]:
        argv = [*self.base(), "up", "-d"]
        if wait:
            argv.append("--wait")
            if wait_timeout_s is not None:
                argv += ["--wait-timeout", str(wait_timeout_s)]
        return [*argv, "--remove-orphans", *services]

    def beside(self, service: str, *, count: int) -> list[str]:
        """One more container of service's current model beside the `count - 1` running ones: no
        existing container is recreated, and the servers it depends on are left alone."""
        return self.scale_up({service: count})

    def scale_up(self, counts: Mapping[str, int]) -> list[str]:
        """beside() for several services at once: each service up to its count, in one call."""
        argv = [*self.base(), "up", "-d", "--no-deps", "--no-recreate"]
        for service, count in counts.items():
            argv += ["--scale", f"{service}={count}"]
        return [*argv, *counts]

    def pull(self, *, services: Sequence[str] = ()) -> list[str]:
        return [*self.base(), "pull", "--quiet", *services]

    def ps(self, *, all_states: bool = False) -> list[str]:
        return [*self.base(), "ps", *(["--all"] if all_states else []), "--format", "json"]

    def logs(self, *, services: Sequence[str] = (), tail: int = 100) -> list[str]:
        return [*self.base(), "logs", "--no-color", "--tail", str(tail), *services]

    def down(self, *, volumes: bool = False, timeout_s: int | None = None) -> list[str]:
        """Stop and remove containers; data volumes go only when the caller says so."""
        argv = [*self.base(), "down", "--remove-orphans"]
        if timeout_s is not None:
            argv += ["--timeout", str(timeout_s)]
        return [*argv, "--volumes"] if volumes else argv

    def exec(self, service: str, argv: Sequence[str], *, user: str | None = None) -> list[str]:
        # -T: no TTY, so output is captured and the exit code is the command's own.
        out = [*self.base(), "exec", "-T"]
        if user:
            out += ["--user", user]
        return [*out, service, *argv]

    def run(self, service: str, argv: Sequence[str], *, no_deps: bool = False) -> list[str]:
        """A one-off container of service's image (e.g. migrations of a release not yet live)."""
        return [
            *self.base(),
            "run",
            "--rm",
            "-T",
            *(["--no-deps"] if no_deps else []),
            service,
            *argv,
        ]

    def restart(self, *, services: Sequence[str] = (), timeout_s: int | None = None) -> list[str]:
        argv = [*self.base(), "restart"]
        if timeout_s is not None:
            argv += ["--timeout", str(timeout_s)]
        return [*argv, *services]

    def stop(self, *, services: Sequence[str] = (), timeout_s: int | None = None) -> list[str]:
        """Stop containers and keep them (a failed first release stops; nothing to go back to)."""
        argv = [*self.base(), "stop"]
        if timeout_s is not None:
            argv += ["--timeout", str(timeout_s)]
        return [*argv, *services]

    def config(self) -> list[str]:
        """Validate the files and their interpolation; --quiet so resolved secrets never print."""
        return [*self.base(), "config", "--quiet"]

    def cp(self, source: str, destination: str) -> list[str]:
        """Copy one file between the host and a container; name the container side SERVICE:PATH."""
        return [*self.base(), "cp", source, destination]


# -- the front: the app port's stable forwarder (deploy/runtime/compose_front.py) ------------------

FRONT_SERVICE = "front"
# compose.yml runs the front with this; the same boot runs its control commands through exec
FRONT_BOOT = "import os; exec(os.environ['STAGEFLOW_FRONT_CODE'])"


def front_switch(
    c: ComposeCommands, target: str, *, paths: Sequence[str], ready_s: float, drain_s: float
) -> list[str]:
    """Move the front's new connections to target once every path answers there (the first, the
    health path, 2xx or 3xx; the others 2xx); returns when the connections to any other target
    have closed (or drain_s passed)."""
    args = ["switch", target, f"{ready_s:g}", f"{drain_s:g}", *paths]
    return c.exec(FRONT_SERVICE, ["python", "-c", FRONT_BOOT, *args])


def front_target(c: ComposeCommands) -> list[str]:
    """Where the front sends new connections, as one JSON line."""
    return c.exec(FRONT_SERVICE, ["python", "-c", FRONT_BOOT, "target"])


def stop_containers(ids: Sequence[str], *, timeout_s: int) -> list[str]:
    """SIGTERM, then SIGKILL after timeout_s: gunicorn finishes the requests in flight first."""
    return [DOCKER, "stop", "--time", str(timeout_s), *ids]


def remove_containers(ids: Sequence[str]) -> list[str]:
    """Remove stopped containers (a replaced release's, or one that never became ready)."""
    return [DOCKER, "rm", *ids]


# one line per container, in the order asked: its state, its restarts, its last exit code
CONTAINER_STATE_FORMAT = "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}"


def container_states(ids: Sequence[str]) -> list[str]:
    """How the engine sees each container: a process that exited or was restarted did not start."""
    return [DOCKER, "inspect", "--format", CONTAINER_STATE_FORMAT, *ids]


def container_logs(container: str, *, tail: int) -> list[str]:
    """The last lines one container printed (a process that did not start says why there)."""
    return [DOCKER, "logs", "--tail", str(tail), container]


def engine_info() -> list[str]:
    """Answers only when a Docker engine does: the client alone exits non-zero."""
    return [DOCKER, "info", "--format", "{{.ServerVersion}}"]


def compose_version() -> list[str]:
    return [DOCKER, "compose", "version", "--short"]


def image_ref(image: str, tag: str) -> str:
    return f"{image}:{tag}"


def build_image(
    image: str,
    tag: str,
    *,
    context: str = ".",
    dockerfile: str = "Dockerfile",
    env_build_args: Sequence[str] = (),
) -> list[str]:
    """`docker build`; each env_build_args name is passed bare, so docker takes its value from its
    own environment (and the Dockerfile's default when it is unset): no value is on argv."""
    args = [a for name in env_build_args for a in ("--build-arg", name)]
    return [DOCKER, "build", "--tag", image_ref(image, tag), "--file", dockerfile, *args, context]


def remove_image(image: str, tag: str) -> list[str]:
    """Untag one release's image (prune); layers another tag still uses stay."""
    return [DOCKER, "image", "rm", image_ref(image, tag)]


def image_exists(image: str, tag: str) -> list[str]:
    return [DOCKER, "image", "inspect", "--format", "{{.Id}}", image_ref(image, tag)]


# -- PostgreSQL inside the postgres container (argv for ComposeCommands.exec) ------------------------
# The postgres image trusts its own socket for POSTGRES_USER, its superuser: no password goes on
# a command line, and the database need not be reachable from the machine running stageflow.
# The clients and statements are deploy.commands.postgres's, re-exported at the top of this module.

PG_SERVICE = "postgres"


def in_container(service: str, path: str) -> str:
    """`SERVICE:PATH`, the container side of `compose cp`."""
    return f"{service}:{path}"


def container_dump(backup_id: str) -> str:
    """Where a dump sits inside the postgres container between pg_dump or pg_restore and cp."""
    return f"/tmp/{backup_id}.dump"


def remove_file(path: str) -> list[str]:
    """The container's copy of a dump: always container_dump's absolute path, never an option."""
    return ["rm", "-f", path]


def backup_in_container(
    c: ComposeCommands, *, user: str, database: str, backup_id: str, backups_dir: str
) -> list[list[str]]:
    """Dump in the container, copy the dump to the host's backups dir, remove the container's copy."""
    tmp = container_dump(backup_id)
    return [
        c.exec(PG_SERVICE, pg_dump(user=user, database=database, output=tmp)),
        c.cp(in_container(PG_SERVICE, tmp), f"{backups_dir}/{backup_id}.dump"),
        c.exec(PG_SERVICE, remove_file(tmp)),
    ]


def restore_in_container(
    c: ComposeCommands, *, user: str, database: str, backup_id: str, backups_dir: str
) -> list[list[str]]:
    """Copy the dump in, drop and recreate the database, pg_restore, remove the container's copy."""
    tmp = container_dump(backup_id)
    return [
        c.cp(f"{backups_dir}/{backup_id}.dump", in_container(PG_SERVICE, tmp)),
        c.exec(
            PG_SERVICE,
            psql(
                user=user,
                database=MAINTENANCE_DB,
                statements=recreate_database_sql(database, user),
            ),
        ),
        c.exec(PG_SERVICE, pg_restore(user=user, database=database, dump=tmp)),
        c.exec(PG_SERVICE, remove_file(tmp)),
    ]


def ledger_in_container(
    c: ComposeCommands, *, user: str, database: str, ledger_table: str
) -> list[str]:
    """psql in the container printing the migration ledger's rows as JSON (ledger_rows_sql)."""
    return c.exec(
        PG_SERVICE,
        psql(user=user, database=database, statements=ledger_rows_sql(ledger_table)),
    )


def sessions_in_container(
    c: ComposeCommands, *, user: str, database: str, application_name: str
) -> list[str]:
    """psql in the container printing how many sessions carry application_name (sessions_sql):
    a release's sessions, counted where this machine cannot reach the cluster itself."""
    return c.exec(
        PG_SERVICE,
        psql(user=user, database=database, statements=sessions_sql(application_name)),
    )


# -- migrations in a one-off container of a release's image ------------------------------------------

MIGRATE_MODULE = "deploy.compose_migrate"


class MigrationPolicy(Protocol):
    """What migrate_limits reads of an environment's policy (config.EnvPolicy has it)."""

    @property
    def lock_timeout(self) -> str: ...
    @property
    def statement_timeout(self) -> str: ...
    @property
    def deploy_timeout_s(self) -> float: ...


def migrate_limits(policy: MigrationPolicy) -> tuple[str, str, float]:
    """The environment's (lock_timeout, statement_timeout, deploy_timeout_s) for migrate's
    limits: the one-off container's migration ends within deploy_timeout_s of its start (the
    deployer's monotonic deadline means nothing in another process, and a plan must print the
    same command as the run)."""
    return policy.lock_timeout, policy.statement_timeout, policy.deploy_timeout_s


def migrate(
    action: str,
    *,
    release: str,
    applied_by: str,
    directory: str,
    to: int | None = None,
    limits: tuple[str, str, float] | None = None,
) -> list[str]:
    """The migration command run in a one-off container of a release's image (ComposeCommands.run);
    directory is the service's migrations.dir, relative to the image's working directory; limits
    is (lock_timeout, statement_timeout, seconds the migration may take)."""
    argv = ["python", "-m", MIGRATE_MODULE, action, "--dir", directory]
    if to is not None:
        argv += ["--to", str(to)]
    argv += ["--release", release, "--applied-by", applied_by]
    if limits is not None:
        lock, statement, within_s = limits
        argv += ["--lock-timeout", lock, "--statement-timeout", statement]
        argv += ["--deadline-s", f"{within_s:g}"]
    return argv


def migrate_tool(
    current: Sequence[str],
    *,
    up: Sequence[str] | None = None,
    down: Sequence[Sequence[str]] | None = None,
    unchanged_from: Mapping[str, str] | None = None,
    pgoptions: str = "",
    within_s: float | None = None,
) -> list[str]:
    """The service's own migration commands (kind "command") run by the engine's entry point in a
    one-off container of a release's image: `current`, then `up` or each `down` under the
    migration lock, then `current`; with neither, `current` alone. Each argv travels as JSON."""

    def js(value: object) -> str:
        return json.dumps(value, separators=(",", ":"))

    argv = ["python", "-m", MIGRATE_MODULE, "tool", "--current", js(list(current))]
    if up is not None:
        argv += ["--up", js(list(up))]
        if unchanged_from is not None:
            argv += ["--unchanged-from", js(dict(unchanged_from))]
    if down is not None:
        argv += ["--down", js([list(one) for one in down])]
    if pgoptions:
        argv.append(f"--pgoptions={pgoptions}")  # one word: its value starts with a dash
    if within_s is not None:
        argv += ["--deadline-s", f"{within_s:g}"]
    return argv
