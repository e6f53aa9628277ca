"""What a refused release says when the service's code could not load in gunicorn's workers, and
what `stageflow init` tells an operator to run before the first deploy."""

from __future__ import annotations

from dataclasses import replace

from deploy.cli import NEXT_STEPS, next_steps
from deploy.config import load_project
from deploy.releases import (
    boot_hint,
    command_hint,
    not_ready_hint,
    one_line,
    raised_in,
    settings_hint,
)
from tests import support

WORKER_LOG = """\
[2026-12-02 04:42:48 +0000] [23641] [INFO] Booting worker with pid: 23641
Traceback (most recent call last):
  File "/srv/app/.venv/lib/python3.11/site-packages/gunicorn/arbiter.py", line 752, in spawn_worker
    worker.init_process()
Exception: the first one, handled
During handling of the above exception, another exception occurred:
Traceback (most recent call last):
  File "/srv/app/src/ledgerly/__init__.py", line 20, in create_app
    app.config["SECRET_KEY"] = os.environ["LEDGERLY_SECRET_KEY"]
                               ~~~~~~~~~~^^^^^^^^^^^^^^^^^^^^^^^
  File "<frozen os>", line 679, in __getitem__
KeyError: 'LEDGERLY_SECRET_KEY'
'LEDGERLY_SECRET_KEY'
[2026-12-02 04:42:48 +0000] [23642] [INFO] Worker exiting (pid: 23642)
[2026-12-02 04:42:49 +0000] [23640] [ERROR] Reason: Worker failed to boot.
""".splitlines()


def test_the_line_is_the_exception_the_last_traceback_ends_with() -> None:
    assert raised_in(WORKER_LOG) == "KeyError: 'LEDGERLY_SECRET_KEY'"
    django = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
              "django.core.exceptions.ImproperlyConfigured: Set the SECRET_KEY variable"]  # fmt: skip
    assert raised_in(django) == django[-1]
    assert raised_in(WORKER_LOG[:1] + WORKER_LOG[-2:]) == ""  # no traceback: gunicorn's lines
    long = ["Traceback (most recent call last):", "ValueError: " + "x" * 5000]
    assert len(raised_in(long)) < 300


def test_the_hint_says_how_to_give_the_environment_the_setting_its_code_reads() -> None:
    proj = load_project(support.REPO, process_env={})
    env = proj.env("dev")
    svc = replace(proj.service, env_keys=("SHOP_MODE",), secret_keys=("SHOP_TOKEN",))
    log = "/srv/logs/app.log"
    assert "`inv dev.secrets --generate`" in boot_hint("KeyError: 'SHOP_TOKEN'", env, svc, log)
    assert "set it in env/dev.env" in boot_hint("KeyError: 'SHOP_MODE'", env, svc, log)
    other = boot_hint("KeyError: 'SHOP_OTHER'", env, svc, log)
    assert "declare it in [service.env] keys or secrets" in other
    assert boot_hint("ValueError: bad", env, svc, log).startswith(f"see {log}")
    assert boot_hint("KeyError: 'lowercase'", env, svc, log).startswith(f"see {log}")
    # a service writing its own log file beside its code (`logs/` in its folder, say)
    for raised in (
        "PermissionError: [Errno 13] Permission denied: 'logs'",
        "OSError: [Errno 30] Read-only file system: 'app.db'",
    ):
        hint = boot_hint(raised, env, svc, log)
        assert hint.startswith("the release is read-only to the service") and log in hint
        assert "STAGEFLOW_FILES_DIR" in hint
        # a migration or seed command that writes into the release is told the same
        assert command_hint(raised, env, svc) == hint.partition(" and log to ")[0]
    # a database library asking for a driver the requirements lack
    hint = boot_hint("ModuleNotFoundError: No module named 'psycopg'", env, svc, log)
    assert "through psycopg, which the service's requirements do not install" in hint
    assert "add psycopg[binary] to them" in hint and log in hint
    other = boot_hint("ModuleNotFoundError: No module named 'psycopg_pool'", env, svc, log)
    assert other.startswith(f"see {log}")


def test_init_tells_to_generate_dev_secrets_when_the_code_reads_some() -> None:
    assert next_steps(()) == NEXT_STEPS
    steps = next_steps(("SECRET_KEY", "API_TOKEN"))
    # before up: the servers start with the passwords the code's settings will carry
    assert steps.index(next(s for s in steps if "dev.secrets --generate" in s)) == 1
    assert "SECRET_KEY, API_TOKEN" in steps[1] and steps[2].startswith("inv dev.up")
    assert steps[3].startswith("inv dev.deploy")


def test_a_ready_path_answering_400_points_at_the_allowed_hosts() -> None:
    assert "ALLOWED_HOSTS" in not_ready_hint("400 <h1>Bad Request (400)</h1>", "/healthz/")
    assert "has no GET /healthz/" in not_ready_hint("404 not found", "/healthz/")
    assert "ALLOWED_HOSTS" not in not_ready_hint("500 boom", "/healthz/")


