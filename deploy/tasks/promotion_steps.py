"""prod-only tasks: deployment requests, approvals and rejections."""

from __future__ import annotations

from invoke import task

from deploy.output import say, show
from deploy.tasks._common import actor, edge, project


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
    """Approve a deployment request (a human other than the requester)."""
    from deploy.policy import promotion

    req = promotion.approve(project(), id, actor=actor())
    say(f"prod: request #{req['id']} {req['status']} ({len(req['approvals'])} approval(s))")


@task(help={"id": "the request id", "reason": "why it is rejected"})
@edge
def reject(c, id, reason=""):
    """Reject a deployment request, with a reason."""
    from deploy.policy import promotion

    req = promotion.reject(project(), id, actor=actor(), reason=reason)
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


TASKS = [request, approve, reject, requests, checklist]
