"""What `stageflow init` learns from a repository's files: the framework, the entry point, the
requirements and the migration tool. Reads only; nothing here writes or runs anything."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from deploy.adopt.routes import Module, modules_of, router_routes
from deploy.binaries import POSTGRES_BIN_VAR, pg_extensions
from deploy.config import SECRET_KEYS
from deploy.errors import UsageError
from deploy.requirements import includes
from deploy.service import FED_NAMES, Migrations, about_a_secret

ASGI_WORKER = "uvicorn.workers.UvicornWorker"
# Folders that hold no service code: virtualenvs, caches, stageflow's own state, tests.
_SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    ".tox",
    ".nox",
    "node_modules",
    "__pycache__",
    "site-packages",
    "build",
    "dist",
    ".stageflow",
    "tests",
    "test",
}
_MAX_DEPTH = 5
_MAX_FILES = 5000  # a monorepo's far corners say nothing about its web entry point
_FLASK_APP = re.compile(r"^(\w+)\s*(?::[^=\n]+)?=\s*(?:flask\.)?Flask\(", re.M)
_FLASK_FACTORY = re.compile(r"^def (create_app)\(([^)]*)\)", re.M)
# a module-level instance made by the project's factory: `app = create_app(os.getenv(...))`
_FACTORY_CALL = re.compile(
    r"^(\w+)\s*(?::[^=\n]+)?=\s*(?:\w+\.)?(?:create_app|make_app|build_app|get_app)\(", re.M
)
# a top-level function of the project whose body makes the app object: `def get_application():
# ... application = FastAPI(**kwargs) ... return application`, whatever the team named it
_APP_MAKER = re.compile(r"^def (\w+)\(.*?(?=^[A-Za-z_@]|\Z)", re.M | re.S)
_MAKES_APP = re.compile(r"\b(?:fastapi\.|starlette\.\w+\.|flask\.)?(?:FastAPI|Starlette|Flask)\(")
_FLASK_IMPORT = re.compile(r"^\s*(?:from flask import|import flask\b)", re.M)
_ASGI_APP = re.compile(
    r"^(\w+)\s*(?::[^=\n]+)?=\s*(?:fastapi\.|starlette\.\w+\.)?(FastAPI|Starlette)\(", re.M
)
_FLASK_MIGRATE = re.compile(r"^\s*(?:from flask_migrate import|import flask_migrate\b)", re.M)
_DJANGO_SETTINGS = re.compile(r"DJANGO_SETTINGS_MODULE['\"]\s*,\s*['\"]([\w.]+)['\"]")
# The settings an app reads from its environment: os.environ["X"], os.environ.get("X"),
# getenv("X"), and the settings libraries' readers of an UPPER_CASE name: django-environ's
# env("X") / env.str("X") / env.bool("X"), python-decouple's config("X"), environs' env.int("X").
_ENV_READ = re.compile(
    r"""\b(?:environ\s*\[|environ\.get\(|getenv\(|environ\.setdefault\("""
    r"""|(?<![\w.])(?:env|config)(?:\.(?:str|bool|int|float|list|tuple|dict|json|url|path|"""
    r"""decimal|db|db_url|cache|cache_url|email|email_url|search_url))?\()"""
    r"""\s*['"]([A-Z][A-Z0-9_]*)['"]"""
)
# The usual other names of what stageflow feeds: [service.env.from] maps them, never a value.
FED_ALIASES = {
    "SQLALCHEMY_DATABASE_URI": "DATABASE_URL",
    "DATABASE_URI": "DATABASE_URL",
    "DB_URL": "DATABASE_URL",
    "POSTGRES_URL": "DATABASE_URL",
    "DB_HOST": "PGHOST",
    "DATABASE_HOST": "PGHOST",
    "POSTGRES_HOST": "PGHOST",
    "DB_PORT": "PGPORT",
    "DATABASE_PORT": "PGPORT",
    "DB_NAME": "PGDATABASE",
    "DATABASE_NAME": "PGDATABASE",
    "POSTGRES_DB": "PGDATABASE",
    "DB_USER": "PGUSER",
    "DATABASE_USER": "PGUSER",
    "POSTGRES_USER": "PGUSER",
    "DB_PASSWORD": "PGPASSWORD",
    "DATABASE_PASSWORD": "PGPASSWORD",
    "POSTGRES_PASSWORD": "PGPASSWORD",
    "POSTGRES_SERVER": "PGHOST",
    "POSTGRES_PORT": "PGPORT",
    "REDIS_URI": "REDIS_URL",
    "CACHE_REDIS_URL": "REDIS_URL",
    "RQ_REDIS_URL": "REDIS_URL",
    # Celery's broker: the Redis stageflow brings (Celery also reads CELERY_BROKER_URL itself)
    "CELERY_BROKER_URL": "REDIS_URL",
    "BROKER_URL": "REDIS_URL",
}
_BROKERS = ("CELERY_BROKER_URL", "BROKER_URL")
# a setting that turns a framework's debugging on (DEBUG, DJANGO_DEBUG, FLASK_DEBUG): its error
# pages show settings and code, so staging and prod hold it to "false"
_DEBUG_KEY = re.compile(r"^(?:[A-Z][A-Z0-9]*_)?DEBUG$")
# Django's ALLOWED_HOSTS read from the environment: with debugging off, a host it does not list is
# refused (400), stageflow's probes included, which ask as localhost and 127.0.0.1
_HOSTS_KEY = re.compile(r"^(?:DJANGO_)?ALLOWED_HOSTS$")
# the address the service gives for itself in its pages, links and e-mails (SITE_ROOT, BASE_URL):
# unset, its default names a port no environment serves on
SITE_URL_KEY = re.compile(r"^(?:DJANGO_)?(?:SITE|BASE|PUBLIC|APP)_(?:URL|ROOT)$")
# a setting that sends the service's logs to stdout instead of files (LOG_TO_STDOUT, the
# convention of apps written for platforms with read-only releases): stageflow keeps stdout and
# stderr in the environment's logs, and a release's folder is read-only to the service
_STDOUT_KEY = re.compile(r"^(?:[A-Z][A-Z0-9]*_)?LOG_?(?:TO_)?STDOUT$")
# a setting naming a folder the service writes (uploads, media, log files): its default is often
# inside the code, which a release keeps read-only to the service
_WRITTEN_FOLDER = re.compile(r"^(?:[A-Z][A-Z0-9]*_)?(?:UPLOADS?|MEDIA|LOGS?)_(?:FOLDER|DIR|ROOT)$")
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|(?:^|_)KEYS?(?:$|_)")
# A name the code tests for presence ("X" in os.environ): setting it turns on what it guards (an
# outside service's integration), so a random value for such a secret breaks the boot; the
# service's own signing key (SECRET_KEY, DJANGO_SECRET_KEY) is right random wherever it is read.
# (`"X" not in os.environ` is left alone: it as often guards a refusal to start without X.)
_PRESENCE_TEST = re.compile(r"""['"]([A-Z][A-Z0-9_]*)['"]\s+in\s+(?:os\.)?environ\b""")
_OWN_KEY = re.compile(r"(?:^|_)SECRET_KEY$")
# What stageflow itself sets in env/<env>.env, and what no service setting should shadow.
STAGEFLOW_KEYS = ("COMPOSE_PROJECT_NAME", "APP_PORT", "POSTGRES_PORT", "REDIS_PORT", "DATA_DIR")
_PROCESS_NAMES = {
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "TZ",
    "TMPDIR",
    "PWD",
    "SHELL",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "CI",
    # what Flask's and Werkzeug's own CLI and reloader set for the code to read back
    "FLASK_RUN_FROM_CLI",
    "WERKZEUG_RUN_MAIN",
    "WERKZEUG_SERVER_FD",
}
# what a CI runner or stageflow sets, never the service's settings: code that asks whether it runs
# in CI (GITHUB_WORKFLOW, CI) reads them
_NOT_THE_SERVICE_S = ("STAGEFLOW_", "GITHUB_", "GITLAB_", "CI_", "CIRCLE", "TRAVIS", "BUILDKITE",
                      "RUNNER_", "JENKINS_", "BITBUCKET_")  # fmt: skip
_STATIC_ROOT = re.compile(r"^STATIC_ROOT\s*(?::[^=\n]+)?=", re.M)
DJANGO_COLLECTSTATIC = ("python", "manage.py", "collectstatic", "--noinput")
# django-compressor's offline mode: templates name a manifest `compress` writes, which a release
# lacks until it runs; --force runs it where COMPRESS_ENABLED is off (DEBUG on, in dev)
_COMPRESS_OFFLINE = re.compile(r"^COMPRESS_OFFLINE\s*(?::[^=\n]+)?=\s*(?!False\b)\S", re.M)
DJANGO_COMPRESS = ("python", "manage.py", "compress", "--force")
PYTEST = ("python", "-m", "pytest", "-q")
# the standard library's runner: for tests written with unittest in a project that never asks
# for pytest, it needs nothing installed (it finds test*.py, a top-level tests.py among them)
UNITTEST = ("python", "-m", "unittest")
_NAMES_PYTEST = re.compile(r"\bpytest\b", re.I)
_PYTEST_FILES = ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini", "requirements.txt",
                 "requirements-dev.txt", "requirements_dev.txt", "dev-requirements.txt")  # fmt: skip
_UNITTEST = re.compile(r"^\s*(import unittest|from unittest\b)", re.M)
# pytest-django configured: the project's tests run under pytest, not Django's own runner
_PYTEST_DJANGO = re.compile(r"pytest[-_]django|^\s*DJANGO_SETTINGS_MODULE\s*=", re.M | re.I)
# A health route the app object itself declares (`@app.get("/healthz")`, `@app.route(...)`,
# Starlette's `Route("/healthz", ...)`, Django's `path("healthz/", ...)` in the root URLconf): a
# router's or blueprint's prefix is not known here, so their routes are not guessed at.
_LIVE_NAMES = ("healthz", "health", "livez", "healthcheck", "health-check", "ping")
_READY_NAMES = ("readyz", "ready", "readiness")
_ROUTE_PATH = r"[\"'](/[\w./-]*)[\"']"
_STARLETTE_ROUTE = re.compile(r"\bRoute\(\s*" + _ROUTE_PATH)
# a route on any object (a blueprint, a router): taken only when the app object declares none
_ANY_ROUTE = re.compile(r"(?:\.(?:get|route|api_route|head)|\bRoute)\(\s*" + _ROUTE_PATH)
_DJANGO_PATH = re.compile(r"\b(?:re_)?path\(\s*r?[\"']\^?([\w./-]*?)\$?[\"']")
_DJANGO_ADMIN = re.compile(
    r"\b(?:re_path|path|url)\(\s*r?[\"']\^?([\w./-]*?)\$?[\"']\s*,\s*admin\.site\.urls\b"
)
_PREFERRED_FILES = ("app.py", "wsgi.py", "main.py", "__init__.py", "asgi.py", "server.py")

DJANGO_MIGRATIONS = Migrations(
    kind="command",
    # each app keeps its own migrations/ folder: "." counts every one of them under the project
    dir=".",
    up=("python", "manage.py", "migrate", "--noinput"),
    down=("python", "manage.py", "migrate", "{app}", "{target}", "--noinput"),
    current=("python", "manage.py", "showmigrations", "--plan"),
)


def flask_migrate(app: str) -> Migrations:
    """Flask-Migrate's `flask db` commands; `FLASK_APP` names the app, since a deploy sets none
    and `flask` finds no `db` command without it (a .flaskenv is not in every repo). Set through
    `env`, not `--app`: Flask before 2.2 has no `--app` option and refuses the command."""
    flask = ("env", f"FLASK_APP={app}", "flask") if app else ("flask",)
    return Migrations(
        kind="command",
        dir="migrations/versions",
        up=(*flask, "db", "upgrade"),
        down=(*flask, "db", "downgrade", "{target}"),
        current=(*flask, "db", "current"),
    )


@dataclass(frozen=True)
class Overrides:
    """What the operator passed on the command line; each replaces what detection would find."""

    name: str | None = None
    dir: str | None = None
    wsgi: str | None = None
    worker_class: str | None = None


@dataclass(frozen=True)
class Detection:
    """The [service] values `stageflow init` writes, and how each was found."""

    name: str
    framework: str  # Django | Flask | FastAPI | Starlette | given
    dir: str
    wsgi: str
    worker_class: str
    requirements: str
    migrations: Migrations
    migration_tool: str  # what the migrations are: Django, Flask-Migrate, alembic or none
    build: tuple[tuple[str, ...], ...] = ()  # [service] build: commands each release runs once
    test_command: tuple[str, ...] = PYTEST  # [gates.test] command, run at the repository's root
    ready: str = ""  # its readiness route, when it declares one apart
    notes: tuple[str, ...] = field(default_factory=tuple)  # what the operator should check
    health: str = "/"
    env_keys: tuple[str, ...] = ()  # settings the code reads from its environment
    secret_keys: tuple[str, ...] = ()  # those of them whose names say they are secret
    env_from: tuple[tuple[str, str], ...] = ()  # those that are another name of a fed one
    processes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # a Procfile's, but its web one
    env_values: tuple[tuple[str, str, str], ...] = ()  # (env, key, value) init writes per env
    debug_keys: tuple[str, ...] = ()  # its settings that turn debugging on: "false" off dev
    debug_off: str = "false"  # how the code spells off for them ("False" where it takes no other)
    hosts_keys: tuple[str, ...] = ()  # its allowed-hosts settings: the probes' names off dev
    url_keys: tuple[str, ...] = ()  # its own public address (SITE_ROOT): each environment's port


_PROCFILE_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):\s*(\S.*)$")
_SHELL = re.compile(r"[;&|<>$`()*?~]")
# a Procfile line's leading NAME=value words set variables for its command, as a shell would
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# what the web process and a release hook are in a Procfile: stageflow runs those itself
_NOT_PROCESSES = {"web", "release"}


def _procfile_lines(bases: list[Path]) -> list[tuple[str, str]]:
    """(process name as written, command) of each line of the first Procfile among bases."""
    text = next((_read(b / "Procfile") for b in bases if (b / "Procfile").is_file()), "")
    found = (_PROCFILE_LINE.match(line.strip()) for line in text.splitlines())
    return [(m[1], m[2]) for m in found if m]


def _web_line(bases: list[Path]) -> str | None:
    """The command of a Procfile's web line, or None without one."""
    return next((cmd for name, cmd in _procfile_lines(bases) if name.lower() == "web"), None)


def _procfile(bases: list[Path]) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...]]:
    """[service.processes] from a Procfile's lines besides web and release, where the command
    needs no shell; a note for each one that does, which the operator writes by hand."""
    found: list[tuple[str, tuple[str, ...]]] = []
    notes: list[str] = []
    for written, command in _procfile_lines(bases):
        name = written.lower()
        if name in _NOT_PROCESSES:
            continue
        try:
            argv = tuple(shlex.split(command))
        except ValueError:
            argv = ()
        program = next((a for a in argv if not _ASSIGNMENT.match(a)), None)
        if program is None or _SHELL.search(command):
            notes.append(f"Procfile's {written} runs a shell line: write it in [service.processes]")
            continue
        # `NAME=value cmd ...` runs without a shell through env(1), which sets NAME for cmd
        found.append((name, ("env", *argv) if program != argv[0] else argv))
    return tuple(found), tuple(notes)


# uWSGI's own process supervision: `attach-daemon = ./manage.py sendalerts` runs a command beside
# the app for as long as the server runs, which under stageflow is a [service.processes] entry
_UWSGI_DAEMON = re.compile(r"^\s*attach-daemon(2?)\s*=\s*(\S.*?)\s*$")
_UWSGI_BLOCK = re.compile(r"^\s*(?:if-[\w-]+\s*=|endif\b|for\s*=|endfor\b)")
_UWSGI_FOLDERS = (".", "docker", "deploy", "config", "conf", "etc")


def _uwsgi_files(bases: list[Path]) -> list[Path]:
    """The uWSGI configurations (an .ini with a [uwsgi] section) at the service's root or in a
    folder of deployment files beside it."""
    found = []
    for base in bases:
        for folder in _UWSGI_FOLDERS:
            for path in sorted((base / folder).glob("*.ini")):
                if path not in found and re.search(r"^\s*\[uwsgi\]", _read(path), re.M):
                    found.append(path)
    return found


def _daemon_argv(command: str) -> tuple[str, ...]:
    """A daemon's command as words run in the service's folder: `./manage.py x` through python,
    as manage.py's shebang would; () when it needs a shell or uWSGI's own placeholders."""
    if _SHELL.search(command) or "%(" in command:
        return ()
    try:
        argv = tuple(shlex.split(command))
    except ValueError:
        return ()
    if argv and PurePosixPath(argv[0]).name == "manage.py" and not argv[0].startswith("/"):
        return ("python", "manage.py", *argv[1:])
    return argv


def _uwsgi_daemons(
    bases: list[Path],
) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...]]:
    """[service.processes] from uWSGI's attach-daemon lines, named by the management command
    (or program) they run; a note for each that needs a shell or runs only under a condition."""
    found: dict[str, tuple[str, ...]] = {}
    notes: list[str] = []
    for path in _uwsgi_files(bases):
        depth = 0
        for line in _read(path).splitlines():
            if _UWSGI_BLOCK.match(line):
                depth += -1 if line.strip().startswith("end") else 1
                continue
            m = _UWSGI_DAEMON.match(line)
            if m is None:
                continue
            argv = () if m[1] else _daemon_argv(m[2])  # attach-daemon2 takes key=value options
            if depth > 0 or not argv:
                notes.append(
                    f"{path.name} runs `{m[2]}` beside the app: write it in [service.processes] if each environment needs it"
                )
                continue
            words = argv[2:] if argv[:2] == ("python", "manage.py") else argv
            name = re.sub(r"[^a-z0-9_-]+", "-", PurePosixPath(words[0]).name.lower()).strip("-")
            found.setdefault(name or "process", argv)
    return tuple(found.items()), tuple(notes)


