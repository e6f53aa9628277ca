"""An environment's migrations: the serving release's files against the environment's database.

Apart from deploy/migrations.py because that module also runs inside the application image,
where only it, deploy/errors.py and deploy/secrets.py are shipped.
"""

from __future__ import annotations

from deploy import migrations
from deploy.config import Project
from deploy.errors import UsageError
from deploy.migrations import MigrationFile, MigrationStatus


def serving_files(proj: Project, name: str) -> list[MigrationFile]:
    """The migrations of the release serving `name`, read on its primary host; before the first
    deploy, the working tree's (what the first deploy would apply)."""
    from deploy import releases
    from deploy.engine import group
    from deploy.runtime.native_rollback import release_migration_files

    host, layout = group.primary(proj, name)
    try:
        current = releases.current_release(host, layout)
        if current:
            return release_migration_files(host, layout, current)
    finally:
        host.close()
    return migrations.in_release(str(proj.root))


def migrate(
    proj: Project, name: str, *, target: int | None, dry_run: bool, actor: str
) -> list[MigrationFile]:
    """Apply (or with dry_run, plan) the serving release's pending migrations up to target."""
    env = proj.env(name)
    return migrations.migrate(
        env.database_url,
        serving_files(proj, name),
        target=target,
        dry_run=dry_run,
        applied_by=actor,
        password=env.secret("POSTGRES_PASSWORD"),
    )


def resolve(proj: Project, name: str, *, version: int, state: str, actor: str) -> None:
    """Mark a failed migration applied (finished by hand) or reverted (to run again)."""
    if state not in ("applied", "reverted"):
        raise UsageError("--resolve needs --mark applied or --mark reverted")
    env = proj.env(name)
    migrations.resolve_failed(
        env.database_url,
        serving_files(proj, name),
        version=version,
        state=state,  # type: ignore[arg-type]  # one of the two, checked above
        applied_by=actor,
        password=env.secret("POSTGRES_PASSWORD"),
    )


def status(proj: Project, name: str) -> list[MigrationStatus]:
    """Every version the serving release's files or the ledger know, read-only."""
    env = proj.env(name)
    return migrations.status(
        env.database_url, serving_files(proj, name), password=env.secret("POSTGRES_PASSWORD")
    )
