"""Release gate runner: pick the stage from the ref, run its gates in parallel on a snapshot, decide, record.

What is judged comes from the release; who judges comes from the operator. The release's files
(code, tests, docs, env files, migrations, the approved dependency list) are read from a `git
archive` snapshot of the commit, never from the working tree. The policy (stages, gate settings,
locked budgets) is the commit's own stageflow.toml (`git show COMMIT:stageflow.toml`): an
uncommitted edit cannot relax it, and the report records its hash so that prod can check the
verdict was reached under the policy the approvers saw. The runtime state (staging's metrics and
logs) is read from the operator's checkout.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from deploy import git_archive
from deploy.commands import git as gitcmd
from deploy.commands import release as relcmd
from deploy.errors import (
    ConfigError,
    DeployError,
    GateFailed,
    GuardRefused,
    ServiceError,
    UsageError,
    clip,
)
from deploy.gates import CommandTimedOut, GateContext, GateResult, Outcome, Snapshot, git
from deploy.gates.cache import VerdictCache, cache_key
from deploy.gates.report import Report
from deploy.gates.stages import GATE_NAMES, GUARD, Stage, load_stages
from deploy.hosts import run_process
from deploy.secrets import Secret, scrub, scrub_value
from deploy.secrets_file import known_secrets

# each gate's module, imported by the gate's own thread when it runs: the import (the migrations
# gate's driver, say) overlaps the other gates instead of delaying them all
GATES: dict[str, str] = {
    "check": "deploy.gates.check",
    "test": "deploy.gates.tests",
    "docs-freshness": "deploy.gates.docs",
    "migrations": "deploy.gates.migrations",
    "deps": "deploy.gates.deps",
    "policy-drift": "deploy.gates.policy_drift",
    "budgets": "deploy.gates.budgets",
    "observability": "deploy.gates.observability",
    "eval": "deploy.gates.evals",
    GUARD: "deploy.gates.promotion_guard",
}
assert tuple(GATES) == GATE_NAMES
DEFAULT_TIMEOUT_S = {"test": 900.0, "migrations": 900.0, "eval": 900.0}
REPORT_DIR = Path("dist") / "release-gate"
# Beyond its command's own timeout, time a gate may spend on its own work before it counts as hung.
GRACE_S = 30.0


@dataclass(frozen=True)
class GateRequest:
    """What the operator asked for (`inv release.gate` flags)."""

    root: Path
    ref: str | None = None
    db_url: Secret | None = None
    use_cache: bool = True
    break_glass: str | None = None
    only: tuple[str, ...] = ()
    actor: str = "unknown"
    actor_is_human: bool = True  # automation may run the gate, never break its glass
    # signs an override's statement with the actor's key: prod counts only signed overrides
    sign: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    # the operator's environment: its STAGEFLOW_<ENV>_<KEY> secrets are scrubbed from the report
    process_env: Mapping[str, str] = field(default_factory=dict, repr=False)


def default_ref(root: Path) -> str:
    """The current branch, or on a detached HEAD the tag that points at it."""
    branch = git(gitcmd.current_branch(repo=root)).stdout.strip()
    if branch:
        return branch
    tags = git(gitcmd.tags_at("HEAD", repo=root)).stdout.split()
    if tags:
        return tags[0]
    raise UsageError("HEAD is detached and no tag points at it", hint="pass --ref BRANCH_OR_TAG")


def resolve_ref(root: Path, ref: str | None) -> tuple[str, str, str]:
    """(ref, commit, tree) for a branch, tag or commit; a ref git cannot resolve is a UsageError."""
    if git(gitcmd.git_dir(repo=root)).exit_code != 0:
        raise UsageError(f"{root} is not a git repository", hint="run from the project's checkout")
    name = ref or default_ref(root)
    if name.startswith("-"):
        raise UsageError(f"bad ref {clip(name)!r}", hint="pass a branch, tag or commit")
    commit = git(gitcmd.rev_parse(name, repo=root)).stdout.strip()
    if not commit:
        raise UsageError(
            f"ref {clip(name)!r} does not name a commit",
            hint="check `git tag` / `git branch`, or fetch it first",
        )
    tree = git(gitcmd.rev_parse(name, kind="tree", repo=root)).stdout.strip()
    return name, commit, tree


def policy_at(root: Path, commit: str) -> tuple[dict[str, Any], str]:
    """(policy, sha256 of its text) of the commit's own stageflow.toml, never the working tree's."""
    res = git(gitcmd.show_file(commit, "stageflow.toml", repo=root))
    if res.exit_code != 0:
        raise ConfigError(
            f"{commit[:12]} has no stageflow.toml",
            hint="commit the policy: the gate reads it from the commit it judges",
        )
    try:
        policy = tomllib.loads(res.stdout)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{commit[:12]}:stageflow.toml: {exc}", hint="fix the TOML syntax"
        ) from None
    return policy, hashlib.sha256(res.stdout.encode()).hexdigest()


def snapshot(root: Path, commit: str, dest: Path) -> None:
    """The commit's files, exactly as committed: gates judge the release, not the working tree.
    Extracted by tar, as a release is (Python's tarfile took 0.3 s of every gate run for a few
    hundred files); a git tree holds no absolute or parent paths, nor a path through a link."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stageflow-snapshot-") as tmp:
        tarball = Path(tmp) / f"{commit}.tar"
        try:  # as a release is made: the commit's bytes, whatever the repository's .git says
            git_archive.write(root, commit, tarball)
        except ServiceError as exc:
            raise UsageError(exc.message, hint=exc.hint) from None
        res = run_process(relcmd.extract_files(str(tarball), str(dest)), timeout=300)
        if res.exit_code != 0:
            why = "ran longer than 300s" if res.timed_out else res.stderr.strip()
            raise UsageError(f"the snapshot of {commit[:12]} could not be extracted: {clip(why)}")


