"""Vision inputs grouped per example: every row of a batch encodes only its own images and videos.

Letters: B batch, T tokens, P / Q image / video pixel rows per example, C patch values, I / J image / video grid rows
per example.

Two layouts hold the same pixels:

* concatenated (what transformers' processor returns, and `bj.forward` takes): `pixel_values` [sum P, C] and
  `image_grid_thw` [sum I, 3] over the whole batch, images in the order their placeholder runs appear row-major;
  the same for videos;
* per example (training batches and the samplers): `pixel_values` [B, P, C] holding row b's images in order then
  zero rows, `image_grid_thw` [B, I, 3] holding their grids then zero rows; the same for videos.

In the per-example layout the vision tower runs once per row (vmapped), so its attention and memory stay inside a
row and a sharded batch axis stays sharded. `split_by_example` turns the concatenated layout into it on the host;
`per_example_vision` and `example_positions` consume it inside `jax.jit`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bard_jax.config import ModelConfig
from bard_jax.errors import InputError
from bard_jax.model.inputs import VisionBatch
from bard_jax.model.positions import rope_position_ids, vision_patch_metadata


class ExampleVision(NamedTuple):
    """Per-example pixel rows and grids of a batch; a kind the batch does not hold is None."""

    image_pixels: Any  # [B, P, C]
    image_grid: Any  # [B, I, 3]
    video_pixels: Any  # [B, Q, C]
    video_grid: Any  # [B, J, 3]

    @property
    def empty(self) -> bool:
        return self.image_pixels is None and self.video_pixels is None


def _bucket(need: int, unit: int) -> int:
    """The smallest `unit * 2**k` holding `need` (a few shapes for many image sizes: few compilations)."""
    size = unit
    while size < need:
        size *= 2
    return size


def _runs_per_row(flags_bt: np.ndarray) -> np.ndarray:
    """The row of every run of True, row-major (the order the concatenated layout consumes grid rows)."""
    starts = flags_bt & ~np.pad(flags_bt, ((0, 0), (1, 0)))[:, :-1]
    return np.nonzero(starts)[0]


def _split_kind(pixels: np.ndarray, grid: np.ndarray, item_rows: np.ndarray, batch: int, unit: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-example pixels [B, P, C] and grids [B, I, 3] of one kind, given each grid row's batch row."""
    grid = grid.reshape(-1, 3).astype(np.int32)
    counts = np.prod(grid, axis=1)
    n = int(np.count_nonzero(counts))  # zero-count grid rows are padding, at the end
    offsets = np.concatenate([[0], np.cumsum(counts[:n])])
    per_row = np.zeros(batch, np.int64)
    images_per_row = np.zeros(batch, np.int64)
    for item in range(n):
        per_row[item_rows[item]] += counts[item]
        images_per_row[item_rows[item]] += 1
    rows = _bucket(int(per_row.max()), unit)
    slots = _bucket(max(int(images_per_row.max()), 1), 1)
    out_pixels = np.zeros((batch, rows, pixels.shape[1]), pixels.dtype)
    out_grid = np.zeros((batch, slots, 3), np.int32)
    filled = np.zeros(batch, np.int64)
    slot = np.zeros(batch, np.int64)
    for item in range(n):
        r = item_rows[item]
        out_pixels[r, filled[r]:filled[r] + counts[item]] = pixels[offsets[item]:offsets[item + 1]]
        out_grid[r, slot[r]] = grid[item]
        filled[r] += counts[item]
        slot[r] += 1
    return out_pixels, out_grid


def split_by_example(config: ModelConfig, input_ids: np.ndarray, attention_mask: np.ndarray | None,
                     pixel_values: Any = None, image_grid_thw: Any = None, pixel_values_videos: Any = None,
                     video_grid_thw: Any = None) -> ExampleVision:
    """The concatenated layout (host values, already checked by `check_inputs`) regrouped per example.

    Image k belongs to the row of the k-th image placeholder run (row-major); a video of t temporal slices owns the
    next t video runs, which must lie in one row. Rows per example are rounded up to the merge unit times a power of
    two, grid rows per example to a power of two, so that prompts with similar images share compiled shapes.
    """
    ids = np.asarray(input_ids)
    real = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    batch = ids.shape[0]
    unit = config.vision.merge_unit
    parts: list[Any] = [None, None, None, None]
    if pixel_values is not None:
        rows = _runs_per_row((ids == config.image_token_id) & real)
        parts[0], parts[1] = _split_kind(np.asarray(pixel_values), np.asarray(image_grid_thw), rows, batch, unit)
    if pixel_values_videos is not None:
        grid = np.asarray(video_grid_thw).reshape(-1, 3)
        runs = _runs_per_row((ids == config.video_token_id) & real)
        firsts, item_rows = 0, []
        for i, t in enumerate(grid[:, 0].tolist()):
            if not np.prod(grid[i]):
                break
            owners = set(runs[firsts:firsts + t].tolist())
            if len(owners) != 1:
                raise InputError(f"video {i} (video_grid_thw[{i}] = {grid[i].tolist()}) has its {t} temporal slices' "
                                 f"placeholder runs in several rows {sorted(owners)}: a video belongs to one prompt")
            item_rows.append(owners.pop())
            firsts += t
        parts[2], parts[3] = _split_kind(np.asarray(pixel_values_videos), grid, np.asarray(item_rows), batch, unit)
    return ExampleVision(*parts)


