"""Decoding speed on this machine: what one forward costs inside the block-diffusion loop against a bare forward of
the same shape, at block sizes 4 / 8 / 16 / 32 and batch 1 and 8, and the AR decoder's tokens/s.

Random weights, static strategy with 4 tokens unmasked per step (s = b / 4 steps per block, plus one commit
forward per block), so every row runs every forward (random weights never emit EOS). Per setting:

* loop ms/forward: the decode loop's wall time (best of `--repeats` after a warm-up) / the forwards it ran
  (denoising + commit);
* bare ms/forward: the best of `--repeats * 4` calls of a jitted forward alone, taken between the loop's runs: a
  [B, b] block against a KV cache of the loop's length (every slot valid), giving logits [B, b, V] and the block's
  K/V, the same function the loop calls;
* ratio = loop / bare: what the loop adds per forward (token choice, confidences, transfer selection, cache writes,
  loop control). Goal: at most 1.25.

  python benchmarks/bench_sampler.py [--width 512] [--layers 8] [--vocab 8192] [--prompt 64] [--new 128]
      [--batches 1,8] [--blocks 4,8,16,32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import bard_jax as bj
from bard_jax.config import TextConfig, VisionConfig
from bard_jax.modeling import network
from bard_jax.sampler import diffusion
from bard_jax.sampler.ar import ARConfig, generate_ar
from bard_jax.sampler.inputs import prepare


def model_config(width: int, layers: int, vocab: int) -> bj.ModelConfig:
    """Head dim 64, GQA 2:1, MLP 3x width, tied head; a one-layer vision tower (unused: text prompts)."""
    heads = width // 64
    return bj.ModelConfig(
        text=TextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=3 * width, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1), head_dim=64,
                        mrope_section=(12, 10, 10)),
        vision=VisionConfig(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=width,
                            deepstack_visual_indexes=()),
        image_token_id=vocab - 5, video_token_id=vocab - 4, vision_start_token_id=vocab - 3,
        vision_end_token_id=vocab - 2, tie_word_embeddings=True,
    )


def best_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


@jax.jit
def _bare_forward(model, tokens_bt, positions_3bt, carry):
    net = network(model.config, None, "none", True)
    return diffusion._forward_block(net, model.params, tokens_bt, positions_3bt, carry)


def bare_forward(model, inputs, sc: bj.SamplingConfig):
    """A call of one forward of a [B, b] block against the loop's full-length cache (all slots valid)."""
    carry, next_pos, _ = diffusion._prefill_jit(model, inputs, cfg=sc.prefill_settings())
    carry = carry.replace(cache_valid=jnp.ones_like(carry.cache_valid))
    rows = inputs.input_ids.shape[0]
    tokens = jnp.full((rows, sc.block_size), sc.mask_token_id, jnp.int32)
    positions = jnp.broadcast_to(next_pos[None, :, None] + jnp.arange(sc.block_size), (3, rows, sc.block_size))
    return lambda: _bare_forward(model, tokens, positions, carry)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--blocks", default="4,8,16,32")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = model_config(args.width, args.layers, args.vocab)
    model = bj.Model(bj.init_params(cfg, jax.random.key(0)), cfg)
    eos, mask_id = args.vocab - 1, args.vocab - 6  # never produced by these weights in practice
    print(f"model: width {args.width}, {args.layers} layers, vocab {args.vocab} (tied); prompt {args.prompt}, "
          f"{args.new} new tokens; jax {jax.__version__} on {jax.devices()[0].platform} "
          f"({jax.devices()[0].device_kind})")
    print("| batch | decoder | tokens/s | forwards | loop ms/forward | bare ms/forward | ratio |")
    print("|---|---|---|---|---|---|---|")
    for batch in (int(x) for x in args.batches.split(",")):
        ids = np.random.default_rng(0).integers(0, args.vocab - 10, (batch, args.prompt)).astype(np.int32)
        ar = ARConfig(max_new_tokens=args.new, eos_token_id=eos)
        secs = best_time(lambda ar=ar, ids=ids: generate_ar(model, ids, ar).tokens, args.repeats)
        print(f"| {batch} | AR (KV cache) | {batch * args.new / secs:.1f} | {args.new} | "
              f"{secs / args.new * 1e3:.2f} | | |", flush=True)
        for b in (int(x) for x in args.blocks.split(",")):
            sc = bj.SamplingConfig(max_new_tokens=args.new, block_size=b, denoising_steps=max(b // 4, 1),
                                   strategy="low_confidence_static", mask_token_id=mask_id, eos_token_id=eos)
            out = bj.generate(model, ids, sc)  # compile
            bare_call = bare_forward(model, prepare(model, ids, None, None, None, None, None, None), sc)
            # Alternate the two measurements, so that a slow stretch of a shared machine hits both alike.
            loop = bare = float("inf")
            for _ in range(args.repeats):
                out = bj.generate(model, ids, sc)
                loop = min(loop, out.stats["decode_seconds"])
                bare = min(bare, best_time(bare_call, 4))
            forwards = int(out.stats["nfe"][0]) - 1  # all rows run every forward here
            per = loop / forwards
            print(f"| {batch} | block {b}, {sc.denoising_steps} steps | {batch * args.new / loop:.1f} | {forwards} | "
                  f"{per * 1e3:.2f} | {bare * 1e3:.2f} | {per / bare:.2f} |", flush=True)


if __name__ == "__main__":
    main()
