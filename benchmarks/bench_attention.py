"""One PBM loss + grad step with dense versus flash attention: time and XLA temporaries at several lengths.

A text model of width 1024 and 2 layers (8 query heads, 4 kv heads, head dim 128, vocabulary 8192), one packed
sample per step in the release's proportions (prefix L/4, response 3L/8, its noisy copy 3L/8; block 32), float32.
Rows: dense (one [heads, L, L] softmax), flash (tiles of 512, empty tiles skipped) and flash with tile skipping
off (every tile visited), which gives skipping's share of the time. Memory is XLA's compiled temp size
(memory_analysis); time is the median of a few steps with full XLA optimizations on this machine.

  python benchmarks/bench_attention.py [--lengths 1024,2048,4096] [--tile 512] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bard_jax as bj  # noqa: E402
from bard_jax.config import TextConfig, VisionConfig  # noqa: E402
from bard_jax.diffusion import layout, noise  # noqa: E402
from bard_jax.diffusion.losses import ObjectiveConfig, loss_fn  # noqa: E402
from bard_jax.model.attention import AttentionConfig, TokenRule, plan_tiles  # noqa: E402

VOCAB = 8192


def model_config(width: int, layers: int) -> bj.ModelConfig:
    heads = width // 128
    return bj.ModelConfig(
        text=TextConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=3 * width, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1), head_dim=128),
        vision=VisionConfig(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=width,
                            deepstack_visual_indexes=()),
        tie_word_embeddings=True, image_token_id=VOCAB - 3, video_token_id=VOCAB - 2,
    )


def packed_batch(length: int, block: int, seed: int = 0) -> dict:
    prefix = length // 4
    response = (length - prefix) // 2
    rng = np.random.default_rng(seed)
    sample = layout.pack_sample(rng.integers(0, VOCAB - 10, prefix), rng.integers(0, VOCAB - 10, response), block,
                                pad_token_id=0, image_token_id=VOCAB - 3, video_token_id=VOCAB - 2,
                                spatial_merge_size=2)
    batch = layout.collate_packed([sample], length, response)
    batch["example_index"] = np.zeros((1,), np.int32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def measure(cfg, params, batch, attention: AttentionConfig, block: int, steps: int):
    obj = ObjectiveConfig(kind="pbm", block_size=block, noise=noise.NoiseConfig(mask_token_id=VOCAB - 1),
                          attention=attention)

    def step(p, b):
        return loss_fn(p, b, jax.random.key(0), model_config=cfg, obj=obj, global_num_samples=1)[0]

    compiled = jax.jit(jax.value_and_grad(step)).lower(params, batch).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    loss, _ = jax.block_until_ready(compiled(params, batch))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, batch))
        times.append(time.perf_counter() - t0)
    return float(loss), temp, float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1024,2048,4096")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    cfg = model_config(args.width, args.layers)
    params = bj.init_params(cfg, jax.random.key(0))
    print(f"PBM loss+grad, width {args.width}, {args.layers} layers, vocab {VOCAB}, block {args.block}, float32, "
          f"tile {args.tile}, {jax.devices()[0].platform} ({os.cpu_count()} cores)")
    print(f"{'L':>5s} {'impl':>12s} {'step s':>7s} {'temp GiB':>9s} {'loss':>9s} {'tiles visited':>14s}")
    for length in (int(x) for x in args.lengths.split(",")):
        batch = packed_batch(length, args.block)
        nt = -(-length // args.tile)
        info = layout.token_info(batch, args.block)
        _, count, _ = plan_tiles(info, info, TokenRule(), min(args.tile, length), min(args.tile, length))
        visited = f"{int(jnp.sum(count))}/{nt * nt}"
        rows = {
            "dense": AttentionConfig("dense"),
            "flash": AttentionConfig("flash", args.tile, args.tile),
            "flash no-skip": AttentionConfig("flash", args.tile, args.tile, skip_empty_tiles=False),
        }
        results = {}
        for name, att in rows.items():
            results[name] = measure(cfg, params, batch, att, args.block, args.steps)
            loss, temp, t = results[name]
            shown = visited if name == "flash" else (f"{nt * nt}/{nt * nt}" if name != "dense" else "-")
            print(f"{length:5d} {name:>12s} {t:7.3f} {temp / 2**30:9.3f} {loss:9.4f} {shown:>14s}", flush=True)
        d, f, n = results["dense"][2], results["flash"][2], results["flash no-skip"][2]
        print(f"{length:5d}   flash/dense time {f / d:.2f}x, temp {results['flash'][1] / results['dense'][1]:.2f}x;"
              f" skipping saves {1 - f / n:.0%} of flash's time", flush=True)


if __name__ == "__main__":
    main()
