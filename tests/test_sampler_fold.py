"""commit="fold": the forward that starts a block also writes the previous one, and the prefill also runs the first
block's first step. Its K/V and logits against the separate forwards of commit="forward" (float32), and its tokens
against commit="forward" where the two decode a batch with left padding, images and rows ending mid-batch."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers_sampler import EOS, MASK, image_prompt, sharp_model

import bard_jax as bj
from bard_jax.model.positions import response_positions
from bard_jax.modeling import network
from bard_jax.sampler import diffusion as impl


def assert_close(got, want, what: str) -> None:
    """Equal up to float32 rounding of the same arithmetic on other shapes: 1e-5 of the largest magnitude."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=what)


def left_padded_batch(model):
    """Two rows: a text prompt of 9 tokens and a 10-token prompt with an image (so the first is left padded)."""
    rng = np.random.default_rng(3)
    image, vision = image_prompt(model.config, rng)
    prompts = [list(rng.integers(0, 900, 9)), image + [8]]
    width = max(map(len, prompts))
    ids = np.zeros((2, width), np.int32)
    mask = np.zeros((2, width), bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, True
    return ids, mask, vision


@pytest.mark.parametrize("shift", [False, True])
def test_folded_forwards_equal_the_separate_ones(shift):
    model = sharp_model(False)
    ids, mask, vision = left_padded_batch(model)
    forward = bj.SamplingConfig(max_new_tokens=12, block_size=4, mask_token_id=MASK, eos_token_id=EOS,
                                commit="forward", shift_labels=shift)
    fold = dataclasses.replace(forward, commit="fold")
    inputs = impl._checked(model, ids, fold, mask, dict(zip(impl.VISION_ARGS, (vision["pixel_values"],
                                                                               vision["image_grid_thw"], None, None))),
                           None, "test")
    jm = model.for_jit()
    apart, next_pos, prompt_blocks = impl._prefill_jit(jm, inputs, cfg=forward.prefill_settings())
    folded, next_pos_f, prompt_blocks_f = impl._prefill_jit(jm, inputs, cfg=fold.prefill_settings())
    np.testing.assert_array_equal(next_pos_f, next_pos)
    np.testing.assert_array_equal(prompt_blocks_f, prompt_blocks)
    np.testing.assert_array_equal(folded.cache_valid, apart.cache_valid)
    np.testing.assert_array_equal(folded.cache_block, apart.cache_block)
    p = ids.shape[1]
    assert_close(folded.cache_k[:, :, :p], apart.cache_k[:, :, :p], "prompt keys")
    assert_close(folded.cache_v[:, :, :p], apart.cache_v[:, :, :p], "prompt values")
    assert apart.first_logits is None
    if shift:
        assert_close(folded.last_logits, apart.last_logits, "last prompt token's logits")

    net = network(model.config, None, "none", True)
    forward_block = jax.jit(lambda *a: impl._forward_block(net, model.params, *a))
    masks = jnp.full((2, 4), MASK, jnp.int32)
    # Block 0's first step: the prefill's against a forward of its own.
    first_apart, _ = forward_block(masks, response_positions(next_pos, 4, 0, xp=jnp), apart)
    assert_close(folded.first_logits, first_apart, "block 0's first-step logits")

    # Block 0 finished with some tokens: its commit forward, then block 1's first step against the cache it wrote,
    # against the one folded forward.
    x = jnp.asarray(np.random.default_rng(4).integers(0, 900, (2, 4)), jnp.int32)
    commit_logits, kv = forward_block(x, response_positions(next_pos, 4, 0, xp=jnp), apart)
    cache_id = prompt_blocks.max()
    written = impl._write_cache(apart, kv, p, cache_id)
    second_apart, _ = forward_block(masks, response_positions(next_pos, 4, 4, xp=jnp), written)
    commit_and_start = jax.jit(lambda *a: impl._commit_and_start(net, model.params, fold, next_pos, *a))
    (k, v), second_folded, tail = commit_and_start(x, cache_id, folded)
    assert_close(k, kv[0], "block 0's keys")
    assert_close(v, kv[1], "block 0's values")
    assert_close(second_folded, second_apart, "block 1's first-step logits")
    if shift:  # the next block's first prediction reads the finished block's last token
        assert_close(tail, commit_logits[:, -1], "logits at block 0's last token")
    else:
        assert tail is None
    # The comparison can fail: block 1's logits depend on block 0's tokens.
    (_, _), other, _ = commit_and_start(x.at[:, 0].set(x[:, 0] + 1), cache_id, folded)
    assert np.abs(np.asarray(other) - np.asarray(second_folded)).max() > 1e-3


@pytest.mark.parametrize("shift", [False, True])
def test_fold_decodes_the_tokens_of_forward_with_rows_ending_mid_batch(shift):
    model = sharp_model(False, seed=5)  # a seed whose rows vary their tokens enough to pick an EOS below
    ids, mask, vision = left_padded_batch(model)
    base = bj.SamplingConfig(max_new_tokens=16, block_size=4, denoising_steps=2, strategy="low_confidence_dynamic",
                             confidence_threshold=0.6, mask_token_id=MASK, eos_token_id=EOS, commit="forward",
                             shift_labels=shift)
    # EOS = a token row 0 emits first in its second block and row 1 not there, so the rows stop in other blocks.
    free = np.asarray(bj.generate(model, ids, base, attention_mask=mask, **vision).tokens).reshape(2, -1, 4)
    eos = next(int(t) for t in free[0, 1] if t not in free[0, 0] and t not in free[1, :2])
    forward = dataclasses.replace(base, eos_token_id=eos)
    apart = bj.generate(model, ids, forward, attention_mask=mask, **vision)
    out = bj.generate(model, ids, dataclasses.replace(forward, commit="fold"), attention_mask=mask, **vision)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(apart.tokens))
    np.testing.assert_array_equal(out.stats["block_step_counts"], apart.stats["block_step_counts"])
    tokens = np.asarray(out.tokens)
    ended = [int(np.argmax((t == eos).reshape(-1, 4).any(1))) if (t == eos).any() else None for t in tokens]
    assert ended[0] == 1 and ended[1] != 1, ended
    steps = out.stats["block_step_counts"]
    # Forwards per row: "forward" = prefill + steps + a commit per block without EOS; "fold" = the steps alone.
    for row in range(2):
        blocks = int((steps[row] > 0).sum())
        commits = blocks - (1 if ended[row] is not None else 0)
        assert apart.stats["nfe"][row] == 1 + steps[row].sum() + commits
        assert out.stats["nfe"][row] == steps[row].sum()
        # "fold" commits a block only when the row goes on to another one.
        assert out.stats["tokens_processed"][row] == mask[row].sum() + 4 * (steps[row].sum() + blocks - 1)
