"""The service's own secrets through `inv`: --generate fills them, never prints them, keeps the set ones."""

from __future__ import annotations

import stat
from collections.abc import Iterator

import pytest

from deploy.config import read_env_file
from tests.e2e.conftest import Project, destroy, make_project


@pytest.fixture(scope="module")
def proj() -> Iterator[Project]:
    p = make_project("sf-secrets-")  # no server is started: secrets are files
    try:
        yield p
    finally:
        destroy(p)


def values(p: Project, name: str) -> dict[str, str]:
    return {k: v for k, (v, _) in read_env_file(p.root / "env" / f"{name}.secrets.env").items()}


def test_generate_fills_every_declared_secret_and_prints_none(proj: Project) -> None:
    path = proj.root / "env" / "staging.secrets.env"
    path.unlink()
    res = proj.ok("staging.secrets", "--generate")
    made = values(proj, "staging")
    assert set(made) == {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "API_KEYS", "SECRET_KEY"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out = res.stdout + res.stderr
    assert "generated POSTGRES_PASSWORD, REDIS_PASSWORD, API_KEYS, SECRET_KEY" in out
    assert not [v for v in made.values() if v in out]


def test_a_newly_declared_secret_is_generated_and_the_others_kept(proj: Project) -> None:
    before = values(proj, "staging")
    declared = 'secrets = ["API_KEYS", "SECRET_KEY"]'
    proj.edit("stageflow.toml", declared, declared.replace('"]', '", "SMTP_PASSWORD"]'))
    try:
        listed = proj.ok("staging.secrets").stdout
        assert "SMTP_PASSWORD" in listed and "the service's own secret" in listed
        res = proj.ok("staging.secrets", "--generate")
        after = values(proj, "staging")
        assert "generated SMTP_PASSWORD in staging.secrets.env" in res.stdout
        assert {k: after[k] for k in before} == before
        assert after["SMTP_PASSWORD"] and after["SMTP_PASSWORD"] not in res.stdout + res.stderr
        again = proj.ok("staging.secrets", "--generate")
        assert "every secret is already set" in again.stdout
    finally:
        proj.edit("stageflow.toml", ', "SMTP_PASSWORD"]', "]")
        path = proj.root / "env" / "staging.secrets.env"
        kept = [ln for ln in path.read_text().splitlines() if not ln.startswith("SMTP_PASSWORD=")]
        path.write_text("\n".join(kept) + "\n")
