"""prod-only tasks: deployment requests, approvals and rejections, and whose keys prod trusts."""

from __future__ import annotations

from invoke import task

from deploy.output import say, show
from deploy.tasks._common import actor, edge, project, shell_guard


@task(
    help={
        "ref": "the git ref (a v* tag) to promote",
        "severity": "P1 | P2 | P3 | P4 (default P4)",
        "emergency": "P1/P2 only: skip soak and staging, never the approval",
        "reason": "why (required with --emergency)",
    }
)
@edge
def request(c, ref, severity="P4", emergency=False, reason=""):
    """Request a prod deploy of a ref; prints the filled-in checklist (Markdown)."""
    from deploy.policy import promotion

    proj = project()
    shell_guard(proj, "prod")
    req = promotion.request(
        proj, ref=ref, actor=actor(), severity=severity, emergency=emergency, reason=reason
    )
    say(promotion.checklist(proj, req))
    say(
        f"prod: request #{req['id']} stored; it needs {promotion.policy(proj).min_approvals} approval(s)"
    )


@task(help={"id": "the request id"})
@edge
def approve(c, id):
    """Approve a deployment request: signed with your key (a human other than the requester)."""
    from deploy.policy import promotion

    proj = project()
    shell_guard(proj, "prod")
    req = promotion.approve(proj, id, actor=actor())
    say(f"prod: request #{req['id']} {req['status']} ({len(req['approvals'])} approval(s))")


@task(help={"id": "the request id", "reason": "why it is rejected"})
@edge
def reject(c, id, reason=""):
    """Reject a deployment request, with a reason."""
    from deploy.policy import promotion

    proj = project()
    shell_guard(proj, "prod")
    req = promotion.reject(proj, id, actor=actor(), reason=reason)
    say(f"prod: request #{req['id']} rejected")


@task(help={"json": "print as JSON"})
@edge
def requests(c, json=False):
    """List deployment requests: ref, commit, requester, approvals, status."""
    from deploy.policy import promotion

    reqs = promotion.all_requests(project())
    show(
        reqs,
        as_json=json,
        title="prod requests",
        columns=promotion.REQUEST_COLUMNS,
        rows=promotion.request_rows(reqs),
    )


@task(help={"id": "the request id"})
@edge
def checklist(c, id):
    """Print a request's deployment checklist as Markdown."""
    from deploy.policy import promotion

    proj = project()
    say(promotion.checklist(proj, promotion.load(proj, id)))


@task(
    help={
        "trust": "first setup only: the allowed-signers file prod starts trusting (audited)",
        "json": "print as JSON",
    }
)
@edge
def keys(c, trust="", json=False):
    """Show whose keys prod trusts, and whether your signing key is one of them."""
    from pathlib import Path

    from deploy.policy import promotion
    from deploy.policy import trust as trusted

    proj = project()
    if trust:
        shell_guard(proj, "prod")
        installed = trusted.bootstrap(proj, Path(trust), actor=str(actor()))
        say(f"prod: now trusts {len(installed)} key(s) from {trust} (audited)")
    rows, mine = promotion.key_rows(proj, actor())
    show(rows, as_json=json, title="prod trusts these keys (every entry is a human approver)",
         columns=["principal", "type", "fingerprint", "yours"],
         rows=((r["principal"], r["type"], r["fingerprint"], "yes" if r["yours"] else "")
               for r in rows))  # fmt: skip
    if not json:
        say(mine)


TASKS = [request, approve, reject, requests, checklist, keys]
