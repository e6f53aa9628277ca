"""Bad input through `inv`, table-driven: each case exits with its documented code, says one line,
shows no traceback, and changes nothing (files restored, no release, history as before)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deploy.errors import ExitCode
from tests.e2e.conftest import WORKERS, Project, destroy, make_project

ENVS = ("dev", "staging", "prod")
USAGE, GUARD = int(ExitCode.USAGE), int(ExitCode.GUARD_REFUSED)
NOT_APPROVED = int(ExitCode.NOT_APPROVED)
LOCK, FAILURE = int(ExitCode.LOCK_HELD), int(ExitCode.FAILURE)
INVOKE_PARSE = 1  # invoke's own parser (unknown task or flag) exits 1 before stageflow runs
Setup = Callable[[Project], AbstractContextManager[None]]


@pytest.fixture(scope="module")
def proj() -> Iterator[Project]:
    """One project for the whole table: dev up with one good release serving."""
    p = make_project("sf-badinput-")
    try:
        p.ok("dev.up")
        p.ok("dev.deploy")
        yield p
    finally:
        destroy(p)


# -- setups: each changes one thing and puts it back ------------------------------------------------


def _values(p: Project, name: str) -> dict[str, str]:
    text = (p.root / "env" / f"{name}.env").read_text()
    return dict(
        ln.split("=", 1) for ln in text.splitlines() if "=" in ln and not ln.startswith("#")
    )


@contextmanager
def _restoring(path: Path) -> Iterator[None]:
    existed = path.exists()
    data = path.read_bytes() if existed else b""
    mode = path.stat().st_mode if existed else None
    try:
        yield
    finally:
        if existed:
            path.write_bytes(data)
            assert mode is not None
            os.chmod(path, mode)
        else:
            path.unlink(missing_ok=True)


def edit_env(name: str, fn: Callable[[list[str], dict[str, str]], list[str]]) -> Setup:
    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        path = p.root / "env" / f"{name}.env"
        with _restoring(path):
            lines = fn(path.read_text().splitlines(), _values(p, name))
            path.write_text("\n".join(lines) + "\n")
            yield

    return setup


def set_key(key: str, value: str | Callable[[dict[str, str]], str], name: str = "dev") -> Setup:
    def fn(lines: list[str], values: dict[str, str]) -> list[str]:
        new = value(values) if callable(value) else value
        return [f"{key}={new}" if ln.startswith(f"{key}=") else ln for ln in lines]

    return edit_env(name, fn)


def drop_key(key: str, name: str = "dev") -> Setup:
    return edit_env(name, lambda lines, _v: [ln for ln in lines if not ln.startswith(f"{key}=")])


def add_line(line: str, name: str = "dev") -> Setup:
    return edit_env(name, lambda lines, _v: [*lines, line])


def remove_env_file(name: str) -> Setup:
    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        path = p.root / "env" / f"{name}.env"
        with _restoring(path):
            path.unlink()
            yield

    return setup


def secrets_mode(mode: int, name: str = "staging") -> Setup:
    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        path = p.root / "env" / f"{name}.secrets.env"
        with _restoring(path):
            os.chmod(path, mode)
            yield

    return setup


def secrets_line(line: str, name: str = "staging") -> Setup:
    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        path = p.root / "env" / f"{name}.secrets.env"
        with _restoring(path):
            path.write_text(path.read_text() + line + "\n")
            yield

    return setup


def secrets_set(key: str, value: str, name: str = "staging") -> Setup:
    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        path = p.root / "env" / f"{name}.secrets.env"
        with _restoring(path):
            lines = path.read_text().splitlines()
            path.write_text(
                "".join(
                    f"{key}={value}\n" if ln.startswith(f"{key}=") else ln + "\n" for ln in lines
                )
            )
            yield

    return setup


def policy(fn: Callable[[str], str]) -> Setup:
    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        path = p.root / "stageflow.toml"
        with _restoring(path):
            path.write_text(fn(path.read_text()))
            yield

    return setup


def append_policy(text: str) -> Setup:
    return policy(lambda t: t + "\n" + text + "\n")


WORKERS_LINE = f"workers = {WORKERS}"  # as make_project leaves every environment


def replace_policy(old: str, new: str) -> Setup:
    def fn(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return policy(fn)


def dirty_tree() -> Setup:
    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        path = p.root / "README.md"
        with _restoring(path):
            path.write_text(path.read_text() + "\nan uncommitted edit\n")
            yield

    return setup


def migrations(files: dict[str, str]) -> Setup:
    """Commit migration files into the project (deploy reads the commit), then take them out."""

    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        folder = p.root / "app" / "migrations"
        for fname, text in files.items():
            (folder / fname).write_text(text)
        p.commit(f"add {', '.join(files)}")
        try:
            yield
        finally:
            p.git("rm", "-q", *(f"app/migrations/{f}" for f in files))
            p.commit("remove bad migrations")

    return setup


@contextmanager
def committed_venv(p: Project) -> Iterator[None]:
    """A virtualenv committed at the repository's root by mistake, for one case."""
    venv = p.root / ".venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    p.git("add", "-f", ".venv/pyvenv.cfg")
    p.commit("a venv by mistake")
    try:
        yield
    finally:
        p.git("rm", "-q", "-r", ".venv")
        p.commit("no venv")


