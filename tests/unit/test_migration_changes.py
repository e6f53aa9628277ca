"""Which changed files are a service's migrations when its own tool migrates (kind "command"):
what the backup policy and the prod checklist count, read from git."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from deploy import env_migrations
from deploy.config import Project, load_project
from deploy.service import Migrations
from tests import support
from tests.support import git


def commit(root: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "change")
    return git(root, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A Django project (at the root and in web/): v1 with 0001, v2 adds 0002 and changes code."""
    git(tmp_path, "init", "-q", "-b", "main")
    v1 = commit(
        tmp_path,
        {
            "manage.py": "",
            "polls/models.py": "",
            "polls/migrations/0001_initial.py": "",
            "polls/migrations/__init__.py": "",
            "web/manage.py": "",
            "web/shop/migrations/0001_initial.py": "",
        },
    )
    v2 = commit(
        tmp_path,
        {
            "polls/models.py": "closed = True\n",
            "polls/migrations/0002_question_closed.py": "",
            "web/shop/views.py": "",
            "web/shop/migrations/0002_price.py": "",
        },
    )
    return tmp_path, v1, v2


def project(root: Path, *, dir: str, migrations_dir: str) -> Project:
    proj = load_project(support.REPO, process_env={})
    migrations = Migrations(kind="command", dir=migrations_dir, up=("x",), current=("y",))
    return replace(proj, root=root, service=replace(proj.service, dir=dir, migrations=migrations))


def test_django_at_the_root_counts_each_apps_migrations(repo) -> None:
    root, v1, v2 = repo
    proj = project(root, dir=".", migrations_dir=".")
    assert env_migrations.changed_migration_files(proj, v1, v2) == [
        "polls/migrations/0002_question_closed.py",
        "web/shop/migrations/0002_price.py",
    ]
    first = env_migrations.changed_migration_files(proj, None, v1)
    assert "polls/migrations/0001_initial.py" in first
    assert "polls/migrations/__init__.py" not in first


def test_django_in_a_subdirectory_counts_its_migrations_not_its_code(repo) -> None:
    root, v1, v2 = repo
    proj = project(root, dir="web", migrations_dir=".")
    assert env_migrations.changed_migration_files(proj, v1, v2) == [
        "web/shop/migrations/0002_price.py"
    ]


def test_a_migrations_dir_the_commit_lacks_cannot_tell(repo) -> None:
    """A wrong dir would read as "no migration" and skip the backup: it counts as unknown."""
    root, v1, v2 = repo
    proj = project(root, dir=".", migrations_dir="migrations")
    assert env_migrations.changed_migration_files(proj, v1, v2) is None
    assert env_migrations.pending_by_changes(proj, v1, v2) == [
        "(cannot tell what changed since the serving release)"
    ]


def test_a_named_migrations_dir_counts_whole(repo) -> None:
    root, v1, v2 = repo
    proj = project(root, dir="web", migrations_dir="shop/migrations")
    assert env_migrations.changed_migration_files(proj, v1, v2) == [
        "web/shop/migrations/0002_price.py"
    ]


def test_a_placeholder_that_keeps_an_empty_versions_folder_is_no_migration(tmp_path) -> None:
    # alembic's versions/ is often committed with a .keep (or .gitkeep) while it is still empty
    git(tmp_path, "init", "-q", "-b", "main")
    first = commit(tmp_path, {"backend/app/alembic/versions/.keep": ""})
    second = commit(tmp_path, {"backend/app/alembic/versions/a1_items.py": "", ".keep": ""})
    proj = project(tmp_path, dir="backend", migrations_dir="app/alembic/versions")
    assert env_migrations.changed_migration_files(proj, None, second) == [
        "backend/app/alembic/versions/a1_items.py"
    ]
    assert env_migrations.changed_migration_files(proj, first, second) == [
        "backend/app/alembic/versions/a1_items.py"
    ]
