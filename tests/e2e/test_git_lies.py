"""What prod runs is the approved commit's bytes, whatever the operator's repository, shell or
folder holds: a replace ref (in the repository, or under a base the shell names) swaps a file's
content while the commit and tree ids the approval signed stay the same, and so does an archive
of the commit left on disk by an earlier run and edited since."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zlib

from tests.e2e.test_signed_approvals import BOB, prod, refused, request  # noqa: F401

MARK = "# not what was approved"


def _evil_blob(p, path: str) -> tuple[str, str]:
    """(the blob of path in v1.0.0, a blob of the same file with MARK appended)."""
    blob = p.git("rev-parse", f"v1.0.0:{path}")
    text = p.git("show", f"v1.0.0:{path}") + f"\n{MARK}\n"
    evil = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=p.root, input=text,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    return blob, evil


def _served(p, path: str) -> str:
    """The file as prod's serving release holds it ("" before prod's first release)."""
    served = p.root / ".stageflow/prod/current" / path
    return served.read_text() if served.exists() else ""


def test_a_replace_ref_does_not_change_what_prod_runs(prod):  # noqa: F811
    rid = request(prod)
    prod.ok("prod.approve", rid, actor=BOB)
    blob, evil = _evil_blob(prod, "app/wsgi.py")
    prod.git("replace", blob, evil)
    (prod.root / ".stageflow/build" / f"{prod.git('rev-parse', 'v1.0.0')}.tar").unlink()
    try:
        assert MARK in prod.git("show", "v1.0.0:app/wsgi.py")  # git itself now says so
        prod.ok("prod.deploy", "--request", rid)
    finally:
        prod.git("replace", "-d", blob)
    assert MARK not in _served(prod, "app/wsgi.py")


def test_a_replace_ref_base_from_the_shell_changes_nothing(prod):  # noqa: F811
    (prod.root / "NEXT.txt").write_text("the next release\n")
    prod.commit("the next release", tag="v1.0.1")
    prod.ok("release.gate", "--ref", "v1.0.1")
    prod.ok("staging.deploy", "--ref", "v1.0.1")
    rid = request(prod, "v1.0.1")
    prod.ok("prod.approve", rid, actor=BOB)
    blob, evil = _evil_blob(prod, "app/config.py")
    prod.git("update-ref", f"refs/elsewhere/{blob}", evil)
    (prod.root / ".stageflow/build" / f"{prod.git('rev-parse', 'v1.0.1')}.tar").unlink()
    shell = {"GIT_REPLACE_REF_BASE": "refs/elsewhere/"}
    seen = subprocess.run(["git", "show", "v1.0.1:app/config.py"], cwd=prod.root,
                          env={**os.environ, **shell}, capture_output=True, text=True)  # fmt: skip
    assert MARK in seen.stdout
    prod.ok("prod.deploy", "--request", rid, env=shell)
    assert MARK not in _served(prod, "app/config.py")


def test_the_archive_an_earlier_run_left_is_not_what_prod_ships(prod):  # noqa: F811
    (prod.root / "NEXT2.txt").write_text("the release after\n")
    prod.commit("the release after", tag="v1.0.2")
    prod.ok("release.gate", "--ref", "v1.0.2")
    prod.ok("staging.deploy", "--ref", "v1.0.2")
    rid = request(prod, "v1.0.2")
    prod.ok("prod.approve", rid, actor=BOB)
    tar_path = prod.root / ".stageflow/build" / f"{prod.git('rev-parse', 'v1.0.2')}.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    with tarfile.open(tar_path, "w") as tar:
        for m, data in members:
            if m.name == "app/wsgi.py":
                data += f"\n{MARK}\n".encode()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
    prod.ok("prod.deploy", "--request", rid)
    assert MARK not in _served(prod, "app/wsgi.py")


def test_prods_migrations_and_their_ledger_are_changed_by_a_signed_human_only(prod):  # noqa: F811
    """The working tree's SQL applied to prod's database, or a failed migration marked resolved,
    outside any approved deploy: an agent's shell decides neither."""
    planted = prod.root / "app/migrations/0004_planted.up.sql"
    planted.write_text("CREATE TABLE planted (id int);\n")
    try:
        for args in (("prod.migrate",), ("prod.migrate", "--resolve", "3", "--mark", "applied")):
            refused(prod, *args, actor="agent-7", kind="agent", says="may not migrate")
            refused(prod, *args, env={"STAGEFLOW_SIGNING_KEY": ""}, says="may not migrate")
    finally:
        planted.unlink()


