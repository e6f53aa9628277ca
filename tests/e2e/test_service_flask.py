"""A Flask service with SQLAlchemy, alembic, Redis and a worker process, deployed as a team would:
`stageflow init` in its own repository, dev, a release that adds a column, level 2."""

from __future__ import annotations

import json

from tests.e2e.deployed_services import (
    RELEASE_HEADER,
    columns,
    http,
    service,  # noqa: F401 - the fixture
    serving,
    wait_for,
)

# -- Flask + SQLAlchemy + alembic + Redis + a worker -----------------------------------------------


def test_a_flask_service_with_alembic_and_a_worker_deploys_and_rolls_back(service):  # noqa: F811 - the fixture imported above
    shop = service("flask_shop")
    out = shop.init()
    text = shop.toml()
    assert 'wsgi = "shop.web:create_app()"' in text, out
    assert '"alembic", "upgrade", "head"' in text
    shop.set_table("service.env", 'keys = ["SHOP_GREETING"]\nsecrets = ["SMTP_PASSWORD"]')
    shop.set_table("service.processes", 'worker = ["python", "-m", "shop.worker"]')
    with open(shop.root / "env" / "dev.env", "a") as fh:
        fh.write("SHOP_GREETING=hello from dev\n")
    shop.commit("stageflow init")

    shop.ok("dev.up")
    shop.ok("dev.deploy")
    status, body, headers = shop.get("dev")
    assert (status, body) == (200, "hello from dev ok")
    release_1 = headers[RELEASE_HEADER]
    assert http("POST", shop.url("dev", "/products"), {"name": "tea"})[0] == 201
    assert "tea" in shop.get("dev", "/products")[1]
    beat = wait_for(lambda: json.loads(shop.get("dev", "/worker")[1])["beat"])
    assert beat and beat.startswith(release_1), "the worker runs with its release"

    shop.add_next()
    shop.commit("products get a sku")
    shop.ok("dev.deploy")
    release_2 = serving(shop, "dev")
    assert release_2 != release_1
    with shop.db("dev") as conn:
        assert "sku" in columns(conn, "products")
    assert wait_for(
        lambda: (json.loads(shop.get("dev", "/worker")[1])["beat"] or "").startswith(release_2)
    )

    res = shop.ok("dev.rollback", "--level", "2", "--yes")
    assert "schema b2 -> a1" in res.stdout, res.stdout
    assert serving(shop, "dev") == release_1
    with shop.db("dev") as conn:
        assert "sku" not in columns(conn, "products"), "alembic downgrade ran"
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "a1"
        assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 1
    assert wait_for(
        lambda: (json.loads(shop.get("dev", "/worker")[1])["beat"] or "").startswith(release_1)
    ), "the worker went back with its release"


def test_staging_init_says_what_the_service_s_own_tool_did(service):  # noqa: F811 - the fixture imported above
    # before the first deploy there is no release whose venv runs alembic: init says the deploy
    # will; once a release serves, init runs `up` in it as a deploy does
    shop = service("flask_shop")
    shop.init()
    shop.commit("stageflow init")
    shop.ok("staging.secrets", "--generate")
    steps = {s["step"]: s["result"] for s in json.loads(shop.ok("staging.init", "--json").stdout)}
    assert steps["migrate"] == "none yet: the first deploy runs `alembic upgrade head`"
    shop.ok("staging.deploy")
    steps = {s["step"]: s["result"] for s in json.loads(shop.ok("staging.init", "--json").stdout)}
    assert steps["migrate"] == "up to date at a1"
