"""Release gate end to end on tiny git repos: stages, fail closed, timeouts, cache, break-glass, migrations."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from deploy import migrations
from deploy.errors import ExitCode, GateFailed, UsageError
from deploy.gates import runner
from deploy.gates.migrations import fingerprint
from deploy.secrets import Secret

STAGES = """
[service]
name = "notes"
wsgi = "app.wsgi:application"

[service.migrations]
kind = "sql"
dir = "app/migrations"  # the migrations gate reads its folder from here

[environments.dev]

[stages]
order = ["PRE_GA", "GA", "PILOT"]

[stages.PRE_GA]
patterns = ["v*-rc.*"]
[stages.PRE_GA.gates]
check = "required"
test = "required"
migrations = "required"
promotion_guard = "required"

[stages.GA]
patterns = ["v*"]
[stages.GA.gates]
check = "required"
test = "required"
promotion_guard = "required"

[stages.PILOT]
patterns = ["main", "*"]
[stages.PILOT.gates]
check = "report_only"
test = "report_only"
promotion_guard = "report_only"

[gates.test]
command = ["python", "-m", "pytest", "-q", "-x", "tests"]
"""

GOOD_TEST = "def test_ok():\n    assert 1 + 1 == 2\n"
BAD_TEST = "def test_ok():\n    assert True\n\n\ndef test_broken():\n    assert 1 + 1 == 3\n"


def git(root: Path, *args: str) -> str:
    res = subprocess.run(
        ["git", "-c", "user.name=Gate Test", "-c", "user.email=gate@example.org", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout.strip()


def commit(
    root: Path, files: dict[str, str], *, message: str = "change", tag: str | None = None
) -> str:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    if tag:
        git(root, "tag", tag)
    return git(root, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("dist/\n")
    commit(
        root,
        {"stageflow.toml": STAGES, "app.py": "VALUE = 1\n", "tests/test_a.py": GOOD_TEST},
        message="initial",
    )
    return root


def gate(root: Path, ref: str | None = None, **kwargs) -> runner.Report:
    return runner.run(runner.GateRequest(root=root, ref=ref, **kwargs))


def by_name(report) -> dict:
    return {g.name: g for g in report.gates}


def test_rc_with_failing_test_blocks_pre_ga_and_names_the_test(repo: Path) -> None:
    sha = commit(repo, {"tests/test_a.py": BAD_TEST}, tag="v1.0.0-rc.1")
    report = gate(repo, "v1.0.0-rc.1", only=())
    assert report.stage == "PRE_GA"
    gates = by_name(report)
    assert gates["test"].status == "failed"
    assert "tests/test_a.py::test_broken" in gates["test"].summary
    assert gates["check"].status == "passed"
    assert gates["promotion_guard"].status == "failed"
    assert report.verdict == "failed"
    data = json.loads((repo / "dist" / "release-gate" / f"{sha}.json").read_text())
    assert data["commit"] == sha and data["schema_version"] == 1
    assert data["tree"] == git(repo, "rev-parse", "v1.0.0-rc.1^{tree}")
    assert set(data["blocking"]) >= {"test", "promotion_guard", "migrations"}
    md = (repo / "dist" / "release-gate" / f"{sha}.md").read_text()
    assert "tests/test_a.py::test_broken" in md and "Blocking reasons" in md
    with pytest.raises(GateFailed) as err:
        runner.enforce(report)
    assert err.value.exit_code == ExitCode.GATE_FAILED


def test_inv_release_gate_exits_5_and_prints_json(repo: Path) -> None:
    commit(
        repo,
        {
            "tests/test_a.py": BAD_TEST,
            "tasks.py": "from invoke import Collection\n\nfrom deploy.tasks import release\n\n"
            "ns = Collection(release.ns)\n",
        },
        tag="v2.0.0",
    )
    inv = str(Path(sys.executable).parent / "inv")
    res = subprocess.run(
        [inv, "release.gate", "--ref", "v2.0.0", "--json"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == int(ExitCode.GATE_FAILED), res.stderr
    data = json.loads(res.stdout)
    assert data["stage"] == "GA" and data["verdict"] == "failed"
    assert "Traceback" not in res.stderr and "release gate failed" in res.stderr
    env = {**os.environ, "STAGEFLOW_ACTOR": "alice@example.org", "STAGEFLOW_ACTOR_KIND": "human"}
    res = subprocess.run(
        [inv, "release.gate", "--ref", "v2.0.0", "--break-glass", "P1: revert"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert "verdict: passed-with-override" in res.stdout


def test_main_with_lint_error_reports_in_pilot_and_passes(repo: Path) -> None:
    commit(repo, {"bad.py": "import os\n"})
    report = gate(repo)  # default ref: the current branch
    assert report.ref == "main" and report.stage == "PILOT"
    check = by_name(report)["check"]
    assert check.status == "failed" and check.requirement == "report_only"
    assert "bad.py:1:8: F401" in check.summary
    assert report.verdict == "passed"
    runner.enforce(report)  # report-only failures never block


def test_gates_judge_the_commit_not_the_working_tree(repo: Path) -> None:
    git(repo, "tag", "v1.1.0")
    (repo / "tests" / "test_a.py").write_text(BAD_TEST)  # uncommitted breakage
    report = gate(repo, "v1.1.0")
    assert by_name(report)["test"].status == "passed"


def test_a_hanging_gate_is_killed_and_fails_closed(repo: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "sleeper.pid"
    hang = STAGES.replace(
        'command = ["python", "-m", "pytest", "-q", "-x", "tests"]',
        f'command = ["sh", "-c", "sleep 60 & echo $! > {pidfile}; wait"]\ntimeout_s = 1',
    )
    commit(repo, {"stageflow.toml": hang}, tag="v1.2.0")
    report = gate(repo, "v1.2.0")
    test = by_name(report)["test"]
    assert test.status == "timeout" and "killed" in test.summary
    assert report.verdict == "failed" and "test" in report.blocking
    sleeper = int(pidfile.read_text())
    assert not _alive(sleeper)  # the grandchild died with its process group
    # a timeout says nothing about the inputs: the next run tries again
    assert not by_name(gate(repo, "v1.2.0"))["test"].cached


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped yet (PID 1 in a container may not)."""
    for _ in range(50):  # SIGKILL lands asynchronously: allow it a moment
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.1)
    return True


