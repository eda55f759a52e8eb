"""Attention masks computed from per-token metadata, and grouped-query attention over an optional KV context.

Letters: B batch, T query tokens, S key tokens, N query heads, K kv heads, G = N/K, H head dim.

No [T, S] mask ever crosses a function boundary: callers pass `TokenInfo` for the queries and for the keys and a
rule, and `attend` builds what its implementation needs (`AttentionConfig.impl`):

* dense: the [B, T, S] mask and one softmax (`grouped_attention`): the reference, the fastest at small shapes
  (the sampler's blocks against the cache);
* flash: `bard_jax.model.flash`, memory linear in the length, empty tiles skipped;
* auto: flash when there are at least two query tiles and two key tiles, else dense.

Environment overrides for a whole process (debugging, and the test runs that force flash through every model test):
`BARD_JAX_ATTENTION=dense|flash` replaces `auto`, `BARD_JAX_ATTENTION_TILE=N` both tile sizes. They are read when a
function is traced: call `jax.clear_caches()` after changing them in a running process.

The metadata is turned into a plan once per forward (`plan_attention`) and the plan is shared by all layers.

One rule covers every mode of the project:

* token-causal (HF semantics): block = token index, kind = PLAIN;
* block-causal prompt (the sampler's prefill, b-chunks from the first real token): block = index // b;
* sampler block against the cache: the cache holds earlier blocks, the block sees all of them and itself;
* the packed training layout `[prefix | clean | noisy]` (spec section 3): kinds PLAIN / CLEAN / NOISY.

For a query q and key k (True = may attend), with blk the block id:
  noisy q:  k is PLAIN, or k is CLEAN with blk(k) < blk(q), or k is NOISY with blk(k) == blk(q);
  other q:  blk(k) <= blk(q), and, with clean_sees_noisy=False, k is not NOISY;
and always k is valid. Example, 3 prompt tokens, 4 response tokens, b = 2 (P prompt, C clean, N noisy):

      P0 P1 P2 C0 C1 C2 C3 N0 N1 N2 N3
  P0   1  1  .  .  .  .  .  .  .  .  .
  P1   1  1  .  .  .  .  .  .  .  .  .
  P2   1  1  1  .  .  .  .  .  .  .  .
  C0   1  1  1  1  1  .  .  1  1  .  .
  C1   1  1  1  1  1  .  .  1  1  .  .
  C2   1  1  1  1  1  1  1  1  1  1  1
  C3   1  1  1  1  1  1  1  1  1  1  1
  N0   1  1  1  .  .  .  .  1  1  .  .
  N1   1  1  1  .  .  .  .  1  1  .  .
  N2   1  1  1  1  1  .  .  .  .  1  1
  N3   1  1  1  1  1  .  .  .  .  1  1

(C rows see N columns of blocks <= their own: the released checkpoints were trained with this; the strict variant
clears those entries.) A query that may attend no key gets 0 (finite, never NaN).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bard_jax.errors import InputError
from bard_jax.model import flash

PLAIN, CLEAN, NOISY = 0, 1, 2


@flax.struct.dataclass
class TokenInfo:
    """Per-token attention metadata, each [B, T]."""

    block: jax.Array  # int32 block id
    kind: jax.Array  # int32: PLAIN (prompt / ordinary text), CLEAN or NOISY response copy
    valid: jax.Array  # bool: a real token (not batch padding, not an unwritten cache slot)

    @classmethod
    def causal(cls, valid_bt: jax.Array, offset: int | jax.Array = 0) -> TokenInfo:
        """Token-causal metadata: each token is its own block (index + offset)."""
        b, t = valid_bt.shape
        block = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None] + offset, (b, t))
        return cls(block=block, kind=jnp.zeros((b, t), jnp.int32), valid=valid_bt.astype(bool))

    @classmethod
    def block_causal(cls, valid_bt: jax.Array, block_size: int) -> TokenInfo:
        """Block-causal prompt: b-chunks counted from each row's first real token (left padding allowed)."""
        valid = valid_bt.astype(bool)
        rank = jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1  # index among the row's real tokens
        block = jnp.where(valid, rank // block_size, -1).astype(jnp.int32)
        return cls(block=block, kind=jnp.zeros_like(block), valid=valid)

    def concat(self, other: TokenInfo) -> TokenInfo:
        return TokenInfo(
            block=jnp.concatenate([self.block, other.block], axis=1),
            kind=jnp.concatenate([self.kind, other.kind], axis=1),
            valid=jnp.concatenate([self.valid, other.valid], axis=1),
        )


def attention_mask(q: TokenInfo, k: TokenInfo, clean_sees_noisy: bool = True) -> jax.Array:
    """Boolean mask [B, T, S] (True = may attend) from query and key metadata; see the module docstring."""
    qb, kb = q.block[:, :, None], k.block[:, None, :]
    qk, kk = q.kind[:, :, None], k.kind[:, None, :]
    noisy_rule = (kk == PLAIN) | ((kk == CLEAN) & (kb < qb)) | ((kk == NOISY) & (kb == qb))
    other_rule = kb <= qb
    if not clean_sees_noisy:
        other_rule = other_rule & (kk != NOISY)
    allowed = jnp.where(qk == NOISY, noisy_rule, other_rule)
    return allowed & k.valid[:, None, :]


def mask_to_numpy(q: TokenInfo, k: TokenInfo, clean_sees_noisy: bool = True) -> np.ndarray:
    """The mask as a 0/1 numpy array (tests and debugging)."""
    return np.asarray(attention_mask(q, k, clean_sees_noisy)).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TokenRule:
    """The text model's rule (module docstring): blocks, kinds, validity."""

    clean_sees_noisy: bool = True

    def __call__(self, q: TokenInfo, k: TokenInfo) -> jax.Array:
        return attention_mask(q, k, self.clean_sees_noisy)


@dataclasses.dataclass(frozen=True)
class SegmentRule:
    """The vision tower's rule: full attention inside a segment (the block id), none across; keys must be valid."""

    def __call__(self, q: TokenInfo, k: TokenInfo) -> jax.Array:
        return (q.block[:, :, None] == k.block[:, None, :]) & k.valid[:, None, :]


IMPLS = ("auto", "dense", "flash")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Which attention implementation runs, and its tiles (a model/recipe setting; hashable, static).

    impl: auto | dense | flash. q_tile / k_tile: tile sizes of flash (clipped to the sequence). skip_empty_tiles:
    False visits every tile and evaluates the rule everywhere (for tests and the benchmark; same bits).
    """

    impl: str = "auto"
    q_tile: int = 512
    k_tile: int = 512
    skip_empty_tiles: bool = True

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise InputError(f"unknown attention implementation {self.impl!r}; expected one of {IMPLS}")
        for name in ("q_tile", "k_tile"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"attention {name} must be an int >= 1, got {value!r}")

    def resolve(self, t: int, s: int) -> str:
        """The implementation used for T queries against S keys (`auto` gives way to BARD_JAX_ATTENTION)."""
        impl = self.impl
        if impl == "auto":
            impl = os.environ.get("BARD_JAX_ATTENTION", "auto") or "auto"
            if impl not in IMPLS:
                raise InputError(f"BARD_JAX_ATTENTION={impl!r}; expected one of {IMPLS}")
        if impl != "auto":
            return impl
        q_tile, k_tile = self.tiles()
        return "flash" if t >= 2 * q_tile and s >= 2 * k_tile else "dense"

    def tiles(self) -> tuple[int, int]:
        """(q_tile, k_tile), or both BARD_JAX_ATTENTION_TILE when that is set."""
        forced = os.environ.get("BARD_JAX_ATTENTION_TILE", "")
        if not forced:
            return self.q_tile, self.k_tile
        if not forced.isdigit() or int(forced) < 1:
            raise InputError(f"BARD_JAX_ATTENTION_TILE={forced!r}; expected an int >= 1")
        return int(forced), int(forced)


@flax.struct.dataclass
class AttentionPlan:
    """What `attend` needs, computed once per forward from the metadata and shared by all layers.

    dense: `mask` [B, T, S]. flash: the padded metadata (queries in tiles: fields [nq, B, tq]; keys [B, nk * tk])
    and the tile map (order [nq, nk], count [nq], cls [B, nq, nk]).
    """

    mask: jax.Array | None
    q_info: TokenInfo | None
    k_info: TokenInfo | None
    tiles: tuple[jax.Array, jax.Array, jax.Array] | None
    impl: str = flax.struct.field(pytree_node=False)
    rule: Any = flax.struct.field(pytree_node=False)
    tq: int = flax.struct.field(pytree_node=False, default=0)
    tk: int = flax.struct.field(pytree_node=False, default=0)


def _pad_info(info: TokenInfo, length: int) -> TokenInfo:
    """Metadata padded on the right with invalid tokens of block -1 (they attend nothing and are seen by nothing)."""
    pad = length - info.block.shape[1]
    if pad == 0:
        return info
    widths = ((0, 0), (0, pad))
    return TokenInfo(
        block=jnp.pad(info.block, widths, constant_values=-1), kind=jnp.pad(info.kind, widths),
        valid=jnp.pad(info.valid, widths, constant_values=False),
    )


def plan_tiles(q_info: TokenInfo, k_info: TokenInfo, rule: Any, tq: int, tk: int, skip_empty: bool = True):
    """The tile map of padded metadata (T = nq * tq queries, S = nk * tk keys).

    Returns order [nq, nk] int32 (per query tile: the key tiles some row may attend, in increasing order, then the
    others), count [nq] int32 (how many of `order` to visit) and cls [B, nq, nk] int8 (EMPTY / PARTIAL / FULL per
    row). The rule is evaluated one query tile at a time, so no [T, S] array is built. With skip_empty=False every
    tile is visited and counted PARTIAL (the rule is evaluated everywhere).
    """
    b, t = q_info.block.shape
    s = k_info.block.shape[1]
    nq, nk = t // tq, s // tk

    def counts(i):
        q_tile = jax.tree_util.tree_map(lambda a: jax.lax.dynamic_slice_in_dim(a, i * tq, tq, axis=1), q_info)
        allowed = rule(q_tile, k_info).reshape(b, tq, nk, tk)
        return jnp.sum(allowed, axis=(1, 3), dtype=jnp.int32)  # [B, nk]

    n_allowed = jnp.moveaxis(jax.lax.map(counts, jnp.arange(nq)), 0, 1)  # [B, nq, nk]
    cls = jnp.where(n_allowed == 0, flash.EMPTY, jnp.where(n_allowed == tq * tk, flash.FULL, flash.PARTIAL))
    if not skip_empty:
        order = jnp.broadcast_to(jnp.arange(nk, dtype=jnp.int32), (nq, nk))
        return order, jnp.full((nq,), nk, jnp.int32), jnp.full_like(cls, flash.PARTIAL).astype(jnp.int8)
    active = jnp.any(cls != flash.EMPTY, axis=0)  # [nq, nk]: some row attends into the tile
    order = jnp.argsort(~active, axis=1, stable=True).astype(jnp.int32)
    return order, jnp.sum(active, axis=1, dtype=jnp.int32), cls.astype(jnp.int8)


def plan_attention(q_info: TokenInfo, k_info: TokenInfo, *, rule: Any, config: AttentionConfig) -> AttentionPlan:
    """The plan for T queries against S keys (k_info covers every key, a cached context first)."""
    t, s = q_info.block.shape[1], k_info.block.shape[1]
    impl = config.resolve(t, s)
    if impl == "dense":
        return AttentionPlan(mask=rule(q_info, k_info), q_info=None, k_info=None, tiles=None, impl=impl, rule=rule)
    q_tile, k_tile = config.tiles()
    tq, tk = min(q_tile, t), min(k_tile, s)
    nq, nk = math.ceil(t / tq), math.ceil(s / tk)
    q_pad, k_pad = _pad_info(q_info, nq * tq), _pad_info(k_info, nk * tk)
    tiles = plan_tiles(q_pad, k_pad, rule, tq, tk, config.skip_empty_tiles)
    q_tiles = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a.reshape(a.shape[0], nq, tq), 1, 0), q_pad)
    return AttentionPlan(mask=None, q_info=q_tiles, k_info=k_pad, tiles=tiles, impl=impl, rule=rule, tq=tq, tk=tk)


def attend(
    q_btnh: jax.Array,
    k_bskh: jax.Array,
    v_bskh: jax.Array,
    q_info: TokenInfo | None = None,
    k_info: TokenInfo | None = None,
    *,
    scale: float,
    rule: Any = None,
    config: AttentionConfig = AttentionConfig(),
    plan: AttentionPlan | None = None,
    context: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Grouped-query softmax attention under a rule of per-token metadata: the one entry point of the models.

    Args:
      q_btnh: [B, T, N, H]; k_bskh, v_bskh: keys/values of the current tokens [B, S, K, H] (query head n uses kv
        head n // (N / K); K/V are never repeated).
      q_info, k_info, rule, config: the metadata of the queries and of all keys (context first) and the rule;
        used to build the plan when `plan` is not given.
      plan: from `plan_attention` (computed once per forward, shared by the layers).
      context: optional cached (k_bckh, v_bckh) attended jointly with the current keys (C + S keys, one softmax).
    Returns:
      [B, T, N, H] in the dtype of the queries. Logits and softmax statistics are float32; a query that may attend
      no key gets 0.
    """
    if plan is None:
        plan = plan_attention(q_info, k_info, rule=rule, config=config)
    if plan.impl == "dense":
        if context is None:
            return grouped_attention(q_btnh, k_bskh, v_bskh, plan.mask, scale=scale)
        c = context[0].shape[1]
        ctx = (context[0], context[1], plan.mask[..., :c])
        return grouped_attention(q_btnh, k_bskh, v_bskh, plan.mask[..., c:], scale=scale, context=ctx)
    if context is not None:
        k_bskh = jnp.concatenate([context[0].astype(k_bskh.dtype), k_bskh], axis=1)
        v_bskh = jnp.concatenate([context[1].astype(v_bskh.dtype), v_bskh], axis=1)
    b, t, n, h = q_btnh.shape
    kv = k_bskh.shape[2]
    nq = plan.q_info.block.shape[0]
    s_pad = plan.k_info.block.shape[1]
    q = jnp.pad(q_btnh, ((0, 0), (0, nq * plan.tq - t), (0, 0), (0, 0)))
    q = jnp.moveaxis(q.reshape(b, nq, plan.tq, kv, n // kv, h), 1, 0)
    widths = ((0, 0), (0, s_pad - k_bskh.shape[1]), (0, 0), (0, 0))
    k, v = jnp.pad(k_bskh, widths), jnp.pad(v_bskh, widths)
    out = flash.tiled_attention(plan.rule, scale, plan.tk, q, k, v, plan.q_info, plan.k_info, plan.tiles)
    return jnp.moveaxis(out, 0, 1).reshape(b, nq * plan.tq, n, h)[:, :t]


def grouped_attention(
    q_btnh: jax.Array,
    k_bskh: jax.Array,
    v_bskh: jax.Array,
    mask_bts: jax.Array,
    *,
    scale: float,
    context: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """The dense implementation: softmax attention with grouped kv heads (query head n uses kv head n // G).

    Args:
      q_btnh: queries [B, T, N, H]; k_bskh, v_bskh: keys/values of the current tokens [B, S, K, H].
      mask_bts: [B, T, S] bool for the current keys.
      context: optional (k_bckh, v_bckh, mask_btc) of a cached context (C keys) attended jointly with the current
        keys (one softmax over C + S) without concatenating the cache: only the logits are joined.
    Returns:
      [B, T, N, H] in the dtype of the queries. Logits and softmax are float32; a query that may attend no key
      gets 0 (as in the flash implementation).
    """
    b, t, n, h = q_btnh.shape
    kv = k_bskh.shape[2]
    q = q_btnh.reshape(b, t, kv, n // kv, h)
    neg = jnp.finfo(jnp.float32).min

    def logits(k_bskh_: jax.Array, mask_bts_: jax.Array) -> jax.Array:
        s = jnp.einsum("btkgh,bskh->bkgts", q, k_bskh_, preferred_element_type=jnp.float32) * scale
        return jnp.where(mask_bts_[:, None, None], s, neg)

    parts = [logits(k_bskh, mask_bts)]
    values = [v_bskh]
    any_key = jnp.any(mask_bts, axis=-1)
    if context is not None:
        ck, cv, cmask = context
        parts.insert(0, logits(ck, cmask))
        values.insert(0, cv)
        any_key = any_key | jnp.any(cmask, axis=-1)
    s = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    p = jnp.where(any_key[:, None, None, :, None], jax.nn.softmax(s, axis=-1), 0.0)
    out = jnp.zeros((b, kv, n // kv, t, h), jnp.float32)
    start = 0
    for v in values:
        width = v.shape[1]
        p_part = p[..., start : start + width].astype(v.dtype)
        out = out + jnp.einsum("bkgts,bskh->bkgth", p_part, v, preferred_element_type=jnp.float32)
        start += width
    out = out.astype(q_btnh.dtype)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
