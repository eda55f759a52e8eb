"""Turn user-facing model inputs (ids, padding mask, pixel rows, grids) into what the network consumes.

Letters: B batch, T tokens, P pixel rows, I grid rows.

All of it is jax.numpy with static shapes, so it runs inside `jax.jit`: the number of pixel rows and grid rows is
static, their values are data.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bard_jax.config import ModelConfig
from bard_jax.errors import InputError
from bard_jax.model.positions import rope_position_ids, vision_patch_metadata
from bard_jax.model.vlm import Qwen3VL


class VisionInputs(NamedTuple):
    """Pixel rows of all images then all videos, their per-patch metadata, and where the video windows start."""

    pixels_pc: jax.Array
    meta: dict[str, jax.Array]
    num_image_windows: int  # static: image pixel rows / merge unit


def _check_rows(name: str, pixels: Any, config: ModelConfig) -> None:
    v = config.vision
    if pixels.ndim != 2 or pixels.shape[1] != v.patch_dim:
        raise InputError(f"{name} must be [num_patches, {v.patch_dim}], got shape {tuple(pixels.shape)}")
    if pixels.shape[0] % v.merge_unit:
        raise InputError(f"{name} has {pixels.shape[0]} rows, not a multiple of the merge unit {v.merge_unit}")


def vision_inputs(
    config: ModelConfig,
    pixel_values: Any = None,
    image_grid_thw: Any = None,
    pixel_values_videos: Any = None,
    video_grid_thw: Any = None,
) -> VisionInputs | None:
    """Concatenate image and video pixel rows and build their patch metadata; None when there are no pixels."""
    v = config.vision
    parts, metas = [], []
    num_image_windows = 0
    segment_offset = 0
    for name, pixels, grid in (
        ("pixel_values", pixel_values, image_grid_thw),
        ("pixel_values_videos", pixel_values_videos, video_grid_thw),
    ):
        if pixels is None:
            continue
        if grid is None:
            raise InputError(f"{name} given without its grid_thw")
        pixels = jnp.asarray(pixels)
        _check_rows(name, pixels, config)
        grid = jnp.asarray(grid, jnp.int32).reshape(-1, 3)
        meta = vision_patch_metadata(
            grid, pixels.shape[0], spatial_merge_size=v.spatial_merge_size, num_grid_per_side=v.num_grid_per_side,
            xp=jnp,
        )
        # Keep segment ids of the two groups apart (padding rows stay negative, each group its own pad id).
        meta["segment"] = jnp.where(meta["segment"] >= 0, meta["segment"] + segment_offset, -1 - len(parts))
        segment_offset += pixels.shape[0]
        if name == "pixel_values":
            num_image_windows = pixels.shape[0] // v.merge_unit
        parts.append(pixels)
        metas.append(meta)
    if not parts:
        return None
    pixels_pc = jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    meta = {k: jnp.concatenate([m[k] for m in metas], axis=0) for k in metas[0]}
    return VisionInputs(pixels_pc, meta, num_image_windows)


def window_index(config: ModelConfig, input_ids: jax.Array, num_image_windows: int) -> jax.Array:
    """For each image/video pad token, the row of the vision output it takes (HF order).

    Image pads take image windows in order over the flattened batch; video pads take video windows, which follow
    the `num_image_windows` image rows. Other tokens get 0 (ignored).
    """
    b, t = input_ids.shape
    is_img = input_ids == config.image_token_id
    is_vid = input_ids == config.video_token_id
    img_rank = (jnp.cumsum(is_img.reshape(-1)) - 1).reshape(b, t)
    vid_rank = (jnp.cumsum(is_vid.reshape(-1)) - 1).reshape(b, t)
    return jnp.where(is_img, img_rank, jnp.where(is_vid, num_image_windows + vid_rank, 0)).astype(jnp.int32)


def text_positions(
    config: ModelConfig,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    image_grid_thw: Any = None,
    video_grid_thw: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """MRoPE positions [3, B, T] and next_position [B] (see `rope_position_ids`)."""
    return rope_position_ids(
        input_ids, attention_mask, image_grid_thw, video_grid_thw,
        image_token_id=config.image_token_id, video_token_id=config.video_token_id,
        spatial_merge_size=config.vision.spatial_merge_size, xp=jnp,
    )


def batched_vision_inputs(
    config: ModelConfig, pixels_bpc: jax.Array, grid_bi3: jax.Array, input_ids_bt: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """Vision inputs kept per example (the layout that shards over the batch axis).

    Args:
      pixels_bpc: [B, P, C] each example's pixel rows (its images in order, then padding rows).
      grid_bi3: [B, I, 3] each example's image grids (zero rows = padding).
      input_ids_bt: [B, T] token ids (image pads take their own example's windows, in order).
    Returns:
      pixels [B, P, C], patch metadata [B, P, ...] per example, and the window index [B, T] into the
      [B * P / merge_unit] rows that `encode_vision_per_example` returns.
    """
    v = config.vision
    b, p, c = pixels_bpc.shape
    if p % v.merge_unit:
        raise InputError(f"per-example pixel rows {p} not a multiple of the merge unit {v.merge_unit}")

    def one(grid_i3: jax.Array) -> dict[str, jax.Array]:
        return vision_patch_metadata(
            grid_i3, p, spatial_merge_size=v.spatial_merge_size, num_grid_per_side=v.num_grid_per_side, xp=jnp
        )

    meta = jax.vmap(one)(jnp.asarray(grid_bi3, jnp.int32))
    is_img = input_ids_bt == config.image_token_id
    rank = jnp.cumsum(is_img, axis=-1) - 1
    offset = (jnp.arange(b, dtype=jnp.int32) * (p // v.merge_unit))[:, None]
    windows = jnp.where(is_img, rank + offset, 0).astype(jnp.int32)
    return jnp.asarray(pixels_bpc), meta, windows


def encode_vision_per_example(net: Any, variables: Any, pixels_bpc: jax.Array, meta_bp: dict[str, jax.Array]
                              ) -> tuple[jax.Array, jax.Array]:
    """The vision tower run on each example's rows separately (vmapped over the batch axis, so attention and its
    memory stay per example and the batch axis stays sharded). Returns merged windows [B * M, D] and deepstack
    rows [J, B * M, D] (M = P / merge_unit), the layout `Qwen3VL.embed` takes with the window index above."""
    merged_bmd, deep_bjmd = jax.vmap(lambda x, m: net.apply(variables, x, m, method=Qwen3VL.encode_vision))(
        pixels_bpc, meta_bp)
    b, m, d = merged_bmd.shape
    deep_jbmd = jnp.moveaxis(deep_bjmd, 0, 1)
    return merged_bmd.reshape(b * m, d), deep_jbmd.reshape(deep_jbmd.shape[0], b * m, d)
