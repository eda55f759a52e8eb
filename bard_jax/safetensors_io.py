"""Minimal safetensors reader/writer in numpy (bf16 via ml_dtypes), without torch and without memory-mapping.

A safetensors file is: 8 bytes little-endian header length N, N bytes of JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the data (offsets relative
to byte 8 + N). Reading goes tensor by tensor with `readinto`, so the process never holds the whole file.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import ml_dtypes
import numpy as np

from bard_jax.errors import BardError

DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(BardError, ValueError):
    """A safetensors file that is missing, truncated or malformed."""


class SafetensorsFile:
    """Header of one file plus random access to its tensors."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isfile(path):
            raise SafetensorsError(f"{path}: file not found")
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SafetensorsError(f"{path}: truncated (no header length)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise SafetensorsError(f"{path}: corrupt header length {n} (file is {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{path}: corrupt header ({e})") from e
        if not isinstance(header, dict):
            raise SafetensorsError(f"{path}: corrupt header (not a JSON object)")
        self.metadata = header.pop("__metadata__", {}) or {}
        self.data_start = 8 + n
        self.entries: dict[str, dict[str, Any]] = {}
        for name, e in header.items():
            try:
                dtype = DTYPES[e["dtype"]]
                shape = tuple(int(s) for s in e["shape"])
                begin, end = (int(x) for x in e["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise SafetensorsError(f"{path}: bad header entry for tensor {name!r} ({err})") from err
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if end - begin != nbytes:
                raise SafetensorsError(f"{path}: tensor {name!r} spans {end - begin} bytes, its shape needs {nbytes}")
            if self.data_start + end > size:
                raise SafetensorsError(
                    f"{path}: truncated: tensor {name!r} ends at byte {self.data_start + end}, file has {size}"
                )
            self.entries[name] = {"dtype": np.dtype(dtype), "shape": shape, "begin": begin}

    def keys(self) -> list[str]:
        return list(self.entries)

    def read(self, name: str) -> np.ndarray:
        """The tensor as a fresh numpy array (its own memory, no mmap)."""
        e = self.entries[name]
        out = np.empty(e["shape"], e["dtype"])
        with open(self.path, "rb") as f:
            f.seek(self.data_start + e["begin"])
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != out.nbytes:
            raise SafetensorsError(f"{self.path}: truncated while reading tensor {name!r}")
        return out


def write_file(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors (name -> array, in the given order) as one safetensors file."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, arr in tensors.items():
        dtype = np.dtype(arr.dtype)
        if dtype not in NAMES:
            raise SafetensorsError(f"cannot write tensor {name!r} of dtype {dtype}")
        header[name] = {"dtype": NAMES[dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))  # no extra copy
