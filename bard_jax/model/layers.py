"""Small building blocks shared by the vision tower and the text decoder.

Letters: D width, F mlp width. Every layer computes in `dtype` (None: the dtype of its parameters) and keeps the
numerically sensitive parts (norm statistics) in float32, as the HF implementation does.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

default_kernel_init = nn.initializers.normal(stddev=0.02)


class Linear(nn.Module):
    """y = x @ kernel (+ bias). kernel is [in, out], the transpose of a torch Linear weight."""

    features: int
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", default_kernel_init, (x.shape[-1], self.features), self.param_dtype)
        dtype = self.dtype or kernel.dtype
        y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(dtype)
        return y


class RMSNorm(nn.Module):
    """x / rms(x) * scale: statistics in float32, the scale applied in the compute dtype (HF Qwen3 RMSNorm)."""

    eps: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        dtype = self.dtype or scale.dtype
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
        return scale.astype(dtype) * y.astype(dtype)


class LayerNorm(nn.Module):
    """LayerNorm with bias: everything in float32, the result cast back to the compute dtype."""

    eps: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (d,), self.param_dtype)
        dtype = self.dtype or scale.dtype
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(dtype)


class Embed(nn.Module):
    """Token embedding table [V, D]; `attend` gives logits against the same table (tied head)."""

    num_embeddings: int
    features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding", default_kernel_init, (self.num_embeddings, self.features), self.param_dtype
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        dtype = self.dtype or self.embedding.dtype
        return jnp.take(self.embedding, ids, axis=0).astype(dtype)

    def table(self) -> jax.Array:
        return self.embedding

    def attend(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or self.embedding.dtype
        return jnp.dot(x.astype(dtype), self.embedding.astype(dtype).T)
