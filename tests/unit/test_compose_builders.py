"""The compose builders produce exactly these argv lists; the parsers read compose's real output."""

from __future__ import annotations

import json

import pytest

from deploy.commands import compose as cmd
from deploy.errors import ServiceError, UsageError
from deploy.runtime.compose_project import check_release, image_tag, parse_ps, previous_release

BASE = [
    "docker",
    "compose",
    "-p",
    "stageflow-dev",
    "--env-file",
    "env/dev.env",
    "-f",
    "compose/compose.yml",
    "-f",
    "compose/compose.dev.yml",
]
WITH_SECRETS = [
    "docker",
    "compose",
    "-p",
    "stageflow-dev",
    "--env-file",
    "env/dev.env",
    "--env-file",
    "env/dev.secrets.env",
    "-f",
    "compose/compose.yml",
    "-f",
    "compose/compose.dev.yml",
]


@pytest.fixture
def dev() -> cmd.ComposeCommands:
    return cmd.ComposeCommands("stageflow-dev", "env/dev.env", cmd.compose_files("dev"))


def test_compose_files_are_base_then_override() -> None:
    assert cmd.compose_files("prod") == ("compose/compose.yml", "compose/compose.prod.yml")


def test_base_without_and_with_secrets_file() -> None:
    files = ["compose/compose.yml", "compose/compose.dev.yml"]
    assert cmd.base("stageflow-dev", "env/dev.env", files) == BASE
    assert cmd.base("stageflow-dev", "env/dev.env", files, secrets_file="env/dev.secrets.env") == (
        WITH_SECRETS
    )


def test_secrets_file_is_a_second_env_file() -> None:
    c = cmd.ComposeCommands(
        "stageflow-dev", "env/dev.env", cmd.compose_files("dev"), secrets_file="env/dev.secrets.env"
    )
    assert c.base() == WITH_SECRETS
    assert c.ps() == [*WITH_SECRETS, "ps", "--format", "json"]


def test_up_waits_and_removes_orphans(dev: cmd.ComposeCommands) -> None:
    assert dev.up() == [*BASE, "up", "-d", "--wait", "--remove-orphans"]
    assert dev.up(wait_timeout_s=90, services=["app"]) == [
        *BASE,
        "up",
        "-d",
        "--wait",
        "--wait-timeout",
        "90",
        "--remove-orphans",
        "app",
    ]
    assert dev.up(wait=False, wait_timeout_s=90) == [*BASE, "up", "-d", "--remove-orphans"]


def test_pull(dev: cmd.ComposeCommands) -> None:
    assert dev.pull() == [*BASE, "pull", "--quiet"]
    assert dev.pull(services=["app"]) == [*BASE, "pull", "--quiet", "app"]


def test_ps(dev: cmd.ComposeCommands) -> None:
    assert dev.ps() == [*BASE, "ps", "--format", "json"]
    assert dev.ps(all_states=True) == [*BASE, "ps", "--all", "--format", "json"]


def test_logs(dev: cmd.ComposeCommands) -> None:
    assert dev.logs() == [*BASE, "logs", "--no-color", "--tail", "100"]
    assert dev.logs(tail=20, services=["app", "redis"]) == [
        *BASE,
        "logs",
        "--no-color",
        "--tail",
        "20",
        "app",
        "redis",
    ]


def test_down_keeps_volumes_unless_asked(dev: cmd.ComposeCommands) -> None:
    assert dev.down() == [*BASE, "down", "--remove-orphans"]
    assert "--volumes" not in dev.down(timeout_s=5) and "-v" not in dev.down()
    assert dev.down(timeout_s=5) == [*BASE, "down", "--remove-orphans", "--timeout", "5"]
    assert dev.down(volumes=True) == [*BASE, "down", "--remove-orphans", "--volumes"]


def test_exec_has_no_tty_and_passes_argv_whole(dev: cmd.ComposeCommands) -> None:
    argv = ["python", "-m", "deploy.migrations", "up", "--release", "a b;c"]
    assert dev.exec("app", argv) == [*BASE, "exec", "-T", "app", *argv]
    assert dev.exec("postgres", ["psql", "-c", "select 1"], user="postgres") == [
        *BASE,
        "exec",
        "-T",
        "--user",
        "postgres",
        "postgres",
        "psql",
        "-c",
        "select 1",
    ]


def test_restart(dev: cmd.ComposeCommands) -> None:
    assert dev.restart() == [*BASE, "restart"]
    assert dev.restart(services=["app"], timeout_s=10) == [
        *BASE,
        "restart",
        "--timeout",
        "10",
        "app",
    ]