def test_unchanged_rerun_reuses_every_cached_verdict(repo: Path) -> None:
    commit(repo, {"bad.py": "import os\n"}, tag="v1.3.0")
    first = gate(repo, "v1.3.0")
    assert not any(g.cached for g in first.gates)
    second = gate(repo, "v1.3.0")
    cached = {g.name: g.cached for g in second.gates}
    assert cached == {"check": True, "test": True, "promotion_guard": False}
    assert [(g.name, g.status, g.summary) for g in second.gates] == [
        (g.name, g.status, g.summary) for g in first.gates
    ]
    assert not any(g.cached for g in gate(repo, "v1.3.0", use_cache=False).gates)
    commit(repo, {"tests/test_a.py": BAD_TEST}, tag="v1.3.1")
    third = by_name(gate(repo, "v1.3.1"))
    assert not third["test"].cached and third["test"].status == "failed"
    # a failure kept from the run before says so, and how to run it again (what the tests reach,
    # a database say, is no input of the cache)
    with pytest.raises(GateFailed) as err:
        runner.enforce(gate(repo, "v1.3.1"))
    assert "test: failed (cached)" in err.value.line()
    assert "`--no-cache` runs check, test again" in err.value.line()


def test_break_glass_records_overrides_and_audit(repo: Path) -> None:
    commit(repo, {"tests/test_a.py": BAD_TEST}, tag="v1.4.0")
    report = gate(
        repo, "v1.4.0", break_glass="P1 outage, fix is the revert", actor="alice@example.org"
    )
    assert report.verdict == "passed-with-override"
    assert {o["gate"] for o in report.overrides} == {"test", "promotion_guard"}
    assert all(
        o["actor"] == "alice@example.org" and o["reason"].startswith("P1") and o["time"]
        for o in report.overrides
    )
    runner.enforce(report)
    audit = [
        json.loads(line)
        for line in (repo / "dist" / "release-gate" / "audit.jsonl").read_text().splitlines()
    ]
    assert {a["gate"] for a in audit} == {"test", "promotion_guard"}
    assert all(
        a["commit"] == report.commit and a["action"] == "release-gate.break-glass" for a in audit
    )
    saved = json.loads((repo / "dist" / "release-gate" / f"{report.commit}.json").read_text())
    assert saved["verdict"] == "passed-with-override" and len(saved["overrides"]) == 2


def test_automation_cannot_break_the_glass(repo: Path) -> None:
    from deploy.errors import GuardRefused

    commit(repo, {"tests/test_a.py": BAD_TEST}, tag="v1.4.1")
    with pytest.raises(GuardRefused, match="needs a human"):
        gate(repo, "v1.4.1", break_glass="ship it", actor="bot", actor_is_human=False)
    assert not (repo / "dist" / "release-gate" / "audit.jsonl").exists()


