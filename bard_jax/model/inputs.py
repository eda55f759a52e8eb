"""Turn user-facing model inputs (ids, padding mask, pixel rows, grids) into what the network consumes.

Letters: B batch, T tokens, G vision groups, P pixel rows, C patch values, I grid rows.

All of it is jax.numpy with static shapes, so it runs inside `jax.jit`: the number of pixel rows and grid rows is
static, their values are data. The exception is `check_inputs` / `check_length`: plain numpy on the host values,
run by the public entry points before anything is traced, so a bad argument is an `InputError` that names it
instead of garbage output or an error from deep inside a compiled function.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bard_jax.config import ModelConfig
from bard_jax.errors import InputError
from bard_jax.model.positions import rope_position_ids, vision_patch_metadata


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


IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"


def _host_view(name: str, x: Any) -> tuple[tuple[int, ...], Any, np.ndarray | None]:
    """(shape, dtype, numpy values) of an argument. The values are None where reading them would need the device:
    a tracer (the caller's own `jax.jit`) or an array spread over several processes; those get the shape and dtype
    checks only."""
    if isinstance(x, jax.core.Tracer) or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return tuple(x.shape), x.dtype, None
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be an array, got a {type(x).__name__} that is not one ({e})") from e
    return a.shape, a.dtype, a


def _is_integer(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.integer)  # jnp's test knows jax's extra dtypes (int4, ...); bool is no integer


def _runs(flags_bt: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, start, end) of every run of True along each row, row-major (the order vision groups are consumed)."""
    edges = np.diff(np.pad(flags_bt.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    starts, ends = np.argwhere(edges == 1), np.argwhere(edges == -1)
    return [(int(r), int(a), int(b)) for (r, a), (_, b) in zip(starts, ends)]


def _check_mask(shape: tuple[int, ...], attention_mask: Any, require_prompt: bool) -> np.ndarray | None:
    shape_m, dtype, mask = _host_view("attention_mask", attention_mask)
    if shape_m != shape:
        raise InputError(f"attention_mask shape {shape_m} differs from input_ids shape {shape}")
    if not (jnp.issubdtype(dtype, jnp.bool_) or _is_integer(dtype) or jnp.issubdtype(dtype, jnp.floating)):
        raise InputError(f"attention_mask must be 0/1 or bool, got dtype {dtype}")
    if mask is None:
        return None
    if mask.dtype != bool:
        bad = (mask != 0) & (mask != 1)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise InputError(f"attention_mask must be 0/1 or bool, got {mask[r, c]} at attention_mask[{r}, {c}]")
    real = mask.astype(bool)
    empty = np.flatnonzero(~real.any(axis=1))
    if require_prompt and len(empty):
        raise InputError(f"attention_mask row {empty[0]} marks no real token: an empty prompt "
                         f"({len(empty)} such row{'s' if len(empty) > 1 else ''})")
    return real


def _check_vision(config: ModelConfig, kind: str, pixels: Any, grid: Any, ids: np.ndarray | None,
                  real: np.ndarray | None) -> None:
    """One kind (image or video): pixels and grid come together, the grid is well formed and covered by the pixel
    rows, and the prompt's placeholder runs match the grid's groups one to one (an image is one group; each
    temporal slice of a video is one), as `rope_position_ids` and `window_index` consume them."""
    v = config.vision
    m = v.spatial_merge_size
    pix_name, grid_name = ("pixel_values", "image_grid_thw") if kind == "image" else (
        "pixel_values_videos", "video_grid_thw")
    token, token_id = (IMAGE_PAD, config.image_token_id) if kind == "image" else (VIDEO_PAD, config.video_token_id)
    if (pixels is None) != (grid is None):
        given, missing = (pix_name, grid_name) if grid is None else (grid_name, pix_name)
        raise InputError(f"{given} given without {missing}: the pixel rows and their [t, h, w] grid come together")
    needs: list[tuple[int, str]] = []  # placeholder tokens of each group, in order, and how to name the group
    if grid is not None:
        p_shape, p_dtype, _ = _host_view(pix_name, pixels)
        if len(p_shape) != 2 or p_shape[1] != v.patch_dim:
            raise InputError(f"{pix_name} must be [num_patches, {v.patch_dim}], got shape {p_shape}")
        if not jnp.issubdtype(p_dtype, jnp.floating):
            raise InputError(f"{pix_name} must be floating-point (normalised patches), got dtype {p_dtype}")
        g_shape, g_dtype, g = _host_view(grid_name, grid)
        if not (len(g_shape) == 2 and g_shape[1] == 3) and g_shape != (3,):
            raise InputError(f"{grid_name} must be [num_{kind}s, 3] rows of (t, h, w), got shape {g_shape}")
        if not _is_integer(g_dtype):
            raise InputError(f"{grid_name} must hold integers, got dtype {g_dtype}")
        if g is None:
            return
        g = g.reshape(-1, 3).astype(np.int64)
        padding = np.flatnonzero(np.prod(g, axis=1) == 0)  # zero-count rows: padding, at the end only
        n = int(padding[0]) if len(padding) else len(g)
        for i, (t, h, w) in enumerate(g.tolist()):
            if min(t, h, w) < 0 or (i < n and (h % m or w % m)):
                raise InputError(f"{grid_name}[{i}] = {[t, h, w]} is not a patch grid: t, h, w must be >= 1 and h, w "
                                 f"multiples of the spatial merge size {m}")
            if i > n and t * h * w:
                raise InputError(f"{grid_name}[{i}] = {[t, h, w]} follows the zero-count padding row "
                                 f"{grid_name}[{n}] = {g[n].tolist()}: padding rows go at the end")
        rows = int(np.prod(g[:n], axis=1).sum())
        if rows > p_shape[0]:
            raise InputError(f"{grid_name} needs {rows} pixel rows (the sum of t*h*w), {pix_name} has {p_shape[0]}")
        for i, (t, h, w) in enumerate(g[:n].tolist()):
            if kind == "image":
                needs.append((t * h * w // m**2, f"image {i} ({grid_name}[{i}] = {[t, h, w]}: t*h*w / {m}**2)"))
            else:
                needs += [(h * w // m**2, f"video {i} slice {j} of {t} ({grid_name}[{i}] = {[t, h, w]}: h*w / {m}**2 "
                                          f"per temporal slice)") for j in range(t)]
    if ids is None or real is None:
        return
    is_token = ids == token_id
    stray = is_token & ~real
    if stray.any():
        r, c = np.argwhere(stray)[0]
        raise InputError(f"input_ids[{r}, {c}] is a {token} placeholder (id {token_id}) at a padding position "
                         f"(attention_mask 0)")
    runs = _runs(is_token)
    have, need = int(is_token.sum()), sum(k for k, _ in needs)
    if len(runs) != len(needs):
        if not needs:
            raise InputError(f"input_ids holds {have} {token} placeholder tokens (id {token_id}) but no {kind} was "
                             f"given ({pix_name} and {grid_name} are None)")
        groups = f"{len(needs)} {kind}" + (" slice" if kind == "video" else "") + ("s" if len(needs) > 1 else "")
        if not runs:
            raise InputError(f"{grid_name} gives {groups} but input_ids holds no {token} placeholder tokens "
                             f"(id {token_id}); the grids need {need} of them")
        raise InputError(f"input_ids holds {len(runs)} run{'s' if len(runs) > 1 else ''} of {token} placeholder "
                         f"tokens (id {token_id}, {have} in all) but {grid_name} gives {groups}, needing {need} tokens")
    for (r, start, end), (k, name) in zip(runs, needs):
        if end - start != k:
            raise InputError(f"{name} needs {k} {token} placeholder tokens, but its run input_ids[{r}, {start}:{end}] "
                             f"has {end - start}")


def check_inputs(
    config: ModelConfig,
    input_ids: Any,
    attention_mask: Any = None,
    pixel_values: Any = None,
    image_grid_thw: Any = None,
    pixel_values_videos: Any = None,
    video_grid_thw: Any = None,
    *,
    require_prompt: bool = False,
    per_example: bool = False,
) -> np.ndarray | None:
    """Raise `InputError` (naming the argument and the offending value or position) for model inputs that cannot
    be used as given; returns the attention mask as host bools (None when not given, or not readable here).

    Checks: input_ids is a non-empty [B, T] array of integers inside [0, vocab_size) (padding positions too: they
    are embedded); attention_mask has input_ids' shape and holds 0/1 or bools (with require_prompt, every row marks
    at least one real token); pixel rows and grids come in pairs, grids are well formed and covered by the pixel
    rows, and the placeholder tokens match the grids group by group. Plain numpy on host values, nothing traced or
    compiled; a tracer (under the caller's jit) is checked by shape and dtype only.

    per_example: pixels [B, P, C] with grids [B, I, 3] (`bard_jax.model.example_vision`), checked row by row.
    """
    shape, dtype, ids = _host_view("input_ids", input_ids)
    if len(shape) != 2:
        raise InputError(f"input_ids must be [batch, length], got shape {shape}")
    if 0 in shape:
        raise InputError(f"input_ids is empty (shape {shape}): a prompt needs at least one token")
    if not _is_integer(dtype):
        raise InputError(f"input_ids must hold integer token ids, got dtype {dtype}")
    vocab = config.text.vocab_size
    if ids is not None:
        bad = (ids < 0) | (ids >= vocab)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            more = int(bad.sum()) - 1
            raise InputError(f"input_ids[{r}, {c}] = {ids[r, c]} is outside the vocabulary [0, {vocab})"
                             + (f" (and {more} more)" if more else ""))
    real = None if attention_mask is None else _check_mask(shape, attention_mask, require_prompt)
    host_real = np.ones(shape, bool) if attention_mask is None else real
    if not per_example:
        _check_vision(config, "image", pixel_values, image_grid_thw, ids, host_real)
        _check_vision(config, "video", pixel_values_videos, video_grid_thw, ids, host_real)
        return real
    for pix_name, pixels, grid_name, grid in (("pixel_values", pixel_values, "image_grid_thw", image_grid_thw),
                                              ("pixel_values_videos", pixel_values_videos, "video_grid_thw",
                                               video_grid_thw)):
        if pixels is None or grid is None:
            continue  # a lone one is named by the row checks below
        p_shape, g_shape = _host_view(pix_name, pixels)[0], _host_view(grid_name, grid)[0]
        if len(p_shape) != 3 or len(g_shape) != 3 or p_shape[0] != shape[0] or g_shape[0] != shape[0]:
            raise InputError(f"per-example {pix_name} {p_shape} and {grid_name} {g_shape} must be [B, P, C] and "
                             f"[B, I, 3] with B = {shape[0]}, the rows of input_ids")
    row_of = (lambda a, b: None if a is None else a[b])
    for b in range(shape[0]):
        ids_b = None if ids is None else ids[b:b + 1]
        real_b = None if host_real is None else host_real[b:b + 1]
        try:
            _check_vision(config, "image", row_of(pixel_values, b), row_of(image_grid_thw, b), ids_b, real_b)
            _check_vision(config, "video", row_of(pixel_values_videos, b), row_of(video_grid_thw, b), ids_b, real_b)
        except InputError as e:
            raise InputError(f"batch row {b} (per-example vision): {e}") from e
    return real


def check_length(config: ModelConfig, length: int, new_tokens: int = 0, detail: str = "") -> None:
    """InputError when `length` prompt columns plus `new_tokens` generated tokens pass the model's positions."""
    limit = config.text.max_position_embeddings
    if length + new_tokens <= limit:
        return
    what = f"prompt length {length} + {new_tokens} new tokens{detail} = {length + new_tokens}" if new_tokens else (
        f"input length {length}")
    raise InputError(f"{what} exceeds the model's max positions (max_position_embeddings {limit})")


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


class VisionBatch(NamedTuple):
    """Pixel rows in groups that the tower encodes one by one, and where each pad token finds its window.

    A group is either one example's rows (G = B, the training layout: the batch axis stays sharded and every
    example's pads take that example's own windows) or the whole batch's rows concatenated (G = 1, shared by all
    rows: the layout of `bj.forward` and the samplers).
    """

    pixels: jax.Array  # [G, P, C]
    meta: dict[str, jax.Array]  # per-patch metadata, each [G, P, ...]
    windows: jax.Array  # [B, T]: the merged window (of its row's group) each image/video pad takes; 0 elsewhere


def shared_vision(config: ModelConfig, vision: VisionInputs, input_ids_bt: jax.Array) -> VisionBatch:
    """One group holding every pixel row of the batch (`vision_inputs`), windows counted over the flattened batch
    (`window_index`)."""
    return VisionBatch(vision.pixels_pc[None], {k: v[None] for k, v in vision.meta.items()},
                       window_index(config, input_ids_bt, vision.num_image_windows))
