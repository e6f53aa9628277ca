"""The release gate's reports keep no secret of any environment: a gate command that prints prod's
password (as written, base64-encoded, cut short) leaves no trace of it in dist/release-gate/."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from deploy.gates import runner
from tests.integration.test_release_gate import STAGES, commit, git

PASSWORD = "pg-prod-ülträ-s3cret-value"
KEY = "key-staging-s3cret-value"

# prints the secrets file it is given, staging's key from the operator's environment, the password in base64, then its first 12 characters on
# the last line (the summary quotes the last line), and fails so the output is kept as evidence
LEAK = (
    "import base64, os, sys; text = open(sys.argv[1], encoding='utf-8').read(); print(text); "
    "print(os.environ['STAGEFLOW_STAGING_API_KEYS']); "
    "pw = text.split('POSTGRES_PASSWORD=')[1].split(chr(10))[0].strip(chr(39)); "
    "print(base64.b64encode(pw.encode()).decode()); print('password starts', pw[:12]); "
    "sys.exit(1)"
)


def test_a_gate_printing_prods_password_leaves_no_trace_in_the_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGEFLOW_STAGING_API_KEYS", KEY)
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("dist/\nenv/*.secrets.env\n")
    secrets = root / "env" / "prod.secrets.env"
    policy = STAGES.replace(
        '[gates.test]\ncommand = ["python", "-m", "pytest", "-q", "-x", "tests"]',
        f"[gates.test]\ncommand = {_toml_list(['python', '-c', LEAK, str(secrets)])}",
    )
    assert policy != STAGES
    commit(root, {"stageflow.toml": policy, "app.py": "VALUE = 1\n"}, message="initial")
    secrets.parent.mkdir()
    secrets.write_text(f"POSTGRES_PASSWORD='{PASSWORD}'\n", encoding="utf-8")
    os.chmod(secrets, 0o600)

    report = runner.run(
        runner.GateRequest(
            root=root,
            ref="main",
            only=("test",),
            process_env={"STAGEFLOW_STAGING_API_KEYS": KEY, "HOME": str(tmp_path)},
        )
    )
    test = {g.name: g for g in report.gates}["test"]
    assert test.status == "failed" and "password starts [REDACTED]" in test.summary
    written = "".join(
        p.read_text(encoding="utf-8")
        for p in (root / "dist" / "release-gate").rglob("*")
        if p.is_file()
    )
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    assert "[REDACTED]" in written
    for trace in (PASSWORD, PASSWORD[:12], encoded, encoded[:12], r"\u00fc", KEY):
        assert trace not in written, trace


def _toml_list(items: list[str]) -> str:
    import json

    return "[" + ", ".join(json.dumps(i) for i in items) + "]"
