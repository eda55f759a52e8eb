"""Qwen3-VL text decoder: pre-norm layers with q/k RMSNorm, GQA, SwiGLU and interleaved MRoPE, scanned over depth.

Letters: B batch, T tokens of this forward, C cached context tokens, D width, F mlp width, N query heads,
K kv heads, H head dim, L layers, J deepstack feature sets.

Deepstack injection is part of the scanned body: layer l adds feature set l (zero past J) to the hidden states at
the visual positions after its residual MLP, as HF does after decoder layers 0..J-1.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from bard_jax.config import TextConfig
from bard_jax.model.attention import AttentionConfig, AttentionPlan, TokenInfo, TokenRule, attend, plan_attention
from bard_jax.model.layers import Dtype, Embed, Linear, RMSNorm
from bard_jax.model.rope import apply_rope, text_rope
from bard_jax.model.vision import remat_policy

# Logical activation axes (bard_jax.sharding.ACTIVATION_RULES; no-ops outside `activation_sharding`).
ACT_BTD = ("act_batch", "act_length", "act_embed")
ACT_MLP = ("act_batch", "act_length", "act_mlp")


@flax.struct.dataclass
class KVContext:
    """Cached keys/values (after k_norm and rotary) of every layer, and their metadata.

    k, v: [L, B, C, K, H]; info: TokenInfo over the C slots (unwritten slots are invalid).
    """

    k: jax.Array
    v: jax.Array
    info: TokenInfo


class TextAttention(nn.Module):
    config: TextConfig
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x_btd, cos, sin, plan: AttentionPlan, ctx_k, ctx_v):
        c = self.config
        b, t, _ = x_btd.shape
        q = Linear(c.num_attention_heads * c.head_dim, use_bias=False, dtype=self.dtype, name="q_proj")(x_btd)
        k = Linear(c.num_key_value_heads * c.head_dim, use_bias=False, dtype=self.dtype, name="k_proj")(x_btd)
        v = Linear(c.num_key_value_heads * c.head_dim, use_bias=False, dtype=self.dtype, name="v_proj")(x_btd)
        # Names for the "projections" remat policy (bard_jax.model.vision.PROJECTION_NAMES).
        q, k, v = checkpoint_name(q, "q_proj"), checkpoint_name(k, "k_proj"), checkpoint_name(v, "v_proj")
        q = RMSNorm(c.rms_norm_eps, self.dtype, name="q_norm")(q.reshape(b, t, c.num_attention_heads, c.head_dim))
        k = RMSNorm(c.rms_norm_eps, self.dtype, name="k_norm")(k.reshape(b, t, c.num_key_value_heads, c.head_dim))
        v = v.reshape(b, t, c.num_key_value_heads, c.head_dim)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        context = None if ctx_k is None else (ctx_k.astype(k.dtype), ctx_v.astype(v.dtype))
        out = checkpoint_name(attend(q, k, v, scale=c.head_dim**-0.5, plan=plan, context=context), "attn_out")
        out = Linear(c.hidden_size, use_bias=False, dtype=self.dtype, name="o_proj")(out.reshape(b, t, -1))
        out = checkpoint_name(out, "o_proj")
        return out, (k, v)


class TextMLP(nn.Module):
    config: TextConfig
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x):
        c = self.config
        gate = Linear(c.intermediate_size, use_bias=False, dtype=self.dtype, name="gate_proj")(x)
        up = Linear(c.intermediate_size, use_bias=False, dtype=self.dtype, name="up_proj")(x)
        hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ACT_MLP)
        return checkpoint_name(Linear(c.hidden_size, use_bias=False, dtype=self.dtype, name="down_proj")(hidden),
                               "down_proj")


class DecoderLayer(nn.Module):
    config: TextConfig
    dtype: Dtype | None = None
    return_kv: bool = False

    @nn.compact
    def __call__(self, h_btd, xs, cos, sin, plan, deepstack_jbtd):
        layer, ctx_k, ctx_v = xs
        c = self.config
        h_btd = nn.with_logical_constraint(h_btd, ACT_BTD)
        attn, kv = TextAttention(c, self.dtype, name="self_attn")(
            RMSNorm(c.rms_norm_eps, self.dtype, name="input_layernorm")(h_btd), cos, sin, plan, ctx_k, ctx_v
        )
        h_btd = h_btd + attn
        h_btd = h_btd + TextMLP(c, self.dtype, name="mlp")(
            RMSNorm(c.rms_norm_eps, self.dtype, name="post_attention_layernorm")(h_btd)
        )
        num_sets = deepstack_jbtd.shape[0]
        if num_sets:
            feat = jax.lax.dynamic_index_in_dim(deepstack_jbtd, jnp.minimum(layer, num_sets - 1), 0, keepdims=False)
            h_btd = h_btd + jnp.where(layer < num_sets, feat, jnp.zeros_like(feat)).astype(h_btd.dtype)
        return h_btd, (kv if self.return_kv else None)


class TextModel(nn.Module):
    """Embedding table, the scanned decoder stack and the final norm (HF `model.language_model`)."""

    config: TextConfig
    dtype: Dtype | None = None
    remat_policy: str = "none"
    return_kv: bool = False
    clean_sees_noisy: bool = True
    attention: AttentionConfig = AttentionConfig()

    def setup(self) -> None:
        c = self.config
        self.embed_tokens = Embed(c.vocab_size, c.hidden_size, dtype=self.dtype)
        layer = DecoderLayer
        if self.remat_policy != "none":
            layer = nn.remat(layer, policy=remat_policy(self.remat_policy), prevent_cse=False)
        self.layers = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_hidden_layers,
        )(c, self.dtype, self.return_kv)
        self.norm = RMSNorm(c.rms_norm_eps, self.dtype)

    def embed(self, ids_bt: jax.Array) -> jax.Array:
        return self.embed_tokens(ids_bt)

    def attend(self, h: jax.Array) -> jax.Array:
        """Logits against the embedding table (tied head)."""
        return self.embed_tokens.attend(h)

    def __call__(
        self,
        x_btd: jax.Array,
        positions_3bt: jax.Array,
        info: TokenInfo,
        deepstack_jbtd: jax.Array,
        context: KVContext | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """Run the layers.

        Args:
          x_btd: input embeddings [B, T, D].
          positions_3bt: MRoPE positions [3, B, T].
          info: attention metadata of the T tokens (queries and current keys).
          deepstack_jbtd: [J, B, T, D] features to add after layers 0..J-1 (zero rows at non-visual positions).
          context: optional cached keys/values attended together with the current tokens (read only).
        Returns:
          hidden [B, T, D] after the final norm, and (k, v) [L, B, T, K, H] of the current tokens when
          `return_kv` (the caller writes them into its cache), else None.
        """
        c = self.config
        cos, sin = text_rope(positions_3bt, c.head_dim, c.rope_theta, c.mrope_section, x_btd.dtype)
        ctx_k = None if context is None else context.k
        ctx_v = None if context is None else context.v
        keys = info if context is None else context.info.concat(info)
        # The mask (dense) or tile map (flash) is built once here and shared by every layer of the scan.
        plan = plan_attention(info, keys, rule=TokenRule(self.clean_sees_noisy), config=self.attention)
        xs = (jnp.arange(c.num_hidden_layers), ctx_k, ctx_v)
        h, kv = self.layers(x_btd, xs, cos, sin, plan, deepstack_jbtd)
        return self.norm(h), kv
