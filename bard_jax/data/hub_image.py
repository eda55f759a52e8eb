"""Images as hub datasets store them -> RGB PIL images. Shared by the converters and the benchmark reader.

A parquet image is `struct<bytes: binary, path: string>` (the `datasets` Image feature). Its bytes are the image
file; when they are null the image lives at `path`: absolute as is, else relative to each of `search_dirs` in turn
("" is the working directory). Some sets store a bare path string or bare bytes instead; both are accepted.

Every image is decoded completely here (`convert("RGB")` forces the full decode, so a truncated file fails now, not
later) and converted to RGB: alpha is dropped, palette and grey images are expanded.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from PIL import Image

from bard_jax.data.processor import DataError


class ImageNotFound(DataError):
    """The value holds no bytes, and no path that names an existing file."""


class UndecodableImage(DataError):
    """The bytes or the file are not an image Pillow can decode."""


def resolve_path(path: str, search_dirs: Sequence[str]) -> str | None:
    """The existing file `path` names (absolute, or relative to one of `search_dirs`), else None."""
    if os.path.isabs(path):
        return path if os.path.isfile(path) else None
    for directory in search_dirs:
        candidate = os.path.join(directory, path)
        if os.path.isfile(candidate):
            return candidate
    return None


def decode_hub_image(value: Any, search_dirs: Sequence[str] = ("",)) -> Image.Image:
    """The RGB image an image value holds (struct dict, path string or bytes); raises `ImageNotFound` or
    `UndecodableImage` with a message naming the path or the byte count."""
    data, path = value, None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, str):
        data, path = None, value
    if isinstance(data, (bytes, bytearray, memoryview)):
        source, what = io.BytesIO(bytes(data)), f"{len(data)} bytes"
    elif data is not None:
        raise UndecodableImage(f"not an image: expected a {{bytes, path}} struct, got {type(value).__name__}")
    elif not path:
        raise ImageNotFound("image has neither bytes nor a path")
    else:
        found = resolve_path(path, search_dirs)
        if found is None:
            raise ImageNotFound(f"image has no bytes and its path {path} is not a file (looked in "
                                f"{', '.join(repr(d or '.') for d in search_dirs)})")
        source, what = found, found
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    # Corrupt image data makes Pillow raise far more than OSError (SyntaxError, struct.error, IndexError,
    # DecompressionBombError, ...), depending on the format's decoder; every one of them means the same here.
    except Exception as e:
        raise UndecodableImage(f"undecodable image ({what}): {e}") from None
