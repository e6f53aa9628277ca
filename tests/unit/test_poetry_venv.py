"""A poetry project's venv: its main dependencies at the versions poetry.lock pins, without
building the project itself when poetry could not (an application rather than a package)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from deploy import poetry, releases
from deploy.hosts import Host
from deploy.service import Service
from deploy.state import Layout

PYPROJECT = """[tool.poetry]
name = "shop-api"
version = "0.1.0"

[tool.poetry.dependencies]
python = "^3.11"
libx = "^1.0"
liby = { version = "*", extras = ["fast"] }
extra-only = { version = "*", optional = true }

[tool.poetry.group.dev.dependencies]
devtool = "*"

[build-system]
requires = ["poetry-core"]
build-backend = "poetry.core.masonry.api"
"""

LOCK = """[[package]]
name = "libx"
version = "1.0"
groups = ["main"]

[[package]]
name = "liby"
version = "3.1"

[[package]]
name = "devtool"
version = "1.0"
groups = ["dev"]

[[package]]
name = "tool"
version = "2.0"
markers = "python_version >= \\"3.11\\""

[[package]]
name = "tool"
version = "1.0"
markers = "python_version < \\"3.11\\""

[[package]]
name = "vendored"
version = "0.1"
[package.source]
type = "git"
url = "https://example.invalid/vendored.git"

[metadata]
lock-version = "2.1"
"""


def test_the_main_group_as_requirements_and_the_lock_as_constraints() -> None:
    assert poetry.requirements(PYPROJECT) == "libx\nliby[fast]\n"
    assert poetry.constraints(LOCK) == (
        "devtool==1.0\nlibx==1.0\nliby==3.1\n"
        'tool==1.0 ; python_version < "3.11"\ntool==2.0 ; python_version >= "3.11"\n'
    )


def test_poetry_builds_the_project_only_when_it_is_a_package() -> None:
    assert not poetry.builds_a_package(PYPROJECT, lambda path: False)
    assert poetry.builds_a_package(PYPROJECT, lambda path: path == "src/shop_api/__init__.py")
    declared = PYPROJECT.replace(
        'version = "0.1.0"', 'version = "0.1.0"\npackages = [{include = "app"}]'
    )
    assert poetry.builds_a_package(declared, lambda path: False)
    app_only = PYPROJECT.replace('version = "0.1.0"', 'version = "0.1.0"\npackage-mode = false')
    assert not poetry.builds_a_package(app_only, lambda path: True)


def _wheel(folder: Path, name: str, version: str, requires: str = "") -> None:
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        info = f"{name}-{version}.dist-info"
        meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires}"
        zf.writestr(f"{info}/METADATA", meta)
        zf.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        zf.writestr(f"{info}/RECORD", "")


def test_an_application_poetry_manages_gets_the_locked_versions_of_its_main_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, version in (("libx", "1.0"), ("libx", "1.5"), ("liby", "3.1"), ("liby", "3.2")):
        _wheel(wheels, name, version)
    _wheel(wheels, "devtool", "1.0")
    _wheel(wheels, "gunicorn", "23.0")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    release = tmp_path / "release"
    (release / "app").mkdir(parents=True)  # the code, in a package not named after the project
    (release / "app" / "__init__.py").write_text("")
    (release / "pyproject.toml").write_text(PYPROJECT)
    (release / "poetry.lock").write_text(LOCK.split('[[package]]\nname = "vendored"')[0])
    service = Service(name="shop", wsgi="app:app", requirements="pyproject.toml")
    spec = releases.venv_spec(Host(), service, str(release), "c0ffee")
    assert spec.mode == "poetry" and str(release) not in spec.install
    spec = releases.VenvSpec(
        spec.files, spec.mode, spec.install, spec.cwd, "gunicorn", "", spec.generated
    )
    layout = Layout(str(tmp_path / "env"))
    Path(layout.venvs).mkdir(parents=True)
    venv = Path(releases.ensure_venv(Host(), layout, spec))
    site = next((venv / "lib").glob("python3*/site-packages"))
    installed = sorted(p.name for p in site.glob("*.dist-info"))
    assert {"libx-1.0.dist-info", "liby-3.1.dist-info"} <= set(
        installed
    )  # the lock's, not the newest
    assert not [n for n in installed if n.startswith(("devtool", "shop"))]
