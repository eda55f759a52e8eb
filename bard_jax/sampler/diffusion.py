"""Block-diffusion decoding in one compiled function: prefill, then nested `lax.while_loop`s over blocks and
denoising steps, with a preallocated KV cache (spec section 6).

Letters: B batch, P prompt length (bucket), b block size, N blocks, C cache slots = P + N*b, L layers,
K kv heads, H head dim, V vocab.

Per row: its own prompt length (left padding), positions, EOS, images. A row that emitted EOS is frozen (its later
blocks stay mask ids) while the others go on; each row's tokens equal those of decoding it alone.

Commit modes (how a finished block's K/V enter the cache; `SamplingConfig.commit`):
* "fold" (default): no forward of its own. The forward that starts the next block runs `[block i, final tokens |
  block i+1, all mask ids]`: under the block-causal rule block i sees the cache and itself (exactly what a commit
  forward computes: its K/V are written) and block i+1 sees the cache, block i and itself (exactly its first
  denoising step: its logits are carried into the step loop as `Carry.first_logits`). Likewise the prefill runs
  `[prompt | block 0, all mask ids]`, so block 0's first step costs no forward of its own either. After the last
  block (or once every row has finished) nothing follows and no such forward runs. Same tokens as "forward" (the
  same arithmetic on larger shapes: equal up to float rounding), half the forwards at one step per block.
* "forward": the reference's literal schedule: the prefill, then per block its denoising forwards and one more
  forward of the final tokens that writes the K/V.
* "reuse": no commit forward: the cache keeps the last denoising forward's K/V (an approximation: that forward's
  input may still hold mask ids the last transfer filled).

Label shift (`SamplingConfig.shift_labels`, opt-in): the prediction for block position i is the logits at i - 1,
and for position 0 the logits of the last context token before the block (`Carry.last_logits`): the last prompt
token's from the prefill for the first block, then the last token of each finished block's. With "fold" and
"forward" those come from the forward that writes the block (its final tokens); with "reuse" from the last
denoising forward, the same approximation as its K/V. Without the shift none of this is computed or carried.

`sample` is the pure function (no host work; a caller's `jax.jit` may wrap it). `generate` is the convenient
wrapper: it also accepts Python values, caches compiled programs per shape, times the prefill and the decode and
returns numpy statistics.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bard_jax.model.attention import PLAIN, TokenInfo
from bard_jax.model.example_vision import ExampleVision, example_positions, per_example_vision
from bard_jax.model.hidden import hidden_states
from bard_jax.model.positions import response_positions
from bard_jax.model.text import KVContext
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import Model, network
from bard_jax.sampler.config import SamplingConfig
from bard_jax.sampler.inputs import (
    VISION_ARGS,
    check_arrays,
    check_decoding_call,
    check_settings,
    input_problems,
    prepare,
)
from bard_jax.sampler.result import SampleResult, summarize
from bard_jax.sampler.select import choose_tokens, select_transfer

# Block id of the block being decoded: larger than any cached block, so it sees the whole valid cache.
CURRENT_BLOCK = 2**30


class SamplerOutput(NamedTuple):
    tokens: jax.Array  # [B, N*b] int32; unreached blocks hold the mask id
    stats: dict[str, Any]


@flax.struct.dataclass
class Carry:
    tokens: jax.Array  # [B, N*b]
    done: jax.Array  # [B] bool: emitted EOS
    block: jax.Array  # int32 block index
    steps: jax.Array  # [B, N] denoising forwards per block per row
    commits: jax.Array  # [B] blocks committed for the row (by a forward of their own, or folded; "reuse": none)
    cache_k: jax.Array  # [L, B, C, K, H]
    cache_v: jax.Array
    cache_valid: jax.Array  # [B, C]
    cache_block: jax.Array  # [B, C]
    key: jax.Array
    # shift_labels only: logits [B, V] of the last context token before the current block (None without the shift).
    last_logits: Any = None
    # commit="fold" only: logits [B, b, V] of the current block's first denoising step, computed by the forward that
    # wrote the previous block (the prefill for block 0).
    first_logits: Any = None


def _block_info(block_bt: jax.Array) -> TokenInfo:
    """Metadata of response tokens with block ids `block_bt` [B, T] (plain kind, all real)."""
    return TokenInfo(block=block_bt, kind=jnp.full(block_bt.shape, PLAIN, jnp.int32),
                     valid=jnp.ones(block_bt.shape, bool))


def _forward(net, params, tokens_bt, positions_3bt, block_bt, carry: Carry, logits_from: int = 0):
    """Tokens with block ids `block_bt` [B, T] attending to the cache (read only) and to each other under the
    block-causal rule: logits [B, T - logits_from, V] of positions logits_from.. (the rest go through no head) and
    the tokens' K/V per layer."""
    ctx = KVContext(carry.cache_k, carry.cache_v,
                    TokenInfo(block=carry.cache_block, kind=jnp.zeros_like(carry.cache_block), valid=carry.cache_valid))
    h, kv = hidden_states(net, params, tokens_bt, positions_3bt, _block_info(block_bt), context=ctx)
    return net.apply({"params": params}, h[:, logits_from:], method=Qwen3VL.logits), kv