def test_config_is_quiet_so_secrets_never_print(dev: cmd.ComposeCommands) -> None:
    assert dev.config() == [*BASE, "config", "--quiet"]


def test_engine_and_image_builders() -> None:
    assert cmd.engine_info() == ["docker", "info", "--format", "{{.ServerVersion}}"]
    assert cmd.compose_version() == ["docker", "compose", "version", "--short"]
    assert cmd.image_ref("stageflow-app", "20261122T0351Z-abc1234") == (
        "stageflow-app:20261122T0351Z-abc1234"
    )
    assert cmd.build_image("stageflow-app", "r1") == [
        "docker",
        "build",
        "--tag",
        "stageflow-app:r1",
        "--file",
        "Dockerfile",
        ".",
    ]
    assert cmd.build_image("img", "r2", context="/src", dockerfile="/src/Dockerfile") == [
        "docker",
        "build",
        "--tag",
        "img:r2",
        "--file",
        "/src/Dockerfile",
        "/src",
    ]
    # a build argument's value comes from docker's environment: only its name is on argv
    assert cmd.build_image("img", "r3", context="/c", env_build_args=["STAGEFLOW_BASE_IMAGE"]) == [
        "docker",
        "build",
        "--tag",
        "img:r3",
        "--file",
        "Dockerfile",
        "--build-arg",
        "STAGEFLOW_BASE_IMAGE",
        "/c",
    ]
    assert cmd.image_exists("img", "r2") == [
        "docker",
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "img:r2",
    ]


def test_builders_return_fresh_lists(dev: cmd.ComposeCommands) -> None:
    first = dev.ps()
    first.append("mutated")
    assert dev.ps() == [*BASE, "ps", "--format", "json"]


# -- parsing what compose prints ----------------------------------------------------------------

# compose >= 2.21 prints one object per line; older versions print one JSON array.
PS_LINES = (
    '{"Name":"stageflow-dev-app-1","Service":"app","Image":"stageflow-app:r2","State":"running",'
    '"Health":"healthy","Publishers":[{"URL":"127.0.0.1","TargetPort":8000,"PublishedPort":8101}]}\n'
    '{"Name":"stageflow-dev-postgres-1","Service":"postgres","Image":"postgres:16-alpine",'
    '"State":"running","Health":"healthy"}\n'
)
PS_ARRAY = (
    '[{"Name":"stageflow-dev-app-1","Service":"app","Image":"stageflow-app:r2","State":"running",'
    '"Health":"healthy"}]'
)


def test_parse_ps_leaves_out_one_off_containers() -> None:
    """A `run` container (a migration, the service's tool) that a killed deploy left running is
    listed by compose as the app service; it is not an app container that serves."""
    label = "com.docker.compose.project=p,com.docker.compose.service=app"
    rows = [
        {
            "ID": "a1",
            "Service": "app",
            "State": "running",
            "Labels": f"{label},com.docker.compose.oneoff=False",
        },
        {
            "ID": "m1",
            "Service": "app",
            "State": "running",
            "Labels": f"com.docker.compose.oneoff=True,{label}",
        },
        {"ID": "p1", "Service": "postgres", "State": "running"},
    ]
    text = "\n".join(json.dumps(r) for r in rows)
    assert [r["ID"] for r in parse_ps(text)] == ["a1", "p1"]


def test_parse_ps_lines_and_array() -> None:
    rows = parse_ps(PS_LINES)
    assert [r["Service"] for r in rows] == ["app", "postgres"]
    assert rows[0]["Publishers"][0]["PublishedPort"] == 8101
    assert parse_ps(PS_ARRAY)[0]["Health"] == "healthy"
    assert parse_ps("") == [] and parse_ps("\n") == []


def test_parse_ps_refuses_non_json() -> None:
    with pytest.raises(ServiceError, match="did not print JSON"):
        parse_ps("NAME   IMAGE   STATUS\nstageflow-dev-app-1  stageflow-app:r2  Up\n")
    with pytest.raises(ServiceError, match="not a list of containers"):
        parse_ps("[1, 2]")


def test_image_tag() -> None:
    assert image_tag("stageflow-app:r2") == "r2"
    assert image_tag("registry.example:5000/team/stageflow-app:r3") == "r3"
    assert image_tag("registry.example:5000/team/stageflow-app") is None
    assert image_tag("stageflow-app") is None


