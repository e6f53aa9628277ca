"""Secrets scrubbed wherever they go: every environment's, and the forms programs print them in."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import stat
from pathlib import Path
from urllib.parse import quote

import pytest

from deploy import hooks
from deploy.config import load_project
from deploy.hosts import Host
from deploy.secrets import REDACTED, Secret, scrub
from deploy.state import Layout, audit
from tests import support

VALUE = "Zq9-vL2_xR7+tY4/wB6=kP1"


@pytest.mark.parametrize(
    "printed",
    [
        VALUE,
        VALUE[:8],
        VALUE[:15],
        base64.b64encode(VALUE.encode()).decode(),
        base64.b64encode(VALUE.encode()).decode().rstrip("="),
        base64.urlsafe_b64encode(VALUE.encode()).decode(),
        base64.b64encode(VALUE.encode()).decode()[:12],
        quote(VALUE, safe=""),
        quote(VALUE, safe="")[:10],
    ],
)
def test_derived_forms_are_scrubbed(printed: str) -> None:
    text = scrub(f"before {printed} after", [Secret(VALUE)])
    assert text == f"before {REDACTED} after"


def test_a_short_prefix_is_ordinary_text() -> None:
    assert scrub(f"{VALUE[:7]} stays", [Secret(VALUE)]) == f"{VALUE[:7]} stays"


def test_every_occurrence_and_every_secret() -> None:
    other = "another-long-secret-1"
    text = scrub(f"{VALUE}|{other[:9]}|{VALUE[:10]}", [Secret(VALUE), Secret(other)])
    assert text == f"{REDACTED}|{REDACTED}|{REDACTED}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(tmp_path)
    return tmp_path


def test_a_hook_of_one_environment_is_scrubbed_of_every_environments_secrets(root: Path) -> None:
    proj = load_project(root)
    prod_pw = proj.env("prod").secret("POSTGRES_PASSWORD")
    assert prod_pw is not None
    hook = root / "deploy" / "hooks" / "post-deploy"
    hook.parent.mkdir(parents=True)
    hook.write_text(
        "#!/bin/sh\n"
        "pw=$(sed -n 's/^POSTGRES_PASSWORD=//p' env/prod.secrets.env)\n"
        'echo "$pw"; echo "$pw" | cut -c1-12; printf %s "$pw" | base64\n'
        "exit 1\n"
    )
    os.chmod(hook, 0o755)
    [result] = hooks.run(proj, "staging", "post-deploy", {}, process_env={"PATH": os.defpath})
    assert not result.ok
    for form in (prod_pw.reveal(), prod_pw.reveal()[:12]):
        assert form not in result.output
    assert base64.b64encode(prod_pw.reveal().encode()).decode() not in result.output
    assert result.output.count(REDACTED) == 3, result.output


def test_known_secrets_hold_every_environments(root: Path) -> None:
    proj = load_project(root)
    values = {s.reveal() for s in proj.known_secrets()}
    for name in ("staging", "prod"):
        assert {s.reveal() for s in proj.env(name).secret_values()} <= values


def test_state_files_are_private(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "home"))
    audit(Host(), layout, actor="a", action="x")
    assert stat.S_IMODE(os.stat(layout.audit).st_mode) == 0o600
    os.chmod(layout.audit, 0o644)  # made by an older version
    audit(Host(), layout, actor="a", action="y")
    assert stat.S_IMODE(os.stat(layout.audit).st_mode) == 0o600
    assert len(Path(layout.audit).read_text().splitlines()) == 2


ESCAPED = 'p@ss/w%rd+ it\'s "q"-\u00e9 tail'


@pytest.mark.parametrize(
    "printed",
    [
        quote(ESCAPED),  # '/' kept, the rest encoded
        re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(ESCAPED, safe="")),
        ESCAPED.replace(" ", "+"),
        re.sub("[:@/]", lambda m: f"%{ord(m.group(0)):X}", ESCAPED),  # a driver's own choice
        repr(ESCAPED)[1:-1],
        json.dumps(ESCAPED)[1:-1],
        repr(ESCAPED.encode())[2:-1],
        ESCAPED.replace("'", "&#39;").replace('"', "&quot;"),
        ESCAPED[:14] + "\n    " + ESCAPED[14:],  # wrapped
        shlex.quote(ESCAPED)[1:-1],  # inside a shell's single quotes
        ESCAPED.replace("'", "'\\''"),
    ],
)
def test_escaped_forms_are_scrubbed_whole(printed: str) -> None:
    assert scrub(f"before {printed} after", [Secret(ESCAPED)]) == f"before {REDACTED} after"


@pytest.mark.parametrize("cut", [slice(0, 9), slice(5, 14), slice(-9, None)])
def test_a_run_of_eight_or_more_anywhere_in_the_value_is_scrubbed(cut: slice) -> None:
    assert scrub(f"<{VALUE[cut]}>", [Secret(VALUE)]) == f"<{REDACTED}>"
    elided = f"'{VALUE[:10]}...{VALUE[-10:]}'"  # a validation error's cut-short value
    assert scrub(elided, [Secret(VALUE)]) == f"'{REDACTED}...{REDACTED}'"


def test_escapes_that_spell_no_secret_are_left_as_printed() -> None:
    text = "a+b %41 \\u00e9 &amp; \\'x\\' line\n  next"
    assert scrub(text, [Secret(VALUE)]) == text
