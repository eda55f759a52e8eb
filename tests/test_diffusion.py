"""Block-diffusion core: packed-layout masks, the strict-mask equivalence, corruption statistics, loss math, grads."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import bard_jax as bj
from bard_jax.diffusion import layout, noise
from bard_jax.diffusion.losses import ObjectiveConfig, loss_fn, topk_kd, weighted_ce
from bard_jax.errors import InputError
from bard_jax.model.attention import CLEAN, NOISY, PLAIN, TokenInfo, mask_to_numpy
from bard_jax.model.positions import rope_position_ids
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import network

SPEC_EXAMPLE = """
1 1 . . . . . . . . .
1 1 . . . . . . . . .
1 1 1 . . . . . . . .
1 1 1 1 1 . . 1 1 . .
1 1 1 1 1 . . 1 1 . .
1 1 1 1 1 1 1 1 1 1 1
1 1 1 1 1 1 1 1 1 1 1
1 1 1 . . . . 1 1 . .
1 1 1 . . . . 1 1 . .
1 1 1 1 1 . . . . 1 1
1 1 1 1 1 . . . . 1 1
"""


def spec_matrix() -> np.ndarray:
    return np.array([[1 if c == "1" else 0 for c in row.split()] for row in SPEC_EXAMPLE.strip().splitlines()])


def packed_info(p: int, r: int, b: int, pad: int = 0) -> TokenInfo:
    ids = np.arange(p + 2 * r) % 7
    sample = layout.pack_sample(ids[:p], ids[:r], b, pad_token_id=0, image_token_id=100, video_token_id=101,
                                spatial_merge_size=2)
    batch = layout.collate_packed([sample], p + 2 * r + pad, r)
    return layout.token_info({k: jnp.asarray(v) for k, v in batch.items()}, b)


def test_mask_matches_the_spec_example_quirk_and_strict():
    info = packed_info(3, 4, 2)
    expected = spec_matrix()
    np.testing.assert_array_equal(mask_to_numpy(info, info)[0], expected)
    strict = expected.copy()
    strict[3:7, 7:] = 0  # clean rows lose their noisy columns
    np.testing.assert_array_equal(mask_to_numpy(info, info, clean_sees_noisy=False)[0], strict)


def test_mask_partial_prompt_chunk_and_padding():
    info = packed_info(5, 4, 4, pad=3)  # prefix 5 = one full chunk of 4 and a partial one
    m = mask_to_numpy(info, info)[0]
    # prefix rows: chunk 0 = tokens 0..3 (bidirectional), chunk 1 = token 4
    assert m[0, :4].all() and not m[0, 4] and m[4, :5].all()
    # noisy block 0 (slots 9..12) sees the whole prefix and itself, not clean block 0
    assert m[9, :5].all() and not m[9, 5:9].any() and m[9, 9:13].all()
    # padding columns are never attended; padding rows attend to nothing
    assert not m[:, 13:].any() and not m[13:].any()


def test_mask_with_images_in_the_prefix():
    img = 100
    prefix = np.array([1, 2, 99] + [img] * 4 + [98, 3])
    sample = layout.pack_sample(prefix, np.array([5, 6, 7]), 4, pad_token_id=0, image_token_id=img,
                                video_token_id=101, spatial_merge_size=2, image_grid_thw=np.array([[1, 4, 4]]))
    # positions: the image advances by max(gh, gw) = 2; the noisy copy reuses the clean positions
    pos = sample["positions"]
    np.testing.assert_array_equal(pos[:, 3:7], [[3, 3, 3, 3], [3, 3, 4, 4], [3, 4, 3, 4]])
    np.testing.assert_array_equal(pos[:, 9:13], pos[:, 13:17])
    assert pos[0, 9] == 7  # after the image: 3 + 2 + (vision_end, text) -> 7
    np.testing.assert_array_equal(sample["labels"][13:], [5, 6, 7, 0])
    np.testing.assert_array_equal(sample["pad_tail"][13:], [False, False, False, True])


@pytest.fixture(scope="module")
def tiny():
    cfg = bj.preset("tiny")
    return bj.Model(bj.init_params(cfg, jax.random.key(1)), cfg)


def separate_forward(model, seq, p, k, b, grid=None, pixels=None):
    """Logits of the last b tokens of `seq` = [prefix | clean blocks < k | noisy block k], with ordinary
    block-causal metadata (prefix chunks i // b, response blocks ceil(P / b) + r // b, all PLAIN)."""
    c = model.config
    n = len(seq)
    blk = np.concatenate([np.arange(p) // b, -(-p // b) + np.arange(n - p) // b])
    info = TokenInfo(block=jnp.asarray(blk[None], jnp.int32), kind=jnp.full((1, n), PLAIN, jnp.int32),
                     valid=jnp.ones((1, n), bool))
    pos, _ = rope_position_ids(seq[None], None, grid, None, image_token_id=c.image_token_id,
                               video_token_id=c.video_token_id, spatial_merge_size=2, xp=np)
    net, prm = network(c), {"params": model.params}
    vision, windows = None, None
    if pixels is not None:
        from bard_jax.model.inputs import vision_inputs, window_index

        vis = vision_inputs(c, pixels, grid)
        vision = net.apply(prm, vis.pixels_pc, vis.meta, method=Qwen3VL.encode_vision)
        windows = window_index(c, jnp.asarray(seq[None]), vis.num_image_windows)
    x, deep = net.apply(prm, jnp.asarray(seq[None], jnp.int32), vision, windows, method=Qwen3VL.embed)
    h, _ = net.apply(prm, x, jnp.asarray(pos), info, deep, method=Qwen3VL.decode)
    return np.asarray(net.apply(prm, h[0, -b:], method=Qwen3VL.logits))


@pytest.mark.parametrize("with_image", [False, pytest.param(True, marks=pytest.mark.slow)])  # suite time
def test_strict_packed_layout_equals_separate_forwards(tiny, with_image):
    c = tiny.config
    rng = np.random.default_rng(0)
    b = 4
    grid = pixels = None
    if with_image:
        prefix = np.array([5, 6, c.vision_start_token_id] + [c.image_token_id] * 4 + [c.vision_end_token_id, 7])
        grid = np.array([[1, 4, 4]])
        pixels = rng.standard_normal((16, c.vision.patch_dim)).astype(np.float32)
    else:
        prefix = rng.integers(0, 900, 7)
    response = rng.integers(0, 900, 10)  # R = 12: three blocks, the last one padded
    r = 12
    noisy = rng.integers(0, 900, r)
    noisy[rng.random(r) < 0.5] = 1023  # a "mask" id
    logits = np.asarray(bj.diffusion.packed_logits(tiny, prefix, response, noisy, b, pad_token_id=3,
                                                   pixel_values=pixels, image_grid_thw=grid,
                                                   clean_sees_noisy=False))
    clean = np.concatenate([response, [3, 3]])
    p = len(prefix)
    for k in range(r // b):
        seq = np.concatenate([prefix, clean[: k * b], noisy[k * b: (k + 1) * b]])
        ref = separate_forward(tiny, seq, p, k, b, grid, pixels)
        np.testing.assert_allclose(logits[k * b: (k + 1) * b], ref, atol=2e-5, err_msg=f"block {k}")
    # With the release's quirk the clean states see noise, so later blocks differ (else the switch is untested).
    quirk = np.asarray(bj.diffusion.packed_logits(tiny, prefix, response, noisy, b, pad_token_id=3,
                                                  pixel_values=pixels, image_grid_thw=grid))
    assert np.abs(quirk[b:] - logits[b:]).max() > 1e-4


def test_packed_logits_refuses_a_batch_naming_the_argument(tiny):
    with pytest.raises(InputError, match=r"packed_logits takes one example: prefix_ids must be a 1-D sequence of "
                                         r"token ids, got shape \(2, 3\)"):
        bj.diffusion.packed_logits(tiny, np.ones((2, 3), int), np.ones((2, 4), int), np.ones((2, 4), int), 4,
                                   pad_token_id=3)


# ------------------------------------------------------------------------------------------------ noise
def noise_batch(n: int, r: int, s: int, seed: int = 0, low: int = 0):
    """Packed samples of 3 prompt and r response tokens (ids in [low, 50)), S response slots."""
    rng = np.random.default_rng(seed)
    samples = [layout.pack_sample(rng.integers(0, 50, 3), rng.integers(low, 50, r), 4, pad_token_id=0,
                                  image_token_id=900, video_token_id=901, spatial_merge_size=2) for _ in range(n)]
    batch = layout.collate_packed(samples, 3 + 2 * s, s)
    batch["example_index"] = np.arange(n, dtype=np.int64) + 1000
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_mask_rate_per_block_matches_its_t_and_one_t_per_stratum():
    batch = noise_batch(400, 32, 32)
    out = noise.corrupt_batch(batch, jax.random.key(0), 4, noise.NoiseConfig(mask_token_id=999))
    t = np.asarray(out["t"])[:, ::4]  # one t per block of 4
    n = 8
    strata = np.sort(np.floor(t * n), axis=1)
    np.testing.assert_array_equal(strata, np.tile(np.arange(n), (400, 1)))  # every stratum once per sample
    masked = np.asarray(out["is_mask"]).reshape(400, n, 4).mean(-1)
    # per-block empirical rate against its t, pooled by t bins
    bins = np.digitize(t.ravel(), np.linspace(0, 1, 11))
    for bn in np.unique(bins):
        sel = bins == bn
        assert abs(masked.ravel()[sel].mean() - t.ravel()[sel].mean()) < 0.05
    ids = np.asarray(out["input_ids"])
    assert (np.take_along_axis(ids, np.asarray(batch["noisy_index"]), 1) == np.asarray(out["noisy_tokens"])).all()


def test_mix_proportions_at_fixed_t():
    cfg = noise.NoiseConfig(prior="mix", mask_token_id=999, replace_bound=500)
    s = 20000
    clean = jnp.full((s,), 7, jnp.int32)
    # a single block of the whole response: t = clamp(u) with one stratum; force t by asking for many samples
    # of the token rule at a fixed t through the categorical directly:
    t = 0.5
    phi = np.pi / 2 * t
    w = np.clip([1 - np.cos(phi), np.sin(phi) + np.cos(phi) - 1, 1 - np.sin(phi)], 0.001, 1)
    w = w / w.sum()
    np.testing.assert_allclose(w, [0.293, 0.414, 0.293], atol=1e-3)
    noisy, tt, _ = noise.corrupt_sample(jax.random.key(3), clean, jnp.ones(s, bool), jnp.int32(s), s, cfg)
    t0 = float(tt[0])
    phi = np.pi / 2 * t0
    w = np.clip([1 - np.cos(phi), np.sin(phi) + np.cos(phi) - 1, 1 - np.sin(phi)], 0.001, 1)
    w = w / w.sum()
    noisy = np.asarray(noisy)
    got_mask = (noisy == 999).mean()
    got_keep = (noisy == 7).mean()  # a uniform draw of 7 is rare (1/500) and counted as keep
    assert abs(got_mask - w[0]) < 0.015 and abs(got_keep - (w[2] + w[1] / 500)) < 0.015
    assert noisy.max() < 999 or (noisy[noisy != 999] < 500).all()


@pytest.mark.parametrize("prior", ["uniform", "mix", "edit"])
def test_replacements_stay_below_the_bound(prior):
    batch = noise_batch(64, 30, 32)
    cfg = noise.NoiseConfig(prior=prior, mask_token_id=999, pad_token_id=0, replace_bound=40)
    out = noise.corrupt_batch(batch, jax.random.key(1), 4, cfg)
    tok = np.asarray(out["noisy_tokens"])[np.asarray(batch["noisy_valid"])]
    assert ((tok < 50) | (tok == 999)).all()  # clean ids are < 50, replacements < 40, nothing else
    changed = tok != np.asarray(out["clean_tokens"])[np.asarray(batch["noisy_valid"])]
    assert changed.any()


def test_replacement_ids_are_uniform_over_the_allowed_ids_and_the_reference_draw_without_exclusions():
    key = jax.random.key(3)
    cfg = noise.NoiseConfig(prior="uniform", mask_token_id=7, replace_bound=12, excluded_ids=(0, 5, 6, 7, 11, 500))
    ids = np.asarray(noise.replacement_ids(key, (60000,), cfg))
    allowed = [1, 2, 3, 4, 8, 9, 10]  # [0, 12) without 0, 5, 6, 7, 11 (500 lies above the bound)
    counts = np.bincount(ids, minlength=12)
    assert sorted(set(ids.tolist())) == allowed
    assert np.abs(counts[allowed] / len(ids) - 1 / 7).max() < 0.01  # 7 ids, 1/7 each (sd about 0.0014)
    # Nothing banned below the bound (a Qwen vocabulary: the vision and mask ids lie above 151646): exactly the
    # reference's randint draw.
    qwen = noise.NoiseConfig(excluded_ids=(151671, 151652, 151653, 151655, 151656))
    np.testing.assert_array_equal(np.asarray(noise.replacement_ids(key, (1000,), qwen)),
                                  np.asarray(jax.random.randint(key, (1000,), 0, 151646)))
    with pytest.raises(InputError, match="leave no id"):
        noise.NoiseConfig(replace_bound=3, excluded_ids=(0, 1, 2))


@pytest.mark.parametrize("prior", ["uniform", "mix", "edit"])
def test_no_prior_draws_an_excluded_id(prior):
    batch = noise_batch(64, 30, 32, low=40)  # clean responses in [40, 50): any id below 40 is a replacement
    cfg = noise.NoiseConfig(prior=prior, mask_token_id=999, pad_token_id=0, replace_bound=40,
                            excluded_ids=tuple(range(0, 40, 2)))  # only odd replacements allowed
    out = noise.corrupt_batch(batch, jax.random.key(1), 4, cfg)
    tok = np.asarray(out["noisy_tokens"])[np.asarray(batch["noisy_valid"])]
    replaced = tok[(tok < 40) & (tok != 0)]  # 0: the edit prior's padding after deletions
    assert len(replaced) > 20 and (replaced % 2 == 1).all()


def test_mask_rate_strategy_guarantees_one_mask():
    batch = noise_batch(200, 3, 4)
    cfg = noise.NoiseConfig(prior="mask_rate", mask_token_id=999, rate_min=0.01, rate_max=0.02)
    out = noise.corrupt_batch(batch, jax.random.key(2), 4, cfg)
    assert (np.asarray(out["is_mask"]).sum(1) >= 1).all()


def test_corruption_is_identical_on_one_and_eight_devices():
    batch = noise_batch(16, 20, 24)
    cfg = noise.NoiseConfig(mask_token_id=999)
    f = jax.jit(lambda b: noise.corrupt_batch(b, jax.random.key(5), 4, cfg)["input_ids"])
    one = np.asarray(f(batch))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = {
        k: jax.device_put(v, NamedSharding(mesh, PartitionSpec(None, "data") if k == "positions" else
                                           PartitionSpec("data")))
        for k, v in batch.items()
    }
    eight = np.asarray(f(sharded))
    np.testing.assert_array_equal(one, eight)
    # and it depends only on the example index: a permuted batch permutes the result
    perm = np.random.default_rng(0).permutation(16)
    permuted = np.asarray(f({k: (v[:, perm] if k == "positions" else v[perm]) for k, v in batch.items()}))
    np.testing.assert_array_equal(permuted, one[perm])


# ------------------------------------------------------------------------------------------------ losses
def test_weighted_ce_normalisation_by_hand():
    ce = jnp.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]])
    sup = jnp.array([[True, False, True, True], [False, False, False, False]])
    t = jnp.array([[0.5, 0.5, 0.25, 1.0], [0.5, 0.5, 0.5, 0.5]])  # the last slot of row 0: pad tail, t doubled
    r = jnp.array([4, 4])
    got = float(weighted_ce(ce, sup, t, r, global_num_samples=8))
    by_hand = ((1.0 / 0.5 + 3.0 / 0.25 + 4.0 / 1.0) / 4 + 0.0) / 8
    assert got == pytest.approx(by_hand, rel=1e-6)


def test_topk_kd_by_hand():
    z = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))  # student: full-vocabulary softmax = these probs
    zt = jnp.array([[0.0, 1.0, 2.0, -5.0]])  # teacher top-2: ids 2, 1 with logits 2, 1
    got = float(topk_kd(z, zt, 2, 1.0)[0])
    q = np.exp([2.0, 1.0]) / np.exp([2.0, 1.0]).sum()
    by_hand = -(q[0] * np.log(0.3) + q[1] * np.log(0.2))
    assert got == pytest.approx(by_hand, rel=1e-5)