def _forward_block(net, params, tokens_bt, positions_3bt, carry: Carry):
    """Logits [B, b, V] and current K/V of the block being decoded (it sees the whole valid cache)."""
    return _forward(net, params, tokens_bt, positions_3bt, jnp.full(tokens_bt.shape, CURRENT_BLOCK, jnp.int32), carry)


def _write_cache(carry: Carry, kv, start, block_index) -> Carry:
    k, v = kv
    b = k.shape[2]
    rows = carry.cache_valid.shape[0]
    return carry.replace(
        cache_k=jax.lax.dynamic_update_slice_in_dim(carry.cache_k, k.astype(carry.cache_k.dtype), start, axis=2),
        cache_v=jax.lax.dynamic_update_slice_in_dim(carry.cache_v, v.astype(carry.cache_v.dtype), start, axis=2),
        cache_valid=jax.lax.dynamic_update_slice_in_dim(carry.cache_valid, jnp.ones((rows, b), bool), start, 1),
        cache_block=jax.lax.dynamic_update_slice_in_dim(
            carry.cache_block, jnp.full((rows, b), block_index, jnp.int32), start, 1
        ),
    )


def encode_prompt(net, params, input_ids, attention_mask, vision: ExampleVision, info: TokenInfo, suffix=None):
    """The prompt through the model with per-example vision: hidden [B, P, D], (k, v) per layer, next positions [B].
    Shared by both decoders (they differ in the prompt mask `info`).

    suffix: optional (ids [B, S], info) of tokens run after the prompt in the same forward, at the positions that
    continue each row's prompt (the block sampler's first block with commit="fold"); hidden and K/V then cover
    P + S tokens."""
    c = net.config
    positions, next_pos = example_positions(c, input_ids, attention_mask, vision.image_grid, vision.video_grid)
    if suffix is not None:
        suffix_ids, suffix_info = suffix
        input_ids = jnp.concatenate([input_ids, suffix_ids], axis=1)
        positions = jnp.concatenate([positions, response_positions(next_pos, suffix_ids.shape[1], xp=jnp)], axis=2)
        info = info.concat(suffix_info)
    groups = None if vision.empty else per_example_vision(c, vision.image_pixels, vision.image_grid, input_ids,
                                                          vision.video_pixels, vision.video_grid)
    h, kv = hidden_states(net, params, input_ids, positions, info, vision=groups)
    return h, kv, next_pos


