"""Staging: cold `inv staging.init`, seed rows/s vs a bare COPY, refresh vs bare pg_dump + pg_restore."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import _common as c
import psycopg

from app import seed as notes_seed
from deploy import backup, staging
from deploy import seed as seeding
from deploy.config import load_project
from deploy.hosts import Host
from deploy.runtime.native import NativeServices, pg_bin_dir
from tests.e2e.conftest import destroy, make_project

SEED_SIZE = os.environ.get("STAGEFLOW_BENCH_SEED_SIZE", "medium")
PROD_ROWS = int(os.environ.get("STAGEFLOW_BENCH_PROD_ROWS", "100000"))
HEAVY_RUNS = max(1, min(c.RUNS, 3))  # each run rebuilds a cluster or moves 100 k rows


def _password(proj, name: str) -> str:
    return proj.env(name).secret("POSTGRES_PASSWORD").reveal()


def bare_copy(conninfo: str, password: str, rows: list) -> float:
    """The floor for seeding: the same rows, already built, COPYed into an empty twin of notes."""
    with psycopg.connect(conninfo, password=password) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_notes")
        conn.execute("CREATE TABLE bench_notes (LIKE notes INCLUDING ALL)")
        conn.commit()
        start = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy("COPY bench_notes (body, created_at, author) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        conn.commit()
        took = time.perf_counter() - start
        conn.execute("DROP TABLE bench_notes")
        conn.commit()
    return took


def bare_dump_restore(proj) -> float:
    """The floor for refresh: pg_dump of prod, pg_restore into an empty database on staging."""
    prod = NativeServices(proj.env("prod"), user_name=proj.service_user)
    stage = NativeServices(proj.env("staging"), user_name=proj.service_user)
    host = Host()
    out = Path(tempfile.mkdtemp(prefix="sf-bench-dump-")) / "prod.dump"
    with psycopg.connect(stage.admin_conninfo(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_restore")
        conn.execute("CREATE DATABASE bench_restore")
    try:
        start = time.perf_counter()
        host.run(
            backup.dump_argv(
                pg_bin_dir(), prod.admin_conninfo(proj.env("prod").database.name), str(out)
            )
        )
        host.run(backup.restore_argv(pg_bin_dir(), stage.admin_conninfo("bench_restore"), str(out)))
        return time.perf_counter() - start
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
        with psycopg.connect(stage.admin_conninfo(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS bench_restore WITH (FORCE)")


def main() -> None:
    proj_dir = make_project("sf-bench-staging-")
    root = proj_dir.root
    env = c.inv_env()
    home = root / ".stageflow" / "staging"
    try:
        cold = []
        for i in range(HEAVY_RUNS):
            if i:
                c.run([c.INV, "staging.down"], cwd=root, env=env)
                shutil.rmtree(home, ignore_errors=True)
            cold.append(c.wall(lambda: c.run([c.INV, "staging.init"], cwd=root, env=env)))
        warm = [
            c.wall(lambda: c.run([c.INV, "staging.init"], cwd=root, env=env))
            for _ in range(HEAVY_RUNS)
        ]

        proj = load_project(root, process_env={})
        stage = proj.env("staging")
        count = notes_seed.SIZES[SEED_SIZE]
        seeded = [seeding.run(proj, stage, size=SEED_SIZE).seconds for _ in range(HEAVY_RUNS)]
        rows = list(notes_seed.rows(count))
        floor = [
            bare_copy(stage.database_url, _password(proj, "staging"), rows)
            for _ in range(HEAVY_RUNS)
        ]

        c.run([c.INV, "prod.up"], cwd=root, env=env)
        c.run([c.INV, "prod.migrate"], cwd=root, env=env)
        prod = proj.env("prod")
        with psycopg.connect(prod.database_url, password=_password(proj, "prod")) as conn:
            with conn.cursor() as cur, cur.copy(notes_seed.COPY_SQL) as copy:
                for body, created, author in notes_seed.rows(PROD_ROWS, seed=7):
                    copy.write_row((body, created, author.replace("seed:", "") + "@example.com"))
            conn.commit()
        refreshes, parts = [], {}
        for _ in range(HEAVY_RUNS):
            out = staging.refresh(
                proj, "staging", anonymize_data=True, actor="bench@example.com", fresh=True
            )
            refreshes.append(out["duration_s"])
            parts = out["timings_s"]
        bare = [bare_dump_restore(proj) for _ in range(HEAVY_RUNS)]
    finally:
        destroy(proj_dir)
    seed_med = c.summary(seeded)["median_s"]
    floor_med = c.summary(floor)["median_s"]
    c.emit(
        {
            "bench": "staging",
            "init": {
                "command": "inv staging.init",
                "cold": c.summary(cold),
                "warm_noop": c.summary(warm),
                "target_cold_s": 10,
            },
            "seed": {
                "size": SEED_SIZE,
                "rows": count,
                "seed": c.summary(seeded),
                "seed_rows_per_s": round(count / seed_med),
                "bare_copy": c.summary(floor),
                "bare_copy_rows_per_s": round(count / floor_med),
                "ratio_vs_bare": round(seed_med / floor_med, 2),
                "note": "seed = delete old seed rows + generate + COPY in one transaction",
            },
            "refresh": {
                "prod_rows": PROD_ROWS,
                "refresh_fresh_dump": c.summary(refreshes),
                "last_refresh_steps_s": parts,
                "bare_dump_restore": c.summary(bare),
                "ratio_vs_bare": round(
                    c.summary(refreshes)["median_s"] / c.summary(bare)["median_s"], 2
                ),
                "note": "refresh = pg_dump + restore to scratch + migrate + anonymize + check + swap",
            },
        }
    )


if __name__ == "__main__":
    main()
