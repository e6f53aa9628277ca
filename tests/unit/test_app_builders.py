"""The release, service and server builders return exact argv lists and config text."""

from pathlib import Path

import pytest

from deploy.commands import release as app
from deploy.commands import services
from deploy.errors import ConfigError

BIN = Path("/opt/pg/bin")


def test_git_builders():
    assert app.rev_parse("v1.2.0") == ["git", "rev-parse", "--verify", "--quiet", "v1.2.0^{commit}"]
    assert app.archive("abc123", "/tmp/x.tar") == [
        "git",
        "archive",
        "--format=tar",
        "-o",
        "/tmp/x.tar",
        "abc123",
    ]
    assert app.extract("/tmp/x.tar", "/srv/r") == ["tar", "-xf", "/tmp/x.tar", "-C", "/srv/r"]


def test_venv_builders():
    assert app.venv_create("/usr/bin/python3", "/v") == ["/usr/bin/python3", "-m", "venv", "/v"]
    assert app.venv_install("/v", "/r/app/requirements.lock") == [
        "/v/bin/python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        "/r/app/requirements.lock",
    ]


def test_pip_builders():
    assert app.pip_install("/v", ["/r/web", "gunicorn==23.0.0"])[-2:] == [
        "/r/web",
        "gunicorn==23.0.0",
    ]
    assert app.has_module("/v", "gunicorn") == ["/v/bin/python", "-c", "import gunicorn"]


def test_listener_runs_from_the_helpers_shipped_into_the_release():
    argv = app.listener(
        "/r/.venv/bin/python",
        "/r/.stageflow",
        port=8102,
        control="/h/run/l.sock",
        pidfile="/h/run/l.pid",
    )
    assert argv[:2] == ["/r/.venv/bin/python", "/r/.stageflow/listener.py"]
    assert argv[argv.index("--port") + 1] == "8102"
    assert argv[argv.index("--control") + 1] == "/h/run/l.sock"
    assert argv[argv.index("--pidfile") + 1] == "/h/run/l.pid"


LAUNCH = app.Launch(
    control="/h/run/l.sock",
    settings="/h/shared/service.json",
    pidfile="/h/run/app-R.pid",
    logfile="/h/logs/app.log",
    ready_dir="/h/run/ready-R",
    metrics_dir="/h/run/metrics/R",
    release="R",
)


def _gunicorn(**kw):
    args = dict(
        app="svc:app",
        service_dir="/r/web",
        worker_class="sync",
        ready_path="/ready",
        asgi=False,
        workers=3,
    )
    return app.gunicorn("/r", LAUNCH, **{**args, **kw})


def test_gunicorn_runs_the_contracts_app_through_launch():
    argv = _gunicorn()
    cut = argv.index("--")
    assert argv[:2] == ["/r/.venv/bin/python", "/r/.stageflow/launch.py"]
    launch = argv[2:cut]
    assert launch == [
        "--control",
        "/h/run/l.sock",
        "--settings",
        "/h/shared/service.json",
        "--ready-dir",
        "/h/run/ready-R",
        "--ready-path",
        "/ready",
        "--release",
        "R",
        "--metrics-dir",
        "/h/run/metrics/R",
        # the launcher daemonizes the master and writes its pid file, so that the master itself
        # may run as the service user (which cannot write run/)
        "--detach",
        "--pidfile",
        "/h/run/app-R.pid",
        "--log",
        "/h/logs/app.log",
    ]
    assert argv[cut + 1 : cut + 4] == ["/r/.venv/bin/python", "-m", "gunicorn"]
    assert argv[argv.index("--bind") + 1] == "fd://{fd}"  # launch.py swaps in the fd number
    assert argv[argv.index("--workers") + 1] == "3"
    assert argv[argv.index("--worker-class") + 1] == "sync"
    assert argv[argv.index("--pid") + 1] == "/h/run/app-R.pid"
    assert argv[argv.index("--chdir") + 1] == "/r/web"
    # the release's own code (and its src layout) before the copy a pyproject installed
    assert argv[argv.index("--pythonpath") + 1] == "/r/web,/r/web/src"
    assert argv[argv.index("--config") + 1] == "/r/.stageflow/gunicorn_conf.py"
    assert "--daemon" not in argv and argv[-1] == "svc:app"
    assert not any("deploy/runtime" in a for a in argv)


def test_an_asgi_service_gets_its_worker_class_and_the_asgi_flag():
    argv = _gunicorn(worker_class="uvicorn.workers.UvicornWorker", asgi=True, app="svc:api")
    cut = argv.index("--")
    assert "--asgi" in argv[:cut]
    assert argv[argv.index("--worker-class") + 1] == "uvicorn.workers.UvicornWorker"
    assert argv[-1] == "svc:api"


