"""One environment's docker compose project on one host, whose release is the app's image tag."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from deploy.commands import compose as cmd
from deploy.commands.compose import ComposeCommands
from deploy.config import EnvConfig, Project
from deploy.engine import group
from deploy.errors import ConfigError, MigrationError, ServiceError, UsageError
from deploy.hosts import CommandResult, Host
from deploy.runtime.compose_image import CONTAINER_PORT
from deploy.runtime.compose_image import image_tag as image_tag
from deploy.runtime.compose_processes import ComposeProcesses, override
from deploy.secrets import REDACTED, scrub
from deploy.service import Service
from deploy.settings import container_settings, env_file_text
from deploy.state import Layout, history

DEFAULT_IMAGE = "stageflow-app"
APP_SERVICE = "app"
SERVER_SERVICES = ("postgres", "redis")
FRONT_UP = (*SERVER_SERVICES, cmd.FRONT_SERVICE)  # what a switch starts (or keeps) first
# level 1 restarts these; the front keeps its connections (a restart of it would cut them)
RESTARTED = (APP_SERVICE, *SERVER_SERVICES)
STOPS = frozenset(("down", "stop", "restart", "rm", "kill"))  # compose verbs that may stop a server
# compose.yml refuses to render without these (${VAR:?}): check first and say where they go.
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD")
SERVICE_ENV_KEY = "STAGEFLOW_SERVICE_ENV"  # compose.yml's app service: env_file from this path
FRONT_CODE_KEY = "STAGEFLOW_FRONT_CODE"  # compose.yml's front service runs this text
APP_CONTAINER_PORT = CONTAINER_PORT  # the image's gunicorn binds it; the front connects to it
HEALTH = "/healthz"  # compose.yml's healthcheck path when no [service] names one
DRAIN_S = 30  # connections to the replaced release may finish for this long (gunicorn's default)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_GOOD_KINDS = ("deploy", "rollback-1", "rollback-2", "rollback-3", "emergency", "restart")


# -- rendering the files offline (tests, guards): the subset of compose's rules our files use ------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>\{[^}]*\}?))"
)


def interpolate(text: str, variables: Mapping[str, str], *, source: str = "compose file") -> str:
    """Resolve $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}, ${VAR:+r}, ${VAR+r}."""

    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        if m["invalid"] is not None:
            raise ConfigError(
                f"{source}: invalid interpolation ${m['invalid']}",
                hint="write ${NAME}, ${NAME:-default} or $$ for a literal $",
            )
        name = m["braced"] or m["named"]
        op, arg = m["op"], m["arg"] or ""
        value = variables.get(name)
        is_set, non_empty = value is not None, bool(value)
        present = non_empty if op and op.startswith(":") else is_set
        if op in (":-", "-"):
            return value if present and value is not None else arg
        if op in (":?", "?"):
            if not present or value is None:
                raise ConfigError(f"{source}: {name} is required: {arg or 'it is not set'}")
            return value
        if op in (":+", "+"):
            return arg if present else ""
        return value or ""

    return _VAR.sub(one, text)


def interpolate_tree(node: Any, variables: Mapping[str, str], *, source: str) -> Any:
    """Interpolate every string value (compose leaves keys alone)."""
    if isinstance(node, str):
        return interpolate(node, variables, source=source)
    if isinstance(node, list):
        return [interpolate_tree(v, variables, source=source) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, variables, source=source) for k, v in node.items()}
    return node


_REPLACED_LISTS = frozenset({"command", "entrypoint", "test"})
_MAPPING_LISTS = frozenset({"environment", "labels"})


def _as_mapping(value: Any) -> Any:
    if isinstance(value, list):  # KEY=value list form
        return dict(str(item).partition("=")[::2] for item in value)
    return value


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Compose's merge: mappings recursively, argv lists replaced, other lists appended uniquely."""
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        if key in _MAPPING_LISTS:
            old, value = _as_mapping(old), _as_mapping(value)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge(old, value)
        elif isinstance(old, list) and isinstance(value, list) and key not in _REPLACED_LISTS:
            out[key] = old + [v for v in value if v not in old]
        else:
            out[key] = value
    return out


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist", hint="restore it from the repository") from None
    return parse_yaml(text, path.name)


def parse_yaml(text: str, name: str) -> dict[str, Any]:
    import yaml  # loaded only when files are rendered offline: `inv --list` stays fast

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: a compose file must be a mapping at the top")
    return data


