"""Hosts in stageflow.toml, batch sizes and batches, and isolation between hosts (no I/O)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from deploy.commands import release as cmd
from deploy.config import LOCAL, HostSpec, Project, load_project
from deploy.engine import group
from deploy.errors import ConfigError
from deploy.hosts import CommandResult
from deploy.policy import guards
from tests import support


def project_with(tmp_path: Path, staging: str) -> Project:
    text = support.minimal_policy()
    start = text.index("[environments.staging]\n") + len("[environments.staging]\n")
    text = text[:start] + staging + "\n" + text[start:].replace('hosts = ["local"]\n', "", 1)
    (tmp_path / "stageflow.toml").write_text(text)
    support.write_envs(tmp_path)
    return load_project(tmp_path)


def test_plain_strings_and_inline_tables(tmp_path: Path) -> None:
    proj = project_with(
        tmp_path,
        'hosts = ["local", "deploy@web2:2222", {address = "root@127.0.0.2:2201", '
        'data_dir = "/srv/stageflow/staging", bind = "127.0.0.2", identity_file = "keys/id"}]\n'
        'batch = "50%"',
    )
    hosts = proj.policies["staging"].hosts
    assert hosts[0] == LOCAL and hosts[0].plain
    assert hosts[1] == HostSpec(address="deploy@web2:2222")
    assert hosts[2].data_dir == "/srv/stageflow/staging" and hosts[2].bind == "127.0.0.2"
    assert hosts[2].identity_file == str(tmp_path / "keys" / "id")
    assert hosts[2].home(proj.env("staging")) == "/srv/stageflow/staging"
    assert hosts[1].home(proj.env("staging")) == str(proj.env("staging").data_dir)
    assert proj.policies["staging"].batch == "50%"
    assert proj.policies["dev"].hosts == (LOCAL,)
    assert group.is_rolling(proj, "staging") and not group.is_rolling(proj, "dev")


@pytest.mark.parametrize(
    ("staging", "says"),
    [
        ("hosts = []", "non-empty"),
        ("hosts = [3]", "string or a table"),
        ('hosts = [{data_dir = "/srv"}]', "needs address"),
        ('hosts = [{address = "h", port = "22"}]', "unknown key port"),
        ('hosts = [{address = "h", data_dir = "srv"}]', "not absolute"),
        ('hosts = [{address = "h", bind = "example.com"}]', "not an IP address"),
        ('hosts = ["a@h:22", {address = "a@h:22"}]', "listed twice"),
        ('batch = "0"', "not a batch size"),
        ('batch = "150%"', "not a batch size"),
        ('batch = "half"', "not a batch size"),
    ],
)
def test_bad_hosts_and_batches_refuse(tmp_path: Path, staging: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        project_with(tmp_path, staging)
    assert says in info.value.message and "environments.staging" in info.value.message


@pytest.mark.parametrize(
    ("batch", "hosts", "size"),
    [("1", 3, 1), ("2", 3, 2), ("9", 3, 3), ("50%", 6, 3), ("25%", 16, 4), ("25%", 1, 1)],
)
def test_batch_size(batch: str, hosts: int, size: int) -> None:
    assert group.batch_size(batch, hosts) == size


def test_batches_put_the_first_host_alone() -> None:
    assert group.batches(list("abcdef"), "50%") == [["a"], ["b", "c", "d"], ["e", "f"]]
    assert group.batches(list("abc"), "1") == [["a"], ["b"], ["c"]]
    assert group.batches(list("abc"), None) == [["a", "b", "c"]]
    assert group.batches(["a"], "25%") == [["a"]]


def test_outcome_table_and_error_keep_every_host() -> None:
    outcomes = [
        group.HostOutcome("h1", group.REVERTED, "switched back to r0", "r0", 1.0),
        group.HostOutcome("h2", group.FAILED, "unreachable", "r0", 0.5),
        group.HostOutcome("h3", group.SKIPPED, "stopped before", "r0"),
    ]
    err = group.RolloutError("stopped", outcomes=outcomes)
    assert err.reverted and int(err.exit_code) == 6
    assert [h["host"] for h in err.to_dict()["hosts"]] == ["h1", "h2", "h3"]
    lines = group.table(outcomes)
    assert len(lines) == 4 and all(h in "".join(lines) for h in ("h1", "h2", "h3"))
    assert group.summary(outcomes) == "h1 reverted; h2 failed; h3 skipped"
    no_revert = group.RolloutError("stopped", outcomes=outcomes[1:])
    assert not no_revert.reverted and int(no_revert.exit_code) == 1


def test_listener_builder_binds_the_host_address() -> None:
    argv = cmd.listener("py", "/r", port=8000, control="/c", pidfile="/p", host="127.0.0.3")
    assert argv[argv.index("--host") + 1] == "127.0.0.3"
    assert "--host" in cmd.listener("py", "/r", port=8000, control="/c", pidfile="/p")


def with_hosts(proj: Project, **hosts: tuple[HostSpec, ...]) -> Project:
    policies = dict(proj.policies)
    for name, h in hosts.items():
        policies[name] = dataclasses.replace(policies[name], hosts=h)
    return dataclasses.replace(proj, policies=policies)


@pytest.fixture
def proj(tmp_path: Path) -> Project:
    (tmp_path / "stageflow.toml").write_text(support.minimal_policy())
    support.write_envs(tmp_path)
    return load_project(tmp_path)


def test_envs_sharing_a_remote_host_compare_its_data_dirs(proj: Project) -> None:
    a = HostSpec(address="root@web1", data_dir="/srv/sf")
    shared = with_hosts(proj, dev=(a,), staging=(dataclasses.replace(a, data_dir="/srv/sf/st"),))
    problems = guards.isolation_problems(shared)
    assert problems == ["dev and staging share the data directory /srv/sf on root@web1"]
    apart = with_hosts(proj, dev=(a,), staging=(dataclasses.replace(a, data_dir="/srv/other"),))
    assert guards.isolation_problems(apart) == []


def test_envs_sharing_a_remote_host_compare_app_ports(proj: Project) -> None:
    same_port = dataclasses.replace(
        proj,
        envs={**proj.envs, "staging": dataclasses.replace(proj.envs["staging"], app_port=9999)},
    )
    same_port = dataclasses.replace(
        same_port,
        envs={**same_port.envs, "dev": dataclasses.replace(proj.envs["dev"], app_port=9999)},
    )
    web1 = HostSpec(address="root@web1", data_dir="/srv/a")
    web2 = HostSpec(address="root@web2", data_dir="/srv/a")
    shared = with_hosts(
        same_port, dev=(web1,), staging=(dataclasses.replace(web1, data_dir="/srv/b"), web2)
    )
    assert any("share port 9999" in p for p in guards.isolation_problems(shared))
    apart = with_hosts(same_port, dev=(web1,), staging=(web2,))
    assert guards.isolation_problems(apart) == []


def test_database_ports_on_the_operator_machine_are_compared_whatever_the_hosts(
    proj: Project,
) -> None:
    pg = proj.env("dev").postgres_port
    clash = dataclasses.replace(
        proj,
        envs={**proj.envs, "staging": dataclasses.replace(proj.envs["staging"], redis_port=pg)},
    )
    apart = with_hosts(clash, dev=(HostSpec(address="a"),), staging=(HostSpec(address="b"),))
    assert any(f"share port {pg}" in p for p in guards.isolation_problems(apart))


def test_a_step_that_fails_on_one_host_reports_every_host_and_switches_nothing():
    from dataclasses import dataclass

    import pytest

    @dataclass
    class Item:  # on_every_host reads only a host's name and what it served before
        name: str
        previous: str | None = "r-old"

    def build(t: Item) -> str:
        if t.name == "b":
            raise OSError("disk full")
        return "built"

    group.on_every_host([Item("a"), Item("c")], build, phase="build", subject="r1", hint="h")
    with pytest.raises(group.RolloutError) as caught:
        group.on_every_host(
            [Item("a"), Item("b"), Item("c")],
            build,
            phase="build",
            subject="r1",
            hint="fix that host",
        )
    err = caught.value
    assert [(o.host, o.status) for o in err.outcomes] == [
        ("a", group.SKIPPED),
        ("b", group.FAILED),
        ("c", group.SKIPPED),
    ]
    assert "build of r1 failed on b" in err.message and "disk full" in err.message
    assert "nothing was switched" in err.message and not err.reverted


def test_a_failed_command_s_tail_skips_blank_lines():
    # click (flask, alembic) ends a usage error with a blank line before the one that matters
    said = (
        "Usage: flask [OPTIONS] COMMAND [ARGS]...\n"
        "Try 'flask --help' for help.\n\nError: No such command 'db'.\n"
    )
    res = CommandResult("local", ("flask", "db", "current"), 2, "", said, 0.1)
    assert res.tail(2) == "Try 'flask --help' for help. | Error: No such command 'db'."
    assert res.tail(1) == "Error: No such command 'db'."
