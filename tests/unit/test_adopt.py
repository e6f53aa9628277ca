"""`stageflow init`'s detection and rendering over small repository layouts written in tmp_path."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest

from deploy.adopt import render
from deploy.adopt.detect import (
    ASGI_WORKER,
    NO_MIGRATIONS_NOTE,
    Overrides,
    detect,
    service_name,
)
from deploy.adopt.init import choose_ports, port_is_free
from deploy.config import load_project
from deploy.errors import ConfigError, UsageError
from deploy.gates.budgets import budgets_hash
from deploy.service import load_service
from deploy.settings import service_settings


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
    # nothing would make its tables on a fresh database: the note says how stageflow's engine can
    assert [n for n in d.notes if n.startswith("no migration tool found")] == [NO_MIGRATIONS_NOTE]
    write(tmp_path, {"alembic.ini": "[alembic]\nscript_location = alembic\n"})
    assert NO_MIGRATIONS_NOTE not in detect(tmp_path).notes


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
    # a deploy sets no FLASK_APP: without one, `flask` has no `db` command; set through env,
    # since Flask before 2.2 has no --app option
    flask = ("env", "FLASK_APP=app:app", "flask")
    assert d.migrations.up == (*flask, "db", "upgrade")
    assert d.migrations.down == (*flask, "db", "downgrade", "{target}")
    assert d.migrations.current == (*flask, "db", "current")
    assert d.migrations.dir == "migrations/versions"


BOOKMARKS = """\
import os

import redis
from flask import Flask


def create_app(test_config=None):
    app = Flask(__name__)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("SECRET_KEY", "dev"),
        SQLALCHEMY_DATABASE_URI=os.environ["DATABASE_URL"],
        MAIL_SERVER=os.getenv("MAIL_SERVER", "localhost"),
    )
    app.extensions["redis"] = redis.from_url(os.environ["REDIS_URL"])
    return app
"""
VIEWS = """\
from flask import Blueprint

bp = Blueprint("api", __name__)


@bp.get("/")
def index():
    return {}


@bp.get("/health")
def health():
    return {"status": "ok"}
"""


def test_a_src_layout_flask_migrate_service_as_the_tutorials_write_it(tmp_path: Path) -> None:
    write(
        tmp_path / "checkout",
        {
            "pyproject.toml": '[project]\nname = "Bookmarks"\ndependencies = ["flask"]\n',
            "src/bookmarks/__init__.py": BOOKMARKS,
            "src/bookmarks/views.py": VIEWS,
            "src/bookmarks/extensions.py": "from flask_migrate import Migrate\nmigrate = Migrate()\n",
            "migrations/alembic.ini": "[alembic]\n",
            "tests/conftest.py": "import os\nos.environ['TEST_ONLY_TOKEN'] = 'x'\n",
        },
    )
    d = detect(tmp_path / "checkout")
    assert (d.name, d.wsgi, d.requirements) == (
        "bookmarks",
        "bookmarks:create_app()",
        "pyproject.toml",
    )
    assert d.migrations.up == (
        "env",
        "FLASK_APP=bookmarks:create_app()",
        "flask",
        "db",
        "upgrade",
    )
    assert d.health == "/health"  # its own health view, not the index
    # what the code reads and stageflow does not feed: a deploy hands over only what is declared
    assert (d.env_keys, d.secret_keys) == (("MAIL_SERVER",), ("SECRET_KEY",))
    service = load_service(Path("stageflow.toml"), tomllib.loads(render.stageflow_toml(d)))
    assert service.health == "/health" and service.secret_keys == ("SECRET_KEY",)
    assert service.env_keys == ("MAIL_SERVER",)
    example = render.files(d, choose_ports(d.name))["env/prod.secrets.env.example"]
    assert "SECRET_KEY=\n" in example


def test_without_a_health_view_the_index_or_a_note(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": FLASK_APP + "\n@app.route('/')\ndef index():\n    return ''\n"})
    d = detect(tmp_path)
    assert d.health == "/" and not any("health view" in n for n in d.notes)
    write(tmp_path, {"app.py": FLASK_APP})
    d = detect(tmp_path)
    assert d.health == "/" and any("no health route found" in n for n in d.notes)


def test_a_django_health_path_keeps_its_slash(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "manage.py": MANAGE,
            "mysite/wsgi.py": "",
            "mysite/urls.py": "urlpatterns = [path('healthz/', views.healthz)]\n",
        },
    )
    d = detect(tmp_path)
    assert d.health == "/healthz/"
    # the database under the settings' own names is mapped to what stageflow feeds, never declared
    write(tmp_path, {"mysite/settings.py": DJANGO_SETTINGS})
    d = detect(tmp_path)
    assert d.env_from == (("DB_HOST", "PGHOST"), ("DB_PASSWORD", "PGPASSWORD"))
    assert (d.env_keys, d.secret_keys) == (("DJANGO_DEBUG",), ("DJANGO_SECRET_KEY",))
    service = load_service(Path("stageflow.toml"), tomllib.loads(render.stageflow_toml(d)))
    assert service.env_from == d.env_from


DJANGO_SETTINGS = """\
import os

SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
DATABASES = {"default": {"HOST": os.environ["DB_HOST"], "PASSWORD": os.environ["DB_PASSWORD"]}}
"""


ENVIRON_SETTINGS = """\
import environ
from decouple import config

