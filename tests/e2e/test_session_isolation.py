"""Where a release's database sessions are, asked of the servers at smoke: a staging release that
reaches prod's cluster through a name of the service's own passes every URL guard and every
self-report, and is refused because prod's pg_stat_activity holds its sessions."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest

from tests.e2e.conftest import Project, destroy, make_project

SECRETS = 'secrets = ["API_KEYS", "SECRET_KEY"]'
# the service's own secrets, fed to the names its code reads: a route the guards cannot judge,
# since stageflow never sees what such a value points at
FEED = (
    'secrets = ["API_KEYS", "SECRET_KEY", "LEGACY_DATABASE_URL", "LEGACY_DATABASE_PASSWORD"]\n\n'
    "[service.env.from]\n"
    'DATABASE_URL = "LEGACY_DATABASE_URL"\n'
    'POSTGRES_PASSWORD = "LEGACY_DATABASE_PASSWORD"'
)


@pytest.fixture(scope="module")
def proj() -> Iterator[Project]:
    p = make_project("sf-sessions-")
    try:
        yield p
    finally:
        destroy(p)


def feed_legacy(p: Project, name: str, url: str, password: str) -> None:
    path = p.root / "env" / f"{name}.secrets.env"
    kept = [ln for ln in path.read_text().splitlines() if not ln.startswith("LEGACY_")]
    path.write_text(
        "\n".join([*kept, f"LEGACY_DATABASE_URL={url}", f"LEGACY_DATABASE_PASSWORD={password}"])
        + "\n"
    )
    os.chmod(path, 0o600)


def _sessions(p: Project, name: str, app_name: str) -> int:
    port = p.ports[name]["pg"]
    with psycopg.connect(
        f"postgresql://app_{name}@127.0.0.1:{port}/stageflow_{name}",
        password=f"pg-{name}-s3cret-value",
        connect_timeout=5,
    ) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", (app_name,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_staging_release_on_prods_cluster_is_refused_at_smoke(proj: Project) -> None:
    proj.ok("staging.up", "prod.up")
    proj.trust(proj.actor)  # prod's database changes outside a deploy are signed
    proj.ok("prod.migrate")  # prod's schema is current: the wrong database answers ready
    proj.edit("stageflow.toml", SECRETS, FEED)
    staging_pg, prod_pg = proj.ports["staging"]["pg"], proj.ports["prod"]["pg"]
    # each environment's feed first points at its own database: the release passes
    for name, port in (("staging", staging_pg), ("prod", prod_pg)):
        feed_legacy(
            proj,
            name,
            f"postgresql://app_{name}@127.0.0.1:{port}/stageflow_{name}",
            f"pg-{name}-s3cret-value",
        )
    proj.commit("the service reads its database from a secret of its own", tag="v1.0.0-rc.1")
    proj.ok("staging.deploy", "--ref", "v1.0.0-rc.1")
    assert _sessions(proj, "staging", "stageflow:staging:%") > 0
    good = proj.history("staging")[0]["release"]

    # staging's secret now reaches prod's cluster; the URL's path still names staging's database,
    # so the service's own report (/version: "database") says staging. prod's password is read
    # from its file, never written here: the secret scans search every file of the project
    secrets = (proj.root / "env" / "prod.secrets.env").read_text().splitlines()
    prod_password = next(
        ln.split("=", 1)[1] for ln in secrets if ln.startswith("POSTGRES_PASSWORD=")
    )
    feed_legacy(
        proj,
        "staging",
        f"postgresql://app_prod@127.0.0.1:{prod_pg}/stageflow_staging?dbname=stageflow_prod",
        prod_password,
    )
    (proj.root / "CHANGES").write_text("second\n")
    proj.commit("second", tag="v1.0.0-rc.2")
    res = proj.inv("staging.deploy", "--ref", "v1.0.0-rc.2")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "smoke failed (sessions: a session of staging's release" in out, out
    assert "is on prod's database cluster" in out, out
    assert prod_password not in out
    assert proj.history("staging")[0]["status"] != "success"
    # the release that passed serves again
    with urllib.request.urlopen(proj.url("staging", "/version"), timeout=5) as resp:
        assert json.loads(resp.read())["release"] == good

    # put back under the same settings, it reaches prod's cluster too: `inv staging.smoke` says so
    res = proj.inv("staging.smoke")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "sessions: a session of staging's release" in out and "prod's database cluster" in out
    assert prod_password not in out
