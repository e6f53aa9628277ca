"""Release gate reports: dist/release-gate/<sha>.json for machines, <sha>.md for people, and the live board.

JSON schema (schema_version 1), one file per gated commit, rewritten on every run:

    {
      "schema_version": 1,
      "stage": "PRE_GA",                  # PILOT | PRE_GA | GA (from [stages], first match wins)
      "ref": "v1.4.0-rc.1",               # what the operator asked for
      "commit": "<40 hex>",               # git rev-parse REF^{commit}
      "tree": "<40 hex>",                 # git rev-parse REF^{tree}
      "started": "2026-01-01T00:00:00Z",  # UTC
      "finished": "2026-01-01T00:00:09Z",
      "duration_s": 9.1,
      "selection": null,                  # null, or the gate names given with --only
      "gates": [
        {
          "name": "test",                 # check | test | docs-freshness | migrations | deps |
                                          # policy-drift | budgets | observability | eval |
                                          # promotion_guard
          "requirement": "required",      # required | report_only
          "status": "failed",             # passed | failed | error | skipped | timeout
          "cached": false,                # true: verdict reused, inputs unchanged
          "duration_s": 2.4,              # of the run that produced the verdict
          "summary": "1 failing test: tests/unit/test_x.py::test_y",
          "details": {}                   # gate-specific evidence (failing ids, hashes, timings)
        }
      ],
      "blocking": ["test"],               # required gates that did not pass (before overrides)
      "overrides": [                      # --break-glass: one per blocking gate
        {"gate": "test", "actor": "alice@example.org", "time": "...", "reason": "..."}
      ],
      "artifacts": {"sbom": "<sha>.sbom.cdx.json"},
      "verdict": "failed"                 # passed | failed | passed-with-override | partial
    }

A required gate passes only with status passed or skipped; error, timeout and unknown gates fail
closed. "partial" means --only left gates out and none of those run blocked: it is never a release
pass, and it is written to <sha>.partial.json / .md so it never replaces the full report. The same
commit gated under two refs (v1.4.0-rc.1 and v1.4.0) keeps the latest run: check "stage" too.
Beside the report: <sha>.sbom.cdx.json (CycloneDX 1.5), audit.jsonl (one line per override) and
cache/ (one file per gate verdict, keyed by the sha256 of the gate's inputs).
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # rich loads where a table is drawn: a gate run for a script draws none
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

from deploy.gates import GateResult
from deploy.secrets import Secret, scrub_value

SCHEMA_VERSION = 1
_STYLE = {
    "passed": "green",
    "skipped": "cyan",
    "failed": "red",
    "error": "red",
    "timeout": "red",
    "running": "yellow",
    "waiting": "dim",
    "cached": "green",
}


@dataclass
class Report:
    stage: str
    ref: str
    commit: str
    tree: str
    started: str
    policy_sha256: str = ""  # sha256 of the commit's stageflow.toml the verdict was reached under
    finished: str = ""
    duration_s: float = 0.0
    selection: list[str] | None = None
    gates: list[GateResult] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    verdict: str = "failed"

    @property
    def stem(self) -> str:
        """File name stem: a partial run (--only) must not replace the commit's full verdict."""
        return f"{self.commit}.partial" if self.selection else self.commit

    def gate(self, name: str) -> GateResult | None:
        return next((g for g in self.gates if g.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "stage": self.stage,
            "ref": self.ref,
            "commit": self.commit,
            "tree": self.tree,
            "policy_sha256": self.policy_sha256,
            "started": self.started,
            "finished": self.finished,
            "duration_s": round(self.duration_s, 3),
            "selection": self.selection,
            "gates": [g.to_dict() for g in self.gates],
            "blocking": self.blocking,
            "overrides": self.overrides,
            "artifacts": self.artifacts,
            "verdict": self.verdict,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str)

    def to_markdown(self) -> str:
        lines = [
            f"# Release gate: {self.ref} ({self.stage})",
            "",
            f"- Commit: `{self.commit}`",
            f"- Tree: `{self.tree}`",
            f"- Started: {self.started}, finished: {self.finished} ({self.duration_s:.1f}s)",
            f"- Verdict: **{self.verdict}**",
        ]
        if self.selection:
            lines.append(f"- Partial run (--only): {', '.join(self.selection)}")
        lines += [
            "",
            "| Gate | Requirement | Status | Cached | Time (s) | Summary |",
            "|---|---|---|---|---|---|",
        ]
        for g in self.gates:
            summary = g.summary.replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {g.name} | {g.requirement} | {g.status} | "
                f"{'yes' if g.cached else 'no'} | {g.duration_s:.2f} | {summary} |"
            )
        lines += ["", "## Blocking reasons", ""]
        if self.blocking:
            for name in self.blocking:
                g = self.gate(name)
                lines.append(
                    f"- {name}: {g.status.upper() if g else 'MISSING'}: "
                    f"{g.summary if g else 'not run'}"
                )
        else:
            lines.append("None.")
        if self.overrides:
            lines += ["", "## Overrides (break-glass)", ""]
            for o in self.overrides:
                lines.append(
                    f"- {o['gate']}: overridden by {o['actor']} at {o['time']}: {o['reason']}"
                )
        failing_report_only = [
            g for g in self.gates if g.requirement == "report_only" and not g.passing
        ]
        if failing_report_only:
            lines += ["", "## Report-only findings (not blocking)", ""]
            lines += [f"- {g.name}: {g.status}: {g.summary}" for g in failing_report_only]
        return "\n".join(lines) + "\n"

    def scrubbed(self, secrets: Sequence[Secret]) -> Report:
        """This report with every secret and its derived forms hidden, wherever a gate's words
        or an operator's reached it (a verdict cached before, a break-glass reason)."""
        if not secrets:
            return self
        clean = functools.partial(scrub_value, secrets=tuple(secrets))
        gates = [replace(g, summary=clean(g.summary), details=clean(g.details)) for g in self.gates]
        return replace(
            self,
            ref=clean(self.ref),
            gates=gates,
            overrides=clean(self.overrides),
            artifacts=clean(self.artifacts),
        )

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        json_path, md_path = directory / f"{self.stem}.json", directory / f"{self.stem}.md"
        json_path.write_text(self.to_json() + "\n", encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        if self.verdict != "partial":
            # <sha>.<STAGE>.json keeps each stage's verdict: a later PILOT run of the same commit
            # must not erase the GA verdict that prod promotion reads
            stage_path = directory / f"{self.stem}.{self.stage}.json"
            stage_path.write_text(self.to_json() + "\n", encoding="utf-8")
        return json_path, md_path


def results_table(report: Report) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"release gate {report.ref} @ {report.commit[:12]} ({report.stage})")
    for column in ("gate", "requirement", "status", "time", "summary"):
        table.add_column(column)
    for g in report.gates:
        status = f"{g.status} (cached)" if g.cached else g.status
        table.add_row(
            g.name,
            g.requirement,
            _styled(g.status, status),
            f"{g.duration_s:.1f}s",
            escape(g.summary),
        )
    return table


