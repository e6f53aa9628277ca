"""Promotion to prod: requests, human approvals, staging evidence, gate reports, freeze windows.

prod runs only a commit that staging deployed and verified, that passed the gate at the GA stage,
and that a human other than the requester approved. Automation may prepare requests, never approve
or deploy prod. Each rule is a guard Check, so `prod.preflight --request ID` shows the whole decision.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from deploy import notify
from deploy.clock import Clock, as_utc, from_epoch, stamp, system_clock
from deploy.commands import git as gitcmd
from deploy.config import Project
from deploy.engine import group
from deploy.errors import ConfigError, NotApproved, UsageError
from deploy.hosts import Host, run_process
from deploy.policy import guards
from deploy.policy.actors import Actor
from deploy.state import Layout, audit, history, read_state_record, utc_now

SEVERITIES = ("P1", "P2", "P3", "P4")
PROD = "prod"
GA_STAGE = "GA"


@dataclass(frozen=True)
class Policy:
    approvers: tuple[str, ...] = ()
    min_approvals: int = 1
    approval_ttl_s: float = 86400.0
    freezes: tuple[dict[str, Any], ...] = ()


def policy(proj: Project) -> Policy:
    raw = proj.policy.get("promotion", {})
    known = {"approvers", "min_approvals", "approval_ttl_s", "freeze"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"stageflow.toml: [promotion] unknown key {sorted(unknown)[0]}")
    freezes = tuple(raw.get("freeze", []))
    for f in freezes:
        if not {"start", "end", "timezone"} <= set(f):
            raise ConfigError(
                "stageflow.toml: each [[promotion.freeze]] needs start, end and timezone",
                hint='start = "0 18 * * 5", end = "0 8 * * 1", timezone = "UTC"',
            )
    min_approvals = int(raw.get("min_approvals", 1))
    if min_approvals < 1:
        raise ConfigError("stageflow.toml: [promotion] min_approvals must be at least 1")
    return Policy(
        tuple(raw.get("approvers", [])),
        min_approvals,
        float(raw.get("approval_ttl_s", 86400)),
        freezes,
    )


# -- storage -----------------------------------------------------------------------------------


# what every request file holds; one without them is damage, refused in one line
REQUEST_KEYS = ("id", "ref", "commit", "requester", "status", "approvals", "rejections")


def _dir(proj: Project) -> Path:
    return Path(Layout(str(proj.env(PROD).data_dir)).requests)


def _path(proj: Project, rid: int) -> Path:
    return _dir(proj) / f"{rid}.json"


def load(proj: Project, rid: str | int) -> dict[str, Any]:
    try:
        n = int(str(rid))
    except ValueError:
        raise UsageError(
            f"request id {rid!r} is not a number", hint="list them with `inv prod.requests`"
        ) from None
    req = read_state_record(Host(), _path(proj, n), keys=REQUEST_KEYS)
    if req is None:
        raise NotApproved(
            f"no deployment request {n}", hint="create one with `inv prod.request --ref REF`"
        )
    return req


def save(proj: Project, req: dict[str, Any]) -> None:
    Host().write_text(_path(proj, int(req["id"])), json.dumps(req, indent=2, sort_keys=True))


def all_requests(proj: Project) -> list[dict[str, Any]]:
    out = []
    for p in sorted(
        _dir(proj).glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0
    ):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):  # not JSON, or not UTF-8: `prod.checklist N` names it
            continue
    return out


def _claim_id(proj: Project) -> int:
    d = _dir(proj)
    d.mkdir(parents=True, exist_ok=True)
    n = max((int(p.stem) for p in d.glob("*.json") if p.stem.isdigit()), default=0) + 1
    while True:
        try:
            fd = os.open(d / f"{n}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            return n
        except FileExistsError:
            n += 1


# -- evidence ----------------------------------------------------------------------------------


def _git(root: Path, *args: str) -> str:
    out = run_process(gitcmd.git(*args), cwd=root)
    return out.stdout.strip() if out.exit_code == 0 else ""


def gate_report(proj: Project, commit: str) -> dict[str, Any] | None:
    """The GA verdict for commit if the gate ever ran at GA, else the latest report."""
    base = proj.root / "dist" / "release-gate"
    for path in (base / f"{commit}.{GA_STAGE}.json", base / f"{commit}.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return None


def staging_evidence(proj: Project, commit: str) -> dict[str, Any] | None:
    """The newest successful staging deploy of this commit (smoke and verify passed)."""
    entries = history(*group.primary(proj, "staging"))
    ok = [
        e
        for e in entries
        if e.get("commit") == commit
        and e.get("status") == "success"
        and e.get("kind") in ("deploy", "emergency")
    ]
    return ok[-1] if ok else None


def _prod_current_commit(proj: Project) -> str | None:
    entries = history(*group.primary(proj, PROD))
    done = [e for e in entries if e.get("status") == "success"]
    return done[-1]["commit"] if done else None


def _migration_changes(proj: Project, commit: str, since: str | None) -> list[dict[str, Any]]:
    """Each migration the commit brings over prod's: {file, phase, down}. SQL files carry their
    phase and down file; a service's own tool (kind "command") counts every changed file of its
    migrations.dir, with down meaning it has a `down` command."""
    m = proj.service.migrations
    if m.kind == "none":
        return []
    if m.kind == "command":
        return _tool_changes(proj, commit, since)
    folder = proj.service.repo_path(m.dir).rstrip("/") + "/"
    names = _git(proj.root, "ls-tree", "--name-only", commit, folder).splitlines()
    old = (
        set(_git(proj.root, "ls-tree", "--name-only", since, folder).splitlines())
        if since
        else set()
    )
    out = []
    for name in sorted(n for n in names if n.endswith(".up.sql") and n not in old):
        text = _git(proj.root, "show", f"{commit}:{name}")
        phase = (
            "expand" if "phase=expand" in text else "contract" if "phase=contract" in text else None
        )
        down = name.replace(".up.sql", ".down.sql") in names
        out.append({"file": Path(name).name, "phase": phase, "down": down})
    return out


def _tool_changes(proj: Project, commit: str, since: str | None) -> list[dict[str, Any]]:
    from deploy import env_migrations

    changed = env_migrations.changed_migration_files(proj, since, commit)
    down = bool(proj.service.migrations.down)
    if changed is None:  # git cannot compare: say so, and let the risk say High (fail closed)
        unknown = "(cannot tell what changed since prod's commit)"
        return [{"file": unknown, "phase": None, "down": False, "tool": True}]
    return [{"file": name, "phase": None, "down": down, "tool": True} for name in changed]


def _lockfile(proj: Project) -> str:
    """The service's dependency lock, as the repository names it."""
    return proj.service.repo_path(proj.service.requirements)


