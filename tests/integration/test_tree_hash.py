"""A release archive's files hash to the commit's tree, as git computes it, for every kind of entry
a repository holds; and any byte changed in the archive changes the id."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from deploy import tree_hash


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def _repo(root: Path) -> str:
    (root / "app" / "deep").mkdir(parents=True)
    (root / "app" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "app" / "run.sh", 0o755)
    (root / "app" / "deep" / "x.py").write_text("X = 'é'\n")
    (root / "app-data.txt").write_text("sorts before app/ as git sorts\n")
    (root / "empty").write_text("")
    (root / "link").symlink_to("app/deep/x.py")
    (root / ".gitattributes").write_text("empty export-ignore\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "x")
    return _git(root, "rev-parse", "HEAD").strip()


def test_the_archive_hashes_to_the_commits_tree_and_a_changed_byte_does_not(tmp_path: Path):
    commit = _repo(tmp_path / "repo")
    root, tar = tmp_path / "repo", tmp_path / "a.tar"
    _git(root, "archive", "--format=tar", "-o", str(tar), commit)
    listing = _git(root, "ls-tree", "-r", "-z", "--full-tree", commit)
    tree = _git(root, "rev-parse", f"{commit}^{{tree}}").strip()
    assert tree_hash.shipped_tree(tar, listing, len(commit)) == tree  # `empty` left out, listed

    with tarfile.open(tar) as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src]
    changed = tmp_path / "b.tar"
    with tarfile.open(changed, "w") as out:
        for m, data in members:
            if m.name == "app/deep/x.py":
                data = data.replace(b"X", b"Y")
            if m.name == "app/run.sh":
                m.mode = 0o644  # no longer executable: a mode is part of the tree too
            out.addfile(m, io.BytesIO(data) if data is not None else None)
    assert tree_hash.shipped_tree(changed, listing, len(commit)) != tree
