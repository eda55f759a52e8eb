"""Training records read from JSONL shards by byte offset, so that millions of samples are never held in memory.

`open_records(spec)` takes a file, a directory (every `*.jsonl` under it, recursively) or a glob, and returns a
`JsonlRecords`: a sequence whose item i is record i of the shards taken in sorted path order (blank lines are not
records). Item access reads one line with `os.pread` at the offset the shard's index gives and parses it then.

The index of a shard is an array `[n, 3]` int64 of (start byte, end byte, line number) per record, built once by
scanning the file for newlines in large chunks (a million records in about a second) and cached beside the data
in `.bard_index/` (or, when that directory cannot be written, under `$BARD_JAX_CACHE` or `~/.cache/bard_jax`). The
cache is keyed on the shard's size, modification time and a digest of its first and last 64 KiB: a shard that
changed since is indexed again. A shard that changes while a run reads it is detected when a record is read (the
bytes at the index's offsets no longer hold a line) and reported as a `DataError`: positions in the stream would no
longer mean the same samples, so an exact resume would be impossible.

The object pickles to a few paths (worker processes map the cached index arrays read-only, sharing their pages).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bard_jax.atomic_file import atomic_file, atomic_write
from bard_jax.data.processor import DataError

log = logging.getLogger(__name__)

INDEX_VERSION = 1
_SCAN_CHUNK = 1 << 24  # bytes read per step while indexing
_DIGEST_SPAN = 1 << 16  # bytes hashed at each end of a shard
_SHORT_LINE = 16  # lines shorter than this are read back to see whether they are blank


class MalformedRecord(DataError):
    """A line that is not a JSON object with a `messages` list (a counted skip, or an error in strict mode)."""


class ShardChanged(DataError):
    """A shard no longer matches the index it is read through: never a skip, the run must stop."""


def shard_paths(spec: str) -> list[str]:
    """The JSONL shards `spec` names, sorted: a file, a directory (its `*.jsonl`, recursively; see `_jsonl_under`)
    or a glob."""
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        found = sorted(_jsonl_under(spec))
        if not found:
            raise DataError(f"training data: the directory {spec!r} holds no *.jsonl shard")
        return found
    if glob.has_magic(spec):
        found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not found:
            raise DataError(f"training data: the pattern {spec!r} matches no file")
        return found
    raise DataError(f"training data not found: {spec!r} (a JSONL file, a directory of *.jsonl shards or a glob)")


def _jsonl_under(root: str) -> Iterator[str]:
    """Every `*.jsonl` under a directory, hidden directories left out (our index cache among them). In the output of
    `python -m bard_jax.data.convert` (it holds `convert.json`) the `images/` and `videos/` trees are not walked:
    they hold millions of files and no shard."""
    converted = os.path.isfile(os.path.join(root, "convert.json"))
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and not (converted and here == root and d in ("images", "videos"))]
        yield from (os.path.join(here, f) for f in files if f.endswith(".jsonl"))


def _fingerprint(path: str) -> dict[str, Any]:
    """What identifies a shard's content cheaply: size, modification time and a digest of its two ends."""
    st = os.stat(path)
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        digest.update(f.read(_DIGEST_SPAN))
        if st.st_size > _DIGEST_SPAN:
            f.seek(max(_DIGEST_SPAN, st.st_size - _DIGEST_SPAN))
            digest.update(f.read(_DIGEST_SPAN))
    return {"version": INDEX_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": digest.hexdigest()}


def scan_lines(path: str) -> np.ndarray:
    """[n, 3] int64: (start, end, 1-based line number) of each non-blank line of a file, `end` excluding the
    newline. Reads the file in chunks of `_SCAN_CHUNK` bytes; memory is O(lines), not O(bytes)."""
    newlines = []
    buf = bytearray(_SCAN_CHUNK)
    pos = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(buf)
            if not got:
                break
            chunk = np.frombuffer(buf, np.uint8, count=got)
            newlines.append(np.flatnonzero(chunk == 10).astype(np.int64) + pos)
            pos += got
    size = pos
    ends = np.concatenate(newlines) if newlines else np.zeros(0, np.int64)
    starts = np.concatenate([[0], ends + 1]).astype(np.int64)
    if starts[-1] < size:  # a last line without a newline
        ends = np.concatenate([ends, [size]])
    else:
        starts = starts[:-1]
    numbers = np.arange(1, len(starts) + 1, dtype=np.int64)
    keep = ends - starts > 0
    short = np.flatnonzero(keep & (ends - starts < _SHORT_LINE))
    if len(short):  # whitespace-only lines are blank too (a line of JSON is never this short and all blank)
        with open(path, "rb") as f:
            for i in short:
                f.seek(starts[i])
                if not f.read(ends[i] - starts[i]).strip():
                    keep[i] = False
    return np.stack([starts[keep], ends[keep], numbers[keep]], axis=1)


def _cache_locations(path: str) -> list[tuple[str, str]]:
    """(directory, file stem) where a shard's index may be cached: beside the shard, then the user cache."""
    absolute = os.path.abspath(path)
    beside = (os.path.join(os.path.dirname(absolute), ".bard_index"), os.path.basename(absolute))
    root = os.environ.get("BARD_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bard_jax")
    key = hashlib.sha1(absolute.encode()).hexdigest()[:20]
    return [beside, (os.path.join(root, "jsonl_index"), f"{key}-{os.path.basename(absolute)}")]


def _load_cached(path: str, fingerprint: dict[str, Any]) -> np.ndarray | None:
    for directory, stem in _cache_locations(path):
        meta_path = os.path.join(directory, stem + ".json")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get("shard") != fingerprint:
                continue
            lines = np.load(os.path.join(directory, stem + ".npy"), mmap_mode="r")
        except (OSError, ValueError):
            continue  # absent, unreadable or half-written: index again
        if lines.ndim == 2 and lines.shape == (meta.get("records"), 3):
            return lines
    return None


def _store(path: str, fingerprint: dict[str, Any], lines: np.ndarray) -> str | None:
    """Cache an index (the array, then its metadata, which is what makes it valid); the directory it went to, or
    None when no location could be written (the index is then rebuilt by every run)."""
    meta = json.dumps({"shard": fingerprint, "records": int(len(lines)), "path": os.path.abspath(path)}).encode()
    for directory, stem in _cache_locations(path):
        try:
            with atomic_file(os.path.join(directory, stem + ".npy")) as f:
                np.save(f, lines)
            atomic_write(os.path.join(directory, stem + ".json"), meta)
            return directory
        except OSError:
            continue
    log.warning("%s: could not cache its index anywhere (read-only locations); it is rebuilt on every start", path)
    return None


def shard_index(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(index, fingerprint) of one shard (the index [n, 3] int64, see `scan_lines`), from the cache when it is
    current, else scanned and cached."""
    fingerprint = _fingerprint(path)
    cached = _load_cached(path, fingerprint)
    if cached is not None:
        return cached, fingerprint
    lines = scan_lines(path)
    if _fingerprint(path) != fingerprint:
        raise DataError(f"{path}: the shard changed while it was being indexed; run again once it is complete")
    _store(path, fingerprint, lines)
    return lines, fingerprint


class JsonlRecords(Sequence):
    """Records of JSONL shards, read on access. Item i is a dict (the parsed line, with `_where` = "path:line");
    a line that is not a JSON object with a `messages` list raises `MalformedRecord`.

    `select(indices)` gives a view holding only those records (in that order)."""

    def __init__(self, paths: list[str], indices: list[np.ndarray], fingerprints: list[dict[str, Any]],
                 selected: np.ndarray | None = None):
        self.paths = list(paths)
        self._indices = indices
        self._fingerprints = fingerprints
        counts = np.asarray([len(ix) for ix in indices], np.int64)
        self._first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # [S + 1] first record of shard
        self._selected = selected
        self._fds: dict[int, int] = {}

    # ------------------------------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        # The arrays are not sent: a worker maps them from the cache (or, uncached, indexes the shard itself).
        return {"paths": self.paths, "fingerprints": self._fingerprints, "selected": self._selected}

    def __setstate__(self, state: dict[str, Any]) -> None:
        indices = []
        for path, fingerprint in zip(state["paths"], state["fingerprints"]):
            lines = _load_cached(path, fingerprint)
            if lines is None:
                self._check_unchanged(path, fingerprint)
                lines = scan_lines(path)
            indices.append(lines)
        self.__init__(state["paths"], indices, state["fingerprints"], state["selected"])

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # ------------------------------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self._first[-1]) if self._selected is None else len(self._selected)

    @property
    def shard_record_counts(self) -> list[int]:
        return [len(ix) for ix in self._indices]

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} of {n}")
        i = i % n
        if self._selected is not None:
            i = int(self._selected[i])
        shard = int(np.searchsorted(self._first, i, side="right")) - 1
        return shard, i - int(self._first[shard])

    def where(self, i: int) -> str:
        """"path:line" of record i (without reading it)."""
        shard, row = self._locate(i)
        return f"{self.paths[shard]}:{int(self._indices[shard][row, 2])}"

    def _fd(self, shard: int) -> int:
        """An open descriptor of a shard, checked against its index on every call (an fstat: microseconds, next to
        the milliseconds a sample takes to encode)."""
        fd = self._fds.get(shard)
        if fd is None:
            try:
                fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
            except OSError as e:
                raise DataError(f"{self.paths[shard]}: training shard no longer readable ({e})") from e
        self._check_unchanged(self.paths[shard], self._fingerprints[shard], os.fstat(fd))
        return fd

    @staticmethod
    def _check_unchanged(path: str, fingerprint: dict[str, Any], st: os.stat_result | None = None) -> None:
        if st is None:
            try:
                st = os.stat(path)
            except OSError as e:
                raise DataError(f"{path}: training shard no longer readable ({e})") from e
        if (st.st_size, st.st_mtime_ns) != (fingerprint["size"], fingerprint["mtime_ns"]):
            raise ShardChanged(f"{path}: the shard changed after its index was built (size {fingerprint['size']} -> "
                            f"{st.st_size}, or a new modification time); the stream's positions no longer name the "
                            f"same samples. Restart the run to index it again (an exact resume needs the data "
                            f"unchanged)")

    def content_digest(self) -> str:
        """16 hex digits over the shards' sizes, end digests and record counts, in order (not their paths or
        times): what a resume compares to tell the same data from data replaced by other lines. A change that keeps
        a shard's size and both of its 64 KiB ends escapes it."""
        if getattr(self, "_digest", None) is not None:
            return self._digest
        h = hashlib.sha256()
        for fingerprint, index in zip(self._fingerprints, self._indices):
            h.update(f"{fingerprint['size']}:{fingerprint['digest']}:{len(index)};".encode())
        if self._selected is not None:
            h.update(self._selected.tobytes())
        self._digest = h.hexdigest()[:16]  # computed once: a save asks for it each time
        return self._digest

    def line_bytes(self, i: int) -> int:
        """The length in bytes of record i's line, from the index (nothing is read)."""
        shard, row = self._locate(i)
        return int(self._indices[shard][row, 1] - self._indices[shard][row, 0])

    def raw(self, i: int) -> bytes:
        """The bytes of record i's line (without the newline)."""
        shard, row = self._locate(i)
        start, end, number = (int(v) for v in self._indices[shard][row])
        # One byte either side proves the line is still where the index says (a newline before it and after it).
        lead = 1 if start > 0 else 0
        data = os.pread(self._fd(shard), end - start + lead + 1, start - lead)
        body = data[lead:lead + end - start]
        ok = len(body) == end - start and (not lead or data[:1] == b"\n")
        tail = data[lead + end - start:]
        ok = ok and (tail == b"\n" or (not tail and end == self._fingerprints[shard]["size"]))
        if not ok:
            raise ShardChanged(f"{self.paths[shard]}:{number}: the shard changed after its index was built (line "
                            f"{number} is no longer at bytes {start}-{end}); restart the run to index it again")
        return body

    def __getitem__(self, i: int) -> dict[str, Any]:
        line = self.raw(i)
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
                raise ValueError("no 'messages' list")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise MalformedRecord(f"malformed json ({e})") from e
        rec["_where"] = self.where(i)
        return rec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def select(self, indices: np.ndarray | list[int]) -> JsonlRecords:
        """A view of the records at `indices` (positions in this sequence)."""
        picked = np.asarray(indices, np.int64)
        if self._selected is not None:
            picked = self._selected[picked]
        return JsonlRecords(self.paths, self._indices, self._fingerprints, picked)

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records of the data it was trained on, to refuse a resume on other data."""
        return {"records": len(self), "shards": [[os.path.basename(p), n] for p, n in
                                                zip(self.paths, self.shard_record_counts)]}


def open_records(spec: str) -> JsonlRecords:
    """The records of the JSONL shards `spec` names (a file, a directory or a glob; see `shard_paths`)."""
    paths = shard_paths(spec)
    indices, fingerprints = [], []
    for path in paths:
        try:
            lines, fingerprint = shard_index(path)
        except OSError as e:
            raise DataError(f"{path}: cannot read the training shard ({e})") from e
        indices.append(lines)
        fingerprints.append(fingerprint)
    return JsonlRecords(paths, indices, fingerprints)
