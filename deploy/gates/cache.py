"""Gate verdict cache: a passed or failed verdict is reused while the sha256 of its inputs is unchanged."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.gates import CACHEABLE, Outcome

CACHE_VERSION = 1


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _item(value: Any) -> Any:
    """Files count by their base name and content: never their directory (each run's snapshot is
    a fresh temp dir) nor their mtime."""
    if isinstance(value, Path):
        try:
            return ["file", value.name, hashlib.sha256(value.read_bytes()).hexdigest()]
        except FileNotFoundError:
            return ["file", value.name, "missing"]
    if isinstance(value, list | tuple):
        return [_item(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _item(v) for k, v in value.items()}
    return value


@functools.cache
def engine_fingerprint() -> str:
    """The engine's own code: a verdict a gate gave under other code is not reused (an upgrade of
    stageflow may judge the same commit otherwise)."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cache_key(
    gate: str, config: Mapping[str, Any], inputs: Sequence[Any], *, engine: str | None = None
) -> str:
    engine = engine_fingerprint() if engine is None else engine
    blob = canonical([CACHE_VERSION, engine, gate, dict(config), _item(list(inputs))])
    return hashlib.sha256(blob.encode()).hexdigest()


class VerdictCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, gate: str, key: str) -> Path:
        return self.directory / f"{gate}-{key}.json"

    def get(self, gate: str, key: str) -> tuple[Outcome, float] | None:
        try:
            data = json.loads(self._path(gate, key).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        if data.get("status") not in CACHEABLE:
            return None
        return (
            Outcome(data["status"], str(data.get("summary", "")), dict(data.get("details", {}))),
            float(data.get("duration_s", 0.0)),
        )

    def put(self, gate: str, key: str, outcome: Outcome, duration_s: float) -> None:
        # error and timeout say nothing about the inputs, only about the moment: never reuse them.
        if outcome.status not in CACHEABLE:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(gate, key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(
            canonical(
                {
                    "gate": gate,
                    "key": key,
                    "status": outcome.status,
                    "summary": outcome.summary,
                    "details": outcome.details,
                    "duration_s": duration_s,
                }
            ),
            encoding="utf-8",
        )
        os.replace(tmp, path)
