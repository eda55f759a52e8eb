"""The compiled block-diffusion sampler against a plain Python loop of the spec's algorithm, batching, compiles."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bard_jax as bj
from bard_jax.model.attention import PLAIN, TokenInfo
from bard_jax.model.inputs import vision_inputs, window_index
from bard_jax.model.positions import rope_position_ids
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import network
from bard_jax.sampler import diffusion as sampler_impl

MASK, EOS = 1023, 1022


def sharp_model(tied: bool, seed: int = 0) -> bj.Model:
    """A random tiny model with peaked predictions (a random model is otherwise near-uniform)."""
    cfg = bj.preset("tiny").replace(tie_word_embeddings=tied)
    params = bj.init_params(cfg, jax.random.key(seed))
    if tied:  # sharpen through the final norm: the head is the embedding table
        params["language_model"]["norm"]["scale"] = params["language_model"]["norm"]["scale"] * 25
    else:
        params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 60
    return bj.Model(params, cfg)


def full_forward_logits(model, seq, prompt_len, b, grid=None, pixels=None):
    """Logits of `seq` = [prompt | response blocks] recomputed from scratch (no cache): prompt chunks i // b,
    response block j -> ceil(P / b) + j, every block sees all earlier blocks and itself."""
    c = model.config
    n = len(seq)
    blk = np.concatenate([np.arange(prompt_len) // b, math.ceil(prompt_len / b) + np.arange(n - prompt_len) // b])
    info = TokenInfo(block=jnp.asarray(blk[None], jnp.int32), kind=jnp.full((1, n), PLAIN, jnp.int32),
                     valid=jnp.ones((1, n), bool))
    ids = np.asarray(seq)[None]
    pos, _ = rope_position_ids(ids, None, grid, None, image_token_id=c.image_token_id,
                               video_token_id=c.video_token_id, spatial_merge_size=2, xp=np)
    return np.asarray(_plain_forward(model, jnp.asarray(ids, jnp.int32), jnp.asarray(pos), info, pixels, grid),
                      np.float64)


@jax.jit
def _plain_forward(model, ids, pos, info, pixels, grid):
    """One ordinary forward (jitted only to keep the test fast; no cache, no sampler code)."""
    c = model.config
    net, p = network(c), {"params": model.params}
    vision, windows = None, None
    if pixels is not None:
        vis = vision_inputs(c, pixels, grid)
        vision = net.apply(p, vis.pixels_pc, vis.meta, method=Qwen3VL.encode_vision)
        windows = window_index(c, ids, vis.num_image_windows)
    x, deep = net.apply(p, ids, vision, windows, method=Qwen3VL.embed)
    h, _ = net.apply(p, x, pos, info, deep, method=Qwen3VL.decode)
    return net.apply(p, h[0], method=Qwen3VL.logits)


def reference_generate(model, prompt, cfg: bj.SamplingConfig, grid=None, pixels=None):
    """The spec's algorithm, one full forward at a time, greedy. Returns tokens and step counts per block."""
    b, s = cfg.block_size, cfg.denoising_steps
    base, extra = divmod(b, s)
    quota = [base + (1 if i < extra else 0) for i in range(s)]
    seq, out, counts = list(prompt), [], []
    for _ in range(cfg.num_blocks):
        x = np.full(b, cfg.mask_token_id)
        steps = 0
        for step in range(s):
            masked = x == cfg.mask_token_id
            if not masked.any():
                break
            steps += 1
            logits = full_forward_logits(model, seq + list(x), len(prompt), b, grid, pixels)[-b:]
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            tok = logits.argmax(-1)
            conf = probs[np.arange(b), tok]
            k = min(quota[step], int(masked.sum()))
            order = sorted(np.nonzero(masked)[0], key=lambda i: (-conf[i], i))
            transfer = np.zeros(b, bool)
            transfer[order[:k]] = True
            if cfg.strategy == "low_confidence_dynamic":
                confident = masked & (conf > cfg.confidence_threshold)
                if confident.sum() >= quota[step]:
                    transfer = confident
            x = np.where(transfer, tok, x)
        counts.append(steps)
        out += list(x)
        if (x == cfg.eos_token_id).any():
            break
        seq += list(x)
    n = cfg.num_blocks * b
    return np.array(out + [cfg.mask_token_id] * (n - len(out))), counts + [0] * (cfg.num_blocks - len(counts))


CASES = [
    # (strategy, block size, steps, threshold, tied, image)
    ("low_confidence_static", 4, 4, 0.9, False, False),
    ("low_confidence_static", 4, 2, 0.9, True, True),
    pytest.param("low_confidence_static", 2, 1, 0.9, False, True, marks=pytest.mark.slow),  # suite time
    ("low_confidence_dynamic", 4, 4, 0.6, False, False),
    ("low_confidence_dynamic", 8, 3, 0.5, True, False),
    pytest.param("low_confidence_dynamic", 4, 2, 0.7, False, True, marks=pytest.mark.slow),  # suite time
]


