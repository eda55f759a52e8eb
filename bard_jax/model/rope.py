"""Rotary position embeddings: interleaved multimodal rotary (MRoPE) for text, axial 2-D rotary for vision.

Letters: B batch, T tokens, N heads, H head dim, P vision patches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(dim: int, theta: float) -> np.ndarray:
    """1 / theta^(2i/dim) for i < dim/2, float32.

    The exponent and the reciprocal are float32 operations as in the HF code; the power itself is taken in float64
    and rounded once (torch's vectorised float32 pow may differ from this in the last bit for some entries).
    """
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    powers = (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
    return np.float32(1) / powers


def mrope_axis_table(head_dim: int, mrope_section: tuple[int, int, int]) -> np.ndarray:
    """For each of the head_dim/2 frequencies, the position axis it reads: 0 = T, 1 = H, 2 = W.

    Interleaved layout: frequency j uses H when j % 3 == 1 and j < 3*s_H, W when j % 3 == 2 and j < 3*s_W, else T.
    For mrope_section (24, 20, 20): H at 1, 4, ..., 58; W at 2, 5, ..., 59; T elsewhere.
    """
    j = np.arange(head_dim // 2)
    axis = np.zeros_like(j)
    axis[(j % 3 == 1) & (j < 3 * mrope_section[1])] = 1
    axis[(j % 3 == 2) & (j < 3 * mrope_section[2])] = 2
    return axis


def text_rope(
    positions_3bt: jax.Array, head_dim: int, theta: float, mrope_section: tuple[int, int, int], dtype
) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, H] for 3-D positions [3, B, T]; computed in float32 then cast to `dtype` (as HF does)."""
    inv_freq = jnp.asarray(inverse_frequencies(head_dim, theta))
    freqs_3bth = positions_3bt.astype(jnp.float32)[..., None] * inv_freq  # [3, B, T, H/2]
    axis = mrope_axis_table(head_dim, mrope_section)
    freqs_bth = jnp.stack([freqs_3bth[int(a), ..., j] for j, a in enumerate(axis)], axis=-1)
    emb = jnp.concatenate([freqs_bth, freqs_bth], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def vision_rope(row_p: jax.Array, col_p: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin [P, H] float32 for patch grid coordinates: concat(row * f, col * f) duplicated to H."""
    inv_freq = jnp.asarray(inverse_frequencies(head_dim // 2, theta))  # H/4 entries
    fh = row_p.astype(jnp.float32)[:, None] * inv_freq
    fw = col_p.astype(jnp.float32)[:, None] * inv_freq
    emb = jnp.concatenate([fh, fw, fh, fw], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [..., T, N, H] rotated by cos/sin [..., T, H] (broadcast over heads), in the dtype of the operands."""
    cos = cos[..., None, :]
    sin = sin[..., None, :]
    return x * cos + rotate_half(x) * sin
