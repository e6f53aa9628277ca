"""The archive of a commit as the engine ships and judges it: made by git in a throwaway repository
that borrows the project's objects and nothing else, then checked to hash to the commit's tree."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from deploy import tree_hash
from deploy.commands import git as gitcmd
from deploy.errors import ServiceError
from deploy.hosts import CommandResult, run_process


def write(root: Path, commit: str, output: Path) -> None:
    """The tar of commit at output, its files checked against the commit's tree; on a refusal
    output is removed and ServiceError says what differs."""
    out = _borrowing(root, commit, output)
    if out.exit_code != 0:
        raise ServiceError(f"git archive {commit[:12]} failed: {out.stderr.strip()[:200]}")
    try:
        check(root, commit, output)
    except ServiceError:
        output.unlink(missing_ok=True)
        raise


def check(root: Path, commit: str, tarball: Path) -> None:
    """The archive's bytes hash to the commit's tree (tree_hash): an object of the repository
    edited in place under its old id ships nowhere."""
    tree = run_process(gitcmd.rev_parse(commit, kind="tree"), cwd=root).stdout.strip()
    listing = run_process(gitcmd.ls_tree_entries(commit), cwd=root)
    try:
        shipped = tree_hash.shipped_tree(tarball, listing.stdout, len(commit))
    except (ValueError, tarfile.TarError, OSError) as exc:
        shipped = f"none ({exc})"
    if not listing.ok or shipped != tree:
        raise ServiceError(
            f"the archive of {commit[:12]} does not hold its tree {tree[:12]}: its files hash "
            f"to {shipped[:12]}",
            hint="the repository's objects changed under their ids (`git fsck` names them), or "
            "a .gitattributes export-subst rewrote a file; fix the repository, or drop the "
            "attribute",
        )


def _borrowing(root: Path, commit: str, output: Path) -> CommandResult:
    """git archive from a throwaway repository that borrows root's objects and nothing else: the
    attributes, config and refs of the operator's .git (an info/attributes line can leave any
    file out of a release) decide nothing; the commit's own .gitattributes still apply."""
    common = run_process(gitcmd.common_dir(), cwd=root)
    if not common.ok:
        raise ServiceError(f"git cannot name the repository at {root}: {common.tail(1)}")
    with tempfile.TemporaryDirectory(prefix="stageflow-archive-") as tmp:
        bare = Path(tmp) / "borrowed.git"
        (bare / "objects" / "info").mkdir(parents=True)
        (bare / "refs").mkdir()
        (bare / "HEAD").write_text("ref: refs/heads/main\n")
        objects = Path(common.stdout.strip()) / "objects"
        (bare / "objects" / "info" / "alternates").write_text(f"{objects}\n")
        return run_process(gitcmd.archive_in(bare, commit, output=output), cwd=tmp)