def per_example_vision(config: ModelConfig, pixels_bpc: jax.Array | None, grid_bi3: jax.Array | None,
                       input_ids_bt: jax.Array, video_pixels_bqc: jax.Array | None = None,
                       video_grid_bj3: jax.Array | None = None) -> VisionBatch:
    """One vision group per example: row b's images then its videos, packed into [B, P + Q, C].

    Args:
      pixels_bpc, grid_bi3: each example's image pixel rows (its images in order, then padding rows) and grids
        (zero rows = padding); None when the batch holds no image.
      input_ids_bt: [B, T] token ids. The k-th image pad of row b takes window k of example b; a video pad takes
        the row's image windows count plus its rank among the row's video pads.
      video_pixels_bqc, video_grid_bj3: the same for videos (each temporal slice is one attention segment).
    """
    v = config.vision
    if pixels_bpc is None and video_pixels_bqc is None:
        raise InputError("per_example_vision needs image or video pixel rows")
    for name, px in (("pixel rows", pixels_bpc), ("video pixel rows", video_pixels_bqc)):
        if px is not None and px.shape[1] % v.merge_unit:
            raise InputError(f"per-example {name} {px.shape[1]} not a multiple of the merge unit {v.merge_unit}")
    is_img = input_ids_bt == config.image_token_id
    is_vid = input_ids_bt == config.video_token_id
    img_rank = jnp.cumsum(is_img, axis=-1) - 1
    vid_rank = jnp.cumsum(is_vid, axis=-1) - 1 + jnp.sum(is_img, axis=-1, keepdims=True)
    windows = jnp.where(is_img, img_rank, jnp.where(is_vid, vid_rank, 0)).astype(jnp.int32)
    if video_pixels_bqc is None:
        pixels, grid = jnp.asarray(pixels_bpc), jnp.asarray(grid_bi3, jnp.int32)
    elif pixels_bpc is None:
        pixels, grid = jnp.asarray(video_pixels_bqc), jnp.asarray(video_grid_bj3, jnp.int32)
    else:
        pixels, grid = _pack_rows(jnp.asarray(pixels_bpc), jnp.asarray(grid_bi3, jnp.int32),
                                  jnp.asarray(video_pixels_bqc), jnp.asarray(video_grid_bj3, jnp.int32))
    p = pixels.shape[1]

    def one(grid_i3: jax.Array) -> dict[str, jax.Array]:
        return vision_patch_metadata(
            grid_i3, p, spatial_merge_size=v.spatial_merge_size, num_grid_per_side=v.num_grid_per_side, xp=jnp
        )

    return VisionBatch(pixels, jax.vmap(one)(grid), windows)


def _pack_rows(image_bpc: jax.Array, image_grid_bi3: jax.Array, video_bqc: jax.Array, video_grid_bj3: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """Each row's real image rows followed directly by its video rows ([B, P + Q, C], zeros after), and the grids
    side by side ([B, I + J, 3]; the image grids' zero padding rows in between consume no pixel rows)."""
    p, q = image_bpc.shape[1], video_bqc.shape[1]
    n_img = jnp.sum(jnp.prod(image_grid_bi3, axis=-1), axis=-1)[:, None]  # [B, 1]
    n_vid = jnp.sum(jnp.prod(video_grid_bj3, axis=-1), axis=-1)[:, None]
    j = jnp.arange(p + q)[None, :]
    src = jnp.clip(jnp.where(j < n_img, j, p + j - n_img), 0, p + q - 1)
    both = jnp.concatenate([image_bpc, video_bqc.astype(image_bpc.dtype)], axis=1)
    packed = jnp.take_along_axis(both, src[..., None], axis=1)
    packed = jnp.where((j < n_img + n_vid)[..., None], packed, jnp.zeros_like(packed))
    return packed, jnp.concatenate([image_grid_bi3, video_grid_bj3], axis=1)


def example_positions(config: ModelConfig, input_ids_bt: jax.Array, attention_mask_bt: jax.Array,
                      image_grid_bi3: jax.Array | None, video_grid_bj3: jax.Array | None
                      ) -> tuple[jax.Array, jax.Array]:
    """MRoPE positions [3, B, T] and next positions [B] from per-example grids: each row consumes its own grid rows
    (the same values as the concatenated layout's row-major consumption)."""

    def one(ids_t, mask_t, img_i3, vid_j3):
        pos, nxt = rope_position_ids(
            ids_t[None], mask_t[None], img_i3, vid_j3, image_token_id=config.image_token_id,
            video_token_id=config.video_token_id, spatial_merge_size=config.vision.spatial_merge_size, xp=jnp,
        )
        return pos[:, 0], nxt[0]

    axes = (0, 0, None if image_grid_bi3 is None else 0, None if video_grid_bj3 is None else 0)
    pos_b3t, next_b = jax.vmap(one, in_axes=axes)(input_ids_bt, attention_mask_bt, image_grid_bi3, video_grid_bj3)
    return jnp.moveaxis(pos_b3t, 0, 1), next_b
