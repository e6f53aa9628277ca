"""Docs freshness on small doc trees of its own: tasks, make targets, links, anchors, env keys."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deploy.docs_check import anchors, check_docs, invoke_tasks, make_targets, slug

MAKEFILE = """\
.PHONY: setup test
VENV := .venv

setup: $(STAMP)

$(STAMP): pyproject.toml
\ttouch $@

test release-gate: setup
\tpython -m pytest
"""
README = """\
# Project

Start with `make setup`, then:

```
make test
inv dev.up && inv dev.deploy
make release-gate REF=v1.0.0
```

See [releasing](docs/RELEASING.md#promotion-via-staging) and the [env](docs/ENVIRONMENT.md).
"""
RELEASING = """\
# Releasing

## Promotion via staging

Run `inv release.gate --ref v1.0.0` first ([back](../README.md#project)).

## Promotion via staging

A second heading with the same text gets a -1 anchor: [again](#promotion-via-staging-1).
"""
ENVIRONMENT = (
    "# Environment\n\n| key | meaning |\n|---|---|\n| APP_PORT | port |\n| API_KEYS | keys |\n"
)
TASKS = {"dev.up", "dev.deploy", "release.gate"}
KEYS = {"APP_PORT", "API_KEYS"}


def tree(root: Path, **overrides: str) -> Path:
    files = {
        "Makefile": MAKEFILE,
        "README.md": README,
        "docs/RELEASING.md": RELEASING,
        "docs/ENVIRONMENT.md": ENVIRONMENT,
        "env/dev.env": "APP_PORT=8000\n",
    }
    files.update(
        {
            k.replace("__", "/").replace("_md", ".md").replace("_env", ".env"): v
            for k, v in overrides.items()
        }
    )
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def problems(root: Path, tasks: set[str] = TASKS, keys: set[str] = KEYS) -> list[str]:
    return [str(p) for p in check_docs(root, tasks=tasks, keys=keys)]


def test_fresh_tree_has_no_problems(tmp_path: Path) -> None:
    assert problems(tree(tmp_path)) == []


def test_make_targets_skip_variables_and_special_targets(tmp_path: Path) -> None:
    assert make_targets(tree(tmp_path) / "Makefile") == {"setup", "test", "release-gate"}


def test_unknown_task_and_target_are_named_with_their_line(tmp_path: Path) -> None:
    root = tree(
        tmp_path, docs__RELEASING_md=RELEASING + "\nThen `inv prod.deploy` and `make deploy`.\n"
    )
    found = problems(root)
    assert "docs/RELEASING.md:11: `inv prod.deploy`: no such task" in found
    assert "docs/RELEASING.md:11: `make deploy`: no such Makefile target" in found


def test_commands_count_in_shell_fences_only(tmp_path: Path) -> None:
    code = (
        '\n```python\nclass Auth:\n    """We make sure to exempt CSRF."""\n```\n'
        "\n```yaml\nrun: inv nightly.job\n```\n"
        "\n```console\n$ make deploy\n```\n"
        "\n```bash\ninv prod.deploy\n```\n"
    )
    found = problems(tree(tmp_path, README_md=README + code))
    assert found == [
        "README.md:23: `make deploy`: no such Makefile target",
        "README.md:27: `inv prod.deploy`: no such task",
    ]


def test_undocumented_task_and_target(tmp_path: Path) -> None:
    root = tree(tmp_path, Makefile=MAKEFILE + "\nbench:\n\ttrue\n")
    found = problems(root, tasks=TASKS | {"prod.rollback"})
    assert "docs: task `inv prod.rollback` is not documented in README.md or docs/*.md" in found
    assert "docs: make target `bench` is not documented in README.md or docs/*.md" in found


def test_broken_links_and_anchors(tmp_path: Path) -> None:
    readme = (
        README
        + "\n[gone](docs/GONE.md) [bad](docs/RELEASING.md#nope) [web](https://example.org/x)\n"
    )
    found = problems(tree(tmp_path, README_md=readme))
    assert any("broken link: docs/GONE.md" in p for p in found)
    assert any("broken anchor: docs/RELEASING.md#nope" in p for p in found)
    assert len(found) == 2  # external links are not checked


def test_a_link_from_the_repository_s_root_or_with_a_query_names_its_file(tmp_path: Path) -> None:
    # a README's images as the forges render them: `/` is the repository's root, and `?raw=true`
    # asks the host for the raw file
    readme = (
        README + '\n![shot](/img/shot.png?raw=true "Shot") ![docs](docs/RELEASING.md?plain=1)\n'
        "![gone](/img/gone.png?raw=true)\n"
    )
    root = tree(tmp_path, README_md=readme, img__shot_png="png")
    (root / "img" / "shot_png").rename(root / "img" / "shot.png")
    assert problems(root) == [
        "README.md:14: broken link: /img/gone.png?raw=true (/img/gone.png does not exist)"
    ]


def test_a_comment_after_a_shell_command_names_no_target(tmp_path: Path) -> None:
    code = "\n```sh\npip install wheel  # make sure it is there\nmake deploy # then this\n```\n"
    found = problems(tree(tmp_path, README_md=README + code))
    assert found == ["README.md:15: `make deploy`: no such Makefile target"]


def test_links_inside_code_are_not_links(tmp_path: Path) -> None:
    readme = README + "\n`[x](nowhere.md)`\n\n```\n[y](nowhere.md)\n```\n"
    assert problems(tree(tmp_path, README_md=readme)) == []


def test_env_keys_from_files_and_config_must_be_described(tmp_path: Path) -> None:
    root = tree(tmp_path, env__prod_env="APP_PORT=9000\nLOG_LEVEL=info\n")
    found = problems(root, keys=KEYS | {"SECRET_KEY"})
    assert "docs/ENVIRONMENT.md: env key LOG_LEVEL is not described" in found
    assert "docs/ENVIRONMENT.md: env key SECRET_KEY is not described" in found
    (root / "docs" / "ENVIRONMENT.md").unlink()
    assert any("ENVIRONMENT.md: does not exist" in p for p in problems(root))


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Promotion via staging", "promotion-via-staging"),
        ("Rollback: level 2 (revert)", "rollback-level-2-revert"),
        ("`inv release.gate` flags", "inv-releasegate-flags"),
        ("Dev → staging → prod", "dev--staging--prod"),
    ],
)
def test_github_slugs(heading: str, anchor: str) -> None:
    assert slug(heading.replace("`", "")) == anchor


def test_duplicate_headings_get_numbered_anchors(tmp_path: Path) -> None:
    path = tree(tmp_path) / "docs" / "RELEASING.md"
    assert anchors(path) == {"releasing", "promotion-via-staging", "promotion-via-staging-1"}


def test_tasks_come_from_invoke_itself(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(
        "from invoke import Collection, task\n\n\n@task\ndef up(c):\n    pass\n\n\n"
        "@task\ndef deploy_now(c):\n    pass\n\n\n"
        "ns = Collection(Collection('dev', up, deploy_now))\n"
    )
    assert invoke_tasks(tmp_path, python=sys.executable) == {"dev.up", "dev.deploy-now"}


def test_one_environment_documents_the_same_task_in_the_others(tmp_path: Path) -> None:
    found = problems(tree(tmp_path), tasks=TASKS | {"staging.up", "prod.deploy", "prod.rollback"})
    assert found == ["docs: task `inv prod.rollback` is not documented in README.md or docs/*.md"]
    readme = README + "\nRoll back with `inv <env>.rollback` (env: `dev` or `prod`).\n"
    assert problems(tree(tmp_path, README_md=readme), tasks=TASKS | {"prod.rollback"}) == []


def test_the_repositorys_own_docs_are_fresh():
    """CI runs this: a doc naming a task, target, link or key that does not exist fails the build."""
    from tests.support import REPO

    problems = check_docs(REPO)
    assert not problems, "\n".join(str(p) for p in problems)
