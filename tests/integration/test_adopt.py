"""Adoption for real: the wheel built from this repository, installed alone into a fresh venv,
and `stageflow init` run there over git repositories laid out as a team's services are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.deployed_services import operator_venv, operator_wheel

ROOT = Path(__file__).resolve().parents[2]
INIT_FILES = (
    "stageflow.toml",
    "tasks.py",
    "env/dev.env",
    "env/staging.env",
    "env/prod.env",
    "env/dev.secrets.env.example",
    "compose/compose.yml",
    "compose/compose.prod.yml",
)
SERVICE_OF = (
    "import json, sys\n"
    "from dataclasses import asdict\n"
    "from pathlib import Path\n"
    "from deploy.config import load_project\n"
    "print(json.dumps(asdict(load_project(Path('.')).service)))\n"
)


def clean_env() -> dict[str, str]:
    """The operator's environment without this checkout's interpreter or paths in it."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop}


def run(argv: list[str], cwd: Path, *, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def wheel() -> Path:
    """Built from a copy of the checkout (no tests, no benchmarks), once per run and source tree:
    the wheel a team's pip installs."""
    return operator_wheel()


@pytest.fixture(scope="module")
def venv() -> Path:
    """A service's own venv holding stageflow from that wheel and nothing of this checkout."""
    return operator_venv()


@pytest.fixture(scope="module")
def django_admin(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`django-admin` from Django installed apart (the operator's venv has no Django)."""
    target = tmp_path_factory.mktemp("django")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-compile"]
    res = run([*pip, "--target", str(target), "django"], target, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return ["env", f"PYTHONPATH={target}", sys.executable, "-m", "django"]


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "shop"
    path.mkdir()
    res = run(["git", "init", "-q"], path)
    assert res.returncode == 0, res.stderr
    yield path


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def init(venv: Path, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(venv / "bin/stageflow"), "init", *args], repo, timeout=120)


def service(venv: Path, repo: Path) -> dict:
    res = run([str(venv / "bin/python"), "-c", SERVICE_OF], repo, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def test_the_wheel_ships_the_engine_its_templates_and_the_command_but_no_app(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("app/")]
    assert "deploy/cli.py" in names
    assert "deploy/adopt/templates/stageflow.toml.tmpl" in names
    assert "deploy/gates/approved-deps.toml" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "stageflow = deploy.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_venv_has_no_app_package(venv: Path, tmp_path: Path) -> None:
    code = "import importlib.util as u; print(u.find_spec('app'), u.find_spec('deploy').origin)"
    res = run([str(venv / "bin/python"), "-c", code], tmp_path)
    assert res.returncode == 0, res.stderr
    app_spec, deploy_origin = res.stdout.split()
    assert app_spec == "None"
    assert deploy_origin.startswith(str(venv))


FLASK_ALEMBIC = {
    "shop/__init__.py": "",
    "shop/web.py": "from flask import Flask\n\napp = Flask(__name__)\n",
    "requirements.txt": "flask\nalembic\n",
    "alembic.ini": "[alembic]\nscript_location = alembic\n",
    "alembic/env.py": "",
    "alembic/versions/.keep": "",
    ".gitignore": "__pycache__/\n",
}


def test_init_a_flask_service_with_alembic(venv: Path, repo: Path) -> None:
    write(repo, FLASK_ALEMBIC)
    res = init(venv, repo)
    assert res.returncode == 0, res.stderr
    assert "shop.web:app" in res.stdout and "inv dev.deploy" in res.stdout
    for rel in INIT_FILES:
        assert (repo / rel).is_file(), rel
    s = service(venv, repo)
    assert (s["name"], s["dir"], s["wsgi"], s["worker_class"]) == (
        "shop",
        ".",
        "shop.web:app",
        "sync",
    )
    assert s["requirements"] == "requirements.txt" and s["health"] == "/"
    assert s["migrations"] == {
        "kind": "command",
        "dir": "alembic/versions",
        "up": ["alembic", "upgrade", "head"],
        "down": ["alembic", "downgrade", "{target}"],
        "current": ["alembic", "current"],
    }


def test_init_refuses_to_overwrite_and_then_writes_nothing(venv: Path, repo: Path) -> None:
    write(repo, {**FLASK_ALEMBIC, "env/prod.env": "mine\n"})
    res = init(venv, repo)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "stageflow: env/prod.env already exists (move it aside to let init write it)",
        "stageflow: init wrote nothing",
    ]
    assert "Traceback" not in res.stderr
    assert not (repo / "stageflow.toml").exists() and not (repo / "compose").exists()
    assert (repo / "env/prod.env").read_text() == "mine\n"
    assert (repo / ".gitignore").read_text() == "__pycache__/\n"


def test_gitignore_lines_are_appended_once(venv: Path, repo: Path) -> None:
    write(repo, FLASK_ALEMBIC)
    assert init(venv, repo).returncode == 0
    once = (repo / ".gitignore").read_text()
    assert once.splitlines()[0] == "__pycache__/"
    assert once.count(".stageflow/\n") == 1 and once.count("env/*.secrets.env\n") == 1
    for rel in ("stageflow.toml", "tasks.py", "env", "compose"):
        run(["rm", "-r", rel], repo)
    assert init(venv, repo).returncode == 0
    assert (repo / ".gitignore").read_text() == once


def test_init_outside_git_is_refused_in_one_line(venv: Path, tmp_path: Path) -> None:
    write(tmp_path / "plain", {"app.py": "from flask import Flask\napp = Flask(__name__)\n"})
    res = init(venv, tmp_path / "plain")
    assert res.returncode == 2
    assert len(res.stderr.splitlines()) == 1 and "is not in a git repository" in res.stderr
    assert not (tmp_path / "plain" / "stageflow.toml").exists()


def test_init_a_django_project_in_a_subdirectory(
    venv: Path, repo: Path, django_admin: list[str]
) -> None:
    (repo / "site").mkdir()
    res = run([*django_admin, "startproject", "mysite", "site"], repo)
    assert res.returncode == 0, res.stderr
    write(repo, {"site/requirements.txt": "django\n"})
    assert init(venv, repo).returncode == 0
    s = service(venv, repo)
    assert (s["dir"], s["wsgi"], s["requirements"]) == (
        "site",
        "mysite.wsgi:application",
        "requirements.txt",
    )
    assert s["migrations"]["up"] == ["python", "manage.py", "migrate", "--noinput"]
    assert s["migrations"]["down"] == [
        "python",
        "manage.py",
        "migrate",
        "{app}",
        "{target}",
        "--noinput",
    ]
    assert s["migrations"]["current"] == ["python", "manage.py", "showmigrations", "--plan"]


def test_init_a_fastapi_module(venv: Path, repo: Path) -> None:
    write(
        repo, {"main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n", "pyproject.toml": ""}
    )
    assert init(venv, repo).returncode == 0
    s = service(venv, repo)
    assert (s["wsgi"], s["worker_class"]) == ("main:app", "uvicorn.workers.UvicornWorker")
    assert s["requirements"] == "pyproject.toml" and s["migrations"]["kind"] == "none"


def test_inv_and_stageflow_list_the_same_tasks_in_an_initialised_repo(
    venv: Path, repo: Path
) -> None:
    write(repo, FLASK_ALEMBIC)
    assert init(venv, repo).returncode == 0
    assert not (repo / "deploy").exists()
    by_inv = run([str(venv / "bin/inv"), "--list"], repo, timeout=120)
    by_stageflow = run([str(venv / "bin/stageflow"), "--list"], repo, timeout=120)
    assert by_inv.returncode == 0, by_inv.stderr
    assert by_stageflow.returncode == 0, by_stageflow.stderr
    for task in (
        "dev.up",
        "dev.deploy",
        "staging.deploy",
        "prod.approve",
        "release.gate",
        "status",
    ):
        assert task in by_inv.stdout
    assert by_stageflow.stdout == by_inv.stdout
    # a service's own docs need not describe stageflow's tasks: the docs check passes as written
    fresh = run([str(venv / "bin/stageflow"), "docs.freshness"], repo, timeout=120)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr


def test_stageflow_runs_the_engines_tasks_where_there_is_no_tasks_py(
    venv: Path, tmp_path: Path
) -> None:
    res = run([str(venv / "bin/stageflow"), "--list"], tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "dev.deploy" in res.stdout


def test_a_bad_init_flag_is_one_line(venv: Path, repo: Path) -> None:
    res = init(venv, repo, "--colour", "blue")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "stageflow: init: unrecognized arguments: --colour blue (usage: stageflow init [--name NAME]"
        " [--dir DIR] [--wsgi MODULE:APP] [--worker-class CLASS])"
    ]
    assert not (repo / "stageflow.toml").exists()


def _git(repo: Path, *args: str) -> str:
    res = run(["git", *args], repo, timeout=60)
    assert res.returncode in (0, 1), res.stderr
    return res.stdout


@pytest.mark.parametrize(
    "ignores",
    [
        "__pycache__/\n.env\nenv/\nvenv/\nENV/\n",  # the usual Python .gitignore: env/ is a venv
        "*.env\n",  # dotenv files
    ],
)
def test_init_keeps_its_files_committed_where_gitignore_would_drop_them(
    repo: Path, ignores: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from deploy.cli import init as cli_init

    write(repo, {**FLASK_ALEMBIC, ".gitignore": ignores})
    assert cli_init([], cwd=repo) == 0
    out = capsys.readouterr().out
    assert ".gitignore (appended)" in out and "git ignores" not in out
    _git(repo, "add", "-A")
    staged = set(_git(repo, "diff", "--cached", "--name-only").split())
    assert {f"env/{e}.env" for e in ("dev", "staging", "prod")} <= staged
    assert "env/dev.secrets.env.example" in staged and "compose/compose.yml" in staged
    # the secrets stay out of git
    (repo / "env" / "dev.secrets.env").write_text("POSTGRES_PASSWORD=x\n")
    (repo / "venv").mkdir()
    (repo / "venv" / "pyvenv.cfg").write_text("")
    _git(repo, "add", "-A")
    staged = set(_git(repo, "diff", "--cached", "--name-only").split())
    assert "env/dev.secrets.env" not in staged
    assert ("venv/pyvenv.cfg" in staged) == ("venv/" not in ignores)  # the rest stays as it was


def test_init_keeps_a_virtualenv_inside_the_repository_out_of_git(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a repository whose .gitignore does not name the venv the team made inside it: "commit the
    # new files" must not commit thousands of files of it; one ignored already is left alone
    from deploy.cli import init as cli_init

    write(repo, {**FLASK_ALEMBIC, ".gitignore": "*.pyc\nvenv2/\n"})
    for venv in (".venv", "venv2"):
        (repo / venv / "lib").mkdir(parents=True)
        (repo / venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
        (repo / venv / "lib" / "site.py").write_text("")
    assert cli_init([], cwd=repo) == 0
    capsys.readouterr()
    _git(repo, "add", "-A")
    staged = set(_git(repo, "diff", "--cached", "--name-only").split())
    assert "stageflow.toml" in staged and "env/dev.env" in staged
    assert not [path for path in staged if path.startswith((".venv/", "venv2/"))], staged
    lines = (repo / ".gitignore").read_text().splitlines()
    assert "/.venv/" in lines and not [line for line in lines if "venv2" in line][1:]
