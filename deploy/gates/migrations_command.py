"""Gate `migrations` for kind = "command": the service's own tool renders its SQL for the lint and
migrates the scratch copy, never the target.

alembic (and Flask-Migrate, which wraps it) print the SQL of an upgrade offline (`--sql`), so the
gate lints and profiles exactly what `up` will run. Django prints each migration's SQL with
`manage.py sqlmigrate APP NAME`: the gate asks `showmigrations --plan` which ones the copy lacks and
renders those, in the plan's order. Other tools render through `[gates.migrations] render` (an argv;
"{current}" is the revision the copy is at; `[]` turns rendering off); without one the rehearsal
still runs and the report says the SQL was not linted.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

from deploy import migrations
from deploy.config import read_env_file
from deploy.errors import ConfigError, MigrationError
from deploy.gates import (
    Completed,
    GateContext,
    Outcome,
    first_lines,
    locks,
    python_first,
    run_command,
    scratch_cluster,
)
from deploy.gates.scratch_cluster import ScratchCluster
from deploy.secrets import scrub
from deploy.service import FED_NAMES, Migrations, load_service

_PLAN_ROW = re.compile(r"^\[( |X)\]\s+(\w+)\.(\w+)\s*$")  # showmigrations --plan: [ ]  app.0002_x
_TX = re.compile(r"^(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION|END)\s*$", re.I)
_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER")


class Tool:
    """The service's migration commands, run in the snapshot against the scratch copy."""

    def __init__(self, ctx: GateContext, m: Migrations, cluster: ScratchCluster) -> None:
        self.ctx, self.m, self.cluster = ctx, m, cluster
        service_dir = "."
        if "service" in ctx.policy:
            service_dir = load_service(Path("stageflow.toml"), dict(ctx.policy)).dir
        self.cwd = ctx.tree / service_dir
        self.env = self._env()

    def _env(self) -> dict[str, str]:
        """What the tool sees: the service's committed staging keys, then the database names
        pointed at the copy ([service.env.from] mapped too); nothing of the operator's shell but
        PATH and locale, so no DATABASE_URL of theirs can steer it at a real database."""
        out = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
        venv_bin = str(Path(self.ctx.python).parent)
        out["PATH"] = f"{venv_bin}:{out.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
        committed = self.ctx.tree / "env" / "staging.env"
        if committed.exists():
            values = {k: v for k, (v, _) in read_env_file(committed).items()}
            out.update({k: v for k, v in values.items() if k not in FED_NAMES})
        out.update(self.cluster.tool_env(), ENVIRONMENT="rehearsal")
        # every name a deploy feeds is there, as an app's settings module may require each one
        # at import; REDIS_URL is the scratch cluster's empty Redis, so no real one is reached
        out["STAGEFLOW_RELEASE"] = "rehearsal"
        if "service" in self.ctx.policy:
            service = load_service(Path("stageflow.toml"), dict(self.ctx.policy))
            # the service's secrets as throwaway values, never the real ones: settings that
            # require each one at import (pydantic-settings, os.environ[...]) load, and nothing
            # reached with a real credential can be touched from the rehearsal
            out.update({k: token_urlsafe(24) for k in service.secret_keys if k not in out})
            out.update({name: out[src] for name, src in service.env_from if src in out})
        # the commit's own code (models imported by env.py), not a copy installed in this venv
        return self.ctx.code_env(out)

    def run(self, argv: Sequence[str], *, what: str) -> Completed:
        full = python_first(self.ctx, argv)
        return run_command(
            full,
            cwd=self.cwd,
            timeout_s=self.ctx.timeout_s,
            env=self.env,
            secrets=(self.cluster.password, self.cluster.url()),
            tool_hint=f"the service's {what} command ([service.migrations]); install the "
            "service's requirements into this venv",
        )

    def checked(self, argv: Sequence[str], *, what: str) -> Completed:
        done = self.run(argv, what=what)
        if not done.ok:
            from deploy.releases import raised_in

            # a traceback's last line, not a library's trailer after it
            tail = raised_in(done.lines()) or (done.lines() or ["no output"])[-1]
            raise MigrationError(
                f"rehearsal: `{' '.join(argv)}` exited {done.exit_code}: {tail[:300]}"
            )
        return done

    def current(self) -> dict[str, str]:
        return migrations.parse_revisions(self.checked(self.m.current, what="current").stdout)


