"""What the operator reads: table cells print as written, whatever brackets they hold."""

from __future__ import annotations

import pytest

from deploy import output


def test_a_cell_with_brackets_prints_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_table(
        "secrets",
        ["key", "meaning"],
        [("SECRET_KEY", "the service's own secret ([service.env] secrets)"), ("ref", "fix[1]")],
    )
    out = capsys.readouterr().out
    assert "([service.env] secrets)" in out and "fix[1]" in out