def packed_batch(model, n=2, seed=0):
    rng = np.random.default_rng(seed)
    samples = [layout.pack_sample(rng.integers(0, 900, 5), rng.integers(0, 900, 7), 4, pad_token_id=3,
                                  image_token_id=1000, video_token_id=1001, spatial_merge_size=2) for _ in range(n)]
    batch = layout.collate_packed(samples, 24, 8)
    batch["example_index"] = np.arange(n, dtype=np.int64)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_swd_zero_mask_sample_counts_and_teacher_mask_differs(tiny):
    batch = packed_batch(tiny)
    obj = ObjectiveConfig(kind="swd", block_size=8, teacher_block_size=4,
                          noise=noise.NoiseConfig(mask_token_id=1023, prior="mask_rate", rate_min=1e-6,
                                                  rate_max=2e-6, at_least_one_mask=False))
    loss, metrics = loss_fn(tiny.params, batch, jax.random.key(0), tiny.params, model_config=tiny.config, obj=obj,
                            global_num_samples=2)
    assert float(metrics["masked_tokens"]) == 0 and float(loss) == 0.0
    # With masks, and the student = teacher weights but different block sizes, KD is not the entropy floor only.
    obj = dataclasses.replace(obj, noise=noise.NoiseConfig(mask_token_id=1023))
    loss, metrics = loss_fn(tiny.params, batch, jax.random.key(0), tiny.params, model_config=tiny.config, obj=obj,
                            global_num_samples=2)
    assert float(metrics["masked_tokens"]) > 0 and np.isfinite(float(loss))


