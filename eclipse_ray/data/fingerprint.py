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