env = environ.Env()
SECRET_KEY = env("DJANGO_SECRET_KEY")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
DATABASES = {"default": env.db("DATABASE_URL")}
SENTRY_TOKEN = config("SENTRY_TOKEN", default="")
CACHE_TTL = app.config("NOT_A_SETTING")
"""


def test_settings_read_through_django_environ_or_decouple_are_found(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/settings.py": ENVIRON_SETTINGS},
    )
    d = detect(tmp_path)
    assert d.env_keys == ("DJANGO_DEBUG",)
    assert d.secret_keys == ("DJANGO_SECRET_KEY", "SENTRY_TOKEN")  # DATABASE_URL is fed


def test_fastapi_runs_under_uvicorns_worker(tmp_path: Path) -> None:
    write(tmp_path, {"main.py": "from fastapi import FastAPI\n\napi = FastAPI()\n"})
    d = detect(tmp_path)
    assert (d.framework, d.wsgi, d.worker_class) == ("FastAPI", "main:api", ASGI_WORKER)


def test_an_asgi_app_made_by_a_factory_of_the_projects_own_name(tmp_path: Path) -> None:
    main = (
        "from fastapi import FastAPI\n\nfrom svc.settings import get_settings\n\n\n"
        "def build_application(\n    debug: bool = False,\n) -> FastAPI:\n"
        "    settings = get_settings()\n\n    application = FastAPI(**settings.kwargs)\n"
        "    return application\n\n\nwebapp = build_application()\n"
    )
    write(tmp_path, {"svc/__init__.py": "", "svc/main.py": main, "svc/settings.py": ""})
    d = detect(tmp_path)
    assert (d.framework, d.wsgi, d.worker_class) == ("FastAPI", "svc.main:webapp", ASGI_WORKER)


def test_a_factory_imported_from_another_module_makes_the_instance(tmp_path: Path) -> None:
    factory = "import flask\n\n\ndef new_app():\n    return flask.Flask(__name__)\n"
    entry = "from svc.factory import new_app\n\napplication = new_app()\n"
    write(tmp_path, {"svc/__init__.py": "", "svc/factory.py": factory, "wsgi.py": entry})
    d = detect(tmp_path)
    assert (d.framework, d.wsgi, d.worker_class) == ("Flask", "wsgi:application", "sync")


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


def test_a_routers_health_route_comes_with_a_note_and_none_means_the_root(tmp_path: Path) -> None:
    # a router's route is taken only when the app declares none, with a note: its prefix
    # (APIRouter(prefix=...)) is not known here
    routed = FASTAPI_MAIN.replace("@app.get(", "@router.get(")
    d = detect(write(tmp_path, {"main.py": routed}))
    assert (d.health, d.ready) == ("/healthz", "/readyz")
    assert any("router's route" in note for note in d.notes)
    bare = FASTAPI_MAIN.split("@app.get(")[0]
    d = detect(write(tmp_path / "bare", {"main.py": bare}))
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


def test_a_poetry_project_s_name_names_the_service(tmp_path: Path) -> None:
    pyproject = '[tool.poetry]\nname = "Billing API"\nversion = "0.1.0"\n'
    write(tmp_path, {"main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n"})
    write(tmp_path, {"pyproject.toml": pyproject})
    assert detect(tmp_path).name == "billing-api"


def test_settings_of_a_subclass_of_the_project_s_own_settings_class(tmp_path: Path) -> None:
    base = "from pydantic import BaseSettings\n\n\nclass CoreSettings(BaseSettings):\n    stage: str = 'x'\n"
    app = (
        "from svc.base import CoreSettings\n\n\nclass AppSettings(CoreSettings):\n"
        "    debug: bool = False\n    database_url: str\n    secret_key: str\n"
        "    allowed_hosts: list[str] = ['*']\n\n    class Config:\n        env_file = '.env'\n"
    )
    leaf = "from svc.app import AppSettings\n\n\nclass ProdSettings(AppSettings):\n    workers: int = 2\n"
    main = "from fastapi import FastAPI\n\napp = FastAPI()\n"
    files = {"svc/__init__.py": "", "svc/base.py": base, "svc/app.py": app, "svc/prod.py": leaf}
    write(tmp_path, {**files, "svc/main.py": main})
    d = detect(tmp_path)
    assert d.env_keys == ("ALLOWED_HOSTS", "DEBUG", "STAGE", "WORKERS")
    assert d.secret_keys == ("SECRET_KEY",)  # DATABASE_URL is fed
    assert any("SECRET_KEY" in note for note in d.notes)


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


def test_services_named_alike_in_other_folders_start_from_other_ports() -> None:
    first = [choose_ports("app", root=f"/srv/team{i}/app")["dev"]["APP_PORT"] for i in range(8)]
    assert len(set(first)) > 1
    assert choose_ports("app", root="/srv/a") == choose_ports("app", root="/srv/a")


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


def test_django_at_the_root_with_static_files(tmp_path: Path) -> None:
    """The tutorial's layout: manage.py at the root, apps keeping migrations in <app>/migrations,
    STATIC_ROOT for whitenoise. Each release collects its static files; migrations.dir is the
    project's folder, so polls/migrations counts; the tests run with Django's own runner."""
    write(
        tmp_path,
        {
            "manage.py": MANAGE,
            "mysite/__init__.py": "",
            "mysite/settings.py": "STATIC_URL = 'static/'\nSTATIC_ROOT = BASE_DIR / 'staticfiles'\n",
            "mysite/wsgi.py": "from django.core.wsgi import get_wsgi_application\n",
            "polls/migrations/0001_initial.py": "",
            "requirements.txt": "django\n",
        },
    )
    d = detect(tmp_path)
    assert (d.dir, d.migrations.dir) == (".", ".")
    assert d.build == (("python", "manage.py", "collectstatic", "--noinput"),)
    assert d.test_command == ("python", "manage.py", "test")
    data = tomllib.loads(render.stageflow_toml(d))
    service = load_service(tmp_path / "stageflow.toml", data)
    assert service.build == d.build and service.migrations.dir == "."
    assert data["gates"]["test"]["command"] == ["python", "manage.py", "test"]


@pytest.mark.parametrize(
    ("offline", "compresses"),
    [("COMPRESS_OFFLINE = True", True), ("COMPRESS_OFFLINE = not DEBUG", True),
     ("COMPRESS_OFFLINE = False", False), ("COMPRESS_ENABLED = True", False)],
)  # fmt: skip
def test_django_compressor_offline_compresses_each_release(
    tmp_path: Path, offline: str, compresses: bool
) -> None:
    # templates with {% compress %} name what `compress` wrote, or fail to render with debugging
    # off; it reads what collectstatic gathered, so it runs after it
    settings = f"STATIC_ROOT = BASE_DIR / 'collected'\n{offline}\n"
    write(tmp_path, {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/settings.py": settings})
    d = detect(tmp_path)
    collect = ("python", "manage.py", "collectstatic", "--noinput")
    expected = (
        (collect, ("python", "manage.py", "compress", "--force")) if compresses else (collect,)
    )
    assert d.build == expected
    service = load_service(tmp_path / "stageflow.toml", tomllib.loads(render.stageflow_toml(d)))
    assert service.build == expected


def test_django_without_static_root_or_with_pytest_django(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "site/manage.py": MANAGE,
            "site/mysite/settings.py": "STATIC_URL = 'static/'\n",
            "site/mysite/wsgi.py": "",
        },
    )
    d = detect(tmp_path)
    assert d.build == () and "build" not in render.service_table(d)
    # Django's runner from the root, where the release gate runs the tests
    assert d.test_command == ("python", "site/manage.py", "test")
    write(tmp_path, {"pytest.ini": "[pytest]\nDJANGO_SETTINGS_MODULE = mysite.settings\n"})
    assert detect(tmp_path).test_command == ("python", "-m", "pytest", "-q")
    write(tmp_path, {"app.py": FLASK_APP})
    assert detect(tmp_path, Overrides(wsgi="app:app")).test_command[:3] == (
        "python",
        "-m",
        "pytest",
    )


def test_unittest_tests_in_a_project_without_pytest_run_with_unittest(tmp_path: Path) -> None:
    # a top-level tests.py of unittest.TestCase classes, and pytest nowhere in the project
    test_py = "import unittest\n\n\nclass UserModelCase(unittest.TestCase):\n    pass\n"
    write(tmp_path, {"app.py": FLASK_APP, "tests.py": test_py, "requirements.txt": "flask\n"})
    assert detect(tmp_path, Overrides(wsgi="app:app")).test_command == (
        "python",
        "-m",
        "unittest",
    )
    write(tmp_path, {"requirements.txt": "flask\npytest\n"})  # the project asks for pytest
    assert detect(tmp_path, Overrides(wsgi="app:app")).test_command[2] == "pytest"
    write(tmp_path, {"requirements.txt": "flask\n", "tests/test_views.py": "def test_x(): pass\n"})
    assert detect(tmp_path, Overrides(wsgi="app:app")).test_command[2] == "pytest"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["python", "manage.py", "collectstatic"], (("python", "manage.py", "collectstatic"),)),
        ([["a"], ["b", "c"]], (("a",), ("b", "c"))),
        ([], ()),
    ],
)
def test_service_build_takes_one_command_or_several(value: object, expected: tuple) -> None:
    service = load_service(
        Path("stageflow.toml"), {"service": {"name": "s", "wsgi": "m:app", "build": value}}
    )
    assert service.build == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("python manage.py collectstatic", "[service] build must be a list of non-empty strings"),
        ([["a"], []], "[service] build holds an empty command"),
        ([["a"], [1]], "[service] build #2 must be a list of non-empty strings"),
    ],
)
def test_a_bad_service_build_is_one_line(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_service(
            Path("stageflow.toml"), {"service": {"name": "s", "wsgi": "m:app", "build": value}}
        )
    assert message in err.value.line() and "\n" not in err.value.line()


def test_a_procfile_s_other_processes_become_service_processes(tmp_path: Path) -> None:
    procfile = (
        "web: flask db upgrade; gunicorn microblog:app\n"
        "release: flask db upgrade\n"
        "worker: rq worker microblog-tasks\n"
        "beat: celery -A shop.tasks beat --loglevel info\n"
        "mailer: python -m shop.mail && echo done\n"
    )
    write(tmp_path, {"app.py": FLASK_APP, "Procfile": procfile, "requirements.txt": "flask\n"})
    d = detect(tmp_path, Overrides(wsgi="app:app"))
    assert d.processes == (
        ("worker", ("rq", "worker", "microblog-tasks")),
        ("beat", ("celery", "-A", "shop.tasks", "beat", "--loglevel", "info")),
    )
    assert any("Procfile's mailer runs a shell line" in n for n in d.notes)
    # rq's worker finds its Redis in RQ_REDIS_URL: fed from stageflow's REDIS_URL
    assert ("RQ_REDIS_URL", "REDIS_URL") in d.env_from
    service = load_service(tmp_path / "stageflow.toml", tomllib.loads(render.stageflow_toml(d)))
    assert service.processes == d.processes
    assert ("RQ_REDIS_URL", "REDIS_URL") in service.env_from
    write(tmp_path, {"Procfile": "worker: rq worker --url redis://cache:6379 jobs\n"})
    assert detect(tmp_path, Overrides(wsgi="app:app")).env_from == ()


def test_the_requirements_a_deploy_can_install_are_chosen(tmp_path: Path) -> None:
    def chosen(files: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        d = detect(write(root, {"app.py": FLASK_APP, **files}))
        return d.requirements, tuple(n for n in d.notes if "requirements" in n or "Pipfile" in n)

    tools_only = "[tool.ruff]\nline-length = 100\n"
    split = {"requirements/base.txt": "flask\n", "requirements/production.txt": "-r base.txt\n"}
    assert chosen({"pyproject.toml": tools_only, **split}) == ("requirements/production.txt", ())
    assert chosen({"requirements/base.txt": "flask\n"}) == ("requirements/base.txt", ())
    assert chosen({"pyproject.toml": "[tool.poetry]\nname = 'x'\n"}) == ("pyproject.toml", ())
    assert chosen({"pyproject.toml": tools_only, "setup.py": ""}) == ("pyproject.toml", ())
    assert chosen({"pyproject.toml": tools_only, "requirements.txt": "flask\n"})[0] == (
        "requirements.txt"
    )
    name, notes = chosen({"pyproject.toml": tools_only})
    assert name == "pyproject.toml" and "names no project or build backend" in notes[0]
    name, notes = chosen({"Pipfile": "[packages]\nflask = '*'\n"})
    assert name == "requirements.txt" and "pipenv requirements" in notes[0]


def test_a_factory_that_needs_arguments_gives_way_to_the_instance_a_module_makes(
    tmp_path: Path,
) -> None:
    factory = (
        "from flask import Flask\n\n\ndef create_app(config_name):\n    return Flask(__name__)\n"
    )
    entry = "import os\nfrom shop import create_app\n\napp = create_app(os.getenv('CONFIG') or 'default')\n"
    write(tmp_path, {"shop/__init__.py": factory, "serve.py": entry, "requirements.txt": "flask\n"})
    d = detect(tmp_path)
    assert (d.framework, d.wsgi, d.worker_class) == ("Flask", "serve:app", "sync")
    # a factory with defaults only still serves as it is
    (tmp_path / "serve.py").unlink()
    write(tmp_path, {"shop/__init__.py": factory.replace("config_name", "config_name='x'")})
    assert detect(tmp_path).wsgi == "shop:create_app()"


def test_the_procfile_s_web_line_names_the_app(tmp_path: Path) -> None:
    def web(line: str, files: dict[str, str] | None = None) -> tuple[str, str, str]:
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        code = {"shop/__init__.py": FACTORY, "shop/wsgi.py": "from shop import create_app\n"}
        d = detect(write(root, {**code, **(files or {}), "Procfile": f"web: {line}\n"}))
        return d.framework, d.wsgi, d.worker_class

    assert web("gunicorn -b 0.0.0.0:$PORT --log-file - shop.wsgi:application") == (
        "Flask",
        "shop.wsgi:application",
        "sync",
    )
    assert web('python -m gunicorn -k gevent "shop:create_app()"') == (
        "Flask",
        "shop:create_app()",
        "gevent",
    )
    api = {"api/main.py": "from fastapi import FastAPI\n\n\ndef build():\n    return FastAPI()\n"}
    assert web("uvicorn api.main:build --factory --host 0.0.0.0 --port $PORT", api) == (
        "FastAPI",
        "api.main:build()",
        ASGI_WORKER,
    )
    # a module the repository does not hold, or no server of ours: the code decides
    assert web("gunicorn elsewhere.wsgi:app")[1] == "shop:create_app()"
    assert web("bin/start-nginx bin/start-pgbouncer shop.wsgi:application")[1] == (
        "shop:create_app()"
    )


def test_an_app_in_a_project_folder_of_its_own_runs_from_that_folder(tmp_path: Path) -> None:
    # a repository with a frontend beside the service: backend/ holds the service's packaging,
    # its package app/ and alembic.ini; the package imports itself as `app`
    write(
        tmp_path,
        {
            "pyproject.toml": "[tool.uv.workspace]\nmembers = ['backend']\n",
            "frontend/package.json": "{}\n",
            "backend/pyproject.toml": "[project]\nname = 'app'\n",
            "backend/alembic.ini": "[alembic]\nscript_location = app/alembic\n",
            "backend/app/__init__.py": "",
            "backend/app/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
            "backend/app/core/__init__.py": "",
        },
    )
    d = detect(tmp_path)
    assert (d.dir, d.wsgi, d.worker_class) == ("backend", "app.main:app", ASGI_WORKER)
    assert d.requirements == "pyproject.toml"
    assert d.migrations.up == ("alembic", "upgrade", "head")
    assert d.migrations.dir == "app/alembic/versions"


def test_the_test_gate_of_a_service_in_a_folder_of_its_own_runs_there(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "backend/pyproject.toml": "[project]\nname = 'app'\n",
            "backend/app/__init__.py": "",
            "backend/app/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
            "backend/tests/conftest.py": "",
        },
    )
    gates = tomllib.loads(render.stageflow_toml(detect(tmp_path)))["gates"]
    assert gates["test"]["dir"] == "backend"
    assert gates["test"]["database"] is True  # the tests get a migrated database of their own
    assert gates["test"]["command"] == ["python", "-m", "pytest", "-q"]
    write(tmp_path / "root", {"app.py": FLASK_APP})
    assert (
        "dir"
        not in tomllib.loads(render.stageflow_toml(detect(tmp_path / "root")))["gates"]["test"]
    )


def test_a_src_layout_in_a_project_folder_runs_from_the_folder_above_src(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "service/pyproject.toml": "[project]\nname = 'shop'\n",
            "service/src/shop/__init__.py": FACTORY,
        },
    )
    d = detect(tmp_path)
    assert (d.dir, d.wsgi) == ("service", "shop:create_app()")


def test_code_that_imports_its_folder_by_name_runs_from_the_folder_above(tmp_path: Path) -> None:
    main = "from fastapi import FastAPI\n\nfrom backend.routes import items\n\napp = FastAPI()\n"
    write(
        tmp_path,
        {"backend/requirements.txt": "fastapi\n", "backend/main.py": main, "backend/routes.py": ""},
    )
    assert (detect(tmp_path).dir, detect(tmp_path).wsgi) == (".", "backend.main:app")
    (tmp_path / "backend" / "main.py").write_text(main.replace("backend.routes", "routes"))
    assert (detect(tmp_path).dir, detect(tmp_path).wsgi) == ("backend", "main:app")


def test_a_folder_without_packaging_of_its_own_keeps_the_root(tmp_path: Path) -> None:
    write(tmp_path, {"requirements.txt": "flask\n", "svc/app.py": FLASK_APP})
    assert (detect(tmp_path).dir, detect(tmp_path).wsgi) == (".", "svc.app:app")


PYDANTIC_SETTINGS = """import secrets
from typing import ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file="../.env", extra="ignore")
    API_PREFIX: str = "/api/v1"
    SECRET_KEY: str = secrets.token_urlsafe(32)
    PROJECT_NAME: str
    POSTGRES_SERVER: str
    POSTGRES_PORT: int = 5432
    POSTGRES_USER: str
    POSTGRES_PASSWORD: str = ""
    POSTGRES_DB: str = ""
    smtp_password: str | None = None
    ACCESS_TOKEN_EXPIRE_MINUTES: int = 60 * 24 * 8
    CORS_ORIGINS: Annotated[
        list[str] | str, BeforeValidator(parse_cors)
    ] = []
    ADMINS: Annotated[
        list[str], BeforeValidator(parse_cors)
    ]
    sentry: str = Field(default="", alias="SENTRY_DSN")
    VERSION: ClassVar[str] = "1"

    @property
    def SQLALCHEMY_DATABASE_URI(self) -> str:
        local: str = "not a field"
        return local


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKER_")
    concurrency: int = 2