def test_ar_loss_is_the_same_without_the_noisy_copy(tiny):
    rng = np.random.default_rng(1)
    samples = [layout.pack_sample(rng.integers(0, 900, 5 + i), rng.integers(0, 900, 7 - 2 * i), 1, pad_token_id=3,
                                  image_token_id=1000, video_token_id=1001, spatial_merge_size=2) for i in range(2)]
    obj = ObjectiveConfig(kind="ar", block_size=1, noise=noise.NoiseConfig(mask_token_id=1023))

    def loss(batch):
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        return loss_fn(tiny.params, batch, jax.random.key(0), model_config=tiny.config, obj=obj,
                       global_num_samples=2)

    full, full_metrics = loss(layout.collate_packed(samples, 24, 8))
    short = [layout.drop_noisy_copy(s) for s in samples]
    assert [len(s["input_ids"]) for s in short] == [12, 11] and all((s["kind"] != NOISY).all() for s in short)
    lean, lean_metrics = loss(layout.collate_packed(short, 16, 8))
    assert float(full_metrics["response_tokens"]) == float(lean_metrics["response_tokens"]) == 12
    np.testing.assert_allclose(float(lean), float(full), rtol=1e-6)
    # The loss reads the response: changing one response token changes it.
    short[0]["input_ids"][-1] += 1
    assert abs(float(loss(layout.collate_packed(short, 16, 8))[0]) - float(lean)) > 1e-4