# An ssh-keygen the shell finds first on PATH: every signature verifies, and a "signature" names
# whichever trusted key the caller wants (public: prod's allowed signers list it)
FAKE_SSH_KEYGEN = """#!/usr/bin/env python3
import base64, os, struct, sys
if "verify" in sys.argv:
    sys.exit(0)
if "sign" in sys.argv:
    key = base64.b64decode(os.environ["FAKE_KEY"])
    def s(b): return struct.pack(">I", len(b)) + b
    blob = b"SSHSIG" + struct.pack(">I", 1) + s(key) + s(b"stageflow") + s(b"") + s(b"sha512") + s(b"x")
    print("-----BEGIN SSH SIGNATURE-----")
    print(base64.b64encode(blob).decode())
    print("-----END SSH SIGNATURE-----")
    sys.exit(0)
os.execv("/usr/bin/ssh-keygen", ["ssh-keygen", *sys.argv[1:]])
"""


def test_an_ssh_keygen_first_on_path_proves_nobody(prod):  # noqa: F811
    fake = prod.root.parent / "fakebin"
    fake.mkdir(exist_ok=True)
    (fake / "ssh-keygen").write_text(FAKE_SSH_KEYGEN)
    (fake / "ssh-keygen").chmod(0o755)
    bob_pub = fake / "bob.pub"  # a copy of the public half alone, as prod's signers list it
    bob_pub.write_text((prod.root.parent / "keys" / f"{BOB}.pub").read_text())
    shell = {"PATH": f"{fake}:{os.environ['PATH']}", "FAKE_KEY": bob_pub.read_text().split()[1],
             "STAGEFLOW_SIGNING_KEY": str(bob_pub)}  # fmt: skip
    rid = request(prod)
    refused(prod, "prod.approve", rid, actor=BOB, env=shell, says="signing with")
    # the same "signature" typed into the request file: the deploy verifies it with the same tool
    path = prod.root / ".stageflow/prod/state/requests" / f"{rid}.json"
    req = json.loads(path.read_text())
    said = {"action": "approve", "env": "prod", "request": req["id"], "commit": req["commit"]}
    fake_sig = subprocess.run([sys.executable, str(fake / "ssh-keygen"), "-Y", "sign"], env=shell,
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    req["approvals"] = [{"actor": BOB, "kind": "human", "statement": said, "signature": fake_sig}]
    path.write_text(json.dumps(req))
    own = {**shell, "STAGEFLOW_SIGNING_KEY": str(prod.key(prod.actor))}  # the deployer's key
    refused(prod, "prod.deploy", "--request", rid, env=own, says="does not match")


def test_an_object_edited_under_its_own_id_ships_nowhere(prod):  # noqa: F811
    (prod.root / "NEXT3.txt").write_text("one more release\n")
    prod.commit("one more release", tag="v1.0.3")
    prod.ok("release.gate", "--ref", "v1.0.3")
    prod.ok("staging.deploy", "--ref", "v1.0.3")
    rid = request(prod, "v1.0.3")
    prod.ok("prod.approve", rid, actor=BOB)
    blob = prod.git("rev-parse", "v1.0.3:app/wsgi.py")
    obj = prod.root / ".git/objects" / blob[:2] / blob[2:]
    assert obj.exists(), "the blob is packed: nothing to edit in place"
    original = obj.read_bytes()
    data = (prod.git("show", "v1.0.3:app/wsgi.py") + f"\n{MARK}\n").encode()
    obj.chmod(0o644)
    obj.write_bytes(zlib.compress(f"blob {len(data)}\0".encode() + data))
    try:
        assert MARK in prod.git("show", "v1.0.3:app/wsgi.py")  # git reads it without a check
        res = prod.inv("prod.deploy", "--request", rid)  # fails at build: a failed deploy
    finally:
        obj.write_bytes(original)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "does not hold its tree" in res.stderr.strip().splitlines()[-1], res.stderr
    assert MARK not in _served(prod, "app/wsgi.py")
    assert prod.history("prod")[0]["status"] == "failed"


def test_attributes_outside_the_commit_leave_no_file_out(prod):  # noqa: F811
    """.git/info/attributes is the operator's, not the commit's: an export-ignore line there
    would drop a file from a release whose commit and tree were approved whole."""
    info = prod.root / ".git/info/attributes"
    info.parent.mkdir(exist_ok=True)
    info.write_text("README.md export-ignore\n")
    try:
        (prod.root / "NEXT4.txt").write_text("and one more\n")
        prod.commit("and one more", tag="v1.0.4")
        prod.ok("staging.deploy", "--ref", "v1.0.4")
    finally:
        info.unlink()
    assert (prod.root / ".stageflow/staging/current/README.md").exists()
