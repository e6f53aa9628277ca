"""A service's own migration tool, as small as one can be: the compose tests' stand-in for alembic.

`python sqltool.py current | up | down TARGET`, run in the service's directory with its settings
(DATABASE_URL with the password, as stageflow gives them). It applies the reference service's SQL
files (app/migrations/NNNN_name.up.sql) in order and keeps its own books in `sqltool_version`,
not in stageflow's ledger; `current` prints the newest applied version ("0003"), or nothing. Each
`up` and `down` leaves a row in `sqltool_runs`: the action, the lock_timeout its session got
(PGOPTIONS) and whether another session held stageflow's migration lock meanwhile, so a test can
tell what ran and under which guard.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psycopg

FILES = Path(os.environ.get("SQLTOOL_DIR", "app/migrations"))
LOCK_KEY = 0x5354_4147_4546_4C57  # stageflow's migration lock (deploy/migrations.py)


def versions(kind: str) -> dict[str, Path]:
    return {p.name[:4]: p for p in sorted(FILES.glob(f"[0-9][0-9][0-9][0-9]_*.{kind}.sql"))}


def main(argv: list[str]) -> int:
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS sqltool_version (version text PRIMARY KEY)")
        applied = sorted(r[0] for r in conn.execute("SELECT version FROM sqltool_version"))
        if argv[0] == "current":
            print(applied[-1] if applied else "")
            return 0
        if os.environ.get("SQLTOOL_FAIL") == argv[0]:
            print(f"sqltool: {argv[0]} failed as told", file=sys.stderr)
            return 3
        conn.execute(
            "CREATE TABLE IF NOT EXISTS sqltool_runs (action text, lock_timeout text, locked bool)"
        )
        locked = conn.execute(
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = %s AND objid = %s AND pid <> pg_backend_pid()",
            (LOCK_KEY >> 32, LOCK_KEY & 0xFFFF_FFFF),
        ).fetchone()[0]
        timeout = conn.execute("SHOW lock_timeout").fetchone()[0]
        conn.execute("INSERT INTO sqltool_runs VALUES (%s, %s, %s)", (argv[0], timeout, locked))
        if argv[0] == "up":
            for version, path in versions("up").items():
                if version not in applied:
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO sqltool_version VALUES (%s)", (version,))
            return 0
        target = "" if argv[1] == "base" else argv[1]
        downs = versions("down")
        for version in reversed(applied):
            if version > target:
                conn.execute(downs[version].read_text())
                conn.execute("DELETE FROM sqltool_version WHERE version = %s", (version,))
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
