"""Remat policies and the attention implementation change no gradient: the PBM loss's gradients at float32 agree
between no remat and each policy, with flash under the scanned, rematerialised layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bard_jax as bj
from bard_jax.config import TextConfig, VisionConfig
from bard_jax.diffusion import layout, noise
from bard_jax.diffusion.losses import ObjectiveConfig, loss_fn
from bard_jax.model.attention import AttentionConfig

VOCAB = 96


@pytest.fixture(scope="module")
def setup():
    cfg = bj.ModelConfig(
        text=TextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8),
        vision=VisionConfig(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                            deepstack_visual_indexes=()),
        tie_word_embeddings=True, image_token_id=VOCAB - 3, video_token_id=VOCAB - 2,
    )
    params = bj.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    samples = [layout.pack_sample(rng.integers(0, 80, p), rng.integers(0, 80, r), 4, pad_token_id=0,
                                  image_token_id=VOCAB - 3, video_token_id=VOCAB - 2, spatial_merge_size=2)
               for p, r in ((7, 13), (12, 6))]
    batch = layout.collate_packed(samples, 40, 16)
    batch["example_index"] = np.arange(2, dtype=np.int32)
    return cfg, params, {k: jnp.asarray(v) for k, v in batch.items()}


def grads(setup, remat: str, attention: AttentionConfig):
    cfg, params, batch = setup
    obj = ObjectiveConfig(kind="pbm", block_size=4, noise=noise.NoiseConfig(mask_token_id=VOCAB - 1),
                          remat_policy=remat, attention=attention)

    def loss(p):
        return loss_fn(p, batch, jax.random.key(1), model_config=cfg, obj=obj, global_num_samples=2)[0]

    with jax.default_matmul_precision("highest"):
        return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("remat", ["projections", pytest.param("full", marks=pytest.mark.slow),
                                   pytest.param("dots", marks=pytest.mark.slow)])
def test_remat_and_flash_keep_the_gradients(setup, remat):
    want_loss, want = grads(setup, "none", AttentionConfig("dense"))
    got_loss, got = grads(setup, remat, AttentionConfig("flash", 8, 8))
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-6)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
        scale = max(float(jnp.max(jnp.abs(w))), 1e-30)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))