def render_files(files: Sequence[Path], variables: Mapping[str, str]) -> dict[str, Any]:
    """Interpolate each file, then merge them in order (what `docker compose config` does)."""
    model: dict[str, Any] = {}
    for path in files:
        model = merge(model, interpolate_tree(load_yaml(path), variables, source=path.name))
    return model


def compose_variables(cfg: EnvConfig) -> dict[str, str]:
    """What compose interpolates from: the env file's keys, with every secret a placeholder."""
    variables = dict(cfg.values)
    variables.update(dict.fromkeys(cfg.declared_secrets, REDACTED))
    return variables


def render(root: Path, cfg: EnvConfig, *, files: Sequence[str] | None = None) -> dict[str, Any]:
    """An environment's compose model as compose would see it, secrets left out."""
    names = files if files is not None else cmd.compose_files(cfg.name)
    return render_files([root / f for f in names], compose_variables(cfg))


# -- isolation ------------------------------------------------------------------------------------


def _port_numbers(spec: str) -> list[int]:
    low, _, high = spec.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        return []
    return list(range(int(low), int(high or low) + 1))


def published_ports(entry: Any) -> list[int]:
    """Host ports one `ports:` entry publishes (none when the engine picks them)."""
    if isinstance(entry, dict):
        published = entry.get("published")
        return _port_numbers(str(published)) if published not in (None, "") else []
    if isinstance(entry, int):
        return []
    parts = str(entry).split("/", 1)[0].rsplit(":", 2)
    return _port_numbers(parts[-2]) if len(parts) >= 2 else []


def _bind_source(entry: Any) -> str | None:
    if isinstance(entry, dict):
        return str(entry.get("source")) if entry.get("type") == "bind" else None
    source = str(entry).split(":", 1)[0]
    return source if source.startswith(("/", ".", "~")) else None


def _names(envs: Iterable[str]) -> str:
    envs = list(dict.fromkeys(envs))
    return " and ".join(envs) if len(envs) < 3 else ", ".join(envs[:-1]) + " and " + envs[-1]


