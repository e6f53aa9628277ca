"""`stageflow init`: detect the service, choose free ports, and write stageflow's files into a
git repository, refusing to overwrite anything that is already there."""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deploy.adopt import render
from deploy.adopt.detect import Detection, Overrides, detect
from deploy.commands import git
from deploy.config import NAMESPACES
from deploy.errors import UsageError
from deploy.hosts import run_process

# Where each kind of port is looked for: above the usual defaults of each server, so a team's
# own PostgreSQL on 5432 or Redis on 6379 is never in the way.
PORT_RANGES = {
    "APP_PORT": (8100, 8999),
    "POSTGRES_PORT": (54300, 55299),
    "REDIS_PORT": (63800, 64799),
}


@dataclass(frozen=True)
class Plan:
    root: Path
    detection: Detection
    ports: render.Ports
    files: dict[str, str]  # relative path -> text; none of them may exist yet
    gitignore: str  # what .gitignore gets appended


def git_root(start: Path) -> Path:
    """The top of the git work tree holding start; stageflow.toml goes there."""
    try:
        res = run_process(git.top_level(), cwd=start, timeout=30)
    except OSError:
        raise UsageError(
            "git is not installed", hint="install git, then run stageflow init"
        ) from None
    if not res.ok:
        raise UsageError(f"{start} is not in a git repository", hint="run git init first")
    return Path(res.stdout.strip())


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port now (a bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_ports(
    name: str, *, root: str = "", is_free: Callable[[int], bool] = port_is_free
) -> render.Ports:
    """Distinct free ports per environment. The scan starts at an offset taken from the name and
    the repository's folder, so two services adopted on one machine (two named alike, or two
    clones of one) do not both start from the same ports: only the ports free at init are seen,
    and the other service's environments may not be up yet."""
    slots = min(high - low + 1 for low, high in PORT_RANGES.values()) // 3
    offset = zlib.crc32(f"{name}\0{root}".encode()) % slots * 3
    taken: set[int] = set()
    out: render.Ports = {env: {} for env in NAMESPACES}
    for key, (low, high) in PORT_RANGES.items():
        span = high - low + 1
        candidates = (low + (offset + i) % span for i in range(span))
        for env in NAMESPACES:
            port = next((p for p in candidates if p not in taken and is_free(p)), None)
            if port is None:
                raise UsageError(f"no free port for {key} from {low} to {high} on 127.0.0.1")
            taken.add(port)
            out[env][key] = port
    return out


def plan(start: Path, given: Overrides | None = None) -> Plan:
    root = git_root(start)
    detection = detect(root, given)
    ports = choose_ports(detection.name, root=str(root))
    gitignore = root / ".gitignore"
    current = gitignore.read_text(encoding="utf-8") if gitignore.is_file() else ""
    return Plan(
        root, detection, ports, render.files(detection, ports), render.gitignore_addition(current)
    )


def existing(p: Plan) -> list[str]:
    return [rel for rel in p.files if (p.root / rel).exists() or (p.root / rel).is_symlink()]


def write(p: Plan) -> list[str]:
    """Every file, created exclusively: one that appears meanwhile is refused, never replaced.
    Returns the files git would still ignore (see keep_committed)."""
    for rel, text in p.files.items():
        path = p.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as fh:
            fh.write(text)
    if p.gitignore:
        _append(p.root, p.gitignore)
    ignore_virtualenvs(p.root)
    return keep_committed(p.root, list(p.files))


def ignore_virtualenvs(root: Path) -> None:
    """A virtualenv made inside the repository (`python3 -m venv .venv`) that git would not
    ignore: committing init's files with `git add -A` would commit it too, and a release keeps
    its own venv at `.venv`. Each such folder at the top gets a line of .gitignore."""
    venvs = sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir()
        and not entry.is_symlink()
        and (entry / "pyvenv.cfg").is_file()
        and entry.name != "env"  # stageflow's own folder: keep_committed keeps its files
    )
    found = ignored(root, [f"{name}/pyvenv.cfg" for name in venvs])
    loose = [name for name in venvs if f"{name}/pyvenv.cfg" not in found]
    if loose:
        header = "# stageflow: the virtualenvs made inside the repository stay out of git\n"
        _append(root, header + "".join(f"/{name}/\n" for name in loose))


def _append(root: Path, text: str) -> None:
    path = root / ".gitignore"
    current = path.read_text(encoding="utf-8") if path.is_file() else ""
    lead = "" if not current or current.endswith("\n") else "\n"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(lead + text)


def ignored(root: Path, rels: list[str]) -> list[str]:
    """Those of rels (paths relative to root) that git ignores."""
    if not rels:
        return []
    res = run_process(git.check_ignore(*rels), cwd=root, timeout=30)
    return [line for line in res.stdout.splitlines() if line] if res.exit_code == 0 else []


_KEEP_HEADER = (
    "# stageflow: its files are committed, whatever a line above ignores (env/ of a venv)\n"
)


def keep_committed(root: Path, rels: list[str]) -> list[str]:
    """A team's .gitignore often ignores env/ (a virtualenv's usual name) or *.env (dotenv files):
    git would then leave env/<env>.env out of every commit, and the release gate, which reads the
    commit, would find no env files. Appends negations for what init wrote and git ignores (each
    file, then its folder where the folder itself is ignored), keeps the secrets files ignored,
    and returns the files git still ignores."""
    found = ignored(root, rels)
    if not found:
        return []
    _append(root, _KEEP_HEADER + "".join(f"!{rel}\n" for rel in found))
    still = ignored(root, found)
    folders = sorted({str(PurePosixPath(rel).parent) for rel in still if "/" in rel})
    if folders:
        _append(root, "".join(f"!{folder}/\n" for folder in folders))
        still = ignored(root, found)
    secrets = [f"env/{env}.secrets.env" for env in NAMESPACES]
    if len(ignored(root, secrets)) < len(secrets):
        _append(root, "env/*.secrets.env\n")
    return still


def summary(p: Plan) -> list[tuple[str, str]]:
    """(what, value) rows of what was detected, for the operator to check."""
    d = p.detection
    m = d.migrations
    rows = [
        ("framework", d.framework),
        ("name", d.name),
        ("dir", d.dir),
        ("wsgi", d.wsgi),
        ("worker_class", d.worker_class),
        ("requirements", d.requirements),
        ("health", d.health + (f" (ready {d.ready})" if d.ready else "")),
        ("migrations", d.migration_tool if m.kind != "none" else "none found"),
    ]
    if m.kind != "none":
        rows += [("migrations up", " ".join(m.up)), ("migrations dir", m.dir)]
    if d.env_keys or d.secret_keys:
        rows.append(("settings read", ", ".join([*d.env_keys, *d.secret_keys])))
    rows += [("build", " ".join(c)) for c in d.build]
    rows += [(f"process {name}", " ".join(argv)) for name, argv in d.processes]
    for env in NAMESPACES:
        rows.append((f"{env} ports", ", ".join(f"{k}={v}" for k, v in p.ports[env].items())))
    return rows
