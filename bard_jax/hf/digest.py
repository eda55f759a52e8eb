"""`weights_digest(path)`: 16 hex digits that change when the contents of a weights directory change.

Hashing every byte of a multi-gigabyte checkpoint would cost as much as loading it, so the digest covers every
file's relative path and size, all of each small file (configs, tokenizer, index and metadata files: up to
SMALL_FILE bytes) and, of each larger file, SAMPLES chunks of CHUNK bytes spread over it (start, middle, end, ...).
Retraining rewrites every tensor, so the sampled chunks change; copying or moving the directory, or touching its
files, does not change the digest (it reads contents, not paths outside it or times).
"""

from __future__ import annotations

import hashlib
import os

SMALL_FILE = 1 << 20
CHUNK = 1 << 16
SAMPLES = 8


def weights_digest(path: str | os.PathLike) -> str:
    """The digest of the directory `path` (every regular file under it, symlinks followed)."""
    root = os.fspath(path)
    h = hashlib.sha256()
    files = []
    for base, dirs, names in os.walk(root, followlinks=True):
        dirs.sort()
        files += [os.path.join(base, n) for n in names]
    for full in sorted(files):
        rel = os.path.relpath(full, root)
        size = os.path.getsize(full)
        h.update(f"{rel}\0{size}\0".encode())
        with open(full, "rb") as f:
            if size <= SMALL_FILE:
                h.update(f.read())
                continue
            for i in range(SAMPLES):
                f.seek((size - CHUNK) * i // (SAMPLES - 1))
                h.update(f.read(CHUNK))
    return h.hexdigest()[:16]