def _prefill(net, params, cfg: SamplingConfig, input_ids, attention_mask, vision: ExampleVision, key):
    """Run the prompt with the block-causal prompt mask; return the initial carry and next positions [B]."""
    b, p = input_ids.shape
    bs = cfg.block_size
    info = TokenInfo.block_causal(attention_mask, bs)
    fold = cfg.commit == "fold"
    # "fold": block 0, all mask ids, rides along (it sees the whole prompt; no prompt token sees it).
    suffix = (jnp.full((b, bs), cfg.mask_token_id, jnp.int32),
              _block_info(jnp.full((b, bs), CURRENT_BLOCK, jnp.int32))) if fold else None
    h, (k, v), next_pos = encode_prompt(net, params, input_ids, attention_mask, vision, info, suffix)
    k, v = k[:, :, :p], v[:, :, :p]  # the cache holds the prompt; block 0's K/V are not final
    # Prompts are left padded: column P - 1 is every row's last real prompt token.
    # Only the positions something reads go through the head: the last prompt token's (the shift) and block 0's.
    head_from, head_to = (p - 1 if cfg.shift_labels else p), (p + bs if fold else p)
    logits = (net.apply({"params": params}, h[:, head_from:head_to], method=Qwen3VL.logits)
              if head_to > head_from else None)
    last_logits = logits[:, 0] if cfg.shift_labels else None
    first_logits = logits[:, -bs:] if fold else None
    slots = p + cfg.num_blocks * bs
    shape = k.shape[:2] + (slots,) + k.shape[3:]
    prompt_blocks = jnp.max(info.block, axis=-1) + 1  # per row: ceil(real prompt length / b)
    carry = Carry(
        tokens=jnp.full((b, cfg.num_blocks * bs), cfg.mask_token_id, jnp.int32),
        done=jnp.zeros((b,), bool),
        block=jnp.zeros((), jnp.int32),
        steps=jnp.zeros((b, cfg.num_blocks), jnp.int32),
        commits=jnp.zeros((b,), jnp.int32),
        cache_k=jax.lax.dynamic_update_slice_in_dim(jnp.zeros(shape, k.dtype), k, 0, axis=2),
        cache_v=jax.lax.dynamic_update_slice_in_dim(jnp.zeros(shape, v.dtype), v, 0, axis=2),
        cache_valid=jnp.concatenate([info.valid, jnp.zeros((b, slots - p), bool)], axis=1),
        cache_block=jnp.concatenate([info.block, jnp.zeros((b, slots - p), jnp.int32)], axis=1),
        key=key,
        last_logits=last_logits,
        first_logits=first_logits,
    )
    return carry, next_pos, prompt_blocks


