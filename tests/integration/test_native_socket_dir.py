"""An environment whose home is too long for a unix socket path keeps PostgreSQL's socket in a
short private dir in /tmp; `down` removes that dir with the server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from deploy.config import load_env
from deploy.runtime.native import NativeServices
from tests import support


def test_down_removes_the_short_socket_dir_a_long_home_got() -> None:
    base = support.public_tmpdir("sf-long-home-")
    root = base / ("a-project-kept-deep-in-a-folder-with-a-long-name-" * 2).rstrip("-")
    root.mkdir()
    os.chmod(root, 0o755)
    support.write_envs(root, names=("dev",))
    (root / "stageflow.toml").write_text(support.minimal_policy())
    services = NativeServices(load_env(root, "dev"))
    entry = support.register(
        "services", {"root": str(root), "pgdata": services.layout.pgdata, "pattern": str(root)}
    )
    sock = Path(services.socket_dir)
    try:
        assert str(sock).startswith("/tmp/stageflow-")  # the long home's run/pg is too long
        services.up()
        assert any(p.name.startswith(".s.PGSQL.") for p in sock.iterdir())
        services.down()
        assert not sock.exists()
        assert services.down() == ["already down"]  # a second down finds nothing to remove
    finally:
        services.down()
        shutil.rmtree(base, ignore_errors=True)
        entry.unlink(missing_ok=True)