def _styled(status: str, text: str) -> str:
    style = _STYLE.get(status)
    return f"[{style}]{text}[/]" if style else text


class Board:
    """Live progress: a rich table on a terminal (given its console), one plain line per
    finished gate otherwise (to stream, by default the console's)."""

    def __init__(
        self,
        gates: Sequence[tuple[str, str]],
        *,
        console: Console | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.console = console
        self.stream = stream or (sys.stderr if console and console.stderr else sys.stdout)
        self.live_mode = bool(console and console.is_terminal)
        self.rows: dict[str, dict[str, Any]] = {
            name: {"requirement": req, "status": "waiting", "start": 0.0, "time": "", "summary": ""}
            for name, req in gates
        }
        self._live: Live | None = None
        # gates finish in threads of their own: one lock, and each line written in one call,
        # so two verdicts never interleave ("...prod posture strictbudgets: passed")
        self._lock = threading.Lock()

    def __enter__(self) -> Board:
        if self.live_mode:
            from rich.live import Live

            # rendered afresh on every refresh, so a running gate's time keeps counting
            self._live = Live(
                console=self.console,
                refresh_per_second=8,
                transient=True,
                get_renderable=self._render,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def _render(self) -> Table:
        from rich.table import Table

        table = Table(title="release gate")
        for column in ("gate", "requirement", "status", "time"):
            table.add_column(column)
        now = time.monotonic()
        for name, row in list(self.rows.items()):
            elapsed = row["time"] or (
                f"{now - row['start']:.1f}s" if row["status"] == "running" else ""
            )
            table.add_row(
                name, row["requirement"], _styled(row["status"].split()[0], row["status"]), elapsed
            )
        return table

    def started(self, name: str) -> None:
        with self._lock:
            row = self.rows.setdefault(name, {"requirement": "", "time": "", "summary": ""})
            row.update(status="running", start=time.monotonic())
            self._refresh()

    def finished(self, result: GateResult) -> None:
        status = f"{result.status} (cached)" if result.cached else result.status
        with self._lock:
            row = self.rows.setdefault(
                result.name, {"requirement": result.requirement, "start": 0.0}
            )
            row.update(status=status, time=f"{result.duration_s:.1f}s", summary=result.summary)
            if self.live_mode:
                self._refresh()
                return
            summary = " ".join(result.summary.split())
            stream = self.stream
            stream.write(f"{result.name}: {status} in {result.duration_s:.1f}s: {summary}\n")
            stream.flush()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