def test_previous_release_is_the_newest_good_one_before_current() -> None:
    history = [
        {"release": "r1", "status": "success", "kind": "deploy"},
        {"release": "r2", "status": "success", "kind": "deploy"},
        {"release": "r3", "status": "failed", "kind": "deploy"},
        {"release": "r4", "status": "success", "kind": "deploy"},
    ]
    assert previous_release(history, "r4") == "r2"
    assert previous_release(history, "r2") == "r4"
    assert previous_release(history, None) == "r4"
    assert previous_release(history[:1], "r1") is None
    assert previous_release([], "r1") is None


def test_release_must_be_an_image_tag() -> None:
    assert check_release("20261122T035113Z-abc1234") == "20261122T035113Z-abc1234"
    for bad in ("", "-r1", ".r1", "r1:latest", "a/b", "r 1", "x" * 129):
        with pytest.raises(UsageError, match="cannot be an image tag"):
            check_release(bad)


def test_run_is_a_one_off_container_without_tty(dev: cmd.ComposeCommands) -> None:
    argv = ["python", "-m", "deploy.migrations", "up"]
    assert dev.run("app", argv) == [*BASE, "run", "--rm", "-T", "app", *argv]
    assert dev.run("app", argv, no_deps=True) == [
        *BASE,
        "run",
        "--rm",
        "-T",
        "--no-deps",
        "app",
        *argv,
    ]


def test_stop_and_remove_image(dev: cmd.ComposeCommands) -> None:
    assert dev.stop(services=["app"]) == [*BASE, "stop", "app"]
    assert dev.stop(timeout_s=5) == [*BASE, "stop", "--timeout", "5"]
    assert cmd.remove_image("stageflow-app", "r1") == ["docker", "image", "rm", "stageflow-app:r1"]


def test_the_migration_command_of_a_release_image() -> None:
    from deploy.runtime.compose_runtime import migrate_argv

    up = migrate_argv("up", release="r2", applied_by="alice@example.com", directory="db/sql")
    assert up == [
        "python",
        "-m",
        "deploy.compose_migrate",
        "up",
        "--dir",
        "db/sql",
        "--release",
        "r2",
        "--applied-by",
        "alice@example.com",
    ]
    down = migrate_argv("down", release="r1", applied_by="a b", directory="m", to=3)
    assert down[3:8] == ["down", "--dir", "m", "--to", "3"]


def test_a_planned_command_shows_its_variables_then_argv_quoted() -> None:
    from deploy.runtime.compose_project import shown

    line = shown(["docker", "compose", "up", "a b"], {"STAGEFLOW_RELEASE": "r1"})
    assert line == "STAGEFLOW_RELEASE=r1 docker compose up 'a b'"


def test_what_the_migration_entry_point_printed_is_read_back() -> None:
    from deploy.runtime.compose_runtime import _versions

    out = 'Container stageflow-dev-postgres-1 Running\n{"applied":[4,5]}\n'
    assert _versions(out, "applied") == [4, 5]
    assert _versions(out, "reverted") == []
    assert _versions("no json at all", "applied") == []


# -- backups and restores inside the postgres container ---------------------------------------------

PG = ["exec", "-T", "postgres"]
PSQL = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"]


def test_cp_names_the_container_side_service_colon_path(dev: cmd.ComposeCommands) -> None:
    assert cmd.in_container("postgres", "/tmp/x.dump") == "postgres:/tmp/x.dump"
    assert dev.cp("postgres:/tmp/x.dump", "/srv/b/x.dump") == [
        *BASE,
        "cp",
        "postgres:/tmp/x.dump",
        "/srv/b/x.dump",
    ]


def test_postgres_client_argv() -> None:
    assert cmd.pg_dump(user="app_dev", database="stageflow_dev", output="/tmp/b.dump") == [
        "pg_dump",
        "-Fc",
        "-Z",
        "1",
        "--no-owner",
        "-U",
        "app_dev",
        "-d",
        "stageflow_dev",
        "-f",
        "/tmp/b.dump",
    ]
    assert cmd.pg_restore(user="app_dev", database="stageflow_dev", dump="/tmp/b.dump") == [
        "pg_restore",
        "--clean",
        "--if-exists",
        "--exit-on-error",
        "--no-owner",
        "--jobs=2",
        "-U",
        "app_dev",
        "-d",
        "stageflow_dev",
        "/tmp/b.dump",
    ]
    assert cmd.psql(user="u", database="d", statements=["SELECT 1", "SELECT 2"]) == [
        *PSQL,
        "-U",
        "u",
        "-d",
        "d",
        "-c",
        "SELECT 1",
        "-c",
        "SELECT 2",
    ]
    assert cmd.remove_file("/tmp/b.dump") == ["rm", "-f", "/tmp/b.dump"]
    assert cmd.container_dump("20260101T000000000000Z") == "/tmp/20260101T000000000000Z.dump"