def test_a_gate_stuck_outside_any_command_times_out() -> None:
    import threading

    from deploy.gates import GateResult

    release = threading.Event()

    def one(name: str, requirement: str) -> GateResult:
        if name == "stuck":
            release.wait()
        return GateResult(name, requirement, "passed", "ok", 0.0)  # type: ignore[arg-type]

    try:
        results = runner.run_parallel(
            [("stuck", "required"), ("quick", "required")], one, {"stuck": 0.2, "quick": 60}
        )
    finally:
        release.set()
    assert results["stuck"].status == "timeout" and results["quick"].status == "passed"


def test_bad_ref_and_bad_stages_are_refused(repo: Path) -> None:
    from deploy.errors import ConfigError, UsageError

    with pytest.raises(UsageError):
        gate(repo, "no-such-tag")
    broken = STAGES.replace('patterns = ["v*-rc.*"]', 'patterns = ["v*-rc.*"]\n').replace(
        'order = ["PRE_GA", "GA", "PILOT"]', 'order = ["PILOT", "PRE_GA", "GA"]'
    )
    (repo / "stageflow.toml").write_text(broken)
    git(repo, "commit", "-qam", "stages in an order where one never matches")
    with pytest.raises(ConfigError, match="can never match"):  # the gated commit's policy
        gate(repo, "main")
    inv = str(Path(sys.executable).parent / "inv")
    (repo / "tasks.py").write_text(
        "from invoke import Collection\n\nfrom deploy.tasks import release\n\n"
        "ns = Collection(release.ns)\n"
    )
    res = subprocess.run(
        [inv, "release.stages"], cwd=repo, capture_output=True, text=True, check=False
    )
    assert res.returncode == int(ExitCode.USAGE) and "can never match" in res.stderr


def test_db_url_password_never_reaches_the_report(repo: Path) -> None:
    git(repo, "tag", "v1.5.0-rc.1")
    report = gate(
        repo,
        "v1.5.0-rc.1",
        only=("migrations",),
        db_url=Secret("postgresql://app:hunter2secret@127.0.0.1:1/nope"),
    )
    mig = by_name(report)["migrations"]
    assert mig.status == "error" and report.verdict == "failed"
    out = repo / "dist" / "release-gate"
    text = (out / f"{report.stem}.json").read_text() + (out / f"{report.stem}.md").read_text()
    assert report.stem.endswith(".partial") and "hunter2secret" not in text


def test_migrations_without_db_url_fail_closed(repo: Path) -> None:
    git(repo, "tag", "v1.6.0-rc.1")
    full = gate(repo, "v1.6.0-rc.1")
    assert by_name(full)["migrations"].status == "error" and full.verdict == "failed"
    report = gate(repo, "v1.6.0-rc.1", only=("migrations",))
    mig = by_name(report)["migrations"]
    assert mig.status == "error" and "--db-url" in mig.summary
    assert report.verdict == "failed"
    # the partial run is written beside, never over, the commit's full report
    saved = json.loads((repo / "dist" / "release-gate" / f"{full.commit}.json").read_text())
    assert saved["selection"] is None and len(saved["gates"]) == 4


# -- migrations against a real PostgreSQL ---------------------------------------------------------

CREATE = "CREATE TABLE IF NOT EXISTS notes (id bigint PRIMARY KEY, score bigint NOT NULL);\n"


