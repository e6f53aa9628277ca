"""Tasks of every environment for watching and recording: monitor, incident (filled in later)."""

TASKS: list = []
