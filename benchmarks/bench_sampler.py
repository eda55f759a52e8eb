"""Decoding speed at a real model width on this machine: block diffusion against our AR decoder, per commit mode.

The model is a preset's text shape (default the 2B: width 2048, 28 layers, 16 heads of 128, 8 KV heads, MLP 6144,
vocabulary 151,936, tied head; `--layers` takes fewer layers of the same width) with random float32 weights and a
one-layer vision tower (text prompts only). Per batch size, every row decodes `--new` tokens after a `--prompt`-token
prompt (random weights never emit EOS, so every row runs every forward):

* AR: `generate_ar` with its KV cache (the prefill gives the first token, then one forward per token).
* block b / s steps: `bj.generate`, static strategy (b / s tokens per denoising forward), for each commit mode:
  "fold" (the default: the prefill also runs block 0's first step, and the forward that starts block i + 1 also
  writes block i), "forward" (a commit forward per block, the reference's schedule) and "reuse" (no commit).
* block 32 dynamic: the dynamic strategy with threshold 0.5 and 10 steps per block. Random weights clear no
  threshold, so each step unmasks the quota: 3.2 tokens per forward, the rate the trained Mini-BARD B32 (SWD) model
  reaches at threshold 0.5 (docs/minibard.md). Its forwards are those of a trained model at that rate; its tokens
  are not.

Columns: tokens/s over the whole call (prefill included; best of `--repeats` after a warm-up call that compiles);
forwards (`nfe`); tokens processed per row (prompt, b per denoising forward, b per committed block); ms per forward
(the call's wall time / forwards); the bound: the speed over AR if every forward cost what a bare forward of its
shape costs (the same compiled forward called alone: [B, T] tokens against a full cache, T = 1, b or 2b, and the
prefill), i.e. AR's measured time / the schedule's summed bare cost; "of bound" = measured / bound.

  python benchmarks/bench_sampler.py [--preset 2B] [--layers 28] [--prompt 64] [--new 64] [--batches 1,8]
      [--settings 4/1,4/2,32/8,32/10d] [--commits fold,forward,reuse] [--repeats 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import bard_jax as bj
from bard_jax.config import VisionConfig
from bard_jax.modeling import network
from bard_jax.sampler import diffusion
from bard_jax.sampler.ar import ARConfig, generate_ar
from bard_jax.sampler.inputs import prepare

TINY_VISION = VisionConfig(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=0,
                           deepstack_visual_indexes=())


def model_config(preset: str, layers: int | None) -> bj.ModelConfig:
    cfg = bj.preset(preset)
    text = cfg.text if layers is None else dataclasses.replace(cfg.text, num_hidden_layers=layers)
    vision = dataclasses.replace(TINY_VISION, out_hidden_size=text.hidden_size)
    return dataclasses.replace(cfg, text=text, vision=vision)


def best_time(fn, repeats: int) -> tuple[object, float]:
    """(last output, best wall seconds of `repeats` calls after a warm-up call)."""
    out = jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return out, best


@functools.partial(jax.jit, static_argnames=("head", "times"))
def _bare_forwards(model, tokens_bt, positions_3bt, carry, head, times):
    """The loop's forward `times` times in a row inside one program (each input depends on the last output, so
    nothing is shared or reordered); only the last `head` positions go through the output head (0: none, as in a
    commit forward, whose logits nothing reads)."""
    net = network(model.config, None, "none", True)
    block = jnp.full(tokens_bt.shape, diffusion.CURRENT_BLOCK, jnp.int32)
    t = tokens_bt.shape[1]

    def once(_, tokens):
        logits, (k, _) = diffusion._forward(net, model.params, tokens, positions_3bt, block, carry,
                                            logits_from=t - head)
        out = logits[:, :, 0].sum() if head else k.sum()
        return tokens + (out > 1e30).astype(tokens.dtype)  # an input that depends on the output, nothing more

    return jax.lax.fori_loop(0, times, once, tokens_bt)


class BareCosts:
    """Seconds of one bare forward per shape at one batch size, measured once each: T tokens against the full cache
    with the last `head` of them through the output head (`forward(T, head)`: what one more such forward adds to a
    compiled loop of them, so work done once per program, like laying out the tied head, is not counted per
    forward, as the decode loop does not pay it per forward either), and the prefill with or without the first
    block riding along (`prefill(b, fold)`, one call)."""

    def __init__(self, model, ids, new: int, repeats: int):
        self.model, self.ids, self.new, self.repeats = model, ids, new, repeats
        self.inputs = prepare(model, ids, None, None, None, None, None, None)
        self._cache: dict = {}

    def _carry(self, b: int):
        sc = bj.SamplingConfig(max_new_tokens=self.new, block_size=b, commit="forward", mask_token_id=1,
                               eos_token_id=2)
        carry, next_pos, _ = diffusion._prefill_jit(self.model, self.inputs, cfg=sc.prefill_settings())
        return carry.replace(cache_valid=jnp.ones_like(carry.cache_valid)), next_pos

    def forward(self, t: int, head: int) -> float:
        if ("forward", t, head) not in self._cache:
            carry, next_pos = self._carry(4)
            rows = self.ids.shape[0]
            tokens = jnp.ones((rows, t), jnp.int32)
            positions = jnp.broadcast_to(next_pos[None, :, None] + jnp.arange(t), (3, rows, t))
            times = {n: best_time(lambda n=n: _bare_forwards(self.model, tokens, positions, carry, head=head,
                                                             times=n), self.repeats)[1] for n in (1, 3)}
            self._cache["forward", t, head] = (times[3] - times[1]) / 2
        return self._cache["forward", t, head]

    def prefill(self, b: int, fold: bool) -> float:
        if ("prefill", b, fold) not in self._cache:
            sc = bj.SamplingConfig(max_new_tokens=self.new, block_size=b, commit="fold" if fold else "forward",
                                   mask_token_id=1, eos_token_id=2)
            self._cache["prefill", b, fold] = best_time(
                lambda: diffusion._prefill_jit(self.model, self.inputs, cfg=sc.prefill_settings()), self.repeats)[1]
        return self._cache["prefill", b, fold]

    def schedule(self, sc: bj.SamplingConfig) -> float:
        """The summed bare cost of the forwards `sc` runs when every row decodes every block with every step."""
        b, n, s = sc.block_size, sc.num_blocks, sc.denoising_steps
        step = self.forward(b, b)
        if sc.commit == "fold":  # the prefill carries block 0's first step; blocks 1.. start with a 2b forward
            return self.prefill(b, True) + (n - 1) * self.forward(2 * b, b) + n * (s - 1) * step
        commits = n * self.forward(b, 0) if sc.commit == "forward" else 0.0
        return self.prefill(b, False) + n * s * step + commits


def parse_settings(text: str) -> list[tuple[int, int, bool]]:
    """"4/1,32/10d" -> [(block, steps, dynamic)]."""
    out = []
    for item in text.split(","):
        dynamic = item.endswith("d")
        b, s = item.rstrip("d").split("/")
        out.append((int(b), int(s), dynamic))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="2B")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers of the preset's width")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--settings", default="4/1,4/2,32/8,32/10d",
                    help="block/steps, comma separated; a trailing d: dynamic strategy at threshold 0.5")
    ap.add_argument("--commits", default="fold,forward,reuse")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    cfg = model_config(args.preset, args.layers)
    t = cfg.text
    model = bj.Model(bj.init_params(cfg, jax.random.key(0)), cfg)
    vocab = t.vocab_size
    eos, mask_id = vocab - 1, vocab - 6  # never produced by these weights in practice
    print(f"model: {args.preset} text shape (width {t.hidden_size}, {t.num_hidden_layers} layers, vocab {vocab}, "
          f"tied head), float32 random weights; prompt {args.prompt}, {args.new} new tokens; jax {jax.__version__} "
          f"on {jax.devices()[0].platform} ({jax.devices()[0].device_kind})", flush=True)
    print("| batch | decoder | commit | tokens/s | vs AR | forwards | tokens processed per row | ms per forward | "
          "bound vs AR | of bound |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for batch in (int(x) for x in args.batches.split(",")):
        ids = np.random.default_rng(0).integers(0, vocab - 10, (batch, args.prompt)).astype(np.int32)
        bare = BareCosts(model, ids, args.new, args.repeats)
        ar = ARConfig(max_new_tokens=args.new, eos_token_id=eos)
        out, ar_secs = best_time(lambda ar=ar, ids=ids: generate_ar(model, ids, ar), args.repeats)
        ar_forwards = int(out.stats["nfe"])
        one = bare.forward(1, 1)
        row = {"batch": batch, "decoder": "AR", "commit": None, "tokens_per_second": batch * args.new / ar_secs,
               "forwards": ar_forwards, "ms_per_forward": ar_secs / ar_forwards * 1e3, "bare_1_token_ms": one * 1e3}
        rows.append(row)
        print(f"| {batch} | AR (KV cache) | | {row['tokens_per_second']:.2f} | 1.00x | {ar_forwards} | "
              f"{args.prompt + args.new - 1} | {row['ms_per_forward']:.0f} (bare 1-token forward {one * 1e3:.0f}) "
              "| | |", flush=True)
        for b, s, dynamic in parse_settings(args.settings):
            for commit in args.commits.split(","):
                sc = bj.SamplingConfig(max_new_tokens=args.new, block_size=b, denoising_steps=s,
                                       strategy="low_confidence_dynamic" if dynamic else "low_confidence_static",
                                       confidence_threshold=0.5, mask_token_id=mask_id, eos_token_id=eos,
                                       commit=commit)
                out, secs = best_time(lambda sc=sc, ids=ids: bj.generate(model, ids, sc), args.repeats)
                forwards = int(out.stats["nfe"][0])
                bound = ar_secs / bare.schedule(sc)
                name = f"block {b}, {'dynamic 0.5, ' if dynamic else ''}{s} step{'s' if s > 1 else ''}"
                row = {"batch": batch, "decoder": name, "commit": commit,
                       "tokens_per_second": batch * args.new / secs, "vs_ar": ar_secs / secs, "forwards": forwards,
                       "tokens_processed": int(out.stats["tokens_processed"][0]),
                       "ms_per_forward": secs / forwards * 1e3, "bound_vs_ar": bound,
                       "of_bound": ar_secs / secs / bound}
                rows.append(row)
                print(f"| {batch} | {name} | {commit} | {row['tokens_per_second']:.2f} | {row['vs_ar']:.2f}x | "
                      f"{forwards} | {row['tokens_processed']} | {row['ms_per_forward']:.0f} | {bound:.2f}x | "
                      f"{row['of_bound']:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "jax": jax.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