def _decode(net, params, cfg: SamplingConfig, carry: Carry, next_pos, prompt_blocks, threshold,
            prompt_len: int) -> Carry:
    """All blocks; `threshold` (a float32 scalar) stands for cfg.confidence_threshold, which is not compiled in."""
    bs = cfg.block_size
    schedule = jnp.asarray(cfg.transfer_schedule(), jnp.int32)
    rows = next_pos.shape[0]
    fold, reuse = cfg.commit == "fold", cfg.commit == "reuse"
    shift = cfg.shift_labels

    def block_cond(c: Carry):
        return (c.block < cfg.num_blocks) & ~jnp.all(c.done)

    def block_body(c: Carry) -> Carry:
        positions = response_positions(next_pos, bs, c.block * bs, xp=jnp)
        active = ~c.done
        x0 = jnp.full((rows, bs), cfg.mask_token_id, jnp.int32)
        # commit="reuse" keeps the last denoising forward's K/V; the other modes compute them apart, so carry none.
        kv0 = None if not reuse else jax.tree_util.tree_map(
            lambda a: jnp.zeros(a.shape[:2] + (bs,) + a.shape[3:], a.dtype), (c.cache_k, c.cache_v)
        )

        # With the shift and commit="reuse", the last denoising forward's logits at the block's last position (the
        # next block's first prediction); carried through the steps like its K/V.
        tail0 = c.last_logits if shift and reuse else None

        def step_cond(s):
            x, step, _, _, _, _ = s
            return (step < cfg.denoising_steps) & jnp.any(active & jnp.any(x == cfg.mask_token_id, axis=-1))

        def step_body(s):
            x, step, counts, key, _, _ = s
            key, sub = jax.random.split(key)
            if fold:  # the first step's logits were computed by the forward that wrote the previous block
                logits, kv = jax.lax.cond(step == 0, lambda: c.first_logits,
                                          lambda: _forward_block(net, params, x, positions, c)[0]), None
            else:
                logits, kv = _forward_block(net, params, x, positions, c)
            # Shift: position i reads the logits at i - 1; position 0 those of the token before the block.
            pred = jnp.concatenate([c.last_logits[:, None], logits[:, :-1]], axis=1) if shift else logits
            tok, conf = choose_tokens(pred, cfg, sub)
            masked = x == cfg.mask_token_id
            transfer = select_transfer(conf, masked, schedule[step], cfg, threshold) & active[:, None]
            counts = counts + (active & jnp.any(masked, axis=-1)).astype(jnp.int32)
            tail = logits[:, -1] if shift and reuse else None
            return jnp.where(transfer, tok, x), step + 1, counts, key, kv if reuse else None, tail

        x, _, counts, key, last_kv, last_tail = jax.lax.while_loop(
            step_cond, step_body, (x0, jnp.zeros((), jnp.int32), jnp.zeros((rows,), jnp.int32), c.key, kv0, tail0)
        )
        start = c.block * bs
        tokens = jax.lax.dynamic_update_slice_in_dim(
            c.tokens, jnp.where(active[:, None], x, jax.lax.dynamic_slice_in_dim(c.tokens, start, bs, 1)), start, 1
        )
        steps = jax.lax.dynamic_update_slice_in_dim(c.steps, counts[:, None], c.block, 1)
        finished = active & jnp.any(x == cfg.eos_token_id, axis=-1)
        c = c.replace(tokens=tokens, steps=steps, key=key, done=c.done | finished)
        cache_id = prompt_blocks.max() + c.block  # the finished block's id in the cache
        if reuse:
            kv, tail, committed = last_kv, last_tail, jnp.zeros_like(active)
        elif fold:
            # Only when another block follows for some row; the rows it commits for are those that go on.
            follows = (c.block + 1 < cfg.num_blocks) & ~jnp.all(c.done)
            kv, first, tail = jax.lax.cond(follows, functools.partial(_commit_and_start, net, params, cfg, next_pos),
                                           _nothing_follows, x, cache_id, c)
            c = c.replace(first_logits=first)
            committed = ~c.done & follows
        else:
            commit_logits, kv = _forward_block(net, params, x, positions, c)
            tail = commit_logits[:, -1] if shift else None
            committed = active & ~finished
        c = _write_cache(c, kv, prompt_len + start, cache_id)
        if shift:  # the finished block's last token is the context token before the next block
            c = c.replace(last_logits=tail)
        return c.replace(commits=c.commits + committed.astype(jnp.int32), block=c.block + 1)

    return jax.lax.while_loop(block_cond, block_body, carry)


def _commit_and_start(net, params, cfg: SamplingConfig, next_pos, x_bt, cache_id, c: Carry):
    """commit="fold": one forward of [block c.block, final tokens `x_bt` | the next block, all mask ids]. Returns the
    finished block's K/V (cast to the cache's dtype), the next block's first-step logits [B, b, V] and (with the
    shift) the logits [B, V] at the finished block's last token (None without)."""
    rows, bs = x_bt.shape
    tokens = jnp.concatenate([x_bt, jnp.full((rows, bs), cfg.mask_token_id, jnp.int32)], axis=1)
    positions = response_positions(next_pos, 2 * bs, c.block * bs, xp=jnp)
    block_ids = jnp.concatenate([jnp.full((rows, bs), cache_id, jnp.int32),
                                 jnp.full((rows, bs), CURRENT_BLOCK, jnp.int32)], axis=1)
    logits, (k, v) = _forward(net, params, tokens, positions, block_ids, c,
                              logits_from=bs - 1 if cfg.shift_labels else bs)
    kv = (k[:, :, :bs].astype(c.cache_k.dtype), v[:, :, :bs].astype(c.cache_v.dtype))
    return kv, logits[:, -bs:], logits[:, 0] if cfg.shift_labels else None


