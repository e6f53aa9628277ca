"""A release runs its own code, not the copy of the service that its (shared) venv was built with:
a venv built from pyproject.toml holds the package as it was then, and every later release with
the same requirements reuses that venv; the release gate's venv may hold a copy from another
commit. Real venv, real python, real launcher, real pytest."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from deploy import releases
from deploy.config import load_project
from deploy.gates import GateContext
from deploy.gates import tests as test_gate
from deploy.hosts import Host
from deploy.runtime.native import service_interpreter
from deploy.state import Layout
from tests import support

SHOW = ["python", "-c", "import bookmarks; print(bookmarks.VERSION)"]


@pytest.fixture
def data() -> Iterator[Path]:
    path = support.public_tmpdir("sf-release-imports-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _venv_with_stale_copy(path: Path) -> None:
    """A venv whose site-packages holds `bookmarks` 1.0 (what `pip install .` left there)."""
    python = service_interpreter("stageflow") or sys.executable  # one the service user runs
    subprocess.run([python, "-m", "venv", "--without-pip", str(path)], check=True)
    purelib = subprocess.run(
        [str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "bookmarks").mkdir()
    (Path(purelib) / "bookmarks" / "__init__.py").write_text('VERSION = "1.0 from the venv"\n')


@pytest.mark.parametrize("layout", ["src", "flat"])
def test_a_service_command_imports_the_release_s_code_before_the_venv_s_copy(
    data: Path, layout: str
) -> None:
    _venv_with_stale_copy(data / "venv")
    release = data / "releases" / "r2"
    package = release / "svc" / ("src/bookmarks" if layout == "src" else "bookmarks")
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('VERSION = "1.1 of the release"\n')
    (release / ".venv").symlink_to(data / "venv")
    (data / "shared").mkdir()
    proj = load_project(support.REPO, process_env={})
    service = replace(proj.service, dir="svc", requirements="pyproject.toml")
    res = releases.service_command(
        Host(), proj.env("dev"), service, Layout(str(data)), "r2", SHOW, timeout=60
    )
    assert res.ok, res.stderr
    assert res.stdout.strip() == "1.1 of the release"


SRC_TEST = "import bookmarks\n\n\ndef test_the_commit_s_version():\n    assert bookmarks.VERSION == '1.1'\n"


def test_the_test_gate_runs_the_snapshot_s_code_not_an_installed_copy(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # where the operator's venv keeps `bookmarks` 1.0 (an earlier `pip install .`)
    stale = data / "site"
    (stale / "bookmarks").mkdir(parents=True)
    (stale / "bookmarks" / "__init__.py").write_text('VERSION = "1.0"\n')
    monkeypatch.setenv("PYTHONPATH", str(stale))
    tree = data / "tree"
    (tree / "src" / "bookmarks").mkdir(parents=True)
    (tree / "src" / "bookmarks" / "__init__.py").write_text('VERSION = "1.1"\n')
    (tree / "tests").mkdir()
    (tree / "tests" / "test_version.py").write_text(SRC_TEST)
    policy = {"service": {"name": "bookmarks", "wsgi": "bookmarks:create_app()"}}
    ctx = GateContext("test", data, tree, "v1.1", "c" * 40, "t" * 40, "GA", "required", {},
                      policy, data, 120.0)  # fmt: skip
    outcome = test_gate.run(ctx)
    assert outcome.status == "passed", outcome.summary
