"""A Django project kept in a subdirectory, with settings that read their own variable names:
`stageflow init` finds it; a release with a migration; level 2 migrates each app back."""

from __future__ import annotations

from tests.e2e.deployed_services import (
    columns,
    http,
    service,  # noqa: F401 - the fixture
    serving,
)

# -- Django in a subdirectory, settings with their own names ---------------------------------------


def test_a_django_project_in_a_subdirectory_deploys_and_level_2_migrates_each_app_back(service):  # noqa: F811 - the fixture imported above
    site = service("django_site")
    site.init()
    text = site.toml()
    assert 'dir = "web"' in text
    assert 'wsgi = "mysite.wsgi:application"' in text
    assert '"manage.py", "migrate"' in text
    # the settings read the database under their own names: init maps each to what it feeds
    for name, fed in (("DB_NAME", "PGDATABASE"), ("DB_USER", "PGUSER"),
                      ("DB_PASSWORD", "PGPASSWORD"), ("DB_HOST", "PGHOST"), ("DB_PORT", "PGPORT")):  # fmt: skip
        assert f'{name} = "{fed}"' in text, text
    site.commit("stageflow init")
    site.ok("dev.up")
    site.ok("dev.deploy")
    release_1 = serving(site, "dev")
    assert site.get("dev")[:2] == (200, "catalog ok")
    assert http("POST", site.url("dev", "/items"), {"name": "chair"})[0] == 201

    site.add_next()
    site.commit("items get a price")
    site.ok("dev.deploy")
    with site.db("dev") as conn:
        assert "price" in columns(conn, "catalog_item")

    site.ok("dev.rollback", "--level", "2", "--yes")
    assert serving(site, "dev") == release_1
    with site.db("dev") as conn:
        assert "price" not in columns(conn, "catalog_item")
        applied = {
            r[0] for r in conn.execute("SELECT name FROM django_migrations WHERE app = 'catalog'")
        }
        assert applied == {"0001_initial"}
    assert "chair" in site.get("dev", "/items")[1]


def test_a_release_that_refuses_the_probes_host_says_which_setting_to_fix(service):  # noqa: F811 - the fixture imported above
    # its allowed hosts name localhost alone: the smoke probe asking as 127.0.0.1 gets a 400,
    # and the refusal says where to look instead of a bare status
    site = service("django_site")
    settings = site.root / "web" / "mysite" / "settings.py"
    settings.write_text(
        settings.read_text().replace('ALLOWED_HOSTS = ["*"]', 'ALLOWED_HOSTS = ["localhost"]')
    )
    site.init()
    site.commit("stageflow init")
    site.ok("dev.up")
    result = site.run(str(site.venv / "bin" / "inv"), "dev.deploy")
    assert result.returncode == 6, result.stderr
    assert "HTTP 400" in result.stderr
    assert "Django's ALLOWED_HOSTS" in result.stderr and "127.0.0.1" in result.stderr