def _processes(
    bases: list[Path],
) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[str, ...]]:
    """A Procfile's processes, then uWSGI's daemons under names the Procfile does not take."""
    procfile, notes = _procfile(bases)
    daemons, daemon_notes = _uwsgi_daemons(bases)
    taken = {name for name, _ in procfile}
    return procfile + tuple(d for d in daemons if d[0] not in taken), notes + daemon_notes


_APP_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(?:\(.*\))?$")
# the options of gunicorn, uvicorn and their kind whose value looks like an app spec
_HOST_PORT_OPTIONS = {"-b", "--bind", "--host", "--port", "--uds", "--fd", "--listen"}
_ASGI_SERVERS = {"uvicorn", "hypercorn", "daphne"}


_WEB_STEP = re.compile(r"\s*(?:;|&&)\s*")


def _web_steps(line: str) -> list[str]:
    """The commands of a Procfile line, split where a shell runs one after another."""
    return [step for step in _WEB_STEP.split(line.strip()) if step]


def _web_line_steps(bases: list[Path], migrations: Migrations) -> tuple[str, ...]:
    """A note for what a Procfile's web line runs before its server, other than the migrations:
    a deploy runs the migrations' up and [service] build, never the web line's shell."""
    line = _web_line(bases)
    if line is None or _procfile_web(bases) is None:
        return ()
    up = list(_after_env(migrations.up or ()))
    others = []
    for step in _web_steps(line)[:-1]:
        try:
            words = shlex.split(step)
        except ValueError:
            words = step.split()
        if up and words[:1] == up[:1] and words[-2:] == up[-2:]:
            continue  # the migrations, which a deploy runs itself
        others.append(step)
    if not others:
        return ()
    steps = "; ".join(f"`{s}`" for s in others)
    return (
        f"the Procfile's web line runs {steps} before its server: a deploy runs only the "
        "migrations' up and [service] build; add to build what each release needs",
    )


