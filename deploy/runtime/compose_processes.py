"""The service's other processes ([service.processes]) on the compose runtime.

Each process is a compose service of its own, `proc-<name>`, declared in a file the runtime
writes beside the service's settings (`compose.processes.yml`, passed as one more `-f` to every
compose command of the project, so its containers are never orphans): the app service's
definition as the environment's compose files give it (the image and its release tag, the
`env_file` of the service's settings, `environment`, the servers it depends on, restart policy,
resources, logging) without what makes it the web service (published ports, healthcheck), with
the process's argv as its command. The file holds `${...}` references only, never a value.

A switch to a release starts its processes beside the running ones once its app container serves;
each must still run CONTAINER_SETTLE_S after its start (one that exited, or that the engine
restarted, refuses the release with the last lines it printed, and the containers started for it
go); then the other releases' process containers stop (TERM, KILL after PROCESS_GRACE_S) and go.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from deploy.commands import compose as cmd
from deploy.commands.compose import ComposeCommands
from deploy.config import EnvConfig
from deploy.errors import ConfigError, ServiceError
from deploy.hosts import CommandResult, Host
from deploy.releases import PROCESS_GRACE_S
from deploy.runtime.compose_image import image_tag
from deploy.service import Service

# a container's CPU time is not read here: each new one must simply keep running this long
CONTAINER_SETTLE_S = 1.0

PREFIX = "proc-"  # a process's compose service: proc-<name>
# what makes the app service the web one: a process publishes nothing and has no HTTP health
_WEB_ONLY = ("ports", "expose", "healthcheck", "container_name", "build", "scale")
_HEADER = (
    "# Made by stageflow from [service.processes] in stageflow.toml: one compose service per\n"
    "# process, the app service's definition with the process's command. Written before each\n"
    "# compose command; edit stageflow.toml or compose/, never this file.\n"
)


def service_of(name: str) -> str:
    return f"{PREFIX}{name}"


def name_of(service: str) -> str:
    return service.removeprefix(PREFIX)


def override(app: Mapping[str, Any], processes: Sequence[tuple[str, Sequence[str]]]) -> str:
    """The compose file of the processes, from the app service's (uninterpolated) definition."""
    import yaml  # loaded only when a service has processes: `inv --list` stays fast

    if not isinstance(app, Mapping) or not app.get("image"):
        raise ConfigError(
            "the compose files define no app service with an image",
            hint="restore the app service in compose/compose.yml",
        )
    base = {k: v for k, v in app.items() if k not in _WEB_ONLY}
    if isinstance(base.get("deploy"), Mapping):
        base["deploy"] = {k: v for k, v in base["deploy"].items() if k != "replicas"}
    services = {
        # compose interpolates a command too: a literal $ of the argv is written $$
        service_of(name): {**base, "command": [a.replace("$", "$$") for a in argv]}
        for name, argv in processes
    }
    return _HEADER + yaml.safe_dump({"services": services}, sort_keys=False)


class _Project(Protocol):
    """What the processes need of the environment's ComposeProject."""

    cfg: EnvConfig
    host: Host
    service: Service | None

    def run(
        self,
        build: Callable[[ComposeCommands], list[str]],
        *,
        release: str | None = None,
        commit: str | None = None,
        check: bool = False,
        timeout: float | None = None,
    ) -> CommandResult: ...

    def status(self) -> list[dict[str, Any]]: ...

    def failed(self, what: str, res: CommandResult) -> ServiceError: ...

    def scrub(self, text: str) -> str: ...


