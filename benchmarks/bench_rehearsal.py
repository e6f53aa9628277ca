"""The release gate's `migrations` gate on a target of about 100 MB: the reference service's schema
and rows, read through `--db-url` with a read-only role, copied into the gate's own cluster and the
pending migration rehearsed there. Against the floor of the copy alone: `pg_dump -Fc | pg_restore`
of the same database into a fresh database of a cluster started as the gate starts its own."""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
import psycopg
from psycopg import sql

from deploy import migrations
from deploy.config import load_project
from deploy.gates import scratch_cluster
from deploy.gates.migrations import pg_tool
from deploy.runtime.native import NativeServices, scram_verifier
from deploy.state import Layout
from tests.e2e.conftest import Project, destroy, make_project

REF = "v1.0.0"
TARGET_MB = float(os.environ.get("STAGEFLOW_BENCH_REHEARSAL_MB", "100"))
DB = "rehearsal_target"
READER = "gate_reader"
PENDING = 1  # the newest migration stays pending on the target: the gate rehearses it
ROWS_FIRST = 100_000  # a first batch measures the bytes a row costs; the second fills the rest


class Target:
    """dev's PostgreSQL holding the target database, and the read-only role the gate reads it with."""

    def __init__(self, proj: Project) -> None:
        project = load_project(proj.root, process_env={})
        self.env = project.env("dev")
        self.user = project.service_user
        self.native = NativeServices(self.env, user_name=self.user)
        self.port = self.env.postgres_port
        self.password = secrets.token_urlsafe(18)
        service = project.service
        self.files = migrations.discover(proj.root / service.repo_path(service.migrations.dir))

    @property
    def owner_conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.env.database.user} dbname={DB}"

    @property
    def reader_url(self) -> str:
        return f"postgresql://{READER}@127.0.0.1:{self.port}/{DB}"

    @property
    def reader_url_with_password(self) -> str:
        """What the gate is given: a task drops the operator's PG* variables (PGPASSWORD too)
        before it connects anywhere, so the password rides in the URL, which the report scrubs."""
        return f"postgresql://{READER}:{self.password}@127.0.0.1:{self.port}/{DB}"

    def reader_env(self) -> dict[str, str]:
        """For the floor's own pg_dump, which reads PGPASSWORD as libpq does."""
        return {"PGPASSWORD": self.password}

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.native.admin_conninfo(dbname), autocommit=True)

    def create(self) -> None:
        """The database (owned by the service's role), a role that can only read, and a line of
        pg_hba.conf letting it in over TCP (the environment's own file admits the service's role
        alone)."""
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DB), sql.Identifier(self.env.database.user)
                )
            )
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(READER), sql.Literal(scram_verifier(self.password))
                )
            )
            conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(READER)))
            hba = Path(Layout(str(self.env.data_dir)).pgdata) / "pg_hba.conf"
            with open(hba, "a", encoding="utf-8") as fh:
                fh.write(f"host {DB} {READER} 127.0.0.1/32 scram-sha-256\n")
            conn.execute("SELECT pg_reload_conf()")

    def migrate(self, version: int) -> None:
        migrations.migrate(self.owner_conninfo, self.files, target=version, applied_by="bench")

    def size(self) -> int:
        with self.admin(DB) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    def fill(self, megabytes: float) -> dict[str, Any]:
        """Rows of the service's table by generate_series, in two statements: the first batch
        says what a row costs (heap and indexes), the second brings the database to size."""
        start = time.perf_counter()
        empty = self.size()
        with psycopg.connect(self.owner_conninfo, autocommit=True) as conn:
            insert = (
                "INSERT INTO notes (body, created_at) SELECT repeat(md5(g::text), 3) || ' #' || g, "
                "now() - g * interval '1 second' FROM generate_series(%s::bigint, %s::bigint) g"
            )
            conn.execute(insert, (1, ROWS_FIRST))
            per_row = (self.size() - empty) / ROWS_FIRST
            rows = max(ROWS_FIRST, int((megabytes * 1024 * 1024 - empty) / per_row))
            if rows > ROWS_FIRST:
                conn.execute(insert, (ROWS_FIRST + 1, rows))
            conn.execute("VACUUM ANALYZE notes")
        return {"rows": rows, "seconds": round(time.perf_counter() - start, 1)}


