"""Promotion to prod: requests, human approvals, staging evidence, gate reports, freeze windows.

prod runs only a commit that staging deployed and verified, that passed the gate at the GA stage,
and that a human other than the requester approved. Automation may prepare requests, never approve
or deploy prod. Each rule is a guard Check, so `prod.preflight --request ID` shows the whole decision.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from deploy import notify
from deploy.clock import Clock, as_utc, from_epoch, stamp, system_clock
from deploy.commands import git as gitcmd
from deploy.config import PostureRule, Project, Thresholds, load_posture
from deploy.engine import group
from deploy.errors import ConfigError, NotApproved, UsageError
from deploy.hosts import Host, run_process
from deploy.policy import contract, guards, keys, trust
from deploy.policy.actors import UNSIGNED, Actor, signed, statement
from deploy.state import (
    Layout,
    audit,
    chained_records,
    history,
    read_state_record,
    utc_now,
    verify_chain,
)

SEVERITIES = ("P1", "P2", "P3", "P4")
PROD = "prod"
GA_STAGE = "GA"


@dataclass(frozen=True)
class Policy:
    approvers: tuple[str, ...] = ()
    min_approvals: int = 1
    approval_ttl_s: float = 86400.0
    freezes: tuple[dict[str, Any], ...] = ()


def _number(raw: Mapping[str, Any], key: str, default: float, *, whole: bool) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"stageflow.toml: [promotion] {key} must be {kind}, not {value!r}")
    return value


def policy(proj: Project) -> Policy:
    """[promotion], each key's type and range checked on load: one line naming the key."""
    return policy_of(proj.policy)


def policy_of(data: Mapping[str, Any]) -> Policy:
    """[promotion] of a parsed stageflow.toml."""
    raw = data.get("promotion", {})
    if not isinstance(raw, dict):
        raise ConfigError("stageflow.toml: [promotion] must be a table")
    known = {"approvers", "min_approvals", "approval_ttl_s", "freeze"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"stageflow.toml: [promotion] unknown key {sorted(unknown)[0]}")
    approvers = raw.get("approvers", [])
    if not isinstance(approvers, list) or not all(
        isinstance(a, str) and a.strip() for a in approvers
    ):
        raise ConfigError(
            "stageflow.toml: [promotion] approvers must be a list of principals",
            hint='approvers = ["bob@example.org"]',
        )
    freezes = raw.get("freeze", [])
    if not isinstance(freezes, list) or not all(isinstance(f, dict) for f in freezes):
        raise ConfigError("stageflow.toml: [promotion] freeze must be [[promotion.freeze]] tables")
    for f in freezes:
        if not {"start", "end", "timezone"} <= set(f) or not all(
            isinstance(f[k], str) for k in ("start", "end", "timezone")
        ):
            raise ConfigError(
                "stageflow.toml: each [[promotion.freeze]] needs start, end and timezone",
                hint='start = "0 18 * * 5", end = "0 8 * * 1", timezone = "UTC"',
            )
    min_approvals = int(_number(raw, "min_approvals", 1, whole=True))
    if min_approvals < 1:
        raise ConfigError("stageflow.toml: [promotion] min_approvals must be at least 1")
    ttl = float(_number(raw, "approval_ttl_s", 86400, whole=False))
    if not ttl > 0:
        raise ConfigError("stageflow.toml: [promotion] approval_ttl_s must be more than 0")
    return Policy(tuple(keys.normalise(a) for a in approvers), min_approvals, ttl, tuple(freezes))


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


def gate_report_path(proj: Project, commit: str) -> Path | None:
    """The GA verdict's file for commit if the gate ever ran at GA, else the latest report's."""
    base = proj.root / "dist" / "release-gate"
    for path in (base / f"{commit}.{GA_STAGE}.json", base / f"{commit}.json"):
        if path.is_file():
            return path
    return None


def gate_report(proj: Project, commit: str) -> dict[str, Any] | None:
    """The GA verdict for commit if the gate ever ran at GA, else the latest report."""
    path = gate_report_path(proj, commit)
    try:
        data = json.loads(path.read_text()) if path else None
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _rel(proj: Project, path: Path) -> str:
    try:
        return str(path.relative_to(proj.root))
    except ValueError:
        return str(path)


def commit_tree(proj: Project, commit: str) -> str:
    return _git(proj.root, "rev-parse", "--verify", "--quiet", f"{commit}^{{tree}}")


def commit_policy_sha256(proj: Project, commit: str) -> str:
    out = run_process(gitcmd.show_file(commit, "stageflow.toml"), cwd=proj.root, timeout=30)
    return hashlib.sha256(out.stdout.encode()).hexdigest() if out.ok else ""


