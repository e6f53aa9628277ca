"""[service] build: the service's own commands (Django's collectstatic) run in each new release
once its venv exists, with the service's settings, before it migrates or serves; a failing one
refuses the release in one line, without a secret and without a half-built release directory."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from deploy import releases
from deploy.config import EnvConfig, Project, load_project
from deploy.errors import ServiceError
from deploy.hosts import Host
from deploy.runtime.native import service_interpreter
from deploy.secrets import Secret
from deploy.state import Layout
from tests import support
from tests.support import git

PASSWORD = "build-pw-s3cret-value"
REQUIREMENTS = "django\n"
# collectstatic's stand-in: gathers a file into the release, and says what it saw
COLLECT = """\
import json, os, pathlib, sys
out = pathlib.Path("staticfiles")
out.mkdir()
(out / "style.css").write_text(pathlib.Path("static/style.css").read_text())
(out / "seen.json").write_text(json.dumps({
    "cwd": os.getcwd(), "release": os.environ.get("STAGEFLOW_RELEASE"),
    "secret": os.environ.get("SECRET_KEY"), "argv": sys.argv,
}))
if os.environ.get("BUILD_FAILS"):
    sys.exit("cannot collect with " + os.environ["DATABASE_URL"])
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Project, EnvConfig, Host, Layout, str]]:
    """A service in web/ of a git repository whose build collects its static files, and a dev
    whose venv for those requirements is already built (this test is about the build commands).
    The data dir is one the service user can reach: as root, the build runs as that user."""
    root = tmp_path / "repo"
    (root / "web" / "static").mkdir(parents=True)
    (root / "web" / "requirements.txt").write_text(REQUIREMENTS)
    (root / "web" / "collect.py").write_text(COLLECT)
    (root / "web" / "static" / "style.css").write_text("li { color: green }\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "site")
    proj = load_project(support.REPO, process_env={})
    service = replace(
        proj.service,
        dir="web",
        requirements="requirements.txt",
        build=(("python", "collect.py", "--noinput"),),
        secret_keys=("SECRET_KEY",),
    )
    proj = replace(proj, root=root, service=service)
    data = support.public_tmpdir("sf-build-")
    env = replace(
        proj.env("dev"),
        data_dir=data / "data",
        secrets=(("POSTGRES_PASSWORD", Secret(PASSWORD)), ("SECRET_KEY", Secret("sk-s3cret"))),
    )
    layout = Layout(str(env.data_dir))
    python = service_interpreter(service.user)
    key = releases.VenvSpec(
        (("requirements.txt", REQUIREMENTS),),
        "requirements",
        (),
        "",
        releases.engine_gunicorn(),
        python,
    ).key
    venv = Path(layout.venvs) / key
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(python or sys.executable)
    (venv / ".complete").write_text("")
    yield proj, env, Host(), layout, git(root, "rev-parse", "HEAD")
    shutil.rmtree(data, ignore_errors=True)


def test_the_build_commands_run_in_the_new_release_with_the_settings(site) -> None:
    proj, env, host, layout, commit = site
    rel = releases.build(proj, env, host, commit=commit, ref="main", layout=layout)
    web = Path(layout.release(rel.id)) / "web"
    assert (web / "staticfiles" / "style.css").read_text() == "li { color: green }\n"
    seen = json.loads((web / "staticfiles" / "seen.json").read_text())
    # in the service's folder of the release being built (renamed into place once complete)
    assert Path(seen["cwd"]).name == "web" and rel.id in seen["cwd"]
    assert seen["release"] == rel.id and seen["secret"] == "sk-s3cret"
    assert seen["argv"][1:] == ["--noinput"]


def test_a_failing_build_command_refuses_the_release_in_one_line(site) -> None:
    proj, env, host, layout, commit = site
    env = replace(env, values=(*env.values, ("BUILD_FAILS", "1")))
    proj = replace(proj, service=replace(proj.service, env_keys=("BUILD_FAILS",)))
    with pytest.raises(ServiceError) as err:
        releases.build(proj, env, host, commit=commit, ref="main", layout=layout, rid="r-broken")
    line = err.value.line()
    assert "the build command `python collect.py --noinput` exited 1: cannot collect" in line
    assert PASSWORD not in line and "\n" not in line
    assert not os.path.exists(layout.release("r-broken"))
    assert not os.path.exists(layout.release("r-broken") + ".partial")
