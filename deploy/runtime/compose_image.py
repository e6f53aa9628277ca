"""A release's app image, built from the service's own repository as `[service]` describes it.

The engine writes the Dockerfile and .dockerignore into the build context (a `git archive` of the
release's commit), so any team's repository builds the same way: the service's requirements, its
code, its WSGI/ASGI app under gunicorn with its worker class, and the migration engine's few modules
(`python -m deploy.compose_migrate`, run in a one-off container of the image). The base image is a
build argument whose value docker reads from its own environment, so a registry's Python image
replaces the public default without the engine reading or storing it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from deploy.requirements import installs_a_local_path
from deploy.service import Service

BASE_IMAGE_ARG = "STAGEFLOW_BASE_IMAGE"
DEFAULT_BASE_IMAGE = "python:3.11-slim"
CONTAINER_PORT = 8000
SERVICE_ROOT = "/srv/service"  # the repository's root inside the image
ENGINE_ROOT = "/opt/stageflow"  # the migration engine's modules, on PYTHONPATH
ENGINE_DIR = ".stageflow-image"  # where the context carries them
DOCKERFILE = f"{ENGINE_DIR}/Dockerfile"
# compose_migrate imports only these (a unit test checks it): the image carries nothing more
ENGINE_MODULES = (
    "__init__.py",
    "errors.py",
    "secrets.py",
    "redact.py",
    "migrations.py",
    "compose_migrate.py",
)
# Out of every image: version control, local state and any secrets file a commit might hold.
IGNORED = (
    ".git",
    ".stageflow",
    "**/.venv",
    "**/__pycache__",
    "**/*.pyc",
    "**/*.secrets.env",
    "**/.env",
)


def _is_project_file(requirements: str) -> bool:
    return PurePosixPath(requirements).name == "pyproject.toml"


def _dependencies(
    service: Service, requirement_files: Sequence[str], local_paths: bool
) -> tuple[list[str], list[str]]:
    """The Dockerfile lines that install the service's dependencies, and the code's COPY when it
    comes after them."""
    requirements = service.repo_path(service.requirements)
    workdir = service.path_in_release(SERVICE_ROOT)
    if _is_project_file(requirements):
        # a package installs from its whole directory: the code comes first
        return ["COPY . .", f"RUN python -m pip install {json.dumps(workdir)}"], []
    if local_paths:
        # `-e .` and its kind install the repository's own files: they come first, from its folder
        folder = str(PurePosixPath(SERVICE_ROOT, requirements).parent)
        name = PurePosixPath(requirements).name
        return [
            "COPY . .",
            f"RUN cd {json.dumps(folder)} && python -m pip install -r {json.dumps(name)}",
        ], []
    # the requirements first: a code-only change reuses the dependency layer
    return [
        *(f"COPY {json.dumps([f, f])}" for f in (requirement_files or [requirements])),
        f"RUN python -m pip install -r {json.dumps(requirements)}",
    ], ["COPY . ."]


def dockerfile(
    service: Service, requirement_files: Sequence[str] = (), *, local_paths: bool = False
) -> str:
    """The Dockerfile of the service's image; paths are the repository's, as in stageflow.toml.
    requirement_files: the requirements file and those it includes (`-r`, `-c`), by their paths
    in the repository; local_paths: a line of them installs from the repository itself."""
    workdir = service.path_in_release(SERVICE_ROOT)
    deps, code = _dependencies(service, requirement_files, local_paths)
    gunicorn = [
        "gunicorn",
        "--bind",
        f"0.0.0.0:{CONTAINER_PORT}",
        "--worker-class",
        service.worker_class,
        "--access-logfile",
        "-",
        "--error-logfile",
        "-",
        service.wsgi,
    ]
    lines = [
        "# Made by stageflow from [service] in stageflow.toml; the tag is the release id.",
        f"ARG {BASE_IMAGE_ARG}={DEFAULT_BASE_IMAGE}",
        f"FROM ${{{BASE_IMAGE_ARG}}}",
        "ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \\",
        f"    PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONPATH={ENGINE_ROOT}",
        # servers run unprivileged, as on the native runtime; a layer every release reuses
        "RUN useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin stageflow",
        f"WORKDIR {SERVICE_ROOT}",
        *deps,
        f"COPY {ENGINE_DIR}/deploy/ {ENGINE_ROOT}/deploy/",
        *code,
        f"WORKDIR {workdir}",
        # [service] build: in the image, once for every environment, so without any environment's
        # settings or secrets (the settings must import without them)
        *(f"RUN {json.dumps(list(argv))}" for argv in service.build),
        "USER 10001",
        f"EXPOSE {CONTAINER_PORT}",
        # gunicorn's SIGTERM finishes the requests in flight before the container stops
        f"CMD {json.dumps(gunicorn)}",
    ]
    return "\n".join(lines) + "\n"


def image_tag(image: str) -> str | None:
    """registry:5000/name:tag -> tag (a release id); None when the reference carries no tag."""
    name, sep, tag = image.rpartition(":")
    return tag if sep and name and "/" not in tag else None


def dockerignore() -> str:
    return (
        "# Made by stageflow: nothing secret or local reaches the image.\n"
        + "\n".join(IGNORED)
        + "\n"
    )


def context_files(service: Service, requirements: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """Files the engine adds to a build context: relative path -> text. requirements: the
    requirements files of the commit (path in the repository, text), as the venv's key reads
    them."""
    engine = Path(__file__).resolve().parents[1]
    local = any(installs_a_local_path(text) for _, text in requirements)
    image = dockerfile(service, [name for name, _ in requirements], local_paths=local)
    files = {DOCKERFILE: image, ".dockerignore": dockerignore()}
    for name in ENGINE_MODULES:
        files[f"{ENGINE_DIR}/deploy/{name}"] = (engine / name).read_text(encoding="utf-8")
    return files