def risk(migs: list[dict[str, Any]], deps_changed: bool) -> str:
    if any(m["phase"] == "contract" or not m["down"] for m in migs):
        return "High"
    if migs or deps_changed:
        return "Medium"
    return "Low"


def checklist(proj: Project, req: dict[str, Any]) -> str:
    """The seed's deployment checklist and request, filled from real data."""
    commit = req["commit"]
    since = _prod_current_commit(proj)
    log = _git(
        proj.root,
        "log",
        "--oneline",
        "--no-decorate",
        f"{since}..{commit}" if since else commit,
        "-n",
        "50",
    ).splitlines()
    report = gate_report(proj, commit)
    migs = _migration_changes(proj, commit, since)
    deps = (
        _git(
            proj.root,
            "diff",
            "--stat",
            since,
            commit,
            "--",
            _lockfile(proj),
            "pyproject.toml",
        )
        if since
        else "(first prod deploy)"
    )
    staging = staging_evidence(proj, commit)
    sections = [
        _request_header(req),
        _changes_section(log),
        _gates_section(report),
        _database_section(migs),
        _dependencies_section(deps),
        _rollback_section(proj, since, migs),
        _staging_section(commit, staging),
        _actions_section(proj, req),
    ]
    return "\n".join(line for section in sections for line in section)


