"""The service user's account builder returns an exact argv, and only for a plain user name."""

from pathlib import Path

import pytest

from deploy import demo
from deploy.commands import system
from deploy.errors import ConfigError
from deploy.runtime import native


def test_useradd_builds_a_system_user_without_home_or_login():
    assert system.useradd_system("stageflow") == [
        "useradd",
        "--system",
        "--user-group",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "stageflow",
    ]


@pytest.mark.parametrize("name", ["svc", "_svc", "stage-flow_2", "a" * 32])
def test_plain_user_names_pass(name):
    assert system.checked_user_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-o", "--badname", "Stageflow", "9lives", "a b", "x;id", "x/y", "a" * 33]
)
def test_other_names_are_refused_before_any_command_is_built(name):
    with pytest.raises(ConfigError, match="is not a plain user name"):
        system.useradd_system(name)


def test_make_clean_removes_what_root_puts_outside_the_clone():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert f"SHARED_BINARIES := {native.SHARED_BINARIES}\n" in makefile
    assert f"SHARED_DEMO     := {demo.SHARED_DEMO}\n" in makefile
    assert "rm -rf $(SHARED_BINARIES) $(SHARED_DEMO)" in makefile
