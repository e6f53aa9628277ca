"""argv builders for every git command the engine runs; run them with deploy.hosts.run_process.

`repo` adds `-C repo`, for callers that name the repository in the command rather than through
the working directory (a missing directory is then git's own error, not a failed process start).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

PathLike = str | Path


def git(
    *args: str, repo: PathLike | None = None, config: Mapping[str, str] | None = None
) -> list[str]:
    """`git [-C repo] [-c key=value ...] args...`: the base every builder below shares."""
    argv = ["git"]
    if repo is not None:
        argv += ["-C", str(repo)]
    for key, value in (config or {}).items():
        argv += ["-c", f"{key}={value}"]
    return [*argv, *args]


# -- refs ----------------------------------------------------------------------------------------


def git_dir(*, repo: PathLike | None = None) -> list[str]:
    """Exits 0 only inside a repository."""
    return git("rev-parse", "--git-dir", repo=repo)


def top_level(*, repo: PathLike | None = None) -> list[str]:
    """The root of the work tree holding the working directory (or repo)."""
    return git("rev-parse", "--show-toplevel", repo=repo)


def rev_parse(ref: str, *, kind: str = "commit", repo: PathLike | None = None) -> list[str]:
    """The object ref peels to (`commit` or `tree`); prints nothing and exits 1 for no such ref."""
    return git("rev-parse", "--verify", "--quiet", f"{ref}^{{{kind}}}", repo=repo)


def object_at(commit: str, path: str, *, repo: PathLike | None = None) -> list[str]:
    """The id of the tree or blob at path in commit; prints nothing and exits 1 for no such path."""
    return git("rev-parse", "--verify", "--quiet", f"{commit}:{path}", repo=repo)


def current_branch(*, repo: PathLike | None = None) -> list[str]:
    """The checked-out branch's short name; prints nothing on a detached HEAD."""
    return git("symbolic-ref", "--short", "-q", "HEAD", repo=repo)


def tags_at(rev: str = "HEAD", *, repo: PathLike | None = None) -> list[str]:
    """Tags pointing at rev, newest first."""
    return git("tag", "--points-at", rev, "--sort=-creatordate", repo=repo)


def previous_tag(commit: str, *, repo: PathLike | None = None) -> list[str]:
    """The nearest tag reachable from commit's parent."""
    return git("describe", "--tags", "--abbrev=0", f"{commit}^", repo=repo)


def tag(name: str, *, force: bool = False, repo: PathLike | None = None) -> list[str]:
    return git("tag", *(["-f"] if force else []), name, repo=repo)


# -- working tree --------------------------------------------------------------------------------


def status_porcelain(*, repo: PathLike | None = None) -> list[str]:
    """Tracked changes only: untracked files never make a working tree dirty."""
    return git("status", "--porcelain", "--untracked-files=no", repo=repo)


def stash_create(message: str, *, repo: PathLike | None = None) -> list[str]:
    """A commit object of the tracked changes, HEAD and the working tree untouched."""
    return git("stash", "create", message, repo=repo)


def check_ignore(*paths: str, repo: PathLike | None = None) -> list[str]:
    """Prints those of paths that .gitignore (or info/exclude) ignores; exits 1 when none."""
    return git("check-ignore", "--", *paths, repo=repo)


def add(*paths: str, repo: PathLike | None = None) -> list[str]:
    return git("add", *paths, repo=repo)


def commit_staged(
    message: str,
    *,
    email: str | None = None,
    name: str | None = None,
    repo: PathLike | None = None,
) -> list[str]:
    """A quiet commit of what is staged; email and name, when given, apply to this commit only (`-c`)."""
    config = {"user.email": email} if email else {}
    if name:
        config["user.name"] = name
    return git("commit", "-qm", message, repo=repo, config=config)


# -- contents of a commit ------------------------------------------------------------------------


def archive(
    commit: str,
    *,
    output: PathLike | None = None,
    paths: Sequence[str] = (),
    repo: PathLike | None = None,
) -> list[str]:
    """A tar of commit's files (only those under paths, when given), to output or stdout."""
    argv = ["archive", "--format=tar"]
    if output is not None:
        argv += ["-o", str(output)]
    argv.append(commit)
    if paths:
        argv += ["--", *paths]
    return git(*argv, repo=repo)


def ls_tree_names(
    commit: str, *paths: str, recursive: bool = False, repo: PathLike | None = None
) -> list[str]:
    return git("ls-tree", *(["-r"] if recursive else []), "--name-only", commit, *paths, repo=repo)


def common_dir(*, repo: PathLike | None = None) -> list[str]:
    """The repository's own .git (a linked worktree's main one), as an absolute path."""
    return git("rev-parse", "--path-format=absolute", "--git-common-dir", repo=repo)


def archive_in(git_dir: PathLike, commit: str, *, output: PathLike) -> list[str]:
    """`git archive` of commit run in git_dir, with no attributes file but the commit's own."""
    return [
        "git",
        "--git-dir",
        str(git_dir),
        "-c",
        "core.attributesFile=/dev/null",
        "archive",
        "--format=tar",
        "-o",
        str(output),
        commit,
    ]


def ls_tree_entries(commit: str, *, repo: PathLike | None = None) -> list[str]:
    """Every blob and submodule of commit: `MODE TYPE ID\tPATH`, NUL-terminated."""
    return git("ls-tree", "-r", "-z", "--full-tree", commit, repo=repo)


def show_file(commit: str, path: str, *, repo: PathLike | None = None) -> list[str]:
    """One file's text as committed."""
    return git("show", f"{commit}:{path}", repo=repo)


def log_oneline(revs: str, *, limit: int, repo: PathLike | None = None) -> list[str]:
    return git("log", "--oneline", "--no-decorate", revs, "-n", str(limit), repo=repo)


def diff_names(*revs: str, paths: Sequence[str] = (), repo: PathLike | None = None) -> list[str]:
    """Names of the files that differ between revs (`A..B`, or `A B`)."""
    return git("diff", "--name-only", *revs, *(["--", *paths] if paths else []), repo=repo)


def diff_stat(*revs: str, paths: Sequence[str] = (), repo: PathLike | None = None) -> list[str]:
    return git("diff", "--stat", *revs, *(["--", *paths] if paths else []), repo=repo)


# -- configuration and copies --------------------------------------------------------------------


def config_get(key: str, *, repo: PathLike | None = None) -> list[str]:
    """The value of key (exit 1 when unset)."""
    return git("config", key, repo=repo)


def config_set(key: str, value: str, *, repo: PathLike | None = None) -> list[str]:
    return git("config", key, value, repo=repo)


def clone(source: PathLike, dest: PathLike, *, quiet: bool = True) -> list[str]:
    return git("clone", *(["-q"] if quiet else []), str(source), str(dest))