def _applied_target(repo: Path, dsn: str) -> None:
    """The target as production has it: version 1 applied, with data."""
    migrations.migrate(dsn, migrations.discover(repo / "app" / "migrations"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO notes VALUES (1, 10), (2, -5)")


def _scratch_dbs(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'stageflow_gate_%'")
        return [r[0] for r in rows]


def _mig_repo(repo: Path, dsn: str, second: dict[str, str], tag: str) -> str:
    commit(repo, {"app/migrations/0001_notes.up.sql": CREATE})
    _applied_target(repo, dsn)
    commit(repo, second, tag=tag)
    return fingerprint(dsn)


def test_fingerprint_sees_writes(pg_dsn: str, repo: Path) -> None:
    commit(repo, {"app/migrations/0001_notes.up.sql": CREATE})
    _applied_target(repo, pg_dsn)
    before = fingerprint(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE notes SET score = 11 WHERE id = 1")
    assert fingerprint(pg_dsn) != before


def test_migration_gate_refuses_squawk_blocking_file(pg_dsn: str, repo: Path) -> None:
    before = _mig_repo(
        repo,
        pg_dsn,
        {
            "app/migrations/0002_author.up.sql": "ALTER TABLE notes ADD COLUMN author_id bigint NOT NULL;\n",
        },
        "v2.0.0-rc.1",
    )
    report = gate(repo, "v2.0.0-rc.1", only=("migrations",), db_url=Secret(pg_dsn))
    mig = by_name(report)["migrations"]
    assert mig.status == "failed" and "adding-required-field" in mig.summary
    assert mig.details["pending"] == ["0002_author.up.sql"]
    assert report.verdict == "failed"
    assert fingerprint(pg_dsn) == before


def test_migration_gate_refuses_file_failing_in_rehearsal(pg_dsn: str, repo: Path) -> None:
    before = _mig_repo(
        repo,
        pg_dsn,
        {
            "app/migrations/0002_positive.up.sql": "ALTER TABLE notes ADD CONSTRAINT notes_score_positive CHECK (score > 0);\n",
        },
        "v2.1.0-rc.1",
    )
    report = gate(repo, "v2.1.0-rc.1", only=("migrations",), db_url=Secret(pg_dsn))
    mig = by_name(report)["migrations"]
    assert mig.status == "failed" and "rehearsal of 0002_positive.up.sql failed" in mig.summary
    assert fingerprint(pg_dsn) == before
    assert (
        migrations.pending(pg_dsn, migrations.discover(repo / "app" / "migrations"))[0].version == 2
    )
    assert _scratch_dbs(pg_dsn) == []


def test_migration_gate_rehearses_a_copy_while_the_target_is_in_use(
    pg_dsn: str, repo: Path
) -> None:
    before = _mig_repo(
        repo,
        pg_dsn,
        {
            "app/migrations/0002_tags.up.sql": "ALTER TABLE notes ADD COLUMN IF NOT EXISTS tags text;\n",
            "app/migrations/0002_tags.down.sql": "ALTER TABLE notes DROP COLUMN IF EXISTS tags;\n",
        },
        "v2.2.0-rc.1",
    )
    # A connected client (the running service) changes nothing: the copy is a dump, restored
    # into a cluster the gate starts for the rehearsal.
    with psycopg.connect(pg_dsn, autocommit=True):
        report = gate(repo, "v2.2.0-rc.1", only=("migrations",), db_url=Secret(pg_dsn))
    mig = by_name(report)["migrations"]
    assert mig.status == "passed", mig.summary
    assert mig.details["scratch_method"] == "pg_dump"
    assert mig.details["rehearsal"]["applied"][0]["file"] == "0002_tags.up.sql"
    assert mig.details["rehearsal"]["round_trip"]["versions"] == [2]
    assert fingerprint(pg_dsn) == before
    assert _scratch_dbs(pg_dsn) == []
    again = gate(repo, "v2.2.0-rc.1", only=("migrations",), db_url=Secret(pg_dsn), use_cache=False)
    assert by_name(again)["migrations"].status == "passed"
    assert fingerprint(pg_dsn) == before
    assert by_name(gate(repo, "v2.2.0-rc.1", only=("migrations",), db_url=Secret(pg_dsn)))[
        "migrations"
    ].cached
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # new data: the verdict must be redone
        conn.execute("INSERT INTO notes VALUES (3, 7)")
    assert not by_name(gate(repo, "v2.2.0-rc.1", only=("migrations",), db_url=Secret(pg_dsn)))[
        "migrations"
    ].cached


# -- the config gates: deps, policy-drift, budgets, docs-freshness, observability, eval -----------

SERVICE_KEYS = ("LOG_LEVEL", "DEBUG", "REQUIRE_API_KEY", "API_RATE_LIMIT")  # the service's, in ENV
ENV = """ENVIRONMENT={environment}
APP_PORT={port}
DATA_DIR=.stageflow/{name}
LOG_LEVEL={level}
DEBUG=false
REQUIRE_API_KEY=true
API_RATE_LIMIT={rate}
"""
FULL = """
[environments.prod.thresholds]
p95_ratio = 2.0

[environments.staging]
relax_thresholds_from = "prod"
relax_factor = 2

[stages]
order = ["GA", "PILOT"]

[stages.GA]
patterns = ["v*"]
[stages.GA.gates]
docs-freshness = "required"
deps = "required"
policy-drift = "required"
budgets = "required"
observability = "required"
eval = "required"
promotion_guard = "required"

[stages.PILOT]
patterns = ["*"]
[stages.PILOT.gates]
promotion_guard = "report_only"

[gates.deps]
approved = "approved.toml"

[gates.policy-drift]
allowed_keys = ["ENVIRONMENT", "APP_PORT", "DATA_DIR", "LOG_LEVEL"]

[gates.eval]
command = ["python", "-c", "import pathlib, sys; sys.exit(pathlib.Path('prompts/a.txt').read_text() != 'good')"]
paths = ["prompts/*"]
"""


@pytest.fixture
def metrics_port():
    import http.server
    import threading

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"requests_total 1\n" if self.path == "/metrics" else b""
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def full_repo(tmp_path: Path, metrics_port: int) -> Path:
    from deploy.config import ENV_KEYS, SECRET_KEYS
    from deploy.gates.budgets import budgets_hash
    from deploy.gates.deps import approved_toml, installed

    root = tmp_path / "full"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("dist/\n.stageflow/\n")
    import tomllib

    locked = budgets_hash(tomllib.loads(FULL))
    files = {
        "stageflow.toml": FULL + f'\n[gates.budgets]\nlocked_hash = "{locked}"\n',
        "approved.toml": approved_toml(installed()),
        "env/staging.env": ENV.format(
            environment="staging", name="staging", port=metrics_port, level="debug", rate=600
        ),
        "env/prod.env": ENV.format(
            environment="production", name="prod", port=1, level="info", rate=600
        ),
        "tasks.py": "from invoke import Collection\n\nfrom deploy.tasks import release\n\n"
        "ns = Collection(release.ns)\n",
        "README.md": "# Full\n\nRun `inv release.gate` (stages: `inv release.stages`), "
        "see [env](docs/ENVIRONMENT.md#keys).\n",
        "docs/ENVIRONMENT.md": "# Environment\n\n## Keys\n\n"
        + "".join(f"- {k}\n" for k in sorted({*ENV_KEYS, *SECRET_KEYS, *SERVICE_KEYS})),
        "prompts/a.txt": "good",
    }
    commit(root, files, message="initial", tag="v1.0.0")
    logs = root / ".stageflow" / "staging" / "shared" / "logs"
    logs.mkdir(parents=True)
    (logs / "app.log").write_text("started\n")
    return root


def test_every_config_gate_passes_on_a_sound_release(full_repo: Path) -> None:
    report = gate(full_repo, "v1.0.0")
    assert report.stage == "GA"
    statuses = {g.name: (g.status, g.summary) for g in report.gates}
    assert all(s in ("passed", "skipped") for s, _ in statuses.values()), statuses
    assert statuses["eval"][0] == "passed"  # no earlier tag: every file is new
    sbom = json.loads(
        (full_repo / "dist" / "release-gate" / f"{report.commit}.sbom.cdx.json").read_text()
    )
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    assert any(c["name"] == "invoke" and c["licenses"] for c in sbom["components"])
    assert report.verdict == "passed" and report.artifacts["sbom"].endswith(".sbom.cdx.json")
    rerun = by_name(gate(full_repo, "v1.0.0"))
    assert all(
        rerun[n].cached for n in ("docs-freshness", "deps", "policy-drift", "budgets", "eval")
    )
    assert not rerun["observability"].cached  # live state is looked at every time


def test_each_config_gate_catches_its_own_problem(full_repo: Path, metrics_port: int) -> None:
    text = (full_repo / "approved.toml").read_text()
    approved = text.replace('[packages."invoke"]', '[packages."invoke-was-removed"]')
    toml = (full_repo / "stageflow.toml").read_text().replace("p95_ratio = 2.0", "p95_ratio = 9.0")
    prod = ENV.format(environment="production", name="prod", port=1, level="info", rate=0)
    commit(
        full_repo,
        {
            "approved.toml": approved,
            "stageflow.toml": toml,
            "env/prod.env": prod,
            "README.md": "# Full\n\n[x](docs/NOPE.md)\n",
            "prompts/a.txt": "bad",
        },
        tag="v1.1.0",
    )
    (full_repo / ".stageflow" / "staging" / "shared" / "logs" / "app.log").unlink()
    report = by_name(gate(full_repo, "v1.1.0"))
    assert "invoke" in report["deps"].summary and report["deps"].status == "failed"
    assert "API_RATE_LIMIT" in report["policy-drift"].summary
    assert report["budgets"].status == "failed"
    assert report["budgets"].details["current_hash"] != report["budgets"].details["locked_hash"]
    assert "broken link: docs/NOPE.md" in " ".join(report["docs-freshness"].details["problems"])
    assert "no log files" in report["observability"].summary
    assert (
        report["eval"].status == "failed" and "prompts/a.txt" in report["eval"].details["changed"]
    )
    assert report["promotion_guard"].status == "failed"


def test_eval_is_skipped_when_watched_paths_did_not_change(full_repo: Path) -> None:
    commit(
        full_repo, {"README.md": (full_repo / "README.md").read_text() + "\nMore.\n"}, tag="v1.0.1"
    )
    ev = by_name(gate(full_repo, "v1.0.1", only=("eval",)))["eval"]
    assert ev.status == "skipped" and "since v1.0.0" in ev.summary


def test_the_projects_own_migrations_rehearse_on_an_empty_target(pg_dsn: str, repo: Path) -> None:
    source = Path(__file__).resolve().parents[2] / "app" / "migrations"
    files = {f"app/migrations/{p.name}": p.read_text() for p in sorted(source.glob("*.sql"))}
    if not files:
        pytest.skip("the project has no migrations yet")
    commit(repo, files, tag="v3.0.0-rc.1")
    before = fingerprint(pg_dsn)
    report = gate(repo, "v3.0.0-rc.1", only=("migrations",), db_url=Secret(pg_dsn))
    mig = by_name(report)["migrations"]
    assert mig.status == "passed", mig.summary
    assert len(mig.details["rehearsal"]["applied"]) == len(
        [n for n in files if n.endswith(".up.sql")]
    )
    assert fingerprint(pg_dsn) == before


# -- a service's own commands ----------------------------------------------------------------------


def _service_repo(repo: Path, extra: str = "") -> None:
    """The repo's policy without a test command, with ruff missing: a fresh service's gate."""
    policy = STAGES.replace(
        '[gates.test]\ncommand = ["python", "-m", "pytest", "-q", "-x", "tests"]\n', ""
    )
    commit(repo, {"stageflow.toml": policy + extra})


def test_a_failing_test_in_any_file_fails_pre_ga_and_ga_named_in_both_reports(repo: Path) -> None:
    _service_repo(repo)
    commit(repo, {"tests/e2e/test_flow.py": BAD_TEST.replace("test_ok", "test_fine")})
    git(repo, "tag", "v5.0.0-rc.1")
    git(repo, "tag", "v5.0.0")
    for ref, stage in (("v5.0.0-rc.1", "PRE_GA"), ("v5.0.0", "GA")):
        report = gate(repo, ref)
        test = by_name(report)["test"]
        assert report.stage == stage and test.status == "failed", test.summary
        assert "tests/e2e/test_flow.py::test_broken" in test.summary
        out = repo / "dist" / "release-gate"
        assert "tests/e2e/test_flow.py::test_broken" in (out / f"{report.commit}.json").read_text()
        assert "tests/e2e/test_flow.py::test_broken" in (out / f"{report.commit}.md").read_text()
        assert "test" in report.blocking
    again = by_name(gate(repo, "v5.0.0"))["test"]
    assert again.cached and again.status == "failed"


def test_the_test_command_runs_in_the_services_own_folder(repo: Path) -> None:
    # a service in backend/ beside a frontend: its tests read a file relative to that folder
    policy = STAGES.replace('"-x", "tests"]\n', '"-x", "tests"]\ndir = "backend"\n')
    reads = (
        "from pathlib import Path\n\n\ndef test_ok():\n    assert Path('settings.ini').is_file()\n"
    )
    commit(
        repo,
        {
            "stageflow.toml": policy,
            "backend/settings.ini": "[app]\n",
            "backend/tests/test_b.py": reads,
        },
        tag="v6.0.0",
    )
    test = by_name(gate(repo, "v6.0.0"))["test"]
    assert test.status == "passed", test.summary
    commit(repo, {"stageflow.toml": policy.replace('dir = "backend"', 'dir = "../backend"')})
    git(repo, "tag", "v6.0.1")
    test = by_name(gate(repo, "v6.0.1"))["test"]
    assert (
        test.status == "error"
        and "[gates.test] dir = '../backend' must be a folder" in test.summary
    )


DB_SERVICE = """
[service]
name = "widgets"
wsgi = "app:app"

[service.env]
secrets = ["SECRET_KEY"]

[service.env.from]
POSTGRES_SERVER = "PGHOST"

[service.migrations]
kind = "command"
dir = "versions"
up = ["python", "migrate.py"]
current = ["python", "-c", "print('a1')"]
"""
MIGRATE = """\
import os

import psycopg

with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("CREATE TABLE widgets (id int PRIMARY KEY)")
"""
# what a service's tests do: reach the database through its settings and empty its tables
DB_TEST = """\
import os

import psycopg


def test_the_schema_is_there_and_ours_to_empty():
    assert os.environ["POSTGRES_SERVER"] == "127.0.0.1" and len(os.environ["SECRET_KEY"]) > 16
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO widgets VALUES (1)")
        conn.execute("DELETE FROM widgets")
"""


def test_the_tests_get_a_migrated_database_of_their_own(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the shell points at another database: the tests never reach it
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/not-this-one")
    monkeypatch.setenv("PGHOST", "192.0.2.1")
    policy = STAGES.replace('"-x", "tests"]\n', '"-x", "tests"]\ndatabase = true\n')
    policy = DB_SERVICE + policy[policy.index("[environments.dev]") :]
    files = {"stageflow.toml": policy, "migrate.py": MIGRATE,
             "versions/a1.txt": "", "tests/test_db.py": DB_TEST}  # fmt: skip
    commit(repo, files, tag="v7.0.0")
    test = by_name(gate(repo, "v7.0.0"))["test"]
    assert test.status == "passed", test.summary
    assert test.details["database"] == "`python migrate.py` applied"
    # migrations that do not apply on an empty database: the tests do not run
    commit(repo, {"migrate.py": "raise SystemExit('no such table: users')\n"}, tag="v7.0.1")
    test = by_name(gate(repo, "v7.0.1"))["test"]
    assert test.status == "error"
    assert test.summary.startswith("the test database: `python migrate.py` exited 1: no such")


def test_tests_that_cannot_be_collected_say_what_stopped_them(repo: Path) -> None:
    # a test module that loads the service's settings at import
    module = "import os\n\nSETTINGS = os.environ['SHOP_SETTING_THE_GATE_LACKS']\n"
    commit(repo, {"tests/test_settings.py": module}, tag="v8.0.0")
    test = by_name(gate(repo, "v8.0.0"))["test"]
    assert test.status == "failed"
    assert test.summary.startswith("1 failing: tests/test_settings.py: ")
    assert "KeyError" in test.summary and "SHOP_SETTING" in test.summary, test.summary


def test_a_missing_tool_is_one_line_and_an_unconfigured_check_says_what_to_set(
    repo: Path,
) -> None:
    _service_repo(
        repo,
        '\n[gates.check]\ncommands = [["no-such-linter", "."]]\n'
        '\n[gates.test]\ncommand = ["no-such-runner"]\n',
    )
    git(repo, "tag", "v6.0.0")
    gates = by_name(gate(repo, "v6.0.0"))
    assert gates["check"].status == "error"
    assert gates["check"].summary.startswith("`no-such-linter` is not installed on PATH")
    assert "[gates.check] commands" in gates["check"].summary
    assert "Error" not in gates["check"].summary and "Traceback" not in gates["check"].summary
    assert gates["test"].summary.startswith("`no-such-runner` is not installed")
    _service_repo(repo, "\n[gates.check]\ncommands = []\n")
    git(repo, "tag", "v6.0.1")
    check = by_name(gate(repo, "v6.0.1"))["check"]
    assert check.status == "skipped" and "no check configured" in check.summary


def test_gates_that_read_the_files_wait_for_a_slow_snapshot(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the gates start while the commit is extracted; none may judge a half-written tree
    real = runner.snapshot

    def slow(root: Path, sha: str, dest: Path) -> None:
        time.sleep(1.0)
        real(root, sha, dest)

    monkeypatch.setattr(runner, "snapshot", slow)
    commit(repo, {"tests/test_b.py": GOOD_TEST}, tag="v1.6.0")
    gates = by_name(gate(repo, "v1.6.0", use_cache=False))
    assert gates["test"].status == "passed" and "2 passed" in gates["test"].summary
    assert gates["check"].status == "passed"


def test_a_snapshot_that_cannot_be_made_fails_the_run_and_writes_nothing(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(root: Path, sha: str, dest: Path) -> None:
        time.sleep(0.3)
        raise UsageError(f"the snapshot of {sha[:12]} could not be extracted: disk full")

    monkeypatch.setattr(runner, "snapshot", broken)
    commit(repo, {"app.py": "VALUE = 2\n"}, tag="v1.7.0")
    with pytest.raises(UsageError, match="could not be extracted: disk full"):
        gate(repo, "v1.7.0")
    reports = repo / "dist" / "release-gate"
    assert not list(reports.glob("*.json")) and not list(reports.glob("*.md"))
    assert not list((reports / "cache").glob("*.json"))  # no verdict reached without files


def test_a_unittest_suite_names_its_failing_case(repo: Path) -> None:
    # `stageflow init` writes `python -m unittest` for a project whose tests are unittest's
    text = (repo / "stageflow.toml").read_text()
    unit = (
        "import unittest\n\n\nclass UserCase(unittest.TestCase):\n"
        "    def test_ok(self):\n        self.assertEqual(1 + 1, 2)\n\n"
        "    def test_broken(self):\n        self.assertEqual(1 + 1, 3)\n"
    )
    commit(
        repo,
        {
            "stageflow.toml": text.replace(
                'command = ["python", "-m", "pytest", "-q", "-x", "tests"]',
                'command = ["python", "-m", "unittest"]',
            ),
            "tests.py": unit,
        },
        tag="v1.8.0-rc.1",
    )
    gates = by_name(gate(repo, "v1.8.0-rc.1", only=()))
    assert gates["test"].status == "failed"
    assert gates["test"].summary == "1 failing: tests.UserCase.test_broken"
    # a runner that prints its teardown after unittest's summary (Django's drops its test
    # database) is summarized by unittest's lines, not by the teardown's
    teardown = (
        "import atexit, sys\n"
        "atexit.register(print, \"Destroying test database for alias 'default'...\", file=sys.stderr)\n"
    )
    passing = teardown + unit.replace("1 + 1, 3", "1 + 1, 2")
    commit(repo, {"tests.py": passing}, tag="v1.8.0-rc.2")
    gates = by_name(gate(repo, "v1.8.0-rc.2", only=()))
    assert gates["test"].status == "passed"
    assert re.fullmatch(r"Ran 2 tests in \d+\.\d+s: OK", gates["test"].summary), gates[
        "test"
    ].summary


CREATES_A_DATABASE = (
    "import os\n\nimport psycopg\n\n\n"
    "def test_the_database():\n"
    "    with psycopg.connect(os.environ['SHOP_DB'], autocommit=True) as conn:\n"
    "        conn.execute('CREATE DATABASE test_shop')\n"
    "        conn.execute('CREATE TABLE notes (id int)')\n"
    "        assert conn.execute('SELECT count(*) FROM notes').fetchone() == (0,)\n"
)


def test_the_tests_get_a_throwaway_database_when_asked(repo: Path) -> None:
    policy = (
        STAGES.replace('kind = "sql"', 'kind = "none"')
        + '\n[service.env.from]\nSHOP_DB = "DATABASE_URL"\n'
    )
    os.environ.pop("SHOP_DB", None)
    commit(
        repo, {"stageflow.toml": policy, "tests/test_a.py": CREATES_A_DATABASE}, tag="v1.0.0-rc.1"
    )
    without = by_name(gate(repo, "v1.0.0-rc.1", only=("test",)))["test"]
    assert without.status == "failed"
    assert "(KeyError: 'SHOP_DB')" in without.summary  # the exception, where pytest gives none
    commit(
        repo, {"stageflow.toml": policy.replace("[gates.test]", "[gates.test]\ndatabase = true")}
    )
    report = gate(repo, "main", only=("test",))
    assert by_name(report)["test"].status == "passed", by_name(report)["test"].summary


# a service whose app factory reaches Redis at start (a cache it clears), as its migration tool
# and its tests create the app
REDIS_AT_START = """\
import os

import redis

redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5).flushdb()
"""
REDIS_TEST = """\
import os

import redis


def test_redis_is_an_empty_one_of_the_tests_own():
    client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5)
    assert client.dbsize() == 0
    client.set("k", "v")
"""


def test_the_tests_and_their_migrations_get_an_empty_redis_of_their_own(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")  # the shell's: never reached
    policy = STAGES.replace('"-x", "tests"]\n', '"-x", "tests"]\ndatabase = true\n')
    policy = DB_SERVICE + policy[policy.index("[environments.dev]") :]
    files = {"stageflow.toml": policy, "migrate.py": REDIS_AT_START + MIGRATE,
             "versions/a1.txt": "", "tests/test_redis.py": REDIS_TEST}  # fmt: skip
    commit(repo, files, tag="v7.1.0")
    test = by_name(gate(repo, "v7.1.0"))["test"]
    assert test.status == "passed", test.summary
    assert test.details["database"] == "`python migrate.py` applied"


LONG_FAILURE = """\
def test_a_setting_the_engine_refuses():
    raise TypeError(
        "Invalid argument(s) 'max_overflow','pool_pre_ping' sent to create_engine(), using "
        "configuration SQLiteDialect_pysqlite/NullPool/Engine"
    )
"""


def test_a_failing_tests_message_is_not_cut_at_eighty_columns(repo: Path) -> None:
    commit(repo, {"tests/test_engine.py": LONG_FAILURE}, tag="v8.1.0")
    test = by_name(gate(repo, "v8.1.0"))["test"]
    assert test.status == "failed"
    (failing,) = test.details["failing"]
    assert "max_overflow" in failing["message"] and "SQLiteDialect" in failing["message"], failing