def test_the_helpers_shipped_into_a_release_exist_in_the_engine():
    from deploy import releases

    for name in app.HELPERS:
        assert releases.helper_source(name).is_file(), name


def test_postgres_builders():
    assert services.initdb(BIN, "/d") == [
        "/opt/pg/bin/initdb",
        "-D",
        "/d",
        "-U",
        "postgres",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-instructions",
    ]
    assert services.pg_start(BIN, "/d", "/l.log") == [
        "/opt/pg/bin/pg_ctl",
        "-D",
        "/d",
        "-l",
        "/l.log",
        "-w",
        "-t",
        "30",
        "-s",
        "start",
    ]
    assert services.pg_stop(BIN, "/d", mode="immediate", timeout_s=60) == [
        "/opt/pg/bin/pg_ctl",
        "-D",
        "/d",
        "-m",
        "immediate",
        "-w",
        "-t",
        "60",
        "-s",
        "stop",
    ]


def test_pg_hba_keeps_the_superuser_off_tcp():
    text = services.pg_hba(app_user="app_prod", database="stageflow_prod", password=True)
    assert "host all postgres 127.0.0.1/32 reject" in text
    assert "host all app_prod 127.0.0.1/32 scram-sha-256" in text
    assert "trust" not in text.replace("local all postgres trust", "")
    dev = services.pg_hba(app_user="app_dev", database="stageflow_dev", password=False)
    assert "host all app_dev 127.0.0.1/32 trust" in dev


def test_redis_conf_binds_loopback_and_holds_the_password_only_when_set():
    conf = services.redis_conf(
        port=6380, data_dir="/d", pidfile="/p", logfile="/l", password="pw-123"
    )
    assert "port 6380\nbind 127.0.0.1\n" in conf and "requirepass pw-123" in conf
    assert "{config-file}" in conf  # the process title names the config: scans find it
    assert "\nrequirepass " not in services.redis_conf(
        port=1, data_dir="/d", pidfile="/p", logfile="/l", password=None
    )
    assert services.redis_start(Path("/r/redis-server"), "/c") == ["/r/redis-server", "/c"]


def test_a_service_command_goes_through_launch_with_only_paths_and_plain_names():
    argv = app.service_command(
        "/r", ["alembic", "upgrade", "head"], settings="/h/shared/command-1.json", cwd="/r/web",
        env=[("PGOPTIONS", "-c lock_timeout=5000")],
    )  # fmt: skip
    assert argv == [
        "/r/.venv/bin/python", "/r/.stageflow/launch.py",
        "--settings", "/h/shared/command-1.json", "--cwd", "/r/web", "--venv", "/r/.venv",
        "--env", "PYTHONPATH=/r/web:/r/web/src", "--env", "PGOPTIONS=-c lock_timeout=5000",
        "--", "alembic", "upgrade", "head",
    ]  # fmt: skip


def test_a_service_process_is_detached_with_its_pidfile_and_log():
    argv = app.service_process(
        "/r", ["python", "-m", "shop.worker"], settings="/h/shared/service.json", cwd="/r",
        pidfile="/h/run/proc-worker-R.pid", log="/h/shared/logs/worker.log",
        env=[("STAGEFLOW_RELEASE", "R")],
    )  # fmt: skip
    cut = argv.index("--")
    assert argv[cut:] == ["--", "python", "-m", "shop.worker"]
    assert argv[cut - 5 : cut] == [
        "--detach", "--pidfile", "/h/run/proc-worker-R.pid", "--log", "/h/shared/logs/worker.log",
    ]  # fmt: skip
    assert "--control" not in argv


def test_the_service_user_and_its_files_dir_go_to_the_launcher_only():
    argv = _gunicorn(user="stageflow", files="/h/shared/files")
    cut = argv.index("--")
    assert argv[cut - 4 : cut] == ["--user", "stageflow", "--files", "/h/shared/files"]
    assert "--user" not in argv[cut:]  # gunicorn's own --user would leave the master root
    cmd = app.service_command(
        "/r", ["python", "manage.py", "collectstatic"], settings="/s", cwd="/r",
        user="stageflow", files="/h/shared/files", build_tree="/h/releases/R.partial",
    )  # fmt: skip
    cut = cmd.index("--")
    assert cmd[cut - 6 : cut] == [
        "--user", "stageflow", "--files", "/h/shared/files", "--build-tree", "/h/releases/R.partial",
    ]  # fmt: skip
    proc = app.service_process(
        "/r", ["python", "-m", "w"], settings="/s", cwd="/r", pidfile="/p", log="/l",
        user="stageflow",
    )  # fmt: skip
    assert proc[proc.index("--user") + 1] == "stageflow"


def test_a_service_user_that_is_no_plain_name_is_refused():
    with pytest.raises(ConfigError):
        app.service_command("/r", ["x"], settings="/s", cwd="/r", user="--all")
