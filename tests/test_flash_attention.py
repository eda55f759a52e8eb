"""The flash implementation equals the dense one (outputs and gradients) for every mask mode of the project."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bard_jax.diffusion.layout import collate_packed, pack_sample, token_info
from bard_jax.errors import InputError
from bard_jax.model import flash
from bard_jax.model.attention import (
    PLAIN,
    AttentionConfig,
    SegmentRule,
    TokenInfo,
    TokenRule,
    attend,
    plan_attention,
    plan_tiles,
)

H = 8


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _qkv(key, b, t, s, n, kv, context=0):
    ks = jax.random.split(key, 6)
    q = jax.random.normal(ks[0], (b, t, n, H), jnp.float32)
    k = jax.random.normal(ks[1], (b, s, kv, H), jnp.float32)
    v = jax.random.normal(ks[2], (b, s, kv, H), jnp.float32)
    ctx = None
    if context:
        ctx = (jax.random.normal(ks[3], (b, context, kv, H)), jax.random.normal(ks[4], (b, context, kv, H)))
    dout = jax.random.normal(ks[5], (b, t, n, H), jnp.float32)
    return q, k, v, ctx, dout


def _run(cfg, q, k, v, q_info, k_info, rule, ctx, dout):
    """Output and gradients w.r.t. q, k, v (and the context's k, v) of <out, dout>."""

    def f(q_, k_, v_, ctx_):
        out = attend(q_, k_, v_, q_info, k_info, scale=H**-0.5, rule=rule, config=cfg, context=ctx_)
        return jnp.sum(out * dout), out

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, ctx)
    return out, grads


def _close(got, want):
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        assert np.all(np.isfinite(g))
        scale = max(float(np.max(np.abs(w))), 1e-30)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale)


def _check(q_info, k_info, rule, *, n=4, kv=2, context=0, tiles=((3, 5),), seed=0):
    b, t = q_info.block.shape
    s = k_info.block.shape[1] - context
    q, k, v, ctx, dout = _qkv(jax.random.key(seed), b, t, s, n, kv, context)
    want = _run(AttentionConfig("dense"), q, k, v, q_info, k_info, rule, ctx, dout)
    for tq, tk in tiles:
        cfg = AttentionConfig("flash", q_tile=tq, k_tile=tk)
        _close(_run(cfg, q, k, v, q_info, k_info, rule, ctx, dout), want)
    return want


def test_token_causal_with_padding_gqa():
    valid = np.ones((2, 13), bool)
    valid[1, 9:] = False  # right padding: padded queries still see the real keys before them (as dense does)
    info = TokenInfo.causal(jnp.asarray(valid))
    _check(info, info, TokenRule(), tiles=((3, 5), (64, 64)))  # tiles smaller and larger than the sequence


def test_block_causal_prompt_left_padding():
    valid = np.ones((3, 11), bool)
    valid[1, :4] = False
    valid[2, :7] = False
    info = TokenInfo.block_causal(jnp.asarray(valid), 4)
    out, _ = _check(info, info, TokenRule(), n=6, kv=3)
    # Left-padding queries (block -1) may attend no key: their rows are 0 in both implementations.
    assert np.all(np.asarray(out)[1, :4] == 0)


@pytest.mark.parametrize(("clean_sees_noisy", "seed"), [(True, 0), (False, 1), (True, 2)])
def test_packed_layout_random_lengths(clean_sees_noisy, seed):
    rng = np.random.default_rng(seed)
    samples, b = [], int(rng.choice([2, 4, 8]))
    for _ in range(3):
        p, r = int(rng.integers(1, 12)), int(rng.integers(1, 14))  # the prompt's last chunk is often partial
        samples.append(pack_sample(rng.integers(10, 50, p), rng.integers(10, 50, r), b, pad_token_id=0,
                                   image_token_id=1, video_token_id=2, spatial_merge_size=2))
    length = max(len(s["input_ids"]) for s in samples) + 3
    slots = max(int(s["response_len"]) for s in samples)
    batch = {k: jnp.asarray(v) for k, v in collate_packed(samples, length, slots).items()}
    info = token_info(batch, b)
    _check(info, info, TokenRule(clean_sees_noisy), seed=seed, tiles=((8, 3),))