def gate_config(policy: Mapping[str, Any], name: str) -> dict[str, Any]:
    table = policy.get("gates", {})
    if not isinstance(table, dict):
        raise ConfigError("[gates] must be a table")
    config = table.get(name, {})
    if not isinstance(config, dict):
        raise ConfigError(f"[gates.{name}] must be a table")
    return config


def timeout_for(policy: Mapping[str, Any], name: str) -> float:
    config = gate_config(policy, name)
    value = config.get("timeout_s", policy.get("gates", {}).get("timeout_s"))
    if value is None:
        return DEFAULT_TIMEOUT_S.get(name, 300.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"[gates.{name}] timeout_s must be a positive number of seconds")
    return float(value)


def _scrubbed(value: Any, secrets: tuple[Secret, ...]) -> Any:
    """Gate details are evidence for people; a secret must never reach the report."""
    return scrub_value(json.loads(json.dumps(value, default=str)), secrets)


def run_one(name: str, ctx: GateContext, cache: VerdictCache, *, use_cache: bool) -> GateResult:
    """One gate, fail closed: an exception, a timeout or an unknown gate is a verdict, not a crash."""
    start = time.monotonic()
    key: str | None = None
    if name not in GATES:
        outcome = Outcome("error", f"unknown gate {name!r}")
    else:
        try:
            module: ModuleType = importlib.import_module(GATES[name])
            found = module.inputs(ctx)
            key = None if found is None else cache_key(name, ctx.config, found)
            hit = cache.get(name, key) if (key and use_cache) else None
            if hit is not None:
                outcome, took = hit
                return GateResult(
                    name,
                    ctx.requirement,
                    outcome.status,
                    outcome.summary,
                    took,
                    cached=True,
                    details=outcome.details,
                )
            outcome = module.run(ctx)
        except CommandTimedOut as exc:
            outcome = Outcome("timeout", str(exc))
        except DeployError as exc:
            outcome = Outcome("error", exc.line())
        except Exception as exc:  # a bug in a gate must still fail closed, not crash the others
            outcome = Outcome("error", f"{type(exc).__name__}: {exc}")
    outcome = Outcome(
        outcome.status, scrub(outcome.summary, ctx.secrets), _scrubbed(outcome.details, ctx.secrets)
    )
    took = time.monotonic() - start
    if key is not None:
        cache.put(name, key, outcome, took)
    return GateResult(
        name, ctx.requirement, outcome.status, outcome.summary, took, details=outcome.details
    )


