"""Rollback's pure decisions: previous good release, schema plan, backup choice, request checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.engine.rollback_rules import (
    backup_for,
    check_request,
    interrupted,
    previous_good,
    schema_plan,
)
from deploy.errors import GuardRefused, UsageError
from deploy.migrations import MigrationFile
from deploy.policy.actors import Actor


def entry(release, *, kind="deploy", status="success", previous=None, backup=None, id=None):
    return {
        "id": id or f"h-{release}-{kind}",
        "release": release,
        "kind": kind,
        "status": status,
        "previous": previous,
        "backup": backup,
    }


def mfile(version, *, phase=None, down=True):
    up = Path(f"{version:04d}_m{version}.up.sql")
    return MigrationFile(
        version=version,
        name=f"m{version}",
        up_path=up,
        down_path=Path(f"{version:04d}_m{version}.down.sql") if down else None,
        checksum="0" * 64,
        transactional=True,
        phase=phase,
    )


ALL = frozenset({"A", "B", "C", "D"})


def test_previous_good_is_the_success_before_the_current_one():
    entries = [entry("A"), entry("B"), entry("C")]
    assert previous_good(entries, current="C", existing=ALL) == "B"


def test_previous_good_skips_failed_rolled_back_and_pruned_releases():
    entries = [
        entry("A"),
        entry("B"),
        entry("D", status="rolled-back"),
        entry("C", status="failed"),
        entry("C"),
    ]
    assert previous_good(entries, current="C", existing=ALL - {"B"}) == "A"


def test_previous_good_never_returns_a_release_rolled_back_from():
    entries = [entry("A"), entry("B"), entry("A", kind="rollback-2", previous="B"), entry("C")]
    assert previous_good(entries, current="C", existing=ALL) == "A"
    # and from A (reached by the rollback) there is nothing good left before it
    assert previous_good(entries[:3], current="A", existing=ALL) is None


def test_previous_good_when_verify_failed_and_the_new_release_kept_serving():
    entries = [entry("A"), entry("B", status="failed")]
    assert previous_good(entries, current="B", existing=ALL) == "A"


def test_previous_good_ignores_entries_after_the_current_release():
    entries = [entry("A"), entry("B"), entry("C", status="failed")]
    assert previous_good(entries, current="B", existing=ALL) == "A"


def test_expand_only_keeps_the_schema():
    files = [mfile(1), mfile(2), mfile(3, phase="expand"), mfile(4, phase="expand", down=False)]
    plan = schema_plan(files, [1, 2, 3, 4], target_version=2)
    assert plan.since == (3, 4) and plan.expand_only and not plan.revert and not plan.refused


def test_a_contract_migration_needs_every_down_file():
    files = [mfile(1), mfile(2, phase="expand"), mfile(3, phase="contract")]
    plan = schema_plan(files, [1, 2, 3], target_version=1)
    assert plan.revert and not plan.refused and "3, 2" in plan.describe()
    files = [mfile(1), mfile(2, phase="expand"), mfile(3, phase="contract", down=False)]
    plan = schema_plan(files, [1, 2, 3], target_version=1)
    assert plan.refused and plan.missing_down == ("0003_m3.up.sql",)


def test_an_applied_version_without_a_file_is_not_expand_and_refuses():
    plan = schema_plan([mfile(1)], [1, 2], target_version=1)
    assert plan.refused and "version 2" in plan.missing_down[0]


def test_nothing_applied_since_means_nothing_to_do():
    plan = schema_plan([mfile(1), mfile(2)], [1, 2], target_version=2)
    assert plan.since == () and not plan.revert


def test_backup_for_prefers_the_history_entry_of_the_current_deploy():
    backups = [
        {"id": "b1", "release": "A"},
        {"id": "b2", "release": "B"},
        {"id": "b3", "release": "B"},
    ]
    entries = [entry("A"), entry("B", backup="b1"), entry("C", backup="b2")]
    assert backup_for(entries, backups, current="C")["id"] == "b2"
    # no entry names one: the newest taken while another release served
    assert backup_for([entry("C")], backups, current="C")["id"] == "b3"
    assert backup_for([entry("B")], backups, current="B")["id"] == "b1"
    assert backup_for([], [], current="B") is None


def test_after_a_restore_level3_restores_the_same_backup_again():
    backups = [{"id": "b0", "release": ""}, {"id": "b1", "release": "A"}]
    # A's first deploy came with a backup of an empty database; then B; then a restore to A
    entries = [
        entry("A", backup="b0"),
        entry("B", backup="b1"),
        entry("A", kind="rollback-3", backup="b1"),
    ]
    assert backup_for(entries, backups, current="A")["id"] == "b1"


def test_interrupted_is_only_a_running_rollback_at_the_end():
    assert (
        interrupted([entry("A"), entry("A", kind="rollback-2", status="running")])["release"] == "A"
    )
    assert interrupted([entry("A", kind="deploy", status="running")]) is None
    assert interrupted([entry("A", kind="rollback-2", status="running"), entry("B")]) is None
    assert interrupted([]) is None


class Env:
    def __init__(self, name, environment):
        self.name, self.environment = name, environment


HUMAN, AGENT = Actor("alice", "human"), Actor("bot", "agent")
PROD, STAGING = Env("prod", "production"), Env("staging", "staging")


def check(**kw):
    args = {
        "level": 1,
        "env": STAGING,
        "actor": HUMAN,
        "yes": False,
        "dry_run": False,
        "reset_data": False,
        "to": None,
        "backup_id": None,
        **kw,
    }
    check_request(**args)


def test_request_checks():
    check()
    check(reset_data=True)
    check(level=2, to="A")
    check(level=3, backup_id="x")
    check(env=PROD, actor=AGENT, dry_run=True)  # a plan changes nothing
    with pytest.raises(UsageError, match="not a rollback level"):
        check(level=0)
    with pytest.raises(UsageError, match="not allowed on prod"):
        check(env=PROD, reset_data=True)
    with pytest.raises(UsageError, match="--level 1"):
        check(level=2, reset_data=True)
    with pytest.raises(UsageError, match="--to"):
        check(level=3, to="A")
    with pytest.raises(UsageError, match="--backup"):
        check(level=2, backup_id="x")
    with pytest.raises(GuardRefused, match="automation"):
        check(env=PROD, actor=AGENT, yes=True)


def test_prod_confirmation_wants_the_environment_name():
    from deploy.engine.rollback_rules import confirm_prod

    confirm_prod(STAGING, actor=AGENT, yes=False, confirm=None)  # only prod asks
    confirm_prod(PROD, actor=HUMAN, yes=True, confirm=None)
    confirm_prod(PROD, actor=HUMAN, yes=False, confirm=lambda _prompt: "prod\n")
    for answer in ("", "staging", "yes"):
        with pytest.raises(GuardRefused, match="not confirmed"):
            confirm_prod(PROD, actor=HUMAN, yes=False, confirm=lambda _p, a=answer: a)

    def eof(_prompt):
        raise EOFError

    with pytest.raises(GuardRefused, match="not confirmed"):
        confirm_prod(PROD, actor=HUMAN, yes=False, confirm=eof)
    with pytest.raises(GuardRefused, match="not confirmed"):
        confirm_prod(PROD, actor=AGENT, yes=True, confirm=lambda _p: "")  # --yes is for humans


def test_a_backup_taken_before_the_first_release_is_never_chosen():
    # A's first deploy backed up an empty database (no release served it); B's deploy backed up
    # A's data; a level 2 went back to A: level 3 restores A's data, the only backup A can take
    backups = [{"id": "b0", "release": ""}, {"id": "b1", "release": "A"}]
    entries = [
        entry("A", backup="b0"),
        entry("B", backup="b1"),
        entry("A", kind="rollback-2", previous="B"),
    ]
    assert backup_for(entries, backups, current="A")["id"] == "b1"
    # right after the first deploy there is none to restore
    assert backup_for([entry("A", backup="b0")], backups[:1], current="A") is None
