"""A cluster another PostgreSQL major version made (the operator's STAGEFLOW_POSTGRES_BIN then,
the embedded wheel now, or the other way round) does not start: `up` says which version made it
and how to run that one again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from deploy.config import load_env
from deploy.errors import ServiceError
from deploy.runtime.native import NativeServices
from tests import support


def test_a_cluster_of_another_major_version_says_which_postgresql_made_it(monkeypatch) -> None:
    monkeypatch.delenv("STAGEFLOW_POSTGRES_BIN", raising=False)
    root = support.public_tmpdir("sf-cluster-version-")
    os.chmod(root, 0o755)
    support.write_envs(root, names=("dev",))
    (root / "stageflow.toml").write_text(support.minimal_policy())
    services = NativeServices(load_env(root, "dev"))
    entry = support.register(
        "services", {"root": str(root), "pgdata": services.layout.pgdata, "pattern": str(root)}
    )
    try:
        services.up()
        services.down()
        # as a cluster an older PostgreSQL made looks to this one
        (Path(services.layout.pgdata) / "PG_VERSION").write_text("9\n")
        with pytest.raises(ServiceError) as err:
            services.up()
        line = err.value.line()
        assert "database files are incompatible with server" in line
        assert "the environment's cluster was made by PostgreSQL 9" in line
        assert "set STAGEFLOW_POSTGRES_BIN to the bin folder of PostgreSQL 9" in line
        assert "\n" not in line
    finally:
        services.down()
        shutil.rmtree(root, ignore_errors=True)
        entry.unlink(missing_ok=True)
