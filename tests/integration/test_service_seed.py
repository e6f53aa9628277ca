"""The engine runs the service's own seed command against a real PostgreSQL: where it runs, what
it gets (settings in its environment, never a secret on its argv), what it reports, and refusals."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from deploy import scratch
from deploy import seed as seeding
from deploy.config import EnvConfig, Project, load_project
from deploy.errors import GuardRefused, ServiceError, UsageError
from deploy.secrets import Secret
from tests import support
from tests.conftest import fresh_database
from tests.sshd import shared_venv

PASSWORD = "seed-pw-s3cret-value"
# A service's seed of its own tables: what it saw goes to seen.json beside it, for the test.
SEED_SCRIPT = """\
import json, os, sys
import psycopg

size = sys.argv[sys.argv.index("--size") + 1]
n = {"tiny": 3, "small": 5}[size]
with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, label text)")
    conn.execute("DELETE FROM items")
    for i in range(n):
        conn.execute("INSERT INTO items (label) VALUES (%s)", (f"item {i}",))
with open("seen.json", "w") as f:
    json.dump({"argv": sys.argv, "cwd": os.getcwd(), "path": os.environ["PATH"],
               "url": os.environ["DATABASE_URL"], "pgpassword": os.environ.get("PGPASSWORD"),
               "size_env": os.environ.get("STAGEFLOW_SEED_SIZE"),
               "release": os.environ.get("STAGEFLOW_RELEASE", "")}, f)
if os.environ.get("SEED_FAILS") == "1":
    sys.exit("cannot seed " + os.environ["DATABASE_URL"])