def _nothing_follows(x_bt, cache_id, c: Carry):
    """The other branch of `_commit_and_start` (the last block, or every row finished): no forward; what it returns
    is never read (the block loop ends)."""
    del cache_id
    kv = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape[:2] + (x_bt.shape[1],) + a.shape[3:], a.dtype),
                                (c.cache_k, c.cache_v))
    return kv, c.first_logits, c.last_logits


def _result(carry: Carry, cfg: SamplingConfig, bad_input=None) -> SampleResult:
    prompt_len = carry.cache_valid.shape[1] - cfg.num_blocks * cfg.block_size
    prompt_tokens = jnp.sum(carry.cache_valid[:, :prompt_len], axis=-1)  # the prompt slots never change
    bad = jnp.zeros_like(prompt_tokens) if bad_input is None else bad_input
    return summarize(carry.tokens, carry.steps, carry.commits, prompt_tokens, bad, block_size=cfg.block_size,
                     fold=cfg.commit == "fold", eos_token_id=cfg.eos_token_id, mask_token_id=cfg.mask_token_id)


def _sample_pure(model: Model, inputs, threshold, cfg: SamplingConfig) -> SampleResult:
    """Prefill, decode, statistics: the whole of `sample` once the arguments are prepared. Rows whose inputs fail
    the device-side checks (`input_problems`) start finished: they are not decoded."""
    net = network(model.config, None, "none", True)
    bad_input = input_problems(model.config, inputs)
    carry, next_pos, prompt_blocks = _prefill(net, model.params, cfg, inputs.input_ids, inputs.attention_mask,
                                              inputs.vision, inputs.key)
    carry = carry.replace(done=bad_input != 0)
    carry = _decode(net, model.params, cfg, carry, next_pos, prompt_blocks, threshold, inputs.input_ids.shape[1])
    return _result(carry, cfg, bad_input)


# `sample` compiles through this (called eagerly: one program per shapes and settings); under the caller's jit it
# is inlined into the caller's program.
_sample_jit = jax.jit(_sample_pure, static_argnames=("cfg",))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _prefill_jit(model: Model, inputs, *, cfg):
    net = network(model.config, None, "none", True)
    return _prefill(net, model.params, cfg, inputs.input_ids, inputs.attention_mask, inputs.vision, inputs.key)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _decode_jit(model: Model, carry: Carry, next_pos, prompt_blocks, threshold, *, cfg):
    net = network(model.config, None, "none", True)
    carry = _decode(net, model.params, cfg, carry, next_pos, prompt_blocks, threshold,
                    carry.cache_valid.shape[1] - cfg.num_blocks * cfg.block_size)
    return _result(carry, cfg)


def _checked(model: Model, input_ids: Any, config: Any, attention_mask: Any, vision_args: dict[str, Any], rng: Any,
             entry: str):
    check_settings(config, SamplingConfig, "bard_jax.SamplingConfig", entry)
    new = config.num_blocks * config.block_size
    check_decoding_call(model, input_ids, attention_mask, *vision_args.values(), rng,
                        token_ids={"mask_token_id": config.mask_token_id, "eos_token_id": config.eos_token_id},
                        top_k=config.top_k, new_tokens=new,
                        detail=f" (max_new_tokens {config.max_new_tokens} in whole blocks of {config.block_size})"
                        if new != config.max_new_tokens else "")
    return prepare(model, input_ids, attention_mask, *vision_args.values(), rng)


