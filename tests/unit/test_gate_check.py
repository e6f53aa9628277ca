"""The check gate's count of findings, from the output of the project's own check commands."""

from __future__ import annotations

from deploy.gates.check import findings

# ruff check's default ("full") output: each finding takes a block of lines, then a footer
FULL = """B008 Do not perform function call `Depends` in argument defaults
  --> app/routers/items.py:13:30
   |
13 | def list_items(db: Session = Depends(get_db)):
   |                              ^^^^^^^^^^^^^^^
   |

F401 [*] `os` imported but unused
 --> app/main.py:1:8
  |
1 | import os
  |        ^^
  |

Found 2 errors.
[*] 1 fixable with the `--fix` option.
""".splitlines()


def test_a_check_that_counts_its_findings_is_believed() -> None:
    assert findings(FULL) == 2


def test_one_finding_per_line_without_a_count() -> None:
    concise = ["app/main.py:1:8: F401 [*] `os` imported but unused", "", "x.py:2:1: E999 bad"]
    assert findings(concise) == 2
    assert findings(["Would reformat: app/main.py", "1 file would be reformatted"]) == 1


def test_a_target_that_wants_a_password_says_where_to_give_it() -> None:
    import psycopg

    from deploy.gates.migrations import database_says

    said = database_says(
        psycopg.OperationalError(
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
            "fe_sendauth: no password supplied"
        )
    )
    assert said.startswith("database: connection failed") and "PGPASSWORD" in said
    other = database_says(psycopg.OperationalError("connection refused\nmore"))
    assert other == "database: connection refused"


def test_the_test_gate_finds_the_exception_pytest_printed() -> None:
    from deploy.gates.tests import _last_raised

    lines = [
        "    def connect(...):",
        "E               psycopg.OperationalError: connection is bad: no such socket",
        "E               \tIs the server running locally?",
        "E               django.db.utils.OperationalError: connection is bad: no such socket",
        "E               \tIs the server running locally?",
        "",
        "ERROR tests/test_a.py::test_x",
    ]
    assert (
        _last_raised(lines) == "django.db.utils.OperationalError: connection is bad: no such socket"
    )
    assert _last_raised(["E       assert 1 == 2", "FAILED t.py::x"]) == ""


def test_a_test_run_that_crashed_before_any_test_names_what_it_raised(tmp_path) -> None:
    # a plugin that cannot load under the runner (a warning turned error by the project's own
    # filterwarnings): the exception, not the last line of its message, is the news
    import sys
    from types import SimpleNamespace

    from deploy.gates import run_command
    from deploy.gates.tests import _judged

    script = (
        "import warnings\nwarnings.simplefilter('error')\n"
        "warnings.warn(DeprecationWarning('The hook uses old-style options\\n at plugin.py:256'))\n"
    )
    argv = [sys.executable, "-c", script]
    done = run_command(argv, cwd=tmp_path, timeout_s=30)
    outcome = _judged(SimpleNamespace(python=sys.executable), argv, done, {})
    assert outcome.status == "failed"
    assert outcome.summary == (
        "test command exited 1: DeprecationWarning: The hook uses old-style options"
    )


def test_a_run_whose_tests_passed_says_what_failed_it(tmp_path) -> None:
    # a plugin's verdict after the tests (coverage under the project's floor), then pytest's line
    import sys
    from types import SimpleNamespace

    from deploy.gates import run_command
    from deploy.gates.tests import _judged

    script = (
        "print('TOTAL    1477   3   99.81%')\n"
        "print('FAIL Required test coverage of 100% not reached. Total coverage: 99.81%')\n"
        "print('90 passed in 66.23s')\nraise SystemExit(1)\n"
    )
    argv = [sys.executable, "-c", script]
    done = run_command(argv, cwd=tmp_path, timeout_s=30)
    outcome = _judged(SimpleNamespace(python=sys.executable), argv, done, {})
    assert outcome.summary == (
        "test command exited 1: FAIL Required test coverage of 100% not reached. "
        "Total coverage: 99.81%"
    )


def test_a_cached_verdict_belongs_to_the_engine_that_gave_it() -> None:
    from deploy.gates.cache import cache_key, engine_fingerprint

    key = cache_key("migrations", {"timeout_s": 9}, ["tree"])
    assert key == cache_key("migrations", {"timeout_s": 9}, ["tree"], engine=engine_fingerprint())
    # another stageflow (an upgrade, a fix) judges the same commit again
    assert key != cache_key("migrations", {"timeout_s": 9}, ["tree"], engine="0" * 64)
