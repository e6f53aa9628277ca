"""Warm `inv prod.preflight --request ID` on an approved request whose checks all pass (every
signature verified with ssh-keygen), against `inv --list` (what any `inv` command costs) and the
plain `inv prod.preflight`; and verifying a 10,000-record audit chain, against reading and parsing
the same lines (the floor: what any reader of the file pays)."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

from deploy.hosts import Host
from deploy.state import GENESIS, line_hash, verify_chain
from tests.e2e.conftest import Project, destroy, make_project

CHAIN_RECORDS = 10_000

REF = "v1.0.0"
REQUESTER, APPROVER = "alice@example.com", "bob@example.com"


def inv(proj: Project, *args: str, actor: str = REQUESTER) -> str:
    env = {**c.inv_env(), "STAGEFLOW_ACTOR": actor, "STAGEFLOW_ACTOR_KIND": "human",
           "STAGEFLOW_SIGNING_KEY": str(proj.key(actor))}  # fmt: skip
    return c.run([c.INV, *args], cwd=proj.root, env=env, timeout=600).stdout


def approved_request(proj: Project) -> str:
    """Gate, staging evidence, a request and its approval: what prod.preflight --request reads."""
    proj.gate_ga_on_quick_gates()
    proj.commit("gate GA on the quick gates for this benchmark project", tag=REF)
    inv(proj, "staging.up", "prod.up")
    keys = proj.root.parent / "keys" / "bench.keys"
    keys.parent.mkdir(exist_ok=True)
    keys.write_text(proj.allowed_signers(REQUESTER, APPROVER))
    inv(proj, "prod.keys", "--trust", str(keys))
    inv(proj, "release.gate", "--ref", REF)
    inv(proj, "staging.deploy", "--ref", REF)
    out = inv(proj, "prod.request", "--ref", REF)
    rid = out.strip().splitlines()[-1].split("#")[1].split()[0]
    inv(proj, "prod.approve", rid, actor=APPROVER)
    return rid


def chain_file(path: Path) -> None:
    """CHAIN_RECORDS audit records, each naming the hash of the line before it."""
    prev, lines = GENESIS, []
    for n in range(CHAIN_RECORDS):
        rec = {"time": "2026-12-01T00:00:00Z", "actor": "alice@example.com", "action": "deploy",
               "release": f"r{n}", "prev": prev}  # fmt: skip
        line = json.dumps(rec, sort_keys=True, separators=(",", ":"))
        lines.append(line)
        prev = line_hash(line)
    path.write_text("\n".join(lines) + "\n")


def chain_timings() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sf-bench-chain-") as tmp:
        path = Path(tmp) / "audit.jsonl"
        chain_file(path)
        host = Host()
        verdict = verify_chain(host, str(path))
        if not verdict.ok or verdict.records != CHAIN_RECORDS:
            raise SystemExit(f"the bench's chain does not verify: {verdict.detail}")
        verify = [c.wall(lambda: verify_chain(host, str(path))) for _ in range(c.RUNS)]
        floor = [
            c.wall(lambda: [json.loads(x) for x in path.read_text().splitlines()])
            for _ in range(c.RUNS)
        ]
    return {"chain_10k": c.summary(verify), "chain_floor": c.summary(floor)}


def main() -> None:
    began = time.perf_counter()
    proj = make_project("sf-bench-preflight-")
    try:
        rid = approved_request(proj)
        checks: list[dict[str, Any]] = json.loads(
            inv(proj, "prod.preflight", "--request", rid, "--json")
        )
        if not all(ch["ok"] for ch in checks):
            raise SystemExit(f"preflight does not pass: {[ch for ch in checks if not ch['ok']]}")

        def timed(*args: str) -> float:
            return c.wall(lambda: inv(proj, *args))

        with_request = [timed("prod.preflight", "--request", rid) for _ in range(c.RUNS)]
        plain = [timed("prod.preflight") for _ in range(c.RUNS)]
        inv_list = [timed("--list") for _ in range(c.RUNS)]
    finally:
        destroy(proj)

    chain = chain_timings()
    med = statistics.median
    c.emit(
        {
            "bench": "preflight",
            "bench_s": round(time.perf_counter() - began, 1),
            "command": "inv prod.preflight --request ID (approved request, every check passes)",
            "baseline": "inv --list in the same project; inv prod.preflight (no request)",
            "checks": [ch["name"] for ch in checks],
            "results": {
                "preflight_request": c.summary(with_request),
                "preflight_plain": c.summary(plain),
                "inv_list": c.summary(inv_list),
                "request_over_inv_list_s": round(med(with_request) - med(inv_list), 3),
                "request_over_plain_s": round(med(with_request) - med(plain), 3),
                **chain,
            },
        }
    )


if __name__ == "__main__":
    sys.exit(main())
