"""The text of every file `stageflow init` writes, from a Detection and the chosen ports. Pure:
no file is read here but the packaged templates."""

from __future__ import annotations

import json
import tomllib
from importlib import resources

from deploy.adopt.detect import Detection
from deploy.config import NAMESPACES
from deploy.gates.budgets import budgets_hash
from deploy.service import Migrations

PORT_KEYS = ("APP_PORT", "POSTGRES_PORT", "REDIS_PORT")
# the release gate writes its reports and caches under dist/release-gate/ of the repository
GITIGNORE_LINES = (".stageflow/", "env/*.secrets.env", "dist/release-gate/")
_COVERED_BY = {"dist/release-gate/": ("dist", "dist/", "/dist", "/dist/")}
# the Host names stageflow's probes ask with; an operator adds the service's own names
PROBE_HOSTS = "localhost,127.0.0.1"
Ports = dict[str, dict[str, int]]  # environment -> APP_PORT/POSTGRES_PORT/REDIS_PORT -> port


def template(name: str, values: dict[str, str]) -> str:
    """A packaged template with each {{key}} replaced; a placeholder left over is a bug here."""
    text = (resources.files("deploy.adopt") / "templates" / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise ValueError(f"template {name} has a placeholder no value fills")
    return text


def _toml(value: str | tuple[str, ...]) -> str:
    # JSON strings and arrays of strings are valid TOML basic strings and arrays
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _migrations_table(m: Migrations) -> list[str]:
    lines = ["[service.migrations]", f"kind = {_toml(m.kind)}"]
    if m.kind == "none":
        return lines
    lines.append(f"dir = {_toml(m.dir)}")
    for key in ("up", "down", "current"):
        value = getattr(m, key)
        if value:
            lines.append(f"{key} = {_toml(value)}")
    return lines


def service_table(d: Detection) -> str:
    """[service] as init found it; every key left out takes its default."""
    lines = [
        f"# --- The service this repository deploys ({d.framework}). ---",
        "[service]",
        f"name = {_toml(d.name)}",
    ]
    if d.dir != ".":
        lines.append(f"dir = {_toml(d.dir)}                 # paths below are relative to it")
    lines += [
        f"wsgi = {_toml(d.wsgi)}",
        f"requirements = {_toml(d.requirements)}",
    ]
    if d.worker_class != "sync":
        lines.append(f"worker_class = {_toml(d.worker_class)}")
    lines.append(
        f"health = {_toml(d.health)}".ljust(39)
        + "# a path that answers 2xx (or 3xx) when the service is up"
    )
    if d.ready:
        lines.append(f"ready = {_toml(d.ready)}  # answers 2xx when a new release may take traffic")
    if d.build:
        commands = ", ".join(_toml(c) for c in d.build)
        lines.append(f"build = [{commands}]  # run in each new release before it migrates")
    return "\n".join(
        [*lines, *_env_table(d), *_processes_table(d), "", *_migrations_table(d.migrations)]
    )


def _processes_table(d: Detection) -> list[str]:
    """The Procfile's other processes and uWSGI's daemons: each started and stopped with its
    release."""
    if not d.processes:
        return []
    lines = [
        "",
        "[service.processes]                   # beside the web workers; run with each release",
    ]
    return lines + [f"{name} = {_toml(argv)}" for name, argv in d.processes]


def _env_table(d: Detection) -> list[str]:
    """[service.env] with the settings the code reads: without it, a deploy hands the service
    none of them (its processes get only what stageflow.toml declares)."""
    if not (d.env_keys or d.secret_keys or d.env_from):
        return []
    lines = [
        "",
        "# what the code reads from its environment: values in env/<env>.env and, for secrets,",
        "# env/<env>.secrets.env (`inv <env>.secrets --generate` fills missing ones)",
        "[service.env]",
    ]
    if d.env_keys:
        lines.append(f"keys = {_toml(d.env_keys)}")
    if d.secret_keys:
        lines.append(f"secrets = {_toml(d.secret_keys)}")
    if d.env_from:
        lines += [
            "",
            "[service.env.from]                     # the service's name = what stageflow feeds",
        ]
        lines += [f"{name} = {_toml(fed)}" for name, fed in d.env_from]
    return lines


def posture_table(d: Detection) -> list[str]:
    """[posture]: the service's debug settings off on staging and prod (env_file writes them)."""
    if not d.debug_keys:
        return []
    return [
        "",
        "# --- What staging and prod must hold (the posture guard refuses a deploy otherwise; dev",
        "# may relax): debugging off. env/staging.env and env/prod.env set it. ---",
        "[posture]",
        *(f'{key} = "{d.debug_off}"' for key in d.debug_keys),
    ]


def stageflow_toml(d: Detection) -> str:
    """The whole stageflow.toml, its budgets locked at the thresholds it ships with."""
    # a key whose value init wrote differently for staging and prod is meant to differ
    staging = {(k, v) for e, k, v in d.env_values if e == "staging"}
    prod = {(k, v) for e, k, v in d.env_values if e == "prod"}
    differ = sorted({k for k, _ in staging ^ prod} | set(d.url_keys))
    values = {
        "service": "\n".join([service_table(d), *posture_table(d)]),
        "test_command": _toml(d.test_command),
        # a service in a folder of its own runs its tests there, as its team does (Django's
        # command names manage.py's folder itself)
        "test_dir": (
            f"\ndir = {_toml(d.dir)}                 # the folder the command runs in"
            if d.dir != "." and d.framework != "Django"
            else ""
        ),
        "allowed_keys": "".join(f', "{k}"' for k in differ),
    }
    draft = template("stageflow.toml.tmpl", {**values, "budgets_hash": ""})
    locked = budgets_hash(tomllib.loads(draft))
    return template("stageflow.toml.tmpl", {**values, "budgets_hash": locked})


def database_name(d: Detection) -> str:
    return d.name.replace("-", "_")


def env_file(d: Detection, env: str, ports: dict[str, int]) -> str:
    db = f"{database_name(d)}_{env}"
    return "\n".join(
        [
            f"# {env}: what stageflow and the service see. No secrets here: they go in "
            f"env/{env}.secrets.env (mode 0600).",
            f"ENVIRONMENT={NAMESPACES[env]}",
            f"COMPOSE_PROJECT_NAME={d.name}-{env}",
            *(f"{key}={ports[key]}" for key in PORT_KEYS),
            f"DATABASE_URL=postgresql://{db}@127.0.0.1:{ports['POSTGRES_PORT']}/{db}",
            f"REDIS_URL=redis://127.0.0.1:{ports['REDIS_PORT']}/0",
            f"DATA_DIR=.stageflow/{env}",
            *(f"{key}={value}" for name, key, value in d.env_values if name == env),
            *(f"{key}={d.debug_off}" for key in (d.debug_keys if env != "dev" else ())),
            # dev too: a setting left unset falls back to what the code derives (the host of a
            # site URL it reads) or to none, and Django refuses a host it does not list
            *(f"{key}={PROBE_HOSTS}" for key in d.hosts_keys),
            *(f"{key}=http://localhost:{ports['APP_PORT']}" for key in d.url_keys),
            "",
        ]
    )


def secrets_example(env: str, service_secrets: tuple[str, ...] = ()) -> str:
    return (
        f"# Copy to env/{env}.secrets.env, chmod 600, fill in (or: inv {env}.secrets --generate).\n"
        "POSTGRES_PASSWORD=\nREDIS_PASSWORD=\n" + "".join(f"{k}=\n" for k in service_secrets)
    )


def files(d: Detection, ports: Ports) -> dict[str, str]:
    """Every file init writes, by path relative to the repository's root, in the order written."""
    values = {"name": d.name, "db": database_name(d), "health": d.health}
    out = {
        "stageflow.toml": stageflow_toml(d),
        "tasks.py": template("tasks.py.tmpl", {}),
    }
    for env in NAMESPACES:
        out[f"env/{env}.env"] = env_file(d, env, ports[env])
        out[f"env/{env}.secrets.env.example"] = secrets_example(env, d.secret_keys)
    out["compose/compose.yml"] = template("compose.yml.tmpl", values)
    for env in NAMESPACES:
        out[f"compose/compose.{env}.yml"] = template(f"compose.{env}.yml.tmpl", values)
    return out


def gitignore_addition(current: str) -> str:
    """The lines .gitignore still lacks, as text to append (empty when it has them all)."""
    have = {line.strip() for line in current.splitlines()}
    missing = [
        line
        for line in GITIGNORE_LINES
        if line not in have and not have.intersection(_COVERED_BY.get(line, ()))
    ]
    if not missing:
        return ""
    lead = "" if not current or current.endswith("\n") else "\n"
    return (
        lead
        + "# stageflow: local state, secrets and gate reports never enter git\n"
        + "\n".join(missing)
        + "\n"
    )