def _request_header(req: dict[str, Any]) -> list[str]:
    return [
        f"## Production Deployment Request #{req['id']}",
        "",
        f"**Status**: {req['status'].upper()}",
        f"**Urgency**: {'Emergency' if req.get('emergency') else 'Routine'} ({req['severity']})",
        f"**Requested By**: {req['requester']['name']} ({req['requester']['kind']})",
        f"**Version**: {req['ref']} ({req['commit'][:12]})",
        f"**Date**: {req['created'][:10]}",
        f"**Risk Level**: {req['risk']}",
        "",
    ]


def _changes_section(log: list[str]) -> list[str]:
    return [
        "### Changes Included",
        *([f"- [ ] {line}" for line in log] or ["- [ ] (no commits since prod's release)"]),
        "",
    ]


def _gates_section(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return [
            "### Gates",
            "- [ ] no gate report for this commit: run `inv release.gate --ref REF`",
            "",
        ]
    passed = report.get("verdict", "").startswith("passed")
    return [
        "### Gates",
        f"- [{'x' if passed else ' '}] stage {report.get('stage')}: {report.get('verdict')}",
        *[f"  - {g['name']}: {g['status']} ({g['requirement']})" for g in report.get("gates", [])],
        "",
    ]


def _database_section(migs: list[dict[str, Any]]) -> list[str]:
    return [
        "### Database Changes",
        *(
            [
                f"- [ ] Migration: {m['file']} ("
                + (
                    f"the service's own tool, down command: {'yes' if m['down'] else 'no'})"
                    if m.get("tool")
                    else f"phase {m['phase'] or 'unset'}, down file: {'yes' if m['down'] else 'no'})"
                )
                for m in migs
            ]
            or ["- [x] No migrations"]
        ),
        "",
    ]


def _dependencies_section(deps: str) -> list[str]:
    return ["### Dependencies", f"```\n{deps or 'no dependency changes'}\n```", ""]


def _rollback_section(proj: Project, since: str | None, migs: list[dict[str, Any]]) -> list[str]:
    level = (
        "2 (revert; schema stays: expand-only)"
        if all(m["phase"] == "expand" for m in migs)
        else "2 runs the service's down command, else 3 (restore)"
        if any(m.get("tool") for m in migs)
        else "2 with down files, else 3 (restore)"
    )
    return [
        "### Rollback Plan",
        f"- [ ] Previous release: {since[:12] if since else 'none (first deploy)'}",
        f"- [ ] Rollback command: `inv prod.rollback --level {level[0]}` ({level})",
        "- [ ] Backup: taken automatically before the deploy (policy backup = "
        f"{proj.policies[PROD].backup})",
        "",
    ]


def _staging_section(commit: str, staging: dict[str, Any] | None) -> list[str]:
    return [
        "### Staging Evidence",
        (
            f"- [x] staging deployed {commit[:12]} as {staging['release']} at {staging['time']} "
            "(smoke and verify passed)"
            if staging
            else "- [ ] staging has not verified this commit"
        ),
        "",
    ]


def _actions_section(proj: Project, req: dict[str, Any]) -> list[str]:
    return [
        "### Required Actions",
        "1. Review checklist",
        f"2. Approve: `inv prod.approve {req['id']}` (a human other than the requester)",
        f"3. Execute: `inv prod.deploy --request {req['id']}`",
        "4. Verify health checks",
        f"5. Monitor for {proj.policies[PROD].verify_window_s:g}s (verify window)",
        "",
        "---",
        "**ACTION REQUIRED**: a human must approve and execute this deployment",
        "",
    ]


# -- operations --------------------------------------------------------------------------------


def request(
    proj: Project,
    *,
    ref: str,
    actor: Actor,
    severity: str = "P4",
    emergency: bool = False,
    reason: str = "",
    clock: Clock = system_clock,
) -> dict[str, Any]:
    from deploy.releases import resolve_ref

    if severity not in SEVERITIES:
        raise UsageError(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    if emergency and (severity not in ("P1", "P2") or not reason.strip()):
        raise UsageError(
            "--emergency needs --severity P1 or P2 and --reason TEXT",
            hint="emergencies skip soak and staging, never the approval",
        )
    commit = resolve_ref(proj.root, ref)
    since = _prod_current_commit(proj)
    migs = _migration_changes(proj, commit, since)
    deps_changed = bool(
        since and _git(proj.root, "diff", "--name-only", since, commit, "--", _lockfile(proj))
    )
    rid = _claim_id(proj)
    created = clock()
    req = {
        "id": rid,
        "ref": ref,
        "commit": commit,
        "requester": {"name": actor.name, "kind": actor.kind},
        "severity": severity,
        "emergency": emergency,
        "reason": reason,
        "created": stamp(created),
        "created_ts": as_utc(created).timestamp(),
        "status": "pending",
        "approvals": [],
        "rejections": [],
        "risk": risk(migs, deps_changed),
    }
    save(proj, req)
    md = checklist(proj, req)
    (_dir(proj) / f"{rid}.md").write_text(md)
    audit(
        *group.primary(proj, PROD),
        actor=str(actor),
        action="request",
        request=rid,
        ref=ref,
        commit=commit,
        emergency=emergency,
    )
    return req


def approve(
    proj: Project, rid: str | int, *, actor: Actor, clock: Clock = system_clock
) -> dict[str, Any]:
    req = load(proj, rid)
    pol = policy(proj)
    if not actor.is_human:
        raise NotApproved(f"{actor} cannot approve a prod deploy: only humans approve")
    if actor.name == req["requester"]["name"]:
        raise NotApproved(
            f"{actor.name} requested #{req['id']} and cannot approve it",
            hint="another human must approve",
        )
    if pol.approvers and actor.name not in pol.approvers:
        raise NotApproved(
            f"{actor.name} is not an approver", hint="[promotion] approvers in stageflow.toml"
        )
    if req["status"] in ("rejected", "deployed"):
        raise NotApproved(f"request #{req['id']} is {req['status']}")
    if any(a["actor"] == actor.name for a in req["approvals"]):
        raise UsageError(f"{actor.name} already approved #{req['id']}")
    at = clock()
    req["approvals"].append(
        {
            "actor": actor.name,
            "kind": actor.kind,
            "time": stamp(at),
            "ts": as_utc(at).timestamp(),
            "commit": req["commit"],
        }
    )
    if len(req["approvals"]) >= pol.min_approvals:
        req["status"] = "approved"
    save(proj, req)
    notify.send(
        proj,
        PROD,
        "approval",
        actor=str(actor),
        commit=req["commit"],
        ref=req["ref"],
        status=req["status"],
        details={"request": req["id"]},
    )
    audit(
        *group.primary(proj, PROD),
        actor=str(actor),
        action="approve",
        request=req["id"],
        commit=req["commit"],
    )
    return req


def reject(proj: Project, rid: str | int, *, actor: Actor, reason: str) -> dict[str, Any]:
    if not reason.strip():
        raise UsageError("reject needs --reason TEXT")
    req = load(proj, rid)
    req["status"] = "rejected"
    req["rejections"].append({"actor": actor.name, "time": utc_now(), "reason": reason})
    save(proj, req)
    audit(
        *group.primary(proj, PROD),
        actor=str(actor),
        action="reject",
        request=req["id"],
        reason=reason,
    )
    return req


def in_freeze(window: Mapping[str, Any], *, now: datetime) -> bool:
    """Whether now falls in this freeze window: its latest start is after its latest end.

    start and end are cron times on the wall clock of the window's timezone, read to the second:
    frozen from the start minute (included) until the end minute (excluded). The arithmetic runs
    on the naive wall time on purpose: given aware times, croniter moves a time that the
    spring-forward gap skips (02:30) to the gap's end (03:00), so an end at 02:30 ties with a
    start at 03:00 and the tie read "not frozen" until the next day; on the wall clock 02:30
    stays before 03:00. A start in the gap takes effect when the clock jumps past it; in the hour
    that autumn repeats, the wall clock reads those times twice and the window follows the clock.
    """
    from croniter import croniter

    tz = ZoneInfo(window["timezone"])
    wall = as_utc(now).astimezone(tz).replace(tzinfo=None, microsecond=0)
    # get_prev is strictly before its base: one second on, a start at this very second counts;
    # whole seconds, so that a start is not reached in the second before it
    base = wall + timedelta(seconds=1)
    last_start = croniter(window["start"], base).get_prev(datetime)
    last_end = croniter(window["end"], base).get_prev(datetime)
    return last_start > last_end


def active_freeze(
    pol: Policy, now: datetime | None = None, *, clock: Clock = system_clock
) -> dict[str, Any] | None:
    """The first freeze window that now (default: the clock's time) falls in."""
    at = clock() if now is None else now
    return next((f for f in pol.freezes if in_freeze(f, now=at)), None)


def approval_current(approved_at: datetime, *, now: datetime, ttl_s: float) -> bool:
    """An approval holds for ttl_s after it was given, its last second included."""
    return as_utc(now) - as_utc(approved_at) <= timedelta(seconds=ttl_s)


def soak_met(deployed_at: datetime, *, now: datetime, need_s: float) -> bool:
    """Staging has run the release for at least need_s (exactly need_s is enough)."""
    return as_utc(now) - as_utc(deployed_at) >= timedelta(seconds=need_s)


@dataclass(frozen=True)
class _PromotionCase:
    """What every promotion rule judges: the request, who acts, the policy, and when."""

    proj: Project
    req: dict[str, Any]
    actor: Actor
    break_glass: str
    pol: Policy
    now: datetime  # aware UTC: every rule of one decision judges the same moment

    @property
    def commit(self) -> str:
        return self.req["commit"]

    @property
    def emergency(self) -> bool:
        return bool(self.req.get("emergency"))


def _actor_is_human(case: _PromotionCase) -> guards.Check:
    ok = case.actor.is_human
    return guards.Check(
        "actor",
        ok,
        f"{case.actor} is a human"
        if ok
        else f"{case.actor} may prepare requests, never deploy prod (a human must)",
    )


def _valid_approvers(case: _PromotionCase) -> list[str]:
    """Humans other than the requester who approved this very commit within the approval TTL."""
    req = case.req
    return sorted(
        {
            a["actor"]
            for a in req["approvals"]
            if a["kind"] == "human"
            and a["actor"] != req["requester"]["name"]
            and a["commit"] == case.commit
            and approval_current(from_epoch(a["ts"]), now=case.now, ttl_s=case.pol.approval_ttl_s)
        }
    )


def _approval(case: _PromotionCase) -> guards.Check:
    req, pol = case.req, case.pol
    if req["status"] == "rejected":
        return guards.Check("approval", False, f"request #{req['id']} was rejected")
    if req["status"] == "deployed":
        return guards.Check("approval", False, f"request #{req['id']} was already deployed")
    names = _valid_approvers(case)
    if len(names) < pol.min_approvals:
        expired = [
            a
            for a in req["approvals"]
            if not approval_current(from_epoch(a["ts"]), now=case.now, ttl_s=pol.approval_ttl_s)
        ]
        why = "approval expired" if expired else "not approved"
        if req["approvals"] and not expired:
            why = "approved only by the requester or by automation"
        return guards.Check(
            "approval",
            False,
            f"request #{req['id']}: {why} ({len(names)}/{pol.min_approvals} valid human approvals)",
        )
    return guards.Check("approval", True, f"approved by {', '.join(names)}")


def _ref_unmoved(case: _PromotionCase) -> guards.Check:
    from deploy.releases import resolve_ref

    ref, commit = case.req["ref"], case.commit
    try:
        now_commit = resolve_ref(case.proj.root, ref)
    except Exception:  # noqa: BLE001 - a ref that no longer resolves is a moved ref
        now_commit = ""
    if now_commit != commit:
        return guards.Check(
            "ref",
            False,
            f"{ref} moved to {now_commit[:12] or 'nothing'} "
            f"after approval of {commit[:12]}: the approval is stale",
        )
    return guards.Check("ref", True, f"{ref} still names {commit[:12]}")


def _ga_gate(case: _PromotionCase) -> guards.Check:
    report = gate_report(case.proj, case.commit)
    if not report:
        return guards.Check(
            "gate",
            False,
            f"no gate report for {case.commit[:12]}: run `inv release.gate --ref {case.req['ref']}`",
        )
    if report.get("stage") != GA_STAGE:
        return guards.Check(
            "gate",
            False,
            f"the gate ran at stage {report.get('stage')}, prod needs {GA_STAGE} (tag a v* release)",
        )
    if report.get("verdict") not in ("passed", "passed-with-override"):
        return guards.Check(
            "gate", False, f"the {GA_STAGE} gate verdict is {report.get('verdict')}"
        )
    return guards.Check("gate", True, f"{GA_STAGE} gate {report.get('verdict')}")


def _staging_verified(case: _PromotionCase) -> guards.Check:
    commit = case.commit
    if case.emergency:
        return guards.Check("staging", True, f"skipped: emergency {case.req['severity']}")
    ev = staging_evidence(case.proj, commit)
    if ev:
        return guards.Check("staging", True, f"staging verified it as {ev['release']}")
    failed = [e for e in history(*group.primary(case.proj, "staging")) if e.get("commit") == commit]
    if failed:
        return guards.Check(
            "staging",
            False,
            f"staging's run of {commit[:12]} "
            f"ended {failed[-1].get('status')}: smoke or verify did not pass",
        )
    return guards.Check("staging", False, f"staging never deployed {commit[:12]}")


def _staging_soak(case: _PromotionCase) -> guards.Check:
    need = case.proj.policies["staging"].soak_s or case.proj.policies[PROD].soak_s
    if case.emergency:
        return guards.Check("soak", True, f"skipped: emergency {case.req['severity']}")
    ev = staging_evidence(case.proj, case.commit)
    if not ev:
        return guards.Check("soak", False, "no staging run to soak")
    since = datetime.fromisoformat(ev["time"].replace("Z", "+00:00"))
    age = (case.now - since).total_seconds()
    if not soak_met(since, now=case.now, need_s=need):
        return guards.Check("soak", False, f"soaked {age:.0f}s of {need:.0f}s in staging")
    return guards.Check("soak", True, f"soaked {age:.0f}s (needs {need:.0f}s)")


def _freeze_window(case: _PromotionCase) -> guards.Check:
    window = active_freeze(case.pol, case.now)
    if window and not case.break_glass:
        return guards.Check(
            "freeze-window",
            False,
            f"freeze window {window['start']} .. {window['end']} "
            f"({window['timezone']}) is active: use --break-glass REASON",
        )
    if window:
        return guards.Check(
            "freeze-window", True, f"freeze overridden by break-glass: {case.break_glass}"
        )
    return guards.Check("freeze-window", True, "no freeze window active")


# The rules of promotion, in the order the guard table shows them.
_PROMOTION_RULES: tuple[tuple[str, Callable[[_PromotionCase], guards.Check]], ...] = (
    ("actor", _actor_is_human),
    ("approval", _approval),
    ("ref", _ref_unmoved),
    ("gate", _ga_gate),
    ("staging", _staging_verified),
    ("soak", _staging_soak),
    ("freeze-window", _freeze_window),
)


def checks(
    proj: Project,
    req: dict[str, Any],
    *,
    actor: Actor,
    break_glass: str = "",
    now: datetime | float | None = None,
    clock: Clock = system_clock,
) -> list[tuple[str, Any]]:
    """Every rule of promotion, each a named check for the guard table, all judged at one moment:
    now (an aware datetime, or epoch seconds as before), else the clock's time."""
    at = clock() if now is None else now if isinstance(now, datetime) else from_epoch(now)
    case = _PromotionCase(proj, req, actor, break_glass, policy(proj), as_utc(at))
    return [(name, functools.partial(rule, case)) for name, rule in _PROMOTION_RULES]


def check_deploy_flags(name: str, *, ref: str, request: str | int | None) -> None:
    """prod deploys an approved request and nothing else; other environments deploy a ref."""
    if name != PROD and request is None:
        return
    if name != PROD:
        raise UsageError("--request is for prod", hint="dev and staging deploy a --ref")
    if request is None:
        raise NotApproved(
            "prod deploys only an approved request",
            hint="inv prod.request --ref REF, then a second human runs inv prod.approve ID",
        )
    if ref != "HEAD":
        raise UsageError("prod takes --request, not --ref", hint="the request names the ref")


def deploy(
    proj: Project,
    rid: str | int,
    *,
    actor: Actor,
    break_glass: str = "",
    printer=print,
    process_env: dict[str, str] | None = None,
    clock: Clock = system_clock,
) -> dict[str, Any]:
    from deploy.engine import deploy_pipeline

    req = load(proj, rid)
    if break_glass:
        notify.send(
            proj,
            PROD,
            "break-glass",
            actor=str(actor),
            commit=req["commit"],
            ref=req["ref"],
            status="override",
            details={"request": req["id"], "reason": break_glass},
        )
        audit(
            *group.primary(proj, PROD),
            actor=str(actor),
            action="break-glass",
            request=req["id"],
            reason=break_glass,
        )
    approvers = ", ".join(a["actor"] for a in req["approvals"])
    notes = (
        f"request #{req['id']} by {req['requester']['name']}; approved by {approvers}; "
        f"gate {req['commit'][:12]}.json" + (f"; break-glass: {break_glass}" if break_glass else "")
    )
    result = deploy_pipeline.deploy(
        proj,
        PROD,
        actor=actor,
        ref=req["commit"],
        printer=printer,
        kind="emergency" if req.get("emergency") else "deploy",
        process_env=process_env,
        notes=notes,
        extra_checks=checks(proj, req, actor=actor, break_glass=break_glass, clock=clock),
    )
    req["status"] = "deployed"
    req["deployed"] = {"time": stamp(clock()), "release": result["release"], "actor": actor.name}
    save(proj, req)
    return result


REQUEST_COLUMNS = ("id", "ref", "commit", "requester", "approvals", "status", "risk")


def request_rows(reqs: list[dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
    """One table row per request, in REQUEST_COLUMNS order."""
    for r in reqs:
        yield (
            r["id"],
            r["ref"],
            r["commit"][:12],
            r["requester"]["name"],
            ", ".join(a["actor"] for a in r["approvals"]) or "-",
            r["status"],
            r.get("risk", ""),
        )


def preflight(
    project: Project,
    target: str,
    process_env: Mapping[str, str],
    *,
    request: str | None = None,
    actor: Actor | None = None,
    break_glass: str = "",
) -> list[guards.Check]:
    """The environment's guards; with a prod request id, also every promotion rule a deploy of
    that request would meet (as `actor`, with `break_glass`). Read-only."""
    found = guards.run_checks(guards.environment_checks(project, target, process_env))
    if request is not None:
        if target != "prod":
            raise UsageError("--request is for prod", hint="requests promote to prod only")
        if actor is None:  # a caller's mistake, not the operator's
            raise ValueError("a request's rules need the actor who would deploy it")
        req = load(project, request)
        found += guards.run_checks(checks(project, req, actor=actor, break_glass=break_glass))
    return found
