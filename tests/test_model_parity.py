"""Parity of `bj.forward` with transformers' Qwen3VLForConditionalGeneration on tiny random checkpoints.

Each checkpoint is written by transformers (`save_pretrained`) into a temp dir and loaded through our real loader.
float32 logits must agree to 1e-4 absolute (the logits of these models are O(1), so this is also ~1e-4 relative);
bf16 runs are compared against the same float32 reference with a tolerance stated at the test.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

pytest.importorskip("torch", reason="compares against transformers' torch models (the test extras)")
import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

import bard_jax as bj
from bard_jax.model.attention import TokenInfo, mask_to_numpy

IMG, VID, VSTART, VEND = 500, 501, 502, 503
FP32_TOL = 1e-4


def tiny_hf_config(tied: bool, deepstack=(0, 1)) -> Qwen3VLConfig:
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [6, 5, 5],
                             "mrope_interleaved": True},
        ),
        vision_config=dict(
            depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            num_position_embeddings=64, deepstack_visual_indexes=list(deepstack),
        ),
        image_token_id=IMG, video_token_id=VID, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        tie_word_embeddings=tied,
    )


def make_checkpoint(path, tied: bool, dtype=torch.float32) -> Qwen3VLForConditionalGeneration:
    """A random HF model with non-trivial norm weights, saved to `path`; returns the float32 reference model."""
    torch.manual_seed(0)
    hf = Qwen3VLForConditionalGeneration(tiny_hf_config(tied)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:  # HF initialises norms to 1/0; perturb them so they are tested
                p.add_(0.1 * torch.randn_like(p))
    hf.to(dtype).save_pretrained(path)
    return hf.float()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def models(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    hf = make_checkpoint(path, tied=request.param)
    return hf, bj.load_pretrained(path, dtype="float32"), path


rng = np.random.default_rng(0)


def build_sequence(parts):
    """Token ids and HF mm_token_type_ids for parts: ('t', n) text, ('i', n) image pads, ('v', n) video pads."""
    ids, types = [], []
    for kind, n in parts:
        if kind == "t":
            ids += list(rng.integers(0, 400, n))
            types += [0] * n
        else:
            pad, typ = (IMG, 1) if kind == "i" else (VID, 2)
            ids += [VSTART] + [pad] * n + [VEND]
            types += [0] + [typ] * n + [0]
    return ids, types


def batch(rows, left_pad=(True,)):
    """Pad rows to one length (left or right per row). Returns ids, mm types, mask [B, T]."""
    length = max(len(r[0]) for r in rows) + 2
    ids = np.full((len(rows), length), 7)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for i, (r, t) in enumerate(rows):
        sl = slice(length - len(r), length) if left_pad[i % len(left_pad)] else slice(0, len(r))
        ids[i, sl], types[i, sl], mask[i, sl] = r, t, 1
    return ids, types, mask


def pixels(grid):
    return rng.standard_normal((int(np.prod(grid, axis=1).sum()), 1536)).astype(np.float32)


def hf_logits(hf, ids, types=None, mask=None, **vision):
    kw = {k: torch.tensor(v) for k, v in vision.items() if v is not None}
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(ids),
            attention_mask=None if mask is None else torch.tensor(mask),
            mm_token_type_ids=None if types is None else torch.tensor(types),
            **kw,
        )
    return out.logits.numpy()


def assert_close(ours, ref, mask=None, tol=FP32_TOL):
    ours = np.asarray(ours, np.float32)
    if mask is not None:
        ours, ref = ours[mask.astype(bool)], ref[mask.astype(bool)]
    err = np.abs(ours - ref).max()
    assert err <= tol, f"max |diff| {err:.3g} > {tol} (logit scale {np.abs(ref).max():.3g})"


def test_text_only(models):
    hf, model, _ = models
    ids = rng.integers(0, 512, (2, 13))
    assert_close(bj.forward(model, ids), hf_logits(hf, ids))


def test_one_image(models):
    hf, model, _ = models
    grid = np.array([[1, 4, 6]])
    ids, types = build_sequence([("t", 3), ("i", 6), ("t", 4)])
    pv = pixels(grid)
    ref = hf_logits(hf, [ids], [types], pixel_values=pv, image_grid_thw=grid)
    assert_close(bj.forward(model, [ids], pixel_values=pv, image_grid_thw=grid), ref)


def test_two_images_of_different_sizes(models):
    hf, model, _ = models
    grid = np.array([[1, 4, 6], [1, 8, 4]])
    ids, types = build_sequence([("t", 2), ("i", 6), ("t", 3), ("i", 8), ("t", 2)])
    pv = pixels(grid)
    ref = hf_logits(hf, [ids], [types], pixel_values=pv, image_grid_thw=grid)
    assert_close(bj.forward(model, [ids], pixel_values=pv, image_grid_thw=grid), ref)


def test_video_with_several_temporal_slices(models):
    hf, model, _ = models
    grid = np.array([[3, 4, 4]])  # 3 temporal slices of 2x2 merged windows, one segment each
    ids, types = build_sequence([("t", 2), ("v", 4), ("t", 1), ("v", 4), ("t", 1), ("v", 4), ("t", 2)])
    pv = pixels(grid)
    ref = hf_logits(hf, [ids], [types], pixel_values_videos=pv, video_grid_thw=grid)
    assert_close(bj.forward(model, [ids], pixel_values_videos=pv, video_grid_thw=grid), ref)


def test_padded_batch_with_images_and_video(models):
    hf, model, _ = models
    row_a = build_sequence([("t", 3), ("i", 6), ("t", 2), ("v", 4), ("t", 1), ("v", 4), ("t", 2)])
    row_b = build_sequence([("t", 2), ("i", 4), ("t", 5)])
    ids, types, mask = batch([row_a, row_b], left_pad=(True, False))
    igrid, vgrid = np.array([[1, 4, 6], [1, 4, 4]]), np.array([[2, 4, 4]])
    pv, pvv = pixels(igrid), pixels(vgrid)
    ref = hf_logits(hf, ids, types, mask, pixel_values=pv, image_grid_thw=igrid, pixel_values_videos=pvv,
                    video_grid_thw=vgrid)
    ours = bj.forward(model, ids, attention_mask=mask, pixel_values=pv, image_grid_thw=igrid,
                      pixel_values_videos=pvv, video_grid_thw=vgrid)
    assert_close(ours, ref, mask)


def test_padded_text_batch(models):
    hf, model, _ = models
    rows = [build_sequence([("t", 9)]), build_sequence([("t", 4)])]
    for left in (True, False):
        ids, types, mask = batch(rows, left_pad=(left,))
        assert_close(bj.forward(model, ids, attention_mask=mask), hf_logits(hf, ids, types, mask), mask)


@pytest.mark.parametrize("block_size", [2, 4])
def test_block_causal_forward_matches_explicit_4d_mask(models, block_size):
    """block_size=b against transformers given the equivalent 4-D boolean mask and HF's own positions."""
    hf, model, _ = models
    row_a = build_sequence([("t", 3), ("i", 6), ("t", 4)])
    row_b = build_sequence([("t", 6)])
    ids, types, mask = batch([row_a, row_b], left_pad=(True,))
    grid = np.array([[1, 4, 6]])
    pv = pixels(grid)
    info = TokenInfo.block_causal(jax.numpy.asarray(mask), block_size)
    mask4d = mask_to_numpy(info, info).astype(bool)[:, None]
    positions, _ = hf.model.get_rope_index(torch.tensor(ids), torch.tensor(types), torch.tensor(grid), None,
                                           torch.tensor(mask))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask4d), position_ids=positions,
                 pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(grid)).logits.numpy()
    ours = bj.forward(model, ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid, block_size=block_size)
    assert_close(ours, ref, mask)
    # The block mask must actually change the result (else this test could not fail).
    causal = bj.forward(model, ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid)
    assert np.abs(np.asarray(causal) - np.asarray(ours))[mask.astype(bool)].max() > 1e-3


