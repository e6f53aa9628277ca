"""What a service's own migration tool prints, read as revisions; the down steps built from them."""

from __future__ import annotations

from deploy import migrations as m
from deploy.engine.rollback_rules import ToolSchemaPlan

DJANGO_PLAN = """\
[X]  contenttypes.0001_initial
[X]  auth.0001_initial
[X]  contenttypes.0002_remove_content_type_name
[X]  auth.0002_alter_permission_name_max_length
[X]  shop.0001_initial
[ ]  shop.0002_order_note
[ ]  billing.0001_initial
"""

DJANGO_PLAIN = """\
auth
 [X] 0001_initial
 [X] 0002_alter_permission_name_max_length
billing
 [ ] 0001_initial
sessions
 (no migrations)
shop
 [X] 0001_initial
 [ ] 0002_order_note
"""


def test_django_plan_gives_each_apps_last_applied_migration_and_zero_for_none():
    assert m.parse_revisions(DJANGO_PLAN) == {
        "contenttypes": "0002_remove_content_type_name",
        "auth": "0002_alter_permission_name_max_length",
        "shop": "0001_initial",
        "billing": "zero",
    }


def test_django_plain_showmigrations_reads_the_same():
    assert m.parse_revisions(DJANGO_PLAIN) == {
        "auth": "0002_alter_permission_name_max_length",
        "billing": "zero",
        "shop": "0001_initial",
    }


def test_alembic_current_is_the_first_word_of_the_last_line_without_head():
    out = "INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.\n3f2a1c9b (head)\n\n"
    assert m.parse_revisions(out) == {"": "3f2a1c9b"}
    assert m.parse_revisions("ae1027a6acf(head)\n") == {"": "ae1027a6acf"}


def test_what_the_app_prints_as_the_tool_imports_it_is_not_a_revision():
    banner = " * Loaded module, <module 'shop.plugins'>\n * Loaded module, <module 'shop.x'>\n"
    assert m.parse_revisions(banner + "396be2782364 (head)\n") == {"": "396be2782364"}
    assert m.parse_revisions(banner) == {"": "base"}  # alembic prints nothing at base
    assert m.parse_revisions("a1b2 (head) (effective head)\n") == {"": "a1b2"}


def test_no_revision_printed_is_base():
    assert m.parse_revisions("") == {"": "base"}
    assert m.parse_revisions(
        "INFO  [alembic.runtime.migration] Will assume transactional DDL.\n"
    ) == {"": "base"}


def test_steps_go_only_where_the_revision_differs():
    assert m.revision_steps({"": "b2"}, {"": "a1"}) == [("", "a1")]
    assert m.revision_steps({"": "a1"}, {"": "a1"}) == []
    assert m.revision_steps({"": "a1"}, {"": "base"}) == [("", "base")]
    now = {"auth": "0002_x", "shop": "0002_order_note", "billing": "0001_initial"}
    wanted = {"auth": "0002_x", "shop": "0001_initial"}
    # billing did not exist for the target release: it goes to zero
    assert m.revision_steps(now, wanted) == [("billing", "zero"), ("shop", "0001_initial")]


def test_fill_puts_target_and_app_into_their_own_words():
    down = ("python", "manage.py", "migrate", "{app}", "{target}", "--noinput")
    assert m.fill(down, target="0001_initial", app="shop") == [
        "python", "manage.py", "migrate", "shop", "0001_initial", "--noinput",
    ]  # fmt: skip
    assert m.fill(("alembic", "downgrade", "{target}"), target="base") == [
        "alembic",
        "downgrade",
        "base",
    ]


def test_describe_revisions_and_pg_options():
    assert m.describe_revisions({"": "a1"}) == "a1"
    assert m.describe_revisions({"shop": "0002_x", "auth": "zero"}) == "auth zero, shop 0002_x"
    assert m.pg_options(lock_timeout_ms=5000, statement_timeout_ms=0) == (
        "-c lock_timeout=5000 -c statement_timeout=0"
    )


def test_a_tool_schema_plan_says_what_it_runs_or_why_not():
    plan = ToolSchemaPlan({"": "b2"}, {"": "a1"}, (("alembic", "downgrade", "a1"),))
    assert plan.revert and not plan.refused
    assert plan.describe() == "alembic downgrade a1"
    same = ToolSchemaPlan({"": "a1"}, {"": "a1"})
    assert not same.revert and same.describe() == "schema already at a1"
    refused = ToolSchemaPlan(refusal="release r1 recorded no schema revision")
    assert refused.refused and not refused.revert
    assert ToolSchemaPlan(kind="none").describe() == "schema not managed (migrations kind none)"


def test_a_change_of_one_app_names_that_app_alone() -> None:
    from deploy.env_migrations import SchemaChange

    before = {"auth": "0012_x", "polls": "0001_initial", "sessions": "0001_initial"}
    after = {**before, "polls": "0002_question_closed"}
    assert SchemaChange(before, after).describe() == "polls 0001_initial -> 0002_question_closed"
    first = SchemaChange({}, {"polls": "0001_initial"}).describe()
    assert first == "polls zero -> 0001_initial"
    assert SchemaChange(after, after).describe().startswith("unchanged at auth 0012_x")
    assert SchemaChange({m.SINGLE: "a1"}, {m.SINGLE: "b2"}).describe() == "a1 -> b2"
