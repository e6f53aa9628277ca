"""`stageflow init`'s detection and rendering over small repository layouts written in tmp_path."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest

from deploy.adopt import render
from deploy.adopt.detect import ASGI_WORKER, Overrides, detect, service_name
from deploy.adopt.init import choose_ports, port_is_free
from deploy.errors import ConfigError, UsageError
from deploy.gates.budgets import budgets_hash
from deploy.service import load_service


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


FLASK_APP = "from flask import Flask\n\napp = Flask(__name__)\n"
FACTORY = (
    "from flask import Flask\n\n\ndef create_app():\n    app = Flask(__name__)\n    return app\n"
)


def test_a_flask_module_with_an_app_object(tmp_path: Path) -> None:
    write(
        tmp_path, {"shop/web.py": FLASK_APP, "shop/__init__.py": "", "requirements.txt": "flask\n"}
    )
    d = detect(tmp_path)
    assert (d.framework, d.dir, d.wsgi, d.worker_class) == ("Flask", ".", "shop.web:app", "sync")
    assert d.requirements == "requirements.txt"
    assert d.migrations.kind == "none"


def test_a_flask_factory_in_a_package(tmp_path: Path) -> None:
    write(tmp_path, {"shop/__init__.py": FACTORY, "pyproject.toml": "[project]\nname='shop'\n"})
    d = detect(tmp_path)
    assert d.wsgi == "shop:create_app()"
    assert d.requirements == "pyproject.toml"


def test_a_src_layout_imports_from_below_src(tmp_path: Path) -> None:
    write(tmp_path, {"src/shop/__init__.py": FACTORY, "pyproject.toml": ""})
    assert detect(tmp_path).wsgi == "shop:create_app()"


def test_tests_and_virtualenvs_are_not_the_service(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "tests/test_web.py": FLASK_APP,
            "tests/helper.py": FLASK_APP,
            "env/lib/site.py": FLASK_APP,
            "env/pyvenv.cfg": "home = /usr/bin\n",
            "svc/app.py": FLASK_APP,
        },
    )
    assert detect(tmp_path).wsgi == "svc.app:app"


def test_an_app_made_inside_a_function_is_not_a_module_object(tmp_path: Path) -> None:
    write(
        tmp_path, {"web.py": "from flask import Flask\n\ndef make():\n    app = Flask(__name__)\n"}
    )
    with pytest.raises(UsageError, match="found no Flask, Django, FastAPI or Starlette app"):
        detect(tmp_path)


def test_alembic_gives_commands_and_the_versions_folder(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app.py": FLASK_APP,
            "alembic.ini": "[alembic]\nscript_location = %(here)s/db\n",
        },
    )
    m = detect(tmp_path).migrations
    assert (m.kind, m.dir) == ("command", "db/versions")
    assert m.up == ("alembic", "upgrade", "head")
    assert m.down == ("alembic", "downgrade", "{target}")
    assert m.current == ("alembic", "current")


def test_flask_migrate(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app.py": FLASK_APP + "from flask_migrate import Migrate\nMigrate(app)\n",
            "migrations/alembic.ini": "[alembic]\n",
        },
    )
    d = detect(tmp_path)
    assert d.migration_tool == "Flask-Migrate"
    assert d.migrations.up == ("flask", "db", "upgrade")
    assert d.migrations.down == ("flask", "db", "downgrade", "{target}")
    assert d.migrations.dir == "migrations/versions"


def test_fastapi_runs_under_uvicorns_worker(tmp_path: Path) -> None:
    write(tmp_path, {"main.py": "from fastapi import FastAPI\n\napi = FastAPI()\n"})
    d = detect(tmp_path)
    assert (d.framework, d.wsgi, d.worker_class) == ("FastAPI", "main:api", ASGI_WORKER)


FASTAPI_MAIN = """from fastapi import FastAPI

from app.routers import items

app = FastAPI(title="Items", lifespan=lifespan)
app.include_router(items.router)


@app.get("/")
def index():
    return {"docs": "/docs"}


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


@app.get( '/readyz' )
def readyz():
    return {"status": "ok"}
