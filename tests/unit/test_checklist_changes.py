"""The prod checklist lists the commits a request brings, at most CHANGES_SHOWN of them one by one;
a request that brings more (the first prod deploy of a repository with a long history) says how
many it left out and how to read them, so the approver never takes part of the list for all of it."""

from __future__ import annotations

from pathlib import Path

from deploy.policy import promotion
from deploy.policy.promotion import CHANGES_SHOWN, changes
from tests.support import git


def _commits(root: Path, n: int) -> list[str]:
    shas = []
    for i in range(n):
        (root / "log.txt").write_text(f"{i}\n")
        git(root, "add", "-A")
        git(root, "commit", "-qm", f"change {i}")
        shas.append(git(root, "rev-parse", "HEAD"))
    return shas


def test_a_long_history_says_what_the_list_leaves_out(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main")
    shas = _commits(tmp_path, CHANGES_SHOWN + 3)
    head = shas[-1]
    lines, more = changes(tmp_path, None, head)  # the first prod deploy: the whole history
    assert len(lines) == CHANGES_SHOWN and lines[0].endswith(f"change {CHANGES_SHOWN + 2}")
    assert more == f"... and 3 older commit(s) not listed: `git log --oneline {head}`"
    section = promotion._changes_section(lines, more)
    assert section[-2] == f"- {more}"
    # a short span lists every commit and adds nothing
    lines, more = changes(tmp_path, shas[-3], head)
    assert [ln.split(" ", 1)[1] for ln in lines] == [
        f"change {CHANGES_SHOWN + 2}",
        f"change {CHANGES_SHOWN + 1}",
    ]
    assert more == ""