class ComposeProcesses:
    """The process containers of one environment's compose project."""

    def __init__(self, project: _Project) -> None:
        self.project = project

    @property
    def declared(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        service = self.project.service
        return service.processes if service is not None else ()

    @property
    def services(self) -> list[str]:
        return [service_of(name) for name, _ in self.declared]

    def rows(self, rows: Sequence[Mapping[str, Any]] | None = None) -> list[Mapping[str, Any]]:
        """The `ps` rows of the declared processes' containers, whatever their release."""
        if not self.declared:
            return []
        wanted = set(self.services)
        return [r for r in (self.project.status() if rows is None else rows)
                if r.get("Service") in wanted]  # fmt: skip

    def switch(self, release: str, *, commit: str | None = None) -> None:
        """release's processes running, every other release's gone (a level 1 restart, a
        switch back to a release whose app container serves already)."""
        self.start(release, commit=commit)
        self.retire(release)

    def start(self, release: str, *, commit: str | None = None) -> None:
        """Start each declared process release does not run yet, beside what runs; a stopped
        container (of any release) goes first, as compose would start it again instead. Returns
        once each started one has run CONTAINER_SETTLE_S; one that did not refuses the release,
        and only the containers started here go."""
        if not self.declared:
            return
        rows = self.rows()
        running = [r for r in rows if r.get("State") == "running"]
        self._remove([r for r in rows if r not in running], stop=False)
        counts = {
            s: sum(1 for r in running if r.get("Service") == s) + 1
            for s in self.services
            if not any(
                r.get("Service") == s and image_tag(str(r.get("Image", ""))) == release
                for r in running
            )
        }
        if not counts:
            return
        res = self.project.run(lambda c: c.scale_up(counts), release=release, commit=commit)
        before = {r.get("ID") for r in running}
        new = [r for r in self.rows() if r.get("ID") not in before]
        try:
            if not res.ok:
                raise self.project.failed(f"starting the processes of release {release}", res)
            self._settle(new, release)
        except ServiceError:
            self._remove(new, stop=True)
            raise

    def _settle(self, new: Sequence[Mapping[str, Any]], release: str) -> None:
        """Each new container runs, unrestarted, until CONTAINER_SETTLE_S after its start."""
        deadline = time.monotonic() + CONTAINER_SETTLE_S
        ids = [str(r.get("ID")) for r in new]
        while True:
            res = self.project.host.run(cmd.container_states(ids), check=False, timeout=60)
            lines = res.stdout.strip().splitlines()
            if not res.ok or len(lines) != len(ids):
                raise self.project.failed(f"reading the process containers of {release}", res)
            for row, line in zip(new, lines, strict=True):
                state, restarts, code = (line.split() + ["", "", ""])[:3]
                if state != "running" or restarts not in ("", "0"):
                    raise self._refused(row, release, state, code)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.2)

    def _refused(self, row: Mapping[str, Any], release: str, state: str, code: str) -> ServiceError:
        p, name = self.project, name_of(str(row.get("Service")))
        res = p.host.run(cmd.container_logs(str(row.get("ID")), tail=2), check=False, timeout=60)
        lines = (res.stdout + "\n" + res.stderr).splitlines()
        said = list(dict.fromkeys(ln.strip() for ln in lines if ln.strip()))  # once each
        if state in ("running", "restarting"):  # exit code 0 while it runs again
            how = "keeps exiting" + (f" (exit code {code})" if state == "restarting" else "")
        else:
            how = (
                f"exited (exit code {code})" if state in ("exited", "dead") else state or "is gone"
            )
        return ServiceError(
            f"{p.cfg.name}: process {name} of release {release} did not start: its container "
            f"{how}: {p.scrub(' | '.join(said[-2:]) or 'no output')}",
            hint=f"fix `{name}` in [service.processes] or its code, then deploy again; the "
            "previous release and its processes still run",
        )

    def retire(self, release: str) -> None:
        """Stop and remove the process containers of every release but release."""
        self._remove(
            [r for r in self.rows() if image_tag(str(r.get("Image", ""))) != release], stop=True
        )

    def switch_argv(self, c: ComposeCommands) -> list[list[str]]:
        """A switch's process commands as a plan shows them (the first runs with the release's
        environment); the containers are named as they will be known: a plan asks no engine."""
        if not self.declared:
            return []
        new, old = ["<new process containers>"], ["<old process containers>"]
        return [
            c.scale_up({s: 2 for s in self.services}),
            cmd.container_states(new),
            cmd.stop_containers(old, timeout_s=int(PROCESS_GRACE_S)),
            cmd.remove_containers(old),
        ]

    def _remove(self, rows: Sequence[Mapping[str, Any]], *, stop: bool) -> None:
        ids = [str(r["ID"]) for r in rows if r.get("ID")]
        if not ids:
            return
        host = self.project.host
        if stop:  # TERM lets a worker finish its job
            grace = int(PROCESS_GRACE_S)
            host.run(cmd.stop_containers(ids, timeout_s=grace), check=False, timeout=120)
        res = host.run(cmd.remove_containers(ids), check=False, timeout=120)
        if not res.ok:
            raise self.project.failed("removing process containers", res)

    def status(
        self, rows: Sequence[Mapping[str, Any]], current: str | None
    ) -> list[dict[str, Any]]:
        """A row per process container (its release and state), and one `down` row for each
        process the serving release should run and does not."""
        out = [
            {
                "name": name_of(str(r.get("Service"))),
                "release": image_tag(str(r.get("Image", ""))),
                "pid": None,
                "up": r.get("State") == "running",
                "state": r.get("State"),
                "container": r.get("ID"),
            }
            for r in self.rows(rows)
        ]
        if current:
            have = {p["name"] for p in out if p["release"] == current}
            out += [
                {"name": n, "release": current, "pid": None, "up": False, "state": None,
                 "container": None}
                for n, _ in self.declared
                if n not in have
            ]  # fmt: skip
        return sorted(out, key=lambda p: (p["name"], str(p["release"])))
