"""argv builders for the host's accounts: the system user PostgreSQL and Redis run as under root."""

from __future__ import annotations

import re

from deploy.errors import ConfigError

# useradd's own rule, shortened to what a system account needs; a leading letter or `_` also
# keeps a name from being read as an option
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def checked_user_name(name: str) -> str:
    """name, when it is a plain system user name; ConfigError otherwise."""
    if not _USER_NAME.match(name):
        raise ConfigError(
            f"service user name {name!r} is not a plain user name",
            hint="set [project] service_user in stageflow.toml to lowercase letters, digits, "
            "'-' or '_' (at most 32, starting with a letter)",
        )
    return name


def useradd_system(name: str) -> list[str]:
    """A system user with its own group, no home and no login shell."""
    return [
        "useradd",
        "--system",
        "--user-group",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        checked_user_name(name),
    ]
