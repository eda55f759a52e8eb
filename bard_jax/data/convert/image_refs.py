"""Images as the hub stores them -> RGB PIL images, or the reason the row is dropped (`bard_jax.data.hub_image`
does the reading: struct, path or bytes; paths searched in the shard's directory, then --src, or --image-root for
the Arrow set)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from bard_jax.data.convert.conversation import IMAGE_NOT_FOUND, UNDECODABLE_IMAGE, RowDropped
from bard_jax.data.hub_image import ImageNotFound, UndecodableImage, decode_hub_image, resolve_path

__all__ = ["decode_image", "resolve_path"]


def decode_image(value: Any, search_dirs: Sequence[str]) -> Image.Image:
    """The RGB image an image value holds (struct dict, path string or bytes); raises `RowDropped`."""
    try:
        return decode_hub_image(value, search_dirs)
    except ImageNotFound as e:
        raise RowDropped(IMAGE_NOT_FOUND) from e
    except UndecodableImage as e:
        raise RowDropped(UNDECODABLE_IMAGE) from e
