"""`bj.diffusion.packed_logits`: logits over the noisy copy of one packed sample (spec section 3)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from bard_jax.diffusion.layout import collate_packed, pack_sample, token_info
from bard_jax.errors import InputError
from bard_jax.model.example_vision import per_example_vision
from bard_jax.model.hidden import hidden_states
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import Model, network


def packed_logits(
    model: Model,
    prefix_ids: Any,
    response_ids: Any,
    noisy_ids: Any,
    block_size: int,
    *,
    pad_token_id: int,
    pixel_values: Any = None,
    image_grid_thw: Any = None,
    clean_sees_noisy: bool = True,
) -> jnp.ndarray:
    """Logits [R, V] at the noisy copy of `[prefix | clean | noisy]`.

    `response_ids` is the clean response (padded here with `pad_token_id` to R = ceil(len / b) * b);
    `noisy_ids` is the corrupted response of length R. clean_sees_noisy=False gives the strict mask.
    """
    c = model.config
    for name, ids in (("prefix_ids", prefix_ids), ("response_ids", response_ids), ("noisy_ids", noisy_ids)):
        if np.ndim(ids) != 1:
            raise InputError(f"packed_logits takes one example: {name} must be a 1-D sequence of token ids, got shape "
                             f"{np.shape(ids)} (for a batch, call it once per example)")
    sample = pack_sample(
        np.asarray(prefix_ids), np.asarray(response_ids), block_size, pad_token_id=pad_token_id,
        image_token_id=c.image_token_id, video_token_id=c.video_token_id,
        spatial_merge_size=c.vision.spatial_merge_size, image_grid_thw=image_grid_thw,
    )
    r = int(sample["response_len"])
    noisy = np.asarray(noisy_ids, np.int32)
    if noisy.shape != (r,):
        raise InputError(f"noisy_ids must have the padded response length {r}, got shape {noisy.shape}")
    sample["input_ids"][-r:] = noisy
    batch = {k: jnp.asarray(v) for k, v in collate_packed([sample], len(sample["input_ids"]), r).items()}
    net = network(c, None, "none", False, clean_sees_noisy)
    vision = None
    if pixel_values is not None:
        vision = per_example_vision(c, jnp.asarray(pixel_values)[None], jnp.asarray(image_grid_thw)[None],
                                    batch["input_ids"])
    h, _ = hidden_states(net, model.params, batch["input_ids"], batch["positions"], token_info(batch, block_size),
                         vision=vision)
    return net.apply({"params": model.params}, h[0, -r:], method=Qwen3VL.logits)