class NotSettings:
    IGNORED: str = ""


settings = Settings()
"""


def test_pydantic_settings_fields_are_the_settings_the_service_reads(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "requirements.txt": "fastapi\npydantic-settings\n",
            "app/__init__.py": "",
            "app/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
            "app/core/__init__.py": "",
            "app/core/config.py": PYDANTIC_SETTINGS,
        },
    )
    d = detect(tmp_path)
    assert d.env_keys == (
        "ACCESS_TOKEN_EXPIRE_MINUTES",
        "ADMINS",
        "API_PREFIX",
        "CORS_ORIGINS",
        "PROJECT_NAME",
        "SENTRY_DSN",
        "WORKER_CONCURRENCY",
    )
    assert d.secret_keys == ("SECRET_KEY", "SMTP_PASSWORD")
    # the database's settings are fed under their libpq names, POSTGRES_PORT too: in a compose
    # network the server's port is not the one env/<env>.env gives the host
    assert d.env_from == (
        ("POSTGRES_DB", "PGDATABASE"),
        ("POSTGRES_PASSWORD", "PGPASSWORD"),
        ("POSTGRES_PORT", "PGPORT"),
        ("POSTGRES_SERVER", "PGHOST"),
        ("POSTGRES_USER", "PGUSER"),
    )
    service = load_service(Path("stageflow.toml"), tomllib.loads(render.stageflow_toml(d)))
    assert service.env_from == d.env_from and service.secret_keys == d.secret_keys
    # a field without a default must be given (the fed ones are, and secrets are generated)
    assert (
        "settings the code requires, with no default: ADMINS, PROJECT_NAME; set each"
        in " ".join(d.notes)
    )


def test_a_setting_about_a_secret_is_no_secret(tmp_path: Path) -> None:
    # a token's lifetime is a number: a random string from `secrets --generate` breaks the boot
    write(
        tmp_path,
        {
            "web.py": FLASK_APP
            + 'import os\nTTL = int(os.environ.get("ACCESS_TOKEN_EXPIRE_MINUTES", "60"))\n'
            + 'MIN = int(os.getenv("PASSWORD_MIN_LENGTH", "12"))\n'
            + 'TOKEN = os.environ["API_TOKEN"]\n'
            # the word before a token in the Authorization header, and the token's kind
            + 'PREFIX = os.getenv("JWT_TOKEN_PREFIX", "Token")\n'
            + 'KIND = os.getenv("AUTH_TOKEN_TYPE", "bearer")\n',
        },
    )
    d = detect(tmp_path)
    assert d.env_keys == (
        "ACCESS_TOKEN_EXPIRE_MINUTES",
        "AUTH_TOKEN_TYPE",
        "JWT_TOKEN_PREFIX",
        "PASSWORD_MIN_LENGTH",
    )
    assert d.secret_keys == ("API_TOKEN",)


def test_a_routers_health_route_gets_the_prefixes_it_is_included_under(tmp_path: Path) -> None:
    # the router's own prefix, the router it is included in, and the app's include with a
    # prefix from a settings field's default
    write(
        tmp_path,
        {
            "requirements.txt": "fastapi\n",
            "app/__init__.py": "",
            "app/main.py": "from fastapi import FastAPI\n\nfrom app.api.main import api_router\n"
            "from app.core.config import settings\n\napp = FastAPI()\n"
            "app.include_router(api_router, prefix=settings.API_V1_STR)\n",
            "app/core/__init__.py": "",
            "app/core/config.py": "class Settings(BaseSettings):\n    API_V1_STR: str = '/api/v1'\n",
            "app/api/__init__.py": "",
            "app/api/main.py": "from fastapi import APIRouter\n\nfrom app.api.routes import (\n"
            "    items,\n    utils,\n)\n\napi_router = APIRouter()\n"
            "api_router.include_router(items.router)\napi_router.include_router(utils.router)\n",
            "app/api/routes/__init__.py": "",
            "app/api/routes/items.py": 'router = APIRouter(prefix="/items")\n\n\n'
            '@router.get("/")\ndef items():\n    return []\n',
            "app/api/routes/utils.py": 'router = APIRouter(prefix="/utils", tags=["utils"])\n\n\n'
            '@router.get("/health-check/")\nasync def health_check() -> bool:\n    return True\n',
        },
    )
    d = detect(tmp_path)
    assert (d.health, d.ready) == ("/api/v1/utils/health-check/", "")
    assert not any("prefix" in note for note in d.notes)


def test_a_blueprints_health_route_gets_its_url_prefix(tmp_path: Path) -> None:
    shop = (
        "from flask import Flask\n\nfrom . import views\n\n\ndef create_app():\n"
        "    app = Flask(__name__)\n"
        '    app.register_blueprint(views.bp, url_prefix="/api")\n    return app\n'
    )
    write(tmp_path, {"requirements.txt": "flask\n", "shop/__init__.py": shop,
                     "shop/views.py": VIEWS.replace('Blueprint("api", __name__)',
                                                    'Blueprint("api", __name__, url_prefix="/v2")')})  # fmt: skip
    # Flask: the url_prefix given at registration replaces the blueprint's own
    d = detect(tmp_path)
    assert d.health == "/api/health"
    assert not any("prefix" in note for note in d.notes)
    (tmp_path / "shop" / "__init__.py").write_text(shop.replace(', url_prefix="/api"', ""))
    assert detect(tmp_path).health == "/v2/health"


def test_a_prefix_the_source_does_not_spell_keeps_the_note(tmp_path: Path) -> None:
    main = (
        "import os\nfrom fastapi import FastAPI, APIRouter\n\napp = FastAPI()\n"
        "router = APIRouter()\n\n\n@router.get('/healthz')\ndef healthz():\n    return {}\n\n\n"
        "app.include_router(router, prefix=os.environ['API_PREFIX'])\n"
    )
    d = detect(write(tmp_path, {"main.py": main}))
    assert d.health == "/healthz"
    assert any("router's route: add its prefix" in note for note in d.notes)


def test_a_service_environment_of_its_own_values_is_fed_through_a_key_of_its_own(
    tmp_path: Path,
) -> None:
    # the service's ENVIRONMENT takes local, staging or production: stageflow's development
    # (and the migrations gate's rehearsal) would fail its settings
    config = PYDANTIC_SETTINGS.replace(
        '    API_PREFIX: str = "/api/v1"\n',
        '    API_PREFIX: str = "/api/v1"\n'
        '    ENVIRONMENT: Literal["local", "staging", "production"] = "local"\n',
    ).replace("from typing import ClassVar", "from typing import ClassVar, Literal")
    write(
        tmp_path,
        {
            "requirements.txt": "fastapi\n",
            "app/__init__.py": "",
            "app/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
            "app/config.py": config,
        },
    )
    d = detect(tmp_path)
    assert "APP_ENVIRONMENT" in d.env_keys
    assert ("ENVIRONMENT", "APP_ENVIRONMENT") in d.env_from
    files = render.files(d, choose_ports(d.name))
    for env, value in (("dev", "local"), ("staging", "staging"), ("prod", "production")):
        assert f"\nAPP_ENVIRONMENT={value}\n" in files[f"env/{env}.env"]
    write(tmp_path, files)
    proj = load_project(tmp_path, process_env={})
    settings = service_settings(proj.env("dev"), proj.service)
    assert (settings["ENVIRONMENT"], proj.env("dev").environment) == ("local", "development")
    # staging and prod are meant to differ in it: the policy-drift gate allows that key
    drift = tomllib.loads(files["stageflow.toml"])["gates"]["policy-drift"]["allowed_keys"]
    assert "APP_ENVIRONMENT" in drift


def test_a_service_environment_without_a_word_for_each_gets_a_note(tmp_path: Path) -> None:
    config = 'class Settings(BaseSettings):\n    environment: Literal["test", "live"] = "test"\n'
    write(tmp_path, {"main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
                     "config.py": "from typing import Literal\n" + config})  # fmt: skip
    d = detect(tmp_path)
    assert "APP_ENVIRONMENT" not in d.env_keys and not d.env_values
    assert any(n.startswith("the code's ENVIRONMENT takes only test, live") for n in d.notes)


def test_an_extension_the_migrations_create_and_the_postgresql_lacks_gets_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migration = "def upgrade():\n    op.execute('CREATE EXTENSION IF NOT EXISTS \"{}\"')\n"
    write(
        tmp_path,
        {
            "app.py": FLASK_APP,
            "alembic.ini": "[alembic]\nscript_location = alembic\n",
            "alembic/versions/a1_ids.py": migration.format("uuid-ossp"),
            "alembic/versions/b2_names.py": migration.format("citext"),
        },
    )
    # the embedded wheel ships citext but no uuid-ossp
    monkeypatch.delenv("STAGEFLOW_POSTGRES_BIN", raising=False)
    notes = " ".join(detect(tmp_path).notes)
    assert "create the extension uuid-ossp, which this machine's PostgreSQL" in notes
    assert "citext" not in notes and "STAGEFLOW_POSTGRES_BIN" in notes
    # an installed PostgreSQL that has it, chosen: nothing to say
    installed = write(tmp_path / "pg", {"bin/postgres": "", "share/extension/uuid-ossp.control": "",
                                        "share/extension/citext.control": ""})  # fmt: skip
    monkeypatch.setenv("STAGEFLOW_POSTGRES_BIN", str(installed / "bin"))
    assert not any("extension" in note for note in detect(tmp_path).notes)


ENGINE_BY_VARIABLE = """\
import os

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "local.sqlite"}}
if os.getenv("DB") == "postgres":
    DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql",
                             "HOST": os.getenv("DB_HOST", ""), "NAME": os.getenv("DB_NAME", "")}}