def test_vision_segments_several_images():
    segment = np.concatenate([np.zeros(8), np.ones(4), np.full(12, 2), np.full(4, -1)]).astype(np.int32)
    info = TokenInfo(block=jnp.asarray(segment)[None], kind=jnp.zeros((1, 28), jnp.int32),
                     valid=jnp.ones((1, 28), bool))
    _check(info, info, SegmentRule(), n=4, kv=4, tiles=((4, 4), (5, 7)))


def test_sampler_block_against_cache():
    b, p, bs = 2, 9, 4
    valid = np.ones((b, p), bool)
    valid[0, :3] = False
    prompt = TokenInfo.block_causal(jnp.asarray(valid), bs)
    # Cache: the prompt, one decoded block, and unwritten slots; then the current block.
    cache = prompt.concat(TokenInfo(block=jnp.full((b, 8), 3), kind=jnp.zeros((b, 8), jnp.int32),
                                    valid=jnp.asarray(np.r_[np.ones(4), np.zeros(4)].astype(bool))[None].repeat(b, 0)))
    current = TokenInfo(block=jnp.full((b, bs), 2**30), kind=jnp.full((b, bs), PLAIN), valid=jnp.ones((b, bs), bool))
    _check(current, cache.concat(current), TokenRule(), context=cache.block.shape[1], tiles=((2, 4), (4, 16)))


def test_rows_with_no_key_are_finite_and_zero():
    info = TokenInfo(block=jnp.zeros((1, 6), jnp.int32), kind=jnp.zeros((1, 6), jnp.int32),
                     valid=jnp.zeros((1, 6), bool))
    out, grads = _check(info, info, TokenRule(), tiles=((2, 2), (8, 8)))
    assert np.all(np.asarray(out) == 0)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree_util.tree_leaves(grads))


def test_tile_skipping_changes_no_bit():
    samples = [pack_sample(np.arange(10, 27), np.arange(30, 52), 4, pad_token_id=0, image_token_id=1,
                           video_token_id=2, spatial_merge_size=2)]
    batch = {k: jnp.asarray(v) for k, v in collate_packed(samples, 72, 24).items()}
    info = token_info(batch, 4)
    q, k, v, _, dout = _qkv(jax.random.key(3), 1, 72, 72, 4, 2)
    on = _run(AttentionConfig("flash", 8, 8), q, k, v, info, info, TokenRule(), None, dout)
    off = _run(AttentionConfig("flash", 8, 8, skip_empty_tiles=False), q, k, v, info, info, TokenRule(), None, dout)
    for a, b in zip(jax.tree_util.tree_leaves(on), jax.tree_util.tree_leaves(off)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # And skipping does skip: the packed layout leaves a good share of the tiles empty.
    order, count, cls = plan_tiles(info, info, TokenRule(), 8, 8)
    assert int(np.sum(count)) < 0.75 * 9 * 9


def test_tile_map_matches_the_mask():
    valid = np.ones((2, 12), bool)
    valid[0, :5] = False
    info = TokenInfo.block_causal(jnp.asarray(valid), 3)
    _, count, cls = plan_tiles(info, info, TokenRule(), 4, 4)
    mask = np.asarray(TokenRule()(info, info)).reshape(2, 3, 4, 3, 4)
    n = mask.sum(axis=(2, 4))
    want = np.where(n == 0, flash.EMPTY, np.where(n == 16, flash.FULL, flash.PARTIAL))
    np.testing.assert_array_equal(np.asarray(cls), want)
    np.testing.assert_array_equal(np.asarray(count), np.any(want != flash.EMPTY, axis=0).sum(axis=1))


def test_auto_chooses_by_size():
    cfg = AttentionConfig("auto", q_tile=16, k_tile=16)
    small = TokenInfo.causal(jnp.ones((1, 20), bool))
    large = TokenInfo.causal(jnp.ones((1, 40), bool))
    assert plan_attention(small, small, rule=TokenRule(), config=cfg).impl == "dense"
    assert plan_attention(large, large, rule=TokenRule(), config=cfg).impl == "flash"


@pytest.mark.parametrize("kwargs", [{"impl": "splash"}, {"q_tile": 0}, {"k_tile": 2.5}, {"q_tile": True}])
def test_bad_settings_are_named(kwargs):
    with pytest.raises(InputError, match="attention"):
        AttentionConfig(**kwargs)
