"""The compose files: valid against the Compose schema, one isolated project per environment."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from deploy.commands.compose import BASE_FILE, compose_files
from deploy.config import NAMESPACES, EnvConfig, load_env
from deploy.errors import ConfigError
from deploy.runtime.compose_project import (
    compose_isolation_problems,
    interpolate,
    load_yaml,
    merge,
    published_ports,
    render,
    render_files,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
ENVS = tuple(NAMESPACES)
FILES = (BASE_FILE, *(compose_files(env)[1] for env in ENVS))


@pytest.fixture(scope="module")
def validator() -> Any:
    if not SCHEMA.is_file():
        reason = f"the Compose JSON schema is absent: expected at {SCHEMA}"
        if os.environ.get("STAGEFLOW_REQUIRE_ALL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    import jsonschema

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def configs() -> dict[str, EnvConfig]:
    return {env: load_env(ROOT, env) for env in ENVS}


@pytest.fixture(scope="module")
def rendered(configs: dict[str, EnvConfig]) -> dict[str, dict[str, Any]]:
    return {env: render(ROOT, cfg) for env, cfg in configs.items()}


def _errors(validator: Any, model: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(model)]


# -- schema -------------------------------------------------------------------------------------


def test_the_schema_is_strict_enough_to_fail(validator: Any) -> None:
    assert _errors(validator, {"services": {"app": {"image": "x", "imagee": "y"}}})
    assert _errors(validator, {"servicez": {}})


@pytest.mark.parametrize("name", FILES)
def test_each_file_as_written_validates(validator: Any, name: str) -> None:
    assert _errors(validator, load_yaml(ROOT / name)) == []


@pytest.mark.parametrize("env", ENVS)
def test_base_interpolated_for_each_env_validates(
    validator: Any, configs: dict[str, EnvConfig], env: str
) -> None:
    model = render(ROOT, configs[env], files=[BASE_FILE])
    assert _errors(validator, model) == []
    # the front holds the app port across releases; the app containers publish none
    assert model["services"]["front"]["ports"][0]["published"] == str(configs[env].app_port)
    assert "ports" not in model["services"]["app"]


@pytest.mark.parametrize("env", ENVS)
def test_base_merged_with_override_validates(
    validator: Any, rendered: dict[str, dict[str, Any]], env: str
) -> None:
    assert _errors(validator, rendered[env]) == []
    assert set(rendered[env]["services"]) == {"app", "front", "postgres", "redis"}


# -- what each environment's files say ----------------------------------------------------------


@pytest.mark.parametrize("env", ENVS)
def test_override_names_the_env_project(configs: dict[str, EnvConfig], env: str) -> None:
    assert load_yaml(ROOT / compose_files(env)[1])["name"] == configs[env].compose_project


@pytest.mark.parametrize("env", ENVS)
def test_database_role_and_name_match_the_env_file(
    configs: dict[str, EnvConfig], rendered: dict[str, dict[str, Any]], env: str
) -> None:
    db = configs[env].database
    services = rendered[env]["services"]
    assert services["postgres"]["environment"]["POSTGRES_USER"] == db.user
    assert services["postgres"]["environment"]["POSTGRES_DB"] == db.name
    assert services["app"]["environment"]["DATABASE_URL"] == (
        f"postgresql://{db.user}@postgres:5432/{db.name}"
    )


@pytest.mark.parametrize("env", ENVS)
def test_ports_are_the_env_files_and_loopback_only(
    configs: dict[str, EnvConfig], rendered: dict[str, dict[str, Any]], env: str
) -> None:
    cfg = configs[env]
    expected = {"front": cfg.app_port, "postgres": cfg.postgres_port, "redis": cfg.redis_port}
    for service, port in expected.items():
        entries = rendered[env]["services"][service]["ports"]
        assert [p for e in entries for p in published_ports(e)] == [port]
        assert all(e["host_ip"] == "127.0.0.1" for e in entries)


def test_env_specific_settings(rendered: dict[str, dict[str, Any]]) -> None:
    dev, staging, prod = (rendered[e]["services"] for e in ENVS)
    assert staging["app"]["environment"]["LOG_LEVEL"] == "debug"
    assert prod["app"]["environment"]["LOG_LEVEL"] == "info"
    assert all(prod[s]["restart"] == "always" for s in prod)
    assert all(prod[s]["deploy"]["resources"]["limits"]["memory"] for s in prod)
    assert all("restart" not in dev[s] for s in dev)


def test_app_waits_for_healthy_servers_and_checks_healthz(
    rendered: dict[str, dict[str, Any]],
) -> None:
    for model in rendered.values():
        services = model["services"]
        assert services["app"]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        assert "/healthz" in " ".join(services["app"]["healthcheck"]["test"])
        assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
        assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
        assert services["app"]["image"] == "stageflow-app:latest"


def test_no_secret_is_written_in_a_compose_file(configs: dict[str, EnvConfig]) -> None:
    secret_keys = configs["prod"].declared_secrets  # stageflow's and the service's
    assert "API_KEYS" in secret_keys
    for name in FILES:
        for service in (load_yaml(ROOT / name).get("services") or {}).values():
            env = (service or {}).get("environment") or {}
            for key in secret_keys:
                if key in env:
                    assert str(env[key]).startswith(f"${{{key}"), f"{name}: {key} is a literal"
            # $$NAME is the container's shell reading its environment; ${NAME} would put the
            # secret itself on the command line that a host's `ps` shows.
            for arg in (service or {}).get("command") or []:
                bare = str(arg).replace("$$", "")
                assert not any(f"${k}" in bare or f"${{{k}" in bare for k in secret_keys), name


def test_release_picks_the_image_tag_and_reaches_the_service(
    configs: dict[str, EnvConfig],
) -> None:
    cfg = configs["dev"]
    variables = {
        **dict(cfg.values),
        **dict.fromkeys(cfg.declared_secrets, "x"),
        "STAGEFLOW_RELEASE": "r7",
        "STAGEFLOW_COMMIT": "abc1234",
    }
    app = render_files([ROOT / f for f in compose_files("dev")], variables)["services"]["app"]
    assert app["image"] == "stageflow-app:r7"
    assert app["environment"]["STAGEFLOW_RELEASE"] == "r7"
    assert app["environment"]["STAGEFLOW_COMMIT"] == "abc1234"


# -- isolation ----------------------------------------------------------------------------------


def test_the_three_environments_are_isolated(rendered: dict[str, dict[str, Any]]) -> None:
    assert compose_isolation_problems(rendered) == []
    names = {spec["name"] for model in rendered.values() for spec in model["volumes"].values()}
    assert len(names) == 2 * len(ENVS)  # every env its own pgdata and redisdata


def test_isolation_refuses_a_shared_project_name(rendered: dict[str, dict[str, Any]]) -> None:
    models = copy.deepcopy(rendered)
    models["staging"]["name"] = models["dev"]["name"]
    problems = compose_isolation_problems(models)
    assert problems == ["dev and staging share the compose project name 'stageflow-dev'"]


def test_isolation_refuses_a_shared_host_port(rendered: dict[str, dict[str, Any]]) -> None:
    models = copy.deepcopy(rendered)
    models["prod"]["services"]["redis"]["ports"][0]["published"] = "8101"  # dev's APP_PORT
    problems = compose_isolation_problems(models)
    assert problems == ["dev and prod both publish host port 8101 (dev front, prod redis)"]


def test_isolation_reads_short_port_syntax_and_ranges(rendered: dict[str, dict[str, Any]]) -> None:
    models = copy.deepcopy(rendered)
    models["staging"]["services"]["app"]["ports"] = ["127.0.0.1:54330-54331:5432/tcp"]
    problems = compose_isolation_problems(models)
    assert problems == ["dev and staging both publish host port 54331 (dev postgres, staging app)"]


def test_isolation_refuses_a_shared_named_volume(rendered: dict[str, dict[str, Any]]) -> None:
    models = copy.deepcopy(rendered)
    models["prod"]["volumes"]["pgdata"]["name"] = "stageflow-staging-pgdata"
    problems = compose_isolation_problems(models)
    assert problems == [
        "staging and prod both use the named volume 'stageflow-staging-pgdata' "
        "(staging pgdata, prod pgdata)"
    ]


def test_unnamed_volumes_are_scoped_by_project(rendered: dict[str, dict[str, Any]]) -> None:
    models = copy.deepcopy(rendered)
    for model in models.values():
        model["volumes"] = {"pgdata": {}, "redisdata": None}
    assert compose_isolation_problems(models) == []
    models["staging"]["name"] = models["prod"]["name"]
    problems = compose_isolation_problems(models)
    assert "staging and prod share the compose project name 'stageflow-prod'" in problems
    assert any("named volume 'stageflow-prod_pgdata'" in p for p in problems)


def test_isolation_refuses_a_shared_bind_mount_and_a_missing_name(
    rendered: dict[str, dict[str, Any]],
) -> None:
    models = copy.deepcopy(rendered)
    for env in ("dev", "staging"):
        models[env]["services"]["postgres"]["volumes"] = ["/srv/pgdata:/var/lib/postgresql/data"]
    del models["prod"]["name"]
    problems = compose_isolation_problems(models)
    assert "prod: its compose files set no project name (top-level name:)" in problems
    assert "dev and staging both bind-mount '/srv/pgdata' (dev postgres, staging postgres)" in (
        problems
    )


# -- the offline renderer follows compose's rules -----------------------------------------------


def test_interpolation_forms() -> None:
    v = {"SET": "a", "EMPTY": ""}
    assert interpolate("$SET-${SET}-$$SET-$${SET}", v) == "a-a-$SET-${SET}"
    assert interpolate("${UNSET:-d}|${EMPTY:-d}|${EMPTY-d}|${UNSET-d}", v) == "d|d||d"
    assert interpolate("${SET:+r}|${EMPTY:+r}|${EMPTY+r}", v) == "r||r"
    assert interpolate("${EMPTY?must}", v) == ""
    assert interpolate("${SET-x-y}", v) == "a"  # a '-' after the name starts a default
    with pytest.raises(ConfigError, match="UNSET is required: set it in env"):
        interpolate("${UNSET:?set it in env}", v)
    with pytest.raises(ConfigError, match="EMPTY is required"):
        interpolate("${EMPTY:?x}", v)
    with pytest.raises(ConfigError, match="invalid interpolation"):
        interpolate("${1st}", v)


def test_merge_rules() -> None:
    base = {
        "services": {
            "app": {
                "command": ["a", "b"],
                "environment": {"A": "1", "B": "2"},
                "ports": ["1:1"],
                "healthcheck": {"test": ["CMD", "x"], "retries": 3},
            }
        }
    }
    override = {
        "services": {
            "app": {
                "command": ["c"],
                "environment": ["B=3", "C=4"],
                "ports": ["1:1", "2:2"],
                "healthcheck": {"test": ["CMD", "y"]},
            }
        }
    }
    app = merge(base, override)["services"]["app"]
    assert app["command"] == ["c"]
    assert app["environment"] == {"A": "1", "B": "3", "C": "4"}
    assert app["ports"] == ["1:1", "2:2"]
    assert app["healthcheck"] == {"test": ["CMD", "y"], "retries": 3}
    assert base["services"]["app"]["command"] == ["a", "b"]  # inputs untouched


def test_missing_required_variable_names_it(tmp_path: Path) -> None:
    (tmp_path / "compose.yml").write_text(
        "services:\n  app:\n    image: x\n    ports: ['127.0.0.1:${APP_PORT:?set APP_PORT}:80']\n"
    )
    with pytest.raises(ConfigError, match="compose.yml: APP_PORT is required: set APP_PORT"):
        render_files([tmp_path / "compose.yml"], {})


def test_the_image_is_made_from_the_service_unprivileged_and_ships_no_secrets() -> None:
    from deploy.config import load_project
    from deploy.runtime import compose_image

    service = load_project(ROOT).service
    files = compose_image.context_files(service)
    dockerfile = files[compose_image.DOCKERFILE]
    lines = dockerfile.splitlines()
    # the service's own app, worker class and requirements, from [service]
    assert lines[-1] == (
        'CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--worker-class", "sync", '
        '"--access-logfile", "-", "--error-logfile", "-", "app.wsgi:application"]'
    )
    assert 'RUN python -m pip install -r "app/requirements.lock"' in lines
    # the base image is a build argument with the public default
    assert lines[1:3] == [
        "ARG STAGEFLOW_BASE_IMAGE=python:3.11-slim",
        "FROM ${STAGEFLOW_BASE_IMAGE}",
    ]
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    ignore = files[".dockerignore"].splitlines()
    assert {".git", "**/*.secrets.env", "**/.env", ".stageflow"} <= set(ignore)
    # the migration engine the one-off container runs, and nothing more of stageflow
    shipped = sorted(k for k in files if k.endswith(".py"))
    assert shipped == sorted(
        f".stageflow-image/deploy/{m}"
        for m in (
            "__init__.py",
            "errors.py",
            "secrets.py",
            "redact.py",
            "migrations.py",
            "compose_migrate.py",
        )
    )
    assert "COPY .stageflow-image/deploy/ /opt/stageflow/deploy/" in lines


def test_the_image_of_a_packaged_asgi_service_in_a_subdirectory() -> None:
    from deploy.runtime import compose_image
    from deploy.service import Service

    service = Service(
        name="api",
        wsgi="api.main:app",
        dir="services/api",
        requirements="pyproject.toml",
        worker_class="uvicorn.workers.UvicornWorker",
    )
    lines = compose_image.dockerfile(service).splitlines()
    assert 'RUN python -m pip install "/srv/service/services/api"' in lines
    assert "WORKDIR /srv/service/services/api" in lines
    assert '"uvicorn.workers.UvicornWorker"' in lines[-1] and '"api.main:app"' in lines[-1]


def test_the_image_migration_entry_imports_only_what_the_image_ships() -> None:
    """compose_migrate runs in the image: its deploy imports must all be COPYed there."""
    import ast

    shipped = {"deploy", "deploy.errors", "deploy.secrets", "deploy.redact", "deploy.migrations"}
    for mod in ("compose_migrate", "migrations", "errors", "secrets", "redact"):
        tree = ast.parse((ROOT / "deploy" / f"{mod}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deploy"):
                names = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                assert names & shipped, f"deploy/{mod}.py imports {node.module}"


def test_the_image_migration_entry_refuses_without_a_database_url_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploy import compose_migrate

    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert compose_migrate.main(["up", "--dir", "app/migrations", "--release", "r1"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "stageflow: DATABASE_URL is not set in the container "
        "(compose/compose.yml sets it for the app service)\n"
    )


def test_the_image_migration_entry_reads_the_services_folder_and_only_inside_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploy import compose_migrate, migrations
    from deploy.errors import UsageError

    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/db")
    for bad in ("../elsewhere", "/etc"):
        with pytest.raises(UsageError, match="inside the image"):
            compose_migrate.run(["up", "--dir", bad], os.environ, root=tmp_path)
    (tmp_path / "db" / "sql").mkdir(parents=True)
    (tmp_path / "db" / "sql" / "0001_first.up.sql").write_text("CREATE TABLE t (id int);\n")
    seen = []
    monkeypatch.setattr(migrations, "migrate", lambda url, files, **kw: seen.extend(files) or [])
    assert compose_migrate.run(["up", "--dir", "db/sql"], os.environ, root=tmp_path) == {
        "applied": []
    }
    assert [f.version for f in seen] == [1]


def test_the_image_runs_the_services_build_commands_before_dropping_root() -> None:
    from deploy.runtime import compose_image
    from deploy.service import Service

    service = Service(
        name="site",
        wsgi="mysite.wsgi:application",
        dir="web",
        build=(("python", "manage.py", "collectstatic", "--noinput"), ("make", "assets")),
    )
    lines = compose_image.dockerfile(service).splitlines()
    run = lines.index('RUN ["python", "manage.py", "collectstatic", "--noinput"]')
    assert lines[run + 1] == 'RUN ["make", "assets"]'
    # in the service's folder, after its code is copied, before the unprivileged user
    assert lines.index("WORKDIR /srv/service/web") < run < lines.index("USER 10001")
    assert lines.index("COPY . .") < run


def test_the_image_copies_every_requirements_file_before_installing() -> None:
    from deploy.runtime import compose_image
    from deploy.service import Service

    service = Service(name="site", wsgi="config.wsgi:application", dir="web")
    needs = [
        ("web/requirements.txt", "-r requirements/base.txt\n"),
        ("web/requirements/base.txt", "django\n"),
    ]
    lines = compose_image.context_files(service, needs)[compose_image.DOCKERFILE].splitlines()
    install = lines.index('RUN python -m pip install -r "web/requirements.txt"')
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY [")]
    assert [lines[i] for i in copies] == [
        'COPY ["web/requirements.txt", "web/requirements.txt"]',
        'COPY ["web/requirements/base.txt", "web/requirements/base.txt"]',
    ]
    assert max(copies) < install < lines.index("COPY . .")


def test_requirements_that_install_the_repository_itself_get_its_files_first() -> None:
    from deploy.runtime import compose_image
    from deploy.service import Service

    service = Service(name="site", wsgi="site.wsgi:app", dir="web")
    for line in ("-e .", "--editable=./libs/shared", ".", "./libs/x[extra]", "file:../pkg"):
        files = compose_image.context_files(service, [("web/requirements.txt", f"{line}\n")])
        lines = files[compose_image.DOCKERFILE].splitlines()
        assert lines.index("COPY . .") < lines.index(
            'RUN cd "/srv/service/web" && python -m pip install -r "requirements.txt"'
        ), line
    plain = compose_image.context_files(service, [("web/requirements.txt", "flask  # .x\n")])
    assert (
        'COPY ["web/requirements.txt", "web/requirements.txt"]'
        in plain[compose_image.DOCKERFILE].splitlines()
    )
