"""staging-only tasks: init, seed, refresh (filled in by the staging work)."""

TASKS: list = []
