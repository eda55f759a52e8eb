"""Block-diffusion decoding in one compiled function: prefill, then nested `lax.while_loop`s over blocks and
denoising steps, with a preallocated KV cache (spec section 6).

Letters: B batch, P prompt length (bucket), b block size, N blocks, C cache slots = P + N*b, L layers,
K kv heads, H head dim, V vocab.

Per row: its own prompt length (left padding), positions, EOS. A row that emitted EOS is frozen (its later blocks
stay mask ids) while the others go on; each row's tokens equal those of decoding it alone.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bard_jax.errors import InputError
from bard_jax.model.attention import PLAIN, TokenInfo
from bard_jax.model.hidden import hidden_states
from bard_jax.model.inputs import VisionInputs, check_inputs, check_length, shared_vision, text_positions, vision_inputs
from bard_jax.model.positions import response_positions
from bard_jax.model.text import KVContext
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import Model, check_model, network
from bard_jax.sampler.config import SamplingConfig
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
    commits: jax.Array  # [B] commit forwards per row
    cache_k: jax.Array  # [L, B, C, K, H]
    cache_v: jax.Array
    cache_valid: jax.Array  # [B, C]
    cache_block: jax.Array  # [B, C]
    key: jax.Array


def _forward_block(net, params, tokens_bt, positions_3bt, carry: Carry):
    """Logits [B, b, V] and current K/V of a block attending to the cache (read only)."""
    b, t = tokens_bt.shape
    info = TokenInfo(
        block=jnp.full((b, t), CURRENT_BLOCK, jnp.int32), kind=jnp.full((b, t), PLAIN, jnp.int32),
        valid=jnp.ones((b, t), bool),
    )
    ctx = KVContext(carry.cache_k, carry.cache_v,
                    TokenInfo(block=carry.cache_block, kind=jnp.zeros_like(carry.cache_block), valid=carry.cache_valid))
    h, kv = hidden_states(net, params, tokens_bt, positions_3bt, info, context=ctx)
    return net.apply({"params": params}, h, method=Qwen3VL.logits), kv


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


def _prefill(net, params, cfg: SamplingConfig, input_ids, attention_mask, vision: VisionInputs | None,
             image_grid_thw, video_grid_thw, key):
    """Run the prompt with the block-causal prompt mask; return the initial carry and next positions [B]."""
    c = net.config
    b, p = input_ids.shape
    positions, next_pos = text_positions(c, input_ids, attention_mask, image_grid_thw, video_grid_thw)
    info = TokenInfo.block_causal(attention_mask, cfg.block_size)
    # The prompts' pixel rows stay concatenated over the batch (one vision group shared by all rows).
    groups = None if vision is None else shared_vision(c, vision, input_ids)
    _, (k, v) = hidden_states(net, params, input_ids, positions, info, vision=groups)
    slots = p + cfg.num_blocks * cfg.block_size
    shape = k.shape[:2] + (slots,) + k.shape[3:]
    prompt_blocks = jnp.max(info.block, axis=-1) + 1  # per row: ceil(real prompt length / b)
    carry = Carry(
        tokens=jnp.full((b, cfg.num_blocks * cfg.block_size), cfg.mask_token_id, jnp.int32),
        done=jnp.zeros((b,), bool),
        block=jnp.zeros((), jnp.int32),
        steps=jnp.zeros((b, cfg.num_blocks), jnp.int32),
        commits=jnp.zeros((b,), jnp.int32),
        cache_k=jax.lax.dynamic_update_slice_in_dim(jnp.zeros(shape, k.dtype), k, 0, axis=2),
        cache_v=jax.lax.dynamic_update_slice_in_dim(jnp.zeros(shape, v.dtype), v, 0, axis=2),
        cache_valid=jnp.concatenate([info.valid, jnp.zeros((b, slots - p), bool)], axis=1),
        cache_block=jnp.concatenate([info.block, jnp.zeros((b, slots - p), jnp.int32)], axis=1),
        key=key,
    )
    return carry, next_pos, prompt_blocks


def _decode(net, params, cfg: SamplingConfig, carry: Carry, next_pos, prompt_blocks, threshold,
            prompt_len: int) -> Carry:
    """All blocks; `threshold` (a float32 scalar) stands for cfg.confidence_threshold, which is not compiled in."""
    bs = cfg.block_size
    schedule = jnp.asarray(cfg.transfer_schedule(), jnp.int32)
    rows = next_pos.shape[0]

    def block_cond(c: Carry):
        return (c.block < cfg.num_blocks) & ~jnp.all(c.done)

    def block_body(c: Carry) -> Carry:
        positions = response_positions(next_pos, bs, c.block * bs, xp=jnp)
        active = ~c.done
        x0 = jnp.full((rows, bs), cfg.mask_token_id, jnp.int32)
        kv0 = jax.tree_util.tree_map(
            lambda a: jnp.zeros(a.shape[:2] + (bs,) + a.shape[3:], a.dtype), (c.cache_k, c.cache_v)
        )

        def step_cond(s):
            x, step, _, _, _ = s
            return (step < cfg.denoising_steps) & jnp.any(active & jnp.any(x == cfg.mask_token_id, axis=-1))

        def step_body(s):
            x, step, counts, key, _ = s
            key, sub = jax.random.split(key)
            logits, kv = _forward_block(net, params, x, positions, c)
            tok, conf = choose_tokens(logits, cfg, sub)
            masked = x == cfg.mask_token_id
            transfer = select_transfer(conf, masked, schedule[step], cfg, threshold) & active[:, None]
            counts = counts + (active & jnp.any(masked, axis=-1)).astype(jnp.int32)
            return jnp.where(transfer, tok, x), step + 1, counts, key, kv

        x, _, counts, key, last_kv = jax.lax.while_loop(
            step_cond, step_body, (x0, jnp.zeros((), jnp.int32), jnp.zeros((rows,), jnp.int32), c.key, kv0)
        )
        start = c.block * bs
        tokens = jax.lax.dynamic_update_slice_in_dim(
            c.tokens, jnp.where(active[:, None], x, jax.lax.dynamic_slice_in_dim(c.tokens, start, bs, 1)), start, 1
        )
        steps = jax.lax.dynamic_update_slice_in_dim(c.steps, counts[:, None], c.block, 1)
        finished = active & jnp.any(x == cfg.eos_token_id, axis=-1)
        c = c.replace(tokens=tokens, steps=steps, key=key, done=c.done | finished)
        commit_rows = active & ~finished
        if cfg.commit == "forward":
            _, kv = _forward_block(net, params, x, positions, c)
        else:
            kv = last_kv
        c = _write_cache(c, kv, prompt_len + start, prompt_blocks.max() + c.block)
        return c.replace(commits=c.commits + commit_rows.astype(jnp.int32), block=c.block + 1)

    return jax.lax.while_loop(block_cond, block_body, carry)


@functools.partial(jax.jit, static_argnames=("cfg", "num_image_windows"))
def _prefill_jit(model: Model, input_ids, attention_mask, pixels, meta, image_grid_thw, video_grid_thw, key, *,
                 cfg, num_image_windows):
    net = network(model.config, None, "none", True)
    vision = None if pixels is None else VisionInputs(pixels, meta, num_image_windows)
    return _prefill(net, model.params, cfg, input_ids, attention_mask, vision, image_grid_thw, video_grid_thw, key)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("carry",))
def _decode_jit(model: Model, carry: Carry, next_pos, prompt_blocks, threshold, *, cfg):
    net = network(model.config, None, "none", True)
    return _decode(net, model.params, cfg, carry, next_pos, prompt_blocks, threshold,
                   carry.cache_valid.shape[1] - cfg.num_blocks * cfg.block_size)


def check_rng(rng: Any) -> None:
    """None or a PRNG key: a typed key (`jax.random.key(seed)`) or a raw uint32[2] one (`jax.random.PRNGKey`)."""
    if rng is None:
        return
    if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.shape == ():
        return
    if isinstance(rng, (jax.Array, np.ndarray)):
        if rng.dtype == np.uint32 and rng.shape == (2,):
            return
        shown = f"an array of dtype {rng.dtype} and shape {rng.shape}"
    else:
        shown = f"{rng!r} ({type(rng).__name__})"
    raise InputError(f"rng must be None or one PRNG key such as jax.random.key(0), got {shown}")


def check_decoding_call(model: Model, input_ids: Any, attention_mask: Any, pixel_values: Any, image_grid_thw: Any,
                        pixel_values_videos: Any, video_grid_thw: Any, rng: Any, *, token_ids: dict[str, int],
                        top_k: int, new_tokens: int, detail: str = "") -> np.ndarray | None:
    """The host-side checks a decoder runs before compiling anything: the model, the settings' token ids
    (`token_ids`: name -> id) and top_k against its vocabulary, the inputs (`check_inputs`; every row needs a real
    token), prompt length + `new_tokens` against its positions, the key. Returns the mask as host bools (or None)."""
    check_model(model)
    c = model.config
    for name, value in token_ids.items():
        if not 0 <= value < c.text.vocab_size:
            raise InputError(f"{name} {value} outside the vocabulary [0, {c.text.vocab_size})")
    if top_k > c.text.vocab_size:
        raise InputError(f"top_k {top_k} exceeds the vocabulary size {c.text.vocab_size}")
    real = check_inputs(c, input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                        video_grid_thw, require_prompt=True)
    check_length(c, np.shape(input_ids)[1], new_tokens, detail)
    check_rng(rng)
    return real


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
    """Block-diffusion decoding of a batch of prompts (left padding marked by `attention_mask`).

    Returns tokens [B, ceil(max_new_tokens / b) * b] and stats: `nfe` [B] (1 prefill + denoising forwards +
    commits), `nfe_total`, `block_step_counts` [B, N], `tokens_per_forward` [B] (tokens up to and including the
    first EOS per denoising forward), `prefill_seconds`, `decode_seconds`.

    Every argument is checked on the host before anything is compiled (see `check_decoding_call`): a mistake is
    an `InputError` naming the argument and the value.
    """
    if not isinstance(config, SamplingConfig):
        raise InputError(f"config must be a bard_jax.SamplingConfig, got {type(config).__name__}")
    new = config.num_blocks * config.block_size
    check_decoding_call(model, input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                        video_grid_thw, rng, token_ids={"mask_token_id": config.mask_token_id,
                                                        "eos_token_id": config.eos_token_id},
                        top_k=config.top_k, new_tokens=new,
                        detail=f" (max_new_tokens {config.max_new_tokens} in whole blocks of {config.block_size})"
                        if new != config.max_new_tokens else "")
    c = model.config
    input_ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    vis = vision_inputs(c, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
    pixels, meta, n_img = vis if vis is not None else (None, None, 0)
    key = rng if rng is not None else jax.random.key(0)
    # Compiled once per model architecture, shapes and the settings each part depends on: the prefill only on the
    # block layout, the decode loop on everything but the confidence threshold (a traced value, so a threshold
    # sweep reuses one compiled loop).
    jit_model = model.for_jit()
    t0 = time.perf_counter()
    carry, next_pos, prompt_blocks = _prefill_jit(jit_model, input_ids, mask, pixels, meta, image_grid_thw,
                                                  video_grid_thw, key, cfg=config.prefill_settings(),
                                                  num_image_windows=n_img)
    jax.block_until_ready(carry)
    t1 = time.perf_counter()
    carry = _decode_jit(jit_model, carry, next_pos, prompt_blocks, jnp.float32(config.confidence_threshold),
                        cfg=config.decode_settings())
    tokens = jax.block_until_ready(carry.tokens)
    t2 = time.perf_counter()
    steps = np.asarray(carry.steps)
    nfe = 1 + steps.sum(axis=1) + np.asarray(carry.commits)
    toks = np.asarray(tokens)
    produced = []
    for row in toks:
        eos = np.nonzero(row == config.eos_token_id)[0]
        upto = row[: eos[0] + 1] if len(eos) else row
        produced.append(int(np.sum(upto != config.mask_token_id)))
    produced = np.asarray(produced)
    stats = {
        "nfe": nfe,
        "nfe_total": int(nfe.sum()),
        "block_step_counts": steps,
        "denoising_forwards": steps.sum(axis=1),
        "generated_tokens": produced,
        "tokens_per_forward": produced / np.maximum(steps.sum(axis=1), 1),
        "prefill_seconds": t1 - t0,
        "decode_seconds": t2 - t1,
    }
    return SamplerOutput(tokens, stats)
