"""A venv taken from the host's cache (linked, or copied across filesystems) runs its own console
scripts, not the cache's python."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

import pytest

from deploy import releases
from deploy.commands import files
from deploy.errors import HostError
from deploy.hosts import Host
from deploy.state import Layout


def test_scripts_copied_with_a_venv_run_with_the_copy_s_python(tmp_path):
    built = tmp_path / "cache" / "abc.tmp-1"
    venv.create(built, with_pip=False, symlinks=True)
    script = built / "bin" / "hello"
    script.write_text(f"#!{built}/bin/python\nimport sys\nprint(sys.prefix)\n")
    script.chmod(0o755)
    (built / "bin" / "notes.txt").write_text("#!/bin/sh with spaces stays\n")
    copy = tmp_path / "env" / "venvs" / "abc"
    copy.parent.mkdir(parents=True)
    subprocess.run(files.copy_tree(str(built), str(copy)), check=True)
    os.rename(built, tmp_path / "cache" / "abc")  # the build dir is gone, as after its rename

    subprocess.run(
        files.retarget_scripts(sys.executable, str(copy / "bin"), f"{copy}/bin/python"), check=True
    )

    out = subprocess.run([str(copy / "bin" / "hello")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(copy)
    assert os.access(copy / "bin" / "hello", os.X_OK)
    assert os.path.islink(copy / "bin" / "python"), "the venv's python symlink is left alone"
    assert (copy / "bin" / "notes.txt").read_text() == "#!/bin/sh with spaces stays\n"


def _cached_venv(home: Path, spec: releases.VenvSpec) -> Path:
    """A finished build in the host's cache, as ensure_venv leaves one: no pip needed here."""
    cached = home / ".cache" / "stageflow" / "venvs" / spec.key
    venv.create(cached, with_pip=False, symlinks=True)
    (cached / "bin" / "hello").write_text(f"#!{cached}/bin/python\nimport sys\nprint(sys.prefix)\n")
    (cached / "bin" / "hello").chmod(0o755)
    (cached / "lib" / "module.py").write_text("VALUE = 1\n")
    (cached / ".complete").write_text("requirements.txt\n")
    return cached


SPEC = releases.VenvSpec(
    files=(("requirements.txt", "flask\n"),),
    mode="requirements",
    install=("-r", "requirements.txt"),
    cwd=".",
    gunicorn="gunicorn",
)


def test_an_environment_s_venv_links_the_cache_s_files_and_owns_its_scripts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment's venv is new directories over hard links to the cache's files (no second
    copy of the packages), except the scripts retargeted at its own python, which are its own:
    the cache's scripts still name the cache's python."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cached = _cached_venv(tmp_path / "home", SPEC)
    layout = Layout(str(tmp_path / "env"))
    Path(layout.venvs).mkdir(parents=True)  # made by the build step before
    got = Path(releases.ensure_venv(Host(), layout, SPEC))
    assert got == Path(layout.venvs) / SPEC.key
    assert os.path.samefile(got / "lib" / "module.py", cached / "lib" / "module.py")
    assert not os.path.samefile(got / "bin" / "hello", cached / "bin" / "hello")
    run = [str(got / "bin" / "hello")]
    assert subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip() == str(
        got
    )
    assert (cached / "bin" / "hello").read_text().startswith(f"#!{cached}/bin/python\n")


def test_across_filesystems_the_venv_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache on one filesystem and the environment on another (no hard links between them):
    the tree is copied, whole and runnable."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem here")  # pragma: no cover
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cached = _cached_venv(tmp_path / "home", SPEC)
    home = Path(tempfile.mkdtemp(dir=shm, prefix="sf-venv-"))
    try:
        Path(Layout(str(home)).venvs).mkdir(parents=True)
        got = Path(releases.ensure_venv(Host(), Layout(str(home)), SPEC))
        assert (got / "lib" / "module.py").read_text() == "VALUE = 1\n"
        assert not os.path.samefile(got / "lib" / "module.py", cached / "lib" / "module.py")
        assert not Path(f"{got}.partial").exists()
        out = subprocess.run([str(got / "bin" / "hello")], capture_output=True, text=True)
        assert out.stdout.strip() == str(got)
    finally:
        shutil.rmtree(home)


def test_a_service_for_another_python_says_which_and_leaves_no_half_built_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # the service as a wheel that asks for a Python no one has (pip reads that before installing)
    wheel = tmp_path / "svc-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        info = "svc-1.dist-info"
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: svc\nVersion: 1\n"
                                       "Requires-Python: >=3.99\n")  # fmt: skip
        zf.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{info}/RECORD", "")
    spec = releases.VenvSpec(
        files=(("pyproject.toml", "requires 3.99"),),
        mode="package",
        install=("--no-index", str(wheel)),
        cwd=str(tmp_path),
        gunicorn="gunicorn",
    )
    layout = Layout(str(tmp_path / "env"))
    Path(layout.venvs).mkdir(parents=True)
    with pytest.raises(HostError) as err:
        releases.ensure_venv(Host(), layout, spec)
    line = err.value.line()
    assert line.startswith("local: pip could not install the service's pyproject.toml: ERROR:")
    assert "requires a different Python" in line and "WARNING" not in line
    assert "the service asks for Python >=3.99 and its venv is made from" in line
    assert os.listdir(tmp_path / "home" / ".cache" / "stageflow" / "venvs") == []
