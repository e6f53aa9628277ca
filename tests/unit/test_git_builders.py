"""The git builders return exact argv lists; nothing runs."""

from __future__ import annotations

from pathlib import Path

from deploy.commands import git


def test_base_with_repo_and_config():
    assert git.git("status") == ["git", "status"]
    assert git.git("status", repo=Path("/srv/p")) == ["git", "-C", "/srv/p", "status"]
    assert git.git("log", repo="/p", config={"user.email": "a@b.c"}) == [
        "git",
        "-C",
        "/p",
        "-c",
        "user.email=a@b.c",
        "log",
    ]


def test_refs():
    assert git.git_dir(repo="/p") == ["git", "-C", "/p", "rev-parse", "--git-dir"]
    assert git.rev_parse("v1.2.0") == ["git", "rev-parse", "--verify", "--quiet", "v1.2.0^{commit}"]
    assert git.rev_parse("main", kind="tree", repo="/p") == [
        "git",
        "-C",
        "/p",
        "rev-parse",
        "--verify",
        "--quiet",
        "main^{tree}",
    ]
    assert git.current_branch() == ["git", "symbolic-ref", "--short", "-q", "HEAD"]
    assert git.tags_at() == ["git", "tag", "--points-at", "HEAD", "--sort=-creatordate"]
    assert git.previous_tag("abc") == ["git", "describe", "--tags", "--abbrev=0", "abc^"]
    assert git.tag("v1.0.0") == ["git", "tag", "v1.0.0"]
    assert git.tag("v1.0.0", force=True) == ["git", "tag", "-f", "v1.0.0"]


def test_working_tree():
    assert git.status_porcelain() == ["git", "status", "--porcelain", "--untracked-files=no"]
    assert git.stash_create("stageflow dev snapshot") == [
        "git",
        "stash",
        "create",
        "stageflow dev snapshot",
    ]
    assert git.add("CHANGES") == ["git", "add", "CHANGES"]
    assert git.commit_staged("v1.4.1") == ["git", "commit", "-qm", "v1.4.1"]
    assert git.commit_staged("v1.4.1", email="d@example.com", name="demo") == [
        "git",
        "-c",
        "user.email=d@example.com",
        "-c",
        "user.name=demo",
        "commit",
        "-qm",
        "v1.4.1",
    ]


def test_archive():
    assert git.archive("abc") == ["git", "archive", "--format=tar", "abc"]
    assert git.archive("abc", output=Path("/b/abc.tar")) == [
        "git",
        "archive",
        "--format=tar",
        "-o",
        "/b/abc.tar",
        "abc",
    ]
    assert git.archive("abc", paths=["app/migrations"], repo="/p") == [
        "git",
        "-C",
        "/p",
        "archive",
        "--format=tar",
        "abc",
        "--",
        "app/migrations",
    ]


def test_contents_of_a_commit():
    assert git.ls_tree_names("abc", "app/migrations/") == [
        "git",
        "ls-tree",
        "--name-only",
        "abc",
        "app/migrations/",
    ]
    assert git.ls_tree_names("abc", recursive=True) == [
        "git",
        "ls-tree",
        "-r",
        "--name-only",
        "abc",
    ]
    assert git.show_file("abc", "app/x.sql") == ["git", "show", "abc:app/x.sql"]
    assert git.log_oneline("a..b", limit=50) == [
        "git",
        "log",
        "--oneline",
        "--no-decorate",
        "a..b",
        "-n",
        "50",
    ]
    assert git.diff_names("a..b") == ["git", "diff", "--name-only", "a..b"]
    assert git.diff_names("a", "b", paths=["app/requirements.lock"]) == [
        "git",
        "diff",
        "--name-only",
        "a",
        "b",
        "--",
        "app/requirements.lock",
    ]
    assert git.diff_stat("a", "b", paths=["x", "y"]) == [
        "git",
        "diff",
        "--stat",
        "a",
        "b",
        "--",
        "x",
        "y",
    ]


def test_config_and_clone():
    assert git.config_get("user.email") == ["git", "config", "user.email"]
    assert git.config_set("user.name", "demo") == ["git", "config", "user.name", "demo"]
    assert git.clone(Path("/src"), Path("/dst")) == ["git", "clone", "-q", "/src", "/dst"]
    assert git.clone("/src", "/dst", quiet=False) == ["git", "clone", "/src", "/dst"]


def test_a_ref_is_one_argument_never_split():
    assert git.rev_parse("a b; rm -rf /")[-1] == "a b; rm -rf /^{commit}"
