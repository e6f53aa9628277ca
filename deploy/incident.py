"""Incident drafts: docs/incidents/<date>-<env>.md from an environment's history and audit log.

The draft holds what the records know (timeline with the triggers and their numbers, the releases
and commits involved, migrations and backups, who acted) and leaves the post-rollback review
(what happened, root cause, fix task, checklist update, process gaps) for a person to write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from deploy.config import Project
from deploy.errors import UsageError
from deploy.hosts import Host
from deploy.secrets import Secret, scrub
from deploy.state import Layout, history, read_jsonl, utc_now

INCIDENTS_DIR = Path("docs") / "incidents"
DEPLOY_KINDS = ("deploy", "emergency")
BAD_STATUSES = ("failed", "rolled-back")
# What rollout and rollback write into history notes when a trigger fired.
_TRIGGER = re.compile(r"(?P<trigger>(?:verify|smoke) failed\b[^;]*)")
# Audit actions that only repeat a history entry, or say nothing about an incident.
_SKIP_AUDIT = re.compile(r"^(rollback-\d|secrets-generated)$")
REVIEW = (
    ("What happened", "In two or three sentences, for someone who was not there."),
    ("Root cause", "Why the release misbehaved, and why the gate and staging did not catch it."),
    ("Fix task", "Link the change that fixes it; it goes dev -> gate -> staging -> request."),
    ("Checklist update", "What the approver's checklist (docs/RELEASING.md) should now ask."),
    ("Process gaps", "Triggers, thresholds, alerts, or runbook steps that were missing or late."),
)

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Incident:
    """The records of one incident: history entries from `start` on, and audit records since."""

    env: str
    environment: str
    entries: list[Record]
    audit: list[Record]
    known: list[Record]  # the whole history, to name releases the window only mentions

    @property
    def start(self) -> Record:
        return self.entries[0]

    @property
    def day(self) -> str:
        """The incident's date: its first bad entry's, else the window's start."""
        first = next((e for e in self.entries if is_bad(e)), self.start)
        return str(first.get("time", ""))[:10]


def is_bad(entry: Record) -> bool:
    kind = str(entry.get("kind", ""))
    return entry.get("status") in BAD_STATUSES or kind.startswith(("rollback-", "restart"))


def select(
    entries: Sequence[Record], *, since: str | None = None, env: str = "<env>"
) -> list[Record]:
    """History from `since`, or from the last good deploy before the latest rollback or failure."""
    if not entries:
        raise UsageError("no history yet", hint="an incident draft needs deploys to describe")
    if since is not None:
        ids = [str(e.get("id")) for e in entries]
        if since not in ids:
            recent = ", ".join(ids[-3:])
            raise UsageError(
                f"history has no entry {since!r}", hint=f"see `inv {env}.history`; latest: {recent}"
            )
        return list(entries[ids.index(since) :])
    bad = [i for i, e in enumerate(entries) if is_bad(e)]
    if not bad:
        raise UsageError(
            "history has no rollback or failed entry to draft an incident from",
            hint=f"pass --since ID (from `inv {env}.history`) to draft from a given entry",
        )
    start = 0
    for i in range(bad[-1] - 1, -1, -1):
        e = entries[i]
        if e.get("kind") in DEPLOY_KINDS and e.get("status") == "success":
            start = i
            break
    return list(entries[start:])


def collect(
    host: Host, layout: Layout, *, env: str, environment: str, since: str | None = None
) -> Incident:
    """Read env's history and audit log and keep the incident's part of each."""
    known = history(host, layout)
    entries = select(known, since=since, env=env)
    first = str(entries[0].get("time", ""))
    records = [a for a in read_jsonl(host, layout.audit) if str(a.get("time", "")) >= first]
    return Incident(env, environment, entries, records, known)


# -- rendering ----------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\n", " ").replace("|", "\\|").strip() or "-"


def _short(commit: Any) -> str:
    return str(commit or "")[:12]


def _end(entry: Record) -> str:
    """When an entry finished: its start plus its duration."""
    try:
        started = datetime.strptime(str(entry["time"]), "%Y-%m-%dT%H:%M:%SZ")
    except (KeyError, ValueError):
        return str(entry.get("time", ""))
    took = float(entry.get("duration_s") or 0)
    return (started + timedelta(seconds=round(took))).strftime("%Y-%m-%dT%H:%M:%SZ")


def triggers(entry: Record) -> list[str]:
    return [m["trigger"].strip() for m in _TRIGGER.finditer(str(entry.get("notes") or ""))]


