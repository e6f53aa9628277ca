"""docker compose argv builders: one environment's project, files and env files; nothing runs here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DOCKER = "docker"
BASE_FILE = "compose/compose.yml"


def compose_files(env: str) -> tuple[str, str]:
    """The two compose files of an environment, relative to the project root."""
    return (BASE_FILE, f"compose/compose.{env}.yml")


def base(
    project: str, env_file: str, files: Sequence[str], *, secrets_file: str | None = None
) -> list[str]:
    """`docker compose -p P --env-file E [--env-file S] -f F...`: every compose command starts so."""
    argv = [DOCKER, "compose", "-p", project, "--env-file", env_file]
    if secrets_file:
        # A later --env-file wins; secrets only add keys a committed file may not hold.
        argv += ["--env-file", secrets_file]
    for f in files:
        argv += ["-f", f]
    return argv


@dataclass(frozen=True)
class ComposeCommands:
    """The builders for one compose project (an environment on one host)."""

    project: str
    env_file: str
    files: tuple[str, ...]
    secrets_file: str | None = None

    def base(self) -> list[str]:
        return base(self.project, self.env_file, self.files, secrets_file=self.secrets_file)

    def up(
        self, *, services: Sequence[str] = (), wait: bool = True, wait_timeout_s: int | None = None
    ) -> list[str]:
        argv = [*self.base(), "up", "-d"]
        if wait:
            argv.append("--wait")
            if wait_timeout_s is not None:
                argv += ["--wait-timeout", str(wait_timeout_s)]
        return [*argv, "--remove-orphans", *services]

    def pull(self, *, services: Sequence[str] = ()) -> list[str]:
        return [*self.base(), "pull", "--quiet", *services]

    def ps(self, *, all_states: bool = False) -> list[str]:
        return [*self.base(), "ps", *(["--all"] if all_states else []), "--format", "json"]

    def logs(self, *, services: Sequence[str] = (), tail: int = 100) -> list[str]:
        return [*self.base(), "logs", "--no-color", "--tail", str(tail), *services]

    def down(self, *, volumes: bool = False, timeout_s: int | None = None) -> list[str]:
        """Stop and remove containers; data volumes go only when the caller says so."""
        argv = [*self.base(), "down", "--remove-orphans"]
        if timeout_s is not None:
            argv += ["--timeout", str(timeout_s)]
        return [*argv, "--volumes"] if volumes else argv

    def exec(self, service: str, argv: Sequence[str], *, user: str | None = None) -> list[str]:
        # -T: no TTY, so output is captured and the exit code is the command's own.
        out = [*self.base(), "exec", "-T"]
        if user:
            out += ["--user", user]
        return [*out, service, *argv]

    def run(self, service: str, argv: Sequence[str], *, no_deps: bool = False) -> list[str]:
        """A one-off container of service's image (e.g. migrations of a release not yet live)."""
        return [
            *self.base(),
            "run",
            "--rm",
            "-T",
            *(["--no-deps"] if no_deps else []),
            service,
            *argv,
        ]

    def restart(self, *, services: Sequence[str] = (), timeout_s: int | None = None) -> list[str]:
        argv = [*self.base(), "restart"]
        if timeout_s is not None:
            argv += ["--timeout", str(timeout_s)]
        return [*argv, *services]

    def config(self) -> list[str]:
        """Validate the files and their interpolation; --quiet so resolved secrets never print."""
        return [*self.base(), "config", "--quiet"]


def engine_info() -> list[str]:
    """Answers only when a Docker engine does: the client alone exits non-zero."""
    return [DOCKER, "info", "--format", "{{.ServerVersion}}"]


def compose_version() -> list[str]:
    return [DOCKER, "compose", "version", "--short"]


def image_ref(image: str, tag: str) -> str:
    return f"{image}:{tag}"


def build_image(
    image: str, tag: str, *, context: str = ".", dockerfile: str = "Dockerfile"
) -> list[str]:
    return [DOCKER, "build", "--tag", image_ref(image, tag), "--file", dockerfile, context]


def image_exists(image: str, tag: str) -> list[str]:
    return [DOCKER, "image", "inspect", "--format", "{{.Id}}", image_ref(image, tag)]
