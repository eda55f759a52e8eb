"""Model input plumbing: per-example vision layout and MRoPE positions against transformers' get_rope_index."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch", reason="compares against transformers' torch models (the test extras)")
import torch
from transformers import Qwen3VLForConditionalGeneration

import bard_jax as bj
from bard_jax.model.attention import TokenInfo
from bard_jax.model.example_vision import per_example_vision
from bard_jax.model.hidden import encode_vision, hidden_states
from bard_jax.model.inputs import text_positions
from bard_jax.model.positions import rope_position_ids
from bard_jax.model.vlm import Qwen3VL
from bard_jax.modeling import network


@pytest.fixture(scope="module")
def tiny():
    cfg = bj.preset("tiny")
    return bj.Model(bj.init_params(cfg, jax.random.key(0)), cfg)


def two_examples(cfg):
    """ids [2, 13], grids [2, 2, 3], per-example pixels [2, 32, C] and each example's own rows: row 0 holds two
    images (6 + 1 windows), row 1 one (4 windows) and a padding grid row."""
    img = cfg.image_token_id
    ids = np.array([[5, 6] + [img] * 6 + [7, 8, img, 9, 9], [5] + [img] * 4 + [7] * 8])
    grids = np.array([[[1, 4, 6], [1, 2, 2]], [[1, 4, 4], [0, 0, 0]]])
    rng = np.random.default_rng(0)
    pv0 = rng.standard_normal((28, cfg.vision.patch_dim)).astype(np.float32)
    pv1 = rng.standard_normal((16, cfg.vision.patch_dim)).astype(np.float32)
    pixels = np.zeros((2, 32, cfg.vision.patch_dim), np.float32)
    pixels[0, :28], pixels[1, :16] = pv0, pv1
    return ids, grids, pixels, (pv0, pv1)


@pytest.mark.slow  # suite time; the batch-local merge test below covers the layout in the default run
def test_per_example_vision_layout_equals_separate_forwards(tiny):
    cfg, params = tiny.config, tiny.params
    ids, grids, pixels, (pv0, pv1) = two_examples(cfg)
    refs = [
        bj.forward(tiny, ids[:1], pixel_values=pv0, image_grid_thw=grids[0]),
        bj.forward(tiny, ids[1:], pixel_values=pv1, image_grid_thw=grids[1][:1]),
    ]
    net = network(cfg)
    vision = per_example_vision(cfg, pixels, grids, ids)
    pos = jnp.concatenate([text_positions(cfg, ids[i : i + 1], np.ones((1, 13), bool), grids[i])[0] for i in (0, 1)], 1)
    h, _ = hidden_states(net, params, jnp.asarray(ids), pos, TokenInfo.causal(jnp.ones((2, 13), bool)), vision=vision)
    logits = net.apply({"params": params}, h, method=Qwen3VL.logits)
    for i in (0, 1):
        np.testing.assert_allclose(np.asarray(logits[i]), np.asarray(refs[i][0]), atol=1e-5)


@pytest.mark.slow  # suite time; per-example vision is compared with the Python reference in the sampler tests
def test_batch_local_merge_equals_the_global_merge(tiny):
    """Each row taking its own example's windows ([B, M, D], a per-row index) gives exactly what the flattened
    layout gave ([B * M, D], each pad's rank plus its example's offset), on examples with different image counts."""
    cfg, p = tiny.config, {"params": tiny.params}
    ids, grids, pixels, _ = two_examples(cfg)
    net = network(cfg)
    vision = per_example_vision(cfg, pixels, grids, ids)
    merged_bmd, deep_bjmd = encode_vision(net, p, vision.pixels, vision.meta)
    x, deep = net.apply(p, jnp.asarray(ids), (merged_bmd, deep_bjmd), vision.windows, method=Qwen3VL.embed)
    b, m, d = merged_bmd.shape
    flat = (merged_bmd.reshape(b * m, d), jnp.moveaxis(deep_bjmd, 0, 1).reshape(-1, b * m, d))
    is_img = ids == cfg.image_token_id
    global_windows = np.where(is_img, np.cumsum(is_img, axis=1) - 1 + m * np.arange(b)[:, None], 0)
    x_ref, deep_ref = net.apply(p, jnp.asarray(ids), flat, jnp.asarray(global_windows), method=Qwen3VL.embed)
    assert deep.shape[0] == len(cfg.vision.deepstack_visual_indexes) and np.abs(np.asarray(deep)).max() > 0
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x_ref))
    np.testing.assert_array_equal(np.asarray(deep), np.asarray(deep_ref))


def test_batch_local_merge_needs_no_collective_when_the_batch_is_sharded(tiny):
    """With the example axis split over two devices the merge compiles to device-local gathers only."""
    cfg, p = tiny.config, {"params": tiny.params}
    ids, grids, pixels, _ = two_examples(cfg)
    net = network(cfg)
    vision = per_example_vision(cfg, pixels, grids, ids)
    encoded = encode_vision(net, p, vision.pixels, vision.meta)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("batch",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    merge = jax.jit(lambda params, ids, enc, win: net.apply({"params": params}, ids, enc, win, method=Qwen3VL.embed),
                    in_shardings=(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), rows, rows, rows))
    hlo = merge.lower(tiny.params, jnp.asarray(ids), encoded, vision.windows).compile().as_text()
    for collective in ("all-gather", "all-to-all", "all-reduce", "collective-permute"):
        assert collective not in hlo, collective


def test_positions_match_hf_get_rope_index_numpy_and_jax(tmp_path):
    from test_model_parity import tiny_hf_config

    hf = Qwen3VLForConditionalGeneration(tiny_hf_config(True))
    img, vid, vs, ve = 500, 501, 502, 503
    a = [1, 2, vs] + [img] * 6 + [ve, 3, vs] + [vid] * 4 + [ve, 4, vs] + [vid] * 4 + [ve, 5]
    b = [1, vs] + [img] * 4 + [ve, 2, 3, vs] + [img] * 6 + [ve]
    length = max(len(a), len(b)) + 3
    ids = np.full((2, length), 7)
    mask = np.zeros_like(ids)
    ids[0, length - len(a):], mask[0, length - len(a):] = a, 1  # left padding
    ids[1, : len(b)], mask[1, : len(b)] = b, 1  # right padding
    types = np.where(ids == img, 1, np.where(ids == vid, 2, 0)) * mask
    igrid, vgrid = np.array([[1, 4, 6], [1, 4, 4], [1, 6, 4]]), np.array([[2, 4, 4]])
    ref, delta = hf.model.get_rope_index(torch.tensor(ids), torch.tensor(types), torch.tensor(igrid),
                                         torch.tensor(vgrid), torch.tensor(mask))
    for xp in (np, jnp):
        pos, nxt = rope_position_ids(ids, mask, igrid, vgrid, image_token_id=img, video_token_id=vid,
                                     spatial_merge_size=2, xp=xp)
        real = mask.astype(bool)
        np.testing.assert_array_equal(np.asarray(pos)[:, real], ref.numpy()[:, real])
        np.testing.assert_array_equal(np.asarray(nxt), delta.numpy()[:, 0] + mask.sum(1))
