"""Gate `deps`: a CycloneDX 1.5 SBOM of the installed distributions, checked against the approved list."""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from deploy.errors import ConfigError
from deploy.gates import GateContext, Outcome

DEFAULT_APPROVED = "deploy/gates/approved-deps.toml"
SELF = "stageflow"


@dataclass(frozen=True)
class Component:
    name: str  # normalized (PEP 503)
    version: str
    license: str


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _license(dist: metadata.Distribution) -> str:
    md = dist.metadata
    expression = md.get("License-Expression")
    if expression:
        return expression.strip()
    classifiers = [
        c.split("::")[-1].strip()
        for c in md.get_all("Classifier") or []
        if c.startswith("License ::") and c.count("::") >= 2
    ]
    if classifiers:
        return " OR ".join(sorted(set(classifiers)))
    text = (md.get("License") or "").strip()
    # Some projects paste the whole license text into the field; only a short name says anything.
    if text and "\n" not in text and len(text) <= 80 and text.upper() != "UNKNOWN":
        return text
    return "UNKNOWN"


def installed() -> list[Component]:
    seen: dict[str, Component] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if not name:
            continue
        key = normalize(name)
        seen.setdefault(key, Component(key, dist.version, _license(dist)))
    return sorted(seen.values(), key=lambda c: c.name)


def sbom(components: list[Component], *, commit: str, ref: str) -> dict[str, Any]:
    """CycloneDX 1.5 JSON; serial number and timestamp are derived so identical inputs give identical files."""
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'stageflow:{commit}')}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "stageflow release gate"}]},
            "component": {
                "type": "application",
                "name": SELF,
                "version": ref,
                "bom-ref": f"{SELF}@{commit}",
            },
        },
        "components": [
            {
                "type": "library",
                "bom-ref": f"pkg:pypi/{c.name}@{c.version}",
                "name": c.name,
                "version": c.version,
                "purl": f"pkg:pypi/{c.name}@{c.version}",
                "licenses": (
                    [{"expression": c.license}]
                    if " OR " in c.license or " AND " in c.license
                    else [{"license": {"name": c.license}}]
                ),
            }
            for c in components
        ],
    }


def approved_path(ctx: GateContext) -> Path:
    return ctx.tree / str(ctx.config.get("approved", DEFAULT_APPROVED))


def load_approved(path: Path, *, shown: str | None = None) -> dict[str, dict[str, Any]]:
    """The approved list; shown is its path as the project names it, for the hint."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"{path.name} does not exist",
            hint=f"write a first one to review: python -m deploy.gates.deps > {shown or path.name}",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None
    packages = data.get("packages", {})
    if not isinstance(packages, dict):
        raise ConfigError(
            f"{path.name}: [packages] must be a table of name -> {{version, licenses}}"
        )
    return {normalize(k): v for k, v in packages.items() if isinstance(v, dict)}


def check(components: list[Component], approved: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for c in components:
        if c.name == SELF:
            continue
        entry = approved.get(c.name)
        if entry is None:
            problems.append(f"{c.name} {c.version} is not approved")
            continue
        try:
            if Version(c.version) not in SpecifierSet(str(entry.get("version", ""))):
                problems.append(
                    f"{c.name} {c.version} is outside approved {entry.get('version')!r}"
                )
        except (InvalidSpecifier, InvalidVersion):
            problems.append(
                f"{c.name}: approved range {entry.get('version')!r} or version {c.version} is invalid"
            )
        licenses = entry.get("licenses", [])
        if c.license not in licenses and "*" not in licenses:
            problems.append(f"{c.name} license {c.license!r} is not among approved {licenses!r}")
    return problems


def sbom_path(ctx: GateContext) -> Path:
    return ctx.report_dir / f"{ctx.commit}.sbom.cdx.json"


def inputs(ctx: GateContext) -> list[Any]:
    # The SBOM is the evidence of this run, so it is written even when the verdict comes from cache.
    components = installed()
    path = sbom_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(sbom(components, commit=ctx.commit, ref=ctx.ref), indent=2) + "\n",
        encoding="utf-8",
    )
    # the commit too: a verdict names its commit's SBOM, so another commit's is not this one's
    return [[c.__dict__ for c in components], approved_path(ctx), ctx.commit]


def run(ctx: GateContext) -> Outcome:
    components = installed()
    shown = str(ctx.config.get("approved", DEFAULT_APPROVED))
    problems = check(components, load_approved(approved_path(ctx), shown=shown))
    details = {"sbom": sbom_path(ctx).name, "components": len(components), "problems": problems}
    if problems:
        return Outcome(
            "failed",
            f"{len(problems)} unapproved: {problems[0]} (review it, then add it to {shown}: "
            "python -m deploy.gates.deps prints an entry for each installed distribution)",
            details,
        )
    return Outcome(
        "passed", f"{len(components)} components approved; SBOM {sbom_path(ctx).name}", details
    )


def approved_toml(components: list[Component]) -> str:
    """An approved list that admits today's venv: same major version, today's license."""
    lines = [
        "# Approved dependencies for the release gate's `deps` gate: name -> version range, licenses.",
        "# Generated from the venv by `python -m deploy.gates.deps`; edit by review.",
        "",
    ]
    for c in components:
        if c.name == SELF:
            continue
        try:
            major = Version(c.version).major
            rng = f">={c.version},<{major + 1}"
        except InvalidVersion:
            rng = f"=={c.version}"
        lines += [
            f"[packages.{json.dumps(c.name)}]",
            f"version = {json.dumps(rng)}",
            f"licenses = [{json.dumps(c.license)}]",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(approved_toml(installed()), end="")
