"""Anonymization rules without I/O: parsing, coverage of a schema, and the SQL they become."""

from __future__ import annotations

import tomllib

import pytest

from deploy import anonymize
from deploy.anonymize import Column, Rules
from deploy.errors import ConfigError, GuardRefused
from tests import support

NOTES = [
    Column("notes", "id", "bigint", False),
    Column("notes", "body", "text", False),
    Column("notes", "created_at", "timestamp with time zone", False),
    Column("notes", "author", "text", True),
    Column("stageflow_migrations", "applied_by", "text", False),
]


def test_the_shipped_policy_anonymizes_notes_and_forbids_raw_copies():
    policy = tomllib.loads((support.REPO / "stageflow.toml").read_text())
    rules = anonymize.load_rules(policy)
    assert rules.allow_raw is False
    assert rules.tables == {"notes": {"body": "fake", "author": "hash"}}
    assert anonymize.problems(rules, NOTES) == []


def test_no_section_means_no_rule_so_every_text_column_refuses_and_no_raw_copies():
    rules = anonymize.load_rules({})
    assert rules.tables == {} and rules.allow_raw is False
    assert anonymize.load_rules({"anonymize": {"allow_raw": True}}).allow_raw is True
    found = anonymize.problems(rules, NOTES)
    assert [f.split(" ")[0] for f in found] == ["notes.author", "notes.body"]


SHOP = [
    Column("customers", "id", "bigint", False),
    Column("customers", "email", "character varying", False, 200),
    Column("customers", "profile", "jsonb", True),
    Column("orders", "id", "bigint", False),
    Column("orders", "note", "text", True),
    Column("orders", "total", "numeric", False),
]


def test_rules_name_any_service_tables_and_cover_every_table_without_one():
    rules = Rules(tables={"customers": {"email": "hash", "profile": "null"}})
    assert anonymize.problems(rules, SHOP) == [
        'orders.note (text) has no rule: add note = "hash", "fake", "null" or "keep"'
        " to [anonymize.orders]"
    ]
    rules = Rules(tables={**rules.tables, "orders": {"note": "fake"}})
    assert anonymize.problems(rules, SHOP) == []


def test_a_rule_may_name_what_only_the_other_side_has_but_a_typo_is_refused():
    new_column = Column("orders", "gift_message", "text", True)
    rules = Rules(
        tables={
            "customers": {"email": "hash", "profile": "null"},
            "orders": {"note": "fake", "gift_message": "fake"},
        }
    )
    # the source lacks the column the target's release added: known on the other side
    assert anonymize.problems(rules, SHOP, known=[*SHOP, new_column]) == []
    assert anonymize.problems(rules, SHOP) == ["[anonymize.orders] gift_message: no such column"]
    typo = Rules(tables={**rules.tables, "custmers": {"email": "hash"}})
    with pytest.raises(GuardRefused, match=r"custmers\] names a table the database does not"):
        anonymize.require_coverage(typo, SHOP, known=[*SHOP, new_column])


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"allow_raw": "yes"}, "allow_raw must be true or false"),
        ({"notes": {"body": "scramble"}}, "is not a method"),
        ({"notes": {"Body; drop": "hash"}}, "not a plain column name"),
        ({"Notes": {"body": "hash"}}, "not a plain lowercase table name"),
        ({"stray": 3}, "unknown key 'stray'"),
    ],
)
def test_bad_rules_are_config_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        anonymize.load_rules({"anonymize": section})


def test_an_unruled_text_column_is_a_problem_but_the_ledger_and_non_text_are_not():
    rules = Rules(tables={"notes": {"body": "fake"}})
    found = anonymize.problems(rules, NOTES)
    assert len(found) == 1 and found[0].startswith("notes.author (text) has no rule")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"notes": {"body": "fake", "author": "hash", "email": "hash"}}, "email: no such column"),
        ({"notes": {"body": "fake", "author": "hash"}, "users": {"x": "null"}}, "the database does not have"),
        ({"notes": {"body": "null", "author": "hash"}}, "body is NOT NULL"),
        ({"notes": {"body": "fake", "author": "hash", "created_at": "fake"}}, "works on text columns only"),
    ],
)  # fmt: skip
def test_rules_that_do_not_fit_the_schema_refuse(rules, message):
    with pytest.raises(GuardRefused, match=message):
        anonymize.require_coverage(Rules(tables=rules), NOTES)


def test_keep_declares_a_column_safe_and_changes_nothing():
    rules = Rules(tables={"notes": {"body": "keep", "author": "keep"}})
    assert anonymize.problems(rules, NOTES) == []
    assert rules.changing() == []
    cols = {c.name: c for c in NOTES if c.table == "notes"}
    assert anonymize.update_statement("notes", rules.tables["notes"], cols) is None


def test_the_update_is_one_statement_with_the_salt_as_a_parameter():
    cols = {
        "body": Column("notes", "body", "text", False),
        "author": Column("notes", "author", "character varying", True, 40),
        "note": Column("notes", "note", "text", True),
    }
    stmt = anonymize.update_statement(
        "notes", {"body": "fake", "author": "hash", "note": "null"}, cols
    ).as_string(None)
    assert stmt.startswith('UPDATE "notes" SET "author" = left(\'anon:\'')
    assert ", 40)" in stmt  # varchar(40) gets a token that fits
    assert "pg_temp.stageflow_fake(sha256(convert_to(%(salt)s" in stmt
    assert '"note" = NULL' in stmt
    assert stmt.count("%(salt)s") == 2
