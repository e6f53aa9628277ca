"""The Flask + alembic service carried the whole way as a team would: `stageflow init`, staging,
the GA gate (its own tests, its alembic migration linted and rehearsed), a signed request and a
signed approval by another person, prod, a release that adds a column, then levels 2 and 3."""

from __future__ import annotations

import re

from tests.e2e.deployed_services import (
    columns,
    http,
    service,  # noqa: F401 - the fixture
    serving,
)

ALICE, BOB = "alice@example.com", "bob@example.com"

UNIT_TEST = """import unittest


class Shop(unittest.TestCase):
    def test_the_package_imports(self):
        import shop

        self.assertTrue(shop.__doc__)
"""


def request_id(out: str) -> str:
    return re.search(r"#(\d+)", out.strip().splitlines()[-1]).group(1)


def prod_url(shop) -> str:
    """prod's database URL with its password, as the operator gives it to the gate."""
    return shop.database_url("prod")


def release(shop, tag: str) -> str:
    """Gate, staging, a request by Alice, Bob's approval, prod: the id of the request."""
    shop.git("tag", tag)
    shop.ok("staging.deploy", "--ref", tag)
    shop.ok("release.gate", "--ref", tag, "--db-url", prod_url(shop))
    out = shop.ok("prod.request", "--ref", tag).stdout
    rid = request_id(out)
    shop.ok("prod.approve", rid, actor=BOB)
    shop.ok("prod.deploy", "--request", rid)
    return out


def test_the_flask_service_goes_through_the_gate_and_an_approval_to_prod(service):  # noqa: F811 - the fixture imported above
    shop = service("flask_shop")
    shop.init()
    shop.set_table("service.env", 'keys = ["SHOP_GREETING"]\nsecrets = ["SMTP_PASSWORD"]')
    shop.set_table("service.processes", 'worker = ["python", "-m", "shop.worker"]')
    shop.set_table(
        "gates.test", 'command = ["python", "-m", "unittest", "discover", "-s", "tests"]'
    )
    shop.set_table("gates.policy-drift", 'allowed_keys = ["SHOP_GREETING"]')
    # a test's day is minutes: no 24 h soak, short verify windows
    policy = shop.toml().replace("soak_s = 86400", "soak_s = 0")
    policy = re.sub(r"^verify_window_s = \d+", "verify_window_s = 1", policy, flags=re.M)
    (shop.root / "stageflow.toml").write_text(policy)
    (shop.root / "tests").mkdir()
    (shop.root / "tests" / "test_shop.py").write_text(UNIT_TEST)
    for env in ("staging", "prod"):
        with open(shop.root / "env" / f"{env}.env", "a") as fh:
            fh.write(f"SHOP_GREETING=hello from {env}\n")
    # the team's venv: its service's requirements (the gate runs its alembic), the gate's linter
    pip = [str(shop.venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    assert shop.run(*pip, "-r", "requirements.txt", "squawk-cli").returncode == 0
    deps = shop.run(str(shop.venv / "bin" / "python"), "-m", "deploy.gates.deps")
    assert deps.returncode == 0, deps.stderr
    (shop.root / "approved-deps.toml").write_text(deps.stdout)
    shop.commit("stageflow init, reviewed")
    shop.ok("staging.secrets", "--generate")
    shop.ok("prod.secrets", "--generate")
    shop.ok("staging.up", "prod.up")
    shop.trust(ALICE, BOB)

    release(shop, "v1.0.0")
    assert shop.get("prod")[:2] == (200, "hello from prod ok")
    release_1 = serving(shop, "prod")
    assert http("POST", shop.url("prod", "/products"), {"name": "tea"})[0] == 201

    shop.add_next()
    shop.commit("products get a sku")
    request = release(shop, "v1.1.0")
    assert "b2_products_sku" in request.replace("\\_", "_"), request
    with shop.db("prod") as conn:
        assert "sku" in columns(conn, "products")

    shop.ok("prod.rollback", "--level", "2", "--reason", "sku broke checkout", "--yes")
    assert serving(shop, "prod") == release_1
    with shop.db("prod") as conn:
        assert "sku" not in columns(conn, "products"), "alembic downgrade ran on prod"
        assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 1

    # forward again, then level 3: the backup taken before that deploy comes back, with the
    # release it was taken under; a row written after the backup is gone
    (shop.root / "CHANGES").write_text("v1.1.1\n")
    shop.commit("v1.1.1")
    release(shop, "v1.1.1")
    with shop.db("prod") as conn:
        assert "sku" in columns(conn, "products")
    assert http("POST", shop.url("prod", "/products"), {"name": "coffee"})[0] == 201
    out = shop.ok("prod.rollback", "--level", "3", "--reason", "restore the backup", "--yes")
    assert serving(shop, "prod") == release_1
    # the backup names the schema alembic had (the serving release's revision), not a ledger
    assert "(schema a1)" in out.stdout and "ledger version" not in out.stdout, out.stdout
    with shop.db("prod") as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM products")] == ["tea"]
        assert "sku" not in columns(conn, "products")