def _other_server(bases: list[Path], wsgi: str, worker: str) -> tuple[str, ...]:
    """A note when a Procfile's web line runs a server init does not read (uwsgi, a script):
    stageflow serves the detected app under gunicorn, not through that line."""
    line = _web_line(bases)
    if line is None or _procfile_web(bases) is not None:
        return ()
    return (
        f"the Procfile's web line runs `{line.strip()}`, which stageflow does not run: each "
        f"environment serves {wsgi} under gunicorn (worker_class {worker}); check them, and give "
        "the service what that server's own configuration did besides (files it served, say)",
    )


def _procfile_web(bases: list[Path]) -> tuple[str, str | None] | None:
    """The app spec a Procfile's web line serves, and its worker class (an ASGI server's worker,
    gunicorn's -k), or None when the line names none (`web: bin/start`, a shell line). Without a
    Procfile, the server a Dockerfile's CMD or ENTRYPOINT starts, itself or through its script."""
    line = _web_line(bases)
    if line is None:
        return next(filter(None, map(_server_spec, _docker_server_lines(bases))), None)
    return _server_spec(line)


def _server_spec(line: str) -> tuple[str, str | None] | None:
    """The app spec and worker class of a line that starts a server, or None."""
    try:  # a shell line's server is its last command (`flask db upgrade; gunicorn app:app`)
        argv = shlex.split(_web_steps(line)[-1])
    except (ValueError, IndexError):
        return None
    if argv[:1] == ["exec"]:
        argv = argv[1:]
    while argv and _ASSIGNMENT.match(argv[0]):
        argv = argv[1:]  # VAR=value before the command
    if len(argv) > 2 and argv[0].startswith("python") and argv[1] == "-m":
        argv = argv[2:]  # python -m gunicorn ...
    if not argv:
        return None
    server = PurePosixPath(argv[0]).name
    worker = ASGI_WORKER if server in _ASGI_SERVERS else None
    spec, factory = None, "--factory" in argv
    for before, word in zip(argv, argv[1:], strict=False):
        if before in ("-k", "--worker-class"):
            worker = word
        elif word.startswith("--worker-class="):
            worker = word.split("=", 1)[1]
        elif _APP_SPEC.match(word) and before not in _HOST_PORT_OPTIONS:
            spec = word
    if spec is None or server not in {"gunicorn", "waitress-serve", *_ASGI_SERVERS}:
        return None
    worker = None if worker and "$" in worker else worker  # a variable the script left unset
    return (f"{spec}()" if factory and not spec.endswith(")") else spec), worker


_DOCKER_RUN = re.compile(r"^\s*(CMD|ENTRYPOINT)\s+(.+)$", re.I | re.M)
# VAR=${VAR:-default} or VAR=value: what a start script sets before it runs its server
_SCRIPT_VAR = re.compile(
    r"^\s*(?:export\s+)?([A-Za-z_]\w*)=(?:\$\{\1:-([^}]*)\}|([^\s$`;&|]*))\s*$"
)
_VAR_USE = re.compile(r"\$\{([A-Za-z_]\w*)(?::?-([^}]*))?\}|\$([A-Za-z_]\w*)")


def _docker_commands(bases: list[Path]) -> list[str]:
    """The commands of the first Dockerfile's CMD and ENTRYPOINT (exec or shell form), CMD first."""
    text = next((_read(b / "Dockerfile") for b in bases if (b / "Dockerfile").is_file()), "")
    text = re.sub(r"\\\n", " ", text)
    found = {kind.upper(): rest.strip() for kind, rest in _DOCKER_RUN.findall(text)}
    out = []
    for kind in ("CMD", "ENTRYPOINT"):
        value = found.get(kind, "")
        try:
            words = json.loads(value) if value.startswith("[") else None
        except ValueError:
            words = None
        out.append(shlex.join(words) if isinstance(words, list) else value)
    return [c for c in out if c]


def _script_file(bases: list[Path], path: str) -> Path | None:
    """The repository's file a path in the image names (`/opt/app/docker-entrypoint.sh` is the
    `docker-entrypoint.sh` the Dockerfile copied there): the longest tail of it that exists."""
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", ".")]
    for i in range(len(parts)):
        for base in bases:
            candidate = base.joinpath(*parts[i:])
            if candidate.is_file() and candidate.suffix != ".py":
                return candidate
    return None


def _docker_server_lines(bases: list[Path]) -> list[str]:
    """Each command the Dockerfile runs, then the lines of a start script it runs, last first
    (the server is the script's last command), continuation lines joined and the script's own
    variables filled in from the defaults it sets (`WORKER_CLASS=${WORKER_CLASS:-gevent}`)."""
    lines = []
    for command in _docker_commands(bases):
        lines.append(command)
        words = [w for w in command.split()[:2] if w.endswith(".sh") or "/" in w]
        script = _script_file(bases, words[0].strip("'\"")) if words else None
        if script is None:
            continue
        text = re.sub(r"\\\n", " ", _read(script)).splitlines()
        values = {
            m[1]: m[2] if m[2] is not None else m[3] for m in map(_SCRIPT_VAR.match, text) if m
        }
        lines += [_fill(line, values) for line in reversed(text)]
    return lines


def _fill(line: str, values: dict[str, str]) -> str:
    """A script's line with each variable it set (or one with a `${NAME:-default}`) filled in;
    any other is left as written."""

    def value(m: re.Match[str]) -> str:
        name = m[1] or m[3]
        return values[name] if name in values else m[2] if m[2] is not None else m[0]

    return _VAR_USE.sub(value, line)


def _module_file(base: Path, spec: str) -> Path | None:
    """The file of an app spec's module under base (or base/src), when there is one."""
    parts = spec.partition(":")[0].split(".")
    for root in (base, base / "src"):
        for candidate in (
            root.joinpath(*parts).with_suffix(".py"),
            root.joinpath(*parts, "__init__.py"),
        ):
            if candidate.is_file():
                return candidate
    return None


