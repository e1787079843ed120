"""Content fingerprints of files: the sha256 of a file's bytes, computed once per process per version.

A dataset read from a path (``npz:``, ``folder:`` archive, ``parquet:``) is named in rows by its
fingerprint (``dataset_label``), and the published files behind named sources are checked by theirs.
Hashing is the cost (≈ 0.1 s per 20 MB), so the digest is remembered under the file's (path, inode,
size, mtime, ctime): a rewritten or replaced file is hashed again, even one whose mtime was restored.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at ``path`` (remembered while the file stays the same)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: str | os.PathLike, suffixes: frozenset[str] | set[str], depth: int = 3) -> str:
    """A content digest of a folder as an image-folder reader sees it, ``depth`` levels deep: the sorted
    relative paths of its sub-folders (class folders, even empty ones, name the labels) and of its files
    whose suffix is in ``suffixes``, each file with its own sha256. Renaming, adding, removing or
    rewriting an image or a folder changes it; other files (notes, thumbnails' databases) do not."""
    root = Path(root)
    h = hashlib.sha256()
    for rel, is_dir in sorted(_entries(root, "", depth, {s.lower() for s in suffixes})):
        h.update(f"{rel}/\n".encode() if is_dir else f"{rel}\0{sha256_file(root / rel)}\n".encode())
    return h.hexdigest()


def _entries(folder: Path, rel: str, depth: int, suffixes: set[str]):
    with os.scandir(folder) as it:
        found = list(it)
    for e in found:
        if e.is_dir():
            yield f"{rel}{e.name}", True
            if depth > 1:
                yield from _entries(Path(e.path), f"{rel}{e.name}/", depth - 1, suffixes)
        elif Path(e.name).suffix.lower() in suffixes:
            yield f"{rel}{e.name}", False