def run_parallel(
    jobs: list[tuple[str, str]],
    one: Callable[[str, str], GateResult],
    deadlines: Mapping[str, float],
    *,
    on_finish: Callable[[GateResult], None] | None = None,
) -> dict[str, GateResult]:
    """Each gate in its own daemon thread; one that outlives its deadline is reported as a timeout.

    Daemon threads, not a pool: a gate stuck outside any subprocess (a hung socket) must not keep
    the whole run, or the interpreter's exit, waiting for it.
    """
    results: dict[str, GateResult] = {}
    lock = threading.Lock()

    def record(result: GateResult) -> None:
        with lock:
            if result.name in results:
                return  # already declared timed out
            results[result.name] = result
        if on_finish:
            on_finish(result)

    def work(name: str, requirement: str) -> None:
        start = time.monotonic()
        try:
            result = one(name, requirement)
        except Exception as exc:  # progress display or bookkeeping failed: still a verdict
            result = GateResult(
                name,
                requirement,
                "error",
                f"{type(exc).__name__}: {exc}",  # type: ignore[arg-type]
                time.monotonic() - start,
            )
        record(result)

    threads = []
    for name, requirement in jobs:
        thread = threading.Thread(
            target=work, args=(name, requirement), daemon=True, name=f"gate-{name}"
        )
        thread.start()
        threads.append((name, requirement, thread))
    start = time.monotonic()
    for name, requirement, thread in threads:
        thread.join(max(0.0, start + deadlines[name] - time.monotonic()))
        if thread.is_alive():
            record(
                GateResult(
                    name,
                    requirement,
                    "timeout",  # type: ignore[arg-type]
                    f"did not finish within {deadlines[name]:g}s",
                    deadlines[name],
                )
            )
    return dict(results)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plan(request: GateRequest) -> tuple[Stage, str, str, str, list[tuple[str, str]]]:
    """Read-only: (stage, ref, commit, tree, [(gate, requirement)]) for what run() would do."""
    ref, commit, tree = resolve_ref(request.root, request.ref)
    policy, _ = policy_at(request.root, commit)
    stages = load_stages(policy)
    stage = stages.match(ref)
    gates = list(stage.gates)
    if request.only:
        unknown = [g for g in request.only if g not in GATE_NAMES]
        if unknown:
            raise UsageError(
                f"--only names unknown gate(s): {', '.join(unknown)}",
                hint=f"known: {', '.join(GATE_NAMES)}",
            )
        absent = [g for g in request.only if g not in dict(gates)]
        if absent:
            raise UsageError(
                f"stage {stage.name} has no gate(s) {', '.join(absent)}",
                hint="see `inv release.stages`",
            )
        gates = [(g, r) for g, r in gates if g in request.only]
    return stage, ref, commit, tree, gates


def run(
    request: GateRequest,
    *,
    on_start: Callable[[str], None] | None = None,
    on_finish: Callable[[GateResult], None] | None = None,
) -> Report:
    """Run the gates, write the report (JSON + Markdown) and the audit; never raises for a failed gate."""
    _check_break_glass(request)
    stage, ref, commit, tree_hash, gates = plan(request)
    policy, policy_sha256 = policy_at(request.root, commit)
    report_dir = request.root / REPORT_DIR
    cache = VerdictCache(report_dir / "cache")
    report = Report(
        stage=stage.name,
        ref=ref,
        commit=commit,
        tree=tree_hash,
        policy_sha256=policy_sha256,
        started=utc_now(),
        selection=list(request.only) or None,
    )
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="stageflow-gate-"))
    files, extracting = _extract(request.root, commit, workdir)
    try:
        base = GateContext(
            name="",
            root=request.root,
            tree_dir=workdir,
            ref=ref,
            commit=commit,
            tree_hash=tree_hash,
            stage=stage.name,
            requirement="report_only",
            config={},
            policy=policy,
            report_dir=report_dir,
            timeout_s=300.0,
            python=sys.executable,
            db_url=request.db_url,
            known=known_secrets(request.root, process_env=request.process_env),
            snapshot=files,
        )
        results = _run_gates(
            base, stage, gates, cache, request=request, on_start=on_start, on_finish=on_finish
        )
        extracting.join()
        if files.error is not None:  # the verdicts of gates that had no files mean nothing
            raise files.error
    finally:
        extracting.join()
        shutil.rmtree(workdir, ignore_errors=True)
    _decide(report, results, gates, request=request, report_dir=report_dir)
    report.finished = utc_now()
    report.duration_s = time.monotonic() - started
    report = report.scrubbed(base.secrets)
    report.write(report_dir)
    if report.overrides:
        _audit(report_dir / "audit.jsonl", report)
    return report


def _extract(root: Path, commit: str, workdir: Path) -> tuple[Snapshot, threading.Thread]:
    """The commit's snapshot, extracted in a thread while the gates start: their imports, a
    cached verdict, the migrations gate's reading of the target overlap it; what reads the
    files waits for them (GateContext.tree)."""
    files = Snapshot(workdir)
    extracting = threading.Thread(
        target=files.fill,
        args=(lambda dest: snapshot(root, commit, dest),),
        daemon=True,
        name="gate-snapshot",
    )
    extracting.start()
    return files, extracting


def _check_break_glass(request: GateRequest) -> None:
    """Breaking the glass needs a reason and a human, checked before any gate runs."""
    if request.break_glass is not None and not request.break_glass.strip():
        raise UsageError(
            "--break-glass needs a reason", hint='--break-glass "why this cannot wait"'
        )
    if request.break_glass is not None and not request.actor_is_human:
        raise GuardRefused(
            f"break-glass needs a human; {request.actor} is automation",
            hint="a person runs it, with STAGEFLOW_ACTOR_KIND=human and STAGEFLOW_ACTOR=<name>",
        )