def test_teacher_block_size_must_divide_student():
    with pytest.raises(ValueError, match="must divide"):
        ObjectiveConfig(kind="swd", block_size=8, teacher_block_size=3)


SLOW = pytest.mark.slow  # suite time: the pbm and swd gradients are compared with finite differences in -m slow


@pytest.mark.parametrize("kind", [pytest.param("pbm", marks=SLOW), pytest.param("swd", marks=SLOW), "ar"])
def test_gradients_are_finite_and_match_finite_differences(tiny, kind):
    batch = packed_batch(tiny)
    obj = ObjectiveConfig(kind=kind, block_size=4, noise=noise.NoiseConfig(mask_token_id=1023))
    teacher = jax.tree_util.tree_map(lambda x: x * 1.01, tiny.params)

    def f(params):
        return loss_fn(params, batch, jax.random.key(0), teacher, model_config=tiny.config, obj=obj,
                       global_num_samples=2)[0]

    grads = jax.grad(f)(tiny.params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    direction = jax.tree_util.tree_map(lambda g: g / (optax_norm(grads) + 1e-12), grads)
    eps = 2e-3
    plus = f(jax.tree_util.tree_map(lambda p, d: p + eps * d, tiny.params, direction))
    minus = f(jax.tree_util.tree_map(lambda p, d: p - eps * d, tiny.params, direction))
    fd = (float(plus) - float(minus)) / (2 * eps)
    analytic = float(optax_norm(grads))  # directional derivative along the normalised gradient
    assert fd == pytest.approx(analytic, rel=2e-2), (fd, analytic)


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def test_kinds_and_pack_bad_input():
    with pytest.raises(layout.LayoutError, match="empty response"):
        layout.pack_sample(np.array([1]), np.array([], np.int32), 4, pad_token_id=0, image_token_id=9,
                           video_token_id=8, spatial_merge_size=2)
    s = layout.pack_sample(np.array([1, 2]), np.array([3]), 4, pad_token_id=0, image_token_id=9,
                           video_token_id=8, spatial_merge_size=2)
    with pytest.raises(layout.LayoutError, match="does not fit"):
        layout.collate_packed([s], 5, 4)
    assert list(s["kind"]) == [PLAIN] * 2 + [CLEAN] * 4 + [NOISY] * 4


def test_no_supervised_position_and_zero_t_are_defined():
    ce = jnp.ones((2, 3))
    none = jnp.zeros((2, 3), bool)
    assert float(weighted_ce(ce, none, jnp.full((2, 3), 0.5), jnp.array([4, 4]), 2)) == 0.0
    # t = 0 at a supervised slot cannot come from the corruption; it is clamped, giving a huge finite loss that
    # the train step's non-finite guard does not confuse with a NaN, and that the run reports.
    zero_t = weighted_ce(ce, jnp.ones((2, 3), bool), jnp.zeros((2, 3)), jnp.array([4, 4]), 2)
    assert np.isfinite(float(zero_t)) and float(zero_t) > 1e10
    with pytest.raises(layout.LayoutError, match="block size must be >= 1"):
        layout.pad_response(np.array([1, 2]), 0, 0)
