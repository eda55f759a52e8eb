"""Attention masks computed from per-token metadata, and grouped-query attention over an optional KV context.

Letters: B batch, T query tokens, S key tokens, N query heads, K kv heads, G = N/K, H head dim.

No [T, S] mask ever crosses a function boundary: callers pass `TokenInfo` for the queries and for the keys and
the mask is built here, so a fused kernel can later replace `grouped_attention` behind the same signature.

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
clears those entries.) Invalid queries see nothing real; their rows get a finite uniform softmax, never NaN.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

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


def grouped_attention(
    q_btnh: jax.Array,
    k_bskh: jax.Array,
    v_bskh: jax.Array,
    mask_bts: jax.Array,
    *,
    scale: float,
    context: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Softmax attention with grouped kv heads (query head n uses kv head n // G).

    Args:
      q_btnh: queries [B, T, N, H]; k_bskh, v_bskh: keys/values of the current tokens [B, S, K, H].
      mask_bts: [B, T, S] bool for the current keys.
      context: optional (k_bckh, v_bckh, mask_btc) of a cached context (C keys) attended jointly with the current
        keys (one softmax over C + S) without concatenating the cache: only the logits are joined.
    Returns:
      [B, T, N, H] in the dtype of the queries. Logits and softmax are float32.
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
    if context is not None:
        ck, cv, cmask = context
        parts.insert(0, logits(ck, cmask))
        values.insert(0, cv)
    s = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    p = jax.nn.softmax(s, axis=-1)
    out = jnp.zeros((b, kv, n // kv, t, h), jnp.float32)
    start = 0
    for v in values:
        width = v.shape[1]
        p_part = p[..., start : start + width].astype(v.dtype)
        out = out + jnp.einsum("bkgts,bskh->bkgth", p_part, v, preferred_element_type=jnp.float32)
        start += width
    out = out.astype(q_btnh.dtype)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
