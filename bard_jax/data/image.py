"""Qwen3-VL image preprocessing in numpy + PIL: smart resize, bicubic, rescale, normalise, patchify.

Letters: N patch rows, C channels, T temporal patch (2), p patch size (16), m merge size (2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from bard_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 65536
    max_pixels: int = 16777216
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target (h, w): multiples of `factor`, area within [min_pixels, max_pixels], aspect ratio kept as closely
    as possible; an aspect ratio above 200 is an error."""
    if max(height, width) / min(height, width) > 200:
        raise InputError(f"image aspect ratio {max(height, width) / min(height, width):.1f} is above 200")
    # No lower bound here (as transformers): a side that rounds to 0 sends the image to the scale-up branch.
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def patchify(frames_tchw: np.ndarray, s: ImageSettings) -> tuple[np.ndarray, tuple[int, int, int]]:
    """[T', C, H, W] normalised frames (T' a multiple of the temporal patch) -> rows [N, C*T*p*p] in merge-window
    order, and the grid (t, h, w) in patches."""
    t_all, c, height, width = frames_tchw.shape
    p, m, tp = s.patch_size, s.merge_size, s.temporal_patch_size
    gt, gh, gw = t_all // tp, height // p, width // p
    x = frames_tchw.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    # -> (t, h-window, w-window, h-in-window, w-in-window, C, T, p, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p)), (gt, gh, gw)


def load_frame(image: Image.Image, height: int, width: int, s: ImageSettings) -> np.ndarray:
    """RGB, bicubic resize, rescale, normalise -> [C, H, W] float32."""
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), resample=Image.Resampling.BICUBIC)
    x = np.asarray(rgb, dtype=np.float32) * np.float32(s.rescale_factor)
    x = (x - np.asarray(s.image_mean, np.float32)) / np.asarray(s.image_std, np.float32)
    return x.transpose(2, 0, 1)


def process_images(images: Sequence[Image.Image], s: ImageSettings) -> tuple[np.ndarray, np.ndarray]:
    """pixel_values [sum N_i, C*T*p*p] float32 and image_grid_thw [n, 3] int64 (each image as two frames)."""
    rows, grids = [], []
    for image in images:
        h, w = smart_resize(image.height, image.width, s.factor, s.min_pixels, s.max_pixels)
        frame = load_frame(image, h, w, s)
        patches, grid = patchify(np.repeat(frame[None], s.temporal_patch_size, axis=0), s)
        rows.append(patches)
        grids.append(grid)
    if not rows:
        return np.zeros((0, 3 * s.temporal_patch_size * s.patch_size**2), np.float32), np.zeros((0, 3), np.int64)
    return np.concatenate(rows), np.asarray(grids, np.int64)