def sample(
    model: Model,
    input_ids: jax.Array,
    *,
    config: SamplingConfig,
    attention_mask: jax.Array | None = None,
    pixel_values: jax.Array | None = None,
    image_grid_thw: jax.Array | None = None,
    pixel_values_videos: jax.Array | None = None,
    video_grid_thw: jax.Array | None = None,
    rng: jax.Array | None = None,
) -> SampleResult:
    """Block-diffusion decoding as a pure function of arrays: callable inside the caller's `jax.jit` with the
    parameters traced (rebuild `bj.Model(params, config)` inside; the settings are a static closure constant).

    Args:
      model: `bj.Model`.
      input_ids: [B, T] prompts, left padding marked by `attention_mask` [B, T].
      config: `SamplingConfig` (hashable; compiled in).
      pixel_values, image_grid_thw (and the video pair): per example ([B, P, C] with [B, I, 3]; see
        `bard_jax.model.example_vision`) or concatenated over the batch ([P, C] with [I, 3]). Under a trace the
        concatenated layout is accepted for one row only (regrouping reads the grids' values).
      rng: a PRNG key (temperature > 0); None means `jax.random.key(0)`.
    Returns:
      `SampleResult` of jax arrays: tokens [B, N*b], nfe [B], block_step_counts [B, N], generated_tokens [B],
      tokens_per_forward [B], tokens_processed [B].

    Every argument is checked before tracing (values only where they are concrete): an `InputError` names it.
    """
    vision_args = dict(zip(VISION_ARGS, (pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)))
    check_arrays("bj.sample", input_ids=input_ids, attention_mask=attention_mask, **vision_args, rng=rng)
    inputs = _checked(model, input_ids, config, attention_mask, vision_args, rng, "bj.sample")
    return _sample_jit(model.for_jit(), inputs, jnp.float32(config.confidence_threshold),
                       cfg=config.decode_settings())


def generate(
    model: Model,
    input_ids: Any,
    config: SamplingConfig,
    attention_mask: Any = None,
    pixel_values: Any = None,
    image_grid_thw: Any = None,
    pixel_values_videos: Any = None,
    video_grid_thw: Any = None,
    rng: jax.Array | None = None,
) -> SamplerOutput:
    """Block-diffusion decoding of a batch of prompts (left padding marked by `attention_mask`): `sample` plus
    conveniences (Python values accepted, timings, numpy statistics).

    Returns tokens [B, ceil(max_new_tokens / b) * b] and stats: `nfe` [B] (forwards: see `SampleResult.nfe`),
    `nfe_total`, `block_step_counts` [B, N], `denoising_forwards` [B], `generated_tokens` [B],
    `tokens_per_forward` [B] (tokens up to and including the first EOS per denoising forward), `tokens_processed`
    [B], `prefill_seconds`, `decode_seconds` (with commit="fold" the prefill also computes the first block's first
    step).

    Every argument is checked on the host before anything is compiled (see `check_decoding_call`): a mistake is
    an `InputError` naming the argument and the value.
    """
    vision_args = dict(zip(VISION_ARGS, (pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)))
    inputs = _checked(model, input_ids, config, attention_mask, vision_args, rng, "bj.generate")
    # Compiled once per model architecture, shapes and the settings each part depends on: the prefill only on the
    # block layout, the decode loop on everything but the confidence threshold (a traced value, so a threshold
    # sweep reuses one compiled loop).
    jit_model = model.for_jit()
    t0 = time.perf_counter()
    carry, next_pos, prompt_blocks = _prefill_jit(jit_model, inputs, cfg=config.prefill_settings())
    jax.block_until_ready(carry)
    t1 = time.perf_counter()
    result = _decode_jit(jit_model, carry, next_pos, prompt_blocks, jnp.float32(config.confidence_threshold),
                         cfg=config.decode_settings())
    result = jax.block_until_ready(result)
    t2 = time.perf_counter()
    steps = np.asarray(result.block_step_counts)
    nfe = np.asarray(result.nfe)
    stats = {
        "nfe": nfe,
        "nfe_total": int(nfe.sum()),
        "block_step_counts": steps,
        "denoising_forwards": steps.sum(axis=1),
        "generated_tokens": np.asarray(result.generated_tokens),
        "tokens_per_forward": np.asarray(result.tokens_per_forward, np.float64),
        "tokens_processed": np.asarray(result.tokens_processed),
        "prefill_seconds": t1 - t0,
        "decode_seconds": t2 - t1,
    }
    return SamplerOutput(result.tokens, stats)
