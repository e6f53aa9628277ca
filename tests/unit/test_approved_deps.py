"""The project's own `deps` gate passes on the venv `make setup` builds: every package it installs
(the test extras included) is on the reviewed list, so GA (and `make demo`) are not blocked by it."""

from __future__ import annotations

from pathlib import Path

from deploy.gates import deps

APPROVED = Path(__file__).resolve().parents[2] / "deploy" / "gates" / "approved-deps.toml"


def test_every_package_of_the_projects_venv_is_approved() -> None:
    assert deps.check(deps.installed(), deps.load_approved(APPROVED)) == []


def test_an_unapproved_distribution_says_how_to_approve_it(tmp_path: Path) -> None:
    from deploy.gates import GateContext

    (tmp_path / "approved-deps.toml").write_text("[packages]\n", encoding="utf-8")
    ctx = GateContext("deps", tmp_path, tmp_path, "v1", "c" * 40, "t" * 40, "GA", "required",
                      {"approved": "approved-deps.toml"}, {}, tmp_path, 60.0)  # fmt: skip
    outcome = deps.run(ctx)
    assert outcome.status == "failed"
    assert "\n" not in outcome.summary
    assert "add it to approved-deps.toml" in outcome.summary
    assert "python -m deploy.gates.deps" in outcome.summary


def test_a_verdict_names_its_own_commit_s_sbom(tmp_path: Path) -> None:
    from deploy.gates import GateContext
    from deploy.gates.cache import VerdictCache
    from deploy.gates.runner import run_one

    cache = VerdictCache(tmp_path / "cache")
    for commit in ("a" * 40, "b" * 40):
        ctx = GateContext("deps", tmp_path, tmp_path, "v1", commit, "t" * 40, "GA", "required",
                          {"approved": str(APPROVED)}, {}, tmp_path, 60.0)  # fmt: skip
        result = run_one("deps", ctx, cache, use_cache=True)
        assert result.status == "passed", result.summary
        assert f"SBOM {commit}.sbom.cdx.json" in result.summary
        assert (tmp_path / f"{commit}.sbom.cdx.json").is_file()
    # the same commit again is answered from the cache
    assert run_one("deps", ctx, cache, use_cache=True).cached
