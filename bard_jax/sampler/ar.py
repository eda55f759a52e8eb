"""Autoregressive decoding with a KV cache, in the same style as the block sampler: the baseline for speed
comparisons and for evaluating source AR models. `sample_ar` is the pure function (callable inside the caller's
`jax.jit`), `generate_ar` the convenient wrapper, as `bj.sample` / `bj.generate`.

Letters: B batch, P prompt length, N new tokens, C = P + N cache slots.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bard_jax.errors import InputError
from bard_jax.model.attention import TokenInfo
from bard_jax.model.hidden import hidden_states
from bard_jax.model.text import KVContext
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import Model, network
from bard_jax.sampler.config import SettingsCheck
from bard_jax.sampler.diffusion import SamplerOutput, encode_prompt
from bard_jax.sampler.inputs import (
    VISION_ARGS,
    check_arrays,
    check_decoding_call,
    check_settings,
    input_problems,
    prepare,
)
from bard_jax.sampler.result import SampleResult, produced_tokens
from bard_jax.sampler.select import choose_tokens


@dataclasses.dataclass(frozen=True)
class ARConfig:
    """Token-by-token decoding settings; every field checked on construction like `SamplingConfig`'s."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: int = 151645

    def __post_init__(self) -> None:
        check = SettingsCheck(self)
        check.integer("max_new_tokens", 1)
        check.real("temperature", 0.0)
        check.integer("top_k", 0)
        check.real("top_p", 0.0, 1.0, low_open=True)
        check.integer("eos_token_id", 0)
        check.raise_problems()


@flax.struct.dataclass
class ARCarry:
    tokens: jax.Array  # [B, N]
    done: jax.Array  # [B]
    index: jax.Array  # tokens generated so far
    cache_k: jax.Array  # [L, B, C, K, H]
    cache_v: jax.Array
    cache_valid: jax.Array  # [B, C]
    key: jax.Array


def _step_logits(net, params, token_b, position_b, carry: ARCarry, slot):
    b = token_b.shape[0]
    info = TokenInfo(block=jnp.full((b, 1), slot, jnp.int32), kind=jnp.zeros((b, 1), jnp.int32),
                     valid=jnp.ones((b, 1), bool))
    slots = carry.cache_valid.shape[1]
    ctx = KVContext(carry.cache_k, carry.cache_v,
                    TokenInfo(block=jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32), (b, slots)),
                              kind=jnp.zeros((b, slots), jnp.int32), valid=carry.cache_valid))
    pos = jnp.broadcast_to(position_b[None, :, None], (3, b, 1))
    h, kv = hidden_states(net, params, token_b[:, None], pos, info, context=ctx)
    return net.apply({"params": params}, h[:, 0], method=Qwen3VL.logits), kv


def _sample_ar_pure(model: Model, inputs, cfg: ARConfig) -> SampleResult:
    c = model.config
    net, params = network(c, None, "none", True), model.params
    input_ids, mask = inputs.input_ids, inputs.attention_mask
    b, p = input_ids.shape
    h, (k, v), next_pos = encode_prompt(net, params, input_ids, mask, inputs.vision, TokenInfo.causal(mask))
    # Prompts are left-padded: the last slot is real.
    last = net.apply({"params": params}, h[:, -1], method=Qwen3VL.logits)
    slots = p + cfg.max_new_tokens
    shape = k.shape[:2] + (slots,) + k.shape[3:]
    key, sub = jax.random.split(inputs.key)
    first, _ = choose_tokens(last[:, None], cfg, sub)
    # A row whose inputs fail the device-side checks is not decoded: it emits EOS at once.
    bad_input = input_problems(c, inputs)
    first = jnp.where(bad_input != 0, cfg.eos_token_id, first[:, 0])
    carry = ARCarry(
        tokens=jnp.zeros((b, cfg.max_new_tokens), jnp.int32).at[:, 0].set(first),
        done=first == cfg.eos_token_id,
        index=jnp.ones((), jnp.int32),
        cache_k=jax.lax.dynamic_update_slice_in_dim(jnp.zeros(shape, k.dtype), k, 0, axis=2),
        cache_v=jax.lax.dynamic_update_slice_in_dim(jnp.zeros(shape, v.dtype), v, 0, axis=2),
        cache_valid=jnp.concatenate([mask, jnp.zeros((b, cfg.max_new_tokens), bool)], axis=1),
        key=key,
    )

    def cond(s: ARCarry):
        return (s.index < cfg.max_new_tokens) & ~jnp.all(s.done)

    def body(s: ARCarry) -> ARCarry:
        prev = s.tokens[:, s.index - 1]
        slot = p + s.index - 1
        logits, (kk, vv) = _step_logits(net, params, prev, next_pos + s.index - 1, s, slot)
        key, sub = jax.random.split(s.key)
        tok, _ = choose_tokens(logits[:, None], cfg, sub)
        tok = jnp.where(s.done, cfg.eos_token_id, tok[:, 0])
        valid = jax.lax.dynamic_update_slice_in_dim(s.cache_valid, jnp.ones((b, 1), bool), slot, 1)
        return s.replace(
            tokens=s.tokens.at[:, s.index].set(tok),
            done=s.done | (tok == cfg.eos_token_id),
            index=s.index + 1,
            cache_k=jax.lax.dynamic_update_slice_in_dim(s.cache_k, kk, slot, axis=2),
            cache_v=jax.lax.dynamic_update_slice_in_dim(s.cache_v, vv, slot, axis=2),
            cache_valid=valid,
            key=key,
        )

    out = jax.lax.while_loop(cond, body, carry)
    # The loop stops once every row is done: the slots it did not reach repeat EOS like the rest.
    after_eos = jnp.cumsum(out.tokens == cfg.eos_token_id, axis=-1) > 0
    out = out.replace(tokens=jnp.where(after_eos, cfg.eos_token_id, out.tokens))
    # AR is block size 1 with one step per block: a row's forwards are its tokens up to its EOS (the prefill
    # produced the first).
    made = produced_tokens(out.tokens, eos_token_id=cfg.eos_token_id, mask_token_id=None)
    steps = (jnp.arange(cfg.max_new_tokens)[None, :] < made[:, None]).astype(jnp.int32)
    return SampleResult(tokens=out.tokens, nfe=made, block_step_counts=steps, generated_tokens=made,
                        tokens_per_forward=jnp.ones(made.shape, jnp.float32),
                        tokens_processed=jnp.sum(mask, axis=-1).astype(jnp.int32) + jnp.maximum(made - 1, 0),
                        bad_input=bad_input)