def _entry_rows(e: Record) -> list[tuple[str, str, str, str]]:
    kind, status = str(e.get("kind", "")), str(e.get("status", ""))
    release = e.get("release") or "(not built)"
    if kind in DEPLOY_KINDS:
        what = f"{kind} {release} {status}"
        detail = f"ref {e.get('ref') or '-'}, commit {_short(e.get('commit'))}"
        if e.get("previous"):
            detail += f", replacing {e['previous']}"
    else:
        what = f"{kind} to {release} {status}"
        detail = f"from {e.get('previous') or '-'}"
    if e.get("duration_s"):
        detail += f", took {float(e['duration_s']):.1f}s"
    if e.get("migrations"):
        detail += f", migrations {', '.join(str(m) for m in e['migrations'])}"
    if e.get("backup"):
        detail += f", backup {e['backup']}"
    notes = str(e.get("notes") or "")
    fired = triggers(e)
    rest = notes
    for t in fired:
        rest = rest.replace(t, "")
    rest = re.sub(r"^[\s;]+|[\s;]+$", "", rest)
    if rest:
        detail += f"; {rest}"
    who = str(e.get("actor") or "-")
    rows = [(str(e.get("time", "")), what, who, detail + f" (history {e.get('id')})")]
    for t in fired:
        rows.append((_end(e), "TRIGGER", "stageflow", t))
    if kind in DEPLOY_KINDS and status == "rolled-back":
        back = e.get("previous") or "no previous release (the new one was stopped)"
        rows.append((_end(e), "auto-rollback", "stageflow", f"{back} serves again"))
    return rows


def _audit_row(a: Record) -> tuple[str, str, str, str] | None:
    action = str(a.get("action", ""))
    if _SKIP_AUDIT.match(action):
        return None
    who = str(a.get("actor") or "-")
    descriptions = {
        "backup": lambda: f"backup {a.get('backup')} taken (serving {a.get('release') or '-'})",
        "restore": lambda: f"backup {a.get('backup')} restored in {a.get('duration_s', '?')}s",
        "freeze": lambda: f"environment frozen: {a.get('why') or a.get('reason') or '-'}",
        "unfreeze": lambda: f"environment unfrozen: {a.get('reason') or '-'}",
        "break-glass": lambda: f"break-glass on request #{a.get('request')}: {a.get('reason')}",
        "request": lambda: (
            f"request #{a.get('request')} for {a.get('ref')} ({_short(a.get('commit'))})"
            + (" EMERGENCY" if a.get("emergency") else "")
        ),
        "approve": lambda: f"request #{a.get('request')} approved ({_short(a.get('commit'))})",
        "reject": lambda: f"request #{a.get('request')} rejected: {a.get('reason')}",
        "lock-force-release": lambda: f"deploy lock force-released: {a.get('reason')}",
        "notify-failed": lambda: (
            f"notification {a.get('event')} to {a.get('url')} failed: {a.get('error')}"
        ),
    }
    if action in descriptions:
        detail = descriptions[action]()
    else:
        extra = {k: v for k, v in a.items() if k not in ("time", "actor", "action")}
        detail = ", ".join(f"{k}={v}" for k, v in sorted(extra.items()))
    return (str(a.get("time", "")), action, who, detail)


def timeline(inc: Incident) -> list[tuple[str, str, str, str]]:
    """(time, what, who, detail), oldest first; history before audit at the same second."""
    rows = [(r, 0, i) for i, e in enumerate(inc.entries) for r in _entry_rows(e)]
    for i, a in enumerate(inc.audit):
        row = _audit_row(a)
        if row:
            rows.append((row, 1, i))
    rows.sort(key=lambda x: (x[0][0], x[1], x[2]))
    return [r for r, _, _ in rows]


def releases_involved(inc: Incident) -> list[tuple[str, str, str, str]]:
    """(release, ref, commit, roles) for every release the incident's entries name."""
    meta = {str(e.get("release")): e for e in inc.known if e.get("release")}
    roles: dict[str, list[str]] = {}

    def add(release: Any, role: str) -> None:
        if release and role not in roles.setdefault(str(release), []):
            roles[str(release)].append(role)

    for e in inc.entries:
        kind, status = str(e.get("kind", "")), e.get("status")
        add(e.get("previous"), "served before")
        if kind in DEPLOY_KINDS:
            add(e.get("release"), {"success": "deployed"}.get(str(status), f"deploy {status}"))
        else:
            add(
                e.get("release"), f"{kind} target" + ("" if status == "success" else f" ({status})")
            )
    out = []
    for release, found in roles.items():
        m = meta.get(release, {})
        out.append(
            (release, str(m.get("ref") or "-"), str(m.get("commit") or "-"), ", ".join(found))
        )
    return out


def render(inc: Incident, *, now: str | None = None) -> str:
    rows = timeline(inc)
    sections = [
        _summary(inc, rows, now=now),
        _table_section("Timeline (UTC)", ("time", "what", "who", "detail"), rows),
        _table_section(
            "Releases and commits", ("release", "ref", "commit", "role"), releases_involved(inc)
        ),
        _data_changes(inc),
        _who_acted(rows),
        _review(),
    ]
    return "\n".join(line for section in sections for line in section)


