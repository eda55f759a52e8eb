"""Token choice, confidences and transfer selection: pure functions of one denoising step.

Letters: B batch, T block positions, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bard_jax.sampler.config import SamplingConfig


def filter_logits(z_btv: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Top-k (ties at the k-th value kept) then top-p (the smallest sorted prefix whose mass exceeds p, always the
    first) filters; removed entries become -inf."""
    neg = jnp.asarray(-jnp.inf, z_btv.dtype)
    if top_k > 0:
        kth = jax.lax.top_k(z_btv, top_k)[0][..., -1:]
        z_btv = jnp.where(z_btv < kth, neg, z_btv)
    if top_p < 1.0:
        order = jnp.argsort(-z_btv, axis=-1, stable=True)
        sorted_z = jnp.take_along_axis(z_btv, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_z, axis=-1), axis=-1)
        drop_sorted = cum > top_p
        drop_sorted = jnp.concatenate([jnp.zeros_like(drop_sorted[..., :1]), drop_sorted[..., :-1]], axis=-1)
        drop = jnp.zeros_like(drop_sorted).at[
            jnp.arange(z_btv.shape[0])[:, None, None], jnp.arange(z_btv.shape[1])[None, :, None], order
        ].set(drop_sorted)
        z_btv = jnp.where(drop, neg, z_btv)
    return z_btv


def choose_tokens(logits_btv: jax.Array, cfg: SamplingConfig, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token [B, T] and its confidence [B, T] (float32).

    Temperature 0: argmax and its softmax probability. Otherwise logits / T, filtered, sampled; the confidence is
    the probability under the filtered, tempered distribution.
    """
    z = logits_btv.astype(jnp.float32)
    if cfg.temperature == 0.0:
        tok = jnp.argmax(z, axis=-1)
        prob = jnp.take_along_axis(jax.nn.softmax(z, axis=-1), tok[..., None], axis=-1)[..., 0]
        return tok.astype(jnp.int32), prob
    z = filter_logits(z / cfg.temperature, cfg.top_k, cfg.top_p)
    tok = jax.random.categorical(key, z, axis=-1)
    prob = jnp.take_along_axis(jax.nn.softmax(z, axis=-1), tok[..., None], axis=-1)[..., 0]
    return tok.astype(jnp.int32), prob


def top_quota(conf_bt: jax.Array, eligible_bt: jax.Array, quota_b: jax.Array) -> jax.Array:
    """The `quota` highest-confidence eligible positions per row (ties: lower index first)."""
    score = jnp.where(eligible_bt, conf_bt, -jnp.inf)
    order = jnp.argsort(-score, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)
    return eligible_bt & (rank < quota_b[:, None])


def select_transfer(
    conf_bt: jax.Array, masked_bt: jax.Array, quota: jax.Array, cfg: SamplingConfig, threshold: jax.Array | float
) -> jax.Array:
    """Which masked positions to unmask this step [B, T] bool. `threshold` is the dynamic strategy's confidence
    threshold (cfg.confidence_threshold, passed as a value so it need not be compiled in)."""
    n_masked = jnp.sum(masked_bt, axis=-1)
    k = jnp.minimum(quota, n_masked)
    static = top_quota(conf_bt, masked_bt, k)
    if cfg.strategy == "low_confidence_static":
        return static
    confident = masked_bt & (conf_bt > threshold)
    enough = jnp.sum(confident, axis=-1) >= quota
    return jnp.where(enough[:, None], confident, static)
