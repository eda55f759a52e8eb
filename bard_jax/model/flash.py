"""Memory-efficient attention in pure JAX: online softmax over key tiles, a recomputing backward, tile skipping.

Letters: B batch, T queries, S keys, K kv heads, G query heads per kv head, H head dim, tq / tk query / key tile
sizes, nq / nk tile counts.

Nothing of size [T, S] is ever stored: the forward keeps a running max `m`, a running sum `denom` and an output
accumulator per query tile (FlashAttention-2); it saves only the output and the log-sum-exp `lse`. The backward
recomputes each tile's probabilities from `lse` (`jax.custom_vjp`), so training memory is linear in the length.

The mask comes from the tile map of `bard_jax.model.attention.plan_tiles`: for each query tile, the list of key
tiles that some batch row may attend (`order`, `count`), and each tile's class per row (EMPTY / PARTIAL / FULL).
Key tiles that are empty for every row are never visited; a tile that is full for every row skips the rule.
Skipping changes no bit: an empty tile would add exactly zero to every sum.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

EMPTY, PARTIAL, FULL = 0, 1, 2


def _slice(x: jax.Array, start: jax.Array, size: int, axis: int) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(x, start * size, size, axis=axis)


def _tile_logits(q_tile, k_tile, scale, rule, q_info_tile, k_info, cls_b, kt, tk):
    """Scaled float32 logits [B, K, G, tq, tk] of one tile, -inf where the rule forbids. When the tile is FULL for
    every row the rule is not evaluated."""
    s = jnp.einsum("btkgh,bskh->bkgts", q_tile, k_tile, preferred_element_type=jnp.float32) * scale

    def masked(s_):
        k_info_tile = jax.tree_util.tree_map(lambda a: _slice(a, kt, tk, 1), k_info)
        allowed = rule(q_info_tile, k_info_tile)[:, None, None]
        return jnp.where(allowed, s_, -jnp.inf)

    return jax.lax.cond(jnp.all(cls_b == FULL), lambda s_: s_, masked, s)


def _forward(q_bnqtkgh, k_bskh, v_bskh, q_info, k_info, order_nqnk, count_nq, cls_bnqnk, rule, scale, tk):
    """Output [nq, B, tq, K, G, H] (float32) and lse [nq, B, K, G, tq] per query tile."""
    nq, b, tq, kh, g, h = q_bnqtkgh.shape

    def per_query_tile(i):
        q_tile = q_bnqtkgh[i]
        q_info_tile = jax.tree_util.tree_map(lambda a: a[i], q_info)
        m0 = jnp.full((b, kh, g, tq), -jnp.inf, jnp.float32)
        denom0 = jnp.zeros((b, kh, g, tq), jnp.float32)
        acc0 = jnp.zeros((b, kh, g, tq, h), jnp.float32)

        def body(j, carry):
            m, denom, acc = carry
            kt = order_nqnk[i, j]
            k_tile, v_tile = _slice(k_bskh, kt, tk, 1), _slice(v_bskh, kt, tk, 1)
            s = _tile_logits(q_tile, k_tile, scale, rule, q_info_tile, k_info, cls_bnqnk[:, i, kt], kt, tk)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # a row that has seen nothing yet stays at zero
            p = jnp.exp(s - m_safe[..., None])
            alpha = jnp.exp(m - m_safe)
            denom = alpha * denom + jnp.sum(p, axis=-1)
            pv = jnp.einsum("bkgts,bskh->bkgth", p.astype(v_tile.dtype), v_tile, preferred_element_type=jnp.float32)
            return m_new, denom, alpha[..., None] * acc + pv

        m, denom, acc = jax.lax.fori_loop(0, count_nq[i], body, (m0, denom0, acc0))
        seen = denom > 0
        out = jnp.where(seen[..., None], acc / jnp.where(seen, denom, 1.0)[..., None], 0.0)
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, denom, 1.0)), jnp.inf)  # +inf: every probability is 0
        return out.transpose(0, 3, 1, 2, 4), lse

    return jax.lax.map(per_query_tile, jnp.arange(nq))


def _backward(q_bnqtkgh, k_bskh, v_bskh, q_info, k_info, out_nqbtkgh, lse_nqbkgt, dout_nqbtkgh, order_nqnk,
              count_nq, cls_bnqnk, rule, scale, tk):
    """Gradients (dq [nq, B, tq, K, G, H], dk [B, S, K, H], dv) by recomputing each visited tile's probabilities."""
    nq = q_bnqtkgh.shape[0]
    # D_i = rowsum(dout * out): the softmax backward's correction term, [nq, B, K, G, tq].
    delta = jnp.einsum("nbtkgh,nbtkgh->nbkgt", dout_nqbtkgh.astype(jnp.float32), out_nqbtkgh.astype(jnp.float32))

    def per_query_tile(carry, i):
        dk, dv = carry
        q_tile, do_tile = q_bnqtkgh[i], dout_nqbtkgh[i]
        q_info_tile = jax.tree_util.tree_map(lambda a: a[i], q_info)
        lse, d_i = lse_nqbkgt[i], delta[i]

        def body(j, inner):
            dq, dk_, dv_ = inner
            kt = order_nqnk[i, j]
            k_tile, v_tile = _slice(k_bskh, kt, tk, 1), _slice(v_bskh, kt, tk, 1)
            s = _tile_logits(q_tile, k_tile, scale, rule, q_info_tile, k_info, cls_bnqnk[:, i, kt], kt, tk)
            p = jnp.exp(s - lse[..., None])  # masked logits are -inf -> 0; empty rows have lse = +inf -> 0
            dv_tile = jnp.einsum("bkgts,btkgh->bskh", p.astype(do_tile.dtype), do_tile,
                                 preferred_element_type=jnp.float32)
            dp = jnp.einsum("btkgh,bskh->bkgts", do_tile, v_tile, preferred_element_type=jnp.float32)
            ds = (p * (dp - d_i[..., None]) * scale).astype(q_tile.dtype)
            dq = dq + jnp.einsum("bkgts,bskh->btkgh", ds, k_tile, preferred_element_type=jnp.float32)
            dk_tile = jnp.einsum("bkgts,btkgh->bskh", ds, q_tile, preferred_element_type=jnp.float32)
            dk_ = jax.lax.dynamic_update_slice_in_dim(dk_, _slice(dk_, kt, tk, 1) + dk_tile, kt * tk, axis=1)
            dv_ = jax.lax.dynamic_update_slice_in_dim(dv_, _slice(dv_, kt, tk, 1) + dv_tile, kt * tk, axis=1)
            return dq, dk_, dv_

        dq0 = jnp.zeros(q_tile.shape, jnp.float32)
        dq, dk, dv = jax.lax.fori_loop(0, count_nq[i], body, (dq0, dk, dv))
        return (dk, dv), dq

    zeros = jnp.zeros(k_bskh.shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(per_query_tile, (zeros, zeros), jnp.arange(nq))
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def tiled_attention(rule: Callable[[Any, Any], jax.Array], scale: float, tk: int, q, k, v, q_info, k_info, tiles):
    """Softmax attention over tiles; see the module docstring.

    Args:
      rule: (query TokenInfo [B, tq], key TokenInfo [B, tk]) -> bool [B, tq, tk] (hashable, static).
      scale: logit scale; tk: key tile size.
      q: [nq, B, tq, K, G, H] queries in tiles; k, v: [B, nk * tk, K, H].
      q_info: query metadata, each field [nq, B, tq]; k_info: key metadata, each field [B, nk * tk].
      tiles: (order [nq, nk] int32, count [nq] int32, cls [B, nq, nk] int8) from `plan_tiles`.
    Returns:
      [nq, B, tq, K, G, H] in the dtype of q. Rows that may attend no key are 0.
    """
    out, _ = _forward(q, k, v, q_info, k_info, *tiles, rule, scale, tk)
    return out.astype(q.dtype)


def _tiled_fwd(rule, scale, tk, q, k, v, q_info, k_info, tiles):
    out, lse = _forward(q, k, v, q_info, k_info, *tiles, rule, scale, tk)
    out = out.astype(q.dtype)
    return out, (q, k, v, q_info, k_info, out, lse, tiles)


def _tiled_bwd(rule, scale, tk, res, dout):
    q, k, v, q_info, k_info, out, lse, tiles = res
    dq, dk, dv = _backward(q, k, v, q_info, k_info, out, lse, dout, *tiles, rule, scale, tk)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None


tiled_attention.defvjp(_tiled_fwd, _tiled_bwd)
