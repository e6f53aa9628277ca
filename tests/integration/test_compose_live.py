"""The compose runtime against a real Docker engine where one answers, and its refusals elsewhere."""

from __future__ import annotations

import secrets
import shutil
import socket
import urllib.request
from pathlib import Path

import pytest

from deploy.commands import compose as cmd
from deploy.config import EnvConfig, load_env, load_project
from deploy.errors import ConfigError, ServiceError, UsageError
from deploy.hosts import Host
from deploy.runtime import compose_image
from deploy.runtime.compose_project import DEFAULT_IMAGE, ComposeProject
from tests.live_engine import engine_problem, image_env, require_engine

ROOT = Path(__file__).resolve().parents[2]


def _engine_problem() -> str | None:
    """Why no engine can be used here, or None when one answers."""
    return engine_problem()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _project_copy(tmp_path: Path, project: str, *, with_secrets: bool = True) -> Path:
    """A project root holding the real compose files and a dev env on its own name and ports."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "compose", root / "compose")
    shutil.copy(ROOT / "stageflow.toml", root / "stageflow.toml")  # the service's declared keys
    (root / "env").mkdir()
    dev = load_env(ROOT, "dev")
    ports = {"APP_PORT": _free_port(), "POSTGRES_PORT": _free_port(), "REDIS_PORT": _free_port()}
    lines = []
    for key, value in dev.values:
        if key == "COMPOSE_PROJECT_NAME":
            value = project
        elif key in ports:
            value = str(ports[key])
        elif key == "DATABASE_URL":
            value = value.replace(f":{dev.postgres_port}/", f":{ports['POSTGRES_PORT']}/")
        elif key == "REDIS_URL":
            value = value.replace(f":{dev.redis_port}/", f":{ports['REDIS_PORT']}/")
        elif key == "DATA_DIR":
            value = str(tmp_path / "data")
        lines.append(f"{key}={value}")
    (root / "env" / "dev.env").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if with_secrets:
        path = root / "env" / "dev.secrets.env"
        keys = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "API_KEYS", "SECRET_KEY")
        path.write_text("".join(f"{k}={secrets.token_urlsafe(18)}\n" for k in keys))
        path.chmod(0o600)
    return root


# -- refusals: these run everywhere ---------------------------------------------------------------


def test_no_engine_is_one_service_error_line(tmp_path: Path) -> None:
    if _engine_problem() is None:
        pytest.skip("a Docker engine answers here; the refusal needs a machine without one")
    root = _project_copy(tmp_path, "stageflow-test-noengine")
    runtime = ComposeProject(load_env(root, "dev"), Host(), root=root)
    with pytest.raises(ServiceError) as info:
        runtime.status()
    line = info.value.line()
    assert line.startswith('no Docker engine answers at local; use runtime = "native"')
    assert "\n" not in line


def test_missing_docker_client_is_one_service_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _project_copy(tmp_path, "stageflow-test-noclient")
    cfg = load_env(root, "dev")
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # a machine where docker is absent
    with pytest.raises(ServiceError) as info:
        ComposeProject(cfg, Host(), root=root).up("r1")
    assert info.value.line() == (
        'no Docker engine answers at local; use runtime = "native" '
        "(or start Docker there: the docker client is not installed)"
    )
    assert all(s.reveal() not in info.value.line() for s in cfg.secret_values())


def test_missing_secrets_refuse_before_anything_runs(tmp_path: Path) -> None:
    root = _project_copy(tmp_path, "stageflow-test-nosecrets", with_secrets=False)
    with pytest.raises(ConfigError) as info:
        ComposeProject(load_env(root, "dev"), Host(), root=root).status()
    assert info.value.line() == (
        "dev has no POSTGRES_PASSWORD (set it in env/dev.secrets.env, mode 0600)"
    )


def test_bad_release_refuses_before_anything_runs(tmp_path: Path) -> None:
    root = _project_copy(tmp_path, "stageflow-test-badtag")
    with pytest.raises(UsageError, match="'v1:latest' cannot be an image tag"):
        ComposeProject(load_env(root, "dev"), Host(), root=root).up("v1:latest")


def test_production_never_removes_its_volumes() -> None:
    runtime = ComposeProject(load_env(ROOT, "prod"), Host())
    with pytest.raises(UsageError, match="prod refuses to remove its data volumes"):
        runtime.down(volumes=True)


def test_rollback_level_three_is_not_the_runtimes(tmp_path: Path) -> None:
    root = _project_copy(tmp_path, "stageflow-test-level3")
    with pytest.raises(UsageError, match="does level 1 and 2, not 3"):
        ComposeProject(load_env(root, "dev"), Host(), root=root).rollback(level=3)


# -- live: only where an engine answers -----------------------------------------------------------


@pytest.mark.docker
def test_dev_comes_up_healthy_and_goes_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_engine()
    for key, value in image_env().items():  # compose reads the image names from its environment
        monkeypatch.setenv(key, value)
    host = Host()
    suffix = secrets.token_hex(4)
    project, tag = f"stageflow-test-{suffix}", f"test-{suffix}"
    root = _project_copy(tmp_path, project)
    cfg: EnvConfig = load_env(root, "dev")
    runtime = ComposeProject(cfg, host, root=root, wait_timeout_s=240)
    # the build context as a deploy makes it: the service's files and what the engine adds
    context = tmp_path / "context"
    shutil.copytree(ROOT / "app", context / "app", ignore=shutil.ignore_patterns("__pycache__"))
    for rel, text in compose_image.context_files(load_project(ROOT).service).items():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        (context / rel).write_text(text, encoding="utf-8")
    build = cmd.build_image(
        DEFAULT_IMAGE,
        tag,
        context=str(context),
        dockerfile=str(context / compose_image.DOCKERFILE),
        env_build_args=[compose_image.BASE_IMAGE_ARG],
    )
    host.run(build, timeout=1200)
    try:
        runtime.validate()
        rows = runtime.up(tag)
        by_service = {row["Service"]: row for row in rows}
        assert set(by_service) == {"app", "front", "postgres", "redis"}
        assert all(row["State"] == "running" for row in rows)
        assert all(row.get("Health") == "healthy" for row in rows)
        assert runtime.current_release() == tag
        with urllib.request.urlopen(f"http://127.0.0.1:{cfg.app_port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        res = runtime.migrate(["python", "-c", "print('exec-ok')"])
        assert res.stdout.strip() == "exec-ok"
        res = runtime.migrate(["python", "-c", "print('run-ok')"], release=tag)
        assert res.stdout.strip() == "run-ok"
        # Unscrubbed: what compose itself prints must not carry a secret.
        raw = host.run(runtime.commands().logs(tail=500), cwd=root)
        assert all(s.reveal() not in raw.stdout + raw.stderr for s in cfg.secret_values())
    finally:
        runtime.down(volumes=True)
        host.run(
            ["docker", "image", "rm", "--force", cmd.image_ref(DEFAULT_IMAGE, tag)], check=False
        )
    assert runtime.status() == []
