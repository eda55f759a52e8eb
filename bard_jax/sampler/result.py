"""`SampleResult`: what the pure decoders return, all jax arrays (a pytree, so it leaves the caller's `jax.jit`).

Letters: B batch, N blocks, b block size.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class SampleResult:
    """Tokens and decode statistics per row.

    tokens: [B, N*b] int32; after a row's EOS its later blocks hold the mask id (the AR decoder: EOS repeats).
    nfe: [B] int32 forwards the row needed. Block diffusion: the prefill, its denoising forwards and its commit
      forwards, where commit="fold" has neither a prefill nor commits of their own (they ride on denoising forwards)
      and "reuse" no commits. AR: one per token (the prefill gives the first).
    block_step_counts: [B, N] int32 denoising forwards per block (0 for blocks after the row's EOS).
    generated_tokens: [B] int32 decoded tokens up to and including the first EOS.
    tokens_per_forward: [B] float32 generated_tokens / denoising forwards.
    tokens_processed: [B] int32 the row's tokens that went through the model: its real prompt tokens, b per
      denoising forward and b per committed block (in a forward of its own or folded into the next block's first);
      AR: the prompt and each generated token but the last.
    bad_input: [B] int32 bit flags of inputs that could only be checked on the device (`bj.sample` / `sample_ar`
      under a caller's jit): 1 an id outside the vocabulary, 2 image or video pad tokens not matching the grids
      (`bard_jax.sampler.inputs.BAD_TOKEN_ID` / `BAD_PLACEHOLDERS`). A flagged row is not decoded (no tokens, nfe
      as for an empty decode); called outside a trace, such inputs are refused before compiling and this is 0.
    """

    tokens: jax.Array
    nfe: jax.Array
    block_step_counts: jax.Array
    generated_tokens: jax.Array
    tokens_per_forward: jax.Array
    tokens_processed: jax.Array
    bad_input: jax.Array


def produced_tokens(tokens_bn: jax.Array, *, eos_token_id: int, mask_token_id: int | None) -> jax.Array:
    """[B] tokens up to and including each row's first EOS that are not the mask id."""
    is_eos = tokens_bn == eos_token_id
    before_first_eos = (jnp.cumsum(is_eos, axis=-1) - is_eos) == 0  # up to and including the first EOS
    decoded = before_first_eos if mask_token_id is None else before_first_eos & (tokens_bn != mask_token_id)
    return jnp.sum(decoded, axis=-1).astype(jnp.int32)


def summarize(tokens_bn: jax.Array, steps_bn: jax.Array, commits_b: jax.Array, prompt_tokens_b: jax.Array,
              bad_input_b: jax.Array, *, block_size: int, fold: bool, eos_token_id: int,
              mask_token_id: int | None) -> SampleResult:
    """The result of a block decode: `steps_bn` denoising forwards per block, `commits_b` blocks committed (`fold`:
    inside denoising forwards, so neither they nor the prefill count as forwards of their own)."""
    denoising = jnp.sum(steps_bn, axis=-1).astype(jnp.int32)
    made = produced_tokens(tokens_bn, eos_token_id=eos_token_id, mask_token_id=mask_token_id)
    nfe = denoising if fold else 1 + denoising + commits_b
    return SampleResult(
        tokens=tokens_bn,
        nfe=nfe.astype(jnp.int32),
        block_step_counts=steps_bn.astype(jnp.int32),
        generated_tokens=made,
        tokens_per_forward=made.astype(jnp.float32) / jnp.maximum(denoising, 1).astype(jnp.float32),
        tokens_processed=(prompt_tokens_b + block_size * (denoising + commits_b)).astype(jnp.int32),
        bad_input=bad_input_b.astype(jnp.int32),
    )
