"""Images as the hub stores them -> RGB PIL images, or the reason the row is dropped.

A parquet image is `struct<bytes: binary, path: string>` (the `datasets` Image feature). Its bytes are the image
file; when they are null the image lives at `path`: absolute as is, else relative to each of `search_dirs` in turn
(the shard's own directory, then --src; --image-root for the Arrow set). Some sets store a bare path string or bare
bytes instead; both are accepted.

Every image is decoded completely here (`convert("RGB")` forces the full decode, so a truncated file fails now,
not in training) and converted to RGB as the release does: alpha is dropped, palette and grey images are expanded.
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image

from bard_jax.data.convert.conversation import IMAGE_NOT_FOUND, UNDECODABLE_IMAGE, RowDropped


def resolve_path(path: str, search_dirs: list[str]) -> str | None:
    """The existing file `path` names (absolute, or relative to one of `search_dirs`), else None."""
    if os.path.isabs(path):
        return path if os.path.isfile(path) else None
    for directory in search_dirs:
        candidate = os.path.join(directory, path)
        if os.path.isfile(candidate):
            return candidate
    return None


def _decode(data: bytes | str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return im.convert("RGB")
    # Corrupt image data makes Pillow raise far more than OSError (SyntaxError, struct.error, IndexError,
    # DecompressionBombError, ...), depending on the format's decoder; every one of them means the same here.
    except Exception as e:
        raise RowDropped(UNDECODABLE_IMAGE) from e


def decode_image(value: Any, search_dirs: list[str]) -> Image.Image:
    """The RGB image an image value holds (struct dict, path string or bytes); raises `RowDropped`."""
    data, path = value, None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, str):
        data, path = None, value
    if isinstance(data, (bytes, bytearray, memoryview)):
        return _decode(bytes(data))
    found = resolve_path(path, search_dirs) if path else None
    if found is None:
        raise RowDropped(IMAGE_NOT_FOUND)
    return _decode(found)
