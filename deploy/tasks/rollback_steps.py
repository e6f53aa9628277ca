"""Rollback-side tasks of an environment namespace (filled in by the rollback work)."""

TASKS: list = []
