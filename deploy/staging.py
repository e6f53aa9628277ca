"""Staging as a rehearsal of prod: init and reset, seed, refresh from prod (anonymized), profile checks."""

from __future__ import annotations

import functools
import os
import secrets as pysecrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy import backup, env_migrations, environment, migrations, releases, scratch
from deploy import seed as seeding
from deploy.clients import redis_client
from deploy.config import EnvConfig, Project, Thresholds
from deploy.engine import group
from deploy.errors import DeployError, GuardRefused, HostError, ServiceError, UsageError, clip
from deploy.hosts import Host
from deploy.policy import guards
from deploy.probes.smoke import Probe, http, serving_release
from deploy.runtime import native_hosts
from deploy.runtime.native import NativeServices, pg_bin_dir
from deploy.state import DeployLock, Layout, audit, sha256_file

if TYPE_CHECKING:
    from deploy import anonymize
    from deploy.runtime import native_hosts

Printer = Callable[[str], None]
LOG_FILES = ("app.log", "postgres.log", "redis.log")
SCRATCH_SUFFIX = "_refresh"
THRESHOLD_FIELDS = ("health_failures", "error_rate_points", "p95_ratio", "memory_mb")


def _refuse_production(env: EnvConfig, what: str) -> None:
    if env.environment == "production":
        raise GuardRefused(
            f"{what} is refused on {env.name}: it is production",
            hint="production is never wiped, seeded or overwritten; use staging",
        )


def _services(proj: Project, name: str) -> NativeServices:
    return NativeServices(proj.env(name), user_name=proj.service_user)


def _migration_source(proj: Project, layout: Layout) -> str:
    """The serving release's migrations, or the working tree's before the first deploy."""
    current = releases.current_release(Host(), layout)
    return layout.release(current) if current else str(proj.root)


def _as_role(conninfo: str, role: str) -> str:
    # objects the superuser creates over the private socket belong to the app role, as on deploy
    return f"{conninfo} options='-c role={role}'"


# -- init and reset ------------------------------------------------------------------------------


def _safe_to_wipe(proj: Project, env: EnvConfig) -> Path:
    """DATA_DIR must be this environment's own home, never the project or a parent of it."""
    home = Path(env.data_dir).resolve()
    marker = home / ".stageflow-env"
    if home == Path("/") or home == proj.root or home in proj.root.parents:
        raise GuardRefused(
            f"DATA_DIR {home} holds the project: refusing to wipe it",
            hint=f"give {env.name} its own DATA_DIR in {env.file.name}",
        )
    if home.exists() and any(home.iterdir()):
        owner = marker.read_text().strip() if marker.exists() else ""
        if owner != env.name:
            raise GuardRefused(
                f"{home} is not marked as {env.name}'s home (marker says {owner or 'nothing'})",
                hint="check DATA_DIR; nothing was removed",
            )
    return home


def _wipe(proj: Project, name: str) -> str:
    """Stop everything, then remove DATA_DIR except state/ (the audit trail outlives a reset)."""
    env = proj.env(name)
    home = _safe_to_wipe(proj, env)
    native_hosts.stop_service(proj, name)
    _services(proj, name).down()
    layout = Layout(str(home))
    removed = 0
    if home.exists():
        for entry in home.iterdir():
            if str(entry) == layout.state:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
    return f"service and servers stopped; {removed} entries of {home} removed (state/ kept)"


def _log_files(svc: NativeServices) -> str:
    made = []
    for name in LOG_FILES:
        path = Path(svc.layout.logs) / name
        if not path.exists():
            path.touch()
            made.append(name)
        if svc.user:
            import pwd

            pw = pwd.getpwnam(svc.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)
    return f"created {', '.join(made)}" if made else f"{', '.join(LOG_FILES)} present"


