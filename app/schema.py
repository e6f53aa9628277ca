"""The schema version this code tree expects: the highest NNNN of its migrations/*.up.sql files."""

# File names follow the migration engine's rule, so both count the same versions.

from __future__ import annotations

import re
from pathlib import Path

UP_FILE = re.compile(r"^(?P<version>\d{4,})_[a-z0-9][a-z0-9_]*\.up\.sql$")
LEDGER_TABLE = "stageflow_migrations"


def migration_versions(migrations_dir: Path) -> list[int]:
    """Versions of the up files in migrations_dir, ascending (empty when the folder is absent)."""
    if not migrations_dir.is_dir():
        return []
    found = (UP_FILE.match(p.name) for p in migrations_dir.iterdir())
    return sorted(int(m["version"]) for m in found if m)


def expected_schema_version(migrations_dir: Path) -> int:
    """The highest version shipped in migrations_dir; 0 when it ships none."""
    versions = migration_versions(migrations_dir)
    return versions[-1] if versions else 0