if os.getenv("DB") in ["mysql", "mariadb"]:
    DATABASES = {"default": {"ENGINE": "django.db.backends.mysql"}}
"""


@pytest.mark.parametrize(
    ("settings", "key", "value"),
    [
        (ENGINE_BY_VARIABLE, "DB", "postgres"),
        # through a name the settings assign first, with another spelling
        ("import os\nkind = os.environ.get('DB_KIND', 'sqlite').lower()\n"
         "if kind in ('postgresql', 'pg'):\n    pass\n", "DB_KIND", "postgresql"),
        # the engine itself, SQLite's unless told otherwise
        ("import os\nDATABASES = {'default': {'ENGINE': os.environ.get("
         "'DB_ENGINE', 'django.db.backends.sqlite3')}}\n", "DB_ENGINE",
         "django.db.backends.postgresql"),
    ],
)  # fmt: skip
def test_settings_that_choose_their_database_engine_from_a_variable_get_postgresql(
    tmp_path: Path, settings: str, key: str, value: str
) -> None:
    # SQLite unless a variable says otherwise: without it, every environment would run on a file
    # inside the read-only release instead of the PostgreSQL stageflow brings
    write(tmp_path, {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/settings.py": settings})
    d = detect(tmp_path)
    assert key in d.env_keys
    files = render.files(d, choose_ports(d.name))
    for env in ("dev", "staging", "prod"):
        assert f"\n{key}={value}\n" in files[f"env/{env}.env"]
    assert any(
        n.startswith(f"the settings choose their database engine from {key}") for n in d.notes
    )
    # the same on staging and prod: not a key the policy-drift gate lets differ
    drift = tomllib.loads(files["stageflow.toml"])["gates"]["policy-drift"]["allowed_keys"]
    assert key not in drift


READERS_OF_THEIR_OWN = """\
import os


