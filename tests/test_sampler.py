"""The compiled block-diffusion sampler against a plain Python loop of the spec's algorithm, batching, compiles."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from helpers_sampler import EOS, MASK, image_prompt, reference_generate, sharp_model, video_prompt

import bard_jax as bj
from bard_jax.sampler import diffusion as sampler_impl

SAMPLED = dict(temperature=0.8, top_k=20, top_p=0.9)
CASES = [
    # (strategy, block size, steps, threshold, tied, vision, other settings)
    ("low_confidence_static", 4, 4, 0.9, False, None, {}),
    pytest.param("low_confidence_static", 4, 2, 0.9, True, "image", {}, marks=pytest.mark.slow),  # suite time:
    # images through the reference also run in test_sample_pure (per-example, in the caller's jit)
    pytest.param("low_confidence_static", 2, 1, 0.9, False, "image", {}, marks=pytest.mark.slow),  # suite time
    ("low_confidence_dynamic", 4, 4, 0.6, False, None, {}),
    ("low_confidence_dynamic", 8, 3, 0.5, True, None, {}),
    pytest.param("low_confidence_dynamic", 4, 2, 0.7, False, "image", {}, marks=pytest.mark.slow),  # suite time
    ("low_confidence_dynamic", 4, 3, 0.8, False, None, SAMPLED),
    ("low_confidence_static", 4, 3, 0.9, False, None, dict(commit="reuse")),
    # The reference's literal schedule (a commit forward per block): the same tokens as the default "fold".
    ("low_confidence_dynamic", 4, 4, 0.6, False, None, dict(commit="forward")),
    pytest.param("low_confidence_dynamic", 4, 3, 0.8, False, None, dict(SAMPLED, commit="forward"),
                 marks=pytest.mark.slow),
    pytest.param("low_confidence_dynamic", 4, 2, 0.7, False, "image", dict(commit="forward"), marks=pytest.mark.slow),
    ("low_confidence_dynamic", 4, 2, 0.6, True, "video", {}),
    pytest.param("low_confidence_static", 4, 2, 0.9, False, None, dict(SAMPLED, commit="reuse"),
                 marks=pytest.mark.slow),
    pytest.param("low_confidence_dynamic", 4, 4, 0.6, False, "video", dict(commit="reuse"), marks=pytest.mark.slow),
    pytest.param("low_confidence_dynamic", 2, 2, 0.5, False, "image", dict(SAMPLED, top_k=0),
                 marks=pytest.mark.slow),
    pytest.param("low_confidence_dynamic", 4, 2, 0.5, True, "image", dict(SAMPLED, top_p=1.0),
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("strategy,b,s,tau,tied,vision,other", CASES)
def test_compiled_sampler_equals_python_reference(strategy, b, s, tau, tied, vision, other):
    sampled = other.get("temperature", 0.0) > 0
    # Sampling needs a model that leaves something to choose; greedy cases want clear choices.
    model = sharp_model(tied, sharpness=(8 if tied else 25) if sampled else None)
    rng = np.random.default_rng(b * 10 + s)
    if vision == "image":
        prompt, pixels = image_prompt(model.config, rng)
    elif vision == "video":
        prompt, pixels = video_prompt(model.config, rng)
    else:
        prompt, pixels = list(rng.integers(0, 900, 7)), {}
    cfg = bj.SamplingConfig(max_new_tokens=3 * b, block_size=b, denoising_steps=s, strategy=strategy,
                            confidence_threshold=tau, mask_token_id=MASK, eos_token_id=EOS, **other)
    key = jax.random.key(b * 10 + s)
    out = bj.generate(model, np.array([prompt]), cfg, **pixels, rng=key)
    ref = reference_generate(model, prompt, cfg, **pixels, rng=key)
    np.testing.assert_array_equal(np.asarray(out.tokens[0]), ref.tokens)
    np.testing.assert_array_equal(out.stats["block_step_counts"][0], ref.counts)
    assert (ref.tokens != EOS).all()  # no EOS: every block decoded (EOS handling is tested below)
    assert out.stats["generated_tokens"][0] == ref.generated_tokens
    np.testing.assert_allclose(out.stats["tokens_per_forward"][0], ref.tokens_per_forward, rtol=1e-6)
    # The case can tell a wrong implementation apart: the choices depend on what it varies.
    if sampled:  # sampling and each filter it sets did something
        assert ref.draws["off_argmax"] > 0 and ref.draws["several_kept"] > 0, ref.draws
        if cfg.top_p < 1.0:
            assert ref.draws["top_p_cut"] > 0, ref.draws
    if cfg.commit == "reuse":  # reusing the last denoising forward's K/V is not the same as a commit forward
        forward = reference_generate(model, prompt, dataclasses.replace(cfg, commit="forward"), **pixels, rng=key)
        assert (forward.tokens != ref.tokens).any()
    if vision:  # the pixels, in their order (for a video: the temporal slices swapped, too)
        flipped = {k: v[::-1].copy() if k.startswith("pixel") else v for k, v in pixels.items()}
        assert (reference_generate(model, prompt, cfg, **flipped, rng=key).tokens != ref.tokens).any()
    # "forward": prefill + denoising forwards + a commit forward per block; "reuse": no commits; "fold": the prefill
    # and the two commits (after blocks 0 and 1) ride on denoising forwards.
    want = {"forward": 1 + ref.counts.sum() + 3, "reuse": 1 + ref.counts.sum(), "fold": ref.counts.sum()}
    assert out.stats["nfe"][0] == ref.nfe == want[cfg.commit]
    committed = {"forward": 3, "reuse": 0, "fold": 2}[cfg.commit]
    assert out.stats["tokens_processed"][0] == ref.tokens_processed == len(prompt) + b * (ref.counts.sum() + committed)


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
    # EOS = a token that row 0 emits in its second block (only row 0's decode is needed to choose it; the rows
    # stopping in different blocks is asserted below).
    eos = int(np.asarray(bj.generate(model, np.array([prompts[0]]), base).tokens[0])[5])
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
