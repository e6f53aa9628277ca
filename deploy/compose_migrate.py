"""The migration engine's entry point inside a release's image (the compose runtime's migrate step).

The compose runtime runs this in a one-off container of the release's image, inside the project
network: `python -m deploy.compose_migrate up --dir D --release R --applied-by A` or
`... down --dir D --to N --release R --applied-by A`, each with the environment's
`--lock-timeout`, `--statement-timeout` and `--deadline-s` (the seconds the deploy has left).
It reads DATABASE_URL and POSTGRES_PASSWORD from the container's environment (compose sets both)
and the files the image ships in D (the service's migrations.dir, relative to the image's
working directory), and
calls deploy.migrations: the same ledger, checksums and advisory lock as the native runtime.
It prints one JSON line ({"applied": [...]} or {"reverted": [...]}); an expected failure is one
line on stderr and the error's exit code. Only the standard library, psycopg and
deploy.{errors,secrets,migrations} are imported: the image carries nothing more.

A service whose own tool migrates (kind "command": alembic, Flask-Migrate, Django) gets the `tool`
action: `... tool --current JSON [--up JSON | --down JSON] [--unchanged-from JSON] [--pgoptions S]
[--deadline-s N]`, each JSON an argv (--down: a list of them). It holds the migration lock for the
whole sequence (psycopg, or psycopg2 where the service's image has only that driver), runs
`current`, then `up` (skipped when `current` printed --unchanged-from) or each `down`, then
`current` again, each in the container's environment with PGOPTIONS carrying the environment's
lock and statement timeouts, and prints {"before": {...}, "after": {...}}. With neither --up nor
--down it only reads `current`, without the lock.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from deploy import migrations
from deploy.errors import DeployError, ExitCode, MigrationError, UsageError
from deploy.secrets import Secret, scrub


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.compose_migrate")
    sub = p.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="apply every pending migration the image ships")
    down = sub.add_parser("down", help="run down files of applied versions above --to")
    down.add_argument("--to", type=int, required=True, dest="to_version")
    for one in (up, down):
        one.add_argument("--dir", required=True, dest="directory")
        one.add_argument("--release", default="")
        one.add_argument("--applied-by", default="")
        # the environment's policy, as the native runtime applies it (a file's headers win)
        one.add_argument("--lock-timeout", default="5s")
        one.add_argument("--statement-timeout", default="0")
        one.add_argument("--deadline-s", type=float, default=None)
    tool = sub.add_parser("tool", help="the service's own migration commands, under the lock")
    tool.add_argument("--current", required=True, type=_argv_json)
    moves = tool.add_mutually_exclusive_group()
    moves.add_argument("--up", type=_argv_json, default=None)
    moves.add_argument("--down", type=_argvs_json, default=None)
    tool.add_argument("--unchanged-from", type=_revisions_json, default=None)
    tool.add_argument("--pgoptions", default="")
    tool.add_argument("--lock-wait-s", type=float, default=30.0)
    tool.add_argument("--deadline-s", type=float, default=None)
    return p


def _argv_json(text: str) -> list[str]:
    value = json.loads(text)
    if not isinstance(value, list) or not value or not all(isinstance(w, str) for w in value):
        raise argparse.ArgumentTypeError("a JSON list of strings (a command's argv)")
    return value


def _argvs_json(text: str) -> list[list[str]]:
    value = json.loads(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError("a JSON list of argv lists")
    return [_argv_json(json.dumps(one)) for one in value]


def _revisions_json(text: str) -> dict[str, str]:
    value = json.loads(text)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise argparse.ArgumentTypeError("a JSON object of app -> revision")
    return value


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The timeouts for deploy.migrations; the deadline, seconds from now on the command line,
    becomes this process's monotonic clock (the deployer's does not cross into the container)."""
    if args.deadline_s is not None and args.deadline_s <= 0:
        raise UsageError(f"--deadline-s {args.deadline_s:g}: the deploy has no time left")
    deadline = None if args.deadline_s is None else time.monotonic() + args.deadline_s
    return {
        "lock_timeout": args.lock_timeout,
        "statement_timeout": args.statement_timeout,
        "deadline": deadline,
    }


def run(argv: Sequence[str], environ: Mapping[str, str], *, root: Path) -> dict[str, Any]:
    """Carry out one action; returns what was applied or reverted."""
    args = _parser().parse_args(list(argv))
    url = environ.get("DATABASE_URL", "")
    if not url:
        raise UsageError(
            "DATABASE_URL is not set in the container",
            hint="compose/compose.yml sets it for the app service",
        )
    raw = environ.get("POSTGRES_PASSWORD")
    password = Secret(raw) if raw else None
    if args.action == "tool":
        return _tool(args, url, password, environ)
    directory = Path(args.directory)
    if directory.is_absolute() or ".." in directory.parts:
        raise UsageError(f"--dir {args.directory}: a path inside the image's working directory")
    files = migrations.discover(root / directory)
    who = {"release": args.release, "applied_by": args.applied_by, "password": password}
    if args.action == "up":
        done = migrations.migrate(url, files, **who, **_limits(args))
        return {"applied": [f.version for f in done]}
    done = migrations.revert(url, files, to_version=args.to_version, **who, **_limits(args))
    return {"reverted": [f.version for f in done]}


