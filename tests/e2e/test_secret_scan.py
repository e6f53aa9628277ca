"""Secrets stay secret: a staging day through `inv`, then every output and file is searched for them."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

from tests.e2e.conftest import Project

MARK = "s3cret-value"  # every value tests.support.write_envs puts in a secrets file holds this
MARK_BYTES = MARK.encode()


def _run_all(
    project: Project, commands: list[tuple[str, ...]]
) -> list[subprocess.CompletedProcess]:
    results = []
    for args in commands:
        res = project.inv(*args)
        assert "Traceback" not in res.stderr, res.stderr
        results.append(res)
    return results


def _committed_digests(root: Path) -> set[str]:
    """Hashes of the project's committed files: test sources quote the marker, and release
    snapshots (git archive) carry them; those copies are code, not leaks."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    out = set()
    for rel in listed.stdout.decode().split("\0"):
        if rel and (root / rel).is_file():
            out.add(hashlib.sha256((root / rel).read_bytes()).hexdigest())
    return out


def _leaks_in(data: bytes, committed: set[str], name: str) -> list[str]:
    if MARK_BYTES not in data or hashlib.sha256(data).hexdigest() in committed:
        return []
    if name.endswith(".tar"):  # a release tarball: look at its members
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return [
                f"{name}:{m.name}"
                for m in tar.getmembers()
                if m.isfile()
                for member in [tar.extractfile(m)]
                if member is not None
                for blob in [member.read()]
                if MARK_BYTES in blob and hashlib.sha256(blob).hexdigest() not in committed
            ]
    return [name]


def _files_holding_the_mark(top: Path, root: Path, *, skip: tuple[Path, ...] = ()) -> list[str]:
    committed = _committed_digests(root)
    hits = []
    for dirpath, dirnames, filenames in os.walk(top):
        if ".git" in dirnames:
            dirnames.remove(".git")
        for name in filenames:
            path = Path(dirpath) / name
            if path in skip or path.is_symlink() or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits += _leaks_in(data, committed, str(path.relative_to(top)))
    return hits


def _cwd_under(proc: Path, root: Path) -> bool:
    try:
        cwd = os.readlink(proc / "cwd")
    except OSError:
        return False
    return cwd == str(root) or cwd.startswith(f"{root}/")


def _command_lines_holding_the_mark(root: Path) -> list[str]:
    """Command lines (readable by every user on the host) of the project's processes: those
    started under its root or naming it (other test runs on the host use the same values)."""
    hits = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ours = str(root).encode() in cmd or _cwd_under(entry, root)
        if ours and MARK_BYTES in cmd:
            shown = cmd.replace(b"\0", b" ")[:120]
            hits.append(f"{entry.name}: {shown!r}")
    return hits


def test_a_staging_day_never_shows_a_secret(project: Project) -> None:
    results = _run_all(
        project,
        [
            ("staging.up",),
            ("staging.preflight",),
            ("staging.preflight", "--json"),
            ("staging.deploy", "--dry-run"),
            ("staging.deploy",),
            ("staging.smoke",),
            ("staging.smoke", "--json"),
            ("staging.history",),
            ("staging.history", "--json"),
            ("staging.status", "--json"),
            ("status",),
            ("status", "--json"),
            ("staging.lock",),
            ("staging.secrets",),
            ("staging.migrations", "--json"),
            ("staging.up",),
            ("staging.deploy", "--json"),
        ],
    )
    failed = [" ".join(r.args[1:]) for r in results if r.returncode != 0]
    assert not failed, [(r.args, r.stderr) for r in results if r.returncode != 0]
    for res in results:
        assert MARK not in res.stdout, f"{res.args}: secret on stdout"
        assert MARK not in res.stderr, f"{res.args}: secret on stderr"

    home = project.root / ".stageflow"
    settings = home / "staging" / "shared" / "service.json"
    redis_conf = home / "staging" / "run" / "redis.conf"
    allowed = (settings, redis_conf)  # the service's settings and requirepass: both 0600
    for path in allowed:
        assert path.exists(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} is not mode 0600"
        assert MARK_BYTES in path.read_bytes()  # they do hold the secrets: the scan can see them

    # nothing else under .stageflow (history, audit, lock, logs, releases, backups, pgdata...)
    assert _files_holding_the_mark(home, project.root, skip=allowed) == []
    # nor anywhere else in the project but the secrets files themselves (reports in dist/ too)
    secrets_files = tuple((project.root / "env").glob("*.secrets.env"))
    assert (
        _files_holding_the_mark(project.root, project.root, skip=(*allowed, *secrets_files)) == []
    )
    # nor any process's command line, which every user on the host can read
    ours = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cwd_under(p, project.root)]
    assert ours, "no running process of the project was found: the scan below would prove nothing"
    assert _command_lines_holding_the_mark(project.root) == []


def test_a_failing_connection_does_not_echo_the_password(project: Project) -> None:
    secrets = project.root / "env" / "staging.secrets.env"
    original = secrets.read_text()
    wrong = "wrong-pg-s3cret-value"
    secrets.write_text(
        "\n".join(
            f"POSTGRES_PASSWORD={wrong}" if line.startswith("POSTGRES_PASSWORD=") else line
            for line in original.splitlines()
        )
        + "\n"
    )
    try:
        for args in (("staging.migrations",), ("staging.migrate",), ("staging.deploy",)):
            res = project.inv(*args)
            assert res.returncode != 0, args
            assert "Traceback" not in res.stderr
            assert MARK not in res.stdout + res.stderr, f"{args}: {res.stderr}"
    finally:
        secrets.write_text(original)
    assert (
        _files_holding_the_mark(
            project.root / ".stageflow",
            project.root,
            skip=(
                project.root / ".stageflow/staging/shared/service.json",
                project.root / ".stageflow/staging/run/redis.conf",
            ),
        )
        == []
    )
