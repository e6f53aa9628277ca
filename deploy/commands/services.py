"""argv builders for an environment's own PostgreSQL cluster and Redis server (native runtime)."""

from __future__ import annotations

from pathlib import Path


def initdb(bin_dir: Path, pgdata: str) -> list[str]:
    # trust only on the unix socket (a private directory); TCP rules come from pg_hba written after
    return [
        str(bin_dir / "initdb"),
        "-D",
        pgdata,
        "-U",
        "postgres",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-instructions",
    ]


def pg_start(bin_dir: Path, pgdata: str, logfile: str, *, timeout_s: int = 30) -> list[str]:
    return [
        str(bin_dir / "pg_ctl"),
        "-D",
        pgdata,
        "-l",
        logfile,
        "-w",
        "-t",
        str(timeout_s),
        "-s",
        "start",
    ]


def pg_stop(bin_dir: Path, pgdata: str, *, mode: str = "fast", timeout_s: int = 30) -> list[str]:
    return [
        str(bin_dir / "pg_ctl"),
        "-D",
        pgdata,
        "-m",
        mode,
        "-w",
        "-t",
        str(timeout_s),
        "-s",
        "stop",
    ]


def pg_status(bin_dir: Path, pgdata: str) -> list[str]:
    return [str(bin_dir / "pg_ctl"), "-D", pgdata, "status"]


def pg_settings(*, port: int, socket_dir: str, host: str = "127.0.0.1") -> str:
    """The settings stageflow owns, in an include file rewritten on every `up`."""
    return "\n".join(
        [
            "# written by stageflow on every `up`; edit env/<env>.env instead",
            f"port = {port}",
            f"listen_addresses = '{host}'",
            f"unix_socket_directories = '{socket_dir}'",
            "logging_collector = off",
            "log_min_messages = warning",
            "",
        ]
    )


def pg_hba(*, app_user: str, database: str, password: bool) -> str:
    method = "scram-sha-256" if password else "trust"
    return "\n".join(
        [
            "# written by stageflow: the superuser only on the private socket; the app role over TCP",
            "local all postgres trust",
            # every database of this cluster is this environment's, the gate's scratch copies too
            f"local all {app_user} {method}",
            f"host all {app_user} 127.0.0.1/32 {method}",
            "host all postgres 127.0.0.1/32 reject",
            "",
        ]
    )


def redis_conf(
    *,
    port: int,
    data_dir: str,
    pidfile: str,
    logfile: str,
    password: str | None,
    host: str = "127.0.0.1",
) -> str:
    lines = [
        "# written by stageflow on every `up` (mode 0600: it may hold requirepass)",
        f"port {port}",
        f"bind {host}",
        "protected-mode yes",
        f"dir {data_dir}",
        f"pidfile {pidfile}",
        f"logfile {logfile}",
        "daemonize yes",
        # the title names the config file, so a process scan finds the environment's server
        'proc-title-template "{title} {listen-addr} {config-file}"',
        "appendonly yes",
        'save ""',
    ]
    if password:
        lines.append(f"requirepass {password}")
    return "\n".join(lines) + "\n"


def redis_start(server_bin: Path, conf: str) -> list[str]:
    return [str(server_bin), conf]