def gate(proj: Project, target: Target) -> tuple[float, dict[str, Any]]:
    """`inv release.gate --only migrations` against the target; the migrations gate's result.
    Run here rather than by c.run, whose error names the argv (the URL holds a password)."""
    argv = [c.INV, "release.gate", "--ref", REF, "--only", "migrations", "--no-cache", "--json",
            "--db-url", target.reader_url_with_password]  # fmt: skip
    start = time.perf_counter()
    res = subprocess.run(argv, cwd=proj.root, env=c.inv_env(), capture_output=True, text=True,
                         timeout=900, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    took = time.perf_counter() - start
    try:
        found = next(g for g in json.loads(res.stdout)["gates"] if g["name"] == "migrations")
    except (ValueError, KeyError, StopIteration):
        why = res.stderr.strip().replace(target.password, "***")[-400:]
        raise SystemExit(f"inv release.gate exited {res.returncode}: {why}") from None
    if found["status"] != "passed":
        raise SystemExit(f"the migrations gate {found['status']}: {found['summary']}")
    return took, found


def floor(target: Target, cluster: scratch_cluster.ScratchCluster, n: int) -> float:
    """pg_dump -Fc of the target (the same read-only role) piped into pg_restore, into a fresh
    database of a cluster like the gate's; create and drop are not timed."""
    name = f"floor_{n}"
    with scratch_cluster.connect(cluster, "postgres") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dump_env = {
        **os.environ,
        **target.reader_env(),
        "PGOPTIONS": "-c default_transaction_read_only=on",
    }
    restore_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    start = time.perf_counter()
    dump = subprocess.Popen(
        [pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
         f"--dbname={target.reader_url}"],
        stdout=subprocess.PIPE, env=dump_env,
    )  # fmt: skip
    restore = subprocess.run(
        [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
         f"--dbname={cluster.admin_conninfo(name)}"],
        stdin=dump.stdout, env=restore_env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert dump.stdout is not None
    dump.stdout.close()
    dumped = dump.wait()
    took = time.perf_counter() - start
    if dumped != 0 or restore.returncode != 0:
        raise SystemExit(
            f"floor: pg_dump {dumped}, pg_restore {restore.returncode}: {restore.stderr[-300:]}"
        )
    with scratch_cluster.connect(cluster, "postgres") as conn:
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
    return took


def cluster_cost(user: str) -> float:
    """Start and stop a scratch cluster as the gate does (initdb, start, its database, stop and
    delete): the part of the gate's time that is neither the copy nor the rehearsal."""
    start = time.perf_counter()
    with scratch_cluster.started(user_name=user):
        pass
    return time.perf_counter() - start


def main() -> None:
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    proj = make_project("sf-bench-rehearsal-")
    try:
        proj.commit("the release to gate", tag=REF)
        c.run([c.INV, "dev.up"], cwd=proj.root, env=c.inv_env())
        target = Target(proj)
        target.create()
        newest = target.files[-1].version
        target.migrate(newest - PENDING)
        filled = target.fill(TARGET_MB)
        size = target.size()
        with scratch_cluster.started(user_name=target.user) as cluster:
            floor(target, cluster, 0)  # warm: the page cache holds the target for both
            gate(proj, target)
            gates, floors, clusters = [], [], []
            for n in range(c.RUNS):  # interleaved: each pair shares the machine's mood
                gates.append(gate(proj, target))
                floors.append(floor(target, cluster, n + 1))
                clusters.append(cluster_cost(target.user))
        pending = [f.filename for f in target.files[-PENDING:]]
    finally:
        destroy(proj)

    med = statistics.median
    durations = [g["duration_s"] for _, g in gates]
    details = gates[-1][1]["details"]
    copies = [g["details"]["copy"]["seconds"] for _, g in gates]
    rehearsal = details.get("rehearsal", {})
    c.emit(
        {
            "bench": "rehearsal",
            "bench_s": round(time.perf_counter() - began, 1),
            "command": f"inv release.gate --ref {REF} --only migrations --no-cache --json "
            f"--db-url postgresql://{READER}:PASSWORD@127.0.0.1:PORT/{DB}",
            "floor": "pg_dump -Fc (the same role) | pg_restore into a fresh database of a cluster "
            "started as the gate starts its own (fsync off)",
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "target": {
                "database_bytes": size,
                "database_mb": round(size / 1024 / 1024, 1),
                "rows": filled["rows"],
                "fill_s": filled["seconds"],
                "dump_bytes": details["copy"]["dump_bytes"],
                "copy_mode": details["copy"]["mode"],
                "pending": pending,
            },
            "results": {
                "gate": c.summary(durations),
                "gate_wall": c.summary([w for w, _ in gates]),
                "copy": c.summary(copies),
                "scratch_cluster_start_stop": c.summary(clusters),
                "rehearsal_applied_s": [a["seconds"] for a in rehearsal.get("applied", [])],
                "round_trip": rehearsal.get("round_trip"),
                "floor": c.summary(floors),
                "ratio_to_floor": round(med(durations) / med(floors), 2),
                "ratio_to_floor_pairwise_median": round(
                    med(g / f for g, f in zip(durations, floors, strict=True)), 2
                ),
                "summary": gates[-1][1]["summary"],
            },
        }
    )


if __name__ == "__main__":
    sys.exit(main())