def _override_problem(proj: Project, report: Mapping[str, Any]) -> str | None:
    """A GA report passed by break-glass counts for prod only when a human prod trusts signed
    the override of exactly the gates that blocked, on this commit and tree."""
    overrides = report.get("overrides") or []
    blocking = sorted(report.get("blocking") or [])
    if not overrides or sorted(o.get("gate") for o in overrides) != blocking:
        return f"the {GA_STAGE} gate report's overrides do not match its blocking gates"
    signers = trust.trusted(proj)
    expected = {"action": "gate-override", "commit": report.get("commit"),
                "tree": report.get("tree"), "stage": GA_STAGE, "gates": blocking}  # fmt: skip
    for o in overrides:
        if not o.get("signature"):
            return (
                f"the {GA_STAGE} gate's override of {o.get('gate')} is not signed: a person with "
                "a key prod trusts runs the break-glass (STAGEFLOW_SIGNING_KEY)"
            )
        try:
            keys.verify(o, signers)
            st = {**o["statement"], "gates": sorted(o["statement"].get("gates") or [])}
            keys.require_fields(st, expected, what=f"the override of {o.get('gate')}")
        except NotApproved as err:
            return f"the {GA_STAGE} gate's override: {err.message}"
    return None


def gate_problem(proj: Project, commit: str, ref: str) -> str | None:
    """Why the GA report does not stand for this commit under its own policy, or None."""
    report = gate_report(proj, commit)
    if not report:
        return f"no gate report for {commit[:12]}: run `inv release.gate --ref {ref}`"
    if report.get("commit") != commit or report.get("tree") != commit_tree(proj, commit):
        return f"the gate report for {commit[:12]} judged another commit or tree"
    if report.get("stage") != GA_STAGE:
        return (
            f"the gate ran at stage {report.get('stage')}, prod needs {GA_STAGE} (tag a v* release)"
        )
    if report.get("verdict") not in ("passed", "passed-with-override"):
        return f"the {GA_STAGE} gate verdict is {report.get('verdict')}"
    if report.get("verdict") == "passed-with-override":
        problem = _override_problem(proj, report)
        if problem:
            return problem
    if report.get("policy_sha256") != commit_policy_sha256(proj, commit):
        return (
            f"the gate report's policy is not {commit[:12]}:stageflow.toml "
            "(run by an older stageflow, or under an uncommitted policy): run the gate again"
        )
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


def staging_record(proj: Project, commit: str) -> tuple[dict[str, Any] | None, str]:
    """(the chained line that closed staging's successful run of commit, or None; why not).

    Checked against staging itself: its history chains, and its host holds that release, built
    from this commit."""
    from deploy.releases import release_meta

    host, layout = group.primary(proj, "staging")
    verdict = verify_chain(host, layout.history)
    if not verdict.ok:
        return None, f"staging's history is broken: {verdict.detail}"
    found = None
    for line_sha, rec in chained_records(host, layout.history)[verdict.legacy :]:
        if (
            rec.get("commit") == commit
            and rec.get("status") == "success"
            and rec.get("kind") in ("deploy", "emergency")
        ):
            found = {"sha256": line_sha, "id": rec.get("id"), "release": rec.get("release"),
                     "time": rec.get("time")}  # fmt: skip
    if found is None:
        return None, f"staging's chained history has no successful run of {commit[:12]}"
    meta = release_meta(host, layout, str(found["release"] or "-"))
    if not meta or meta.get("commit") != commit:
        return None, f"staging's host holds no release {found['release']} built from {commit[:12]}"
    return found, ""


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
    log, more = changes(proj.root, since, commit)
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
        _changes_section(log, more),
        _gates_section(report),
        _database_section(migs, first=not since),
        _dependencies_section(deps),
        _rollback_section(proj, since, migs),
        _staging_section(commit, staging),
        _actions_section(proj, req),
    ]
    return "\n".join(line for section in sections for line in section)


_MD_SPECIAL = set("\\`*_{}[]()#!|<>~&")  # our fields never start a line: - + . stay