@pytest.mark.parametrize("strategy,b,s,tau,tied,image", CASES)
def test_compiled_sampler_equals_python_reference(strategy, b, s, tau, tied, image):
    model = sharp_model(tied)
    c = model.config
    rng = np.random.default_rng(b * 10 + s)
    grid = pixels = None
    if image:
        prompt = [5, 6, c.vision_start_token_id] + [c.image_token_id] * 4 + [c.vision_end_token_id, 7]
        grid = np.array([[1, 4, 4]])
        pixels = rng.standard_normal((16, c.vision.patch_dim)).astype(np.float32)
    else:
        prompt = list(rng.integers(0, 900, 7))
    cfg = bj.SamplingConfig(max_new_tokens=3 * b, block_size=b, denoising_steps=s, strategy=strategy,
                            confidence_threshold=tau, mask_token_id=MASK, eos_token_id=EOS)
    out = bj.generate(model, np.array([prompt]), cfg, pixel_values=pixels, image_grid_thw=grid)
    ref_tokens, ref_counts = reference_generate(model, prompt, cfg, grid, pixels)
    np.testing.assert_array_equal(np.asarray(out.tokens[0]), ref_tokens)
    np.testing.assert_array_equal(out.stats["block_step_counts"][0], ref_counts)
    assert out.stats["nfe"][0] == 1 + sum(ref_counts) + 3  # prefill + steps + one commit per block (no EOS)


def test_batched_rows_equal_rows_decoded_alone_with_eos_in_different_blocks():
    model = sharp_model(False, seed=3)
    c = model.config
    rng = np.random.default_rng(7)
    prompts = [list(rng.integers(0, 900, n)) for n in (9, 4)]
    prompts.append([5, c.vision_start_token_id] + [c.image_token_id] * 4 + [c.vision_end_token_id, 8, 9])
    grid = np.array([[1, 4, 4]])
    pixels = rng.standard_normal((16, c.vision.patch_dim)).astype(np.float32)
    base = bj.SamplingConfig(max_new_tokens=16, block_size=4, denoising_steps=2, strategy="low_confidence_dynamic",
                             confidence_threshold=0.6, mask_token_id=MASK, eos_token_id=EOS)
    alone = []
    for i, p in enumerate(prompts):
        kw = dict(pixel_values=pixels, image_grid_thw=grid) if i == 2 else {}
        alone.append(np.asarray(bj.generate(model, np.array([p]), base, **kw).tokens[0]))
    # EOS = a token that row 0 emits in its second block and row 1 does not emit before: rows stop differently.
    eos = int(alone[0][5])
    cfg = bj.SamplingConfig(**{**base.__dict__, "eos_token_id": eos})
    alone = [np.asarray(bj.generate(model, np.array([p]), cfg, **(dict(pixel_values=pixels, image_grid_thw=grid)
                                                                  if i == 2 else {})).tokens[0])
             for i, p in enumerate(prompts)]
    width = max(map(len, prompts))
    ids = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, True
    out = bj.generate(model, ids, cfg, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(out.tokens[i]), alone[i], err_msg=f"row {i}")
    finished_block = [np.argmax((a == eos).reshape(-1, 4).any(1)) if (a == eos).any() else -1 for a in alone]
    assert finished_block[0] == 1 and len(set(finished_block)) > 1, finished_block
    assert (np.asarray(out.tokens[0])[8:] == MASK).all()  # blocks after EOS stay mask ids


def test_same_bucket_does_not_recompile():
    model = sharp_model(False)
    cfg = bj.SamplingConfig(max_new_tokens=8, block_size=4, denoising_steps=2, mask_token_id=MASK, eos_token_id=EOS)
    rng = np.random.default_rng(0)
    sizes = []
    for i in range(3):
        ids = rng.integers(0, 900, (2, 10))
        mask = np.ones_like(ids, bool)
        mask[0, : i + 1] = False  # other prompt lengths, same bucket
        bj.generate(model, ids, cfg, attention_mask=mask)
        sizes.append((sampler_impl._prefill_jit._cache_size(), sampler_impl._decode_jit._cache_size()))
    assert sizes[1] == sizes[0] and sizes[2] == sizes[0], sizes
    # A threshold sweep, a static setting's prefill, and another checkpoint of the same architecture (with its own
    # source metadata, as load_pretrained gives) reuse what was compiled: only the static decode loop is new.
    other = bj.Model(sharp_model(False, seed=1).params, model.config, source={"path": "/elsewhere"})
    for tau in (0.3, 0.6, 0.95):
        bj.generate(other, ids, dataclasses.replace(cfg, confidence_threshold=tau), attention_mask=mask)
    assert (sampler_impl._prefill_jit._cache_size(), sampler_impl._decode_jit._cache_size()) == sizes[0]
    bj.generate(other, ids, dataclasses.replace(cfg, strategy="low_confidence_static"), attention_mask=mask)
    assert sampler_impl._prefill_jit._cache_size() == sizes[0][0]
    assert sampler_impl._decode_jit._cache_size() == sizes[0][1] + 1


def test_bad_settings_fail_before_compiling():
    with pytest.raises(ValueError, match="denoising_steps"):
        bj.SamplingConfig(denoising_steps=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        bj.SamplingConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="unknown strategy"):
        bj.SamplingConfig(strategy="greedy")
    with pytest.raises(ValueError, match="confidence_threshold"):
        bj.SamplingConfig(confidence_threshold=1.5)
    with pytest.raises(ValueError, match="top_p"):
        bj.SamplingConfig(top_p=0.0)
    model = sharp_model(False)
    compiled = (sampler_impl._prefill_jit._cache_size(), sampler_impl._decode_jit._cache_size())
    with pytest.raises(ValueError, match="mask_token_id 5000 outside the vocabulary"):
        bj.generate(model, np.array([[1, 2]]), bj.SamplingConfig(mask_token_id=5000, eos_token_id=1))
    with pytest.raises(ValueError, match="max positions"):
        bj.generate(model, np.zeros((1, 8190), np.int32),
                    bj.SamplingConfig(max_new_tokens=64, mask_token_id=MASK, eos_token_id=EOS))
    assert (sampler_impl._prefill_jit._cache_size(), sampler_impl._decode_jit._cache_size()) == compiled