def init(
    proj: Project,
    name: str,
    *,
    actor: str,
    reset: bool = False,
    process_env: Mapping[str, str] | None = None,
    size: str = "small",
) -> list[tuple[str, str]]:
    """Make the environment ready to deploy to: dirs, config, servers, schema, seed, logs.

    Idempotent: a second run changes nothing and says so. With reset, the environment is wiped
    and rebuilt from the working tree's migrations first. Production is always refused. The seed
    step runs the service's seed command on a database init found empty, and is skipped for a
    service without one.
    """
    env = proj.env(name)
    _refuse_production(env, "init" + (" --reset" if reset else ""))
    seeding.check_size(size)
    steps: list[tuple[str, str]] = []
    checks = guards.run_checks(guards.environment_checks(proj, name, process_env or {}))
    guards.require(checks)
    steps.append(("config", f"{env.file.name} + stageflow.toml load; {len(checks)} guards pass"))
    layout = Layout(str(env.data_dir))
    host = Host(secrets=env.secret_values())
    if reset:
        _safe_to_wipe(proj, env)
    Path(layout.state).mkdir(parents=True, exist_ok=True)
    lock = DeployLock(host, layout)
    lock.acquire(who=actor, command=f"{name}.init{' --reset' if reset else ''}")
    try:
        if reset:
            steps.append(("reset", _wipe(proj, name)))
            Path(layout.state).mkdir(parents=True, exist_ok=True)
        steps += _build_environment(
            proj, name, layout, actor=actor, reset=reset, size=size, process_env=process_env
        )
        audit(host, layout, actor=actor, action="init", reset=reset)
    finally:
        lock.release()
    if not releases.current_release(host, layout):
        steps.append(("next", f"deploy a release: inv {name}.deploy"))
    return steps


def _build_environment(
    proj: Project,
    name: str,
    layout: Layout,
    *,
    actor: str,
    reset: bool,
    size: str,
    process_env: Mapping[str, str] | None,
) -> list[tuple[str, str]]:
    """Directories, servers, log files, schema and seed rows, each step saying what it did."""
    env = proj.env(name)
    svc = _services(proj, name)
    wanted = [
        layout.shared, layout.logs, layout.backups, layout.releases, layout.run,
        layout.state, layout.venvs,
    ]  # fmt: skip
    missing = [d for d in wanted if not os.path.isdir(d)]
    steps = [
        ("directories", f"created {len(missing)} under {env.data_dir}" if missing else "present"),
        ("servers", "; ".join(svc.up())),
        ("logs", _log_files(svc)),
    ]
    # judged before the migrations run: they create tables, and some tools write rows too
    tables = _user_tables(env)
    steps.append(("migrate", _migrate_schema(proj, env, layout, actor=actor, reset=reset)))
    steps.append(("seed", _seed_rows(proj, env, tables, size, process_env=process_env)))
    return steps


def migration_limits(proj: Project, name: str) -> dict[str, Any]:
    """The environment's lock_timeout and statement_timeout, and deploy_timeout_s from now: init
    and refresh migrate as a deploy does, never waiting on a lock for good."""
    deadline = time.monotonic() + proj.policies[name].deploy_timeout_s
    return env_migrations.timeouts(proj, name, deadline=deadline)


def _migrate_schema(
    proj: Project, env: EnvConfig, layout: Layout, *, actor: str, reset: bool
) -> str:
    if env_migrations.kind_of(proj) == "command":
        return _migrate_with_tool(proj, env, layout)
    source = str(proj.root) if reset else _migration_source(proj, layout)
    applied = migrations.migrate(
        env.database_url,
        env_migrations.files_in(proj, source),
        applied_by=actor,
        password=env.secret("POSTGRES_PASSWORD"),
        **migration_limits(proj, env.name),
    )
    return f"applied {[f.version for f in applied]}" if applied else "up to date"


def _migrate_with_tool(proj: Project, env: EnvConfig, layout: Layout) -> str:
    """The service's own tool migrates in the serving release's venv, as a deploy does; before
    the first deploy there is none to run it in, and the first deploy runs `up`."""
    up = " ".join(proj.service.migrations.up)
    current = releases.current_release(Host(), layout)
    if not current:
        return f"none yet: the first deploy runs `{up}`"
    deadline = time.monotonic() + proj.policies[env.name].deploy_timeout_s
    tool = env_migrations.MigrationTool(proj, env.name, Host(), layout, current, deadline=deadline)
    change = env_migrations.migrate_command(tool)
    if change.changed:
        return f"`{up}` in {current}: {change.describe()}"
    return f"up to date at {migrations.describe_revisions(change.after)}"


