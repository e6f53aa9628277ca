"""A service's own migration tool (kind "command") on the compose runtime: its `current`, `up` and
`down` commands run in a one-off container of a release's image, with the app service's settings,
by the engine's entry point there (`python -m deploy.compose_migrate tool`), which holds the
migration lock for the whole sequence. What `current` printed before and after is kept in the
release's RELEASE.json on the environment's host, as on the native runtime, so the backup policy,
level 2 and history tell the truth about the schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from deploy import env_migrations, migrations
from deploy.commands.compose import migrate_tool
from deploy.config import Project
from deploy.engine.rollback_rules import ToolSchemaPlan
from deploy.env_migrations import SchemaChange
from deploy.errors import MigrationError
from deploy.runtime.compose_project import APP_SERVICE, ComposeProject


class ComposeTool:
    """The service's migration commands in the image of one release (rid) of one environment."""

    def __init__(self, proj: Project, name: str, rt: ComposeProject, rid: str) -> None:
        self.proj, self.name, self.rt, self.rid = proj, name, rt, rid

    def argv(
        self,
        *,
        up: bool = False,
        down: tuple[tuple[str, ...], ...] | None = None,
        unchanged_from: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The entry point's argv: `current` alone, or under the lock with `up` or the downs."""
        m = self.proj.service.migrations
        if not up and down is None:
            return migrate_tool(m.current)
        lock_ms, statement_ms = env_migrations.tool_timeouts_ms(self.proj, self.name)
        return migrate_tool(
            m.current,
            up=m.up if up else None,
            down=down,
            unchanged_from=unchanged_from,
            pgoptions=migrations.pg_options(
                lock_timeout_ms=lock_ms, statement_timeout_ms=statement_ms
            ),
            within_s=self.proj.policies[self.name].deploy_timeout_s,
        )

    def _run(self, argv: list[str]) -> SchemaChange:
        rt = self.rt
        rt.servers_up(release=self.rid)
        res = rt.run(lambda c: c.run(APP_SERVICE, argv, no_deps=True), release=self.rid)
        if not res.ok:
            # the entry point's own line (which command failed, how, what to do) where it got
            # that far; else compose's (no such image, a server down)
            own = [
                ln.strip().removeprefix("stageflow: ")
                for ln in res.stderr.splitlines()
                if ln.startswith("stageflow: ")
            ]
            raise MigrationError(
                f"{self.name}: "
                + rt.scrub(own[-1] if own else f"migration command exited {res.exit_code}: "
                           f"{res.tail()}"),
                hint=None if own else "fix the migration, then deploy again",
            )  # fmt: skip
        lines = res.stdout.strip().splitlines()
        try:
            said: dict[str, Any] = json.loads(lines[-1]) if lines else {}
            # a revision is whatever `current` printed: it goes to history, never a secret
            before, after = (
                {rt.scrub(str(k)): rt.scrub(str(v)) for k, v in dict(said[key]).items()}
                for key in ("before", "after")
            )
        except (ValueError, KeyError, TypeError):
            raise MigrationError(
                f"{self.name}: the migration entry point in {self.rid}'s image printed no "
                "revisions",
                hint="rebuild the image with this stageflow (deploy again)",
            ) from None
        return SchemaChange(before, after)

    def current(self) -> dict[str, str]:
        """What the tool's `current` prints now, read in this release's image (no lock)."""
        return self._run(self.argv()).after

    def migrate(self, *, unchanged_from: Mapping[str, str] | None = None) -> SchemaChange:
        """`current`, `up`, `current` under the lock; `up` skipped when the release ships the
        serving one's migrations unchanged and `current` still prints what that one recorded."""
        return self._run(self.argv(up=True, unchanged_from=unchanged_from))

    def down(self, plan: ToolSchemaPlan) -> SchemaChange:
        """The plan's `down` commands, under the lock, in this (the serving) release's image:
        only it ships the newer revisions the downs undo."""
        return self._run(self.argv(down=plan.commands))
