"""Shared pieces of checkpoint I/O: the error type, dtypes, side files, progress (output directories: dirs.py)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import glob
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np

from bard_jax.errors import BardError, InputError
from bard_jax.hf.table import Entry, flatten

# Tokenizer / processor / generation files that travel with the weights (glob patterns).
SIDE_FILES = (
    "tokenizer*.json", "tokenizer.model", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
    "chat_template*", "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
    "generation_config.json", "task.json",
)
# The file that makes a directory a bard_jax (converted) one; it holds our config and the original config.json.
CONVERTED_MARKER = "bard_jax_config.json"
PROGRESS_MIN_BYTES = 256 * 2**20
_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointError(BardError, ValueError):
    """A checkpoint that cannot be read or does not match the model; the message names every offending
    file / tensor / field at once."""


def problems_error(where: str, what: str, problems: list[str]) -> CheckpointError:
    return CheckpointError(f"{where}: {what} ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))


def resolve_dtype(dtype: Any) -> np.dtype | None:
    """"float32" / "bfloat16" / "float16" / a numpy or jax dtype -> numpy dtype; None or "keep" -> None."""
    if dtype is None or (isinstance(dtype, str) and dtype == "keep"):
        return None
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise InputError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)} or 'keep'")
        return np.dtype(_DTYPES[dtype])
    return np.dtype(dtype)


def check_tree(params: dict[str, Any], table: list[Entry]) -> list[str]:
    """Differences between a params tree and the name table: missing, unexpected, mis-shaped leaves."""
    leaves = flatten(params)
    want = {e.path: e.shape for e in table}
    problems = []
    for path, shape in want.items():
        if path not in leaves:
            problems.append(f"missing parameter {'/'.join(path)} (expected shape {list(shape)})")
        elif tuple(leaves[path].shape) != shape:
            problems.append(f"parameter {'/'.join(path)} has shape {list(leaves[path].shape)}, expected {list(shape)}")
    problems += [f"unexpected parameter {'/'.join(p)}" for p in leaves if p not in want]
    return problems


def release_memory() -> None:
    """Free what the last parameter left behind, now: collect reference cycles (device_put keeps its host source in
    one) and hand freed heap pages back to the OS (glibc keeps tensorstore's freed buffers otherwise, and peak RSS
    would grow with every parameter). Those cycles are young: collecting generations 0-1 frees them in about a
    millisecond, where a full collection costs ~0.1 s in a process with a large heap (torch, transformers)."""
    gc.collect(1)
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl): nothing to trim
        return None


_LIBC = _glibc()


def copy_side_files(src: str | os.PathLike | None, dst: str) -> list[str]:
    """Copy tokenizer / processor / generation files from `src` (if any) into `dst`; returns the names copied."""
    if not src or not os.path.isdir(src):
        return []
    copied = []
    for pattern in SIDE_FILES:
        for p in sorted(glob.glob(os.path.join(os.fspath(src), pattern))):
            if os.path.isfile(p) and not p.endswith(".safetensors"):
                shutil.copy2(p, os.path.join(dst, os.path.basename(p)))
                copied.append(os.path.basename(p))
    return copied


def parse_size(text: str | int) -> int:
    """'5GB' -> 5e9, '500MB', '2GiB', '1024' -> bytes (a positive size: 0 would put every tensor in a file of
    its own)."""
    if isinstance(text, int):
        size = text
    else:
        units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30,
                 "B": 1}
        t = text.strip().upper()
        try:
            unit = next((u for u in sorted(units, key=len, reverse=True) if t.endswith(u)), None)
            size = int(float(t[: -len(unit)]) * units[unit]) if unit else int(t)
        except ValueError as e:
            raise InputError(f"cannot parse size {text!r} (examples: 5GB, 500MB, 2GiB)") from e
    if size < 1:
        raise InputError(f"size {text!r} must be positive (examples: 5GB, 500MB, 2GiB)")
    return size


@contextlib.contextmanager
def progress(total_bytes: int, desc: str) -> Iterator[Callable[[int], None]]:
    """A byte progress bar on stderr for large checkpoints (process 0 only); a no-op below 256 MB."""
    if total_bytes < PROGRESS_MIN_BYTES or jax.process_index() != 0:
        yield lambda n: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, file=sys.stderr)
    try:
        yield bar.update
    finally:
        bar.close()
