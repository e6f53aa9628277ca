"""Where a release's database sessions are, asked of the servers at smoke, with a compose project
among the environments: dev on the compose runtime (the recording stand-in for the Docker engine,
tests/fake_docker.py) has its release's sessions seen on its own PostgreSQL, published on loopback
(`inv dev.smoke` asks as a deploy's smoke does); a native staging whose service reaches dev's
compose cluster through a name of its own passes every URL guard, and is refused at smoke because
dev's pg_stat_activity holds its sessions."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import make_project
from tests.e2e.test_compose_runtime import SECRETS, Engine, stand_in
from tests.e2e.test_session_isolation import FEED, feed_legacy
from tests.e2e.test_session_isolation import SECRETS as DECLARED


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    p = make_project("sf-compose-sessions-")
    p.set_policy("dev", runtime='"compose"')
    with stand_in(p) as e:
        yield e


def test_sessions_are_asked_of_a_compose_projects_cluster_too(engine: Engine) -> None:
    p = engine.proj
    path = p.root / "env" / "dev.secrets.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    os.chmod(path, 0o600)
    engine.inv("dev.up")
    good = json.loads(engine.inv("dev.deploy", "--json").stdout)
    assert good["status"] == "success", good
    # the compose release's sessions are seen on its own cluster, published on loopback
    said = engine.inv("dev.smoke").stdout
    assert f"session(s) of {good['release']} on dev's database" in said, said

    # a native staging whose service reads its database from a secret of its own, pointed at
    # dev's compose cluster: every URL guard passes; dev's pg_stat_activity holds its sessions
    p.edit("stageflow.toml", DECLARED, FEED)
    dev_pg = p.ports["dev"]["pg"]
    feed_legacy(
        p,
        "dev",
        f"postgresql://app_dev@127.0.0.1:{dev_pg}/stageflow_dev",
        SECRETS["POSTGRES_PASSWORD"],
    )
    # the URL's path names staging's database, so the service's own report says staging
    feed_legacy(
        p,
        "staging",
        f"postgresql://app_dev@127.0.0.1:{dev_pg}/stageflow_staging?dbname=stageflow_dev",
        SECRETS["POSTGRES_PASSWORD"],
    )
    p.commit("the service reads its database from a secret of its own")
    p.ok("staging.up")
    res = p.inv("staging.deploy")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "smoke failed (sessions: a session of staging's release" in out, out
    assert "is on dev's database cluster" in out, out
    assert SECRETS["POSTGRES_PASSWORD"] not in out
    assert (
        json.loads(engine.inv("dev.status", "--json").stdout)["app"]["release"] == good["release"]
    )