"""


def test_the_apps_own_health_route_becomes_health(tmp_path: Path) -> None:
    write(
        tmp_path, {"app/main.py": FASTAPI_MAIN, "app/__init__.py": "", "app/routers/items.py": ""}
    )
    d = detect(tmp_path)
    assert (d.wsgi, d.health, d.ready) == ("app.main:app", "/healthz", "/readyz")
    service = load_service(tmp_path / "stageflow.toml", tomllib.loads(render.stageflow_toml(d)))
    assert (service.health, service.ready_path) == ("/healthz", "/readyz")
    ports = {"APP_PORT": 1, "POSTGRES_PORT": 2, "REDIS_PORT": 3}
    compose = render.files(d, {e: ports for e in ("dev", "staging", "prod")})
    assert "8000${STAGEFLOW_HEALTH_PATH:-/healthz}" in compose["compose/compose.yml"]
    assert not any("health" in note for note in d.notes)


def test_health_routes_of_each_framework(tmp_path: Path) -> None:
    flask = FACTORY.replace("    return app", '    @app.route("/health")\n    def h():\n'
                            '        return "ok"\n\n    return app')  # fmt: skip
    starlette = (
        "from starlette.applications import Starlette\n"
        "app = Starlette(routes=[Route('/', home), Route('/ping', ping)])\n"
    )
    urls = 'urlpatterns = [path("admin/", admin.site.urls), path("healthz/", views.health)]\n'
    cases = {
        "flask": ({"shop/__init__.py": flask}, "/health"),
        "starlette": ({"main.py": starlette}, "/ping"),
        "django": (
            {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/urls.py": urls},
            "/healthz/",
        ),
    }
    for name, (files, health) in cases.items():
        assert detect(write(tmp_path / name, files)).health == health, name


def test_without_a_health_route_health_is_the_root_and_init_says_so(tmp_path: Path) -> None:
    # a router's route is not taken: its prefix (APIRouter(prefix=...)) is not known here
    routed = FASTAPI_MAIN.replace("@app.get(", "@router.get(")
    d = detect(write(tmp_path, {"main.py": routed}))
    assert (d.health, d.ready) == ("/", "")
    assert any("no health route found" in note for note in d.notes)
    assert 'health = "/"' in render.service_table(d) and "ready =" not in render.service_table(d)


MANAGE = (
    "import os, sys\n"
    "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"
    "from django.core.management import execute_from_command_line\n"
)


def test_django_in_a_subdirectory(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "site/manage.py": MANAGE,
            "site/mysite/__init__.py": "",
            "site/mysite/wsgi.py": "from django.core.wsgi import get_wsgi_application\n",
            "site/requirements.txt": "django\n",
        },
    )
    d = detect(tmp_path)
    assert (d.framework, d.dir, d.wsgi) == ("Django", "site", "mysite.wsgi:application")
    assert d.migrations.up == ("python", "manage.py", "migrate", "--noinput")
    assert d.migrations.down == ("python", "manage.py", "migrate", "{app}", "{target}", "--noinput")
    assert d.migrations.current == ("python", "manage.py", "showmigrations", "--plan")


def test_what_the_operator_gives_wins(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": FLASK_APP, "other/x.py": ""})
    d = detect(
        tmp_path, Overrides(name="billing", dir="other", wsgi="x:make()", worker_class="gevent")
    )
    assert (d.name, d.dir, d.wsgi, d.worker_class) == ("billing", "other", "x:make()", "gevent")
    with pytest.raises(UsageError, match="--dir '../up' is not a folder inside the repository"):
        detect(tmp_path, Overrides(dir="../up"))


def test_service_name_from_the_folder(tmp_path: Path) -> None:
    assert service_name(tmp_path / "My Shop.API") == "my-shop-api"
    assert service_name(tmp_path / "___") == "service"


def test_the_written_stageflow_toml_holds_a_valid_service(tmp_path: Path) -> None:
    write(tmp_path, {"site/manage.py": MANAGE, "site/mysite/wsgi.py": ""})
    text = render.stageflow_toml(detect(tmp_path))
    data = tomllib.loads(text)
    service = load_service(tmp_path / "stageflow.toml", data)
    assert (service.dir, service.wsgi) == ("site", "mysite.wsgi:application")
    assert service.migrations.down[3:5] == ("{app}", "{target}")
    # the budgets gate passes on the file as written
    assert data["gates"]["budgets"]["locked_hash"] == budgets_hash(data)
    assert data["docs"]["complete"] is False
    assert "posture" not in data and "notes" not in data["anonymize"]


def test_gitignore_lines_are_added_once(tmp_path: Path) -> None:
    first = render.gitignore_addition("node_modules")
    assert first.startswith("\n#")
    assert first.endswith(".stageflow/\nenv/*.secrets.env\ndist/release-gate/\n")
    assert render.gitignore_addition("node_modules" + first) == ""
    assert render.gitignore_addition(".stageflow/\n").endswith(
        "\nenv/*.secrets.env\ndist/release-gate/\n"
    )
    # the release gate's reports: a repository that ignores its dist/ already ignores them
    assert render.gitignore_addition(".stageflow/\nenv/*.secrets.env\ndist/\n") == ""


def test_ports_are_distinct_and_skip_what_is_taken() -> None:
    ports = choose_ports("shop")
    every = [p for env in ports.values() for p in env.values()]
    assert len(every) == len(set(every)) == 9
    busy = ports["dev"]["APP_PORT"]
    again = choose_ports("shop", is_free=lambda p: p != busy)
    assert again["dev"]["APP_PORT"] != busy
    assert busy not in [p for env in again.values() for p in env.values()]


def test_a_listening_port_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


def test_a_service_repositorys_docs_name_only_what_exists(tmp_path: Path) -> None:
    from deploy.docs_check import check_docs

    write(tmp_path, {"README.md": "Run `inv dev.deploy`, then `inv dev.launch`.\n"})
    tasks = {"dev.deploy", "dev.up", "status"}
    # stageflow's own repository: every task documented, docs/ENVIRONMENT.md describes the keys
    strict = [str(p) for p in check_docs(tmp_path, tasks=tasks, keys=[])]
    assert "docs: task `inv status` is not documented in README.md or docs/*.md" in strict
    write(tmp_path, {"stageflow.toml": "[docs]\ncomplete = false\n"})
    relaxed = [str(p) for p in check_docs(tmp_path, tasks=tasks, keys=["APP_PORT"])]
    assert relaxed == ["README.md:1: `inv dev.launch`: no such task"]
    write(tmp_path, {"stageflow.toml": "[docs]\ncomplete = 'no'\n"})
    with pytest.raises(ConfigError, match=r"\[docs\] complete must be true or false"):
        check_docs(tmp_path, tasks=tasks, keys=[])