def test_bf16_checkpoint(tmp_path):
    """bf16 weights, bf16 compute: within 0.1 of the float32 HF reference on O(1) logits.

    bf16 has 8 mantissa bits (relative step 2^-8 ~ 0.4%); three layers of bf16 matmuls accumulate a few such steps.
    """
    make_checkpoint(tmp_path, tied=True, dtype=torch.bfloat16)
    hf_bf16 = Qwen3VLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    model = bj.load_pretrained(tmp_path, dtype="bfloat16")
    assert model.dtype == jax.numpy.bfloat16
    grid = np.array([[1, 4, 4]])
    ids, types = build_sequence([("t", 3), ("i", 4), ("t", 5)])
    pv = pixels(grid)
    ours = np.asarray(bj.forward(model, [ids], pixel_values=pv, image_grid_thw=grid), np.float32)
    ref32 = hf_logits(hf_bf16.float(), [ids], [types], pixel_values=pv, image_grid_thw=grid)
    assert_close(ours, ref32, tol=0.1)


def test_forward_compiles_once_per_bucket(models):
    _, model, _ = models
    jitted = jax.jit(bj.forward, static_argnames=("block_size",))
    sizes = []
    for seed in range(3):
        grid = np.array([[1, 4, 4]] if seed % 2 == 0 else [[1, 2, 8]])  # same patch count, other grid values
        r = np.random.default_rng(seed)
        ids = np.concatenate([r.integers(0, 400, (1, 3)), np.full((1, 6), IMG), r.integers(0, 400, (1, 4))], 1)
        ids[0, 3], ids[0, 8] = VSTART, VEND
        ids[0, 4:8] = IMG
        mask = np.ones_like(ids)
        mask[0, : seed] = 0  # different padding, same bucket
        pv = r.standard_normal((16, 1536)).astype(np.float32)
        jitted(model, ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid, block_size=4)
        sizes.append(jitted._cache_size())
    # jit caches are shared by every jax.jit of the same function: count what these calls added.
    assert sizes[1:] == [sizes[0]] * 2, f"recompiled within a bucket: cache sizes {sizes}"


@pytest.fixture
def flash_forced(monkeypatch):
    """Every attention of the models through the flash implementation with small tiles (several per sequence)."""
    monkeypatch.setenv("BARD_JAX_ATTENTION", "flash")
    monkeypatch.setenv("BARD_JAX_ATTENTION_TILE", "8")
    jax.clear_caches()  # the setting is read at trace time
    yield
    monkeypatch.undo()
    jax.clear_caches()


def test_flash_forced_padded_batch_with_images(models, flash_forced):
    """The text model and the vision tower through flash match transformers (the whole suite can be run this way:
    BARD_JAX_ATTENTION=flash BARD_JAX_ATTENTION_TILE=8 pytest tests/test_model_parity.py)."""
    hf, model, _ = models
    row_a = build_sequence([("t", 3), ("i", 6), ("t", 2), ("i", 4), ("t", 9)])
    row_b = build_sequence([("t", 2), ("i", 4), ("t", 11)])
    ids, types, mask = batch([row_a, row_b], left_pad=(True, False))
    grid = np.array([[1, 4, 6], [1, 4, 4], [1, 4, 4]])
    pv = pixels(grid)
    ref = hf_logits(hf, ids, types, mask, pixel_values=pv, image_grid_thw=grid)
    ours = bj.forward(model, ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid)
    assert_close(ours, ref, mask)