def compose_isolation_problems(rendered: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per thing two environments share: project name, host port, named volume, bind."""
    problems: list[str] = []
    projects: dict[str, list[str]] = {}
    ports: dict[int, list[tuple[str, str]]] = {}
    volumes: dict[str, list[tuple[str, str]]] = {}
    binds: dict[str, list[tuple[str, str]]] = {}
    for env, model in rendered.items():
        project = model.get("name")
        if not isinstance(project, str) or not project:
            problems.append(f"{env}: its compose files set no project name (top-level name:)")
            project = ""
        else:
            projects.setdefault(project, []).append(env)
        for service, spec in (model.get("services") or {}).items():
            for entry in (spec or {}).get("ports") or []:
                for port in published_ports(entry):
                    ports.setdefault(port, []).append((env, service))
            for entry in (spec or {}).get("volumes") or []:
                source = _bind_source(entry)
                if source:
                    binds.setdefault(source, []).append((env, service))
        for key, spec in (model.get("volumes") or {}).items():
            spec = spec or {}
            # compose prefixes an unnamed volume with the project; external ones keep their key
            name = spec.get("name") or (key if spec.get("external") else f"{project}_{key}")
            volumes.setdefault(str(name), []).append((env, key))
    for project, envs in projects.items():
        if len(set(envs)) > 1:
            problems.append(f"{_names(envs)} share the compose project name {project!r}")
    for what, table in (
        ("publish host port", ports),
        ("use the named volume", volumes),
        ("bind-mount", binds),
    ):
        for item, users in table.items():
            envs = [env for env, _ in users]
            if len(set(envs)) > 1:
                who = ", ".join(f"{env} {owner}" for env, owner in users)
                verb = "both " + what if len(set(envs)) == 2 else what
                problems.append(f"{_names(envs)} {verb} {item!r} ({who})")
    return problems


# -- reading compose output -----------------------------------------------------------------------


def parse_ps(stdout: str) -> list[dict[str, Any]]:
    """`ps --format json`: a JSON array (compose < 2.21) or one object per line (newer)."""
    text = stdout.strip()
    if not text:
        return []
    try:
        if text.startswith("["):
            data = json.loads(text)
            rows = data if isinstance(data, list) else [data]
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        raise ServiceError(
            "`docker compose ps` did not print JSON",
            hint="use docker compose v2 (the `docker compose` plugin)",
        ) from None
    if not all(isinstance(r, dict) for r in rows):
        raise ServiceError("`docker compose ps` printed JSON that is not a list of containers")
    # `ps` lists the one-off containers of `run` (a migration, the service's own tool) as the
    # app service too; one a killed deploy left running is no app container that serves
    return [r for r in rows if "com.docker.compose.oneoff=True" not in str(r.get("Labels", ""))]


def previous_release(entries: Sequence[Mapping[str, Any]], current: str | None) -> str | None:
    """The newest successful release other than current, from history oldest first."""
    for entry in reversed(entries):
        release = entry.get("release")
        if (
            entry.get("status") == "success"
            and entry.get("kind", "deploy") in _GOOD_KINDS
            and release
            and release != current
        ):
            return str(release)
    return None


def check_release(release: str) -> str:
    if not _TAG.match(release):
        raise UsageError(
            f"release {release!r} cannot be an image tag",
            hint="use letters, digits, '_', '.' and '-' (at most 128), not starting with . or -",
        )
    return release


# -- the project ----------------------------------------------------------------------------------


class ComposeProject:
    """Runs one environment's compose project on one host through Host.run."""

    def __init__(
        self,
        cfg: EnvConfig,
        host: Host,
        *,
        root: str | Path | None = None,
        image: str = DEFAULT_IMAGE,
        wait_timeout_s: int = 120,
        service: Service | None = None,
        settings_path: str | None = None,
        processes_path: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.host = host
        # the service's settings reach its containers through an env file compose reads
        # (${STAGEFLOW_SERVICE_ENV} in compose.yml), written before each command that starts one
        self.service = service
        self.settings_path = settings_path
        # The project's root on that host: compose/ and env/ are read relative to it.
        self.root = str(root if root is not None else cfg.file.parent.parent)
        self.image = image
        self.wait_timeout_s = wait_timeout_s
        self._engine_checked = False
        self._servers_up = False
        # [service.processes]: one compose service each, in a file written before the first
        # compose command and passed to every one (compose_processes)
        self.processes = ComposeProcesses(self)
        self.processes_path = processes_path
        self._processes_written = False

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def _secrets_rel(self) -> str:
        return f"env/{self.cfg.name}.secrets.env"

    def commands(self) -> ComposeCommands:
        secrets_present = self.host.exists(str(PurePosixPath(self.root, self._secrets_rel)))
        files = cmd.compose_files(self.cfg.name)
        if self.processes.declared and self.processes_path:
            files = (*files, self.processes_path)
        return cmd.ComposeCommands(
            project=self.cfg.compose_project,
            env_file=f"env/{self.cfg.name}.env",
            files=files,
            secrets_file=self._secrets_rel if secrets_present else None,
        )

    def _write_processes(self) -> None:
        """The processes' compose file, from the app service as the environment's compose files
        (on the project's host) define it, once per operation."""
        if self._processes_written or not (self.processes.declared and self.processes_path):
            return
        model: dict[str, Any] = {}
        for rel in cmd.compose_files(self.cfg.name):
            path = str(PurePosixPath(self.root, rel))
            text = self.host.read_text(path)
            if text is None:
                raise ConfigError(f"{rel} does not exist", hint="restore it from the repository")
            model = merge(model, parse_yaml(text, PurePosixPath(rel).name))
        app = (model.get("services") or {}).get(APP_SERVICE) or {}
        text = override(app, self.processes.declared)
        self.host.write_text(self.processes_path, text, mode=0o600)
        self._processes_written = True

    def scrub(self, text: str) -> str:
        return scrub(text, self.cfg.secret_values())

    def check_engine(self) -> None:
        """Fail closed, in one line, when docker or its engine or the compose plugin is missing."""
        if self._engine_checked:
            return
        res = self.host.run(cmd.engine_info(), check=False, timeout=30)
        if not res.ok:
            detail = "the docker client is not installed" if res.exit_code == 127 else res.tail(1)
            raise ServiceError(
                f'no Docker engine answers at {self.host.name}; use runtime = "native"',
                hint=f"or start Docker there: {self.scrub(detail)}",
            )
        res = self.host.run(cmd.compose_version(), check=False, timeout=30)
        if not res.ok:
            raise ServiceError(
                f'docker compose is not installed at {self.host.name}; use runtime = "native"',
                hint="or install the compose plugin (docker-compose-plugin)",
            )
        self._engine_checked = True

    def _run_env(self, commands: ComposeCommands, extra: Mapping[str, str]) -> dict[str, str]:
        missing = [k for k in REQUIRED_SECRETS if not self.cfg.secret(k)]
        if missing:
            raise ConfigError(
                f"{self.cfg.name} has no {missing[0]}",
                hint=f"set it in env/{self.cfg.name}.secrets.env, mode 0600",
            )
        env = dict(extra)
        if self.host.is_local:
            # As compose's own environment, never argv; like load_env, they win over the file.
            env.update({k: s.reveal() for k, s in self.cfg.secrets})
        elif commands.secrets_file is None:
            # Host.run would put them on the remote command line; only a file there is safe.
            raise ConfigError(
                f"{self._secrets_rel} is missing on {self.host.name}",
                hint="copy it there with mode 0600; compose reads secrets from it",
            )
        return env

    def run(
        self,
        build: Callable[[ComposeCommands], list[str]],
        *,
        release: str | None = None,
        commit: str | None = None,
        check: bool = False,
        timeout: float | None = None,
    ) -> CommandResult:
        """Build one compose argv (build(commands) -> list[str]) and run it in the project root."""
        # Input and config first: they fail the same way with or without an engine.
        extra = {"STAGEFLOW_IMAGE": self.image, FRONT_CODE_KEY: front_code()}
        if release is not None:
            extra["STAGEFLOW_RELEASE"] = check_release(release)
        if commit:
            extra["STAGEFLOW_COMMIT"] = commit
        commands = self.commands()
        env = self._run_env(commands, extra)
        self._write_processes()
        if release is not None and self.service is not None and self.settings_path:
            self._write_settings(release)
            env[SERVICE_ENV_KEY] = self.settings_path
        self.check_engine()
        argv = build(commands)
        if STOPS.intersection(argv[len(commands.base()) :][:1]):
            self._servers_up = False  # the servers may be down after it: servers_up asks again
        return self.host.run(argv, check=check, timeout=timeout, env=env, cwd=self.root)

    def _write_settings(self, release: str) -> None:
        assert self.service is not None and self.settings_path
        settings = container_settings(self.cfg, self.service, release=release)
        text = env_file_text(settings, source=f"{self.cfg.name}'s settings")
        self.host.write_text(self.settings_path, text, mode=0o600)

    def servers_up(self, *, release: str | None = None) -> None:
        """Start PostgreSQL and Redis and wait until both are healthy, once per operation: a
        deploy reads the ledger, backs up and migrates, each with the servers up, and compose's
        `up --wait` of running servers still costs a whole compose call. A server that dies
        after this fails the command that needed it, which fails the operation."""
        if self._servers_up:
            return
        res = self.run(
            lambda c: c.up(services=SERVER_SERVICES, wait_timeout_s=self.wait_timeout_s),
            release=release,
        )
        if not res.ok:
            raise self.failed("starting postgres and redis", res)
        self._servers_up = True

    def failed(self, what: str, res: CommandResult) -> ServiceError:
        return ServiceError(
            f"{self.cfg.name}: {what} failed (exit {res.exit_code}): {self.scrub(res.tail())}",
            hint=f"inspect with `docker compose -p {self.cfg.compose_project} logs`",
        )

    # -- operations ---------------------------------------------------------------------------
    def validate(self) -> None:
        """`docker compose config --quiet`: the files and their interpolation, nothing started."""
        res = self.run(lambda c: c.config(), timeout=60)
        if not res.ok:
            raise ConfigError(
                f"{self.cfg.name}: compose files do not validate: {self.scrub(res.tail())}",
                hint="fix compose/compose.yml or the environment's override",
            )

    def pull(self, release: str) -> None:
        res = self.run(lambda c: c.pull(services=[APP_SERVICE]), release=release)
        if not res.ok:
            raise self.failed(f"pulling {cmd.image_ref(self.image, release)}", res)

    def up(self, release: str, *, commit: str | None = None) -> list[dict[str, Any]]:
        """Switch to release without refusing a connection: its container starts beside the
        serving one; once the service's health and ready paths answer there, the front sends new
        connections to it; the old containers finish their connections and stop (SIGTERM:
        gunicorn drains), then they are removed, and compose's own healthcheck must call the new
        one healthy before this returns. A container of release that serves alone already is kept
        (and the front pointed at it once it answers)."""
        started = self.run(
            lambda c: c.up(services=FRONT_UP, wait_timeout_s=self.wait_timeout_s),
            release=release,
            commit=commit,
        )
        if not started.ok:
            raise self.failed("starting postgres, redis and the front", started)
        rows = self.app_rows()
        running = [r for r in rows if r.get("State") == "running"]
        self._remove([r for r in rows if r not in running], stop=False)
        if len(running) == 1 and image_tag(str(running[0].get("Image", ""))) == release:
            self._await(running[0], release, healthy=True)  # a level 1 restart: up --wait's verdict
            self._point_front(running[0], release)
            self.processes.switch(release, commit=commit)
            return self.status()
        # where the front goes back to when the new release's processes do not start
        back = self.serving_row(running) if self.processes.declared else None
        new = self._switch_to_new(release, commit, running)
        self._start_processes(release, commit, new, back)
        self.processes.retire(release)  # the previous release's, once release's started
        self._remove(running, stop=True)
        # compose's healthcheck first runs an interval after the start: its verdict is awaited
        # here, after the switch and the old containers' drain, not before them
        rows = self.status()
        row = next((r for r in rows if r.get("ID") == new.get("ID")), {})
        if row.get("State") != "running" or row.get("Health") not in (None, "", "healthy"):
            self._await(row, release, healthy=True)
            rows = self.status()
        return rows

    def _switch_to_new(
        self, release: str, commit: str | None, running: Sequence[Mapping[str, Any]]
    ) -> Mapping[str, Any]:
        """A container of release beside the running ones, and the front moved to it once it
        answers; when it does not, it goes and the old release still serves."""
        res = self.run(
            lambda c: c.beside(APP_SERVICE, count=len(running) + 1), release=release, commit=commit
        )
        new = [r for r in self.app_rows() if r.get("ID") not in {r.get("ID") for r in running}]
        if not res.ok or len(new) != 1:
            self._remove(new, stop=True)
            raise self.failed(f"starting release {release}", res)
        try:
            self._await(new[0], release, healthy=False)
            self._point_front(new[0], release)
        except ServiceError:
            self._remove(new, stop=True)  # the front never moved: the old release still serves
            raise
        return new[0]

    def _start_processes(
        self,
        release: str,
        commit: str | None,
        new: Mapping[str, Any],
        back: Mapping[str, Any] | None,
    ) -> None:
        """release's processes, now that it serves; when one does not start, the front goes back
        to the container that served (not stopped yet, nor its processes) and the new one goes."""
        try:
            self.processes.start(release, commit=commit)
        except ServiceError:
            try:
                if back is not None:
                    self._point_front(back, image_tag(str(back.get("Image", ""))) or "")
                self._remove([new], stop=True)
            except ServiceError:
                pass  # the deploy's revert switches back from where this stopped
            raise

    def restarted(self) -> tuple[str, ...]:
        """What level 1 restarts: the app, the servers and the service's processes."""
        return (*RESTARTED, *self.processes.services)

    def with_processes(self, *services: str) -> list[str]:
        """services and the service's processes (what stops with the app)."""
        return [*services, *self.processes.services]

    def app_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.status() if r.get("Service") == APP_SERVICE]

    def _fresh(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """row as `ps` shows it now; empty when its container is gone."""
        return next((r for r in self.app_rows() if r.get("ID") == row.get("ID")), {})

    def _await(self, row: Mapping[str, Any], release: str, *, healthy: bool) -> None:
        """The container running (healthy=False: whatever its healthcheck has not said yet) or
        called healthy by compose.yml's healthcheck; one that exits or turns unhealthy fails at
        once."""
        deadline = time.monotonic() + self.wait_timeout_s
        now: Mapping[str, Any] = row  # the `ps` that found it is the first look
        while True:
            state, health = now.get("State"), now.get("Health")
            done = health in (None, "", "healthy") or (not healthy and health == "starting")
            if state == "running" and done:
                return
            if state != "running" or health == "unhealthy" or time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.cfg.name}: release {release} did not become healthy: its container "
                    f"is {health if state == 'running' else state or 'gone'}",
                    hint=f"inspect with `inv {self.cfg.name}.logs`; "
                    + ("a deploy switches back to the previous release" if healthy
                       else "the previous release serves"),
                )  # fmt: skip
            time.sleep(0.5)
            now = self._fresh(row)

    def _point_front(self, row: Mapping[str, Any], release: str) -> None:
        """Move the front to row's container once it answers health and ready, in rounds, so a
        container that exited fails at once instead of at the end of the wait."""
        # by its short id, which the engine's DNS answers on the project network like the name;
        # a name read back from `ps` may have passed through the secrets scrubber, an id cannot
        target = f"{row.get('ID')}:{APP_CONTAINER_PORT}"
        paths = [self.service.health, self.service.ready_path] if self.service else [HEALTH]
        deadline = time.monotonic() + self.wait_timeout_s
        while True:
            res = self.run(
                lambda c: cmd.front_switch(
                    c, target, paths=list(dict.fromkeys(paths)), ready_s=5, drain_s=DRAIN_S
                ),
                timeout=DRAIN_S + 60,
            )
            if res.ok:
                return
            state = self._fresh(row)
            gone = state.get("State") != "running" or state.get("Health") == "unhealthy"
            if gone or time.monotonic() > deadline:
                why = f"its container is {state.get('State') or 'gone'}"
                if state.get("State") == "running":
                    why = f"the front says: {self.scrub(res.tail(1))}"
                raise ServiceError(
                    f"{self.cfg.name}: release {release} did not become ready: {why}",
                    hint=f"inspect with `inv {self.cfg.name}.logs`; the previous release serves",
                )

    def _remove(self, rows: Sequence[Mapping[str, Any]], *, stop: bool) -> None:
        ids = [str(r["ID"]) for r in rows if r.get("ID")]
        if not ids:
            return
        if stop:
            self.host.run(cmd.stop_containers(ids, timeout_s=DRAIN_S), check=False, timeout=120)
        res = self.host.run(cmd.remove_containers(ids), check=False, timeout=120)
        if not res.ok:
            raise self.failed("removing the replaced app containers", res)

    def down(self, *, volumes: bool = False) -> None:
        """Stop the project; its data stays unless volumes=True (never on production)."""
        if volumes and self.cfg.environment == "production":
            raise UsageError(
                f"{self.cfg.name} refuses to remove its data volumes",
                hint="production data goes only through a backup and a restore",
            )
        res = self.run(lambda c: c.down(volumes=volumes))
        if not res.ok:
            raise self.failed("compose down", res)

    def status(self) -> list[dict[str, Any]]:
        """One parsed `ps --format json` row per container (Service, Image, State, Health, ...)."""
        res = self.run(lambda c: c.ps(all_states=True), timeout=60)
        if not res.ok:
            raise self.failed("compose ps", res)
        return parse_ps(res.stdout)

    def current_release(self) -> str | None:
        row = self.serving_row(self.status())
        return image_tag(str(row.get("Image", ""))) if row else None

    def serving_row(self, rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
        """The running app container new connections go to: the only one, or (while a switch
        runs, or after one was cut short) the one the front names."""
        running = [
            r for r in rows if r.get("Service") == APP_SERVICE and r.get("State") == "running"
        ]
        if len(running) < 2:
            return running[0] if running else None
        res = self.run(cmd.front_target, timeout=60)
        target = ""
        if res.ok:
            try:
                target = str(json.loads(res.stdout.strip().splitlines()[-1]).get("target", ""))
            except (ValueError, IndexError, AttributeError):
                target = ""
        host = target.rpartition(":")[0]
        return next((r for r in running if r.get("ID") == host), running[-1])

    def logs(self, *, tail: int = 100, services: Sequence[str] = ()) -> str:
        res = self.run(lambda c: c.logs(services=services, tail=tail), timeout=60)
        if not res.ok:
            raise self.failed("compose logs", res)
        return self.scrub(res.stdout)

    def exec(self, argv: Sequence[str], *, service: str = APP_SERVICE) -> CommandResult:
        return self.run(lambda c: c.exec(service, argv))

    def migrate(self, argv: Sequence[str], *, release: str | None = None) -> CommandResult:
        """Run the migration command in the live app container, or with release's image.

        With a release, the servers are started (and waited for) and the command runs in a
        one-off container of that image, so a release's migrations can run before it is live.
        """
        if release is None:
            res = self.exec(argv)
        else:
            self.servers_up(release=release)
            res = self.run(lambda c: c.run(APP_SERVICE, argv, no_deps=True), release=release)
        if not res.ok:
            raise MigrationError(
                f"{self.cfg.name}: migration command exited {res.exit_code}: "
                f"{self.scrub(res.tail())}",
                hint="fix the migration, then deploy again",
            )
        return res

    def restart(self) -> list[dict[str, Any]]:
        """Level 1: restart the current release's app and servers (not the front), then wait for
        health."""
        current = self.current_release()
        if current is None:
            raise ServiceError(
                f"{self.cfg.name} has no running release to restart", hint="deploy one first"
            )
        res = self.run(lambda c: c.restart(services=self.restarted()))
        if not res.ok:
            raise self.failed("compose restart", res)
        return self.up(current)

    def rollback(self, *, level: int = 2, to: str | None = None) -> str:
        """Level 1 restarts; level 2 starts the previous good image tag (or `to`). Returns the release."""
        if level == 1:
            self.restart()
            return self.current_release() or ""
        if level != 2:
            raise UsageError(
                f"the compose runtime does level 1 and 2, not {level}",
                hint="level 3 restores a backup: run the environment's rollback task",
            )
        current = self.current_release()
        target = to or previous_release(history(self.host, Layout(str(self.cfg.data_dir))), current)
        if not target:
            raise ServiceError(
                f"{self.cfg.name} has no previous good release to go back to",
                hint="name one with --to TAG",
            )
        self.up(target)
        return target


# -- the project of an environment, and its commands as an operator reads them --------------------


def front_code() -> str:
    """The front's program (compose_front.py), which compose passes to the front container."""
    return Path(__file__).with_name("compose_front.py").read_text(encoding="utf-8")


def place(proj: Project, name: str) -> tuple[Host, Layout]:
    """The environment's first host (it runs the project and keeps lock and history) and layout."""
    return group.primary(proj, name)


def project_for(
    proj: Project, name: str, *, host: Host | None = None, layout: Layout | None = None
) -> ComposeProject:
    """The environment's compose project on its first host. Locally the project root is the working
    tree; remotely it is <home>/compose, refreshed with the compose files and the env file."""
    if host is None or layout is None:
        host, layout = place(proj, name)
    env = proj.env(name)
    settings = {
        "service": proj.service,
        "settings_path": layout.service_env,
        "processes_path": layout.compose_processes,
    }
    if host.is_local:
        return ComposeProject(env, host, root=proj.root, **settings)
    root = str(PurePosixPath(layout.home, "compose"))
    for rel in (*cmd.compose_files(name), f"env/{name}.env"):
        host.put_file(proj.root / rel, f"{root}/{rel}")
    return ComposeProject(env, host, root=root, **settings)


def release_env(
    rt: ComposeProject, release: str | None, commit: str | None = None
) -> dict[str, str]:
    """What ComposeProject.run adds to compose's environment besides secrets: no secret here."""
    out = {"STAGEFLOW_IMAGE": rt.image}
    if release is not None:
        out["STAGEFLOW_RELEASE"] = release
    if commit:
        out["STAGEFLOW_COMMIT"] = commit
    if release is not None and rt.service is not None and rt.settings_path:
        out[SERVICE_ENV_KEY] = rt.settings_path  # the file's path; its values are never shown
    return out


def switch_shown(rt: ComposeProject, release: str, commit: str | None = None) -> list[str]:
    """The switch to release as an operator would type it (ComposeProject.up); the containers are
    named as they will be known: the plan asks no engine."""
    c, env = rt.commands(), release_env(rt, release, commit)
    paths = [rt.service.health, rt.service.ready_path] if rt.service else [HEALTH]
    new, old = "<new app container>", "<old app container>"
    switch = cmd.front_switch(
        c,
        f"{new}:{APP_CONTAINER_PORT}",
        paths=list(dict.fromkeys(paths)),
        ready_s=5,
        drain_s=DRAIN_S,
    )
    # the release's processes start once it serves; the previous release's stop then
    processes = [
        shown(argv, env if i == 0 else None) for i, argv in enumerate(rt.processes.switch_argv(c))
    ]
    return [
        shown(c.up(services=FRONT_UP, wait_timeout_s=rt.wait_timeout_s), env),
        shown(c.beside(APP_SERVICE, count=2), env),
        shown(switch),
        *processes,
        shown(cmd.stop_containers([old], timeout_s=DRAIN_S)),
        shown(cmd.remove_containers([old])),
    ]


def shown(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """One command as an operator would type it: VAR=value assignments (never secrets), argv."""
    return shlex.join([*(f"{k}={v}" for k, v in (env or {}).items()), *argv])