def _gate_context(base: GateContext, name: str, requirement: str, **extra: Any) -> GateContext:
    """The snapshot's context with this gate's own settings and timeout from the policy."""
    return replace(
        base,
        name=name,
        requirement=requirement,  # type: ignore[arg-type]
        config={**gate_config(base.policy, name), **extra},
        timeout_s=timeout_for(base.policy, name),
    )


def _run_gates(
    base: GateContext,
    stage: Stage,
    gates: list[tuple[str, str]],
    cache: VerdictCache,
    *,
    request: GateRequest,
    on_start: Callable[[str], None] | None,
    on_finish: Callable[[GateResult], None] | None,
) -> dict[str, GateResult]:
    """The stage's gates in parallel, then the promotion guard, which judges their results."""

    def one(name: str, requirement: str) -> GateResult:
        if on_start:
            on_start(name)
        ctx = _gate_context(base, name, requirement)
        return run_one(name, ctx, cache, use_cache=request.use_cache)

    parallel = [(g, r) for g, r in gates if g != GUARD]
    deadlines = {g: timeout_for(base.policy, g) + GRACE_S for g, _ in parallel}
    results = run_parallel(parallel, one, deadlines, on_finish=on_finish)
    if GUARD in dict(gates):
        guard_ctx = replace(
            _gate_context(base, GUARD, dict(gates)[GUARD], required=stage.required()),
            results=dict(results),
        )
        if on_start:
            on_start(GUARD)
        results[GUARD] = run_one(GUARD, guard_ctx, cache, use_cache=False)
        if on_finish:
            on_finish(results[GUARD])
    return results


def _decide(
    report: Report,
    results: Mapping[str, GateResult],
    gates: list[tuple[str, str]],
    *,
    request: GateRequest,
    report_dir: Path,
) -> None:
    """The report's gates, the required ones that block, and the verdict (with any override)."""
    report.gates = [results[g] for g, _ in gates]
    report.blocking = [
        g.name for g in report.gates if g.requirement == "required" and not g.passing
    ]
    sbom = report_dir / f"{report.commit}.sbom.cdx.json"
    if "deps" in results and sbom.exists():
        report.artifacts["sbom"] = sbom.name
    if report.blocking and request.break_glass:
        when, reason = utc_now(), request.break_glass.strip()
        proof = _override_proof(report, reason, request)
        report.overrides = [
            {"gate": g, "actor": request.actor, "time": when, "reason": reason, **proof}
            for g in report.blocking
        ]
        report.verdict = "passed-with-override"
    elif report.blocking:
        report.verdict = "failed"
    else:
        report.verdict = "partial" if request.only else "passed"


def override_statement(report: Report, reason: str) -> dict[str, Any]:
    """What a break-glass at the gate attests: these blocking gates of this commit, overridden."""
    return {"commit": report.commit, "tree": report.tree, "stage": report.stage,
            "gates": list(report.blocking), "reason": reason}  # fmt: skip


def _override_proof(report: Report, reason: str, request: GateRequest) -> dict[str, Any]:
    """The actor's signature over the override, or {} when they hold no key: the override then
    stands for dev and staging, and prod refuses it (promotion.gate_problem)."""
    if request.sign is None:
        return {}
    try:
        return request.sign(override_statement(report, reason))
    except DeployError:
        return {}


def _audit(path: Path, report: Report) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for o in report.overrides:
            fh.write(
                json.dumps(
                    {
                        "time": o["time"],
                        "actor": o["actor"],
                        "action": "release-gate.break-glass",
                        "gate": o["gate"],
                        "stage": report.stage,
                        "ref": report.ref,
                        "commit": report.commit,
                        "reason": o["reason"],
                    },
                    sort_keys=True,
                )
                + "\n"
            )


def enforce(report: Report) -> None:
    """Raise GateFailed (exit 5) when a required gate blocks and nobody broke the glass."""
    if report.verdict != "failed":
        return
    reasons = []
    cached = []
    for name in report.blocking:
        g = report.gate(name)
        reasons.append(
            f"{name}: {g.status if g else 'missing'}" + (" (cached)" if g and g.cached else "")
        )
        cached += [name] if g and g.cached else []
    # a verdict kept from an earlier run of the same inputs: what changed outside them (a
    # database the tests reach, a server that was down) is seen only by running again
    again = f"; `--no-cache` runs {', '.join(cached)} again" if cached else ""
    raise GateFailed(
        f"release gate failed at stage {report.stage} for {report.ref}: {'; '.join(reasons)}",
        hint=f"see dist/release-gate/{report.stem}.md{again}",
    )