def render_argv(ctx: GateContext, m: Migrations, before: Mapping[str, str]) -> list[str] | None:
    """The command printing the SQL `up` would run from the copy's revision, or None."""
    configured = ctx.config.get("render")
    current = migrations.describe_revisions(before)
    if configured is not None:
        if not isinstance(configured, list) or not all(isinstance(a, str) for a in configured):
            raise ConfigError("[gates.migrations] render must be a list of strings (or [])")
        return [a.replace("{current}", current) for a in configured] or None
    words = list(m.up)
    if "upgrade" not in words or not any("alembic" in w or w == "flask" for w in words[:3]):
        return None
    i = words.index("upgrade")
    rest = words[i + 1 :]
    target = "head"
    if rest and not rest[0].startswith("-"):
        target, rest = rest[0], rest[1:]
    # alembic renders offline from a named revision; from nothing applied it needs no start
    span = target if set(before) <= {migrations.SINGLE} and current == migrations.BASE else None
    span = span or f"{before.get(migrations.SINGLE, current)}:{target}"
    return [*words[: i + 1], span, *rest, "--sql"]


# where a tool's offline SQL begins: a comment, or a statement's first keyword as SQLAlchemy
# and Django write it (upper case)
_SQL_START = re.compile(
    r"^\s*(?:--|/\*|(?:BEGIN|START|COMMIT|CREATE|ALTER|DROP|INSERT|UPDATE|DELETE|SET|COMMENT|"
    r"GRANT|REVOKE|WITH|SELECT|TRUNCATE|DO|CALL|LOCK|ANALYZE|VACUUM|REINDEX|CLUSTER)\b)"
)


def rendered_statements(text: str) -> list[str]:
    """The statements of a tool's offline SQL, without its own transaction control, nor the
    lines the app printed on its way up before the SQL (` * Loaded plugin ...`): the tool
    imports it, and a print goes to the same stdout."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _SQL_START.match(line)), len(lines))
    text = "\n".join(lines[start:])
    out = []
    for stmt in migrations.split_sql(text, source="rendered SQL"):
        lines = stmt.splitlines()
        while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
            lines.pop(0)  # alembic's "-- Running upgrade a1 -> b2" before each revision
        body = "\n".join(lines).strip()
        if body and not _TX.match(body):
            out.append(body)
    return out


def django_manage(up: Sequence[str]) -> list[str] | None:
    """The `python manage.py` head of `up` when up is Django's `manage.py migrate`, else None."""
    words = list(up)
    for i, word in enumerate(words[:3]):
        if Path(word).name == "manage.py" and words[i + 1 : i + 2] == ["migrate"]:
            return words[: i + 1]
    return None


def django_unapplied(plan: str) -> list[tuple[str, str]]:
    """(app, migration) of every unapplied row of `showmigrations --plan`, in the plan's order."""
    rows = (_PLAN_ROW.match(line.strip()) for line in plan.splitlines())
    return [(m.group(2), m.group(3)) for m in rows if m and m.group(1) == " "]


def _render(tool: Tool, before: Mapping[str, str]) -> tuple[list[list[str]], str] | None:
    """(the commands run, the SQL they printed) for what `up` will apply; None: no way to tell."""
    argv = render_argv(tool.ctx, tool.m, before)
    if argv is not None:
        return [argv], tool.checked(argv, what="render").stdout
    manage = django_manage(tool.m.up) if tool.ctx.config.get("render") is None else None
    if manage is None:
        return None
    plan = [*manage, "showmigrations", "--plan"]
    todo = django_unapplied(tool.checked(plan, what="render").stdout)
    commands = [[*manage, "sqlmigrate", app, name] for app, name in todo]
    printed = [tool.checked(c, what="render").stdout for c in commands]
    return commands or [plan], "\n".join(printed)


