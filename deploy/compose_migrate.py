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
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy import migrations
from deploy.errors import DeployError, ExitCode, UsageError
from deploy.secrets import Secret


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
    return p


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


def run(argv: Sequence[str], environ: Mapping[str, str], *, root: Path) -> dict[str, list[int]]:
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