def flag(name: str, default: str) -> bool:
    value = os.getenv(name, default=default)
    if value not in ("", "True", "False"):
        raise ValueError(f"{name} must be True or False")
    return value == "True"


def secret(name, default=None):
    if path := os.getenv(name + "_FILE"):
        return open(path).read().strip()
    return os.getenv(name, default)


def number(name, default):
    return int(os.environ.get(name, default))


SECRET_KEY = secret("SECRET_KEY", "---")
DEBUG = flag("DEBUG", "True")
ALLOW_PRIVATE_ADDRESSES = flag("ALLOW_PRIVATE_ADDRESSES", "False")
TIMEOUT = number("TIMEOUT", "5")
DATABASES = {"default": {"PASSWORD": secret("DB_PASSWORD", "")}}
"""


def test_settings_read_through_functions_of_the_project_s_own_are_found(tmp_path: Path) -> None:
    write(tmp_path, {"manage.py": MANAGE, "mysite/wsgi.py": "",
                     "mysite/settings.py": READERS_OF_THEIR_OWN})  # fmt: skip
    d = detect(tmp_path)
    assert d.secret_keys == ("SECRET_KEY",)
    # a switch its reader takes as True or False is no secret, whatever its name says
    assert d.env_keys == ("ALLOW_PRIVATE_ADDRESSES", "DEBUG", "TIMEOUT")
    assert d.env_from == (("DB_PASSWORD", "PGPASSWORD"),)
    # off, as the reader spells it: it refuses any other word
    files = render.files(d, choose_ports(d.name))
    assert "\nDEBUG=False\n" in files["env/prod.env"] and "DEBUG=" not in files["env/dev.env"]
    assert tomllib.loads(files["stageflow.toml"])["posture"] == {"DEBUG": "False"}


def test_a_secret_the_code_runs_without_is_left_for_the_team_to_declare(tmp_path: Path) -> None:
    # read without a default, a token guards a feature (an integration) that is off without it:
    # a random one from `secrets --generate` would turn it on; a signing key is always needed
    settings = (
        "import os\n\nSECRET_KEY = os.getenv('SECRET_KEY')\n"
        "CHAT_TOKEN = os.getenv('CHAT_TOKEN')\nSTORE_SECRET = os.environ.get( 'STORE_SECRET' )\n"
        "MAIL_PASSWORD = os.getenv('MAIL_PASSWORD', '')\nAPI_KEY = os.environ['API_KEY']\n"
        "API_KEY_AGAIN = os.getenv('API_KEY')\n"
    )
    write(tmp_path, {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/settings.py": settings})
    d = detect(tmp_path)
    assert d.secret_keys == ("API_KEY", "MAIL_PASSWORD", "SECRET_KEY")
    assert "CHAT_TOKEN" not in d.env_keys and "STORE_SECRET" not in d.env_keys
    note = next(n for n in d.notes if n.startswith("secrets the code reads without a default"))
    assert "CHAT_TOKEN, STORE_SECRET;" in note and "[service.env] secrets" in note


def test_a_debug_setting_read_plainly_is_off_in_lower_case(tmp_path: Path) -> None:
    settings = "import os\n\nDEBUG = os.environ.get('DEBUG', 'false') == 'true'\n"
    write(tmp_path, {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/settings.py": settings})
    files = render.files(detect(tmp_path), choose_ports("mysite"))
    assert "\nDEBUG=false\n" in files["env/staging.env"]


def test_settings_on_one_engine_set_no_engine_variable(tmp_path: Path) -> None:
    settings = "import os\nif os.getenv('CACHE') == 'redis':\n    pass\nMODE = os.getenv('MODE')\n"
    write(tmp_path, {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/settings.py": settings})
    d = detect(tmp_path)
    assert not d.env_values and not any("database engine" in n for n in d.notes)


def test_the_extensions_of_a_virtualenv_inside_a_django_project_are_not_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Django's migrations folder is the project (".") and the team's venv sits inside it: the
    # libraries' migrations there (a GIS backend creating postgis) are not the service's
    creates = "operations = [RunSQL('CREATE EXTENSION IF NOT EXISTS {}')]\n"
    write(tmp_path, {"manage.py": MANAGE, "mysite/wsgi.py": "",
                     ".venv/pyvenv.cfg": "home = /usr/bin\n",
                     ".venv/lib/site-packages/geo/backend.py": creates.format("postgis"),
                     "env2/pyvenv.cfg": "home = /usr/bin\n",
                     "env2/lib/geo/operations.py": creates.format("postgis_raster")})  # fmt: skip
    monkeypatch.delenv("STAGEFLOW_POSTGRES_BIN", raising=False)
    assert not any("extension" in note for note in detect(tmp_path).notes)
    # one of the project's own migrations still counts
    write(tmp_path, {"polls/migrations/0002_geo.py": creates.format("postgis")})
    assert any("the extension postgis," in note for note in detect(tmp_path).notes)


UWSGI_INI = """\
[uwsgi]
master = true
module = mysite.wsgi:application
hook-pre-app = exec:./manage.py migrate
attach-daemon = ./manage.py process_queue --skip-checks
attach-daemon2 = cmd=celery -A mysite beat
attach-daemon = ./manage.py digest --loop > /dev/null
if-env = MAIL_PORT
attach-daemon = ./manage.py mailserver --port %(_)
endif =
"""


def test_uwsgi_s_attached_daemons_become_service_processes(tmp_path: Path) -> None:
    # the team runs its long-running commands beside the app under uWSGI: under stageflow each is
    # a process of [service.processes], named by its management command
    write(tmp_path, {"manage.py": MANAGE, "mysite/wsgi.py": "", "deploy/uwsgi.ini": UWSGI_INI,
                     "Procfile": "web: gunicorn mysite.wsgi:application\nbeat: celery -A mysite beat\n"})  # fmt: skip
    d = detect(tmp_path)
    assert d.processes == (
        ("beat", ("celery", "-A", "mysite", "beat")),  # the Procfile's first
        ("process_queue", ("python", "manage.py", "process_queue", "--skip-checks")),
    )
    notes = [n for n in d.notes if n.startswith("uwsgi.ini runs")]
    # a shell line, uWSGI's keyed form, and one that runs only when a variable is set: the operator's
    assert len(notes) == 3 and "`./manage.py mailserver --port %(_)`" in notes[2]
    text = render.stageflow_toml(d)
    service = load_service(tmp_path / "stageflow.toml", tomllib.loads(text))
    assert tuple(dict(service.processes)["process_queue"]) == d.processes[1][1]
    # without a Procfile the table says nothing of one
    (tmp_path / "Procfile").unlink()
    assert "Procfile" not in render.stageflow_toml(detect(tmp_path))


def test_a_procfile_line_s_leading_variables_run_through_env(tmp_path: Path) -> None:
    procfile = (
        "worker: REMAP_SIGTERM=SIGQUIT celery -A shop.tasks worker -l info\n"
        "beat: TZ=UTC LOG=1 celery -A shop.tasks beat\n"
        "bare: ONLY=1\n"
    )
    write(tmp_path, {"app.py": FLASK_APP, "Procfile": procfile, "requirements.txt": "flask\n"})
    d = detect(tmp_path, Overrides(wsgi="app:app"))
    assert d.processes == (
        (
            "worker",
            ("env", "REMAP_SIGTERM=SIGQUIT", "celery", "-A", "shop.tasks", "worker", "-l", "info"),
        ),
        ("beat", ("env", "TZ=UTC", "LOG=1", "celery", "-A", "shop.tasks", "beat")),
    )
    assert any("Procfile's bare runs a shell line" in n for n in d.notes)
    service = load_service(tmp_path / "stageflow.toml", tomllib.loads(render.stageflow_toml(d)))
    assert service.processes == d.processes


def test_a_process_that_starts_with_a_variable_is_refused_at_load() -> None:
    table = {"name": "s", "wsgi": "m:app", "processes": {"worker": ["X=1", "celery", "worker"]}}
    with pytest.raises(ConfigError) as err:
        load_service(Path("stageflow.toml"), {"service": table})
    line = err.value.line()
    assert "[service.processes] worker starts with 'X=1', a variable, not a program" in line
    assert '["env", "X=1", ...]' in line and "\n" not in line


def test_celery_s_broker_is_the_environment_s_redis(tmp_path: Path) -> None:
    settings = 'import environ\nenv = environ.Env()\nBROKER = env("CELERY_BROKER_URL", default="amqp://guest@localhost//")\n'
    write(
        tmp_path,
        {
            "app.py": FLASK_APP,
            "settings.py": settings,
            "requirements.txt": "-r requirements/base.txt\n",
            "requirements/base.txt": "flask\ncelery==5.5\n",
        },
    )
    d = detect(tmp_path, Overrides(wsgi="app:app"))
    assert ("CELERY_BROKER_URL", "REDIS_URL") in d.env_from
    assert "CELERY_BROKER_URL" not in d.env_keys
    assert any("names no Redis client: add redis (or celery[redis])" in n for n in d.notes)
    service = load_service(tmp_path / "stageflow.toml", tomllib.loads(render.stageflow_toml(d)))
    assert ("CELERY_BROKER_URL", "REDIS_URL") in service.env_from
    # a Redis client in an included requirements file: nothing to add
    write(tmp_path, {"requirements/base.txt": "flask\ncelery[redis]==5.5\n"})
    assert not any("Redis client" in n for n in detect(tmp_path, Overrides(wsgi="app:app")).notes)


def test_a_procfile_s_celery_reads_its_broker_from_the_environment(tmp_path: Path) -> None:
    procfile = "worker: REMAP_SIGTERM=SIGQUIT celery -A shop.tasks worker\n"
    write(tmp_path, {"app.py": FLASK_APP, "Procfile": procfile, "requirements.txt": "redis\n"})
    d = detect(tmp_path, Overrides(wsgi="app:app"))
    assert d.env_from == (("CELERY_BROKER_URL", "REDIS_URL"),)
    assert not any("Redis client" in n for n in d.notes)
    write(tmp_path, {"Procfile": "worker: celery -A shop.tasks worker -b redis://cache:6379/0\n"})
    assert detect(tmp_path, Overrides(wsgi="app:app")).env_from == ()


def test_init_gives_the_test_gate_a_throwaway_database(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": FLASK_APP, "requirements.txt": "flask\n"})
    policy = tomllib.loads(render.stageflow_toml(detect(tmp_path, Overrides(wsgi="app:app"))))
    assert policy["gates"]["test"]["database"] is True


@pytest.mark.parametrize(
    ("urls", "health"),
    [
        (
            'urlpatterns = [path("admin/", admin.site.urls), path("api/", include("api.urls"))]\n',
            "/admin/",
        ),
        ("urlpatterns = [re_path(r'^backoffice/', admin.site.urls)]\n", "/backoffice/"),
        ("urlpatterns = [path(settings.ADMIN_URL, admin.site.urls)]\n", "/"),
        (
            'urlpatterns = [path("admin/", admin.site.urls), path("health/", views.health)]\n',
            "/health/",
        ),
    ],
)
def test_a_django_project_without_a_health_view_is_watched_through_its_admin(
    tmp_path: Path, urls: str, health: str
) -> None:
    write(
        tmp_path,
        {
            "manage.py": MANAGE,
            "mysite/__init__.py": "",
            "mysite/wsgi.py": "",
            "mysite/urls.py": urls,
            "requirements.txt": "django\n",
        },
    )
    d = detect(tmp_path)
    assert (d.health, d.ready) == (health, "")
    admin_note = any("health is the admin's" in n for n in d.notes)
    assert admin_note == (health not in ("/", "/health/"))
    assert any("no health route found" in n for n in d.notes) == (health != "/health/")


def test_a_django_production_settings_module_beside_manage_py_s_is_noted(tmp_path: Path) -> None:
    manage = MANAGE.replace("mysite.settings", "mysite.settings.base")
    files = {
        "manage.py": manage,
        "mysite/__init__.py": "",
        "mysite/wsgi.py": "",
        "mysite/settings/__init__.py": "",
        "mysite/settings/base.py": "",
        "requirements.txt": "django\n",
    }
    write(tmp_path, files)
    assert not any("DJANGO_SETTINGS_MODULE" in n for n in detect(tmp_path).notes)
    write(tmp_path, {"mysite/settings/production.py": "from .base import *\n"})
    # staging and prod run it (its DEBUG off, say), through DJANGO_SETTINGS_MODULE in their env
    # files; dev keeps manage.py's default
    d = detect(tmp_path)
    (note,) = [n for n in d.notes if "DJANGO_SETTINGS_MODULE" in n]
    assert note.startswith(
        "Django runs mysite.settings.base (manage.py's default) on dev and the settings module "
        "beside it elsewhere (mysite.settings.production on staging and prod)"
    )
    assert "DJANGO_SETTINGS_MODULE" in d.env_keys
    production = "mysite.settings.production"
    assert set(d.env_values) == {
        ("staging", "DJANGO_SETTINGS_MODULE", production),
        ("prod", "DJANGO_SETTINGS_MODULE", production),
    }
    envs = render.files(d, choose_ports(d.name))
    assert f"DJANGO_SETTINGS_MODULE={production}" in envs["env/prod.env"].splitlines()
    assert "DJANGO_SETTINGS_MODULE" not in envs["env/dev.env"]
    # a staging module of its own runs on staging; the two then may differ
    write(tmp_path, {"mysite/settings/staging.py": "from .production import *\n"})
    d = detect(tmp_path)
    assert ("staging", "DJANGO_SETTINGS_MODULE", "mysite.settings.staging") in d.env_values
    toml = tomllib.loads(render.stageflow_toml(d))
    assert "DJANGO_SETTINGS_MODULE" in toml["gates"]["policy-drift"]["allowed_keys"]
    (tmp_path / "mysite/settings/staging.py").unlink()
    # the web workers run the wsgi module's default: the note says the two differ
    wsgi = (
        "import os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings.production')\n"
    )
    write(tmp_path, {"mysite/wsgi.py": wsgi})
    (note,) = [n for n in detect(tmp_path).notes if "DJANGO_SETTINGS_MODULE" in n]
    assert note.startswith(
        "Django's commands run mysite.settings.base (manage.py's default) and its web workers "
        "mysite.settings.production (the wsgi module's)"
    )


def test_a_prestart_script_that_migrates_and_more_gets_a_note(tmp_path: Path) -> None:
    prestart = (
        "#! /usr/bin/env bash\n\nset -e\nset -x\n\n# Let the DB start\npython app/pre_start.py\n\n"
        "# Run migrations\nalembic upgrade head\n\n# Create initial data in DB\n"
        "python app/initial_data.py\n"
    )
    files = {
        "app.py": FLASK_APP,
        "alembic.ini": "[alembic]\nscript_location = alembic\n",
        "scripts/prestart.sh": prestart,
    }
    d = detect(write(tmp_path, files))
    assert d.migrations.up == ("alembic", "upgrade", "head")  # the tool's own, for the gate
    note = next(n for n in d.notes if n.startswith("scripts/prestart.sh runs"))
    assert "python app/pre_start.py; python app/initial_data.py" in note
    assert 'up = ["bash", "scripts/prestart.sh"]' in note
    (tmp_path / "scripts" / "prestart.sh").write_text("#!/bin/sh\nalembic upgrade head\n")
    assert not any("prestart" in n for n in detect(tmp_path).notes)


def test_a_procfile_s_gunicorn_web_line_names_the_app_and_its_worker_class(tmp_path: Path) -> None:
    files = {
        "manage.py": MANAGE,
        "mysite/__init__.py": "",
        "mysite/wsgi.py": "",
        "mysite/asgi.py": "",
        "requirements.txt": "django\nuvicorn\n",
        "Procfile": "web: gunicorn --bind 0.0.0.0:8000 mysite.asgi:application -k uvicorn.workers.UvicornWorker\n",
    }
    d = detect(write(tmp_path, files))
    assert (d.framework, d.wsgi, d.worker_class) == (
        "Django",
        "mysite.asgi:application",
        "uvicorn.workers.UvicornWorker",
    )
    # a module the repository does not hold is not taken; the worker class still is
    write(tmp_path, {"Procfile": "web: gunicorn other.asgi:app --worker-class=gthread\n"})
    d = detect(tmp_path)
    assert (d.wsgi, d.worker_class) == ("mysite.wsgi:application", "gthread")
    write(tmp_path, {"Procfile": "web: python manage.py runserver 0.0.0.0:$PORT\n"})
    assert (detect(tmp_path).wsgi, detect(tmp_path).worker_class) == (
        "mysite.wsgi:application",
        "sync",
    )


def test_a_procfile_web_line_init_cannot_read_gets_a_note(tmp_path: Path) -> None:
    # uwsgi with its own ini file: stageflow serves the project's wsgi module under gunicorn
    files = {
        "manage.py": MANAGE,
        "mysite/__init__.py": "",
        "mysite/wsgi.py": "",
        "Procfile": "release: python manage.py migrate\nweb: uwsgi ./etc/uwsgi.ini\n",
    }
    d = detect(write(tmp_path, files))
    assert (d.wsgi, d.worker_class) == ("mysite.wsgi:application", "sync")
    (note,) = [n for n in d.notes if "Procfile's web line" in n]
    assert note.startswith("the Procfile's web line runs `uwsgi ./etc/uwsgi.ini`, which stageflow")
    assert "serves mysite.wsgi:application under gunicorn (worker_class sync)" in note
    # a line whose server init reads gets none
    write(tmp_path, {"Procfile": "web: gunicorn mysite.wsgi:application\n"})
    assert not [n for n in detect(tmp_path).notes if "Procfile's web line" in n]


def test_a_django_media_root_in_the_code_gets_a_note(tmp_path: Path) -> None:
    # uploads land in MEDIA_ROOT: a folder of the code is in the read-only release
    settings = "import os\nBASE_DIR = os.path.dirname(__file__)\n"
    files = {
        "manage.py": MANAGE,
        "mysite/wsgi.py": "",
        "mysite/settings.py": settings + 'MEDIA_ROOT = os.path.join(BASE_DIR, "media")\n',
    }
    d = detect(write(tmp_path, files))
    (note,) = [n for n in d.notes if "MEDIA_ROOT" in n]
    assert note.startswith(
        """Django's MEDIA_ROOT (os.path.join(BASE_DIR, "media"), mysite/settings.py) lies in the """
        "release, which is read-only to the service"
    )
    assert "STAGEFLOW_FILES_DIR" in note
    # one the environment names is the operator's to point: the note says where
    write(tmp_path, {"mysite/settings.py": settings + 'MEDIA_ROOT = os.environ["MEDIA_ROOT"]\n'})
    (note,) = [n for n in detect(tmp_path).notes if "MEDIA_ROOT" in n]
    assert "lies in the release" not in note and "set each in env/<env>.env" in note


