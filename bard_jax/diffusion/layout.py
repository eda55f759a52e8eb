"""The packed training layout `[prefix (P) | clean response (R) | noisy response (R)]` (spec section 3).

Letters: B batch, L packed length (bucket), S supervised slots (= padded response length bucket), P prefix,
R padded response, b block size.

Built on the host in numpy (data workers import no jax); the noisy copy is filled on device by the corruption
(`bard_jax.diffusion.noise`). Block ids are not stored: they depend on the block size, and the SWD teacher uses
another one than the student, so each token carries its index inside its segment (`seg_index`) and each sample
its prefix length; `block_ids` turns them into block ids for any b.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bard_jax.errors import BardError
from bard_jax.model.attention import CLEAN, NOISY, PLAIN
from bard_jax.model.positions import rope_position_ids


class LayoutError(BardError, ValueError):
    """A sample that cannot be laid out (empty response, bad block size, too long for the buckets)."""


def pad_response(response_ids: np.ndarray, block_size: int, pad_token_id: int) -> np.ndarray:
    """The response padded with `pad_token_id` to a multiple of the block size: R = ceil(len / b) * b."""
    if block_size < 1:
        raise LayoutError(f"block size must be >= 1, got {block_size}")
    r = len(response_ids)
    if r == 0:
        raise LayoutError("empty response")
    padded = -(-r // block_size) * block_size
    out = np.full((padded,), pad_token_id, np.int32)
    out[:r] = response_ids
    return out


def pack_sample(
    prefix_ids: np.ndarray,
    response_ids: np.ndarray,
    block_size: int,
    *,
    pad_token_id: int,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int,
    image_grid_thw: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One sample in the packed layout (unpadded, length L = P + 2R).

    Returns arrays over the L tokens: `input_ids` (the noisy copy still holds the clean tokens), `kind`
    (PLAIN/CLEAN/NOISY), `seg_index` (index inside the prefix or inside the response), `positions` [3, L] (the noisy
    copy reuses the clean copy's positions), `labels` (no shift: the clean token at the same response index on the
    noisy copy, -1 elsewhere), `pad_tail` (noisy tokens past the real response end), and scalars `prefix_len`,
    `response_len` (R, padded) and `real_response_len`.

    `image_grid_thw` [I, 3] and `video_grid_thw` [J, 3] are the grids of the prefix's images and videos in order
    (None: none). Each temporal patch of a video is its own run of video pads after its timestamp text, so it gets
    its own MRoPE segment, as in the samplers (`rope_position_ids`).
    """
    prefix = np.asarray(prefix_ids, np.int32)
    response = pad_response(np.asarray(response_ids, np.int32), block_size, pad_token_id)
    p, r, real = len(prefix), len(response), len(response_ids)
    clean_seq = np.concatenate([prefix, response])
    pos, _ = rope_position_ids(
        clean_seq[None], None, image_grid_thw, video_grid_thw, image_token_id=image_token_id,
        video_token_id=video_token_id, spatial_merge_size=spatial_merge_size, xp=np,
    )
    pos = pos[:, 0]
    positions = np.concatenate([pos, pos[:, p:]], axis=1)
    kind = np.concatenate([np.full(p, PLAIN), np.full(r, CLEAN), np.full(r, NOISY)]).astype(np.int32)
    seg_index = np.concatenate([np.arange(p), np.arange(r), np.arange(r)]).astype(np.int32)
    labels = np.concatenate([np.full(p + r, -1), response]).astype(np.int32)
    pad_tail = np.concatenate([np.zeros(p + r, bool), np.arange(r) >= real])
    return {
        "input_ids": np.concatenate([clean_seq, response]).astype(np.int32),
        "kind": kind,
        "seg_index": seg_index,
        "positions": positions.astype(np.int32),
        "labels": labels,
        "pad_tail": pad_tail,
        "prefix_len": np.int32(p),
        "response_len": np.int32(r),
        "real_response_len": np.int32(real),
    }


def drop_noisy_copy(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The sample as `[prefix | clean response]` only (length P + R): the layout of the AR objective, which reads
    the clean copy alone, so its batches do not pay for a noisy copy that nothing attends to."""
    keep = int(sample["prefix_len"]) + int(sample["response_len"])
    out = dict(sample)
    for k in ("input_ids", "kind", "seg_index", "labels", "pad_tail"):
        out[k] = sample[k][:keep]
    out["positions"] = sample["positions"][:, :keep]
    return out


def collate_packed(samples: list[dict[str, np.ndarray]], length: int, slots: int) -> dict[str, np.ndarray]:
    """Pad packed samples to a static bucket: tokens to `length`, supervised slots to `slots`.

    Adds `valid` [B, L] and the gather indices of the noisy copy: `noisy_index` [B, S] (position of response
    index s of the noisy copy), `noisy_valid` [B, S] (s < R). Padding tokens are invalid PLAIN tokens with
    block -1: they attend to nothing real and nothing attends to them.
    """
    b = len(samples)
    out = {
        "input_ids": np.zeros((b, length), np.int32),
        "kind": np.zeros((b, length), np.int32),
        "seg_index": np.full((b, length), -1, np.int32),
        "positions": np.zeros((3, b, length), np.int32),
        "labels": np.full((b, length), -1, np.int32),
        "pad_tail": np.zeros((b, length), bool),
        "valid": np.zeros((b, length), bool),
        "noisy_index": np.zeros((b, slots), np.int32),
        "noisy_valid": np.zeros((b, slots), bool),
        "prefix_len": np.zeros((b,), np.int32),
        "response_len": np.zeros((b,), np.int32),
        "real_response_len": np.zeros((b,), np.int32),
    }
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        r = int(s["response_len"])
        if n > length or r > slots:
            raise LayoutError(f"sample of length {n} (response {r}) does not fit the bucket ({length}, {slots})")
        for k in ("input_ids", "kind", "seg_index", "labels", "pad_tail"):
            out[k][i, :n] = s[k]
        out["positions"][:, i, :n] = s["positions"]
        out["valid"][i, :n] = True
        start = n - r
        out["noisy_index"][i, :r] = np.arange(start, n)
        out["noisy_valid"][i, :r] = True
        for k in ("prefix_len", "response_len", "real_response_len"):
            out[k][i] = s[k]
    return out


def block_ids(kind: Any, seg_index: Any, prefix_len: Any, block_size: int, xp: Any = np) -> Any:
    """Block ids [B, L] for block size b: prefix i -> i // b; clean/noisy r -> ceil(P / b) + r // b.

    Padding (seg_index < 0) gets -1.
    """
    prefix_blocks = (xp.asarray(prefix_len) + block_size - 1) // block_size
    blk = xp.where(kind == PLAIN, seg_index // block_size, prefix_blocks[:, None] + seg_index // block_size)
    return xp.where(seg_index < 0, -1, blk).astype(np.int32)


def token_info(batch: dict[str, Any], block_size: int):
    """`TokenInfo` of a packed batch for block size b (jax arrays)."""
    import jax.numpy as jnp

    from bard_jax.model.attention import TokenInfo

    blk = block_ids(batch["kind"], batch["seg_index"], batch["prefix_len"], block_size, xp=jnp)
    return TokenInfo(block=blk, kind=batch["kind"], valid=batch["valid"])