def md(value: object) -> str:
    """Any text a person or a commit supplied, as literal Markdown: every character that could
    open a link, a checkbox, a comment or HTML is escaped, and it stays on one line."""
    text = " ".join(str(value).split())
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def _request_header(req: dict[str, Any]) -> list[str]:
    who = req["requester"]
    signed = f", signed by {md(who['fingerprint'])}" if who.get("fingerprint") else ""
    return [
        f"## Production Deployment Request #{md(req['id'])}",
        "",
        f"**Status**: {md(str(req['status']).upper())}",
        f"**Urgency**: {'Emergency' if req.get('emergency') else 'Routine'} ({md(req['severity'])})",
        f"**Requested By**: {md(who['name'])} ({md(who['kind'])}{signed})",
        f"**Version**: {md(req['ref'])} ({md(req['commit'][:12])})",
        f"**Date**: {md(req['created'][:10])}",
        f"**Risk Level**: {md(req['risk'])}",
        *([f"**Reason**: {md(req['reason'])}"] if req.get("reason") else []),
        "",
    ]


CHANGES_SHOWN = 50  # the newest commits a checklist lists one by one


def changes(root: Path, since: str | None, commit: str) -> tuple[list[str], str]:
    """(the newest CHANGES_SHOWN commits a request brings, one line each; what the list leaves
    out and how to read it, or "")."""
    span = f"{since}..{commit}" if since else commit
    log = _git(root, "log", "--oneline", "--no-decorate", span, "-n", str(CHANGES_SHOWN))
    lines = log.splitlines()
    count = _git(root, "rev-list", "--count", span)
    left = int(count) - len(lines) if count.isdigit() else 0
    if left <= 0:
        return lines, ""
    return lines, f"... and {left} older commit(s) not listed: `git log --oneline {span}`"


def _changes_section(log: list[str], more: str = "") -> list[str]:
    return [
        "### Changes Included",
        *([f"- [ ] {md(line)}" for line in log] or ["- [ ] (no commits since prod's release)"]),
        *([f"- {more}"] if more else []),
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
        f"- [{'x' if passed else ' '}] stage {md(report.get('stage'))}: {md(report.get('verdict'))}",
        *[
            f"  - {md(g.get('name'))}: {md(g.get('status'))} ({md(g.get('requirement'))})"
            for g in report.get("gates", [])
            if isinstance(g, dict)
        ],
        "",
    ]