_sample_ar_jit = jax.jit(_sample_ar_pure, static_argnames=("cfg",))


def _checked(model: Model, input_ids: Any, config: Any, attention_mask: Any, vision_args: dict[str, Any], rng: Any,
             entry: str):
    check_settings(config, ARConfig, "bard_jax.sampler.ar.ARConfig", entry)
    real = check_decoding_call(model, input_ids, attention_mask, *vision_args.values(), rng,
                               token_ids={"eos_token_id": config.eos_token_id}, top_k=config.top_k,
                               new_tokens=config.max_new_tokens)
    if real is not None and not real[:, -1].all():
        row = int(np.flatnonzero(~real[:, -1])[0])
        raise InputError(f"attention_mask[{row}, -1] is 0: {entry} needs left-padded prompts (the last column a "
                         f"real token in every row)")
    return prepare(model, input_ids, attention_mask, *vision_args.values(), rng)


def sample_ar(model: Model, input_ids: jax.Array, *, config: ARConfig, attention_mask: jax.Array | None = None,
              pixel_values: jax.Array | None = None, image_grid_thw: jax.Array | None = None,
              pixel_values_videos: jax.Array | None = None, video_grid_thw: jax.Array | None = None,
              rng: jax.Array | None = None) -> SampleResult:
    """Token-by-token decoding as a pure function of arrays (as `bj.sample`: callable inside the caller's jit).
    Prompts left-padded. tokens [B, N]: after a row's EOS, EOS repeats; nfe = generated_tokens (one forward per
    token, the prefill giving the first)."""
    vision_args = dict(zip(VISION_ARGS, (pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)))
    check_arrays("sample_ar", input_ids=input_ids, attention_mask=attention_mask, **vision_args, rng=rng)
    inputs = _checked(model, input_ids, config, attention_mask, vision_args, rng, "sample_ar")
    return _sample_ar_jit(model.for_jit(), inputs, cfg=config)


def generate_ar(model: Model, input_ids: Any, config: ARConfig, attention_mask: Any = None, pixel_values: Any = None,
                image_grid_thw: Any = None, pixel_values_videos: Any = None, video_grid_thw: Any = None,
                rng: jax.Array | None = None) -> SamplerOutput:
    """Token-by-token decoding (prompts left-padded): `sample_ar` plus Python values, timing and numpy statistics.
    tokens [B, N]: after a row's EOS, EOS repeats. stats: `nfe` (forwards the batch ran: the longest row's),
    `generated_tokens` [B], `tokens_per_forward` 1.0, `seconds`.

    Arguments are checked on the host before anything is compiled, as `bj.generate` does."""
    vision_args = dict(zip(VISION_ARGS, (pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)))
    inputs = _checked(model, input_ids, config, attention_mask, vision_args, rng, "generate_ar")
    t0 = time.perf_counter()
    result = jax.block_until_ready(_sample_ar_jit(model.for_jit(), inputs, cfg=config))
    seconds = time.perf_counter() - t0
    made = np.asarray(result.generated_tokens)
    return SamplerOutput(np.asarray(result.tokens), {"nfe": int(made.max()), "generated_tokens": made,
                                                     "tokens_per_forward": 1.0, "seconds": seconds})