def _summary(inc: Incident, rows: list[tuple[str, str, str, str]], *, now: str | None) -> list[str]:
    """The draft's title and provenance, then the window, the triggers and how it ended."""
    entries, name = inc.entries, inc.env
    fired = [(e, t) for e in entries for t in triggers(e)]
    ok = [e for e in entries if e.get("status") == "success" and e.get("release")]
    lines = [
        f"# Incident: {name} ({inc.environment}), {inc.day}",
        "",
        f"Draft written by `inv {name}.incident` at {now or utc_now()} from {name}'s history "
        f"(entries {inc.start.get('id')} to {entries[-1].get('id')}) and audit log. "
        "Check it, then fill in the review at the end.",
        "",
        "## Summary",
        "",
        f"- Window: {rows[0][0] if rows else '-'} to {rows[-1][0] if rows else '-'} (UTC)",
    ]
    if fired:
        for e, t in fired:
            lines.append(f"- Trigger: {t} (release {e.get('release') or '-'}, history {e['id']})")
    else:
        lines.append("- Trigger: none recorded (a rollback by hand; its reason is in the timeline)")
    for e in entries:
        if is_bad(e):
            lines.append(
                f"- {e.get('kind')} {e.get('status')}: {e.get('release') or '-'} at {e.get('time')}"
                f" by {e.get('actor')}"
            )
    if ok:
        last = ok[-1]
        lines.append(f"- Serving at the end of the record: {last['release']} ({last.get('kind')})")
    lines.append("")
    return lines


def _table_section(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return [
        f"## {title}",
        "",
        f"| {' | '.join(header)} |",
        f"|{'---|' * len(header)}",
        *[f"| {' | '.join(_cell(v) for v in row)} |" for row in rows],
        "",
    ]


def _data_changes(inc: Incident) -> list[str]:
    """Migrations applied and backups taken or restored, from history and then the audit log."""
    lines = []
    for e in inc.entries:
        if e.get("migrations"):
            lines.append(
                f"- {e.get('kind')} of {e.get('release') or '-'} ({e.get('status')}) applied "
                f"migrations {', '.join(str(m) for m in e['migrations'])}"
            )
        if e.get("backup"):
            verb = "restored" if str(e.get("kind")) == "rollback-3" else "took"
            lines.append(
                f"- {e.get('kind')} of {e.get('release') or '-'} {verb} backup {e['backup']}"
            )
    for a in inc.audit:
        if a.get("action") == "backup":
            lines.append(f"- backup {a.get('backup')} at {a.get('time')} by {a.get('actor')}")
        elif a.get("action") == "restore":
            lines.append(f"- restore of {a.get('backup')} at {a.get('time')} by {a.get('actor')}")
    return ["## Migrations and backups", "", *(lines or ["- none recorded"]), ""]


def _who_acted(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Each person who acted, with what they did and when; stageflow's own entries left out."""
    people: dict[str, list[str]] = {}
    for time_, what, who, _ in rows:
        if who != "stageflow":
            people.setdefault(who, []).append(
                f"{what.split(' ')[0]} {time_[5:19].replace('T', ' ')}"
            )
    acts = [f"- {who}: {', '.join(done)}" for who, done in people.items()]
    return ["## Who acted", "", *(acts or ["- nobody"]), ""]


def _review() -> list[str]:
    lines = ["## Review (to be written by a person)", ""]
    for i, (title, prompt) in enumerate(REVIEW, 1):
        lines += [f"### {i}. {title}", "", f"_{prompt}_", "", "TODO", ""]
    return lines


def _free_path(root: Path, day: str, env: str) -> Path:
    """A draft never overwrites one a person may already have edited."""
    base = root / INCIDENTS_DIR / f"{day}-{env}.md"
    n = 2
    path = base
    while path.exists():
        path = base.with_name(f"{day}-{env}-{n}.md")
        n += 1
    return path


def write(
    root: Path,
    *,
    env: str,
    environment: str,
    host: Host,
    layout: Layout,
    since: str | None = None,
    now: str | None = None,
    secrets: tuple[Secret, ...] = (),
) -> Path:
    """Draft the incident of env under root/docs/incidents; the path of the new file.

    The draft is meant to be committed: it is scrubbed of the host's secrets and of `secrets`
    (every environment's, from draft())."""
    inc = collect(host, layout, env=env, environment=environment, since=since)
    text = scrub(render(inc, now=now), (*host.secrets, *secrets))
    path = _free_path(root, inc.day or utc_now()[:10], env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def draft(proj: Project, name: str, *, since: str | None = None) -> Path:
    """inv <env>.incident: the draft for env `name`, from the records on its primary host."""
    from deploy.engine import group

    env = proj.env(name)
    host, layout = group.primary(proj, name)
    try:
        return write(
            proj.root,
            env=name,
            environment=env.environment,
            host=host,
            layout=layout,
            since=since,
            secrets=proj.known_secrets(),
        )
    finally:
        host.close()
