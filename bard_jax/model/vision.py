"""Qwen3-VL vision tower: patch embedding, interpolated learned positions, 2-D rotary blocks, mergers, deepstack.

Letters: P patches (padded to a static count, a multiple of the merge unit), M = P / 4 merged windows,
D vision width, E text width, K deepstack taps, N heads, H head dim.

Patches arrive in merge-window order (each 2x2 window is 4 consecutive rows). Attention is full inside one temporal
slice of one item (a "segment") and never crosses segments; padding rows form their own segment and are dropped by
the caller.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bard_jax.config import VisionConfig
from bard_jax.errors import InputError
from bard_jax.model.attention import AttentionConfig, AttentionPlan, SegmentRule, TokenInfo, attend, plan_attention
from bard_jax.model.layers import Dtype, Embed, LayerNorm, Linear
from bard_jax.model.rope import apply_rope, vision_rope


class PatchEmbed(nn.Module):
    """The Conv3d with kernel = stride = (T, p, p) of HF: exactly a matmul over each flattened (C, T, p, p) row."""

    config: VisionConfig
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, pixels_pc: jax.Array) -> jax.Array:
        return Linear(self.config.hidden_size, dtype=self.dtype, name="proj")(pixels_pc)


class VisionAttention(nn.Module):
    config: VisionConfig
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x_pd: jax.Array, cos_ph: jax.Array, sin_ph: jax.Array, plan: AttentionPlan) -> jax.Array:
        c = self.config
        p = x_pd.shape[0]
        qkv = Linear(3 * c.hidden_size, dtype=self.dtype, name="qkv")(x_pd)
        q, k, v = jnp.split(qkv.reshape(p, 3, c.num_heads, c.head_dim), 3, axis=1)
        q, k, v = q[:, 0], k[:, 0], v[:, 0]  # [P, N, H]
        # Rotary in float32, then back to the compute dtype (as HF does).
        q = apply_rope(q.astype(jnp.float32), cos_ph, sin_ph).astype(v.dtype)
        k = apply_rope(k.astype(jnp.float32), cos_ph, sin_ph).astype(v.dtype)
        out = attend(q[None], k[None], v[None], scale=c.head_dim**-0.5, plan=plan)[0]
        return Linear(c.hidden_size, dtype=self.dtype, name="proj")(out.reshape(p, c.hidden_size))


class VisionMLP(nn.Module):
    config: VisionConfig
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = Linear(self.config.intermediate_size, dtype=self.dtype, name="linear_fc1")(x)
        h = jax.nn.gelu(h, approximate=True)  # gelu_pytorch_tanh
        return Linear(self.config.hidden_size, dtype=self.dtype, name="linear_fc2")(h)


class VisionBlock(nn.Module):
    """x + attn(LN1(x)), then x + mlp(LN2(x)); scanned over depth, collecting deepstack taps in the carry."""

    config: VisionConfig
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, jax.Array], layer: jax.Array, cos, sin, plan, tap_slot):
        x, taps_kpd = carry
        c = self.config
        x = x + VisionAttention(c, self.dtype, name="attn")(
            LayerNorm(c.layer_norm_eps, self.dtype, name="norm1")(x), cos, sin, plan
        )
        x = x + VisionMLP(c, self.dtype, name="mlp")(LayerNorm(c.layer_norm_eps, self.dtype, name="norm2")(x))
        if taps_kpd.shape[0]:
            slot = tap_slot[layer]
            updated = jax.lax.dynamic_update_index_in_dim(taps_kpd, x.astype(taps_kpd.dtype), jnp.maximum(slot, 0), 0)
            taps_kpd = jnp.where(slot >= 0, updated, taps_kpd)
        return (x, taps_kpd), None


class PatchMerger(nn.Module):
    """Group the 4 patches of each window and project to the text width: norm -> fc1 -> GELU(erf) -> fc2.

    The final merger normalises each patch before grouping (over D); the deepstack mergers normalise after
    grouping (over 4D).
    """

    config: VisionConfig
    postshuffle_norm: bool
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x_pd: jax.Array) -> jax.Array:
        c = self.config
        wide = c.hidden_size * c.merge_unit
        norm = LayerNorm(c.layer_norm_eps, self.dtype, name="norm")
        if self.postshuffle_norm:
            h = norm(x_pd.reshape(-1, wide))
        else:
            h = norm(x_pd).reshape(-1, wide)
        h = Linear(wide, dtype=self.dtype, name="linear_fc1")(h)
        h = jax.nn.gelu(h, approximate=False)
        return Linear(c.out_hidden_size, dtype=self.dtype, name="linear_fc2")(h)


class VisionTower(nn.Module):
    config: VisionConfig
    dtype: Dtype | None = None
    remat_policy: str = "none"
    attention: AttentionConfig = AttentionConfig()

    @nn.compact
    def __call__(self, pixels_pc: jax.Array, meta: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
        """Vision features.

        Args:
          pixels_pc: [P, C*T*p*p] pixel rows (float).
          meta: `bard_jax.model.positions.vision_patch_metadata` for these rows (row, col, segment,
            interp_index [P, 4], interp_weight [P, 4]).
        Returns:
          merged [M, E] window embeddings and deepstack [K, M, E] features (M = P / 4).
        """
        c = self.config
        x = PatchEmbed(c, self.dtype, name="patch_embed")(pixels_pc)
        table = Embed(c.num_position_embeddings, c.hidden_size, name="pos_embed").table()
        # Four weighted taps of the learned position table, summed in float32 and cast once.
        taps = jnp.take(table, meta["interp_index"], axis=0).astype(jnp.float32)  # [P, 4, D]
        pos = jnp.sum(taps * meta["interp_weight"][..., None], axis=1)
        x = x + pos.astype(x.dtype)

        cos, sin = vision_rope(meta["row"], meta["col"], c.head_dim, c.rope_theta)
        k = len(c.deepstack_visual_indexes)
        tap_slot = np.full((c.depth,), -1, np.int32)
        for slot, layer in enumerate(c.deepstack_visual_indexes):
            tap_slot[layer] = slot
        block = VisionBlock
        if self.remat_policy != "none":
            block = nn.remat(block, policy=remat_policy(self.remat_policy), prevent_cse=False)
        blocks = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.depth,
        )(c, self.dtype, name="blocks")
        taps0 = jnp.zeros((k,) + x.shape, x.dtype)
        # Attention stays inside a segment; padding rows (segment -1) form one more segment of their own.
        seg = TokenInfo(block=meta["segment"][None], kind=jnp.zeros_like(meta["segment"])[None],
                        valid=jnp.ones_like(meta["segment"], bool)[None])
        plan = plan_attention(seg, seg, rule=SegmentRule(), config=self.attention)
        (x, taps_kpd), _ = blocks((x, taps0), jnp.arange(c.depth), cos, sin, plan, jnp.asarray(tap_slot))

        merged = PatchMerger(c, postshuffle_norm=False, dtype=self.dtype, name="merger")(x)
        if k == 0:
            return merged, jnp.zeros((0,) + merged.shape, merged.dtype)
        deep = nn.vmap(
            PatchMerger,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=0,
            out_axes=0,
            axis_size=k,
        )(c, postshuffle_norm=True, dtype=self.dtype, name="deepstack_merger_list")(taps_kpd)
        return merged, deep


# Values the text layers name (`jax.ad_checkpoint.checkpoint_name`) for the "projections" policy: the attention's
# projections and output and the two residual-branch outputs. The MLP's hidden units (the widest activation, 3-4x
# the width) are not among them: the backward recomputes gate and up from the saved layer input.
PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "attn_out", "o_proj", "down_proj")

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "projections": jax.checkpoint_policies.save_only_these_names(*PROJECTION_NAMES),
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def remat_policy(name: str):
    """A jax.checkpoint policy by name: 'full' (save nothing), 'projections' (save the text layers' attention
    projections and branch outputs, recompute the MLP; the vision tower names nothing, so it saves nothing),
    'dots' (save matmul outputs), 'dots_saveable', or 'none'."""
    if name not in REMAT_POLICIES:
        raise InputError(f"unknown remat policy {name!r}; known: {sorted(REMAT_POLICIES)} or 'none'")
    return REMAT_POLICIES[name]
