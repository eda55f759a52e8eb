"""The one path from model inputs to final hidden states: vision tower, window merge, embedding, decoder.

Letters: B batch, T tokens, G vision groups (B or 1), P pixel rows per group, C patch values, M merged windows per
group, J deepstack sets, D text width.

Every caller goes through `hidden_states`: `bj.forward`, the block sampler's prefill and block steps, the AR
sampler, the training losses and `bj.diffusion.packed_logits`. What differs between them is data (positions, the
attention metadata `info`, a KV context, how the pixel rows are grouped), not code.
"""

from __future__ import annotations

from typing import Any

import jax

from bard_jax.model.attention import TokenInfo
from bard_jax.model.inputs import VisionBatch
from bard_jax.model.text import KVContext
from bard_jax.model.vlm import Qwen3VL


def encode_vision(net: Qwen3VL, variables: Any, pixels_gpc: jax.Array, meta_gp: dict[str, jax.Array]
                  ) -> tuple[jax.Array, jax.Array]:
    """The vision tower on each group of pixel rows separately: merged windows [G, M, D], deepstack [G, J, M, D].

    Several groups run under vmap, so attention and its memory stay per group and a sharded group axis (the
    batch) stays sharded. A single group runs unbatched: the same program as the tower called on its own.
    """
    if pixels_gpc.shape[0] == 1:
        merged_md, deep_jmd = net.apply(variables, pixels_gpc[0], {k: v[0] for k, v in meta_gp.items()},
                                        method=Qwen3VL.encode_vision)
        return merged_md[None], deep_jmd[None]
    return jax.vmap(lambda x, m: net.apply(variables, x, m, method=Qwen3VL.encode_vision))(pixels_gpc, meta_gp)


def hidden_states(
    net: Qwen3VL,
    params: Any,
    input_ids_bt: jax.Array,
    positions_3bt: jax.Array,
    info: TokenInfo,
    *,
    vision: VisionBatch | None = None,
    context: KVContext | None = None,
) -> tuple[jax.Array, Any]:
    """Final hidden states [B, T, D] (after the last norm) and the current tokens' (k, v) per layer (or None,
    as `net.return_kv` says).

    Args:
      net: the Linen module (`bard_jax.modeling.network`: dtype, remat, attention options).
      params: its parameters (the nested dict of `Model.params`).
      input_ids_bt: [B, T] token ids; image/video pad tokens take their windows from `vision`.
      positions_3bt: [3, B, T] MRoPE positions.
      info: per-token attention metadata of the T tokens (the mask mode is data: causal, block-causal, packed).
      vision: pixel rows in groups with each pad's window (`inputs.shared_vision` /
        `example_vision.per_example_vision`); None runs no vision tower at all.
      context: cached keys/values (and their metadata) the tokens also attend to (the samplers' decode steps).
    """
    variables = {"params": params}
    encoded = None if vision is None else encode_vision(net, variables, vision.pixels, vision.meta)
    windows = None if vision is None else vision.windows
    x_btd, deep_jbtd = net.apply(variables, input_ids_bt, encoded, windows, method=Qwen3VL.embed)
    return net.apply(variables, x_btd, positions_3bt, info, deep_jbtd, context=context, method=Qwen3VL.decode)
