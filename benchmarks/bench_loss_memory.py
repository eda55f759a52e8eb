"""PBM loss + grad memory and time: the gathered, chunked LM head versus full [L, V] logits.

A 1-layer model with a 151936-entry vocabulary (text width --width), one packed sample of length L = 4096
(prefix 1024, response 1536, noisy copy 1536). "gathered" is the project's loss (hidden states gathered at the
noisy copy, head in chunks under remat); "full" computes logits for all L positions and then selects the noisy
copy — what the release did in stage 1. Memory is XLA's compiled temp + argument size (memory_analysis);
time is the median of a few steps on this machine's CPU.

  python benchmarks/bench_loss_memory.py [--width 1024] [--length 4096]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import bard_jax as bj
from bard_jax.config import TextConfig, VisionConfig
from bard_jax.diffusion import layout, noise
from bard_jax.diffusion.losses import ObjectiveConfig, _hidden, loss_fn, weighted_ce
from bard_jax.model.vlm import Qwen3VL


def full_logits_loss(params, batch, seed_key, *, model_config, obj, global_num_samples):
    """The same PBM loss computed the wasteful way: [B, L, V] logits, then select."""
    batch = noise.corrupt_batch(batch, seed_key, obj.block_size, obj.noise)
    net, p, h = _hidden(model_config, obj, params, batch, layout.token_info(batch, obj.block_size))
    logits = net.apply(p, h, method=Qwen3VL.logits).astype(jnp.float32)  # [B, L, V]
    logp = jax.nn.log_softmax(logits, axis=-1)
    idx = batch["noisy_index"]
    ce = -jnp.take_along_axis(jnp.take_along_axis(logp, idx[..., None], axis=1),
                              batch["clean_tokens"][..., None], axis=-1)[..., 0]
    return weighted_ce(ce, batch["supervised"], batch["t"], batch["response_len"], global_num_samples), {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    width, length = args.width, args.length
    heads = width // 128
    cfg = bj.ModelConfig(
        text=TextConfig(vocab_size=151936, hidden_size=width, intermediate_size=3 * width, num_hidden_layers=1,
                        num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1), head_dim=128),
        vision=VisionConfig(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=width,
                            deepstack_visual_indexes=()),
        tie_word_embeddings=True,
    )
    params = bj.init_params(cfg, jax.random.key(0))
    prefix_len = length // 4
    resp = (length - prefix_len) // 2
    rng = np.random.default_rng(0)
    sample = layout.pack_sample(rng.integers(0, 150000, prefix_len), rng.integers(0, 150000, resp), 32,
                                pad_token_id=151645, image_token_id=cfg.image_token_id,
                                video_token_id=cfg.video_token_id, spatial_merge_size=2)
    batch = layout.collate_packed([sample], length, resp)
    batch["example_index"] = np.zeros((1,), np.int64)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    obj = ObjectiveConfig(kind="pbm", block_size=32, noise=noise.NoiseConfig(mask_token_id=151671))
    rows = []
    for name, fn in (("gathered", loss_fn), ("full", full_logits_loss)):
        f = jax.jit(jax.value_and_grad(lambda p, b, fn=fn: fn(p, b, jax.random.key(0), model_config=cfg, obj=obj,
                                                             global_num_samples=1)[0]))
        compiled = f.lower(params, batch).compile()
        mem = compiled.memory_analysis()
        temp = mem.temp_size_in_bytes
        total = temp + mem.argument_size_in_bytes + mem.output_size_in_bytes
        loss, _ = compiled(params, batch)
        times = []
        for _ in range(args.steps):
            t0 = time.time()
            jax.block_until_ready(compiled(params, batch))
            times.append(time.time() - t0)
        rows.append((name, float(loss), temp, total, float(np.median(times))))
    print(f"L={length} vocab=151936 width={width} layers=1 (response {resp}, block 32)")
    print(f"{'head':10s} {'loss':>9s} {'temp GiB':>9s} {'temp+args+out GiB':>18s} {'step s':>8s}")
    for name, loss, temp, total, t in rows:
        print(f"{name:10s} {loss:9.4f} {temp / 2**30:9.2f} {total / 2**30:18.2f} {t:8.2f}")
    g, f = rows
    print(f"full / gathered: temp memory {f[2] / g[2]:.1f}x, step time {f[4] / g[4]:.2f}x "
          f"(same loss: {abs(f[1] - g[1]) < 1e-3 * abs(g[1])})")


if __name__ == "__main__":
    main()
