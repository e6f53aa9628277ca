"""Promotion to prod: every refusal has its own reason and changes nothing; the happy path deploys."""

from __future__ import annotations

import json
import os

import pytest

ALICE, BOB = "alice@example.com", "bob@example.com"


@pytest.fixture(scope="module")
def promo(project):
    project.gate_ga_on_quick_gates()
    project.commit("gate GA on the quick gates for this test project")
    project.ok("staging.up", "prod.up")
    project.trust(ALICE, BOB)
    return project


def prod_state(p):
    rel = p.root / ".stageflow/prod/releases"
    audit = p.root / ".stageflow/prod/state/audit.jsonl"
    lines = audit.read_text().count("\n") if audit.exists() else 0
    return (sorted(os.listdir(rel)) if rel.exists() else [], len(p.history("prod")), lines)


def refused(p, *args, says: str, actor=ALICE, kind="human", env=None):
    before = prod_state(p)
    res = p.inv(*args, actor=actor, kind=kind, env=env)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert res.returncode != 0, res.stdout
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert says in lines[0], lines[0]
    assert prod_state(p) == before
    return lines[0]


def request_id(res) -> str:
    return res.stdout.strip().splitlines()[-1].split("#")[1].split()[0]


def test_prod_refuses_without_a_request(promo):
    refused(promo, "prod.deploy", says="approved request")
    refused(promo, "prod.deploy", "--request", "999", says="no deployment request 999")


def test_each_promotion_rule_refuses_on_its_own(promo):
    promo.commit("feature", tag="v1.0.0")
    # gate at PILOT only (same commit, ref main)
    promo.inv("release.gate", "--ref", "main")
    rid = request_id(promo.ok("prod.request", "--ref", "v1.0.0"))
    refused(promo, "prod.deploy", "--request", rid, says="not approved")
    refused(promo, "prod.approve", rid, says="cannot approve")  # the requester
    refused(promo, "prod.approve", rid, actor="bot", kind="agent", says="only humans approve")
    # the approver's own process re-checks what it would sign: no signature over a PILOT verdict
    refused(promo, "prod.approve", rid, actor=BOB, says="stage PILOT")
    promo.ok("release.gate", "--ref", "v1.0.0")
    refused(promo, "prod.approve", rid, actor=BOB, says="no successful run")
    promo.ok("staging.deploy", "--ref", "v1.0.0")
    promo.ok("prod.approve", rid, actor=BOB)
    refused(promo, "prod.deploy", "--request", rid, actor=BOB, kind="ci", says="never deploy prod")
    promo.edit(
        "stageflow.toml",
        'soak_s = 0\nauto_rollback = true\nbackup = "pending-migrations"',
        'soak_s = 3600\nauto_rollback = true\nbackup = "pending-migrations"',
    )
    refused(promo, "prod.deploy", "--request", rid, says="soaked")
    promo.edit("stageflow.toml", "soak_s = 3600", "soak_s = 0")
    table = promo.ok("prod.preflight", "--request", rid, "--json").stdout
    assert all(c["ok"] for c in json.loads(table)), table


def test_moved_ref_makes_the_approval_stale(promo):
    promo.git("branch", "-f", "release-x", "HEAD")
    rid = request_id(promo.ok("prod.request", "--ref", "release-x"))
    promo.ok("prod.approve", rid, actor=BOB)
    promo.commit("moved on")
    promo.git("branch", "-f", "release-x", "HEAD")
    refused(promo, "prod.deploy", "--request", rid, says="moved")


def test_staging_failure_is_not_evidence(promo):
    (promo.root / "app/migrations/0004_broken.up.sql").write_text("SELECT * FROM no_such_table;\n")
    promo.commit("broken", tag="v1.1.0")
    promo.inv("staging.deploy", "--ref", "v1.1.0")
    promo.ok("release.gate", "--ref", "v1.1.0")
    rid = request_id(promo.ok("prod.request", "--ref", "v1.1.0"))
    refused(promo, "prod.approve", rid, actor=BOB, says="no successful run")
    res = promo.inv("prod.preflight", "--request", rid, "--json")
    staging = next(c for c in json.loads(res.stdout) if c["name"] == "staging")
    assert not staging["ok"] and "ended failed" in staging["detail"], staging
    promo.git("rm", "-q", "app/migrations/0004_broken.up.sql")
    promo.commit("fix")


def test_happy_path_then_freeze_and_break_glass(promo):
    rid = request_id(promo.ok("prod.request", "--ref", "v1.0.0"))
    promo.ok("prod.approve", rid, actor=BOB)
    promo.ok("prod.deploy", "--request", rid)
    entry = promo.history("prod")[0]
    assert entry["status"] == "success" and entry["actor"] == ALICE
    assert BOB in entry["notes"] and ALICE in entry["notes"] and ".json" in entry["notes"]
    assert entry["backup"], "prod backs up before migrating"
    with open(promo.root / "stageflow.toml", "a") as fh:
        fh.write(
            '\n[[promotion.freeze]]\nstart = "* * * * *"\nend = "0 0 1 1 *"\ntimezone = "UTC"\n'
        )
    rid2 = request_id(promo.ok("prod.request", "--ref", "v1.0.0"))
    promo.ok("prod.approve", rid2, actor=BOB)
    refused(promo, "prod.deploy", "--request", rid2, says="freeze window")
    promo.ok("prod.deploy", "--request", rid2, "--break-glass", "hotfix for incident 42")
    audit = (promo.root / ".stageflow/prod/state/audit.jsonl").read_text()
    assert "break-glass" in audit and "hotfix for incident 42" in audit
    assert "break-glass: hotfix for incident 42" in promo.history("prod")[0]["notes"]
