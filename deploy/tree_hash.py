"""The git tree id of a release archive's files, computed from the bytes themselves.

A commit and a tree id name content only while git reads honest objects: an object file edited in
place under its old name, or an archive changed after git wrote it, keeps every id an approval
signs. Hashing what the archive holds, the way git hashes objects, ties the shipped bytes to the
tree: a difference anywhere changes the id.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from pathlib import Path

# git's modes of the entries a tree holds
FILE, EXECUTABLE, SYMLINK, TREE, GITLINK = "100644", "100755", "120000", "40000", "160000"
_CHUNK = 1 << 20

Entries = dict[str, tuple[str, str]]  # path -> (mode, object id in hex)


def listed(ls_tree_z: str) -> Entries:
    """`git ls-tree -r -z --full-tree COMMIT` as path -> (mode, id): what the archive may lack
    (a submodule's commit, a file export-ignore leaves out) is taken from here, and any of it that
    is not the commit's changes the tree id all the same."""
    out: Entries = {}
    for record in ls_tree_z.split("\0"):
        if not record:
            continue
        meta, _, path = record.partition("\t")
        mode, _, oid = meta.split(" ")
        out[path] = (mode, oid)
    return out


def _hasher(oid_len: int) -> type:
    return hashlib.sha256 if oid_len == 64 else hashlib.sha1  # type: ignore[return-value]


def _blob_id(chunks: Iterator[bytes], size: int, oid_len: int) -> str:
    h = _hasher(oid_len)(f"blob {size}\0".encode())
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    fh = tar.extractfile(member)
    if fh is None:
        return
    while chunk := fh.read(_CHUNK):
        yield chunk


def archive_entries(tarball: Path, oid_len: int) -> Entries:
    """Every file and symlink of the tar as path -> (mode, blob id); folders are implied."""
    out: Entries = {}
    with tarfile.open(tarball) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile():
                mode = EXECUTABLE if member.mode & 0o100 else FILE
                out[name] = (mode, _blob_id(_read(tar, member), member.size, oid_len))
            elif member.issym():
                target = member.linkname.encode("utf-8", "surrogateescape")
                out[name] = (SYMLINK, _blob_id(iter([target]), len(target), oid_len))
    return out


def tree_id(entries: Entries, oid_len: int) -> str:
    """The id of the tree holding entries (paths with '/'), its subtrees made as git makes them."""
    root: dict = {}
    for path, value in entries.items():
        *folders, name = path.split("/")
        node = root
        for folder in folders:
            node = node.setdefault(folder, {})
            if not isinstance(node, dict):
                raise ValueError(f"{path}: a file where a folder should be")
        node[name] = value
    return _tree(root, oid_len)


def _tree(node: dict, oid_len: int) -> str:
    rows = []
    for name, value in node.items():
        if isinstance(value, dict):
            rows.append(((name + "/").encode(), TREE, name, _tree(value, oid_len)))
        else:
            rows.append((name.encode(), value[0], name, value[1]))
    body = b"".join(
        f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid)
        for _, mode, name, oid in sorted(rows)
    )
    h = _hasher(oid_len)(f"tree {len(body)}\0".encode())
    h.update(body)
    return h.hexdigest()


def shipped_tree(tarball: Path, ls_tree_z: str, oid_len: int) -> str:
    """The tree id of what the archive ships: its own files' ids, and for what it lacks, the
    listing's. A file the listing does not name, or one whose bytes differ, changes the id."""
    entries = {**listed(ls_tree_z), **archive_entries(tarball, oid_len)}
    return tree_id(entries, oid_len)