def test_database_sql_quotes_identifiers() -> None:
    assert cmd.quote_ident('we"ird') == '"we""ird"'
    assert cmd.recreate_database_sql("stageflow_dev", "app_dev") == [
        'DROP DATABASE IF EXISTS "stageflow_dev" WITH (FORCE)',
        'CREATE DATABASE "stageflow_dev" OWNER "app_dev"',
    ]
    assert cmd.create_database_sql("s") == ['CREATE DATABASE "s"']
    assert cmd.drop_database_sql("s") == ['DROP DATABASE IF EXISTS "s" WITH (FORCE)']
    (ledger,) = cmd.ledger_rows_sql("stageflow_migrations")
    assert "to_regclass('\"stageflow_migrations\"')" in ledger
    assert 'FROM "stageflow_migrations" l)' in ledger


def test_a_backup_dumps_in_the_container_copies_out_and_cleans_up(
    dev: cmd.ComposeCommands,
) -> None:
    from deploy.runtime.compose_backups import backup_argv

    argv = backup_argv(
        dev, user="app_dev", database="stageflow_dev", backup_id="B1", backups_dir="/h/backups"
    )
    assert argv == [
        [*BASE, *PG, *cmd.pg_dump(user="app_dev", database="stageflow_dev", output="/tmp/B1.dump")],
        [*BASE, "cp", "postgres:/tmp/B1.dump", "/h/backups/B1.dump"],
        [*BASE, *PG, "rm", "-f", "/tmp/B1.dump"],
    ]


def test_a_restore_copies_in_recreates_restores_and_cleans_up(dev: cmd.ComposeCommands) -> None:
    from deploy.runtime.compose_backups import ledger_argv, restore_argv

    argv = restore_argv(
        dev, user="app_dev", database="stageflow_dev", backup_id="B1", backups_dir="/h/backups"
    )
    assert argv == [
        [*BASE, "cp", "/h/backups/B1.dump", "postgres:/tmp/B1.dump"],
        [*BASE, *PG, *PSQL, "-U", "app_dev", "-d", "postgres"]
        + ["-c", 'DROP DATABASE IF EXISTS "stageflow_dev" WITH (FORCE)']
        + ["-c", 'CREATE DATABASE "stageflow_dev" OWNER "app_dev"'],
        [*BASE, *PG, "pg_restore", "--clean", "--if-exists", "--exit-on-error", "--no-owner"]
        + ["--jobs=2", "-U", "app_dev", "-d", "stageflow_dev", "/tmp/B1.dump"],
        [*BASE, *PG, "rm", "-f", "/tmp/B1.dump"],
    ]
    assert ledger_argv(dev, user="app_dev", database="stageflow_dev") == [
        *BASE,
        *PG,
        *PSQL,
        "-U",
        "app_dev",
        "-d",
        "stageflow_dev",
        "-c",
        *cmd.ledger_rows_sql("stageflow_migrations"),
    ]


def test_the_deploy_backs_up_by_the_native_policy() -> None:
    from deploy.runtime.compose_backups import pending_versions, wants_backup

    assert pending_versions([1, 2, 3, 4], [1, 2, 3]) == [4]
    assert pending_versions([1, 2], [1, 2, 5]) == []
    assert wants_backup("always", []) and wants_backup("pending-migrations", [4])
    assert not wants_backup("pending-migrations", []) and not wants_backup("never", [4])


def test_the_switch_builders(dev: cmd.ComposeCommands) -> None:
    assert dev.beside("app", count=2) == [
        *BASE,
        "up",
        "-d",
        "--no-deps",
        "--no-recreate",
        "--scale",
        "app=2",
        "app",
    ]
    boot = ["python", "-c", cmd.FRONT_BOOT]
    assert cmd.front_switch(
        dev, "p-app-2:8000", paths=["/healthz", "/readyz"], ready_s=5, drain_s=30
    ) == [*BASE, "exec", "-T", "front", *boot, "switch", "p-app-2:8000", "5", "30", "/healthz", "/readyz"]  # fmt: skip
    assert cmd.front_target(dev) == [*BASE, "exec", "-T", "front", *boot, "target"]
    assert cmd.stop_containers(["c1", "c2"], timeout_s=30) == [
        "docker", "stop", "--time", "30", "c1", "c2"
    ]  # fmt: skip
    assert cmd.remove_containers(["c1"]) == ["docker", "rm", "c1"]