def _rq_url(processes: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[tuple[str, str], ...]:
    """rq's worker reads its Redis from RQ_REDIS_URL when no --url is given."""
    for _, argv in processes:
        if (
            argv[0] == "rq"
            and not {"-u", "--url"} & set(argv)
            and not any(a.startswith("--url=") for a in argv)
        ):
            return (("RQ_REDIS_URL", "REDIS_URL"),)
    return ()


def _celery_broker(
    processes: tuple[tuple[str, tuple[str, ...]], ...],
) -> tuple[tuple[str, str], ...]:
    """Celery takes its broker from CELERY_BROKER_URL before its configuration, so a celery
    process without -b/--broker reaches the environment's Redis through it."""
    for _, argv in processes:
        words = _after_env(argv)
        if (
            words
            and PurePosixPath(words[0]).name == "celery"
            and not {"-b", "--broker"} & set(words)
            and not any(a.startswith("--broker=") for a in words)
        ):
            return (("CELERY_BROKER_URL", "REDIS_URL"),)
    return ()


def _after_env(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The command itself, without the env(1) and NAME=value words a Procfile line put first."""
    if argv and argv[0] == "env":
        argv = argv[1:]
        while argv and _ASSIGNMENT.match(argv[0]):
            argv = argv[1:]
    return argv


_REDIS_CLIENT = re.compile(r"^\s*[\"']?[\w.\[\],-]*\bredis\b", re.I | re.M)


def requires_redis(base: Path, requirements: str) -> bool:
    """The requirements name a Redis client (redis, celery[redis], django-redis...), following
    a requirements file's -r includes."""
    return _requires(base, requirements, _REDIS_CLIENT)


# a PostgreSQL driver, and what reads a database URL through SQLAlchemy (which needs one)
_PG_DRIVER = re.compile(r"(?<![\w-])(?:psycopg|asyncpg|pg8000)", re.I)
_SQLALCHEMY = re.compile(r"(?<![\w-])(?:sqlalchemy|flask-sqlalchemy|alembic)\b", re.I)


def _requires(base: Path, requirements: str, name: re.Pattern[str], depth: int = 0) -> bool:
    """The requirements (and the files they include with -r) match name."""
    text = _read(base / requirements)
    if name.search(text):
        return True
    if depth > 5 or requirements.endswith(".toml"):
        return False
    folder = PurePosixPath(requirements).parent
    return any(
        _requires(base, str(folder / inc), name, depth + 1)
        for inc in includes(text, constraints=False)
    )


def driver_note(base: Path, requirements: str, framework: str) -> tuple[str, ...]:
    """A note when the service reaches PostgreSQL through Django or SQLAlchemy and its
    requirements name no driver: the release's venv is built from them alone, and the first
    migration would stop at the import of the missing one."""
    if framework != "Django" and not _requires(base, requirements, _SQLALCHEMY):
        return ()
    if _requires(base, requirements, _PG_DRIVER):
        return ()
    driver = "psycopg[binary]" if framework == "Django" else "psycopg2-binary"
    return (
        f"{requirements} names no PostgreSQL driver, which the DATABASE_URL stageflow feeds "
        f"(postgresql://) needs: add {driver} to it",
    )


def service_name(root: Path, project: str | None = None) -> str:
    """The project's name (pyproject.toml), else the repository folder's, as a [service] name:
    lowercase letters, digits, - and _."""
    name = re.sub(r"[^a-z0-9_-]+", "-", (project or root.name).lower()).strip("-_")
    return name or "service"


def python_files(base: Path) -> Iterator[Path]:
    """The service's Python files, shallowest first, without virtualenvs, caches and tests."""
    count = 0
    level = [base]
    for _ in range(_MAX_DEPTH):
        below: list[Path] = []
        for folder in level:
            try:
                entries = sorted(folder.iterdir())
            except OSError:
                continue
            for entry in entries:
                if entry.is_dir() and not entry.is_symlink():
                    if entry.name not in _SKIP_DIRS and not (entry / "pyvenv.cfg").exists():
                        below.append(entry)
                elif entry.suffix == ".py" and not entry.name.startswith(("test_", "conftest")):
                    count += 1
                    if count > _MAX_FILES:
                        return
                    yield entry
        level = below


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def module_name(base: Path, path: Path) -> str | None:
    """The dotted module a gunicorn started in `base` imports for path; None when it cannot."""
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    # a src layout is installed into the venv from pyproject.toml: its modules start below src/
    if len(parts) > 1 and parts[0] == "src" and not (base / "src" / "__init__.py").exists():
        parts = parts[1:]
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts)


def _rank(base: Path, path: Path) -> tuple[int, int, str]:
    depth = len(path.relative_to(base).parts)
    preferred = _PREFERRED_FILES.index(path.name) if path.name in _PREFERRED_FILES else 99
    return depth, preferred, str(path)


def _needs_arguments(params: str) -> bool:
    """A factory's parameters (the text between its parentheses) include one without a default."""
    for param in params.split(","):
        name = param.split(":")[0].strip()
        if name and not name.startswith("*") and name != "/" and "=" not in param:
            return True
    return False


def _app_makers(texts: list[str]) -> set[str]:
    """The names of the top-level functions of the project that make a Flask, FastAPI or
    Starlette app object (the project's own factory, whatever its name)."""
    return {m[1] for text in texts for m in _APP_MAKER.finditer(text) if _MAKES_APP.search(m[0])}


def _instance_call(text: str, makers: set[str]) -> re.Match[str] | None:
    """A module-level `app = <factory>(...)`: one of the usual factory names, or a function of
    the project that makes the app object."""
    call = _FACTORY_CALL.search(text)
    if call or not makers:
        return call
    names = "|".join(sorted(map(re.escape, makers)))
    return re.search(rf"^(\w+)\s*(?::[^=\n]+)?=\s*(?:\w+\.)?(?:{names})\(", text, re.M)


def _find_app(base: Path) -> tuple[str, str, str, Path] | None:
    """(framework, app spec, worker class, module file) of the best candidate under base. A
    factory that needs arguments (`def create_app(config_name)`) is a candidate only when no
    module makes an instance of the project's factory at its top level (`app = create_app(...)`)."""
    found: list[tuple[tuple[int, int, str], tuple[str, str, str, Path]]] = []
    instances: list[tuple[tuple[int, int, str], str, Path]] = []
    factories: list[tuple[tuple[int, int, str], str, Path, bool]] = []
    asgi = ""
    files = [(path, module_name(base, path), _read(path)) for path in python_files(base)]
    makers = _app_makers([text for _, _, text in files])
    for path, module, text in files:
        if module is None:
            continue
        m = _ASGI_APP.search(text)
        if m:
            found.append((_rank(base, path), (m[2], f"{module}:{m[1]}", ASGI_WORKER, path)))
            continue
        asgi = asgi or next((k for k in ("FastAPI", "Starlette") if f"{k}(" in text), "")
        call = _instance_call(text, makers)
        if call:
            instances.append((_rank(base, path), f"{module}:{call[1]}", path))
        if not _FLASK_IMPORT.search(text):
            continue
        m = _FLASK_APP.search(text)
        factory = _FLASK_FACTORY.search(text)
        if m:
            found.append((_rank(base, path), ("Flask", f"{module}:{m[1]}", "sync", path)))
        elif factory:
            spec = f"{module}:create_app()"
            factories.append((_rank(base, path), spec, path, _needs_arguments(factory[2])))
    found += [
        (rank, ("Flask", spec, "sync", path))
        for rank, spec, path, needs in factories
        if not (needs and instances)
    ]
    kind = (asgi, ASGI_WORKER) if asgi else ("Flask", "sync")
    found += [(rank, (kind[0], spec, kind[1], path)) for rank, spec, path in instances]
    return min(found)[1] if found else None


def route_paths(text: str, app: str) -> list[str]:
    """The URL paths a module routes on its app object `app`, or in Starlette's Route()s."""
    on_app = re.compile(
        rf"^\s*@{re.escape(app)}\.(?:get|route|api_route|head)\(\s*" + _ROUTE_PATH, re.M
    )
    return [m[1] for m in on_app.finditer(text)] + [m[1] for m in _STARLETTE_ROUTE.finditer(text)]


def health_paths(paths: list[str]) -> tuple[str, str]:
    """(health, ready) among an app's routes: a liveness path (/healthz, /health, ...) and a
    readiness one (/readyz, ...); ("/", "") when it has neither, ready "" when it equals health."""

    def first(names: tuple[str, ...]) -> str:
        named = {p.strip("/").lower(): p for p in paths if "/" not in p.strip("/")}
        return next((named[n] for n in names if n in named), "")

    live, ready = first(_LIVE_NAMES), first(_READY_NAMES)
    if not live:
        return ready or "/", ""
    return live, ready


def django_admin_path(urls: str) -> str:
    """Where a root URLconf mounts Django's admin (`path("admin/", admin.site.urls)`), as a URL
    path ("/admin/"); "" when it does not, or under a name read elsewhere (settings.ADMIN_URL)."""
    m = _DJANGO_ADMIN.search(urls)
    if m is None:
        return ""
    return "/" + (m[1].rstrip("/") + "/" if m[1] else "")


def _django_urls(base: Path, wsgi: str) -> str:
    """The root URLconf of the project whose package holds the wsgi module."""
    return _read(base / wsgi.split(".")[0] / "urls.py")


def _app_health(
    framework: str, wsgi: str, module: Path | None, base: Path
) -> tuple[str, str, bool]:
    """(health, ready, placed): placed when the paths are known whole, routes of the app object
    or of a router whose prefixes the source spells out."""
    if framework == "Django":
        urls = _django_urls(base, wsgi)
        found = health_paths(["/" + m[1] for m in _DJANGO_PATH.finditer(urls)])
        if found[0] == "/" and django_admin_path(urls) not in ("", "/"):
            # the admin answers while the project is up: a redirect to its login page, which
            # touches no table (its login page would save a session per probe where CSRF
            # tokens live in sessions)
            return django_admin_path(urls), "", True
        return (*found, True)
    obj = wsgi.partition(":")[2]
    app = "app" if obj.endswith("()") else obj  # a factory's routes sit on its local `app`
    on_app = route_paths(_read(module), app) if module is not None else []
    found = health_paths(on_app)
    if found[0] != "/":
        return (*found, True)
    # none on the app object: a router's or blueprint's route, under the prefixes it is
    # included with when the source spells them out
    name = module_name(base, module) if module is not None else None
    routes = router_routes(_modules(base), (name or "", app)) if name else []
    own = health_paths([path for path, _ in routes])
    whole = {path: full for path, full in routes if full}
    if own[0] != "/" and own[0] in whole and (not own[1] or own[1] in whole):
        return whole[own[0]], whole.get(own[1], ""), True
    health, ready = health_paths(_all_routes(base))
    return health, ready, health in on_app


def _modules(base: Path) -> dict[str, Module]:
    files = []
    for path in python_files(base):
        name = module_name(base, path)
        if name is not None:
            files.append((name, path, _read(path)))
    return modules_of(files)


def _all_routes(base: Path) -> list[str]:
    return [m[1] for path in python_files(base) for m in _ANY_ROUTE.finditer(_read(path))]


def _manage_py(root: Path) -> Path | None:
    """The shallowest manage.py that names its settings: a Django project's folder."""
    for path in python_files(root):
        if path.name == "manage.py" and _DJANGO_SETTINGS.search(_read(path)):
            return path
    return None


def _django_wsgi(base: Path, manage: Path) -> str:
    settings = _DJANGO_SETTINGS.search(_read(manage))
    assert settings is not None  # _manage_py only returns a manage.py that names its settings
    project = settings[1].split(".")[0]
    if (base / project / "wsgi.py").is_file():
        return f"{project}.wsgi:application"
    for path in python_files(base):
        if path.name == "wsgi.py" and "get_wsgi_application" in _read(path):
            module = module_name(base, path)
            if module:
                return f"{module}:application"
    return f"{project}.wsgi:application"


_PRODUCTION_SETTINGS = ("production", "prod", "staging")


SETTINGS_MODULE = "DJANGO_SETTINGS_MODULE"
Values = tuple[tuple[str, str, str], ...]  # (environment, key, value) init writes in env/<env>.env


def django_settings(base: Path, wsgi: str) -> tuple[str, Values]:
    """(note, values) when the settings a deploy runs are not one module everywhere, or not the
    production one beside them: manage.py's default serves its commands (migrate, collectstatic),
    the wsgi module's default the web workers, unless the environment names one. A production
    module beside manage.py's default (its DEBUG on, say) is what staging and prod run."""
    manage = _manage_py(base)
    m = _DJANGO_SETTINGS.search(_read(manage)) if manage is not None else None
    if m is None:
        return "", ()
    module = m[1]
    wsgi_file = base.joinpath(*wsgi.partition(":")[0].split(".")).with_suffix(".py")
    served = _DJANGO_SETTINGS.search(_read(wsgi_file))
    if served is not None and served[1] != module:
        return (
            f"Django's commands run {module} (manage.py's default) and its web workers "
            f"{served[1]} (the wsgi module's): to run one settings module in each environment, "
            f"add {SETTINGS_MODULE} to [service.env] keys and set it in each env/<env>.env"
        ), ()
    package, _, stem = module.rpartition(".")
    if not package or stem in _PRODUCTION_SETTINGS:
        return "", ()
    folder = base.joinpath(*package.split("."))
    have = [n for n in _PRODUCTION_SETTINGS if (folder / f"{n}.py").is_file()]
    chosen = {
        env: f"{package}.{next(n for n in names if n in have)}"
        for env, names in (
            ("staging", ("staging", "production", "prod")),
            ("prod", ("production", "prod")),
        )
        if any(n in have for n in names)
    }
    if not chosen:
        return "", ()
    mods = set(chosen.values())
    runs = (
        f"{mods.pop()} on {' and '.join(chosen)}"
        if len(mods) == 1
        else "; ".join(f"{env}: {mod}" for env, mod in chosen.items())
    )
    return (
        f"Django runs {module} (manage.py's default) on dev and the settings module beside it "
        f"elsewhere ({runs}): {SETTINGS_MODULE} in env/<env>.env says which; change it there"
    ), tuple((env, SETTINGS_MODULE, mod) for env, mod in chosen.items())


_MEDIA_ROOT = re.compile(r"^MEDIA_ROOT\s*(?::[^=\n]+)?=\s*(.+)$", re.M)
_READS_ENVIRONMENT = re.compile(r"environ|getenv|(?<![\w.])(?:env|config)[.(]")


def media_root_note(base: Path) -> str:
    """A note when Django's MEDIA_ROOT is a folder of the code: in a release, which is read-only
    to the service, an upload (or a loader that copies files there) fails."""
    for path in python_files(base):
        for value in _MEDIA_ROOT.findall(_read(path)):
            if not _READS_ENVIRONMENT.search(value):
                return (
                    f"Django's MEDIA_ROOT ({value.strip()}, {path.relative_to(base)}) lies in the "
                    "release, which is read-only to the service: uploads fail; point it under "
                    "the directory stageflow keeps from release to release, MEDIA_ROOT = "
                    'os.path.join(os.environ.get("STAGEFLOW_FILES_DIR", BASE_DIR), "media"), and '
                    "serve it (with DEBUG off Django serves no media)"
                )
    return ""


def _django_settings(base: Path, framework: str, wsgi: str) -> tuple[tuple[str, ...], Values]:
    """(notes, values) of a Django project's settings for a deploy: the settings module each
    environment runs, a media folder the service may write."""
    if framework != "Django":
        return (), ()
    note, values = django_settings(base, wsgi)
    return tuple(n for n in (note, media_root_note(base)) if n), values


def _build(base: Path, framework: str) -> tuple[tuple[str, ...], ...]:
    """Django with STATIC_ROOT serves the files collectstatic gathers there (whitenoise, say),
    and a release holds none of them until it runs: each release collects its own, and
    compresses them offline where django-compressor is set to."""
    if framework != "Django":
        return ()
    texts = [_read(p) for p in python_files(base)]
    if not any(_STATIC_ROOT.search(t) for t in texts):
        return ()
    if any(_COMPRESS_OFFLINE.search(t) for t in texts):  # compress reads what collectstatic put
        return (DJANGO_COLLECTSTATIC, DJANGO_COMPRESS)
    return (DJANGO_COLLECTSTATIC,)


def _uses_pytest(bases: set[Path]) -> bool:
    """The project asks for pytest: a conftest.py, or pytest named in its config or requirements."""
    for base in bases:
        if (base / "conftest.py").exists() or (base / "tests" / "conftest.py").exists():
            return True
        if any(_NAMES_PYTEST.search(_read(base / name)) for name in _PYTEST_FILES):
            return True
    return False


def _unittest_only(bases: set[Path]) -> bool:
    """Every test file at the top (test*.py, tests.py) or in tests/ is written with unittest."""
    found = [p for b in bases for p in (*b.glob("test*.py"), *b.glob("tests/test*.py"))]
    return bool(found) and all(_UNITTEST.search(_read(p)) for p in found)


def _test_command(root: Path, folder: str, framework: str) -> tuple[str, ...]:
    """Django's own test runner for a Django project (its tests.py files are no pytest's
    test_*.py), unless pytest-django is set up; the standard library's unittest for a project
    whose tests are unittest's and that never asks for pytest; pytest for everything else."""
    if framework != "Django":
        bases = {root, root / folder}
        return UNITTEST if not _uses_pytest(bases) and _unittest_only(bases) else PYTEST
    for name in ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini", "requirements-dev.txt"):
        for base in {root, root / folder}:
            if _PYTEST_DJANGO.search(_read(base / name)):
                return PYTEST
    manage = "manage.py" if folder == "." else str(PurePosixPath(folder) / "manage.py")
    return ("python", manage, "test")


def _alembic_versions(base: Path) -> str:
    """The versions folder of alembic.ini's script_location, relative to base."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(base / "alembic.ini", encoding="utf-8")
        location = parser.get("alembic", "script_location", fallback="alembic")
    except configparser.Error:
        location = "alembic"
    location = location.replace("%(here)s/", "").replace("%(here)s", ".").strip() or "alembic"
    return str(PurePosixPath(location) / "versions")


# no tool of the service makes its tables on a fresh database: stageflow's own engine can
NO_MIGRATIONS_NOTE = (
    "no migration tool found (alembic, Flask-Migrate, Django): a fresh database gets no tables "
    "from a deploy; write them as SQL migrations in the service's folder (migrations/0001_name"
    '.up.sql and .down.sql) and set [service.migrations] kind = "sql", dir = "migrations"'
)


def _migrations(base: Path, framework: str, wsgi: str) -> tuple[Migrations, str]:
    if framework == "Django":
        return DJANGO_MIGRATIONS, "Django"
    if (base / "migrations" / "alembic.ini").is_file() and any(
        _FLASK_MIGRATE.search(_read(p)) for p in python_files(base)
    ):
        return flask_migrate(wsgi), "Flask-Migrate"
    if (base / "alembic.ini").is_file():
        versions = _alembic_versions(base)
        return (
            Migrations(
                kind="command",
                dir=versions,
                up=("alembic", "upgrade", "head"),
                down=("alembic", "downgrade", "{target}"),
                current=("alembic", "current"),
            ),
            "alembic",
        )
    return Migrations(kind="none"), "none"


Settings = tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]


# pydantic-settings: a class of BaseSettings reads each of its fields from the environment, and
# so does a class of the project's own class of it (`class AppSettings(BaseAppSettings)`)
_CLASS_BASES = re.compile(r"^class\s+(\w+)\s*\(([^)]*)\)\s*:", re.M)
_BASE_SETTINGS = frozenset({"BaseSettings"})
_FIELD = re.compile(r"^(\s+)([A-Za-z]\w*)\s*:\s*([^=\n]+?)\s*(?:=(.*))?$")
_ENV_PREFIX = re.compile(r"""\benv_prefix\s*[=:]\s*['"](\w*)['"]""")
_ALIAS = re.compile(r"""\b(?:validation_)?alias\s*=\s*['"](\w+)['"]""")


def _class_body(lines: list[str], start: int) -> Iterator[tuple[str, str]]:
    """(indentation, line) of each line of the class body that begins after line start."""
    indent = None
    for line in lines[start + 1 :]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        lead = line[: len(line) - len(line.lstrip())]
        if indent is None:
            if not lead:
                return
            indent = lead
        if len(lead) < len(indent):
            return
        yield lead, line


def settings_classes(texts: list[str]) -> frozenset[str]:
    """BaseSettings and the top-level classes of the project that derive from it, through any
    number of the project's own classes between them."""
    edges = [(m[1], set(re.findall(r"\w+", m[2]))) for t in texts for m in _CLASS_BASES.finditer(t)]
    names = set(_BASE_SETTINGS)
    while more := {cls for cls, bases in edges if bases & names} - names:
        names |= more
    return frozenset(names)


def is_settings_module(text: str, classes: frozenset[str] = _BASE_SETTINGS) -> bool:
    """The module declares a settings class."""
    return any(set(re.findall(r"\w+", m[2])) & classes for m in _CLASS_BASES.finditer(text))


def settings_fields(text: str, classes: frozenset[str] = _BASE_SETTINGS) -> set[str]:
    """The environment variables the pydantic-settings classes of a module read: each field of
    a class of BaseSettings, upper-cased (the library matches names case-insensitively), behind
    the class's env_prefix, or its alias."""
    return {name for name, _ in _settings_fields(text, classes)}


def required_settings(text: str, classes: frozenset[str] = _BASE_SETTINGS) -> set[str]:
    """Those of them without a default: the class refuses to load without each."""
    return {name for name, required in _settings_fields(text, classes) if required}


def _settings_fields(text: str, classes: frozenset[str]) -> set[tuple[str, bool]]:
    names: set[tuple[str, bool]] = set()
    lines = text.splitlines()
    starts = {
        text.count("\n", 0, m.start())
        for m in _CLASS_BASES.finditer(text)
        if set(re.findall(r"\w+", m[2])) & classes
    }
    for start in sorted(starts):
        body = list(_class_body(lines, start))
        if not body:
            continue
        indent = body[0][0]
        prefix = next((m[1] for _, ln in body if (m := _ENV_PREFIX.search(ln))), "")
        for i, (lead, line) in enumerate(body):
            m = _FIELD.match(line)
            if lead != indent or not m or m[2] == "model_config" or "ClassVar" in m[3]:
                continue
            default = m[4] if m[4] is not None else _default_after(m[3], body[i + 1 :])
            alias = _ALIAS.search(default or "")
            name = alias[1].upper() if alias else f"{prefix}{m[2]}".upper()
            names.add((name, default is None))
    return names


def _default_after(annotation: str, rest: list[tuple[str, str]]) -> str | None:
    """The default of a field whose annotation goes on over the next lines (`X: Annotated[`
    ... `] = []`): what follows `=` on the line that closes it, or None."""
    depth = sum(annotation.count(c) for c in "[(") - sum(annotation.count(c) for c in "])")
    for _, line in rest:
        if depth <= 0:
            break
        depth += sum(line.count(c) for c in "[(") - sum(line.count(c) for c in "])")
        if depth <= 0:
            _, eq, default = line.partition("=")
            return default if eq else None
    return None


_LITERAL = re.compile(r"^\s*Literal\[([^\]]*)\]")
# the values a service's own ENVIRONMENT may take for each of stageflow's, in order of preference
ENVIRONMENT_WORDS = {
    "dev": ("development", "dev", "local", "develop"),
    "staging": ("staging", "stage", "preprod", "pre-production"),
    "prod": ("production", "prod", "live"),
}
OWN_ENVIRONMENT = "APP_ENVIRONMENT"


def environment_choices(text: str) -> tuple[str, ...]:
    """The values a settings class's ENVIRONMENT field accepts when its type is a Literal."""
    for line in text.splitlines():
        m = _FIELD.match(line)
        if m and m[2].upper() == "ENVIRONMENT":
            lit = _LITERAL.match(m[3])
            if lit:
                return tuple(re.findall(r"[\"']([^\"']+)[\"']", lit[1]))
    return ()


def _own_environment(base: Path) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """((env, value) for each of stageflow's environments, notes): the service's ENVIRONMENT
    takes a closed set of values, which stageflow's (development, staging, production, and the
    migrations gate's rehearsal) are not all in. Empty when it takes any value."""
    choices: tuple[str, ...] = ()
    texts = [_read(path) for path in python_files(base)]
    classes = settings_classes(texts)
    for text in texts:
        if "Literal" in text and is_settings_module(text, classes):
            choices = choices or environment_choices(text)
    if not choices:
        return (), ()
    picked = tuple(
        (env, next((w for w in words if w in choices), ""))
        for env, words in ENVIRONMENT_WORDS.items()
    )
    if all(value for _, value in picked):
        return picked, ()
    return (), (
        f"the code's ENVIRONMENT takes only {', '.join(choices)}: declare {OWN_ENVIRONMENT} under "
        f'[service.env] keys, set it in env/<env>.env, and map ENVIRONMENT = "{OWN_ENVIRONMENT}"'
        " in [service.env.from]",
    )


_CREATE_EXTENSION = re.compile(
    r"CREATE\s+EXTENSION\s+(?:IF\s+NOT\s+EXISTS\s+)?[\\\"'`]*([\w-]+)", re.I
)


def extensions_created(folder: Path) -> set[str]:
    """The PostgreSQL extensions the migrations in folder create."""
    found: set[str] = set()
    if not folder.is_dir():
        return found
    for path in _migration_files(folder):
        found.update(m.lower() for m in _CREATE_EXTENSION.findall(_read(path)))
    return found


def _migration_files(folder: Path) -> list[Path]:
    """The .py and .sql files under folder, without virtualenvs and caches: a Django project's
    migrations folder is the project itself ("."), and a virtualenv inside it holds the
    libraries' own migrations (django.contrib.gis creates postgis), which the service never runs."""
    found: list[Path] = []
    for top, dirs, files in os.walk(folder):
        here = Path(top)
        dirs[:] = sorted(
            d for d in dirs if d not in _SKIP_DIRS and not (here / d / "pyvenv.cfg").exists()
        )
        found += [here / f for f in sorted(files) if f.endswith((".py", ".sql"))]
        if len(found) > _MAX_FILES:
            break
    return found[:_MAX_FILES]


def _missing_extensions(base: Path, migrations: Migrations) -> tuple[str, ...]:
    """A note for each extension a migration creates that the PostgreSQL stageflow would run
    does not ship (the embedded wheel has no uuid-ossp or pgcrypto)."""
    if migrations.kind == "none":
        return ()
    wanted = extensions_created(base / migrations.dir)
    available = pg_extensions() if wanted else None
    missing = sorted(wanted - available) if available is not None else []
    if not missing:
        return ()
    return (
        f"the migrations create the extension {', '.join(missing)}, which this machine's "
        f"PostgreSQL for stageflow lacks: set {POSTGRES_BIN_VAR} to an installed PostgreSQL "
        "that has it before `inv dev.up` (stageflow's ENVIRONMENT.md, Another PostgreSQL)",
    )


# code that reads the environment by a computed name: a configparser interpolation that looks
# each option up (`os.getenv(option)`), which lets the environment fill an INI file's options
_COMPUTED_ENV_READ = re.compile(r"\b(?:getenv|environ\.get)\(\s*[A-Za-z_]|\benviron\[\s*[A-Za-z_]")
_INI_FILE = re.compile(r"""['"]([\w./-]+\.(?:ini|cfg))['"]""")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def ini_env_names(path: Path, text: str, base: Path) -> set[str]:
    """The options an INI file leaves empty (`SECRET_KEY =`), when a module that reads it with
    configparser looks names up in the environment by a computed name: the environment fills
    them, so they are the service's settings like any `os.environ["X"]`."""
    if "ConfigParser(" not in text or not _COMPUTED_ENV_READ.search(text):
        return set()
    names: set[str] = set()
    for name in _INI_FILE.findall(text):
        found = next((f for d in (path.parent, base) if (f := d / name).is_file()), None)
        parser = configparser.RawConfigParser(strict=False)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            parser.read_string(_read(found)) if found else None
        except configparser.Error:
            continue
        for section in parser.sections():
            names.update(
                k for k, v in parser.items(section) if not (v or "").strip() and _ENV_NAME.match(k)
            )
    return names


# A settings module that chooses its database engine from a variable of its own, SQLite unless
# told otherwise: `if os.getenv("DB") == "postgres":`, `os.environ.get("DB_ENGINE") in (...)`,
# or through a name it assigned first (`db = os.getenv("DB")` ... `if db == "postgresql":`).
_ENV_CALL = (
    r"""(?:environ\.get\(|getenv\(|environ\s*\[|(?<![\w.])env\()\s*['"]([A-Z][A-Z0-9_]*)['"]"""
)
_CHOSEN_BY = re.compile(_ENV_CALL + r"""[^)\]\n]*[)\]](?:\.\w+\(\))*\s*(?:==|\bin\b)([^\n]*)""")
_ASSIGNED = re.compile(r"^\s*(\w+)\s*=\s*(?:os\.)?" + _ENV_CALL + r"[^\n]*$", re.M)
_POSTGRES_WORD = re.compile(r"""['"](postgres|postgresql|psql|pg)['"]""", re.I)
# a variable whose default is Django's SQLite backend names the backend itself
_ENGINE_DEFAULT = re.compile(_ENV_CALL + r"""\s*,\s*['"]django\.db\.backends\.sqlite3['"]""")
DJANGO_POSTGRES_ENGINE = "django.db.backends.postgresql"


def engine_choice(text: str) -> tuple[str, str] | None:
    """(variable, value) that points a settings module's database at PostgreSQL when it picks
    its engine from the environment, or None when it does not."""
    for m in _CHOSEN_BY.finditer(text):
        word = _POSTGRES_WORD.search(m[2].split(":")[0])
        if word:
            return m[1], word[1]
    for m in _ASSIGNED.finditer(text):
        compared = re.compile(rf"\b{re.escape(m[1])}(?:\.\w+\(\))*\s*(?:==|\bin\b)([^\n:]*)")
        word = next(
            (w for c in compared.finditer(text) if (w := _POSTGRES_WORD.search(c[1]))), None
        )
        if word:
            return m[2], word[1]
    m = _ENGINE_DEFAULT.search(text)
    return (m[1], DJANGO_POSTGRES_ENGINE) if m else None


def _engine_choice(base: Path) -> tuple[str, str] | None:
    return next((c for p in python_files(base) if (c := engine_choice(_read(p)))), None)


# A function of the project's own that reads the variable its first parameter names
# (`def envbool(s, default): v = os.getenv(s, default)`): each call with a name is a read.
_READER_DEF = re.compile(
    r"^def (\w+)\(\s*(\w+)[^)]*\)[^:\n]*:[ \t]*\n((?:[ \t]+\S[^\n]*\n|[ \t]*\n)+)", re.M
)
_BOOLEAN_WORDS = re.compile(r"""['"](True|False)['"]""")


def env_readers(texts: list[str]) -> dict[str, str]:
    """{name: body} of the functions among texts that read their first parameter's variable."""
    readers: dict[str, str] = {}
    for text in texts:
        for m in _READER_DEF.finditer(text):
            param = re.escape(m[2])
            if re.search(rf"(?:getenv\(|environ\.get\(|environ\s*\[)\s*{param}\b", m[3]):
                readers[m[1]] = m[3]
    return readers


def reader_reads(text: str, readers: dict[str, str]) -> set[str]:
    """The names text reads through those functions: `envsecret("SECRET_KEY", "---")`."""
    if not readers:
        return set()
    call = re.compile(
        rf"""(?<![\w.])({"|".join(map(re.escape, readers))})\(\s*['"]([A-Z][A-Z0-9_]*)['"]"""
    )
    return {m[2] for m in call.finditer(text)}


def boolean_reads(texts: list[str], readers: dict[str, str]) -> set[str]:
    """The names read through those functions that take only True and False (`if v not in ("",
    "True", "False"): raise`): a switch, never a secret, whatever its name says."""
    booleans = {
        n: b for n, b in readers.items() if set(_BOOLEAN_WORDS.findall(b)) == {"True", "False"}
    }
    return {name for text in texts for name in reader_reads(text, booleans)}


def debug_off(texts: list[str], debug_keys: tuple[str, ...]) -> str:
    """How the code spells a debug setting that is off: "False" where a function of its own that
    takes only True and False reads it, else "false"."""
    return "False" if set(debug_keys) & boolean_reads(texts, env_readers(texts)) else "false"


# the framework's signing key: sessions and tokens need one, whatever default the code has
_SIGNING_KEY = re.compile(r"^(?:DJANGO_|FLASK_|APP_)?SECRET_KEY$")


def optional_reads(texts: list[str], readers: dict[str, str]) -> set[str]:
    """The names the code reads only without a default (`os.getenv("PUSHOVER_TOKEN")`), so runs
    without: what they guard (an integration, a storage) is off until the team sets a real one,
    and a random value from `secrets --generate` would turn it on."""
    call = (
        r"(?:environ\.get\(|getenv\("
        + "".join(rf"|(?<![\w.]){re.escape(r)}\(" for r in readers)
        + r")\s*['\"]([A-Z][A-Z0-9_]*)['\"]\s*(\)|,)"
    )
    bare: set[str] = set()
    defaulted: set[str] = set()
    for text in texts:
        for m in re.finditer(call, text):
            (bare if m[2] == ")" else defaulted).add(m[1])
        defaulted.update(re.findall(r"environ\s*\[\s*['\"]([A-Z][A-Z0-9_]*)['\"]", text))
    return {n for n in bare - defaulted if not _SIGNING_KEY.match(n)}


def _settings_read(base: Path) -> Settings:
    """(keys, secrets, fed aliases): the names the service's code reads from its environment that
    stageflow does not feed itself; a name that says secret (SECRET_KEY, API_TOKEN) is a secret,
    a usual other name of a fed one (DB_HOST, SQLALCHEMY_DATABASE_URI) is mapped to it."""
    names: set[str] = set()
    paths = list(python_files(base))
    texts = [_read(path) for path in paths]
    classes = settings_classes(texts)
    readers = env_readers(texts)
    for path, text in zip(paths, texts, strict=True):
        names.update(_ENV_READ.findall(text))
        names.update(reader_reads(text, readers))
        names.update(settings_fields(text, classes))
        names.update(ini_env_names(path, text, base))
    names -= {*FED_NAMES, *_PROCESS_NAMES, "DJANGO_SETTINGS_MODULE"}
    names = {n for n in names if not n.startswith(_NOT_THE_SERVICE_S)}
    # a stageflow key the service reads as its own (POSTGRES_PORT) holds the value on the host,
    # not in a compose network: fed under its libpq name, it is right on both
    aliases = tuple(sorted((n, FED_ALIASES[n]) for n in names if n in FED_ALIASES))
    # stageflow's own secrets (the database role's password) reach every process already
    names -= {*FED_ALIASES, *STAGEFLOW_KEYS, *SECRET_KEYS}
    switches = boolean_reads(texts, readers)
    secret = {n for n in names - switches if _SECRET_NAME.search(n) and not about_a_secret(n)}
    # one the code runs without is the team's to declare once it has a real value (a note)
    secrets = tuple(sorted(secret - optional_reads(texts, readers)))
    return tuple(sorted(names - secret)), secrets, aliases


def optional_secrets(base: Path) -> tuple[str, ...]:
    """The secret-named settings the code reads only without a default."""
    texts = [_read(path) for path in python_files(base)]
    readers = env_readers(texts)
    names = optional_reads(texts, readers) - boolean_reads(texts, readers)
    names -= {*FED_NAMES, *FED_ALIASES, *STAGEFLOW_KEYS, *SECRET_KEYS}
    names = {n for n in names if not n.startswith(_NOT_THE_SERVICE_S)}
    return tuple(sorted(n for n in names if _SECRET_NAME.search(n) and not about_a_secret(n)))


def _project_name(base: Path) -> str | None:
    """[project] name of pyproject.toml, or poetry's [tool.poetry] name: the name the team gave
    its service."""
    try:
        data = tomllib.loads((base / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    tool = data.get("tool")
    for table in (data.get("project"), tool.get("poetry") if isinstance(tool, dict) else None):
        name = table.get("name") if isinstance(table, dict) else None
        if isinstance(name, str) and name.strip():
            return name
    return None


# what a deploy installs from, in this order: a requirements file at the top, a pyproject.toml
# pip can build, then the split files of a requirements/ folder (the one for production first)
_SPLIT_REQUIREMENTS = ("production.txt", "prod.txt", "base.txt", "common.txt", "main.txt")


def _installable(base: Path) -> bool:
    """pip can install the folder: a pyproject.toml naming a project or a build backend, or a
    setup.py (a pyproject.toml holding only tools' settings builds nothing)."""
    if (base / "setup.py").is_file():
        return True
    try:
        data = tomllib.loads((base / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False
    poetry = data.get("tool", {}).get("poetry") if isinstance(data.get("tool"), dict) else None
    return any(isinstance(t, dict) for t in (data.get("project"), data.get("build-system"), poetry))


def _requirements(base: Path) -> tuple[str, tuple[str, ...]]:
    if (base / "requirements.txt").is_file():
        return "requirements.txt", ()
    if (base / "pyproject.toml").is_file() and _installable(base):
        return "pyproject.toml", ()
    for name in _SPLIT_REQUIREMENTS:
        if (base / "requirements" / name).is_file():
            return f"requirements/{name}", ()
    if (base / "pyproject.toml").is_file():
        return "pyproject.toml", (
            "pyproject.toml names no project or build backend: pip cannot install it; point "
            "[service] requirements at a requirements file",
        )
    if (base / "Pipfile").is_file():
        return "requirements.txt", (
            "pip reads no Pipfile: `pipenv requirements > requirements.txt`, commit it, then deploy",
        )
    return "requirements.txt", (
        "no requirements.txt or pyproject.toml: write one before deploying",
    )


def _relative_dir(root: Path, value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not (root / value).is_dir():
        raise UsageError(f"--dir {value!r} is not a folder inside the repository")
    return str(path) if str(path) != "" else "."


def _from_procfile(root: Path, base: Path) -> tuple[str, str, str, Path] | None:
    """What a Procfile's web line serves, when its module is a file of the service: the way the
    team starts it today beats any guess from the code."""
    web = _procfile_web([base, root])
    module = _module_file(base, web[0]) if web else None
    if web is None or module is None:
        return None
    texts = [_read(module)] + [_read(p) for p in python_files(base)]
    asgi = next((k for k in ("FastAPI", "Starlette") if any(f"{k}(" in t for t in texts)), "")
    worker = web[1] or (ASGI_WORKER if asgi else "sync")
    flask = any(_FLASK_IMPORT.search(t) for t in texts)
    framework = asgi or ("Flask" if flask else "ASGI" if "uvicorn" in worker else "WSGI")
    return framework, web[0], worker, module


# what marks a folder as a Python project of its own: its requirements, its packaging
_PROJECT_FILES = ("pyproject.toml", "requirements.txt", "setup.py", "setup.cfg")


def _project_folder(root: Path, module: Path) -> Path | None:
    """The folder below root that the app's code imports from, when it is a project of its own
    (a `backend/` holding `pyproject.toml` and the package `app/`): the first folder above the
    module's packages (the one above `src/` for a src layout). None when that is root, or a
    folder with no requirements or packaging of its own (then root's are the service's)."""
    folder = module.parent
    while folder != root and (folder / "__init__.py").is_file():
        folder = folder.parent
    if folder != root and folder.name == "src":
        folder = folder.parent
    if folder == root or not any((folder / name).is_file() for name in _PROJECT_FILES):
        return None
    # code that imports the folder by its own name (`from backend.api import ...`) runs from
    # the folder above it
    by_name = re.compile(rf"^\s*(?:from|import)\s+{re.escape(folder.name)}(?:\.|\s|$)", re.M)
    if any(by_name.search(_read(p)) for p in python_files(folder)):
        return None
    return folder


def _django_entry(root: Path, base: Path, manage: Path) -> tuple[str, str, str, Path]:
    """A Django project's app: the wsgi module of manage.py's settings, unless a Procfile's web
    line serves another module of the repository (config.asgi:application, say); its worker
    class either way."""
    web = _procfile_web([base, root])
    spec = web[0] if web and _module_file(base, web[0]) else _django_wsgi(base, manage)
    return "Django", spec, (web[1] if web else None) or "sync", manage


def _entry_point(root: Path, given: Overrides) -> tuple[str, str, str, str, Path | None]:
    """(framework, dir, app spec, worker class, the app's module file when found): the given
    values first, then what the files say."""
    manage = _manage_py(root) if given.dir is None else _manage_py(root / given.dir)
    if given.dir is not None:
        folder = _relative_dir(root, given.dir)
    elif manage is not None:
        folder = str(PurePosixPath(*manage.parent.relative_to(root).parts)) or "."
    else:
        folder = "."
    base = root / folder
    if manage is not None:
        found: tuple[str, str, str, Path] | None = _django_entry(root, base, manage)
    else:
        found = _from_procfile(root, base) or _find_app(base)
        project = _project_folder(root, found[3]) if found and given.dir is None else None
        if project is not None:  # the app's own project folder below the repository's root
            folder, base = str(PurePosixPath(*project.relative_to(root).parts)), project
            found = _from_procfile(root, base) or _find_app(base)
    if given.wsgi:
        same = found is not None and found[1] == given.wsgi
        worker = given.worker_class or (found[2] if found and same else "sync")
        return "given", folder, given.wsgi, worker, found[3] if found and same else None
    if found is None:
        raise UsageError(
            "found no Flask, Django, FastAPI or Starlette app in this repository",
            hint="name it: stageflow init --wsgi package.module:app",
        )
    return found[0], folder, found[1], given.worker_class or found[2], found[3]


def _health(
    framework: str, wsgi: str, module: Path | None, base: Path
) -> tuple[str, str, tuple[str, ...]]:
    """(health, ready, notes): the paths init writes, and what the operator should check."""
    health, ready, placed = _app_health(framework, wsgi, module, base)
    if health == "/" and (framework == "Django" or "/" not in _all_routes(base)):
        return (
            health,
            ready,
            ("no health route found: `/` must answer 2xx, or set [service] health",),
        )
    if framework == "Django" and health == django_admin_path(_django_urls(base, wsgi)):
        return (
            health,
            ready,
            (
                f"no health route found: health is the admin's {health}, which redirects to its login "
                "page while the project is up; a view of your own (/healthz/) says more",
            ),
        )
    if not placed:
        return (
            health,
            ready,
            (f"health {health} is a blueprint's or router's route: add its prefix if it has one",),
        )
    return health, ready, ()


_PRESTART = ("prestart.sh", "scripts/prestart.sh")


def _prestart(base: Path, migrations: Migrations) -> tuple[str, ...]:
    """A note for a prestart script (the convention of uvicorn-gunicorn images: run before the
    server starts) that runs the migrations and more (the first user, initial data): a deploy
    runs `up` alone unless it names the script."""
    if migrations.kind == "none" or not migrations.up:
        return ()
    up = shlex.join(migrations.up)
    for name in _PRESTART:
        lines = [ln.strip() for ln in _read(base / name).splitlines()]
        steps = [ln for ln in lines if ln and not ln.startswith(("#", "set ", "echo "))]
        if up in steps and len(steps) > 1:
            others = "; ".join(s for s in steps if s != up)
            return (
                f"{name} runs `{up}` and more ({others}): for a deploy to run it all, set "
                f'[service.migrations] up = ["bash", "{name}"]',
            )
    return ()


def _switch_secrets(
    base: Path, secrets: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(notes, secrets to declare): a secret the code only uses when it is set (it tests for its
    presence) is left out, with a note: `secrets --generate` would set it, turning on what it
    guards with a random credential."""
    tested = {n for p in python_files(base) for n in _PRESENCE_TEST.findall(_read(p))}
    switches = tuple(n for n in secrets if n in tested and not _OWN_KEY.search(n))
    if not switches:
        return (), secrets
    note = (
        f"secrets the code uses only when set: {', '.join(switches)}; left out of [service.env] "
        "secrets, since a random value would turn on what each guards: declare one there and set "
        "its real value in env/<env>.secrets.env when you use it"
    )
    return (note,), tuple(n for n in secrets if n not in switches)


def _settings(
    base: Path,
) -> tuple[
    tuple[str, ...],
    tuple[str, ...],
    tuple[tuple[str, str], ...],
    tuple[tuple[str, str, str], ...],
    tuple[str, ...],
]:
    """(keys, secrets, fed aliases, values per environment, notes) of the service's settings."""
    keys, secrets, aliases = _settings_read(base)
    notes, secrets = _switch_secrets(base, secrets)
    texts = [_read(p) for p in python_files(base)]
    classes = settings_classes(texts)
    required = sorted({n for t in texts for n in required_settings(t, classes)} & set(keys))
    if required:
        notes += (
            f"settings the code requires, with no default: {', '.join(required)}; set each in "
            "env/<env>.env",
        )
    own_environment, environment_notes = _own_environment(base)
    notes += environment_notes
    env_values: tuple[tuple[str, str, str], ...] = ()
    if own_environment:  # the service's own values, through a key of its own
        keys = tuple(sorted({*keys, OWN_ENVIRONMENT}))
        aliases = tuple(sorted({*aliases, ("ENVIRONMENT", OWN_ENVIRONMENT)}))
        env_values = tuple((env, OWN_ENVIRONMENT, value) for env, value in own_environment)
    engine = _engine_choice(base)
    if engine is not None and engine[0] not in secrets:  # its database is PostgreSQL everywhere
        keys = tuple(sorted({*keys, engine[0]}))
        env_values += tuple((env, *engine) for env in ENVIRONMENT_WORDS)
        notes += (
            f"the settings choose their database engine from {engine[0]}: init sets "
            f"{engine[0]}={engine[1]} in each env/<env>.env, for the PostgreSQL stageflow brings",
        )
    if urls := [k for k in keys if SITE_URL_KEY.match(k)]:
        notes += (
            f"{', '.join(urls)}: init sets each environment's own address "
            "(http://localhost:<APP_PORT>); put your public one in env/staging.env and env/prod.env",
        )
    if optional := optional_secrets(base):
        notes += (
            f"secrets the code reads without a default, and runs without: {', '.join(optional)}; "
            "init leaves them out (a random value would turn on what each guards): declare one "
            "under [service.env] secrets once you have its real value",
        )
    folders = [k for k in keys if _WRITTEN_FOLDER.match(k)]
    if folders:
        notes += (
            f"settings that name a folder the service writes: {', '.join(folders)}; a release "
            "is read-only to the service: set each in env/<env>.env to a folder under "
            "<DATA_DIR>/shared/files (STAGEFLOW_FILES_DIR), kept from release to release",
        )
    if secrets:
        notes += (
            f"secrets the code reads: {', '.join(secrets)}; `inv <env>.secrets --generate` fills "
            "them with random values: set real ones in env/<env>.secrets.env where that is wrong",
        )
    return keys, secrets, aliases, env_values, notes


def detect(root: Path, given: Overrides | None = None) -> Detection:
    """What to write into [service] for the repository at root."""
    given = given or Overrides()
    framework, folder, wsgi, worker, module = _entry_point(root, given)
    base = root / folder
    requirements, notes = _requirements(base)
    notes += driver_note(base, requirements, framework)
    migrations, tool = _migrations(base, framework, wsgi)
    notes += _missing_extensions(base, migrations)
    if migrations.kind == "none":
        notes += (NO_MIGRATIONS_NOTE,)
    health, ready, health_notes = _health(framework, wsgi, module, base)
    notes += health_notes
    django_notes, django_values = _django_settings(base, framework, wsgi)
    notes += django_notes + _prestart(base, migrations)
    keys, secrets, aliases, env_values, settings_notes = _settings(base)
    keys = tuple(sorted({*keys, *(key for _, key, _ in django_values)}))
    env_values += django_values
    notes += settings_notes
    stdout = [k for k in keys if _STDOUT_KEY.match(k)]
    env_values += tuple((env, k, "1") for k in stdout for env in ("dev", "staging", "prod"))
    if (root / "deploy" / "__init__.py").is_file() and not (root / "deploy" / "tasks").is_dir():
        notes += ("a package named deploy/ here hides stageflow's engine from tasks.py: rename it",)
    project = _project_name(base) or _project_name(root)
    processes, procfile_notes = _processes([base, root])
    notes += procfile_notes + _web_line_steps([base, root], migrations)
    notes += _other_server([base, root], wsgi, worker)
    taken = {*keys, *secrets, *(n for n, _ in aliases)}
    aliases += tuple(a for a in _rq_url(processes) if a[0] not in taken)
    aliases += tuple(a for a in _celery_broker(processes) if a[0] not in taken)
    broker = next((n for n, fed in aliases if n in _BROKERS), None)
    if broker and not requires_redis(base, requirements):
        notes += (
            f"{broker} is mapped to the environment's Redis (REDIS_URL), and {requirements} "
            "names no Redis client: add redis (or celery[redis]) to it",
        )
    return Detection(
        name=given.name or service_name(root, project),
        framework=framework,
        dir=folder,
        wsgi=wsgi,
        worker_class=worker,
        requirements=requirements,
        migrations=migrations,
        migration_tool=tool,
        build=_build(base, framework),
        test_command=_test_command(root, folder, framework),
        notes=notes,
        health=health,
        ready=ready,
        env_keys=keys,
        secret_keys=secrets,
        env_from=aliases,
        processes=processes,
        env_values=env_values,
        debug_keys=(debug := tuple(k for k in keys if _DEBUG_KEY.match(k))),
        debug_off=debug_off([_read(p) for p in python_files(base)], debug),
        hosts_keys=tuple(k for k in keys if _HOSTS_KEY.match(k) and framework == "Django"),
        url_keys=tuple(k for k in keys if SITE_URL_KEY.match(k)),
    )
