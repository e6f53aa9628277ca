"""The smoke probe's Redis write and read speaks the protocol itself, against a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from deploy.clients import redis_set_get
from deploy.config import EnvConfig, RedisTarget, load_env
from deploy.errors import ServiceError
from tests import support
from tests.conftest import RedisServer


def env_on(root: Path, name: str, redis_server: RedisServer, *, db: int) -> EnvConfig:
    support.write_envs(root, names=(name,))
    (root / "stageflow.toml").write_text(support.minimal_policy())
    env = load_env(root, name)
    return replace(env, redis=RedisTarget(redis_server.host, redis_server.port, db))


def test_set_get_reads_the_value_back_and_leaves_no_key(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = env_on(tmp_path, "dev", redis_server, db=7)
    assert redis_set_get(env, "stageflow:smoke:probe-test") is True
    client = redis.Redis(host=redis_server.host, port=redis_server.port, db=7)
    try:
        assert client.exists("stageflow:smoke:probe-test") == 0
    finally:
        client.close()


def test_the_probe_loads_no_redis_client_library(tmp_path: Path, redis_server: RedisServer) -> None:
    """Every deploy and rollback runs the probe: importing redis-py would cost more than it."""
    env_on(tmp_path, "dev", redis_server, db=0)
    code = (
        "import json, sys\n"
        "from dataclasses import replace\n"
        "from pathlib import Path\n"
        "from deploy.clients import redis_set_get\n"
        "from deploy.config import RedisTarget, load_env\n"
        f"env = replace(load_env(Path({str(tmp_path)!r}), 'dev'),"
        f" redis=RedisTarget({redis_server.host!r}, {redis_server.port}, 0))\n"
        "ok = redis_set_get(env, 'stageflow:smoke:import-test')\n"
        "print(json.dumps([ok, 'redis' in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=support.REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == [True, False]


def test_a_refused_password_fails_without_showing_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # staging carries a REDIS_PASSWORD; the test server has none, so Redis refuses AUTH
    env = env_on(tmp_path, "staging", redis_server, db=0)
    secret = env.secret("REDIS_PASSWORD")
    assert secret is not None
    with pytest.raises(ServiceError) as err:
        redis_set_get(env, "stageflow:smoke:auth-test")
    # a server without a password while the secrets hold one: what to run is named
    assert err.value.message.startswith("staging's redis has no password and its secrets give one")
    assert "`inv staging.up` sets it" in err.value.message
    assert secret.reveal() not in err.value.line()


def test_any_other_refusal_is_said_in_redis_own_words(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = env_on(tmp_path, "dev", redis_server, db=99)  # the server keeps 16 databases
    with pytest.raises(ServiceError) as err:
        redis_set_get(env, "stageflow:smoke:db-test")
    assert err.value.message.startswith("redis refused a command: ")
    assert "out of range" in err.value.message.lower()


def test_nothing_listening_fails_the_probe(tmp_path: Path, redis_server: RedisServer) -> None:
    env = env_on(tmp_path, "dev", redis_server, db=0)
    closed = replace(env, redis=RedisTarget("127.0.0.1", support.free_port(), 0))
    with pytest.raises(OSError):
        redis_set_get(closed, "stageflow:smoke:closed-test")
