"""Decoding speed on this machine: the AR baseline vs block diffusion at block sizes 4 / 8 / 16 / 32.

Random weights (so tokens per forward comes from the static schedule: s = b / tokens_per_step steps per block;
the dynamic strategy's tokens per forward depends on a trained model's confidence), one compiled program per
setting, timings after a warm-up call. Also the cost of one forward of a b-token block relative to a 1-token AR
step (total decode time / forwards).

  python benchmarks/bench_sampler.py [--width 512] [--layers 8] [--vocab 32768] [--batch 4] [--new 128]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import bard_jax as bj
from bard_jax.config import TextConfig, VisionConfig
from bard_jax.sampler.ar import ARConfig, generate_ar


def timed(fn, repeats=2):
    fn()  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    args = ap.parse_args()
    heads = args.width // 64
    cfg = bj.ModelConfig(
        text=TextConfig(vocab_size=args.vocab, hidden_size=args.width, intermediate_size=3 * args.width,
                        num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                        head_dim=64, mrope_section=(12, 10, 10)),
        vision=VisionConfig(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=args.width,
                            deepstack_visual_indexes=()),
        image_token_id=args.vocab - 5, video_token_id=args.vocab - 4, vision_start_token_id=args.vocab - 3,
        vision_end_token_id=args.vocab - 2,
    )
    model = bj.Model(bj.init_params(cfg, jax.random.key(0)), cfg)
    ids = np.random.default_rng(0).integers(0, args.vocab - 10, (args.batch, args.prompt))
    eos, mask_id = args.vocab - 1, args.vocab - 6  # never produced by these weights in practice
    print(f"model: width {args.width}, {args.layers} layers, vocab {args.vocab}; batch {args.batch}, "
          f"prompt {args.prompt}, new tokens {args.new}; {jax.devices()[0].platform}")
    print(f"{'decoder':28s} {'tokens/s':>9s} {'NFE':>5s} {'tok/fwd':>8s} {'s/forward':>10s} {'vs AR step':>10s}")
    out, secs = timed(lambda: generate_ar(model, ids, ARConfig(max_new_tokens=args.new, eos_token_id=eos)))
    ar_nfe = out.stats["nfe"] + 1
    ar_fwd = secs / ar_nfe
    print(f"{'AR (KV cache)':28s} {args.batch * args.new / secs:9.1f} {ar_nfe:5d} {1.0:8.2f} {ar_fwd:10.4f} "
          f"{1.0:10.2f}")
    for b in (4, 8, 16, 32):
        for per_step in (1, 4):
            steps = b // per_step
            sc = bj.SamplingConfig(max_new_tokens=args.new, block_size=b, denoising_steps=steps,
                                   strategy="low_confidence_static", mask_token_id=mask_id, eos_token_id=eos)
            out, secs = timed(lambda sc=sc: jax.block_until_ready(bj.generate(model, ids, sc).tokens))
            res = bj.generate(model, ids, sc)
            nfe = int(res.stats["nfe"][0])
            tpf = float(res.stats["tokens_per_forward"][0])
            fwd = secs / nfe
            print(f"{f'block {b}, {steps} steps/block':28s} {args.batch * args.new / secs:9.1f} {nfe:5d} "
                  f"{tpf:8.2f} {fwd:10.4f} {fwd / ar_fwd:10.2f}")


if __name__ == "__main__":
    main()
