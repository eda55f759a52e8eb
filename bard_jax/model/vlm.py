"""The whole Qwen3-VL network as one Linen module with named entry points.

Letters: B batch, T tokens, P vision patches, M merged windows, J deepstack sets, D text width, V vocab.

Entry points (use with `module.apply({"params": params}, ..., method=...)`):
  encode_vision(pixels, meta)            -> window embeddings [M, D], deepstack [J, M, D]
  embed(input_ids, vision, window_index) -> input embeddings [B, T, D], deepstack rows [J, B, T, D]
                                           (vision: windows in groups, [G, M, D] and [G, J, M, D])
  decode(x, positions, info, deepstack, context) -> hidden [B, T, D], current (k, v) or None
  logits(hidden)                          -> [..., V] (tied or untied head)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bard_jax.config import ModelConfig
from bard_jax.model.attention import AttentionConfig, TokenInfo
from bard_jax.model.layers import Dtype, Linear
from bard_jax.model.text import KVContext, TextModel
from bard_jax.model.vision import VisionTower


class Qwen3VL(nn.Module):
    config: ModelConfig
    dtype: Dtype | None = None
    remat_policy: str = "none"
    return_kv: bool = False
    clean_sees_noisy: bool = True
    attention: AttentionConfig = AttentionConfig()

    def setup(self) -> None:
        c = self.config
        self.visual = VisionTower(c.vision, self.dtype, self.remat_policy, self.attention)
        self.language_model = TextModel(
            c.text, self.dtype, self.remat_policy, self.return_kv, self.clean_sees_noisy, self.attention
        )
        if not c.tie_word_embeddings:
            self.lm_head = Linear(c.text.vocab_size, use_bias=False, dtype=self.dtype)

    def encode_vision(self, pixels_pc: jax.Array, meta: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
        return self.visual(pixels_pc, meta)

    def embed(
        self,
        ids_bt: jax.Array,
        vision: tuple[jax.Array, jax.Array] | None = None,
        window_index_bt: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Token embeddings with the vision windows put at the image/video pad positions.

        `vision` is the tower's output in groups, merged windows [G, M, D] and deepstack [G, J, M, D], where G is
        B (row b takes its windows from group b: the merge stays inside each example, so a sharded batch axis
        needs no gather across it) or 1 (one group shared by every row); a single group may also come without
        its axis ([M, D], [J, M, D]). `window_index_bt` [B, T] gives, for each pad token, its window within the
        group (see `bard_jax.model.inputs`). Returns x [B, T, D] and the deepstack rows [J, B, T, D] (zero at
        text positions).
        """
        c = self.config
        x = self.language_model.embed(ids_bt)
        if vision is None:
            return x, jnp.zeros((0,) + x.shape, x.dtype)
        merged_gmd, deep_gjmd = vision
        if merged_gmd.ndim == 2:
            merged_gmd, deep_gjmd = merged_gmd[None], deep_gjmd[None]
        if getattr(window_index_bt, "shape", None) != ids_bt.shape:
            raise TypeError(
                "embed needs window_index_bt [B, T] (bard_jax.model.inputs), got "
                f"{type(window_index_bt).__name__} {getattr(window_index_bt, 'shape', '')}"
            )
        is_vis = ((ids_bt == c.image_token_id) | (ids_bt == c.video_token_id))[..., None]
        src_bt1 = jnp.clip(window_index_bt, 0, merged_gmd.shape[1] - 1)[..., None]
        # A gather along the window axis, per row (G = B) or from the one shared group (G = 1, broadcast).
        x = jnp.where(is_vis, jnp.take_along_axis(merged_gmd, src_bt1, axis=1).astype(x.dtype), x)
        deep_jbtd = jnp.take_along_axis(jnp.moveaxis(deep_gjmd, 1, 0), src_bt1[None], axis=2)
        deep = jnp.where(is_vis[None], deep_jbtd.astype(x.dtype), jnp.zeros((), x.dtype))
        return x, deep

    def decode(
        self,
        x_btd: jax.Array,
        positions_3bt: jax.Array,
        info: TokenInfo,
        deepstack_jbtd: jax.Array,
        context: KVContext | None = None,
    ) -> tuple[jax.Array, Any]:
        return self.language_model(x_btd, positions_3bt, info, deepstack_jbtd, context)

    def logits(self, hidden: jax.Array) -> jax.Array:
        if self.config.tie_word_embeddings:
            return self.language_model.attend(hidden)
        return self.lm_head(hidden)

    def __call__(self, ids_bt, positions_3bt, info, pixels_pc, meta):
        """Everything at once (used to initialise parameters)."""
        vision = self.encode_vision(pixels_pc, meta)
        x, deep = self.embed(ids_bt, vision, jnp.zeros_like(ids_bt))
        h, _ = self.decode(x, positions_3bt, info, deep)
        return self.logits(h)