print("seeding items")
print(json.dumps({"inserted": n, "table": "items"}))
"""


@pytest.fixture
def service(tmp_path: Path, pg_server) -> tuple[Project, EnvConfig, Path]:
    """A project whose service lives in svc/ of a temp tree, and a staging on a fresh database."""
    svc = tmp_path / "svc"
    svc.mkdir()
    (svc / "seed_items.py").write_text(SEED_SCRIPT)
    proj = load_project(support.REPO, process_env={})
    proj = replace(
        proj,
        root=tmp_path,
        service=replace(
            proj.service,
            dir="svc",
            seed=("python", "seed_items.py", "--size", "{size}"),
            env_from=(("SHOP_DB", "DATABASE_URL"),),
        ),
    )
    data = support.public_tmpdir("sf-seed-")  # as root the seed runs as the service user
    try:
        with fresh_database(pg_server) as dsn:
            env = replace(
                proj.env("staging"),
                data_dir=data / "data",
                secrets=(("POSTGRES_PASSWORD", Secret(PASSWORD)),),
            )
            env = replace(env, database_url=dsn)
            yield proj, scratch.on_database(env, dsn.rsplit("/", 1)[1]), svc
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _rows(env: EnvConfig) -> int:
    with psycopg.connect(env.database_url) as conn:
        return conn.execute("SELECT count(*) FROM items").fetchone()[0]


def test_the_seed_runs_in_the_working_tree_with_the_settings_and_reports(service):
    proj, env, svc = service
    result = seeding.run(proj, env, size="tiny", process_env={"PATH": "/usr/bin:/bin"})
    assert _rows(env) == 3
    assert result.where == "the working tree"
    assert dict(result.reported) == {"inserted": 3, "table": "items"}
    assert result.summary == "inserted 3, table items"
    assert result.to_dict()["inserted"] == 3 and result.to_dict()["size"] == "tiny"
    seen = json.loads((svc / "seen.json").read_text())
    assert seen["cwd"] == str(svc)
    assert seen["argv"][1:] == ["--size", "tiny"] and seen["size_env"] == "tiny"
    # the Python running stageflow comes first on PATH before the first deploy
    assert seen["path"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    # the password reaches the command through its environment, never its argv
    assert PASSWORD in seen["url"] and seen["pgpassword"] == PASSWORD
    assert not any(PASSWORD in a for a in seen["argv"])


def test_the_seed_runs_in_the_serving_releases_venv(service):
    proj, env, svc = service
    release = Path(env.data_dir) / "releases" / "r-seed-1"
    (release / "svc").mkdir(parents=True)
    (release / "svc" / "seed_items.py").write_text(SEED_SCRIPT)
    os.chmod(release / "svc", 0o777)  # the script reports into its folder, as whoever runs it
    # a venv with psycopg that the service user can run (as root the seed runs as that user)
    (release / ".venv").symlink_to(shared_venv(support.REPO / "app" / "requirements.lock"))
    (Path(env.data_dir) / "current").symlink_to(release)
    result = seeding.run(proj, env, size="small", process_env={"PATH": "/usr/bin:/bin"})
    assert result.where == "release r-seed-1" and _rows(env) == 5
    seen = json.loads((release / "svc" / "seen.json").read_text())
    assert seen["cwd"] == str(release / "svc") and seen["release"] == "r-seed-1"
    assert seen["path"].split(os.pathsep)[0] == f"{release}/.venv/bin"
    assert not (svc / "seen.json").exists()


def test_a_seed_that_writes_into_the_release_is_told_where_it_may_write(service):
    # a demo's loader copies its files into a folder of the code (Django's MEDIA_ROOT there): the
    # release is read-only to the service, and the hint names the directory it may write to
    proj, env, _ = service
    release = Path(env.data_dir) / "releases" / "r-seed-ro"
    (release / "svc" / "media").mkdir(parents=True)
    (release / "svc" / "seed_items.py").write_text(
        "import sys\nprint('copying files', file=sys.stderr)\nopen('media/a.jpg', 'w')\n"
    )
    os.chmod(release / "svc" / "media", 0o555)
    os.chmod(release / "svc", 0o755)
    (release / ".venv").symlink_to(shared_venv(support.REPO / "app" / "requirements.lock"))
    (Path(env.data_dir) / "current").symlink_to(release)
    if os.geteuid() == 0:
        os.chmod(Path(env.data_dir) / "releases", 0o755)
    with pytest.raises(ServiceError) as err:
        seeding.run(proj, env, size="small", process_env={"PATH": "/usr/bin:/bin"})
    line = err.value.line()
    assert "PermissionError: [Errno 13] Permission denied" in line
    assert "the release is read-only to the service" in line and "STAGEFLOW_FILES_DIR" in line
    assert line.endswith("then run `inv staging.seed`)")


def test_a_failing_seed_is_one_line_without_the_password(service):
    proj, env, _ = service
    # the operator's own variables do not reach the command: only PATH, HOME, LANG, ...
    seeding.run(proj, env, size="tiny", process_env={"PATH": "/usr/bin:/bin", "SEED_FAILS": "1"})
    # the service's settings do
    env = replace(env, values=(*env.values, ("SEED_FAILS", "1")))
    with pytest.raises(ServiceError) as err:
        seeding.run(proj, env, size="tiny", process_env={"PATH": "/usr/bin:/bin"})
    line = err.value.line()
    assert "the seed command failed in the working tree (exit 1): cannot seed" in line
    assert PASSWORD not in line and "\n" not in line


def test_refusals_come_before_anything_runs(service):
    proj, env, svc = service
    with pytest.raises(UsageError, match="not a plain word"):
        seeding.run(proj, env, size="small; rm -rf /")
    with pytest.raises(UsageError, match=r"\[service\] seed is empty"):
        seeding.run(replace(proj, service=replace(proj.service, seed=())), env)
    with pytest.raises(GuardRefused, match="production"):
        seeding.run(proj, replace(env, environment="production"))
    with pytest.raises(ServiceError, match="cannot run the seed command 'no-such-seed-tool'"):
        seeding.run(
            replace(proj, service=replace(proj.service, seed=("no-such-seed-tool",))),
            env,
            process_env={"PATH": "/usr/bin:/bin"},
        )
    assert not (svc / "seen.json").exists()
