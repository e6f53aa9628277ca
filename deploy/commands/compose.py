"""docker compose argv builders: one environment's project, files and env files; nothing runs here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def engine_info() -> list[str]:
    """Answers only when a Docker engine does: the client alone exits non-zero."""
    return [DOCKER, "info", "--format", "{{.ServerVersion}}"]


def compose_version() -> list[str]:
    return [DOCKER, "compose", "version", "--short"]


def image_ref(image: str, tag: str) -> str:
    return f"{image}:{tag}"


def build_image(
    image: str, tag: str, *, context: str = ".", dockerfile: str = "Dockerfile"
) -> list[str]:
    return [DOCKER, "build", "--tag", image_ref(image, tag), "--file", dockerfile, context]


def remove_image(image: str, tag: str) -> list[str]:
    """Untag one release's image (prune); layers another tag still uses stay."""
    return [DOCKER, "image", "rm", image_ref(image, tag)]


def image_exists(image: str, tag: str) -> list[str]:
    return [DOCKER, "image", "inspect", "--format", "{{.Id}}", image_ref(image, tag)]


# -- PostgreSQL inside the postgres container (argv for ComposeCommands.exec) ------------------------
# The postgres image trusts its own socket for POSTGRES_USER, its superuser: no password goes on
# a command line, and the database need not be reachable from the machine running stageflow.

PG_SERVICE = "postgres"
MAINTENANCE_DB = "postgres"


def in_container(service: str, path: str) -> str:
    """`SERVICE:PATH`, the container side of `compose cp`."""
    return f"{service}:{path}"


def container_dump(backup_id: str) -> str:
    """Where a dump sits inside the postgres container between pg_dump or pg_restore and cp."""
    return f"/tmp/{backup_id}.dump"


def pg_dump(*, user: str, database: str, output: str) -> list[str]:
    """The native backup's format: custom (-Fc), fast compression, no ownership."""
    return ["pg_dump", "-Fc", "-Z", "1", "--no-owner", "-U", user, "-d", database, "-f", output]


def pg_restore(*, user: str, database: str, dump: str, jobs: int = 2) -> list[str]:
    # --no-owner: objects come back owned by the role restoring them, the environment's own
    return [
        "pg_restore",
        "--clean",
        "--if-exists",
        "--exit-on-error",
        "--no-owner",
        f"--jobs={jobs}",
        "-U",
        user,
        "-d",
        database,
        dump,
    ]


def psql(*, user: str, database: str, statements: Sequence[str]) -> list[str]:
    """Each statement a -c of its own (its own transaction); unaligned rows, no psqlrc."""
    argv = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", database]
    for statement in statements:
        argv += ["-c", statement]
    return argv


def remove_file(path: str) -> list[str]:
    return ["rm", "-f", path]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def recreate_database_sql(database: str, owner: str) -> list[str]:
    """Drop the database (ending its sessions) and create it empty: run against MAINTENANCE_DB."""
    return [
        f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)",
        f"CREATE DATABASE {quote_ident(database)} OWNER {quote_ident(owner)}",
    ]


def create_database_sql(database: str) -> list[str]:
    return [f"CREATE DATABASE {quote_ident(database)}"]


def drop_database_sql(database: str) -> list[str]:
    return [f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)"]


def applied_versions_sql(ledger_table: str) -> list[str]:
    """One line: the applied ledger versions, comma-separated; empty when there is no ledger.

    PL/pgSQL plans its SELECT only when it reaches it, so a database without the ledger table
    answers instead of failing; both statements run in one transaction (one -c)."""
    table = quote_ident(ledger_table)
    return [
        "DO $stageflow$ BEGIN "
        f"IF to_regclass('{table}') IS NOT NULL THEN "
        "PERFORM set_config('stageflow.applied', coalesce((SELECT string_agg(version::text, ',' "
        f"ORDER BY version) FROM {table} WHERE state = 'applied'), ''), true); "
        "END IF; END $stageflow$; "
        "SELECT coalesce(current_setting('stageflow.applied', true), '')"
    ]


def table_counts_sql() -> list[str]:
    """One line: {"table": rows, ...} for every table of the public schema, as JSON."""
    return [
        "DO $stageflow$ DECLARE t text; n bigint; counts jsonb := '{}'; BEGIN "
        "FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename "
        "LOOP EXECUTE format('SELECT count(*) FROM public.%I', t) INTO n; "
        "counts := counts || jsonb_build_object(t, n); END LOOP; "
        "PERFORM set_config('stageflow.counts', counts::text, true); END $stageflow$; "
        "SELECT current_setting('stageflow.counts', true)"
    ]