def symlinked(link: str, target: str, then: Setup | None = None) -> Setup:
    """A symlink in the project (link -> target, both relative to the root) for one case."""

    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        path = p.root / link
        path.symlink_to(target if target.startswith("/") else p.root / target)
        try:
            with then(p) if then else nullcontext():
                yield
        finally:
            path.unlink()

    return setup


def _state(p: Project, env: str) -> Path:
    return p.root / ".stageflow" / env / "state"


@contextmanager
def _planted(top: Path) -> Iterator[None]:
    """Whatever is made under top (absent before) goes afterwards, with the folders made for it."""
    made = [d for d in (top, *top.parents) if not d.exists()]
    assert not top.exists(), top
    try:
        yield
    finally:
        for d in [top, *made]:
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
            elif d.exists() or d.is_symlink():
                d.unlink()


def lock_damage(kind: str, env: str = "dev") -> Setup:
    """The environment's lock left damaged: a file where the directory goes, or a holder file
    that is not UTF-8, not JSON, lacks keys, or is missing."""
    holder = {
        "not-utf8": b"\xff\xfe{",
        "not-json": b'{"who": "ann", "pid": ',
        "missing-keys": b'{"who": "ann"}',
        "empty-dir": None,
    }

    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        lock = _state(p, env) / "lock"
        with _planted(lock):
            if kind == "plain-file":
                lock.parent.mkdir(parents=True, exist_ok=True)
                lock.write_text("not a directory\n")
            else:
                lock.mkdir(parents=True)
                if holder[kind] is not None:
                    (lock / "holder.json").write_bytes(holder[kind])  # type: ignore[arg-type]
            yield

    return setup


def live_lock(env: str = "dev") -> Setup:
    """A lock held right now by a run on another machine whose heartbeat is fresh."""

    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        lock = _state(p, env) / "lock"
        now = time.time()
        with _planted(lock):
            lock.mkdir(parents=True)
            record = {
                "who": "carol@example.com", "pid": 4242, "host": "another-machine",
                "command": f"{env}.deploy", "release": "v9", "time": "2026-01-01T00:00:00Z",
                "since": now, "token": "c" * 32,
            }  # fmt: skip
            (lock / "holder.json").write_text(json.dumps(record))
            (lock / "heartbeat").write_text(repr(now + 3600))  # beats through the whole case
            yield

    return setup


