"""Position metadata: 3-D MRoPE position ids for the text model and per-patch metadata for the vision tower.

Letters: B batch, T tokens, N vision patches, I images/videos (grid rows).

Every function here takes `xp` (numpy or jax.numpy) so the same code runs in the data pipeline's worker processes
(numpy, no jax) and inside `jax.jit` (static shapes: the number of grid rows and patches is static, their values
are data).
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # jax is optional for the numpy path (data workers).
    import jax
    import jax.numpy as jnp
except ImportError:  # pragma: no cover
    jax = None
    jnp = None


def _cummax(x: Any, xp: Any, axis: int = -1) -> Any:
    if xp is np:
        return np.maximum.accumulate(x, axis=axis)
    return jax.lax.cummax(x, axis=axis % x.ndim)


def _shift_right(x: Any, xp: Any, fill: Any) -> Any:
    """x[..., i-1] at position i, `fill` at 0 (along the last axis)."""
    pad = xp.full(x.shape[:-1] + (1,), fill, dtype=x.dtype)
    return xp.concatenate([pad, x[..., :-1]], axis=-1)


def _shift_left(x: Any, xp: Any, fill: Any) -> Any:
    pad = xp.full(x.shape[:-1] + (1,), fill, dtype=x.dtype)
    return xp.concatenate([x[..., 1:], pad], axis=-1)


def _slice_grid_lookup(grid_thw: Any, seg_index: Any, xp: Any, split_temporal: bool) -> tuple[Any, Any, Any]:
    """(t, h, w) of the segment with global index `seg_index`.

    Images: one segment per grid row. Videos (`split_temporal`): each temporal slice of a grid row is its own
    segment with t = 1, in order (Qwen3-VL puts a text timestamp before every slice).
    """
    if grid_thw is None or grid_thw.shape[0] == 0:
        one = xp.ones_like(seg_index)
        return one, one, one
    if split_temporal:
        ends = xp.cumsum(grid_thw[:, 0])
        row = xp.searchsorted(ends, seg_index, side="right")
        row = xp.clip(row, 0, grid_thw.shape[0] - 1)
        return xp.ones_like(seg_index), grid_thw[row, 1], grid_thw[row, 2]
    row = xp.clip(seg_index, 0, grid_thw.shape[0] - 1)
    return grid_thw[row, 0], grid_thw[row, 1], grid_thw[row, 2]


def rope_position_ids(
    input_ids: Any,
    attention_mask: Any = None,
    image_grid_thw: Any = None,
    video_grid_thw: Any = None,
    *,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int,
    xp: Any = np,
) -> tuple[Any, Any]:
    """MRoPE position ids, Qwen3-VL's `get_rope_index` rule, vectorised.

    Text tokens take consecutive positions on all three axes. A vision segment (a run of image-pad tokens, or of
    video-pad tokens for one temporal slice) of merged grid (t, gh, gw) gets `(t_idx, h_idx, w_idx) + start`,
    where `start` is one more than the largest position so far; text after it resumes at `start + max(gh, gw)`.
    Padding (attention_mask == 0) takes no position and does not move the real tokens; it is given position 0.
    Grid rows are consumed in order across the whole batch (row-major), as HF does.

    Args:
      input_ids: [B, T] ints.
      attention_mask: [B, T] (1 = real token) or None.
      image_grid_thw: [I, 3] patch grids of the images in order of appearance, or None.
      video_grid_thw: [J, 3] patch grids of the videos, or None.
    Returns:
      positions [3, B, T] int32 (T, H, W axes) and next_position [B] int32 (one past the largest real position).
    """
    ids = xp.asarray(input_ids)
    b, t = ids.shape
    valid = xp.ones((b, t), dtype=bool) if attention_mask is None else xp.asarray(attention_mask).astype(bool)
    m = spatial_merge_size
    is_img = (ids == image_token_id) & valid
    is_vid = (ids == video_token_id) & valid
    is_vis = is_img | is_vid

    def starts_and_ends(kind: Any) -> tuple[Any, Any]:
        prev = _shift_right(kind, xp, False)
        nxt = _shift_left(kind, xp, False)
        return kind & ~prev, kind & ~nxt

    img_start, img_end = starts_and_ends(is_img)
    vid_start, vid_end = starts_and_ends(is_vid)
    # Global segment index (row-major over the batch), then the grid of each token's segment.
    img_seg = xp.cumsum(img_start.reshape(-1).astype(np.int32)).reshape(b, t) - 1
    vid_seg = xp.cumsum(vid_start.reshape(-1).astype(np.int32)).reshape(b, t) - 1
    it, ih, iw = _slice_grid_lookup(image_grid_thw, xp.maximum(img_seg, 0), xp, split_temporal=False)
    vt, vh, vw = _slice_grid_lookup(video_grid_thw, xp.maximum(vid_seg, 0), xp, split_temporal=True)
    gt = xp.where(is_img, it, xp.where(is_vid, vt, 1))
    gh = xp.where(is_img, ih, xp.where(is_vid, vh, m)) // m
    gw = xp.where(is_img, iw, xp.where(is_vid, vw, m)) // m
    del gt  # images have t == 1 and video slices are split, so the temporal index is always 0.

    # Index of each vision token inside its segment.
    count = xp.cumsum(is_vis.astype(np.int32), axis=-1)
    seg_start = img_start | vid_start
    start_count = _cummax(xp.where(seg_start, count, 0), xp)
    k = count - start_count
    h_idx = xp.where(is_vis, (k // gw) % gh, 0)
    w_idx = xp.where(is_vis, k % gw, 0)

    # Each text token advances the position by 1; a segment advances it by max(gh, gw), booked on its last token
    # so that every token of the segment sees the same exclusive prefix sum (the segment's start).
    seg_end = img_end | vid_end
    advance = xp.where(valid & ~is_vis, 1, 0) + xp.where(seg_end, xp.maximum(gh, gw), 0)
    advance = advance.astype(np.int32)
    base = xp.cumsum(advance, axis=-1) - advance
    pos_t = xp.where(valid, base, 0)
    pos_h = xp.where(valid, base + h_idx, 0)
    pos_w = xp.where(valid, base + w_idx, 0)
    positions = xp.stack([pos_t, pos_h, pos_w]).astype(np.int32)
    next_position = xp.sum(advance, axis=-1).astype(np.int32)
    return positions, next_position


def vision_patch_metadata(
    grid_thw: Any,
    num_patches: int,
    *,
    spatial_merge_size: int,
    num_grid_per_side: int,
    xp: Any = np,
) -> dict[str, Any]:
    """Per-patch metadata of the vision tower for the items in `grid_thw`, padded to `num_patches` rows.

    Patches of an item come in merge-window order (each m x m window is m*m consecutive rows), temporal slices one
    after the other, items one after the other; rows past the last item are padding.

    Returns a dict of arrays over N = num_patches:
      row, col [N] int32: the patch's grid row/column (2-D rotary);
      segment [N] int32: one id per (item, temporal slice) (attention stays inside a segment); -1 for padding;
      interp_index [N, 4] int32, interp_weight [N, 4] float32: bilinear taps into the learned
        num_grid_per_side^2 position table (align_corners: sample points 0 .. side-1 over the item's h and w),
        taps ordered (h0 w0, h0 w1, h1 w0, h1 w1); zero weights on padding.
    """
    grid = xp.asarray(grid_thw).astype(np.int32).reshape(-1, 3)
    m = spatial_merge_size
    side = num_grid_per_side
    idx = xp.arange(num_patches, dtype=np.int32)
    if grid.shape[0] == 0:
        zeros = xp.zeros((num_patches,), np.int32)
        return {
            "row": zeros, "col": zeros, "segment": zeros - 1,
            "interp_index": xp.zeros((num_patches, 4), np.int32),
            "interp_weight": xp.zeros((num_patches, 4), np.float32),
        }
    counts = grid[:, 0] * grid[:, 1] * grid[:, 2]
    ends = xp.cumsum(counts)
    item = xp.clip(xp.searchsorted(ends, idx, side="right"), 0, grid.shape[0] - 1)
    is_real = idx < ends[-1]
    starts = ends - counts
    h = grid[item, 1]
    w = grid[item, 2]
    local = idx - starts[item]
    frame = local // (h * w)
    within = local % (h * w)
    blocks_w = w // m
    in_col = within % m
    in_row = (within // m) % m
    block_col = (within // (m * m)) % blocks_w
    block_row = within // (m * m * blocks_w)
    row = block_row * m + in_row
    col = block_col * m + in_col
    # One attention segment per temporal slice of each item.
    slices_before = xp.cumsum(grid[:, 0]) - grid[:, 0]
    segment = xp.where(is_real, slices_before[item] + frame, -1).astype(np.int32)

    def axis_taps(index: Any, size: Any) -> tuple[Any, Any, Any, Any]:
        # Closed form of linspace(0, side-1, size)[index] in float32 (as transformers computes it).
        src = index.astype(np.float32) * np.float32(side - 1) / xp.maximum(size - 1, 1).astype(np.float32)
        floor = xp.floor(src)
        lo = floor.astype(np.int32)
        hi = xp.clip(lo + 1, 0, side - 1)
        lo = xp.clip(lo, 0, side - 1)
        w_lo = xp.maximum(np.float32(1) - xp.abs(src - floor), np.float32(0))
        w_hi = xp.maximum(np.float32(1) - xp.abs(src - floor - np.float32(1)), np.float32(0))
        return lo, hi, w_lo.astype(np.float32), w_hi.astype(np.float32)

    h0, h1, wh0, wh1 = axis_taps(row, h)
    w0, w1, ww0, ww1 = axis_taps(col, w)
    interp_index = xp.stack([h0 * side + w0, h0 * side + w1, h1 * side + w0, h1 * side + w1], axis=-1)
    interp_weight = xp.stack([wh0 * ww0, wh0 * ww1, wh1 * ww0, wh1 * ww1], axis=-1)
    real = is_real[:, None]
    return {
        "row": xp.where(is_real, row, 0).astype(np.int32),
        "col": xp.where(is_real, col, 0).astype(np.int32),
        "segment": segment,
        "interp_index": xp.where(real, interp_index, 0).astype(np.int32),
        "interp_weight": xp.where(real, interp_weight, np.float32(0)).astype(np.float32),
    }


def response_positions(next_position: Any, num_tokens: int, offset: Any = 0, xp: Any = np) -> Any:
    """Positions [3, B, num_tokens] of generated tokens: next_position + offset + i on all three axes."""
    steps = xp.arange(num_tokens, dtype=np.int32)
    pos = xp.asarray(next_position, dtype=np.int32)[:, None] + xp.asarray(offset, dtype=np.int32) + steps[None, :]
    return xp.broadcast_to(pos[None], (3,) + pos.shape).astype(np.int32)
