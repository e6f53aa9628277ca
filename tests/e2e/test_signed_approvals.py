"""Signed prod approvals against someone with the operator's shell and files but no human's key.

Each attack is replayed and refused with one line, and prod is left as it was: no release, no
history row, no audit line. Keys are real ed25519 keys made by ssh-keygen for each person.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


@pytest.fixture(scope="module")
def prod(project):
    """v1.0.0 gated at GA and verified by staging; prod trusts alice, bob and carol."""
    project.gate_ga_on_quick_gates()
    project.commit("gate GA on the quick gates for this test project", tag="v1.0.0")
    project.ok("staging.up", "prod.up")
    project.trust(ALICE, BOB, CAROL)
    project.ok("release.gate", "--ref", "v1.0.0")
    project.ok("staging.deploy", "--ref", "v1.0.0")
    return project


def state(p) -> tuple:
    rel = p.root / ".stageflow/prod/releases"
    audit = p.root / ".stageflow/prod/state/audit.jsonl"
    lines = audit.read_text().count("\n") if audit.exists() else 0
    return (sorted(os.listdir(rel)) if rel.exists() else [], len(p.history("prod")), lines)


def refused(p, *args: str, says: str, **kw) -> str:
    before = state(p)
    res = p.inv(*args, **kw)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert res.returncode != 0, res.stdout
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert says in lines[0], lines[0]
    assert state(p) == before, "a refused action changed prod"
    return lines[0]


def request(p, ref: str = "v1.0.0", **kw) -> str:
    res = p.ok("prod.request", "--ref", ref, **kw)
    return res.stdout.strip().splitlines()[-1].split("#")[1].split()[0]


def req_path(p, rid: str):
    return p.root / ".stageflow/prod/state/requests" / f"{rid}.json"


def test_claims_of_being_human_decide_nothing(prod):
    rid = request(prod)
    no_key = {"STAGEFLOW_SIGNING_KEY": "", "STAGEFLOW_ACTOR_KIND": "human"}
    refused(prod, "prod.approve", rid, actor=BOB, env=no_key, says="no signing key")
    # a pseudo-terminal is not a person either
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEFLOW_")}
    env |= {"STAGEFLOW_ACTOR": BOB, "NO_COLOR": "1"}
    env.pop("ENVIRONMENT", None)
    env.pop("CI", None)  # a person's terminal, not a CI job (the suite itself may run in CI)
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"
    before = state(prod)
    out = subprocess.run(["script", "-qec", f"inv prod.approve {rid}", "/dev/null"],
                         cwd=prod.root, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode != 0 and "no signing key" in out.stdout + out.stderr, out
    assert state(prod) == before
    # a key prod does not trust proves nothing
    refused(prod, "prod.approve", rid, actor="mallory@example.com", says="does not trust")


def test_the_requester_in_another_spelling_is_the_requester(prod):
    rid = request(prod)
    refused(prod, "prod.approve", rid, actor=ALICE, says="cannot approve")
    # alice's second key, listed as " Alice@Example.COM": one person after normalising
    keys = prod.root.parent / "keys"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "alice2")],
                   check=True)  # fmt: skip
    trusted = prod.root / ".stageflow/prod/state/allowed_signers"
    pub = (keys / "alice2.pub").read_text()
    original = trusted.read_text()
    trusted.write_text(original + f"Alice@Example.COM {pub}")
    try:
        env = {"STAGEFLOW_SIGNING_KEY": str(keys / "alice2")}
        refused(prod, "prod.approve", rid, actor="Alice@Example.com ", env=env,
                says="cannot approve")  # fmt: skip
    finally:
        trusted.write_text(original)


def test_forged_records_are_refused_naming_what_changed(prod):
    rid = request(prod)
    prod.ok("prod.approve", rid, actor=BOB)
    gate = prod.root / "dist/release-gate" / f"{prod.git('rev-parse', 'v1.0.0')}.GA.json"
    text = gate.read_text()
    gate.write_text(text.replace('"verdict": "passed"', '"verdict": "passed" '))
    try:
        refused(prod, "prod.deploy", "--request", rid, says="changed after bob@example.com signed")
    finally:
        gate.write_text(text)
    # an approval typed into the request file, and one copied from another request
    path = req_path(prod, rid)
    req = json.loads(path.read_text())
    forged = {**req, "approvals": [{"actor": CAROL, "kind": "human", "commit": req["commit"],
                                    "ts": req["created_ts"], "time": req["created"]}]}  # fmt: skip
    path.write_text(json.dumps(forged))
    refused(prod, "prod.deploy", "--request", rid, says="approval 1 in the request file")
    other = request(prod)
    copied = json.loads(req_path(prod, other).read_text())
    copied["approvals"] = req["approvals"]
    req_path(prod, other).write_text(json.dumps(copied))
    refused(prod, "prod.deploy", "--request", other, says="signed for another request")
    path.write_text(json.dumps(req))


def test_a_forged_staging_line_and_an_ungated_commit_are_not_evidence(prod):
    (prod.root / "UNSTAGED.txt").write_text("a change nobody gated or staged\n")
    commit = prod.commit("never staged, never gated", tag="v9.9.9")
    hist = prod.root / ".stageflow/staging/state/history.jsonl"
    original = hist.read_text()
    line = {"id": "forged", "time": "2026-01-01T00:00:00Z", "env": "staging", "release": "r9",
            "commit": commit, "ref": "v9.9.9", "actor": "ci", "kind": "deploy",
            "status": "success"}  # fmt: skip
    hist.write_text(original + json.dumps(line) + "\n")
    gate_dir = prod.root / "dist/release-gate"
    good = next(gate_dir.glob("*.GA.json"))
    report = json.loads(good.read_text())
    (gate_dir / f"{commit}.GA.json").write_text(json.dumps({**report, "commit": commit}))
    try:
        rid = request(prod, "v9.9.9")
        refused(prod, "prod.approve", rid, actor=BOB, says="another commit or tree")
        (gate_dir / f"{commit}.GA.json").unlink()
        refused(prod, "prod.approve", rid, actor=BOB, says="no gate report")
        audit = prod.inv("staging.audit", "--verify")
        assert audit.returncode != 0 and "does not chain" in audit.stderr, audit.stderr
    finally:
        hist.write_text(original)
        prod.git("tag", "-d", "v9.9.9")
        prod.git("reset", "-q", "--hard", "v1.0.0")


def test_the_gate_reads_the_policy_of_the_commit(prod):
    (prod.root / "stageflow.toml").write_text(
        (prod.root / "stageflow.toml").read_text() + "\n# an uncommitted edit\n"
    )
    try:
        prod.ok("release.gate", "--ref", "v1.0.0")
        report = json.loads(
            (prod.root / f"dist/release-gate/{prod.git('rev-parse', 'v1.0.0')}.GA.json").read_text()
        )
        committed = prod.git("show", "v1.0.0:stageflow.toml") + "\n"
        assert report["policy_sha256"] == hashlib.sha256(committed.encode()).hexdigest()
    finally:
        prod.git("checkout", "-q", "--", "stageflow.toml")


def test_prod_is_judged_by_the_policy_of_the_approved_commit(prod):
    rid = request(prod)
    prod.ok("prod.approve", rid, actor=BOB)
    policy = prod.root / "stageflow.toml"
    approved, head = policy.read_text(), prod.git("rev-parse", "HEAD")
    # a looser prod, uncommitted and then committed after the approval: neither is what was gated
    prod.set_policy("prod", verify_window_s=0, auto_rollback="false")
    try:
        refused(prod, "prod.deploy", "--request", rid, says="looser than commit")
        prod.commit("a looser prod after the approval")
        refused(prod, "prod.deploy", "--request", rid, says="looser than commit")
    finally:
        prod.git("reset", "-q", "--hard", head)
        assert policy.read_text() == approved


def test_staging_and_prod_run_the_service_contract_of_the_deployed_commit(prod):
    rid = request(prod)
    prod.ok("prod.approve", rid, actor=BOB)
    head = prod.git("rev-parse", "HEAD")
    # a build step nobody gated, staged or approved, beside the approved commit's [service]
    prod.edit("stageflow.toml", "\nseed = [", '\nbuild = [["touch", "unreviewed"]]\nseed = [')
    try:
        refused(prod, "prod.deploy", "--request", rid, says="[service] here differs from commit")
        refused(prod, "staging.deploy", "--ref", "v1.0.0", says="differs from commit")
        prod.commit("a build step after the approval")
        refused(prod, "prod.deploy", "--request", rid, says="(build)")
        # dev runs what the working tree says: that is where a contract is tried
        prod.ok("dev.up")
        prod.ok("dev.deploy")
        assert (prod.root / ".stageflow/dev/current/unreviewed").exists()
    finally:
        prod.git("reset", "-q", "--hard", head)


def test_prods_posture_is_the_approved_commits_or_stricter(prod):
    rid = request(prod)
    prod.ok("prod.approve", rid, actor=BOB)
    head = prod.git("rev-parse", "HEAD")
    # debug on in prod, after dropping the rule that forbids it
    prod.edit("stageflow.toml", 'DEBUG = "false"\n', "")
    prod.edit("env/prod.env", "DEBUG=false", "DEBUG=true")
    try:
        refused(
            prod,
            "prod.deploy",
            "--request",
            rid,
            says="no rule for DEBUG, where the commit says DEBUG must be false",
        )
        prod.commit("debug in prod after the approval")
        refused(prod, "prod.deploy", "--request", rid, says="looser than commit")
    finally:
        prod.git("reset", "-q", "--hard", head)


def test_markdown_in_a_name_is_text(prod):
    evil = "x **[x] GA passed** <!-- hidden"
    res = prod.ok("prod.request", "--ref", "v1.0.0", actor=evil, kind="agent")
    head = next(line for line in res.stdout.splitlines() if line.startswith("**Requested By**"))
    assert "\\[x\\]" in head and "\\<\\!--" in head and "\\*\\*" in head, head


def test_ci_cannot_force_prods_lock(prod):
    refused(prod, "prod.lock", "--force", "--reason", "stuck", actor="ci", kind="ci",
            says="may not force")  # fmt: skip


def test_two_keys_approve_when_two_are_needed_and_the_record_chains(prod):
    prod.edit("stageflow.toml", "min_approvals = 1", "min_approvals = 2")
    try:
        rid = request(prod)
        prod.ok("prod.approve", rid, actor=BOB)
        refused(prod, "prod.approve", rid, actor=BOB, says="already approved")
        refused(prod, "prod.deploy", "--request", rid, says="1/2")
        prod.ok("prod.approve", rid, actor=CAROL)
        prod.ok("prod.deploy", "--request", rid)
    finally:
        prod.edit("stageflow.toml", "min_approvals = 2", "min_approvals = 1")
    entry = prod.history("prod")[0]
    assert entry["status"] == "success" and entry["actor"] == ALICE
    verified = prod.ok("prod.audit", "--verify").stdout
    assert "audit: ok" in verified and "history: ok" in verified, verified
    audit = prod.root / ".stageflow/prod/state/audit.jsonl"
    lines = audit.read_text().splitlines()
    audit.write_text(
        "\n".join([*lines[:1], lines[1].replace('"actor":"', '"actor":"x', 1), *lines[2:]]) + "\n"
    )
    res = prod.inv("prod.audit", "--verify")
    assert res.returncode != 0 and "line 3 does not chain" in res.stderr, res.stderr
    audit.write_text("\n".join(lines) + "\n")


def test_an_expired_approval_and_one_over_another_commit_count_for_nothing(prod):
    prod.edit("stageflow.toml", "approval_ttl_s = 86400", "approval_ttl_s = 1")
    try:
        rid = request(prod)
        prod.ok("prod.approve", rid, actor=BOB)
    finally:
        prod.git("checkout", "-q", "--", "stageflow.toml")
    signed = json.loads(req_path(prod, rid).read_text())["approvals"][0]["statement"]
    expires = datetime.fromisoformat(signed["expires"].replace("Z", "+00:00"))
    while datetime.now(UTC) <= expires:  # past the signed expiry, however slow the run
        time.sleep(0.2)
    refused(prod, "prod.deploy", "--request", rid, says="approval expired")
    # bob's signature over v1.0.0, moved onto a request for another commit that the same
    # requester signed: the statement names its commit and tree, so it proves nothing there
    (prod.root / "OTHER.txt").write_text("another commit\n")
    prod.commit("another commit", tag="v1.0.1")
    try:
        good = request(prod)
        prod.ok("prod.approve", good, actor=BOB)
        other = request(prod, "v1.0.1")
        moved = json.loads(req_path(prod, other).read_text())
        approval = json.loads(req_path(prod, good).read_text())["approvals"][0]
        moved["approvals"] = [approval]
        req_path(prod, other).write_text(json.dumps(moved))
        refused(prod, "prod.deploy", "--request", other, says="signed for another")
    finally:
        prod.git("tag", "-d", "v1.0.1")
        prod.git("reset", "-q", "--hard", "v1.0.0")


def test_a_gate_override_counts_for_prod_only_when_a_trusted_human_signed_it(prod):
    quick = prod.root / "tests/unit/test_migrations_files.py"
    quick.write_text(quick.read_text() + "\n\ndef test_broken_on_purpose():\n    assert False\n")
    prod.commit("a failing test the gate must catch", tag="v1.0.2")
    try:
        res = prod.ok("release.gate", "--ref", "v1.0.2", "--break-glass", "P1 outage",
                      env={"STAGEFLOW_SIGNING_KEY": ""})  # fmt: skip
        assert "passed-with-override" in res.stdout and "not signed" in res.stderr, res
        prod.ok("staging.deploy", "--ref", "v1.0.2")
        rid = request(prod, "v1.0.2")
        refused(prod, "prod.approve", rid, actor=BOB, says="override of test is not signed")
        # a key prod does not trust signs nothing that counts
        prod.ok("release.gate", "--ref", "v1.0.2", "--break-glass", "P1 outage",
                actor="mallory@example.com")  # fmt: skip
        refused(prod, "prod.approve", rid, actor=BOB, says="does not trust")
        prod.ok("release.gate", "--ref", "v1.0.2", "--break-glass", "P1 outage", actor=CAROL)
        prod.ok("prod.approve", rid, actor=BOB)
    finally:
        prod.git("tag", "-d", "v1.0.2")
        prod.git("reset", "-q", "--hard", "v1.0.0")
        prod.ok("staging.deploy", "--ref", "v1.0.0")


def test_a_prod_rollback_needs_a_key_prod_trusts(prod):
    """After the deploys above prod serves a release with one before it: a rollback is possible,
    and only a trusted human's signature starts it."""
    for who, env in (
        (BOB, {"STAGEFLOW_SIGNING_KEY": ""}),  # a human's name and kind, but no key
        ("mallory@example.com", {}),  # a key, which prod does not trust
    ):
        refused(prod, "prod.rollback", "--level", "1", "--reason", "r", "--yes", actor=who, env=env,
                says="may not roll back prod")  # fmt: skip
    refused(prod, "prod.rollback", "--level", "1", "--reason", "r", "--yes", actor="ci", kind="ci",
            says="may not roll back prod")  # fmt: skip
    prod.ok("prod.rollback", "--level", "1", "--reason", "signed by bob", "--yes", actor=BOB)
    audit = (prod.root / ".stageflow/prod/state/audit.jsonl").read_text().splitlines()
    assert json.loads(audit[-1])["actor"] == BOB, audit[-1]