def test_a_secret_the_code_uses_only_when_set_is_not_generated(tmp_path: Path) -> None:
    # a random token would turn the CDN integration on, and its zone (unset) stops the boot; the
    # project's own signing key, tested the same way, is right random
    settings = (
        "import os\n"
        "if 'DJANGO_SECRET_KEY' in os.environ:\n"
        "    SECRET_KEY = os.environ['DJANGO_SECRET_KEY']\n"
        "if 'CDN_TOKEN' in os.environ:\n"
        "    CDN = {'TOKEN': os.environ['CDN_TOKEN'], 'ZONE': os.environ['CDN_ZONE']}\n"
        "STRIPE = os.environ.get('STRIPE_API_KEY')\n"
        "if 'MAIL_PASSWORD' not in os.environ:\n"
        "    raise RuntimeError('MAIL_PASSWORD is required')\n"
        "MAIL = os.environ['MAIL_PASSWORD']\n"
    )
    files = {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/settings.py": settings}
    d = detect(write(tmp_path, files))
    # a secret whose absence stops the boot is required, and generated; one read without a
    # default is the team's to declare too
    assert d.secret_keys == ("DJANGO_SECRET_KEY", "MAIL_PASSWORD")
    assert d.env_keys == ("CDN_ZONE",)
    (note,) = [n for n in d.notes if "only when set" in n]
    assert note.startswith("secrets the code uses only when set: CDN_TOKEN;")
    (note,) = [n for n in d.notes if "without a default" in n]
    assert "STRIPE_API_KEY" in note and "CDN_TOKEN" not in note
    example = render.files(d, choose_ports(d.name))["env/staging.secrets.env.example"]
    assert "CDN_TOKEN" not in example and "DJANGO_SECRET_KEY=" in example


def test_stageflow_s_own_secrets_read_by_the_code_are_not_the_service_s(tmp_path: Path) -> None:
    settings = (
        "import os\n"
        "DATABASES = {'default': {'NAME': os.environ['POSTGRES_DB'],\n"
        "    'USER': os.environ['POSTGRES_USER'], 'PASSWORD': os.environ['POSTGRES_PASSWORD'],\n"
        "    'HOST': os.environ['POSTGRES_HOST'], 'PORT': os.environ['POSTGRES_PORT']}}\n"
        "CACHE_PASSWORD = os.environ.get('REDIS_PASSWORD')\n"
    )
    files = {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/settings.py": settings}
    d = detect(write(tmp_path, files))
    assert d.secret_keys == () and d.env_keys == ()
    assert not any("secrets the code reads" in n for n in d.notes)
    # fed under their libpq names: the same values on a host, and right in a compose network too
    assert set(d.env_from) == {
        ("POSTGRES_DB", "PGDATABASE"),
        ("POSTGRES_HOST", "PGHOST"),
        ("POSTGRES_USER", "PGUSER"),
        ("POSTGRES_PASSWORD", "PGPASSWORD"),
        ("POSTGRES_PORT", "PGPORT"),
    }
    example = render.files(d, choose_ports(d.name))["env/dev.secrets.env.example"]
    assert example.count("POSTGRES_PASSWORD=") == 1


def test_staging_and_prod_hold_the_debug_settings_off(tmp_path: Path) -> None:
    from deploy.config import load_posture, read_env_file

    write(
        tmp_path,
        {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/settings.py": ENVIRON_SETTINGS},
    )
    d = detect(tmp_path)
    assert d.debug_keys == ("DJANGO_DEBUG",)
    files = render.files(d, choose_ports(d.name))
    posture = load_posture(Path("stageflow.toml"), tomllib.loads(files["stageflow.toml"]))
    for env in ("staging", "prod"):
        (tmp_path / f"{env}.env").write_text(files[f"env/{env}.env"])
        values = {k: v for k, (v, _) in read_env_file(tmp_path / f"{env}.env").items()}
        assert values["DJANGO_DEBUG"] == "false"
        assert [r.problem(values.get(r.key)) for r in posture.rules_for(env)] == [None]
    assert "DJANGO_DEBUG" not in files["env/dev.env"]
    bad = [r.problem("true") for r in posture.rules_for("prod")]
    assert bad == ["DJANGO_DEBUG must be false, not 'true'"]


def test_every_environment_allows_the_hosts_stageflow_s_probes_ask_as(tmp_path: Path) -> None:
    settings = 'import environ\nenv = environ.Env()\nALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])\n'
    write(tmp_path, {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/settings.py": settings})
    d = detect(tmp_path)
    files = render.files(d, choose_ports(d.name))
    # dev too: unset, the code's fallback (none here) refuses the probes, debugging on or off
    for env in ("dev", "staging", "prod"):
        assert "DJANGO_ALLOWED_HOSTS=localhost,127.0.0.1\n" in files[f"env/{env}.env"]


def test_an_asgi_app_s_allowed_hosts_keeps_its_own_default(tmp_path: Path) -> None:
    # outside Django the name means what the app makes of it (CORS origins, say), and a list
    # field of pydantic-settings would refuse a comma-separated value
    settings = (
        "from typing import List\n\nfrom pydantic import BaseSettings\n\n\n"
        "class Settings(BaseSettings):\n    allowed_hosts: List[str] = ['*']\n"
    )
    main = "from fastapi import FastAPI\n\napp = FastAPI()\n"
    write(tmp_path, {"svc/__init__.py": "", "svc/main.py": main, "svc/settings.py": settings})
    d = detect(tmp_path)
    assert "ALLOWED_HOSTS" in d.env_keys
    files = render.files(d, choose_ports(d.name))
    assert all("ALLOWED_HOSTS" not in files[f"env/{env}.env"] for env in ("staging", "prod"))


def test_the_service_s_own_address_is_each_environment_s(tmp_path: Path) -> None:
    # pages, links and e-mails name SITE_ROOT; its default names a port no environment serves on
    settings = "import os\n\nSITE_ROOT = os.getenv('SITE_ROOT', 'http://localhost:8000')\n"
    write(tmp_path, {"manage.py": MANAGE, "mysite/wsgi.py": "", "mysite/settings.py": settings})
    d = detect(tmp_path)
    ports = choose_ports(d.name)
    files = render.files(d, ports)
    for env in ("dev", "staging", "prod"):
        assert f"\nSITE_ROOT=http://localhost:{ports[env]['APP_PORT']}\n" in files[f"env/{env}.env"]
    # staging's and prod's differ, as their public addresses will
    drift = tomllib.loads(files["stageflow.toml"])["gates"]["policy-drift"]["allowed_keys"]
    assert "SITE_ROOT" in drift
    assert any(n.startswith("SITE_ROOT: init sets each environment's own address") for n in d.notes)


def test_what_a_ci_runner_sets_is_no_setting_of_the_service(tmp_path: Path) -> None:
    settings = (
        "import os\n"
        "TESTING = os.environ.get('CI') or os.environ.get('GITHUB_WORKFLOW')\n"
        "RUN = os.getenv('GITLAB_CI') or os.getenv('CI_PIPELINE_ID')\n"
        "SENTRY_DSN = os.environ.get('SENTRY_DSN')\n"
    )
    write(tmp_path, {"app.py": FLASK_APP, "settings.py": settings, "requirements.txt": "flask\n"})
    d = detect(tmp_path)
    assert d.env_keys == ("SENTRY_DSN",) and d.secret_keys == ()


def test_each_note_about_the_health_path_and_extensions_is_said_once(tmp_path: Path) -> None:
    # the app is made in one module from a factory that registers a blueprint in another
    factory = "from flask import Flask\n\n\ndef create_app():\n    app = Flask(__name__)\n"
    factory += "    from shop.views import bp\n\n    app.register_blueprint(bp)\n    return app\n"
    migration = "def upgrade():\n    op.execute('CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\"')\n"
    write(tmp_path, {"shop/__init__.py": factory, "web.py": "from shop import create_app\n\napp = create_app()\n",
                     "shop/views.py": VIEWS,
                     "alembic.ini": "[alembic]\nscript_location = alembic\n",
                     "alembic/versions/a1_ids.py": migration})  # fmt: skip
    notes = detect(tmp_path).notes
    assert len(notes) == len(set(notes)), notes
    assert sum("blueprint's or router's route" in n for n in notes) == 1


def test_a_procfile_web_shell_line_serves_its_last_command_and_notes_the_steps_before(
    tmp_path: Path,
) -> None:
    procfile = (
        "web: flask db upgrade; flask translate compile && exec gunicorn -k gevent shop.web:app\n"
    )
    write(tmp_path, {"shop/__init__.py": "", "shop/web.py": FLASK_APP, "Procfile": procfile,
                     "migrations/alembic.ini": "[alembic]\n", "requirements.txt": "flask\n",
                     "shop/ext.py": "from flask_migrate import Migrate\n"})  # fmt: skip
    d = detect(tmp_path)
    # the server line's app and worker class, not a guess from the code
    assert (d.wsgi, d.worker_class) == ("shop.web:app", "gevent")
    steps = [n for n in d.notes if n.startswith("the Procfile's web line runs")]
    # the migrations a deploy runs itself; the other step is the operator's to place
    assert len(steps) == 1 and "`flask translate compile`" in steps[0]
    assert "flask db upgrade" not in steps[0] and "[service] build" in steps[0]


def test_a_setting_that_logs_to_stdout_is_on_in_every_environment(tmp_path: Path) -> None:
    # an app that writes log files into its own folder unless told to log to stdout: a release's
    # folder is read-only to the service, and stageflow keeps stdout in the environment's logs
    config = "import os\n\nLOG_TO_STDOUT = os.environ.get('LOG_TO_STDOUT')\nLEVEL = os.getenv('LOG_LEVEL')\n"
    write(tmp_path, {"app.py": FLASK_APP, "config.py": config, "requirements.txt": "flask\n"})
    d = detect(tmp_path)
    files = render.files(d, choose_ports(d.name))
    for env in ("dev", "staging", "prod"):
        assert "LOG_TO_STDOUT=1\n" in files[f"env/{env}.env"]
        assert "LOG_LEVEL=" not in files[f"env/{env}.env"]
    # the same value on staging and prod: not a key the policy-drift gate lets differ
    drift = tomllib.loads(files["stageflow.toml"])["gates"]["policy-drift"]["allowed_keys"]
    assert "LOG_TO_STDOUT" not in drift


START_SCRIPT = """\
#!/bin/sh
set -eu
WORKER_CLASS=${WORKER_CLASS:-gevent}
LOG=${LOG:--}
flask db upgrade
echo "starting gunicorn wsgi:app"
exec gunicorn 'shop:create_app()' \\
    --bind "0.0.0.0:${PORT:-8000}" \\
    --worker-class "$WORKER_CLASS" \\
    --access-logfile "$LOG"
"""


def test_a_dockerfiles_start_script_names_the_app_and_its_worker_class(tmp_path: Path) -> None:
    # a module that makes an instance at import (for a dev server) and the factory the image's
    # start script serves: the way the team runs it in production wins over the guess
    wsgi = "from shop import create_app\n\napp = create_app()\n"
    dockerfile = 'FROM python:3.11\nCOPY . /srv/shop\nENTRYPOINT ["/srv/shop/bin/start.sh"]\n'
    write(tmp_path, {"shop/__init__.py": FACTORY, "wsgi.py": wsgi, "Dockerfile": dockerfile,
                     "bin/start.sh": START_SCRIPT, "requirements.txt": "flask\n"})  # fmt: skip
    d = detect(tmp_path)
    # the script's last command, its continuation lines joined, its variable's default filled in
    assert (d.framework, d.wsgi, d.worker_class) == ("Flask", "shop:create_app()", "gevent")


def test_a_dockerfiles_cmd_names_the_app(tmp_path: Path) -> None:
    wsgi = "from shop import create_app\n\napp = create_app()\n"
    for cmd, worker in (
        ('CMD ["gunicorn", "--bind", "0.0.0.0:8000", "shop:create_app()"]', "sync"),
        ("CMD gunicorn -k $WORKER_CLASS \\\n    shop:create_app()", "sync"),  # a variable unset
    ):
        write(tmp_path, {"shop/__init__.py": FACTORY, "wsgi.py": wsgi, "requirements.txt": "flask\n",
                         "Dockerfile": f"FROM python:3.11\n{cmd}\n"})  # fmt: skip
        d = detect(tmp_path)
        assert (d.wsgi, d.worker_class) == ("shop:create_app()", worker), cmd
    # a Procfile's web line still comes first
    (tmp_path / "Procfile").write_text("web: gunicorn wsgi:app\n")
    assert detect(tmp_path).wsgi == "wsgi:app"


INI_CONFIG = """\
import configparser
import os


class FromEnvironment(configparser.BasicInterpolation):
    def before_get(self, parser, section, option, value, defaults):
        return os.getenv(option) or value


ini = configparser.ConfigParser(interpolation=FromEnvironment())
ini.optionxform = str
ini.read(os.path.join(os.path.dirname(__file__), "settings.ini"))
SECRET_KEY = ini["server"]["SECRET_KEY"]
"""
INI_FILE = """\
[server]
# left empty: the environment fills them
SECRET_KEY =
SHOP_API_URL =
DATABASE_URL =
[features]
SESSION_COOKIE_HTTPONLY = true
lower_case =
"""


def test_an_ini_files_empty_options_that_the_environment_fills_are_settings(
    tmp_path: Path,
) -> None:
    write(tmp_path, {"shop/__init__.py": FACTORY, "shop/config.py": INI_CONFIG,
                     "shop/settings.ini": INI_FILE, "requirements.txt": "flask\n"})  # fmt: skip
    d = detect(tmp_path)
    # a secret gets a random value per environment (one key for every worker), a plain one a key
    assert "SECRET_KEY" in d.secret_keys and "SHOP_API_URL" in d.env_keys
    # what stageflow feeds stays its own; a value the file sets, and a name no variable has, not
    assert "DATABASE_URL" not in d.env_keys
    assert not {"SESSION_COOKIE_HTTPONLY", "lower_case"} & {*d.env_keys, *d.secret_keys}
    # an INI file read without looking names up in the environment holds no settings of it
    plain = INI_CONFIG.replace("os.getenv(option) or value", "value")
    (tmp_path / "shop/config.py").write_text(plain)
    assert "SECRET_KEY" not in detect(tmp_path).secret_keys


def test_requirements_without_a_postgresql_driver_get_a_note(tmp_path: Path) -> None:
    # the release's venv is built from the requirements alone: SQLAlchemy's postgresql:// needs
    # psycopg2, which a project written against MySQL or SQLite never lists
    reqs = "flask\nflask-sqlalchemy==2.5.1\n    # via shop\n-r extra.txt\n"
    write(tmp_path, {"app.py": FLASK_APP, "requirements.txt": reqs, "extra.txt": "pymysql\n"})
    notes = [n for n in detect(tmp_path).notes if "PostgreSQL driver" in n]
    assert len(notes) == 1 and "add psycopg2-binary" in notes[0]
    (tmp_path / "extra.txt").write_text("psycopg2-binary==2.9.10\n")  # through an include
    assert not [n for n in detect(tmp_path).notes if "PostgreSQL driver" in n]
    # a service that reaches no database through SQLAlchemy is not asked for one
    (tmp_path / "requirements.txt").write_text("flask\n")
    (tmp_path / "extra.txt").write_text("")
    assert not [n for n in detect(tmp_path).notes if "PostgreSQL driver" in n]


def test_names_flasks_own_cli_sets_are_not_settings(tmp_path: Path) -> None:
    # a module that skips a monkey-patch under `flask run`, and one that asks for the reloader
    wsgi = (
        "import os\n\nif not os.getenv('FLASK_RUN_FROM_CLI'):\n    pass\n"
        "RELOADED = os.environ.get('WERKZEUG_RUN_MAIN')\nAPI = os.getenv('SHOP_API_URL')\n"
    )
    write(tmp_path, {"app.py": FLASK_APP, "wsgi.py": wsgi, "requirements.txt": "flask\n"})
    d = detect(tmp_path)
    assert "SHOP_API_URL" in d.env_keys
    assert not {"FLASK_RUN_FROM_CLI", "WERKZEUG_RUN_MAIN"} & set(d.env_keys)


def test_settings_naming_a_folder_the_service_writes_get_a_note(tmp_path: Path) -> None:
    config = (
        "import os\n\nUPLOAD_FOLDER = os.getenv('UPLOAD_FOLDER', 'shop/uploads')\n"
        "LOG_DIR = os.getenv('LOG_DIR')\nTHEME_FOLDER = os.getenv('THEME_FOLDER')\n"
    )
    write(tmp_path, {"app.py": FLASK_APP, "config.py": config, "requirements.txt": "flask\n"})
    (note,) = [n for n in detect(tmp_path).notes if "folder the service writes" in n]
    assert "UPLOAD_FOLDER" in note and "LOG_DIR" in note and "THEME_FOLDER" not in note
    assert "shared/files" in note
