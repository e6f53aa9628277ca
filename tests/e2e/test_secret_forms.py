"""A password set by hand, with the characters URLs and quotes escape, printed by a service that
fails the ways real ones do (a driver's URL, a validation error's cut-short value, a settings
repr) and by a worker that prints its environment: no piece of it reaches the deploy's line,
its --json, history, audit or the service's own logs."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest

from deploy.secrets_file import dotenv_line
from tests.e2e.conftest import Project, destroy, make_project

PASSWORD = 'p@ss/w%rd+ it\'s "q"-s3cret-value tail'

# What the service prints when it cannot start: the DSN as SQLAlchemy renders it (only ':', '@'
# and '/' encoded), a validation error's value cut in the middle, the settings as a dict's repr
BROKEN = """import os as _os
import re as _re
from urllib.parse import unquote as _unquote, urlsplit as _urlsplit

_url = _os.environ["DATABASE_URL"]
_pw = _unquote(_urlsplit(_url).password or "")
_sqla = _re.sub(r"[:@/]", lambda m: "%%%X" % ord(m.group(0)), _pw)
_cut = repr(_pw[:12] + "..." + _pw[-12:])
raise RuntimeError(
    f"cannot reach postgresql+psycopg://app:{_sqla}@db/app (input_value={_cut}) "
    f"settings={ {'PASSWORD': _pw}!r}"
)
"""


# a worker that prints its environment once it runs, as a debugging one does
WORKER = """
[service.processes]
worker = ["python", "-c", "import os, time; print(dict(os.environ), flush=True); time.sleep(600)"]
"""


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    proj = make_project("sf-forms-")
    with open(proj.root / "stageflow.toml", "a") as fh:
        fh.write(WORKER)
    proj.commit("a worker that prints its environment")
    secrets = proj.root / "env" / "dev.secrets.env"
    secrets.write_text(dotenv_line("POSTGRES_PASSWORD", PASSWORD))
    os.chmod(secrets, 0o600)
    try:
        yield proj
    finally:
        destroy(proj)


def _pieces(text: str) -> list[str]:
    """Runs of eight characters or more of the password, in any form it was printed in."""
    forms = {
        PASSWORD,
        quote(PASSWORD),
        quote(PASSWORD, safe=""),
        quote_plus(PASSWORD),
        re.sub(r"[:@/]", lambda m: f"%{ord(m.group(0)):X}", PASSWORD),
        repr(PASSWORD)[1:-1],
        json.dumps(PASSWORD)[1:-1],
    }
    return sorted(
        {form[i : i + 8] for form in forms for i in range(len(form) - 7) if form[i : i + 8] in text}
    )


def test_a_failing_service_printing_its_password_leaves_no_piece_of_it(project: Project) -> None:
    project.ok("dev.up")
    project.ok("dev.deploy")
    wsgi = project.root / "app" / "wsgi.py"
    good = wsgi.read_text()
    future = "from __future__ import annotations\n"
    wsgi.write_text(good.replace(future, future + BROKEN, 1))
    project.commit("the service prints its settings when it cannot start")
    try:
        res = project.inv("dev.deploy")
        as_json = project.inv("dev.deploy", "--json")
    finally:
        wsgi.write_text(good)
        project.commit("the service as it was")
    assert res.returncode != 0 and as_json.returncode != 0
    line = res.stderr.strip().splitlines()[-1]
    assert "RuntimeError: cannot reach postgresql+psycopg://app:" in line, line  # it got through
    history = project.ok("dev.history", "--json").stdout
    assert json.loads(history)[0]["status"] != "success"
    state = project.root / ".stageflow" / "dev" / "state"
    shown = {
        "deploy": res.stdout + res.stderr,
        "deploy --json": as_json.stdout + as_json.stderr,
        "history": history,
        **{p.name: p.read_text() for p in state.glob("*.jsonl")},
        **{p.name: p.read_text() for p in (state.parent / "shared" / "logs").glob("*.log")},
    }
    assert {"history.jsonl", "app.log", "worker.log"} <= set(shown)
    assert "DATABASE_URL" in shown["worker.log"] and "Traceback" in shown["app.log"]
    assert {name: _pieces(text) for name, text in shown.items() if _pieces(text)} == {}


def test_a_release_built_before_the_log_writer_still_starts(project: Project) -> None:
    """A release whose launcher predates --secret (and ships no redact.py) gets the engine's
    helpers again when it starts: a rollback to it works."""
    home = project.root / ".stageflow" / "dev"
    older = os.readlink(home / "current").rsplit("/", 1)[-1]
    helpers = home / "releases" / older / ".stageflow"
    (helpers / "redact.py").unlink()
    launch = helpers / "launch.py"
    launch.write_text(
        "\n".join(ln for ln in launch.read_text().splitlines() if '"--secret"' not in ln) + "\n"
    )
    (project.root / "NEXT.txt").write_text("a later release\n")
    project.commit("a later release")
    project.ok("dev.deploy")
    assert os.readlink(home / "current").rsplit("/", 1)[-1] != older
    project.ok("dev.rollback", "--level", "2")
    assert os.readlink(home / "current").rsplit("/", 1)[-1] == older
    assert (helpers / "redact.py").exists()