def _lint_rendered(
    tool: Tool, before: Mapping[str, str], details: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """(statements, squawk blocking) of the rendered SQL; details say what was linted or why not."""
    try:
        rendered = _render(tool, before)
    except MigrationError as exc:
        if tool.ctx.config.get("render") is not None:
            raise  # the operator's own render command: it must work
        # migrations that ask the database while they run (op.get_bind()) cannot print their
        # SQL offline: the rehearsal below still applies them to the copy
        details["lint"] = (
            f"not linted: the tool's offline SQL failed ({exc}); set [gates.migrations] render "
            "to a command that prints it, or render = [] to skip it"
        )
        return [], []
    if rendered is None:
        details["lint"] = (
            "not linted: the tool's SQL cannot be rendered; set [gates.migrations] render "
            '(an argv printing the SQL `up` would run, e.g. ["tool", "sql", "{current}"])'
        )
        return [], []
    commands, printed = rendered
    statements = rendered_statements(printed)
    details["rendered"] = {
        "command": commands[0],
        "commands": commands,
        "statements": [locks.short(s, 240) for s in statements],
    }
    if not statements:
        return [], []
    with tempfile.TemporaryDirectory(prefix="stageflow-gate-") as tmp:
        path = Path(tmp) / "rendered.sql"
        path.write_text(";\n\n".join(statements) + ";\n", encoding="utf-8")
        blocking, warnings = locks.squawk_lint(tool.ctx, [path])
    details["squawk_blocking"] = first_lines(blocking, 20)
    details["squawk_warnings"] = first_lines(warnings, 20)
    return statements, blocking


def _round_trip(tool: Tool, before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, Any]:
    """down to the revision the copy had, up again: the schema must come back the same."""
    schema = scratch_cluster.schema_hash(tool.cluster)
    start = time.monotonic()
    for app, rev in migrations.revision_steps(after, before):
        tool.checked(migrations.fill(tool.m.down, target=rev, app=app), what="down")
    down_s = time.monotonic() - start
    start = time.monotonic()
    tool.checked(tool.m.up, what="up")
    up_s = time.monotonic() - start
    if scratch_cluster.schema_hash(tool.cluster) != schema or tool.current() != after:
        raise MigrationError(
            "down/up round trip left a different schema",
            hint="make each downgrade undo exactly its upgrade",
        )
    return {"down_s": round(down_s, 3), "up_s": round(up_s, 3)}


def gate(
    ctx: GateContext,
    m: Migrations,
    cluster: ScratchCluster,
    sizes: Mapping[str, locks.TableSize],
    details: dict[str, Any],
) -> Outcome:
    tool = Tool(ctx, m, cluster)
    before = tool.current()
    details["revision_before"] = migrations.describe_revisions(before)
    statements, blocking = _lint_rendered(tool, before, details)
    if blocking:
        return Outcome(
            "failed", f"squawk blocks {len(blocking)} finding(s): {blocking[0]}", details
        )
    measured: dict[str, dict[str, Any]] = {}
    if statements:
        with scratch_cluster.connect(cluster) as conn:
            rows = locks.profile(conn, statements, source="the rendered SQL")
        measured = {r["statement"]: r for r in rows}
        details["statements"] = rows
    start = time.monotonic()
    tool.checked(m.up, what="up")
    took = time.monotonic() - start
    after = tool.current()
    details["revision_after"] = migrations.describe_revisions(after)
    details["rehearsal"] = {"up_s": round(took, 3)}
    if after == before:
        return Outcome("passed", f"no pending migration (at {details['revision_after']})", details)
    if not m.down:
        details["rehearsal"]["round_trip"] = "skipped: no down command"
    elif set(before.values()) <= {migrations.BASE, migrations.ZERO}:
        # a target with no schema yet (a first deploy): a rollback never goes below the first
        # release it gets, and the oldest migrations' downgrades are often unkept
        details["rehearsal"]["round_trip"] = "skipped: the target has no schema yet"
    else:
        details["rehearsal"]["round_trip"] = _round_trip(tool, before, after)
    held = locks.lock_lint(ctx, [("rendered SQL", s) for s in statements], measured, sizes, details)
    if held:
        return Outcome("failed", f"{len(held)} long lock(s): {held[0]}", details)
    linted = f"{len(statements)} statement(s) linted" if statements else "SQL not linted"
    if "offline SQL failed" in str(details.get("lint", "")):
        linted += " (the tool cannot print its SQL offline)"
    return Outcome(
        "passed",
        scrub(
            f"{migrations.describe_change(before, after)} rehearsed on a copy "
            f"in {took:.2f}s; {linted}",
            (cluster.password,),
        ),
        details,
    )