def _user_tables(env: EnvConfig) -> int:
    """How many tables the environment's database holds (the migration ledger aside)."""
    import psycopg

    password = env.secret("POSTGRES_PASSWORD")
    try:
        with psycopg.connect(
            env.database_url,
            password=password.reveal() if password else None,
            connect_timeout=10,
            application_name="stageflow-init",
        ) as conn:
            row = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema ="
                " current_schema() AND table_type = 'BASE TABLE' AND table_name <> %s",
                (migrations.LEDGER_TABLE,),
            ).fetchone()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["connection failed"])[0]
        if password:
            first = first.replace(password.reveal(), "[REDACTED]")
        raise ServiceError(
            f"cannot read {env.name}'s database: {first}", hint=f"run `inv {env.name}.up`"
        ) from None
    return int(row[0]) if row else 0


def _seed_rows(
    proj: Project,
    env: EnvConfig,
    tables: int,
    size: str,
    *,
    process_env: Mapping[str, str] | None,
) -> str:
    """Seed a database init found empty; one that held tables is kept (a reseed is its own task)."""
    if not proj.service.seed:
        return "none: [service] seed is empty"
    if tables:
        return f"kept the data already there ({tables} tables; reseed with `inv {env.name}.seed`)"
    result = seeding.run(proj, env, size=size, process_env=process_env)
    return f"{size} seed in {result.seconds:.2f}s from {result.where}: {result.summary}"


# -- refresh -------------------------------------------------------------------------------------


def _latest_backup(proj: Project, source: str) -> dict[str, Any] | None:
    layout = Layout(str(proj.env(source).data_dir))
    for info in reversed(environment.list_backups(proj, source)):
        dump = Path(layout.backups) / info.get("file", "")
        if dump.exists() and sha256_file(dump) == info.get("sha256"):
            return {**info, "path": str(dump)}
    return None


def _source_dump(proj: Project, source: str, *, actor: str, fresh: bool) -> dict[str, Any]:
    info = None if fresh else _latest_backup(proj, source)
    if info is not None:
        return {**info, "fresh": False}
    try:
        info = environment.take_backup(proj, source, actor=actor, reason="staging refresh")
    except (HostError, ServiceError) as exc:
        raise ServiceError(
            f"cannot dump {source}: {exc.message}",
            hint=f"start it with `inv {source}.up`; staging was not touched",
        ) from None
    path = Path(Layout(str(proj.env(source).data_dir)).backups) / info["file"]
    return {**info, "path": str(path), "fresh": True}


def _source_connection(env: EnvConfig) -> Any:
    """Read-only: every transaction on this connection is READ ONLY, so nothing can write to prod."""
    import psycopg

    password = env.secret("POSTGRES_PASSWORD")
    try:
        return psycopg.connect(
            env.database_url,
            password=password.reveal() if password else None,
            connect_timeout=5,
            autocommit=True,
            options="-c default_transaction_read_only=on",
            application_name="stageflow-refresh-check",
        )
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["unreachable"])[0]
        if password:
            first = first.replace(password.reveal(), "[REDACTED]")
        raise ServiceError(
            f"cannot read {env.name} to check the anonymization: {first}",
            hint=f"start it with `inv {env.name}.up`; staging was not touched",
        ) from None


def _flush_cache(env: EnvConfig) -> None:
    """Empty the environment's Redis database: what it cached was read from the data replaced."""
    import redis

    try:
        with redis_client(env, timeout_s=3) as client:
            client.flushdb()
    except redis.RedisError:
        pass  # a service's cache entries expire on their own


