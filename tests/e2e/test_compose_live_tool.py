"""A service whose own tool migrates (kind = "command") on the compose runtime against a real
Docker engine, through `inv`: the tool (tests/services/sqltool.py, its own books over the
reference service's SQL files) runs in one-off containers of the release's image as the image's
unprivileged user, under the migration lock; a release that adds a column moves the schema; level
2 runs the tool's `down` in the serving image and the previous tag serves again; smoke finds the
release's database sessions on the project's own PostgreSQL. Without an
engine it skips in one line (fails under STAGEFLOW_REQUIRE_ALL=1, tests/live_engine.py).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator

import psycopg
import pytest

from tests.e2e.conftest import Project, destroy, make_project
from tests.e2e.test_compose_tool import MIGRATIONS
from tests.live_engine import image_env, require_engine

SLOW = 1800  # a cold image build installs the service's requirements


def live_dev_project(prefix: str, name: str) -> Project:
    """A test project whose dev runs on the real engine as compose project `name`, with secrets
    of its own (uncommitted)."""
    p = make_project(prefix)
    p.set_policy("dev", runtime='"compose"')
    p.edit("env/dev.env", "COMPOSE_PROJECT_NAME=stageflow-dev", f"COMPOSE_PROJECT_NAME={name}")
    keys = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "API_KEYS", "SECRET_KEY")
    path = p.root / "env" / "dev.secrets.env"
    path.write_text("".join(f"{k}=dev-{k.lower()}-{secrets.token_hex(8)}\n" for k in keys))
    os.chmod(path, 0o600)
    return p


def remove_live(p: Project, name: str) -> None:
    """dev down on the engine, the project gone, then its volumes and its releases' images."""
    released = _released(p)
    p.inv("dev.down", env=image_env(), timeout=600)
    destroy(p)
    vols = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"name={name}-"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    if vols:
        subprocess.run(["docker", "volume", "rm", "-f", *vols], capture_output=True)
    for rid in released:
        subprocess.run(["docker", "image", "rm", f"stageflow-app:{rid}"], capture_output=True)


@pytest.fixture(scope="module")
def proj() -> Iterator[Project]:
    require_engine()
    name = f"sflivetool-{secrets.token_hex(3)}-dev"
    p = live_dev_project("sf-live-tool-", name)
    toml = p.root / "stageflow.toml"
    text = re.sub(r"(?ms)^\[service\.migrations\]\n.*?\n\n", MIGRATIONS + "\n", toml.read_text())
    # the reference service's /readyz reads stageflow's ledger, which this tool does not keep
    toml.write_text(text.replace('ready = "/readyz"', 'ready = "/healthz"', 1))
    p.commit("dev on compose; the service's own tool migrates")
    try:
        yield p
    finally:
        remove_live(p, name)


def _released(p: Project) -> set[str]:
    path = p.root / ".stageflow" / "dev" / "state" / "history.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {str(json.loads(ln).get("release")) for ln in lines if ln.strip()} - {"None", ""}


def inv(p: Project, *args: str) -> str:
    res = p.inv(*args, env=image_env(), timeout=SLOW)
    assert res.returncode == 0, f"inv {' '.join(args)}: {res.returncode}\n{res.stderr}"
    return res.stdout


def sql(p: Project, query: str) -> list[tuple]:
    env = dict(
        ln.split("=", 1) for ln in (p.root / "env" / "dev.env").read_text().split() if "=" in ln
    )
    pw = dict(ln.split("=", 1) for ln in (p.root / "env" / "dev.secrets.env").read_text().split())[
        "POSTGRES_PASSWORD"
    ]
    dsn = f"postgresql://app_dev@127.0.0.1:{env['POSTGRES_PORT']}/stageflow_dev"
    with psycopg.connect(dsn, password=pw, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(query).fetchall()


def test_the_tool_migrates_in_the_image_and_level_2_runs_its_down(proj: Project) -> None:
    p = proj
    try:
        inv(p, "dev.up")
        a = json.loads(inv(p, "dev.deploy", "--json"))
        assert a["status"] == "success" and a["migrations"] == ["base -> 0003"], a
        assert sql(p, "SELECT action, locked FROM sqltool_runs") == [("up", True)]
        assert sql(p, "SELECT to_regclass('stageflow_migrations') IS NULL") == [(True,)]
        # the release's sessions are asked of the project's PostgreSQL, published on loopback
        said = inv(p, "dev.smoke")
        assert f"session(s) of {a['release']} on dev's database" in said, said

        mig = p.root / "app" / "migrations"
        (mig / "0004_probe.up.sql").write_text("ALTER TABLE notes ADD COLUMN probe text;\n")
        (mig / "0004_probe.down.sql").write_text("ALTER TABLE notes DROP COLUMN probe;\n")
        p.commit("a release that adds a column")
        b = json.loads(inv(p, "dev.deploy", "--json"))
        assert b["status"] == "success" and b["migrations"] == ["0003 -> 0004"], b
        probe = "SELECT count(*) FROM information_schema.columns WHERE column_name = 'probe'"
        assert sql(p, probe) == [(1,)]

        res = json.loads(inv(p, "dev.rollback", "--level", "2", "--reason", "live", "--json"))
        assert res["status"] == "success", res
        assert sql(p, probe) == [(0,)]
        assert sql(p, "SELECT max(version) FROM sqltool_version") == [("0003",)]
        status = json.loads(inv(p, "dev.status", "--json"))
        assert status["app"]["release"] == a["release"], status
    finally:
        p.inv("dev.down", env=image_env(), timeout=600)
