"""A database built beside an environment's own and swapped into its place only once complete.

A refresh and a data reset both replace an environment's database. Building the replacement under
another name first means a failure at any point leaves the environment's data and its service as
they were: the swap is one transaction, and until it commits nothing the service reads has changed.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from deploy.config import EnvConfig
from deploy.errors import ServiceError
from deploy.runtime.native import NativeServices

RETIRED_SUFFIX = "_retired"
SWAP_ATTEMPTS = 50


def admin(svc: NativeServices, dbname: str = "postgres") -> Any:
    """A superuser session over the servers' private socket, autocommit."""
    import psycopg

    return psycopg.connect(svc.admin_conninfo(dbname), autocommit=True, connect_timeout=10)


def drop(svc: NativeServices, dbname: str) -> None:
    from psycopg import sql

    with admin(svc) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )


def create(svc: NativeServices, dbname: str) -> None:
    """An empty database owned by the environment's app role (what a deploy migrates as)."""
    from psycopg import sql

    with admin(svc) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(svc.env.database.user)
            )
        )


def exists(svc: NativeServices, dbname: str) -> bool:
    with admin(svc) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
    return row is not None


def on_database(env: EnvConfig, dbname: str) -> EnvConfig:
    """env with its database swapped for dbname: the same server, role and password.

    What runs against a scratch database (migrations, the service's seed command) gets its
    settings from this, so it reaches the scratch copy and never the live one.
    """
    parts = urlsplit(env.database_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + quote(dbname), parts.query, ""))
    values = tuple((k, url if k == "DATABASE_URL" else v) for k, v in env.values)
    return replace(
        env, database_url=url, database=replace(env.database, name=dbname), values=values
    )


def swap(svc: NativeServices, live: str, scratch: str) -> None:
    """Put scratch in live's place in one transaction; live is kept aside until that commits.

    New sessions to live are refused first, then the open ones (the service's) are ended: a
    database cannot be renamed while anyone is connected. A service that reconnects on its next
    query lands on the new database, so the service need not stop.
    """
    import psycopg
    from psycopg import sql

    retired = live + RETIRED_SUFFIX
    ident = sql.Identifier
    with admin(svc) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(retired)))
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident(live)))
        try:
            for _ in range(SWAP_ATTEMPTS):
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (live,),
                )
                try:
                    with conn.transaction():
                        conn.execute(
                            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                                ident(live), ident(retired)
                            )
                        )
                        conn.execute(
                            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                                ident(scratch), ident(live)
                            )
                        )
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.05)  # a session ended by terminate may still be leaving
            else:
                raise ServiceError(
                    f"{live} kept getting new sessions: could not swap it",
                    hint="stop whatever connects to it and run the command again",
                )
        finally:
            # whichever database holds the name takes sessions (after a failure: the untouched one)
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (live,)).fetchone():
                conn.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident(live))
                )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(retired)))