def test_a_ready_answer_in_markup_is_said_in_one_line() -> None:
    page = '400 \n<!doctype html>\n<html lang="en">\n<head>\n  <title>Bad Request (400)</title>\n'
    page += "</head>\n<body>\n  <h1>Bad Request (400)</h1><p></p>\n</body>\n</html>"
    assert one_line(page) == "400 Bad Request (400) Bad Request (400)"
    assert len(one_line("500 " + "x" * 10_000)) < 200


# what pydantic-settings prints when a settings class cannot load: each field on a line of its
# own, what is wrong on the next, the input in brackets (for a missing field, every value it got)
PYDANTIC_LOG = """\
Traceback (most recent call last):
  File "/srv/app/app/core/config.py", line 120, in <module>
    settings = Settings()  # type: ignore
pydantic_core._pydantic_core.ValidationError: 2 validation errors for Settings
ENVIRONMENT
  Input should be 'local', 'staging' or 'production' [type=literal_error, input_value='development', input_type=str]
    For further information visit https://errors.pydantic.dev/2.14/v/literal_error
project_name
  Field required [type=missing, input_value={'SECRET_KEY': 'k-s3cret-value'}, input_type=dict]
    For further information visit https://errors.pydantic.dev/2.14/v/missing
""".splitlines()


def test_a_settings_class_that_cannot_load_names_each_field_and_never_its_input() -> None:
    raised = raised_in(PYDANTIC_LOG)
    assert raised == (
        "ValidationError: 2 validation errors for Settings: ENVIRONMENT: Input should be "
        "'local', 'staging' or 'production'; project_name: Field required"
    )
    assert "s3cret" not in raised and "input_value" not in raised


def test_the_hint_for_a_settings_class_says_which_setting_to_give_and_how() -> None:
    proj = load_project(support.REPO, process_env={})
    env = proj.env("dev")
    svc = replace(proj.service, env_keys=("PROJECT_NAME",), env_from=())
    log = "/srv/logs/app.log"
    raised = raised_in(PYDANTIC_LOG)
    # the first required field the environment lacks: pydantic matches it without case
    assert boot_hint(raised, env, svc, log) == (
        "PROJECT_NAME is one of the service's settings: set it in env/dev.env"
    )
    assert settings_hint(raised, env, replace(svc, env_keys=())).startswith(
        "the service reads PROJECT_NAME from its environment: declare it"
    )
    # ENVIRONMENT, which stageflow feeds, in values of the service's own
    only_environment = raised.replace("; project_name: Field required", "")
    hint = settings_hint(only_environment, env, svc)
    assert hint.startswith("stageflow feeds ENVIRONMENT=development, which the service does not")
    assert 'ENVIRONMENT = "APP_ENVIRONMENT"' in hint
    mapped = replace(svc, env_from=(("ENVIRONMENT", "APP_ENVIRONMENT"),))
    assert settings_hint(only_environment, env, mapped) == ""
    assert settings_hint("ValueError: bad", env, svc) == ""


def test_a_process_s_failure_is_its_exception_without_the_traceback_s_markers() -> None:
    from deploy.releases import process_failure

    log = [
        "Traceback (most recent call last):",
        '  File "/srv/venv/lib/python3.11/site-packages/kombu/transport/redis.py", line 271',
        "    class PrefixedRedisPipeline(GlobalKeyPrefixMixin, redis.client.Pipeline):",
        "                                                      ^^^^^^^^^^^",
        "AttributeError: 'NoneType' object has no attribute 'client'",
    ]
    assert process_failure(log) == "AttributeError: 'NoneType' object has no attribute 'client'"
    printed = ["starting", "    ^^^^", "cannot reach the queue", "   ~~~^^^  "]
    assert process_failure(printed) == "starting | cannot reach the queue"
    assert process_failure([]) == "no output"


def test_a_settings_library_s_missing_variable_gets_the_same_hint() -> None:
    proj = load_project(support.REPO, process_env={})
    env = proj.env("staging")
    svc = replace(proj.service, env_keys=("ALLOWED_HOSTS",), secret_keys=("SECRET_KEY",))
    log = "/srv/logs/app.log"
    django_environ = (
        "django.core.exceptions.ImproperlyConfigured: Set the SECRET_KEY environment variable"
    )
    assert "`inv staging.secrets --generate`" in boot_hint(django_environ, env, svc, log)
    environs = 'environs.EnvError: Environment variable "ALLOWED_HOSTS" not set'
    assert "set it in env/staging.env" in boot_hint(environs, env, svc, log)
    decouple = (
        "decouple.UndefinedValueError: MAIL_HOST not found. Declare it as envvar or define a "
        "default value."
    )
    assert "declare it in [service.env] keys or secrets" in boot_hint(decouple, env, svc, log)
