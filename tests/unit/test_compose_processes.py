"""[service.processes] on the compose runtime: the compose file the runtime generates (one service
per process, the app's definition without its web parts, valid against the Compose schema when
merged with each environment's files) and the argv of starting, checking and reading them."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from deploy.commands.compose import (
    ComposeCommands,
    compose_files,
    container_logs,
    container_states,
)
from deploy.config import NAMESPACES, load_env
from deploy.errors import ConfigError
from deploy.runtime.compose_processes import override
from deploy.runtime.compose_project import (
    compose_variables,
    interpolate_tree,
    load_yaml,
    merge,
    render,
)
from tests.unit.test_compose_files import ROOT, _errors, validator  # noqa: F401 - a fixture

PROCESSES = (("worker", ("python", "-m", "shop.worker")), ("beat", ("sh", "-c", "echo $HOME")))


def _raw_app(env: str) -> dict[str, Any]:
    model: dict[str, Any] = {}
    for rel in compose_files(env):
        model = merge(model, load_yaml(ROOT / rel))
    return model["services"]["app"]


@pytest.mark.parametrize("env", tuple(NAMESPACES))
def test_each_process_is_the_app_without_its_web_parts_and_validates(
    validator: Any,  # noqa: F811
    env: str,
) -> None:
    text = override(_raw_app(env), PROCESSES)
    model = yaml.safe_load(text)
    assert list(model["services"]) == ["proc-worker", "proc-beat"]
    worker, app = model["services"]["proc-worker"], _raw_app(env)
    assert worker["command"] == ["python", "-m", "shop.worker"]
    assert model["services"]["proc-beat"]["command"] == ["sh", "-c", "echo $$HOME"]  # literal $
    assert not {"ports", "healthcheck"} & set(worker)
    same = {k: v for k, v in app.items() if k not in ("healthcheck", "ports")}
    assert {k: v for k, v in worker.items() if k != "command"} == same
    assert "${" in worker["image"] and "${STAGEFLOW_SERVICE_ENV" in worker["env_file"][0]
    # merged with the environment's files and interpolated, as compose sees the project
    cfg = load_env(ROOT, env)
    files = render(ROOT, cfg)
    whole = merge(files, interpolate_tree(model, compose_variables(cfg), source="processes"))
    assert _errors(validator, whole) == []
    assert whole["services"]["proc-worker"]["command"] == ["python", "-m", "shop.worker"]
    assert whole["services"]["proc-beat"]["command"] == ["sh", "-c", "echo $HOME"]


def test_prod_processes_keep_its_restart_policy_resources_and_logging() -> None:
    worker = yaml.safe_load(override(_raw_app("prod"), PROCESSES))["services"]["proc-worker"]
    assert worker["restart"] == "always"
    assert worker["deploy"]["resources"]["limits"]["memory"] == "512m"
    assert worker["logging"]["driver"] == "json-file"


def test_no_app_service_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="no app service"):
        override({}, PROCESSES)


def test_the_process_argv() -> None:
    c = ComposeCommands(project="p", env_file="env/dev.env", files=("a.yml", "/s/p.yml"))
    base = ["docker", "compose", "-p", "p", "--env-file", "env/dev.env", "-f", "a.yml"]
    base += ["-f", "/s/p.yml"]
    assert c.scale_up({"proc-worker": 2, "proc-beat": 1}) == [
        *base, "up", "-d", "--no-deps", "--no-recreate",
        "--scale", "proc-worker=2", "--scale", "proc-beat=1", "proc-worker", "proc-beat",
    ]  # fmt: skip
    assert c.beside("app", count=2) == c.scale_up({"app": 2})
    assert container_states(["c1", "c2"]) == [
        "docker", "inspect", "--format",
        "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}", "c1", "c2",
    ]  # fmt: skip
    assert container_logs("c1", tail=2) == ["docker", "logs", "--tail", "2", "c1"]


def test_the_file_names_no_secret() -> None:
    text = override(_raw_app("prod"), PROCESSES)
    for line in text.splitlines():
        if "PASSWORD" in line:
            assert "${" in line, line
