"""The real Docker engine the compose live tests use: whether one answers, and which images to run.

Where none answers the live tests skip with one line; under STAGEFLOW_REQUIRE_ALL=1 (CI, after
.ci/engine-up brought one up) they fail instead, so a CI run never passes by skipping them.
"""

from __future__ import annotations

import os
import subprocess

import pytest

# compose and the image build read these keys from their environment (docs/DEPLOYMENT.md)
IMAGE_KEYS = {
    "STAGEFLOW_POSTGRES_IMAGE": "stageflow-local/postgres:15",
    "STAGEFLOW_REDIS_IMAGE": "stageflow-local/redis:7",
    "STAGEFLOW_BASE_IMAGE": "stageflow-local/python:3.11",
}


def _ok(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def engine_problem() -> str | None:
    """Why no engine can be used here, or None when one answers with Compose v2."""
    if not _ok(["docker", "info", "--format", "{{.ServerVersion}}"]):
        return "no Docker engine answers here (bring one up as root: make engine)"
    if not _ok(["docker", "compose", "version", "--short"]):
        return "a Docker engine answers but Compose v2 is missing (make engine installs it)"
    return None


def require_engine() -> None:
    problem = engine_problem()
    if problem is None:
        return
    if os.environ.get("STAGEFLOW_REQUIRE_ALL") == "1":
        pytest.fail(f"{problem}; STAGEFLOW_REQUIRE_ALL=1 allows no skip")
    pytest.skip(problem)


def image_env() -> dict[str, str]:
    """The operator's image names where set, else the local images .ci/engine-up builds where the
    engine holds them; a key left out means compose's public default."""
    out: dict[str, str] = {}
    for key, local in IMAGE_KEYS.items():
        if os.environ.get(key):
            out[key] = os.environ[key]
        elif _ok(["docker", "image", "inspect", "--format", "{{.Id}}", local]):
            out[key] = local
    return out
