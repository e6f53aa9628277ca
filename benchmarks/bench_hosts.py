"""Rolling deploys over real OpenSSH hosts on loopback addresses: `inv staging.deploy` wall time for
1, 4, 8 and 16 hosts with batch 25%, and the SSH overhead per host (a no-op over SSH vs local)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from typing import Any

import _common as c

from deploy import rolling
from deploy.config import HostSpec
from deploy.hosts import Host, host_from_spec
from tests import support
from tests.e2e.conftest import destroy, make_project
from tests.sshd import Sshd, can_run_sshd, fleet, seed_venv, set_hosts, shared_venv

SIZES = (1, 4, 8, 16)
BATCH = "25%"
NOOPS = 30


def runs_for(hosts: int) -> int:
    # 16 hosts take the longest; fewer runs keep `make bench` inside its time limit
    return max(1, min(c.RUNS, 3 if hosts < 16 else 2))


def ssh_overhead(server: Sshd) -> dict[str, Any]:
    t = server.table()
    spec = HostSpec(
        address=t["address"], identity_file=t["identity_file"], known_hosts=t["known_hosts"]
    )
    remote, local = host_from_spec(spec), Host()
    try:
        connect = c.wall(lambda: remote.run(["true"]))  # the first call opens the connection
        ssh = [c.wall(lambda: remote.run(["true"])) for _ in range(NOOPS)]
        sftp = [c.wall(lambda: remote.exists("/")) for _ in range(NOOPS)]
        loc = [c.wall(lambda: local.run(["true"])) for _ in range(NOOPS)]
    finally:
        remote.close()
    return {
        "connect_s": round(connect, 4),
        "ssh_noop_median_s": round(statistics.median(ssh), 4),
        "local_noop_median_s": round(statistics.median(loc), 4),
        "overhead_per_command_s": round(statistics.median(ssh) - statistics.median(loc), 4),
        "sftp_stat_median_s": round(statistics.median(sftp), 4),
        "runs": NOOPS,
        "note": "a command over SSH starts the login shell of the remote user (its rc files "
        "count); file operations go over SFTP on the open connection and start no process",
    }


def main() -> int:
    ok, why = can_run_sshd()
    if not ok:
        raise SystemExit(why)
    base = support.public_tmpdir("sf-bench-sshd-")
    project = make_project("sf-bench-hosts-")
    doc: dict[str, Any] = {"batch": BATCH, "verify_window_s": 0, "deploys": {}}
    try:
        with fleet(base, max(SIZES)) as servers:
            try:
                measure(project, servers, doc)
            finally:
                destroy(project)  # `down` stops the service on every host while sshd still runs
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(project.root.parent, ignore_errors=True)
    doc["machine"] = c.machine()
    c.emit(doc)
    return 0


def measure(project: Any, servers: list[Sshd], doc: dict[str, Any]) -> None:
    lock = project.root / "app" / "requirements.lock"
    venv = shared_venv(lock)
    doc["ssh"] = ssh_overhead(servers[0])
    c.run([c.INV, "staging.up"], cwd=project.root, env=c.inv_env())
    for n in SIZES:
        dirs = set_hosts(project.root, "staging", servers[:n], batch=BATCH, verify_window_s=0)
        for d in dirs:  # the lock file is unchanged: a deploy reuses each host's venv
            seed_venv(d, venv, lock)
        project.commit(f"staging on {n} hosts")
        samples, steps = [], {}
        for _ in range(runs_for(n)):
            start = time.perf_counter()
            res = c.run(
                [c.INV, "staging.deploy", "--json"], cwd=project.root, env=c.inv_env(), timeout=600
            )
            samples.append(time.perf_counter() - start)
            result = json.loads(res.stdout)
            assert [h["status"] for h in result["hosts"]] == ["ok"] * n, result["hosts"]
            steps = result["steps"]
        doc["deploys"][str(n)] = {
            **c.summary(samples, digits=2),
            "batches": len(rolling.batches(list(range(n)), BATCH)),
            "last_steps_s": steps,
        }


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
