"""The `stageflow` command: `stageflow init` adopts a repository; any other arguments run a task
exactly as `inv` would (the project's tasks.py, or the engine's namespace where there is none)."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from deploy.errors import DeployError, ExitCode, UsageError

INIT_USAGE = "stageflow init [--name NAME] [--dir DIR] [--wsgi MODULE:APP] [--worker-class CLASS]"
NEXT_STEPS = (
    "review stageflow.toml [service], then commit the new files",
    "inv dev.up          # dev's own PostgreSQL and Redis",
    "inv dev.deploy      # build, migrate, start and smoke HEAD on dev",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as one UsageError line, not usage text and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"init: {message}", hint=f"usage: {INIT_USAGE}")


def _init_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stageflow init", description="Adopt this git repository.")
    parser.add_argument("--name", help="the service's name (default: the repository's folder)")
    parser.add_argument("--dir", help="the folder the service runs from (default: detected)")
    parser.add_argument("--wsgi", help="the app spec gunicorn serves, module:object")
    parser.add_argument("--worker-class", dest="worker_class", help="gunicorn's worker class")
    return parser


def init(args: list[str], *, cwd: Path | None = None) -> int:
    """Detect, refuse if any target exists (writing nothing), write, and show what was found."""
    from deploy.adopt import init as adopt
    from deploy.adopt.detect import Overrides
    from deploy.output import print_table, say

    opts = _init_parser().parse_args(args)
    plan = adopt.plan(
        cwd or Path.cwd(), Overrides(opts.name, opts.dir, opts.wsgi, opts.worker_class)
    )
    clashes = adopt.existing(plan)
    for rel in clashes:
        sys.stderr.write(f"stageflow: {rel} already exists (move it aside to let init write it)\n")
    if clashes:
        sys.stderr.write("stageflow: init wrote nothing\n")
        return int(ExitCode.USAGE)
    ignore = plan.root / ".gitignore"
    before = _text(ignore)
    gitignored = adopt.write(plan)
    print_table("stageflow init: what was found", ["what", "value"], adopt.summary(plan))
    for note in plan.detection.notes:
        say(f"check: {note}")
    if gitignored:
        say(
            f"check: git ignores {', '.join(gitignored)}: commit them anyway (git add -f), the "
            "release gate reads the env files from the commit"
        )
    written = [*plan.files, *([".gitignore (appended)"] if _text(ignore) != before else [])]
    say("wrote: " + ", ".join(written))
    say("next:")
    for step in next_steps(plan.detection.secret_keys):
        say(f"  {step}")
    return 0


def _text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def next_steps(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """NEXT_STEPS, with dev's secrets generated before its first deploy when the code reads some:
    a service that reads os.environ["SECRET_KEY"] cannot boot without it."""
    if not secrets:
        return NEXT_STEPS
    shown = ", ".join(secrets[:3]) + (", ..." if len(secrets) > 3 else "")
    generate = f"inv dev.secrets --generate   # random values for dev: {shown}"
    return (*NEXT_STEPS[:1], generate, *NEXT_STEPS[1:])


def _tasks_file(start: Path) -> Path | None:
    """The tasks.py invoke itself would load: in start or the nearest folder above."""
    for folder in (start, *start.parents):
        if (folder / "tasks.py").is_file():
            return folder / "tasks.py"
    return None


def run_tasks(args: list[str]) -> None:
    """The same Program as `inv`: over the project's tasks.py, else over the engine's tasks."""
    from invoke import Program

    try:
        version = metadata.version("stageflow")
    except metadata.PackageNotFoundError:
        version = "unknown"
    namespace = None
    if _tasks_file(Path.cwd()) is None:
        from deploy.tasks.namespace import ns

        namespace = ns
    program = Program(name="stageflow", binary="stageflow", version=version, namespace=namespace)
    program.run(["stageflow", *args])


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["init"]:
        try:
            code = init(args[1:])
        except DeployError as err:
            sys.stderr.write(f"stageflow: {err.line()}\n")
            code = int(err.exit_code)
        except KeyboardInterrupt:
            code = 130
        sys.exit(code)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(f"{INIT_USAGE}\n    adopt this repository: write stageflow's files\n\n")
    run_tasks(args)


if __name__ == "__main__":
    main()