class _TimedSteps:
    """Runs a refresh's steps in turn, timing each and telling the operator as each one ends."""

    def __init__(self, name: str, printer: Printer) -> None:
        self.name = name
        self.printer = printer
        self.timings: dict[str, float] = {}

    def __call__(self, label: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self.timings[label] = round(time.perf_counter() - t0, 3)
        self.printer(f"{self.name}: {label} ({self.timings[label]:.2f}s)")
        return out


def refresh(
    proj: Project,
    name: str,
    *,
    source: str = "prod",
    anonymize_data: bool,
    actor: str,
    fresh: bool = False,
    printer: Printer = lambda _line: None,
) -> dict[str, Any]:
    """Replace name's database with source's latest backup (a fresh dump when there is none).

    The order keeps the target whole until the very end, whatever fails:
      1. dump:      source's latest verified backup, or pg_dump now (read-only on the source),
                    then the [anonymize] rules against both schemas, before any data is copied;
      2. restore:   into a scratch database beside the target's, never into the target itself;
      3. migrate:   the target's serving release's pending migrations, on that scratch copy;
      4. anonymize: the rules of [anonymize], in one transaction on the scratch copy;
      5. check:     no rewritten value equals a value of the restored copy or of the live source
                    (read-only queries there); the source being unreadable stops here;
      6. swap:      rename target -> retired and scratch -> target in one transaction, drop the
                    retired one, flush the target's Redis (its entries came from the old data).
    Any failure before 6 drops the scratch copy and leaves the target exactly as it was.
    """
    target = proj.env(name)
    rules = _refresh_rules(proj, target, source=source, anonymize_data=anonymize_data)
    svc = _services(proj, name)
    _require_running(svc, name)
    layout = Layout(str(target.data_dir))
    host = Host(secrets=target.secret_values())
    lock = DeployLock(host, layout)
    lock.acquire(who=actor, command=f"{name}.refresh --from {source}")
    step = _TimedSteps(name, printer)
    started = time.perf_counter()
    try:
        dump, applied, checked = _refresh_database(
            proj, svc, layout, rules, step, source=source, actor=actor, fresh=fresh,
            anonymize_data=anonymize_data,
        )  # fmt: skip
        _flush_cache(target)
        out = {
            "env": name,
            "source": source,
            "backup": dump["id"],
            "fresh_dump": dump["fresh"],
            "anonymized": anonymize_data,
            "migrations": [f.version for f in applied],
            "rows": checked["rows"],
            "updated": checked["updated"],
            "leaks": checked["leaks"],
            "timings_s": step.timings,
            "duration_s": round(time.perf_counter() - started, 3),
        }
        audit(
            host, layout, actor=actor, action="refresh", source=source, backup=dump["id"],
            anonymized=anonymize_data, rows=checked["rows"],
        )  # fmt: skip
        return out
    finally:
        lock.release()


def _refresh_rules(
    proj: Project, target: EnvConfig, *, source: str, anonymize_data: bool
) -> anonymize.Rules:
    """The anonymization rules, once the target, the source and the policy allow the refresh."""
    name = target.name
    _refuse_production(target, "refresh")
    if source != "prod":  # a refresh brings real data to rehearse on; only prod holds it
        raise UsageError(f"cannot refresh {name} from {clip(source)!r}", hint="use --from prod")
    from deploy import anonymize  # psycopg.sql: loaded when a refresh runs, not for --list

    rules = anonymize.load_rules(proj.policy)
    if not anonymize_data and not rules.allow_raw:
        raise GuardRefused(
            f"a raw copy of {source} into {name} is refused by policy",
            hint="add --anonymize (rules in [anonymize] of stageflow.toml)",
        )
    return rules


def _require_running(svc: NativeServices, name: str) -> None:
    down = [s.name for s in svc.status() if not s.up]
    if down:
        raise ServiceError(f"{name}: {', '.join(down)} not running", hint=f"run `inv {name}.up`")


def _refresh_database(
    proj: Project,
    svc: NativeServices,
    layout: Layout,
    rules: anonymize.Rules,
    step: _TimedSteps,
    *,
    source: str,
    actor: str,
    fresh: bool,
    anonymize_data: bool,
) -> tuple[dict[str, Any], list[migrations.MigrationFile], dict[str, Any]]:
    """Steps 1 to 6 of refresh: (the dump, the migrations applied, what anonymize found).

    The scratch copy is dropped whatever fails before the swap; the target is not touched.
    """
    target = svc.env
    scratch_db = target.database.name + SCRATCH_SUFFIX
    dump = step("dump", lambda: _source_dump(proj, source, actor=actor, fresh=fresh))
    if anonymize_data:
        step("rules", lambda: _check_rules_first(proj, target, rules, source=source))
    scratch.drop(svc, scratch_db)
    try:
        step("restore", lambda: _restore_scratch(svc, target, scratch_db, dump["path"]))
        applied = step(
            "migrate",
            lambda: migrations.migrate(
                _as_role(svc.admin_conninfo(scratch_db), target.database.user),
                env_migrations.files_in(proj, _migration_source(proj, layout)),
                applied_by=actor,
                **migration_limits(proj, target.name),
            ),
        )
        checked = step(
            "anonymize",
            lambda: _anonymize_scratch(
                proj, svc, scratch_db, rules, source=source, enabled=anonymize_data
            ),
        )
        step("swap", lambda: scratch.swap(svc, target.database.name, scratch_db))
    except BaseException:
        try:
            scratch.drop(svc, scratch_db)
        except Exception:  # noqa: BLE001 - the first failure is the one to report
            pass
        raise
    return dump, applied, checked


def _restore_scratch(svc: NativeServices, env: EnvConfig, scratch_db: str, dump: str) -> None:
    scratch.create(svc, scratch_db)
    try:
        Host(secrets=env.secret_values()).run(
            backup.restore_argv(
                pg_bin_dir(), svc.admin_conninfo(scratch_db), dump, role=env.database.user
            ),
            timeout=7200,
        )
    except HostError as exc:
        raise ServiceError(
            f"restoring the dump failed: {exc.message}", hint="staging was not touched"
        ) from None


def _check_rules_first(
    proj: Project, target: EnvConfig, rules: anonymize.Rules, *, source: str
) -> str:
    """The rules against the source's schema, before any of its data is copied (read-only).

    A rule must name a table and column the source or the target has (the target's serving
    release may have added it); a text column both have needs a rule. The same check runs again,
    exactly, on the restored and migrated copy before a value is rewritten.
    """
    from deploy import anonymize

    with _source_connection(proj.env(source)) as src:
        theirs = anonymize.read_columns(src)
    with _source_connection(target) as conn:
        ours = anonymize.read_columns(conn)
    mine = {(c.table, c.name) for c in ours}
    both = [c for c in theirs if (c.table, c.name) in mine]
    anonymize.require_coverage(rules, both, known=[*theirs, *ours])
    return f"{len(rules.tables)} tables named, {len(both)} columns covered"


def _anonymize_scratch(
    proj: Project,
    svc: NativeServices,
    scratch_db: str,
    rules: anonymize.Rules,
    *,
    source: str,
    enabled: bool,
) -> dict[str, Any]:
    from deploy import anonymize

    updated: dict[str, int] = {}
    found: dict[str, int] = {}
    with scratch.admin(svc, scratch_db) as conn:
        if enabled:
            salt = pysecrets.token_hex(16)
            with conn.transaction():
                anonymize.require_coverage(rules, anonymize.read_columns(conn))
                anonymize.start_reference(conn, rules)
                updated = anonymize.apply(conn, rules, salt=salt)
            with _source_connection(proj.env(source)) as src:
                anonymize.add_reference(conn, src, rules)
            found = anonymize.leaks(conn, rules)
            anonymize.require_no_leaks(found)
        rows = anonymize.table_counts(conn)
    return {"updated": updated, "leaks": found, "rows": rows}


# -- the staging profile -------------------------------------------------------------------------


def relax_settings(proj: Project, name: str) -> tuple[str, float] | None:
    """(source env, factor) when name's thresholds are derived from another's, else None."""
    table = proj.policy.get("environments", {}).get(name, {})
    source = table.get("relax_thresholds_from")
    if not source:
        return None
    return str(source), float(table.get("relax_factor", 2))


def threshold_rows(proj: Project, name: str) -> list[tuple[str, str, str, str]]:
    """(trigger, name's value, source's value, relation) for the status table."""
    relax = relax_settings(proj, name)
    source = relax[0] if relax else "prod"
    mine, theirs = proj.policies[name].thresholds, proj.policies[source].thresholds
    rows = []
    for key in THRESHOLD_FIELDS:
        a, b = getattr(mine, key), getattr(theirs, key)
        rel = f"x{a / b:g}" if b else "-"
        rows.append((key, f"{a:g}", f"{b:g}", rel))
    return rows


def expected_thresholds(proj: Project, name: str) -> Thresholds | None:
    relax = relax_settings(proj, name)
    if relax is None:
        return None
    base = proj.policies[relax[0]].thresholds
    f = relax[1]
    return Thresholds(
        health_failures=int(base.health_failures * f),
        error_rate_points=base.error_rate_points * f,
        p95_ratio=base.p95_ratio * f,
        memory_mb=int(base.memory_mb * f),
    )


def _probe(name: str, fn: Callable[[], tuple[bool, str]]) -> Probe:
    start = time.perf_counter()
    try:
        ok, detail = fn()
    except DeployError as exc:
        ok, detail = False, exc.line()
    except Exception as exc:  # noqa: BLE001 - a check that cannot run has failed
        ok, detail = False, f"{exc.__class__.__name__}: {str(exc)[:120]}"
    return Probe(name, ok, detail, (time.perf_counter() - start) * 1000)


@dataclass(frozen=True)
class _StagingView:
    """Where each profile check looks: this machine's servers, and the service's hosts."""

    proj: Project
    name: str
    env: EnvConfig
    layout: Layout  # this machine: the servers, their logs, the backups
    targets: list[native_hosts.Target]  # the service's hosts when it rolls over several, else none
    app_host: Host  # the primary: its release and state
    app_layout: Layout
    address: str
    process_env: Mapping[str, str]
    version: dict[str, Any] = field(default_factory=dict)  # /version, once one check read it


def _environment_detected(v: _StagingView) -> tuple[bool, str]:
    shell = guards.shell_environment(v.env, v.process_env)
    ok = v.env.environment == "staging" and shell.ok
    return ok, f"ENVIRONMENT={v.env.environment}; {shell.detail}"


def _config_posture(v: _StagingView) -> tuple[bool, str]:
    posture = guards.production_posture(v.env)
    return posture.ok, f"{v.env.file.name} + stageflow.toml; {posture.detail}"


def _directories_present(v: _StagingView) -> tuple[bool, str]:
    # this machine holds the servers' side; each host the service's (state on the primary)
    local, layout = Host(), v.layout
    wanted = [(local, layout, d) for d in (layout.shared, layout.backups, layout.pgdata)]
    wanted += [(local, layout, f"{layout.logs}/{f}") for f in LOG_FILES[1:]]
    for h, lay in [(t.host, t.layout) for t in v.targets] or [(local, layout)]:
        wanted += [(h, lay, d) for d in (lay.releases, lay.logs, f"{lay.logs}/{LOG_FILES[0]}")]
    wanted.append((v.app_host, v.app_layout, v.app_layout.state))
    gone = [
        (f"{h.name}:" if v.targets else "") + os.path.relpath(path, lay.home)
        for h, lay, path in wanted
        if not h.exists(path)
    ]
    if gone:
        return False, f"missing {', '.join(gone)} (run `inv {v.name}.init`)"
    return True, f"{len(wanted)} directories and logs"


def _features_all_on(v: _StagingView) -> tuple[bool, str]:
    """Staging runs every feature flag, when the service has flags (a FEATURES key); its version
    path, when it reports `features` and `known_features`, says whether all are on."""
    service = v.proj.service
    if "FEATURES" not in service.env_keys:
        return True, "the service declares no FEATURES key"
    features = [f.strip() for f in v.env.value("FEATURES").split(",") if f.strip()]
    if "all" not in features:
        return False, f"FEATURES={','.join(features)}: staging runs every flag (all)"
    if not service.version:
        return True, "FEATURES=all (no version path to confirm it)"
    url = f"http://{v.address}:{v.env.app_port}{service.version}"
    status, body = http("GET", url, timeout=1.5)
    if status != 200 or not isinstance(body, dict):
        return False, f"{service.version} HTTP {status}"
    v.version.update(body)
    known = list(body.get("known_features") or body.get("features") or [])
    off = sorted(set(known) - set(body.get("features") or []))
    return not off, f"off: {', '.join(off)}" if off else f"all on: {', '.join(known) or '-'}"


def _thresholds_derived(v: _StagingView) -> tuple[bool, str]:
    want = expected_thresholds(v.proj, v.name)
    have = v.proj.policies[v.name].thresholds
    if want is None:
        return False, "no relax_thresholds_from: staging's triggers are not derived from prod's"
    src, factor = relax_settings(v.proj, v.name) or ("prod", 2.0)
    return have == want, f"{v.name} = {src} x {factor:g}" if have == want else f"{have} != {want}"


def _services_up(v: _StagingView) -> tuple[bool, str]:
    svc = NativeServices(v.env, user_name=v.proj.service_user)
    down = [s.name for s in svc.status() if not s.up]
    app = native_hosts.service_status(v.proj, v.name)
    if not app["up"]:
        down.append("app")
    return not down, f"down: {', '.join(down)}" if down else "postgres, redis, app up"


def _serving_current_release(v: _StagingView) -> tuple[bool, str]:
    """The release that answers is the one `current` names: the release header of its answers,
    else its [service] version path; and the commit that path reports, when it reports one."""
    current = releases.current_release(v.app_host, v.app_layout)
    base, service = f"http://{v.address}:{v.env.app_port}", v.proj.service
    if service.version and not v.version:
        status, body = http("GET", base + service.version, timeout=1.5)
        v.version.update(body if isinstance(body, dict) else {})
    serving = serving_release(base, service, timeout=1.5)
    if not current or serving != current:
        return False, f"serving {serving}, current is {current}"
    meta = releases.release_meta(v.app_host, v.app_layout, current) or {}
    said = v.version.get("commit")
    if said and meta.get("commit") and said != meta["commit"]:
        return False, f"commit {said} != {meta['commit']}"
    return True, f"{current}"


def _isolated(v: _StagingView) -> tuple[bool, str]:
    check = guards.isolation(v.proj, v.name)
    wired = v.version.get("database")
    if wired and wired != v.env.database.name:
        return False, f"the service uses database {wired}, not {v.env.database.name}"
    return check.ok, check.detail


# What makes staging a rehearsal of prod, in the order the probes run: the version the features
# check reads is the one the version and isolation checks judge.
_PROFILE_CHECKS: tuple[tuple[str, Callable[[_StagingView], tuple[bool, str]]], ...] = (
    ("environment", _environment_detected),
    ("config", _config_posture),
    ("directories", _directories_present),
    ("features", _features_all_on),
    ("thresholds", _thresholds_derived),
    ("services", _services_up),
    ("version", _serving_current_release),
    ("isolation", _isolated),
)


def profile_checks(
    proj: Project, name: str = "staging", *, process_env: Mapping[str, str] | None = None
) -> list[Probe]:
    """What makes staging a faithful rehearsal of prod, each as a smoke probe (well under 2 s)."""

    env = proj.env(name)
    layout = Layout(str(env.data_dir))
    # the service's side: every host's release and log directories; version from the primary
    todo = group.targets(proj, name) if group.is_rolling(proj, name) else []
    view = _StagingView(
        proj=proj,
        name=name,
        env=env,
        layout=layout,
        targets=todo,
        app_host=todo[0].host if todo else Host(),
        app_layout=todo[0].layout if todo else layout,
        address=todo[0].bind if todo else "127.0.0.1",
        process_env=process_env or {},
    )
    try:
        return [_probe(n, functools.partial(check, view)) for n, check in _PROFILE_CHECKS]
    finally:
        for t in todo:
            t.host.close()


def refresh_summary(result: dict[str, Any]) -> tuple[str, list[tuple[Any, ...]], str]:
    """What `refresh` returned, for people: (title, [(table, rows, anonymized rows)], the values
    still equal to the source's, or "not anonymized")."""
    title = f"refreshed from {result['source']} backup {result['backup']}" + (
        " (fresh dump)" if result["fresh_dump"] else ""
    )
    rows = [(t, n, result["updated"].get(t, "-")) for t, n in result["rows"].items()]
    leaks = ", ".join(f"{k} {v}" for k, v in result["leaks"].items()) or "not anonymized"
    return title, rows, leaks


def smoke_probes(
    proj: Project, name: str, *, process_env: Mapping[str, str] | None = None
) -> list[Probe]:
    """`inv <env>.smoke`: the serving release probed on every host; staging adds its profile."""
    from deploy.engine.runtimes import close, runtime_for

    rt, targets = runtime_for(proj, name)
    try:
        probes = rt.probe_serving()
    finally:
        close(targets)
    if name == "staging":
        probes += profile_checks(proj, name, process_env=process_env)
    return probes