def state_file(env: str, rel: str, content: bytes | None) -> Setup:
    """A state file (history, a request...) planted damaged; None: a directory in its place."""

    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        path = _state(p, env) / rel
        with _planted(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                path.mkdir()
            else:
                path.write_bytes(content)
            yield

    return setup


def _history_damage(content: bytes | None) -> Setup:
    """dev's history with damage after its good lines (a directory: the whole file replaced)."""

    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        path = _state(p, "dev") / "history.jsonl"
        with _restoring(path):
            if content is None:
                path.unlink()
                path.mkdir()
            else:
                path.write_bytes(path.read_bytes() + content)
            try:
                yield
            finally:
                if path.is_dir():
                    path.rmdir()

    return setup


def marked_home(name: str, owner: str) -> Setup:
    """env `name`'s home exists and its marker names `owner` (another clone's environment)."""

    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        home = p.root / ".stageflow" / name
        existed = home.exists()
        marker = home / ".stageflow-env"
        home.mkdir(parents=True, exist_ok=True)
        with _restoring(marker):
            marker.write_text(owner + "\n")
            yield
        if not existed:
            home.rmdir()

    return setup


def _query(query: str) -> Callable[[dict[str, str]], str]:
    return lambda values: f"{values['DATABASE_URL']}?{query}"


def staging_on_dev_db(host: str) -> Setup:
    """staging's DATABASE_URL names dev's database and port through another spelling of the host."""

    @contextmanager
    def setup(p: Project) -> Iterator[None]:
        port = _values(p, "dev")["POSTGRES_PORT"]
        url = f"postgresql://app_staging@{host}:{port}/stageflow_dev"
        with (
            set_key("POSTGRES_PORT", port, "staging")(p),
            set_key("DATABASE_URL", url, "staging")(p),
        ):
            yield

    return setup


def db_redirect(query: str) -> Setup:
    return set_key("DATABASE_URL", _query(query), name="staging")


HUGE_REF = "x" * 100_000


def _pw_url(values: dict[str, str]) -> str:
    return values["DATABASE_URL"].replace("app_dev@", "app_dev:leaked-pw@")


# -- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    code: int
    needle: str = ""  # a fragment the one line must hold (file:line, key, flag...)
    setup: Setup | None = None
    env: dict[str, str] = field(default_factory=dict)
    actor: str | None = None
    max_line: int = 1000  # a message echoing input must cut it (a 100,000-character ref)


CASES: dict[str, Case] = {
    # env files, each malformed kind
    "env-missing-key": Case(
        ("dev.deploy",), USAGE, "dev.env: missing key REDIS_URL", drop_key("REDIS_URL")
    ),
    "env-unknown-key": Case(
        ("dev.deploy",), USAGE, "dev.env:14: unknown key COLOUR", add_line("COLOUR=blue")
    ),
    "env-malformed-line": Case(
        ("dev.deploy",), USAGE, "dev.env:14: malformed line", add_line("this is not an assignment")
    ),
    "env-key-without-value": Case(("dev.up",), USAGE, "dev.env:14:", add_line("FEATURES")),
    "env-duplicate-key": Case(
        ("dev.deploy",), USAGE, "dev.env:14: LOG_LEVEL is set twice", add_line("LOG_LEVEL=info")
    ),
    "env-port-text": Case(
        ("dev.deploy",),
        USAGE,
        "dev.env:3: APP_PORT='abc' is not a port",
        set_key("APP_PORT", "abc"),
    ),
    "env-port-zero": Case(
        ("dev.deploy",), USAGE, "dev.env:3: APP_PORT='0'", set_key("APP_PORT", "0")
    ),
    "env-port-70000": Case(
        ("dev.up",), USAGE, "dev.env:4: POSTGRES_PORT='70000'", set_key("POSTGRES_PORT", "70000")
    ),
    "env-port-negative": Case(
        ("dev.up",), USAGE, "dev.env:5: REDIS_PORT='-1'", set_key("REDIS_PORT", "-1")
    ),
    "env-environment-mismatch": Case(
        ("prod.up",),
        USAGE,
        "prod.env:1: ENVIRONMENT=staging but this is the prod file",
        set_key("ENVIRONMENT", "staging", name="prod"),
    ),
    "env-secret-committed": Case(
        ("dev.deploy",),
        USAGE,
        "dev.env:14: POSTGRES_PASSWORD is a secret in a committed file",
        add_line("POSTGRES_PASSWORD=committed-s3cret-value"),
    ),
    "env-secretish-key": Case(
        ("dev.deploy",),
        USAGE,
        "dev.env:14: SLACK_TOKEN is a secret",
        add_line("SLACK_TOKEN=committed-s3cret-value"),
    ),
    "env-url-password": Case(
        ("dev.deploy",),
        USAGE,
        "dev.env:6: DATABASE_URL carries a password",
        set_key("DATABASE_URL", _pw_url),
    ),
    "env-db-port-mismatch": Case(
        ("dev.deploy",),
        USAGE,
        "dev.env:6: DATABASE_URL port 5999 is not POSTGRES_PORT",
        set_key("DATABASE_URL", "postgresql://app_dev@127.0.0.1:5999/db"),
    ),
    "env-redis-port-mismatch": Case(
        ("dev.deploy",),
        USAGE,
        "dev.env:7: REDIS_URL port 5999 is not REDIS_PORT",
        set_key("REDIS_URL", "redis://127.0.0.1:5999/0"),
    ),
    "env-db-scheme": Case(
        ("dev.deploy",),
        USAGE,
        "dev.env:6: DATABASE_URL must start",
        set_key("DATABASE_URL", "mysql://app_dev@127.0.0.1:1/db"),
    ),
    # a control character in a value would smuggle a setting into the service's environment
    "env-value-newline": Case(
        ("dev.deploy",),
        USAGE,
        "dev.env:10: LOG_LEVEL holds a newline",
        set_key("LOG_LEVEL", '"info\\nDEBUG=true"'),
    ),
    "env-value-escape": Case(
        ("dev.deploy",),
        USAGE,
        "dev.env:9: FEATURES holds the control character U+001B",
        set_key("FEATURES", "notes\x1b[2J"),
    ),
    "env-undeclared-service-key": Case(
        ("dev.deploy",),
        USAGE,
        "dev.env:14: unknown key SMTP_HOST",
        add_line("SMTP_HOST=mail.internal"),
    ),
    "secrets-value-newline": Case(
        ("staging.up",),
        USAGE,
        "staging.secrets.env:4: SECRET_KEY holds a newline",
        secrets_set("SECRET_KEY", '"sign-s3cret-value\\nINJECTED=1"'),
    ),
    "secret-override-newline": Case(
        ("dev.deploy",),
        USAGE,
        "STAGEFLOW_DEV_API_KEYS (process environment) holds a newline",
        env={"STAGEFLOW_DEV_API_KEYS": "key-s3cret-value\nINJECTED=1"},
    ),
    # [posture]: the service's rules on staging and prod
    "posture-debug-staging": Case(
        ("staging.deploy",),
        GUARD,
        "staging: DEBUG must be false, not 'true'",
        set_key("DEBUG", "true", name="staging"),
    ),
    "posture-rate-limit-staging": Case(
        ("staging.deploy",),
        GUARD,
        "API_RATE_LIMIT must be a whole number >= 1, not 'lots'",
        set_key("API_RATE_LIMIT", "lots", name="staging"),
    ),
    "toml-posture-undeclared-key": Case(
        ("dev.deploy",),
        USAGE,
        "[posture.staging] COLOUR is not a key of the env files",
        append_policy('[posture.staging]\nCOLOUR = "blue"'),
    ),
    "env-compose-name": Case(
        ("dev.deploy",),
        USAGE,
        "dev.env:2: COMPOSE_PROJECT_NAME='Has Space'",
        set_key("COMPOSE_PROJECT_NAME", "Has Space"),
    ),
    "env-file-missing": Case(
        ("dev.deploy",), USAGE, "dev.env does not exist", remove_env_file("dev")
    ),
    "env-other-file-broken": Case(
        ("dev.deploy",), USAGE, "staging.env:3: APP_PORT", set_key("APP_PORT", "x", name="staging")
    ),
    "secrets-mode-0644": Case(
        ("staging.up",), USAGE, "staging.secrets.env: is readable by others", secrets_mode(0o644)
    ),
    "secrets-unknown-key": Case(
        ("staging.up",),
        USAGE,
        "staging.secrets.env:5: unknown secret key SMTP_PASSWORD",
        secrets_line("SMTP_PASSWORD=other-s3cret-value"),
    ),
    "secrets-malformed": Case(
        ("staging.up",),
        USAGE,
        "staging.secrets.env:5: malformed line",
        secrets_line("not a secret line s3cret-value"),
    ),
    # stageflow.toml
    "toml-syntax": Case(
        ("dev.deploy",), USAGE, "stageflow.toml:", append_policy("[broken\nx = = 1")
    ),
    "toml-unknown-key": Case(
        ("dev.deploy",),
        USAGE,
        "[environments.dev] unknown key colour",
        replace_policy("[environments.dev]\n", '[environments.dev]\ncolour = "blue"\n'),
    ),
    "toml-bad-runtime": Case(
        ("dev.up",),
        USAGE,
        "runtime must be native or compose",
        replace_policy('runtime = "native"', 'runtime = "kubernetes"'),
    ),
    "toml-keep-releases-1": Case(
        ("dev.deploy",),
        USAGE,
        "keep_releases must be at least 2",
        replace_policy("keep_releases = 3", "keep_releases = 1"),
    ),
    "toml-unknown-environment": Case(
        ("dev.deploy",),
        USAGE,
        "[environments.qa] is not an environment",
        append_policy('[environments.qa]\nhosts = ["local"]'),
    ),
    "toml-wrong-type": Case(
        ("dev.deploy",),
        USAGE,
        "workers has the wrong type",
        replace_policy(WORKERS_LINE, 'workers = "two"'),
    ),
    "toml-bad-threshold": Case(
        ("dev.deploy",),
        USAGE,
        "health_failures must be a positive number",
        replace_policy("health_failures = 3", "health_failures = 0"),
    ),
    "toml-bad-backup": Case(
        ("dev.deploy",),
        USAGE,
        "backup must be never",
        replace_policy('backup = "never"', 'backup = "weekly"'),
    ),
    # environment names: the shell's, and the namespace typed
    "shell-environment-other": Case(
        ("staging.deploy",), GUARD, "ENVIRONMENT=production", env={"ENVIRONMENT": "production"}
    ),
    "shell-environment-unknown": Case(
        ("dev.deploy",), GUARD, "ENVIRONMENT=qa", env={"ENVIRONMENT": "qa"}
    ),
    "shell-environment-short-name": Case(
        ("prod.up",), GUARD, "ENVIRONMENT=prod", env={"ENVIRONMENT": "prod"}
    ),
    "unknown-namespace": Case(("qa.deploy",), INVOKE_PARSE, "qa.deploy"),
    # refs
    "ref-nope": Case(("dev.deploy", "--ref", "nope"), USAGE, "ref 'nope' names no commit"),
    "ref-dash": Case(("dev.deploy", "--ref", "-x"), USAGE, "bad ref '-x'"),
    "ref-empty": Case(("dev.deploy", "--ref", ""), USAGE, "bad ref ''"),
    "ref-beyond-history": Case(("dev.deploy", "--ref", "HEAD~500"), USAGE, "names no commit"),
    "ref-dry-run-nope": Case(
        ("dev.deploy", "--dry-run", "--ref", "nope"), USAGE, "names no commit"
    ),
    # flags
    "flag-limit-text": Case(("dev.history", "--limit", "abc"), USAGE, "--limit"),
    "flag-limit-negative": Case(("dev.history", "--limit", "-5"), USAGE, "--limit"),
    "flag-migrate-to-text": Case(("dev.migrate", "--to", "abc"), USAGE, "--to"),
    "flag-unknown": Case(("dev.deploy", "--bogus"), INVOKE_PARSE, "--bogus"),
    "flag-allow-dirty-staging": Case(
        ("staging.deploy", "--allow-dirty"),
        USAGE,
        "--allow-dirty is not allowed on staging",
        dirty_tree(),
    ),
    # the lock
    "lock-force-without-reason": Case(("dev.lock", "--force"), USAGE, "--reason"),
    "lock-force-blank-reason": Case(("dev.lock", "--force", "--reason", "   "), USAGE, "--reason"),
    # promotion and rollback
    "prod-request-unknown": Case(("prod.deploy", "--request", "999"), NOT_APPROVED, "999"),
    "prod-deploy-without-request": Case(("prod.deploy",), NOT_APPROVED, "approved request"),
    "prod-deploy-ref-and-request": Case(
        ("prod.deploy", "--request", "1", "--ref", "main"), USAGE, "--request, not --ref"
    ),
    "staging-deploy-request": Case(
        ("staging.deploy", "--request", "1"), USAGE, "--request is for prod"
    ),
    "prod-approve-unknown": Case(
        ("prod.approve", "999"), NOT_APPROVED, "no deployment request 999", actor="bob@example.com"
    ),
    "prod-checklist-unknown": Case(("prod.checklist", "999"), NOT_APPROVED, "999"),
    "prod-request-bad-ref": Case(("prod.request", "--ref", "nope"), USAGE, "names no commit"),
    "prod-reject-without-reason": Case(("prod.reject", "999"), USAGE, "--reason"),
    "rollback-level-unknown": Case(("dev.rollback", "--level", "7"), USAGE, "--level 7"),
    "rollback-level-text": Case(("dev.rollback", "--level", "abc"), USAGE, "--level"),
    "rollback-prod-reset-data": Case(
        ("prod.rollback", "--level", "1", "--reset-data"),
        USAGE,
        "--reset-data is not allowed on prod",
    ),
    "unfreeze-without-reason": Case(("dev.unfreeze",), USAGE, "--reason"),
    # migration files committed into the project, then deployed
    "migration-bad-name": Case(
        ("dev.deploy",),
        USAGE,
        "0004_Bad-Name.up.sql",
        migrations({"0004_Bad-Name.up.sql": "SELECT 1;\n"}),
    ),
    "migration-gap": Case(
        ("dev.deploy",), USAGE, "0005_skipped", migrations({"0005_skipped.up.sql": "SELECT 1;\n"})
    ),
    "migration-unknown-header": Case(
        ("dev.deploy",),
        USAGE,
        "unknown stageflow header",
        migrations({"0004_retry.up.sql": "-- stageflow: retries=3\nSELECT 1;\n"}),
    ),
    "migration-down-without-up": Case(
        ("dev.deploy",),
        USAGE,
        "0004_orphan.down.sql",
        migrations({"0004_orphan.down.sql": "SELECT 1;\n"}),
    ),
    "migration-duplicate-version": Case(
        ("dev.deploy",),
        USAGE,
        "duplicate migration version 3",
        migrations({"0003_again.up.sql": "SELECT 1;\n"}),
    ),
    # isolation: a DATABASE_URL's query cannot redirect the connection libpq makes
    "db-query-attack": Case(
        ("staging.deploy",),
        USAGE,
        "staging.env:6: DATABASE_URL's query sets dbname, host, port, user",
        db_redirect("host=/tmp&port=5432&user=postgres&dbname=stageflow_prod"),
    ),
    "db-query-hostaddr": Case(
        ("staging.deploy",), USAGE, "query sets hostaddr", db_redirect("hostaddr=10.1.2.3")
    ),
    "db-query-service": Case(
        ("staging.up",), USAGE, "query sets service", db_redirect("service=prod")
    ),
    "db-query-passfile": Case(
        ("staging.deploy",), USAGE, "query sets passfile", db_redirect("passfile=/root/.pgpass")
    ),
    "db-query-options": Case(
        ("staging.deploy",), USAGE, "query sets options", db_redirect("options=-crole%3Dpostgres")
    ),
    "db-query-application-name": Case(
        ("staging.deploy",),
        USAGE,
        "query sets application_name",
        db_redirect("application_name=stageflow-prod"),
    ),
    "db-query-encoded-key": Case(
        ("staging.deploy",), USAGE, "query sets host", db_redirect("%68ost=/tmp")
    ),
    "db-query-behind-safe-key": Case(
        ("staging.deploy",), USAGE, "query sets dbname", db_redirect("sslmode=disable&dbname=x")
    ),
    "db-several-hosts": Case(
        ("staging.deploy",),
        USAGE,
        "DATABASE_URL names several hosts",
        set_key(
            "DATABASE_URL",
            lambda v: v["DATABASE_URL"].replace("@127.0.0.1:", "@127.0.0.1:1,127.0.0.1:"),
            name="staging",
        ),
    ),
    "db-fragment": Case(("staging.deploy",), USAGE, "DATABASE_URL holds a '#'", db_redirect("#x")),
    "db-loopback-alias-shared": Case(
        ("staging.deploy",),
        GUARD,
        "dev and staging share the database stageflow_dev",
        staging_on_dev_db("127.1"),
    ),
    "db-socket-dir-shared": Case(
        ("staging.deploy",),
        GUARD,
        "dev and staging share the database stageflow_dev",
        staging_on_dev_db("%2Ftmp"),
    ),
    "redis-query-db": Case(
        ("staging.deploy",),
        USAGE,
        "staging.env:7: REDIS_URL holds a query",
        set_key("REDIS_URL", lambda v: v["REDIS_URL"] + "?db=3", name="staging"),
    ),
    "redis-query-socket": Case(
        ("staging.up",),
        USAGE,
        "REDIS_URL holds a query",
        set_key("REDIS_URL", lambda v: v["REDIS_URL"] + "?unix_socket_path=/tmp/x", name="staging"),
    ),
    # isolation: homes resolved through symlinks, never / nor the project itself
    "data-dir-root": Case(
        ("staging.deploy",),
        USAGE,
        "staging.env:8: DATA_DIR='/'",
        set_key("DATA_DIR", "/", "staging"),
    ),
    "data-dir-parent": Case(
        ("dev.deploy",), USAGE, "holds the project itself", set_key("DATA_DIR", "..")
    ),
    "data-dir-project": Case(
        ("dev.up",), USAGE, "holds the project itself", set_key("DATA_DIR", ".")
    ),
    "data-dir-symlink-to-root": Case(
        ("staging.deploy",),
        USAGE,
        "holds the project itself",
        symlinked("everything", "/", set_key("DATA_DIR", "everything", "staging")),
    ),
    "data-dir-symlink-to-other-home": Case(
        ("staging.deploy",),
        GUARD,
        "dev and staging share the data directory",
        symlinked("innocent", ".stageflow/dev", set_key("DATA_DIR", "innocent", "staging")),
    ),
    "data-dir-symlink-up-to-other-home": Case(
        ("staging.up",),
        GUARD,
        "dev and staging share the data directory",
        symlinked("alias", ".stageflow", set_key("DATA_DIR", "alias/dev/x", "staging")),
    ),
    "home-marked-for-another": Case(
        ("staging.deploy",), GUARD, "marked as 'prod'", marked_home("staging", "prod")
    ),
}


def _dev_policy(line: str) -> Setup:
    return replace_policy("[environments.dev]\n", f"[environments.dev]\n{line}\n")


# bad policy values, broken state files, hostile sizes and sources: refused as the rest
CASES |= {
    # every numeric and enum policy key is range-checked on load
    "toml-workers-zero": Case(
        ("dev.deploy",),
        USAGE,
        "[environments.dev] workers must be a number >= 1, not 0",
        replace_policy(WORKERS_LINE, "workers = 0"),
    ),
    "toml-workers-negative": Case(
        ("dev.up",),
        USAGE,
        "workers must be a number >= 1",
        replace_policy(WORKERS_LINE, "workers = -1"),
    ),
    "toml-verify-window-negative": Case(
        ("dev.deploy",),
        USAGE,
        "verify_window_s must be a number >= 0, not -3",
        replace_policy("verify_window_s = 0", "verify_window_s = -3"),
    ),
    "toml-verify-window-inf": Case(
        ("dev.deploy",),
        USAGE,
        "verify_window_s must be a number >= 0, not inf",
        replace_policy("verify_window_s = 0", "verify_window_s = inf"),
    ),
    "toml-verify-window-nan": Case(
        ("dev.deploy",),
        USAGE,
        "verify_window_s must be a number >= 0, not nan",
        replace_policy("verify_window_s = 0", "verify_window_s = nan"),
    ),
    "toml-soak-negative": Case(
        ("staging.deploy",),
        USAGE,
        "[environments.staging] soak_s must be a number >= 0",
        replace_policy("soak_s = 0", "soak_s = -1"),
    ),
    "toml-refresh-zero": Case(
        ("staging.monitor",),
        USAGE,
        "refresh_s must be a number > 0, not 0",
        replace_policy("refresh_s = 5", "refresh_s = 0"),
    ),
    "toml-relax-factor-zero": Case(
        ("dev.deploy",),
        USAGE,
        "relax_factor must be a number > 0, not 0",
        replace_policy("relax_factor = 2", "relax_factor = 0"),
    ),
    "toml-relax-factor-negative": Case(
        ("staging.deploy",),
        USAGE,
        "relax_factor must be a number > 0",
        replace_policy("relax_factor = 2", "relax_factor = -2"),
    ),
    "toml-service-user-root": Case(
        ("dev.up",),
        USAGE,
        "[project] service_user must not be root",
        replace_policy('service_user = "stageflow"', 'service_user = "root"'),
    ),
    "toml-service-user-not-a-name": Case(
        ("dev.deploy",),
        USAGE,
        "service_user must be a plain user name",
        replace_policy('service_user = "stageflow"', 'service_user = "Not A User"'),
    ),
    "toml-lock-timeout-text": Case(
        ("dev.deploy",),
        USAGE,
        "[environments.dev] lock_timeout='soon' is not a duration",
        _dev_policy('lock_timeout = "soon"'),
    ),
    "toml-statement-timeout-words": Case(
        ("dev.migrate",),
        USAGE,
        "statement_timeout='5 minutes' is not a duration",
        _dev_policy('statement_timeout = "5 minutes"'),
    ),
    "toml-statement-timeout-number": Case(
        ("dev.deploy",),
        USAGE,
        "statement_timeout has the wrong type",
        _dev_policy("statement_timeout = 5"),
    ),
    "toml-deploy-timeout-zero": Case(
        ("dev.deploy",),
        USAGE,
        "deploy_timeout_s must be a number > 0, not 0",
        _dev_policy("deploy_timeout_s = 0"),
    ),
    "toml-deploy-timeout-negative": Case(
        ("dev.deploy",),
        USAGE,
        "deploy_timeout_s must be a number > 0",
        _dev_policy("deploy_timeout_s = -5"),
    ),
    "toml-threshold-inf": Case(
        ("dev.deploy",),
        USAGE,
        "p95_ratio must be a positive number",
        replace_policy("p95_ratio = 2.0", "p95_ratio = inf"),
    ),
    "toml-threshold-nan": Case(
        ("dev.deploy",),
        USAGE,
        "memory_mb must be a positive number",
        replace_policy("memory_mb = 512", "memory_mb = nan"),
    ),
    "toml-batch-zero": Case(
        ("dev.deploy",), USAGE, "batch=0 is not a batch size", _dev_policy("batch = 0")
    ),
    "toml-batch-over-100": Case(
        ("dev.deploy",), USAGE, "batch='150%' is not a batch size", _dev_policy('batch = "150%"')
    ),
    "toml-keep-releases-0": Case(
        ("dev.deploy",),
        USAGE,
        "keep_releases must be at least 2",
        replace_policy("keep_releases = 3", "keep_releases = 0"),
    ),
    "toml-auto-rollback-text": Case(
        ("dev.deploy",),
        USAGE,
        "auto_rollback has the wrong type",
        replace_policy("auto_rollback = false", 'auto_rollback = "no"'),
    ),
    "toml-runtime-empty": Case(
        ("dev.deploy",),
        USAGE,
        "runtime must be native or compose",
        replace_policy('runtime = "native"', 'runtime = ""'),
    ),
    "toml-hosts-empty": Case(
        ("dev.deploy",),
        USAGE,
        "hosts must be a non-empty list",
        replace_policy('hosts = ["local"]', "hosts = []"),
    ),
    "toml-hooks-timeout-zero": Case(
        ("dev.deploy",),
        USAGE,
        "timeout_s must be a positive number",
        append_policy("[hooks]\ntimeout_s = 0"),
    ),
    # the lock: damaged holders name the file; a live holder is never broken by --force
    "lock-plain-file": Case(
        ("dev.deploy",), LOCK, "is a file, not the lock directory", lock_damage("plain-file")
    ),
    "lock-holder-not-utf8": Case(
        ("dev.deploy",), LOCK, "holder.json is not UTF-8", lock_damage("not-utf8")
    ),
    "lock-holder-not-json": Case(
        ("dev.deploy",), LOCK, "holder.json is not a holder record", lock_damage("not-json")
    ),
    "lock-holder-missing-keys": Case(
        ("dev.deploy",), LOCK, "holder.json is not a holder record", lock_damage("missing-keys")
    ),
    "lock-holder-missing": Case(
        ("dev.deploy",), LOCK, "holder.json is missing", lock_damage("empty-dir")
    ),
    "lock-damaged-force-without-reason": Case(
        ("dev.lock", "--force"), USAGE, "--reason", lock_damage("plain-file")
    ),
    "lock-damaged-rollback": Case(
        ("dev.rollback", "--level", "1"), LOCK, "unreadable holder", lock_damage("not-json")
    ),
    "lock-live-force": Case(
        ("dev.lock", "--force", "--reason", "looks stuck"), LOCK, "and alive", live_lock()
    ),
    "lock-live-deploy": Case(("dev.deploy",), LOCK, "held by carol@example.com", live_lock()),
    "lock-live-release-by-other": Case(
        ("dev.lock", "--release"), USAGE, "the lock is held by carol@example.com", live_lock()
    ),
    "lock-live-staging-force": Case(
        ("staging.lock", "--force", "--reason", "x"), LOCK, "and alive", live_lock("staging")
    ),
    # state files: corrupt, truncated or not UTF-8 name the file and the repair
    "history-not-utf8": Case(
        ("dev.history",), USAGE, "history.jsonl is not UTF-8", _history_damage(b"\xff\xfe\n")
    ),
    "history-not-utf8-status": Case(
        ("status",), USAGE, "history.jsonl is not UTF-8", _history_damage(b'{"id": "\xff"}\n')
    ),
    "history-not-utf8-json": Case(
        ("dev.history", "--json"), USAGE, "move it aside", _history_damage(b"\xc3\n")
    ),
    "history-is-a-directory": Case(
        ("dev.history",), USAGE, "history.jsonl is a directory", _history_damage(None)
    ),
    "prod-request-file-not-json": Case(
        ("prod.checklist", "7"),
        USAGE,
        "7.json is not JSON (line 1",
        state_file("prod", "requests/7.json", b'{"id": 7, "ref"'),
    ),
    "prod-request-file-not-utf8": Case(
        ("prod.approve", "7"),
        USAGE,
        "7.json is not UTF-8",
        state_file("prod", "requests/7.json", b"\xff\xfe"),
        actor="bob@example.com",
    ),
    "prod-request-file-missing-keys": Case(
        ("prod.checklist", "7"),
        USAGE,
        "7.json lacks ref, commit",
        state_file("prod", "requests/7.json", b'{"id": 7}'),
    ),
    "prod-request-file-empty": Case(
        ("prod.reject", "7", "--reason", "bad"),
        USAGE,
        "7.json is empty",
        state_file("prod", "requests/7.json", b""),
    ),
    "prod-request-file-a-list": Case(
        ("prod.approve", "7"),
        USAGE,
        "7.json holds no JSON object",
        state_file("prod", "requests/7.json", b"[7]"),
        actor="bob@example.com",
    ),
    "prod-request-file-a-directory": Case(
        ("prod.checklist", "7"),
        USAGE,
        "7.json is a directory",
        state_file("prod", "requests/7.json", None),
    ),
    "prod-request-file-deploy": Case(
        ("prod.deploy", "--request", "7"),
        USAGE,
        "7.json is not JSON",
        state_file("prod", "requests/7.json", b"{"),
    ),
    # a huge ref is cut in the one line, not echoed whole
    "ref-huge": Case(("dev.deploy", "--ref", HUGE_REF), USAGE, "(100000 characters)", max_line=400),
    "ref-huge-dry-run": Case(
        ("dev.deploy", "--dry-run", "--ref", HUGE_REF), USAGE, "names no commit", max_line=400
    ),
    "ref-huge-staging": Case(
        ("staging.deploy", "--ref", HUGE_REF), USAGE, "(100000 characters)", max_line=400
    ),
    "ref-huge-dash": Case(
        ("dev.deploy", "--ref", "-" + HUGE_REF[1:]), USAGE, "bad ref '-xxx", max_line=400
    ),
    "prod-request-huge-ref": Case(
        ("prod.request", "--ref", HUGE_REF), USAGE, "(100000 characters)", max_line=400
    ),
    # refresh brings prod's data, from nowhere else
    "refresh-from-dev": Case(
        ("staging.refresh", "--from", "dev", "--anonymize"),
        USAGE,
        "cannot refresh staging from 'dev'",
    ),
    "refresh-from-staging": Case(
        ("staging.refresh", "--from", "staging", "--anonymize"),
        USAGE,
        "cannot refresh staging from 'staging'",
    ),
    "refresh-from-unknown": Case(
        ("staging.refresh", "--from", "qa", "--anonymize"), USAGE, "use --from prod"
    ),
    # migrations: timeout headers, and --resolve's inputs
    "migration-bad-lock-timeout": Case(
        ("dev.deploy",),
        USAGE,
        "bad value 'lock_timeout=soon'",
        migrations({"0004_slow.up.sql": "-- stageflow: lock_timeout=soon\nSELECT 1;\n"}),
    ),
    "migration-bad-statement-timeout": Case(
        ("dev.deploy",),
        USAGE,
        "bad value 'statement_timeout=-1s'",
        migrations({"0004_slow.up.sql": "-- stageflow: statement_timeout=-1s\nSELECT 1;\n"}),
    ),
    "migrate-resolve-text": Case(("dev.migrate", "--resolve", "abc"), USAGE, "--resolve"),
    "migrate-resolve-zero": Case(("dev.migrate", "--resolve", "0"), USAGE, "--resolve"),
    "migrate-resolve-bad-mark": Case(
        ("dev.migrate", "--resolve", "2", "--mark", "bogus"),
        USAGE,
        "--resolve needs --mark applied or --mark reverted",
    ),
    "migrate-resolve-not-failed": Case(
        ("dev.migrate", "--resolve", "2", "--mark", "reverted"),
        FAILURE,
        "version 2 is not failed (state: applied)",
    ),
    # flags at their edges
    "flag-limit-zero": Case(("dev.history", "--limit", "0"), USAGE, "--limit"),
    "flag-migrate-to-zero": Case(("dev.migrate", "--to", "0"), USAGE, "--to"),
    "rollback-level-zero": Case(("dev.rollback", "--level", "0"), USAGE, "--level 0"),
    "prod-reject-unknown": Case(
        ("prod.reject", "999", "--reason", "no"), NOT_APPROVED, "no deployment request 999"
    ),
}


def state_snapshot(p: Project) -> dict[str, object]:
    """Everything a refused command must leave alone."""
    snap: dict[str, object] = {}
    for path in sorted((p.root / "env").iterdir()):
        snap[f"env/{path.name}"] = (path.read_bytes(), path.stat().st_mode)
    snap["stageflow.toml"] = (p.root / "stageflow.toml").read_bytes()
    for name in ENVS:
        home = p.root / ".stageflow" / name
        releases = home / "releases"
        snap[f"{name}/releases"] = sorted(os.listdir(releases)) if releases.is_dir() else []
        current = home / "current"
        snap[f"{name}/current"] = os.readlink(current) if current.is_symlink() else None
        state = home / "state"  # history, audit, lock, requests, approvals
        files = sorted(state.rglob("*")) if state.is_dir() else []
        for f in files:
            snap[f"{name}/{f.relative_to(state)}"] = f.read_bytes() if f.is_file() else "dir"
        snap[f"{name}/state"] = [str(f.relative_to(state)) for f in files]
    return snap


def _has_flag(p: Project, task: str, flag: str) -> bool:
    res = p.inv(task, "--help")
    return res.returncode == 0 and flag in res.stdout


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_is_refused_in_one_line_and_changes_nothing(proj: Project, case_id: str) -> None:
    case = CASES[case_id]
    if case_id.startswith("prod-") and not _has_flag(proj, "prod.deploy", "--request"):
        pytest.skip("prod.deploy has no --request flag (promotion not wired in)")
    before = state_snapshot(proj)
    setup = case.setup(proj) if case.setup else nullcontext()
    with setup:
        res = proj.inv(*case.args, env=case.env, actor=case.actor)
    after = state_snapshot(proj)

    out = res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    problems = [
        *(["a traceback"] if "Traceback" in out else []),
        *([f"exit {res.returncode}, expected {case.code}"] if res.returncode != case.code else []),
        *([f"{len(lines)} lines on stderr, expected 1"] if len(lines) != 1 else []),
        *([f"stderr lacks {case.needle!r}"] if not lines or case.needle not in lines[0] else []),
        *([f"a line over {case.max_line} characters"] if len(res.stderr) > case.max_line else []),
        *(["a secret value in the output"] if "s3cret" in out else []),
        *[
            f"changed {k}"
            for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)
        ],
    ]
    assert not problems, (
        f"inv {' '.join(case.args)}: {'; '.join(problems)}\n"
        f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    )


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 120


def test_project_still_serves_after_the_table(proj: Project) -> None:
    # every refusal above left the first release serving and the tree clean
    assert (
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=proj.root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        == ""
    )
    proj.ok("dev.smoke")


def test_a_virtualenv_committed_by_mistake_is_named_and_the_release_serves_on(
    proj: Project,
) -> None:
    current = proj.root / ".stageflow" / "dev" / "current"
    before = os.readlink(current) if current.is_symlink() else None
    with committed_venv(proj):
        res = proj.inv("dev.deploy")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == FAILURE and "Traceback" not in res.stdout + res.stderr
    assert len(lines) == 1 and "holds a .venv at the repository's root" in lines[0], lines
    assert "git rm -r --cached .venv" in lines[0]
    assert (os.readlink(current) if current.is_symlink() else None) == before
    assert not list((proj.root / ".stageflow" / "dev" / "releases").glob("*.partial"))