def _database_section(migs: list[dict[str, Any]], *, first: bool = False) -> list[str]:
    if first and migs and all(m.get("tool") for m in migs):
        # an empty database: every migration runs, none changes data a user has; one line, not
        # one box per file of the project's history
        down = "yes" if all(m["down"] for m in migs) else "no"
        return [
            "### Database Changes",
            f"- [ ] first prod deploy: {len(migs)} migration files build the schema from empty "
            f"(the service's own tool, down command: {down})",
            "",
        ]
    return [
        "### Database Changes",
        *(
            [
                f"- [ ] Migration: {md(m['file'])} ("
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
    fenced = (deps or "no dependency changes").replace("`", "'")  # nothing closes the fence
    return ["### Dependencies", f"```\n{fenced}\n```", ""]


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
            f"- [x] staging deployed {commit[:12]} as {md(staging['release'])} at "
            f"{md(staging['time'])} "
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


def _trusted_or_none(proj: Project) -> tuple[keys.Signer, ...]:
    try:
        return trust.trusted(proj)
    except NotApproved:
        return ()


def _sign_request(
    proj: Project, actor: Actor, *, rid: int, ref: str, commit: str, clock: Clock
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(requester, signed statement): a human with a trusted key signs; others prepare unsigned."""
    signers = () if actor.is_automation or not actor.key else _trusted_or_none(proj)
    if not signers:
        kind = actor.kind if actor.is_automation else UNSIGNED
        return {"name": actor.name, "kind": kind}, None
    fields = {"request": rid, "ref": ref, "commit": commit, "tree": commit_tree(proj, commit)}
    proof = keys.sign(statement("request", PROD, clock=clock, **fields), key=actor.key)
    who, identity = signed(actor, signers, proof)
    return {"name": who.name, "kind": "human", "fingerprint": identity.fingerprint}, proof


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
    """Store a request. A human's is signed with their key; an agent's is prepared unsigned (it
    decides nothing: a human still approves, and a human deploys)."""
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
    rid, created = _claim_id(proj), clock()
    try:
        requester, proof = _sign_request(proj, actor, rid=rid, ref=ref, commit=commit, clock=clock)
    except NotApproved:
        _path(proj, rid).unlink(missing_ok=True)
        raise
    req = {"id": rid, "ref": ref, "commit": commit, "tree": commit_tree(proj, commit),
           "requester": requester, "signed": proof, "severity": severity, "emergency": emergency,
           "reason": reason, "created": stamp(created), "created_ts": as_utc(created).timestamp(),
           "status": "pending", "approvals": [], "rejections": [],
           "risk": risk(migs, deps_changed)}  # fmt: skip
    _store_request(proj, req)
    return req


def _store_request(proj: Project, req: dict[str, Any]) -> None:
    """The request, its checklist beside it, and one audit line."""
    save(proj, req)
    (_dir(proj) / f"{req['id']}.md").write_text(checklist(proj, req))
    who = req["requester"]
    audit(*group.primary(proj, PROD), actor=f"{who['name']} ({who['kind']})", action="request",
          request=req["id"], ref=req["ref"], commit=req["commit"], emergency=req["emergency"],
          fingerprint=who.get("fingerprint"))  # fmt: skip


def requester_identity(
    req: Mapping[str, Any], signers: tuple[keys.Signer, ...]
) -> keys.Identity | None:
    """Who signed the request, when a human did; None for a request an agent prepared."""
    proof = req.get("signed")
    if not proof:
        return None
    identity = keys.verify(proof, signers)
    keys.require_fields(
        proof["statement"],
        {"action": "request", "env": PROD, "request": req["id"], "commit": req["commit"]},
        what=f"request #{req['id']}",
    )
    return identity


def attested(proj: Project, req: Mapping[str, Any]) -> dict[str, Any]:
    """What an approval attests to, re-checked here in the approver's own process: the GA gate
    report against the commit and its policy, and staging's run against staging itself."""
    commit = req["commit"]
    problem = gate_problem(proj, commit, req["ref"])
    if problem:
        raise NotApproved(f"will not sign #{req['id']}: {problem}")
    path = gate_report_path(proj, commit)
    assert path is not None  # gate_problem found a report
    report = gate_report(proj, commit) or {}
    staging = None
    if not req.get("emergency"):
        staging, why = staging_record(proj, commit)
        if staging is None:
            raise NotApproved(f"will not sign #{req['id']}: {why}")
    return {
        "gate": {"file": _rel(proj, path), "sha256": _sha256(path),
                 "policy_sha256": report.get("policy_sha256")},
        "staging": staging,
    }  # fmt: skip


def approve(
    proj: Project, rid: str | int, *, actor: Actor, clock: Clock = system_clock
) -> dict[str, Any]:
    """A human's signed approval of exactly this request, commit, gate report and staging run."""
    req = load(proj, rid)
    pol = policy(proj)
    if actor.is_automation:
        raise NotApproved(f"{actor} cannot approve a prod deploy: only humans approve")
    if req["status"] in ("rejected", "deployed"):
        raise NotApproved(f"request #{req['id']} is {req['status']}")
    signers = trust.trusted(proj)
    requester = requester_identity(req, signers)
    pub = keys.public_key(actor.key)  # early and without a touch; the signature decides below
    local = keys.by_fingerprint(signers).get(keys.fingerprint(*pub) if pub else "")
    if local:
        _refuse_self_or_repeat(req, keys.Identity(local.principal, local.fingerprint), requester,
                               signers)  # fmt: skip
    evidence = attested(proj, req)
    at = clock()
    fields = {
        "request": req["id"],
        "ref": req["ref"],
        "commit": req["commit"],
        "tree": commit_tree(proj, req["commit"]),
        "requester": requester.principal if requester else keys.normalise(req["requester"]["name"]),
        "expires": stamp(at + timedelta(seconds=pol.approval_ttl_s)),
        **evidence,
    }
    proof = keys.sign(statement("approve", PROD, clock=lambda: at, **fields), key=actor.key)
    who, identity = signed(actor, signers, proof)
    _refuse_self_or_repeat(req, identity, requester, signers)
    if pol.approvers and identity.principal not in pol.approvers:
        raise NotApproved(
            f"{identity.principal} is not an approver",
            hint="[promotion] approvers in stageflow.toml",
        )
    req["approvals"].append(
        {"actor": identity.principal, "kind": "human", "fingerprint": identity.fingerprint,
         "time": stamp(at), "ts": as_utc(at).timestamp(), "commit": req["commit"], **proof}
    )  # fmt: skip
    if len(verified_approvals(proj, req, signers, now=at)[0]) >= pol.min_approvals:
        req["status"] = "approved"
    save(proj, req)
    notify.send(proj, PROD, "approval", actor=who.name, commit=req["commit"], ref=req["ref"],
                status=req["status"], details={"request": req["id"]})  # fmt: skip
    audit(*group.primary(proj, PROD), actor=who.name, action="approve", request=req["id"],
          commit=req["commit"], fingerprint=identity.fingerprint)  # fmt: skip
    return req


def _refuse_self_or_repeat(
    req: Mapping[str, Any],
    identity: keys.Identity,
    requester: keys.Identity | None,
    signers: tuple[keys.Signer, ...],
) -> None:
    """By principal and key, never by display string: the requester in any spelling, or a key
    that already approved, adds nothing."""
    named = keys.normalise(req["requester"]["name"])
    if (requester and identity.same_person(requester)) or identity.principal == named:
        raise NotApproved(
            f"{identity.principal} requested #{req['id']} and cannot approve it",
            hint="another human, with their own key, must approve",
        )
    for a in req["approvals"]:
        try:
            earlier = keys.verify(a, signers)
        except NotApproved:
            continue
        if identity.same_person(earlier):
            raise UsageError(f"{identity.principal} already approved #{req['id']}")


def reject(proj: Project, rid: str | int, *, actor: Actor, reason: str) -> dict[str, Any]:
    """Reject a request: signed by a human whose key prod trusts (a rejection stops a deploy)."""
    if not reason.strip():
        raise UsageError("reject needs --reason TEXT")
    req = load(proj, rid)
    if actor.is_automation:
        raise NotApproved(f"{actor} cannot reject a prod request: a human decides")
    signers = trust.trusted(proj)
    fields = {"request": req["id"], "commit": req["commit"], "reason": reason}
    proof = keys.sign(statement("reject", PROD, **fields), key=actor.key)
    who, identity = signed(actor, signers, proof)
    req["status"] = "rejected"
    req["rejections"].append({"actor": who.name, "fingerprint": identity.fingerprint,
                              "time": utc_now(), "reason": reason, **proof})  # fmt: skip
    save(proj, req)
    audit(*group.primary(proj, PROD), actor=who.name, action="reject", request=req["id"],
          reason=reason, fingerprint=identity.fingerprint)  # fmt: skip
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
    """What every promotion rule judges: the request, who acts, the policy, the keys prod trusts,
    and when."""

    proj: Project
    req: dict[str, Any]
    actor: Actor
    break_glass: str
    pol: Policy
    now: datetime  # aware UTC: every rule of one decision judges the same moment
    signers: tuple[keys.Signer, ...] = ()

    @property
    def commit(self) -> str:
        return self.req["commit"]

    @property
    def emergency(self) -> bool:
        return bool(self.req.get("emergency"))

    @functools.cached_property
    def approvals(self) -> tuple[list[keys.Identity], list[str]]:
        return verified_approvals(self.proj, self.req, self.signers, now=self.now)


def _parse_time(text: object) -> datetime | None:
    try:
        return as_utc(datetime.fromisoformat(str(text).replace("Z", "+00:00")))
    except ValueError:
        return None


def _staging_hashes(proj: Project) -> set[str] | str:
    """The hashes of staging's chained history lines, or why the chain cannot be relied on."""
    host, layout = group.primary(proj, "staging")
    verdict = verify_chain(host, layout.history)
    if not verdict.ok:
        return f"staging's history is broken: {verdict.detail}"
    return {h for h, _ in chained_records(host, layout.history)[verdict.legacy :]}


def _approval_problem(
    proj: Project, req: Mapping[str, Any], a: Mapping[str, Any], who: keys.Identity, *,
    now: datetime, staging: Callable[[], set[str] | str],
) -> str | None:  # fmt: skip
    """Why one verified approval does not count for this request now, naming any file that
    changed after it was signed; None when it counts."""
    st = a["statement"]
    tree = commit_tree(proj, req["commit"])
    expected = {"action": "approve", "env": PROD, "request": req["id"], "commit": req["commit"],
                "tree": tree}  # fmt: skip
    for key, value in expected.items():
        if st.get(key) != value:
            return f"{who.principal}'s approval was signed for another {key}"
    expires = _parse_time(st.get("expires"))
    if expires is None or now > expires:
        return f"{who.principal}'s approval expired"
    gate = st.get("gate") or {}
    path = proj.root / str(gate.get("file", ""))
    if not gate.get("file") or _sha256(path) != gate.get("sha256"):
        return f"{gate.get('file') or 'the gate report'} changed after {who.principal} signed"
    if st.get("staging") and not req.get("emergency"):
        hashes = staging()
        if isinstance(hashes, str):
            return hashes
        if st["staging"].get("sha256") not in hashes:
            return f"the staging history record {who.principal} signed over is gone or edited"
    return None


def verified_approvals(
    proj: Project, req: Mapping[str, Any], signers: tuple[keys.Signer, ...], *, now: datetime
) -> tuple[list[keys.Identity], list[str]]:
    """(distinct humans whose signed approval counts, problems with any other approval). Distinct
    by principal and by key; the requester never counts; a record that does not verify is named."""
    staging = functools.cache(lambda: _staging_hashes(proj))
    try:
        requester = requester_identity(req, signers) if signers else None
    except NotApproved as err:
        return [], [f"the request's own signature: {err.message}"]
    named = keys.normalise(req["requester"]["name"])
    counted: list[keys.Identity] = []
    problems: list[str] = []
    for n, a in enumerate(req.get("approvals", []), 1):
        try:
            who = keys.verify(a, signers)
        except NotApproved as err:
            problems.append(f"approval {n} in the request file: {err.message}")
            continue
        if (requester and who.same_person(requester)) or who.principal == named:
            problems.append(f"approval {n} is the requester's own ({who.principal})")
            continue
        problem = _approval_problem(proj, req, a, who, now=now, staging=staging)
        if problem:
            problems.append(problem)
        elif not any(who.same_person(c) for c in counted):
            counted.append(who)
    return counted, problems


def _actor_is_human(case: _PromotionCase) -> guards.Check:
    actor = case.actor
    if actor.identity is not None:
        return guards.Check("actor", True, f"{actor.identity} signed this deploy")
    if actor.is_automation:
        return guards.Check(
            "actor", False, f"{actor} may prepare requests, never deploy prod (a human must)"
        )
    pub = keys.public_key(actor.key)
    fp = keys.fingerprint(*pub) if pub else None
    signer = keys.by_fingerprint(case.signers).get(fp or "")
    if signer is None:
        return guards.Check(
            "actor", False,
            f"{actor.name} has no key prod trusts: a prod deploy is signed by a human "
            "(`inv prod.keys` shows whose keys count)",
        )  # fmt: skip
    return guards.Check("actor", True, f"would be signed by {signer.principal} ({fp})")


def _signatures(case: _PromotionCase) -> guards.Check:
    if not case.signers:
        return guards.Check(
            "signatures", False, "prod trusts no keys yet: `inv prod.keys --trust FILE`"
        )
    problems = case.approvals[1]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return guards.Check("signatures", False, problems[0] + more)
    n = len(case.req.get("approvals", []))
    return guards.Check("signatures", True, f"the request and {n} approval(s) verify")


def _approval(case: _PromotionCase) -> guards.Check:
    req, pol = case.req, case.pol
    if req["status"] == "rejected":
        return guards.Check("approval", False, f"request #{req['id']} was rejected")
    if req["status"] == "deployed":
        return guards.Check("approval", False, f"request #{req['id']} was already deployed")
    counted, problems = case.approvals
    if len(counted) < pol.min_approvals:
        why = "not approved" if not req.get("approvals") else "not approved by enough humans"
        if any("expired" in p for p in problems):
            why = "approval expired"
        return guards.Check(
            "approval", False,
            f"request #{req['id']}: {why} ({len(counted)}/{pol.min_approvals} valid signed "
            "approvals by humans other than the requester)",
        )  # fmt: skip
    return guards.Check("approval", True, f"approved by {', '.join(str(c) for c in counted)}")


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
    problem = gate_problem(case.proj, case.commit, case.req["ref"])
    if problem:
        return guards.Check("gate", False, problem)
    report = gate_report(case.proj, case.commit) or {}
    return guards.Check(
        "gate", True, f"{GA_STAGE} gate {report.get('verdict')} under {case.commit[:12]}'s policy"
    )


def _staging_verified(case: _PromotionCase) -> guards.Check:
    commit = case.commit
    if case.emergency:
        return guards.Check("staging", True, f"skipped: emergency {case.req['severity']}")
    ev, why = staging_record(case.proj, commit)
    if ev:
        return guards.Check("staging", True, f"staging verified it as {ev['release']}")
    runs = [e for e in history(*group.primary(case.proj, "staging")) if e.get("commit") == commit]
    if runs and not any(e.get("status") == "success" for e in runs):
        return guards.Check(
            "staging",
            False,
            f"staging's run of {commit[:12]} "
            f"ended {runs[-1].get('status')}: smoke or verify did not pass",
        )
    if not runs:
        return guards.Check("staging", False, f"staging never deployed {commit[:12]}")
    return guards.Check("staging", False, why)


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


def _records_chain(case: _PromotionCase) -> guards.Check:
    """The records this decision relies on: prod's audit and staging's history chain."""
    for env, what in ((PROD, "audit"), ("staging", "history")):
        host, layout = group.primary(case.proj, env)
        verdict = verify_chain(host, getattr(layout, what))
        if not verdict.ok:
            return guards.Check(
                "records", False,
                f"{env}'s {what} is broken: {verdict.detail} (`inv {env}.audit --verify`)",
            )  # fmt: skip
    return guards.Check("records", True, "prod's audit and staging's history chain")


# [environments.<env>] keys prod's decision rests on, and which way is stricter
_STRICTER_WHEN_HIGHER = ("soak_s", "verify_window_s")


def _looser(here: Mapping[str, Any], there: Mapping[str, Any]) -> str:
    """What of `here` (a parsed stageflow.toml) is looser than `there` for a prod deploy, or ""."""
    mine, theirs = policy_of(here), policy_of(there)
    if mine.min_approvals < theirs.min_approvals:
        return f"[promotion] min_approvals {mine.min_approvals} < {theirs.min_approvals}"
    if mine.approval_ttl_s > theirs.approval_ttl_s:
        return f"[promotion] approval_ttl_s {mine.approval_ttl_s:g} > {theirs.approval_ttl_s:g}"
    if theirs.approvers and not (mine.approvers and set(mine.approvers) <= set(theirs.approvers)):
        return "[promotion] approvers names someone the commit's list does not"
    if any(f not in mine.freezes for f in theirs.freezes):
        return "a [[promotion.freeze]] of the commit is gone"
    for env in ("staging", PROD):
        now = (here.get("environments") or {}).get(env) or {}
        then = (there.get("environments") or {}).get(env) or {}
        for key in _STRICTER_WHEN_HIGHER:
            a, b = now.get(key, 0), then.get(key, 0)
            if isinstance(a, int | float) and isinstance(b, int | float) and a < b:
                return f"[environments.{env}] {key} {a:g} < {b:g}"
        if then.get("auto_rollback", True) is not False and now.get("auto_rollback", True) is False:
            return f"[environments.{env}] auto_rollback is off"
    return _looser_prod(
        ((here.get("environments") or {}).get(PROD) or {}),
        ((there.get("environments") or {}).get(PROD) or {}),
    ) or _looser_posture(here, there)


# prod's backup before migrating, weakest first
_BACKUPS = ("never", "pending-migrations", "always")


def _looser_prod(now: Mapping[str, Any], then: Mapping[str, Any]) -> str:
    """prod's rollback triggers (a higher threshold fires later) and its backup."""
    mine = Thresholds(**{k: v for k, v in (now.get("thresholds") or {}).items()})
    theirs = Thresholds(**{k: v for k, v in (then.get("thresholds") or {}).items()})
    for key, value in asdict(mine).items():
        if value > getattr(theirs, key):
            return f"[environments.prod.thresholds] {key} {value:g} > {getattr(theirs, key):g}"
    a, b = now.get("backup", "pending-migrations"), then.get("backup", "pending-migrations")
    if a in _BACKUPS and b in _BACKUPS and _BACKUPS.index(a) < _BACKUPS.index(b):
        return f"[environments.prod] backup {a} instead of {b}"
    return ""


def _policy_is_the_commits(case: _PromotionCase) -> guards.Check:
    """prod's decision rests on the policy the request's commit carries, which its gate and its
    approvers saw: the working tree's stageflow.toml may tighten it (a freeze declared now, a
    longer soak, more approvals) but never loosen it, committed or not."""
    short = case.commit[:12]
    try:
        committed = contract.committed_toml(case.proj.root, case.commit)
        looser = (
            _looser(case.proj.policy, committed) if committed is not None else "it carries none"
        )
    except (ConfigError, TypeError, ValueError) as exc:
        looser = f"the commit's stageflow.toml does not load ({str(exc).splitlines()[0][:120]})"
    if looser:
        return guards.Check(
            "policy", False,
            f"stageflow.toml here is looser than commit {short}'s: {looser}; prod is judged by "
            f"the approved commit's policy (`git checkout {short} -- stageflow.toml`, or take the "
            "change through the gate and a new request)",
        )  # fmt: skip
    return guards.Check("policy", True, f"no looser than commit {short}'s stageflow.toml")


def _looser_posture(here: Mapping[str, Any], there: Mapping[str, Any]) -> str:
    """A rule prod's [posture] had in the commit that the working tree drops or widens: a value
    it no longer insists on, or bounds it no longer keeps."""
    where = Path("stageflow.toml")
    mine = {r.key: r for r in load_posture(where, dict(here)).rules_for(PROD)}
    for rule in load_posture(where, dict(there)).rules_for(PROD):
        now = mine.get(rule.key)
        if now is None or not _as_strict(now, rule):
            said = now.describe() if now else f"no rule for {rule.key}"
            return f"[posture] for prod: {said}, where the commit says {rule.describe()}"
    return ""


def _as_strict(now: PostureRule, then: PostureRule) -> bool:
    if then.one_of:
        return bool(now.one_of) and set(now.one_of) <= set(then.one_of)
    if now.one_of:  # exact values, each a whole number in then's bounds
        return all(then.problem(v) is None for v in now.one_of)
    low = then.min is None or (now.min is not None and now.min >= then.min)
    return low and (then.max is None or (now.max is not None and now.max <= then.max))


# The rules of promotion, in the order the guard table shows them.
_PROMOTION_RULES: tuple[tuple[str, Callable[[_PromotionCase], guards.Check]], ...] = (
    ("actor", _actor_is_human),
    ("signatures", _signatures),
    ("approval", _approval),
    ("ref", _ref_unmoved),
    ("gate", _ga_gate),
    ("policy", _policy_is_the_commits),
    ("staging", _staging_verified),
    ("soak", _staging_soak),
    ("freeze-window", _freeze_window),
    ("records", _records_chain),
)


def checks(
    proj: Project,
    req: dict[str, Any],
    *,
    actor: Actor,
    break_glass: str = "",
    now: datetime | float | None = None,
    clock: Clock = system_clock,
    signers: tuple[keys.Signer, ...] | None = None,
) -> list[tuple[str, Any]]:
    """Every rule of promotion, each a named check for the guard table, all judged at one moment:
    now (an aware datetime, or epoch seconds as before), else the clock's time."""
    at = clock() if now is None else now if isinstance(now, datetime) else from_epoch(now)
    trusted = _trusted_or_none(proj) if signers is None else signers
    case = _PromotionCase(proj, req, actor, break_glass, policy(proj), as_utc(at), trusted)
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
    """Deploy an approved request: the deployer signs it, every rule is judged before anything
    is written or sent (a refused break-glass leaves no trace), then the pipeline runs."""
    from deploy.engine import deploy_pipeline

    req = load(proj, rid)
    if actor.is_automation:
        raise NotApproved(f"{actor} may prepare requests, never deploy prod (a human must)")
    signers = trust.trusted(proj)
    fields = {"request": req["id"], "commit": req["commit"], "break_glass": break_glass}
    proof = keys.sign(statement("deploy", PROD, clock=clock, **fields), key=actor.key)
    actor, identity = signed(actor, signers, proof)
    rules = checks(proj, req, actor=actor, break_glass=break_glass, clock=clock, signers=signers)
    guards.require(guards.run_checks(rules))
    where = group.primary(proj, PROD)
    if break_glass:
        notify.send(proj, PROD, "break-glass", actor=str(actor), commit=req["commit"],
                    ref=req["ref"], status="override",
                    details={"request": req["id"], "reason": break_glass})  # fmt: skip
        audit(*where, actor=str(actor), action="break-glass", request=req["id"],
              reason=break_glass, fingerprint=identity.fingerprint)  # fmt: skip
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
        extra_checks=checks(
            proj, req, actor=actor, break_glass=break_glass, clock=clock, signers=signers
        ),  # fmt: skip
    )
    req["status"] = "deployed"
    req["deployed"] = {"time": stamp(clock()), "release": result["release"], "actor": actor.name,
                       "fingerprint": identity.fingerprint, **proof}  # fmt: skip
    save(proj, req)
    audit(*where, actor=str(actor), action="deploy-signed", request=req["id"],
          commit=req["commit"], release=result["release"], fingerprint=identity.fingerprint)  # fmt: skip
    if trust.adopt_from_release(proj, req["commit"], actor=str(actor)):
        printer(f"prod: now trusts the allowed signers of {req['commit'][:12]}:{keys.KEYS_FILE}")
    return result


def key_rows(proj: Project, actor: Actor) -> tuple[list[dict[str, Any]], str]:
    """(one row per key prod trusts, a line on the actor's own key): what `prod.keys` shows."""
    signers = trust.trusted(proj)
    pub = keys.public_key(actor.key)
    mine = keys.fingerprint(*pub) if pub else ""
    rows = [{"principal": s.principal, "type": s.key_type, "fingerprint": s.fingerprint,
             "yours": s.fingerprint == mine} for s in signers]  # fmt: skip
    if not actor.key:
        return rows, "your signing key: none (set STAGEFLOW_SIGNING_KEY or git's user.signingKey)"
    if not mine:
        return rows, f"your signing key: {actor.key} cannot be read (no public half next to it?)"
    match = next((s.principal for s in signers if s.fingerprint == mine), None)
    return rows, f"your signing key: {mine}: " + (
        f"counts as {match}" if match else "NOT trusted by prod"
    )


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