class _Tool:
    """The service's commands in this container, each bounded by what the deadline leaves."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.env = {**environ, "PGOPTIONS": args.pgoptions} if args.pgoptions else dict(environ)
        self.deadline = None if args.deadline_s is None else time.monotonic() + args.deadline_s
        # the controller scrubs every secret it knows from what it shows; here, the passwords
        self.secrets = [Secret(v) for k, v in environ.items() if k.endswith("PASSWORD") and v]

    def run(self, argv: Sequence[str], *, what: str) -> str:
        left = None if self.deadline is None else self.deadline - time.monotonic()
        if left is not None and left <= 0:
            raise MigrationError(
                f"{what} `{shlex.join(argv)}` not started: the deploy has no time left",
                hint="raise deploy_timeout_s in the environment's table, or retry",
            )
        try:
            # its own session, so a timeout ends whatever it started too
            proc = subprocess.Popen(
                list(argv), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL, text=True, start_new_session=True,
            )  # fmt: skip
        except OSError as err:
            raise MigrationError(
                f"{what} `{shlex.join(argv)}` cannot start: {err.strerror}",
                hint="install the tool in the service's requirements",
            ) from None
        try:
            out, err_text = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):  # it may end on its own meanwhile
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise MigrationError(
                f"{what} `{shlex.join(argv)}` was stopped after {left:.0f}s: the deploy reached "
                "deploy_timeout_s",
                hint="raise deploy_timeout_s, or make the migration shorter; the previous "
                "release still serves",
            ) from None
        if proc.returncode != 0:
            tail = " | ".join(
                line.strip() for line in f"{err_text}\n{out}".strip().splitlines()[-2:]
            )
            raise MigrationError(
                scrub(
                    f"{what} `{shlex.join(argv)}` exited {proc.returncode}: {tail}", self.secrets
                ),
                hint="fix the migration and deploy again; the previous release still serves",
            )
        return out

    def current(self, argv: Sequence[str]) -> dict[str, str]:
        return migrations.parse_revisions(self.run(argv, what="the current command"))


def _tool(
    args: argparse.Namespace, url: str, password: Secret | None, environ: Mapping[str, str]
) -> dict[str, Any]:
    tool = _Tool(args, environ)
    if args.up is None and args.down is None:
        now = tool.current(args.current)
        return {"before": now, "after": now}
    with _held_lock(url, password, wait_s=args.lock_wait_s):
        before = tool.current(args.current)
        if args.up is not None:
            if args.unchanged_from is not None and before == args.unchanged_from:
                return {"before": before, "after": before}
            tool.run(args.up, what="the up command")
        else:
            for argv in args.down:
                tool.run(argv, what="the down command")
        return {"before": before, "after": tool.current(args.current)}


def _held_lock(url: str, password: Secret | None, *, wait_s: float) -> Any:
    """The engine's migration lock through psycopg; through psycopg2 where the service's image
    has only that driver; refused where it has neither (no lock, no migration)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pass
    else:
        return migrations.holding_lock(url, password=password, lock_wait_s=wait_s)
    try:
        import psycopg2
    except ImportError:
        raise MigrationError(
            "the image has no PostgreSQL driver (psycopg or psycopg2) to hold the migration lock",
            hint="add psycopg or psycopg2 to the service's requirements",
        ) from None
    return _psycopg2_lock(psycopg2, url, password, wait_s)


@contextmanager
def _psycopg2_lock(driver: Any, url: str, password: Secret | None, wait_s: float) -> Iterator[None]:
    kwargs = {"password": password.reveal()} if password is not None else {}
    try:
        conn = driver.connect(url, connect_timeout=10, application_name="stageflow-migrations",
                              **kwargs)  # fmt: skip
    except driver.Error as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise MigrationError(
            scrub(f"cannot connect to the database: {first}", [password] if password else ()),
            hint="check that PostgreSQL runs and the database URL is right",
        ) from None
    conn.autocommit = True
    try:
        cur = conn.cursor()
        end = time.monotonic() + max(wait_s, 0.0)
        while True:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (migrations.LOCK_KEY,))
            if cur.fetchone()[0]:
                break
            if time.monotonic() >= end:
                raise MigrationError(
                    f"another migration holds the lock; waited {wait_s:g}s",
                    hint="let it finish and retry",
                )
            time.sleep(migrations.LOCK_POLL_S)
        yield
    finally:
        conn.close()  # the session's lock goes with it


def main(argv: Sequence[str] | None = None) -> int:
    try:
        result = run(sys.argv[1:] if argv is None else argv, os.environ, root=Path.cwd())
    except DeployError as err:
        print(f"stageflow: {err.line()}", file=sys.stderr)
        return int(err.exit_code)
    print(json.dumps(result, separators=(",", ":")))
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
